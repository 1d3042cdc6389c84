"""Benchmark 4: wall time and peak memory of each stage of a finished study (default: runs/quick).

.venv/bin/hyperfit study configs/quick.yaml      # or make run
.venv/bin/python benchmarks/main_job.py runs/quick
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str = "runs/quick") -> None:
    rows = []
    for done in sorted(Path(run_dir).glob("*/stage-done.json"), key=lambda p: p.stat().st_mtime):
        record = json.loads(done.read_text())
        rows.append((done.parent.name, record["wall_seconds"], record.get("process_peak_memory_mib")))
    if not rows:
        sys.exit(f"No finished stages in {run_dir}: run the study first.")
    total = sum(seconds for _, seconds, _ in rows)
    print("| stage | wall time (s) | share | process peak memory so far (MiB) |\n|---|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.0f} | {seconds / total:.0%} | {peak if peak is not None else '-'} |")
    slowest = max(rows, key=lambda row: row[1])
    print(f"| total | {total:.0f} ({total / 60:.1f} min) | | |\n\nSlowest stage: {slowest[0]} ({slowest[1]:.0f} s).")


if __name__ == "__main__":
    main(*sys.argv[1:])
