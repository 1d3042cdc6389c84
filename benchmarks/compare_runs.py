"""Are two run folders' numbers the same? Every number of metrics.json that a study computes, leaf by leaf.

    python benchmarks/compare_runs.py RUN_A RUN_B

Times, memory, dates, provenance and paths differ from run to run and are left out; everything else
(each row's metrics, each analysis's results, the verdicts with their intervals, the controls, quality,
baselines) must agree to 1e-9 relative. Used to check that a change of structure changed no result.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

# Keys whose values are about the run (time, memory, machine, provenance, paths), not its results.
VOLATILE = {
    "wall_seconds",
    "train_seconds",
    "trunk_cache_seconds",
    "seconds",
    "environment",
    "stage_profile",
    "stage_seconds",
    "stage_peak_memory_mib",
    "step_seconds",
    "epoch_seconds",
    "saved_to",
    "tokens_per_second",
    "tok_s",
    "process_peak_memory_mib",
}


def leaves(value, path=""):
    """(path, value) for every number, string and flag inside ``value``, the volatile keys left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in VOLATILE:
                yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def main(first: str, second: str) -> int:
    a, b = (json.loads((Path(run) / "metrics.json").read_text()) for run in (first, second))
    left, right = dict(leaves(a)), dict(leaves(b))
    keys = sorted(set(left) | set(right))
    differ = [k for k in keys if k not in left or k not in right or not same(left[k], right[k])]
    print(f"{len(keys)} numbers and labels compared, {len(differ)} differ")
    for key in differ[:40]:
        print(f"  {key}: {left.get(key, '(absent)')!r} -> {right.get(key, '(absent)')!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
