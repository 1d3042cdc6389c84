"""Where to adapt (claim 5): LoRA on the last K, first K and all blocks, and full fine-tuning, each trained on the same
data to the same target loss."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from hyperfitting.analysis.common import decode, per_prompt_ttr
from hyperfitting.analysis.teacher_forcing import sample_block_positions
from hyperfitting.analysis.geometry import geometry_table_rows, hidden_states_at
from hyperfitting.config import RunConfig, replace
from hyperfitting.data.splits import PreparedData
from hyperfitting.errors import DivergenceError
from hyperfitting.metrics.diversity import distinct_n, diversity, seq_rep_n, ttr
from hyperfitting.models.loading import load_model
from hyperfitting.layout import control_folder
from hyperfitting.pipeline.graph import StageGraph, control_seeds, replicate_config, reused_replicate, reused_runs
from hyperfitting.rundir import (
    is_main_process,
    read_json,
    read_jsonl,
    remove_together,
    wait_for_everyone,
    write_json,
    write_text,
)
from hyperfitting.training.hyperfit import hyperfit
from hyperfitting.training.parallel import is_sharded, remove_checkpoints


def control_train_args(config: RunConfig, spec: str):
    """Every control trains to the study's target loss (train.until_loss), with controls_epochs as the cap.

    On the study's own data (study.controls_on_study_data) a LoRA placement starts from the main LoRA run's learning
    rate, so the placements differ in where they adapt and nothing else; a LoRA control never takes a full fine-tune's
    rate (about a thousand times too low for LoRA): beside a fully fine-tuned main run it starts from
    controls_lr_lora."""
    # The verdict reads a control's final held-out loss only; measured every epoch, a forward pass over as many blocks
    # as it trains on added about a third to each epoch (forward alone against forward and backward).
    common = dict(
        epochs=config.study.controls_epochs, until_loss=config.train.until_loss, diversity_every=0, heldout_every=0
    )
    if spec == "full":
        return replace(config.train, method="full", blocks="all", lr=config.study.controls_lr_full, **common)
    _, blocks = spec.split(":", 1)
    # LoRA controls fit one device: plain data parallelism keeps the trunk cache (FSDP turns it off).
    lr = (
        config.train.lr
        if config.study.controls_on_study_data and config.train.method == "lora"
        else config.study.controls_lr_lora
    )
    return replace(config.train, method="lora", blocks=blocks, lr=lr, parallelism="ddp", **common)


def _key(spec: str) -> str:
    """`lora:last:5` -> `lora:last` (what the verdict compares), `full` -> `full`."""
    return ":".join(spec.split(":")[:2])


def sweep_learning_rate(
    config: RunConfig, spec: str, blocks: torch.Tensor, data: PreparedData, folder: Path
) -> list[dict]:
    """Train the placement briefly at each multiple of its learning rate; rows ordered best first (training loss only).

    Only the training loss decides, as the papers tune: the held-out loss and the diversity
    that the verdict compares are not looked at, so the sweep cannot favour the claim.
    """
    train = control_train_args(config, spec)
    rows = []
    for multiple in config.study.controls_lr_sweep:
        lr = train.lr * multiple
        trial = replace(config, train=replace(train, lr=lr, epochs=config.study.controls_sweep_epochs))
        trial_folder = folder / f"sweep-lr{lr:g}"
        model, _ = load_model(config.model, for_training=True, sharded_training=train.parallelism == "fsdp")
        # the loss of a uniform guess over the vocabulary
        chance = math.log(model.get_output_embeddings().weight.shape[0])
        try:
            log = hyperfit(model, blocks, data.heldout_blocks[:0], trial, trial_folder).log
            # A rate so high that the logits saturate leaves the loss of a uniform guess, to the last digits, without
            # ever going non-finite: that rate diverged too (a trial that trains lands on exactly ln V only by a fluke).
            collapsed = abs(log[-1]["train_loss"] - chance) < 1e-5
            rows.append(
                {"lr": lr, "train_loss": log[-1]["train_loss"], "epochs": log[-1]["epoch"], "diverged": collapsed}
            )
        except DivergenceError:
            log = read_jsonl(trial_folder / "train_log.jsonl")
            rows.append(
                {
                    "lr": lr,
                    "train_loss": log[-1]["train_loss"] if log else float("inf"),
                    "epochs": len(log) - 1,
                    "diverged": True,
                }
            )
        remove_together(trial_folder)  # every process has left the trial before process 0 deletes it
    return sorted(rows, key=lambda r: (r["diverged"], r["train_loss"]))


def run_control(
    config: RunConfig,
    spec: str,
    blocks: torch.Tensor,
    data: PreparedData,
    prompts,
    tokenizer,
    base_states,
    sample,
    folder: Path,
    rates: list[float] | None = None,
) -> dict:
    """Choose the placement's learning rate (``rates``: those an earlier seed's sweep ordered, its choice first), train
    it to the target loss, decode greedily, compare its geometry with the base model's."""
    started = time.perf_counter()
    # What a killed control already learned is kept beside its checkpoint: the sweep, and the rates that diverged.
    # A resume must not train a diverged rate again: it would find the next rate's checkpoint in the folder.
    sweep_file, diverged_file = folder / "lr_sweep.json", folder / "diverged.json"
    sweep = []
    if config.study.controls_lr_sweep and not rates:
        if sweep_file.exists():
            sweep = read_json(sweep_file)
        else:
            sweep = sweep_learning_rate(config, spec, blocks, data, folder)
            write_json(sweep_file, sweep)
    candidates = rates or [row["lr"] for row in sweep if not row["diverged"]] or [control_train_args(config, spec).lr]
    diverged = read_json(diverged_file) if diverged_file.exists() else []
    for lr in candidates:
        if lr in {attempt["lr"] for attempt in diverged}:
            continue
        train_config = replace(config, train=replace(control_train_args(config, spec), lr=lr))
        model, _ = load_model(
            config.model, for_training=True, sharded_training=train_config.train.parallelism == "fsdp"
        )
        try:
            # Held-out loss on as many held-out blocks as training blocks: measured every epoch, so kept small.
            trained = hyperfit(model, blocks, data.heldout_blocks[: len(blocks)], train_config, folder)
            break
        except DivergenceError as error:
            log = read_jsonl(folder / "train_log.jsonl")
            print(f"control {spec} diverged at lr {lr:g}: {error}")
            diverged.append(
                {
                    "lr": lr,
                    "initial_train_loss": log[0]["train_loss"],
                    "final_train_loss": log[-1]["train_loss"],
                    "epochs": log[-1]["epoch"],
                }
            )
            write_json(diverged_file, diverged)
            wait_for_everyone()  # every process has read the log before process 0 deletes it and the checkpoints
            if is_main_process():
                remove_checkpoints(folder)
                (folder / "train_log.jsonl").unlink(missing_ok=True)
            wait_for_everyone()
    else:
        # A control that diverged at every rate is recorded, not used: claim 5 becomes inconclusive with this as the
        # reason.
        return {
            "spec": spec,
            "diverged": True,
            **{key: diverged[-1][key] for key in ("initial_train_loss", "final_train_loss", "epochs")},
            "wall_seconds": time.perf_counter() - started,
            "trainable_parameters": None,
            "lr_sweep": sweep,
            "diverged_at": [attempt["lr"] for attempt in diverged],
        }
    wall = time.perf_counter() - started
    tuned = trained.model.eval()
    if hasattr(tuned, "merge_and_unload") and not is_sharded(tuned):
        tuned = tuned.merge_and_unload()  # trained: decoded and measured as a plain model, like the study's own
    return {
        "spec": spec,
        "diverged": False,
        "trainable_parameters": trained.plan.trainable_parameters,
        "lr": train_config.train.lr,
        "initial_train_loss": trained.log[0]["train_loss"],
        "final_train_loss": trained.log[-1]["train_loss"],
        "epochs": trained.log[-1]["epoch"],
        "heldout_perplexity": math.exp(min(trained.log[-1]["heldout_loss"], 50.0)),
        "wall_seconds": wall,
        **measure_control(tuned, spec, config, data, prompts, tokenizer, base_states, sample),
        "lr_sweep": sweep,
        "diverged_at": [attempt["lr"] for attempt in diverged],
    }


