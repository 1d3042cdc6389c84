"""Helpers shared by the benchmarks: the model, the machine's matmul peak, timing."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def matmul_peak_gflops(dtype=torch.float32, size: int = 2048, seconds: float = 1.0) -> float:
    """The best rate of size^3 matrix products on this CPU, measured in this process (the roofline for MFU):
    the same measurement as the precision policy's (hyperfitting.precision.matmul_gflops), on larger matrices."""
    from hyperfitting.precision import matmul_gflops

    return matmul_gflops(dtype, torch.device("cpu"), size=size, seconds=seconds)


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def machine_record() -> str:
    """The machine in words, for a result file: CPU model, cores, threads, torch (or the GPU when one is used)."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    described = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        described = f"{torch.cuda.get_device_name()}, {described}"
    return described


def commit() -> str:
    """The checkout's commit, "+changes" when the source or the benchmarks differ from it."""

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks", "configs").strip()
    return head + ("+changes" if changed else "")


def record(
    name: str,
    title: str,
    columns: list[str],
    rows: list[list],
    findings: list[str],
    provenance: dict | None = None,
    **raw,
) -> Path:
    """Write benchmarks/results/NAME.json: the table, what it shows (computed sentences), the command, commit, date
    and machine. tools/benchmarks_md.py renders BENCHMARKS.md from these files; ``raw`` keeps the unrounded
    numbers. ``provenance`` (command, commit, date) replaces this process's own where the numbers come from another
    run (a study's run folder)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    result = {
        "title": title,
        "script": str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else script.name,
        "command": ".venv/bin/python " + shlex.join([str(Path(sys.argv[0])), *sys.argv[1:]]),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_record(),
        "columns": columns,
        "rows": rows,
        "findings": findings,
        "raw": raw,
    }
    result.update(provenance or {})
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"Recorded {path}; regenerate BENCHMARKS.md with .venv/bin/python tools/benchmarks_md.py")
    return path


def load_embedded():
    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import load_model

    return load_model(ModelArgs(name="smollm2-135m"))


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def forward_flops_per_token(model, blocks: range | None = None, with_head: bool = True, context: int = 128) -> float:
    """2 x (matmul parameters touched) + attention score/value products, per token, for a forward pass."""
    from hyperfitting.models.blocks import find_block_stack

    stack = find_block_stack(model)
    chosen = range(len(stack)) if blocks is None else blocks
    flops = 0.0
    for index in chosen:
        for module in stack.blocks[index].modules():
            if isinstance(module, torch.nn.Linear):
                flops += 2 * module.in_features * module.out_features
        config = model.config
        flops += (
            2
            * 2
            * context
            / 2
            * config.num_attention_heads
            * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        )
    if with_head:
        head = model.get_output_embeddings()
        flops += 2 * head.in_features * head.out_features
    return flops


def quick_data(tokenizer):
    """The quick preset's data (its blocks and its prompts), as the study prepares it: the benchmarks' workload."""
    from hyperfitting.config import load_config
    from hyperfitting.data.splits import prepare_data

    return prepare_data(load_config(Path(__file__).resolve().parents[1] / "configs" / "quick.yaml").data, tokenizer)
