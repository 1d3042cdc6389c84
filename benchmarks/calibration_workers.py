"""The report's calibration in worker processes against one process: the same numbers, in less time.

Every report runs each verdict rule on simulated studies (report/calibration.py: calibrate): 12 rules x 4 truths x
400 worlds at the quick preset's sizes. The (rule, truth) pairs are independent (each seeds its own random numbers),
so they run in forked workers, one per core. This times both in one process, at the quick preset's design, and checks
that every rate comes out the same to the last bit.

    .venv/bin/python benchmarks/calibration_workers.py [--worlds 60]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import ROOT, machine, record  # noqa: E402  (also puts src/ on the path)

from hyperfitting.config import load_config  # noqa: E402
from hyperfitting.report.calibration import Design, Spreads, calibrate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, default=60, help="simulated studies per rule and truth (reports: 400)")
    args = parser.parse_args()
    design = Design.of(load_config(ROOT / "configs" / "quick.yaml"))
    workers = torch.get_num_threads()
    seconds, results = {}, {}
    for processes in (1, workers):
        started = time.perf_counter()
        results[processes] = calibrate(design, Spreads(), args.worlds, processes=processes)
        seconds[processes] = time.perf_counter() - started
        print(f"{processes} process(es): {seconds[processes]:.1f} s")
    same = results[1] == results[workers]
    print(f"{machine()}; {workers} workers {seconds[1] / seconds[workers]:.2f}x one process; same numbers: {same}")
    record(
        "calibration-workers",
        "The report's calibration: worker processes against one",
        ["path", "seconds", "ratio"],
        [
            ["one process", round(seconds[1], 1), "1.00x"],
            [f"{workers} forked workers", round(seconds[workers], 1), f"{seconds[1] / seconds[workers]:.2f}x"],
        ],
        [
            f"Every rule at the quick preset's design, {args.worlds} worlds per truth "
            f"({len(results[1]['rules'])} rules x 4 truths); every rate the same to the last bit in both: "
            + ("yes." if same else "**no**."),
            "Student's t through scipy.special instead of scipy.stats (the same floats) took the one-process time from "
            "52.1 to 38.2 s at 60 worlds on a quick study's own design and spreads (measured once, 2026-12-06: commit "
            "58587d8's code in a worktree against the new one, the same JSON from both).",
        ],
        seconds=seconds,
    )


if __name__ == "__main__":
    main()