def reused_control(
    config: RunConfig,
    spec: str,
    train_folder: Path,
    lr: float,
    data: PreparedData,
    prompts,
    tokenizer,
    base_states,
    sample,
) -> dict:
    """A placement the study has already trained on its own data (the main run, or its full fine-tune): measured, not
    retrained."""
    from hyperfitting.pipeline.pack import load_study_run

    tuned = load_study_run(config.model, train_folder)[0].eval()
    summary = read_json(train_folder / "summary.json")
    return {
        "spec": spec,
        "diverged": False,
        "reused_from": train_folder.name,
        "trainable_parameters": summary["trainable_parameters"],
        "lr": lr,
        "initial_train_loss": summary["initial_train_loss"],
        "final_train_loss": summary["final_train_loss"],
        "epochs": summary["epochs_run"],
        "heldout_perplexity": math.exp(min(summary["final_heldout_loss"], 50.0)),
        "wall_seconds": summary["train_seconds"],
        **measure_control(tuned, spec, config, data, prompts, tokenizer, base_states, sample),
        "lr_sweep": [],
    }


def measure_control(
    tuned, spec: str, config: RunConfig, data: PreparedData, prompts, tokenizer, base_states, sample
) -> dict:
    """Greedy continuations of the analysis prompts and the geometry against the base model's: what claim 5 compares."""
    # An FSDP-sharded model (a `full` control under train.parallelism=fsdp) decodes in lockstep.
    outputs = decode(tuned, tokenizer, prompts, config, desc=f"{spec} greedy", shard=not is_sharded(tuned))
    ids = [o.token_ids for o in outputs]
    rows = geometry_table_rows(base_states, hidden_states_at(tuned, data.heldout_blocks, sample), two_nn=False)
    block_rows = [r for r in rows if r["layer"].startswith("block")]
    largest = max(block_rows, key=lambda r: r["delta_pr"])
    return {
        "ttr": ttr(ids),
        "per_prompt_ttr": per_prompt_ttr(outputs),
        "distinct_3": distinct_n(ids, 3),
        "seq_rep_3": seq_rep_n(ids, 3),
        "diversity": diversity(ids),
        "largest_delta_pr_layer": largest["layer"],
        "final_block_delta_pr": block_rows[-1]["delta_pr"],
    }


