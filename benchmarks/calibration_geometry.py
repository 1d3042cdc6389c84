"""Claim 4's calibration worlds with their layers through the estimator together, against one layer at a time.

Each of claim 4's simulated studies (claims/geometry.py: world_geometry) puts 31 layers of 12 dimensions, two models
each, through the split-half participation-ratio jackknife (analysis/geometry.py: footing). One layer at a time, the
rule cost more than every other rule together: each layer's products are tiny and the per-call overhead is the cost.
This runs the rule's calibration both ways in one process, at the quick preset's design, and checks that every rate
comes out the same.

    .venv/bin/python benchmarks/calibration_geometry.py [--worlds 30]
"""

from __future__ import annotations

import argparse
import functools
import time

from common import ROOT, machine, record  # noqa: E402  (also puts src/ on the path)

import hyperfitting.analysis.geometry as geometry  # noqa: E402
from hyperfitting.claims.geometry import _geometry_truth  # noqa: E402
from hyperfitting.config import load_config  # noqa: E402
from hyperfitting.report.calibration import Design, Spreads, calibrate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, default=30, help="simulated studies per truth (reports: 400)")
    args = parser.parse_args()
    design = Design.of(load_config(ROOT / "configs" / "quick.yaml"))
    together = geometry.footing
    seconds, results = {}, {}
    for path, footing in (
        ("one layer at a time", functools.partial(together, layers_together=False)),
        ("layers together", together),
    ):
        geometry.footing = footing  # claims/geometry.py looks it up at each call
        _geometry_truth.cache_clear()  # each path computes the worlds' true effects itself
        started = time.perf_counter()
        results[path] = calibrate(design, Spreads(), args.worlds, rules=["4"], broken=False, processes=1)
        seconds[path] = time.perf_counter() - started
        print(f"{path}: {seconds[path]:.1f} s")
    geometry.footing = together
    same = results["one layer at a time"]["rules"] == results["layers together"]["rules"]
    ratio = seconds["one layer at a time"] / seconds["layers together"]
    print(f"{machine()}; layers together {ratio:.2f}x one at a time; same rates: {same}")
    record(
        "calibration-geometry",
        "Claim 4's calibration: layers through the estimator together against one at a time",
        ["path", "seconds", "ms per world", "ratio"],
        [
            [path, round(s, 1), round(1000 * s / (4 * args.worlds), 1), f"{seconds['one layer at a time'] / s:.2f}x"]
            for path, s in seconds.items()
        ],
        [
            f"Claim 4's rule at the quick preset's design ({design.rivals} rival layers, {design.blocks} held-out "
            f"blocks), {args.worlds} worlds per truth, one process; every rate the same both ways: "
            + ("yes." if same else "**no**."),
        ],
        seconds=seconds,
    )


if __name__ == "__main__":
    main()
