"""Where to adapt (claim 5): LoRA on the last K, first K and all blocks, and full fine-tuning, on the same data and budget."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from hyperfitting.analysis.common import decode
from hyperfitting.analysis.geometry import geometry_table_rows, hidden_states_at
from hyperfitting.analysis.common import sample_positions
from hyperfitting.config import RunConfig
from hyperfitting.data.splits import PreparedData
from hyperfitting.metrics.diversity import distinct_n, diversity, seq_rep_n, ttr
from hyperfitting.models.loading import load_model
from hyperfitting.rundir import Stage, read_json, write_json, write_text
from hyperfitting.training.hyperfit import hyperfit
from hyperfitting.training.parallel import is_sharded


def control_train_args(config: RunConfig, spec: str):
    if spec == "full":
        return replace(config.train, method="full", blocks="all", lr=config.study.controls_lr_full,
                       epochs=config.study.controls_epochs, diversity_every=0)
    _, blocks = spec.split(":", 1)
    # LoRA controls fit one device: plain data parallelism keeps the trunk cache (FSDP turns it off).
    return replace(config.train, method="lora", blocks=blocks, lr=config.study.controls_lr_lora,
                   epochs=config.study.controls_epochs, diversity_every=0, parallelism="ddp")


def _key(spec: str) -> str:
    """`lora:last:5` -> `lora:last` (what the verdict compares), `full` -> `full`."""
    return ":".join(spec.split(":")[:2])


def run_controls(config: RunConfig, data: PreparedData, prompts: list[list[int]], base, tokenizer, out_dir: Path) -> dict:
    blocks = data.train_blocks[: config.study.controls_train_blocks]
    sample = sample_positions(data.heldout_blocks.numel(), config.analysis.geometry_tokens, config.data.seed)
    base_states = hidden_states_at(base, data.heldout_blocks, sample)
    base_outputs = decode(base, tokenizer, prompts, config, desc="base greedy")
    results = {"train_blocks": len(blocks), "epochs": config.study.controls_epochs, "methods": {},
               "base": {"ttr": ttr([o.token_ids for o in base_outputs])}}
    for spec in config.study.controls:
        print(f"\n-- control: {spec}", flush=True)
        folder = out_dir / spec.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        train_config = replace(config, train=control_train_args(config, spec))
        model, _ = load_model(config.model, for_training=True)
        started = time.perf_counter()
        # Held-out loss on as many held-out blocks as training blocks: measured every epoch, so kept small.
        trained = hyperfit(model, blocks, data.heldout_blocks[: len(blocks)], train_config, folder)
        wall = time.perf_counter() - started
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        tuned = trained.model.eval()
        # An FSDP-sharded model (a `full` control under train.parallelism=fsdp) decodes in lockstep.
        outputs = decode(tuned, tokenizer, prompts, config, desc=f"{spec} greedy", shard=not is_sharded(tuned))
        ids = [o.token_ids for o in outputs]
        rows = geometry_table_rows(base_states, hidden_states_at(tuned, data.heldout_blocks, sample), two_nn=False)
        block_rows = [r for r in rows if r["layer"].startswith("block")]
        largest = max(block_rows, key=lambda r: r["delta_pr"])
        results["methods"][_key(spec)] = {
            "spec": spec,
            "trainable_parameters": trained.plan.trainable_parameters,
            "final_train_loss": trained.log[-1]["train_loss"],
            "heldout_perplexity": math.exp(min(trained.log[-1]["heldout_loss"], 50.0)),
            "wall_seconds": wall,
            "ttr": ttr(ids),
            "distinct_3": distinct_n(ids, 3),
            "seq_rep_3": seq_rep_n(ids, 3),
            "diversity": diversity(ids),
            "largest_delta_pr_layer": largest["layer"],
            "final_block_delta_pr": block_rows[-1]["delta_pr"],
        }
        del model, tuned, trained
    return results


def controls_table(results: dict) -> str:
    lines = [
        f"Each method trained on the same {results['train_blocks']} blocks for {results['epochs']} epochs; greedy continuations "
        f"of the analysis prompts. Base greedy TTR {results['base']['ttr']:.3f}.",
        "",
        "| method | trainable parameters | final train loss | held-out perplexity | wall time (s) | TTR | distinct-3 | seq-rep-3 | largest Delta PR at | final-block Delta PR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["methods"].values():
        lines.append(
            f"| {row['spec']} | {row['trainable_parameters']:,} | {row['final_train_loss']:.3f} | {row['heldout_perplexity']:.1f} | "
            f"{row['wall_seconds']:.0f} | {row['ttr']:.3f} | {row['distinct_3']:.3f} | {row['seq_rep_3']:.3f} | "
            f"{row['largest_delta_pr_layer']} | {row['final_block_delta_pr']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def controls_stage(config: RunConfig, run_dir: Path, data: PreparedData, prompts, base, tokenizer) -> dict | None:
    if not config.study.controls:
        return None
    stage = Stage(run_dir, "controls", config.fingerprint("model", "data", "train", "study", "analysis"))
    if stage.done:
        return read_json(stage.dir / "results.json")
    from hyperfitting.pipeline.stages import announce_stage

    announce_stage("controls: where to adapt (same data and budget)", "controls")
    started = time.perf_counter()
    folder = stage.start()
    results = run_controls(config, data, prompts, base, tokenizer, folder)
    write_json(folder / "results.json", results)
    write_text(folder / "table.md", controls_table(results))
    print(controls_table(results))
    stage.finish(time.perf_counter() - started)
    return results
