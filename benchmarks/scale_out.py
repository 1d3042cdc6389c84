"""Benchmark 6: the same training job on one process and on N processes (torchrun), same machine.

Runs the quick study's Late-Stage LoRA training (64 blocks x 128 tokens, batch 4, trunk cache
on) twice from this script: once as one process, once under ``torchrun --nproc_per_node N``,
and prints the ratios of the trunk-cache build time and the epoch time. On a CPU machine the
threads are split so that both runs use the same cores (one process with T threads against N
processes with T/N each): the ratio then measures what splitting the work costs or gains
(communication, smaller matrix multiplies), not more hardware. On an N-GPU node it is the
data-parallel speed-up.

    .venv/bin/python benchmarks/scale_out.py            # 2 processes
    .venv/bin/python benchmarks/scale_out.py --processes 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import machine, record  # noqa: E402  (puts src/ on the path)

ROOT = Path(__file__).resolve().parents[1]
JOB = [
    "-m",
    "hyperfitting.cli",
    "train",
    str(ROOT / "configs" / "quick.yaml"),
    "train.epochs=2",
    "train.diversity_every=0",
]


def run(run_dir: Path, processes: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    launcher = (
        [sys.executable]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            "29551",
        ]
    )
    result = subprocess.run(launcher + JOB + [f"run_dir={run_dir}"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"the {processes}-process run failed:\n{result.stderr[-3000:]}")
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    log = [json.loads(line) for line in (run_dir / "train" / "train_log.jsonl").read_text().splitlines()]
    return {
        "cache": summary["trunk_cache_seconds"],
        "epoch": log[-1]["epoch_seconds"],
        "loss": log[-1]["train_loss"],
        "processes": log[-1]["processes"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads in all, split between the processes"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.threads} threads in all")
    with tempfile.TemporaryDirectory() as scratch:
        one = run(Path(scratch) / "one", 1, args.threads)
        many = run(Path(scratch) / "many", args.processes, max(1, args.threads // args.processes))
    assert many["processes"] == args.processes, "the work was not split: check the launcher"
    print(f"{'':28s} {'1 process':>12s} {f'{args.processes} processes':>14s} {'ratio':>8s}")
    print(
        f"{'trunk cache build (s)':28s} {one['cache']:12.1f} {many['cache']:14.1f} {one['cache'] / many['cache']:7.2f}x"
    )
    print(f"{'one epoch (s)':28s} {one['epoch']:12.1f} {many['epoch']:14.1f} {one['epoch'] / many['epoch']:7.2f}x")
    print(f"{'training loss after 2 epochs':28s} {one['loss']:12.4f} {many['loss']:14.4f}")
    record(
        "scale-out",
        "One process against several (scale-out), same cores",
        ["", "1 process", f"{args.processes} processes", "ratio"],
        [
            [
                "trunk cache build (s)",
                round(one["cache"], 1),
                round(many["cache"], 1),
                f"{one['cache'] / many['cache']:.2f}x",
            ],
            ["one epoch (s)", round(one["epoch"], 1), round(many["epoch"], 1), f"{one['epoch'] / many['epoch']:.2f}x"],
            ["training loss after 2 epochs", round(one["loss"], 4), round(many["loss"], 4), "-"],
        ],
        [
            f"{args.threads} threads in all, split between the processes: the ratio is what splitting the same cores "
            "costs; a speed-up needs more hardware."
        ],
    )


if __name__ == "__main__":
    main()