def run_controls(
    config: RunConfig, data: PreparedData, prompts: list[list[int]], base, tokenizer, out_dir: Path
) -> dict:
    on_study_data = config.study.controls_on_study_data
    blocks = data.train_blocks if on_study_data else data.train_blocks[: config.study.controls_train_blocks]
    reused = reused_runs(config)
    sample = sample_block_positions(data.heldout_blocks, config.analysis.geometry_tokens, config.data.seed)
    base_states = hidden_states_at(base, data.heldout_blocks, sample)
    base_outputs = decode(base, tokenizer, prompts, config, desc="base greedy")
    results = {
        "train_blocks": len(blocks),
        "on_study_data": on_study_data,
        "epoch_cap": config.study.controls_epochs,
        "until_loss": config.train.until_loss,
        "methods": {},
        "lr_sweep": (
            {"multiples": config.study.controls_lr_sweep, "epochs": config.study.controls_sweep_epochs}
            if config.study.controls_lr_sweep
            else None
        ),
        "base": {"ttr": ttr([o.token_ids for o in base_outputs]), "per_prompt_ttr": per_prompt_ttr(base_outputs)},
    }
    for spec in config.study.controls:
        seeds = []
        for r in range(control_seeds(config, spec)):
            folder = out_dir / control_folder(spec, r)
            # Each finished control is kept: a study killed during the third control does not retrain the first two.
            done = folder / "control.json"
            if done.exists():
                seeds.append(read_json(done))
                continue
            if r and seeds[0]["diverged"]:  # diverged at every rate: claim 5 cannot compare this arm at any seed
                break
            stage = reused_replicate(config, spec, r)
            print(
                f"\n-- control: {spec}"
                + (f", seed {config.train.seed + r}" if r else "")
                + (f" (the study's own {stage} run, measured, not retrained)" if stage else ""),
                flush=True,
            )
            folder.mkdir(parents=True, exist_ok=True)
            if stage:
                lr = reused[spec][1]
                row = reused_control(
                    config, spec, out_dir.parent / stage, lr, data, prompts, tokenizer, base_states, sample
                )
            else:
                # seed r: another data order and initialisation (as the study's replicates), the rate the first seed's
                # sweep chose (the other rates it did not diverge at, in its order, should this seed diverge)
                rates = None
                if r:
                    swept = [trial["lr"] for trial in seeds[0].get("lr_sweep", []) if not trial["diverged"]]
                    rates = list(dict.fromkeys([seeds[0]["lr"], *swept]))
                row = run_control(
                    replicate_config(config, r),
                    spec,
                    blocks,
                    data,
                    prompts,
                    tokenizer,
                    base_states,
                    sample,
                    folder,
                    rates=rates,
                )
            row["seed"] = config.train.seed + r
            write_json(done, row)
            remove_checkpoints(folder)
            seeds.append(row)
        results["methods"][_key(spec)] = seeds[0]
        if len(seeds) > 1:  # claim 5 reads each compared arm's seeds (per_prompt_ttr), in seed order
            results.setdefault("replicates", {})[_key(spec)] = seeds
    return results


def controls_table(results: dict) -> str:
    lines = [
        (
            f"Each method trained on the study's own {results['train_blocks']} training blocks (the regime claims 1-4 "
            "are tested in) "
            if results.get("on_study_data")
            else f"Each method trained on the first {results['train_blocks']} training blocks only, a smaller regime "
            "than the one claims 1-4 are "
            "tested in (study.controls_on_study_data=false), "
        )
        + f"until its training loss reached {results['until_loss']} (at most {results['epoch_cap']} epochs); greedy "
        "continuations of the "
        f"analysis prompts. Base greedy TTR {results['base']['ttr']:.3f}. "
        + (
            "Rows marked 'reused' are the study's own runs, measured here, not retrained. "
            if any(r.get("reused_from") for r in results["methods"].values())
            else ""
        )
        + (
            f"Each method's learning rate was chosen by a sweep of {results['lr_sweep']['multiples']} x its default, "
            f"{results['lr_sweep']['epochs']} epochs each, on training loss only."
            if results.get("lr_sweep")
            else "Learning rates as configured (no sweep)."
        ),
        "",
        "| method | trainable parameters | lr | train loss | epochs | reached target | held-out perplexity | wall time "
        "(s) | TTR | distinct-3 | seq-rep-3 | largest Delta PR at | final-block Delta PR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    every_seed = [
        row for key, first in results["methods"].items() for row in results.get("replicates", {}).get(key, [first])
    ]
    for row in every_seed:
        seed = f", seed {row['seed']}" if "seed" in row and len(every_seed) > len(results["methods"]) else ""
        reached = (
            "diverged"
            if row["diverged"]
            else "yes"
            if row["final_train_loss"] <= (results["until_loss"] or float("inf"))
            else "no"
        )
        if row["diverged"]:
            lines.append(
                f"| {row['spec']}{seed} | - | - | {row['initial_train_loss']:.3f} -> {row['final_train_loss']:.3f} | "
                f"{row['epochs']} | diverged |" + " - |" * 7
            )
            continue
        lines.append(
            f"| {row['spec']}{seed}{' (reused: ' + row['reused_from'] + ')' if row.get('reused_from') else ''} | "
            f"{row['trainable_parameters']:,} | {row['lr']:g} | {row['initial_train_loss']:.3f} -> "
            f"{row['final_train_loss']:.3f} | "
            f"{row['epochs']} | {reached} | {row['heldout_perplexity']:.1f} | {row['wall_seconds']:.0f} | "
            f"{row['ttr']:.3f} | {row['distinct_3']:.3f} | "
            f"{row['seq_rep_3']:.3f} | {row['largest_delta_pr_layer']} | {row['final_block_delta_pr']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def controls_stage(graph: StageGraph, data: PreparedData, prompts, base, tokenizer) -> dict | None:
    if "controls" not in graph:
        return None
    config = graph["controls"].config

    def work(folder: Path) -> dict:
        results = run_controls(config, data, prompts, base, tokenizer, folder)
        write_json(folder / "results.json", results)
        write_text(folder / "table.md", controls_table(results))
        print(controls_table(results))
        return results

    return graph.run("controls", work, load=lambda folder: read_json(folder / "results.json"))
