"""The study's stages: data -> base evaluation -> hyperfit -> hyperfitted evaluation -> analyses -> controls -> report.

Each stage function does one stage of a `StageGraph` (pipeline/graph.py): the graph says what the
stage reads and whether a finished copy can be reused (`StageGraph.run`); the function does the work
into the stage's folder; pipeline/runner.py walks a graph and calls them in its order. An interrupted
or extended run resumes where it stopped.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hyperfitting import __version__
from hyperfitting.config import GenerateArgs, RunConfig, unrecorded
from hyperfitting.data.splits import PreparedData, Prompt, prepare_data
from hyperfitting.metrics.diversity import distinct_n, seq_rep_n, ttr
from hyperfitting.metrics.overlap import SuffixAutomaton
from hyperfitting.models.loading import load_model
from hyperfitting.pipeline.evaluate import evaluate_model, evaluate_references
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.report.model_card import write_model_card
from hyperfitting.rundir import (
    atomic_path,
    is_main_process,
    read_json,
    read_jsonl,
    wait_for_everyone,
    write_json,
    write_jsonl,
)
from hyperfitting.training.hyperfit import hyperfit, lowest_heldout_epoch, reached_target, save_trained
from hyperfitting.training.parallel import remove_checkpoints


# ------------------------------------------------------------------------------ data


def data_stage(graph: StageGraph, tokenizer) -> PreparedData:
    config = graph["data"].config

    def work(folder: Path) -> PreparedData:
        data = prepare_data(config.data, tokenizer)
        if is_main_process():
            with atomic_path(folder / "blocks.safetensors") as tmp:
                save_file(
                    {
                        "train_blocks": data.train_blocks.contiguous(),
                        "heldout_blocks": data.heldout_blocks.contiguous(),
                    },
                    tmp,
                )
        write_jsonl(folder / "prompts.jsonl", [vars(p) for corpus in data.prompts.values() for p in corpus])
        write_json(
            folder / "manifest.json",
            {
                **data.manifest,
                "fingerprint": data.fingerprint,
                "prompt_counts": {k: len(v) for k, v in data.prompts.items()},
            },
        )
        print(
            f"{len(data.train_blocks)} training blocks of {data.train_blocks.shape[1]} tokens, "
            f"{len(data.heldout_blocks)} held-out blocks, "
            f"prompts: {', '.join(f'{k} {len(v)}' for k, v in data.prompts.items())} "
            f"({data.manifest['heldout_documents']} held-out documents)"
        )
        # None: read back as a resumed run would read it, one manifest whether the stage ran now or before

    return graph.run("data", work, load=load_prepared)


def analysed_prompts(config: RunConfig, data: PreparedData) -> list[Prompt]:
    """The analyses' prompts, in the order every analysis uses them: analysis.corpora, or every evaluation corpus."""
    return [p for corpus in (config.analysis.corpora or list(data.prompts)) for p in data.prompts[corpus]]


def load_prepared(folder: Path) -> PreparedData:
    tensors = load_file(folder / "blocks.safetensors")
    prompts: dict[str, list[Prompt]] = {}
    for row in read_jsonl(folder / "prompts.jsonl"):
        prompts.setdefault(row["corpus"], []).append(Prompt(**row))
    manifest = read_json(folder / "manifest.json")
    return PreparedData(tensors["train_blocks"], tensors["heldout_blocks"], prompts, manifest)


# ------------------------------------------------------------------------------ evaluation


def evaluation_stage(
    graph: StageGraph, name: str, data: PreparedData, model, tokenizer, base_model, training_index: SuffixAutomaton
) -> dict:
    """Generate on every evaluation corpus and score; also scores the human references when evaluating the base."""
    config = graph[name].config

    def work(folder: Path) -> dict:
        # All corpora decode in one pass: on a CPU, decoding is bound by reading the weights once per
        # step, so a wider batch costs little more per step than a narrow one.
        everything = [p for prompts in data.prompts.values() for p in prompts]
        scored = evaluate_model(
            model,
            tokenizer,
            everything,
            config.generate,
            folder / "generations.jsonl",
            base_model=base_model,
            training_blocks=data.train_blocks,
            training_index=training_index,
            desc=name,
            by_corpus=True,
        )
        metrics: dict[str, dict] = {}
        for corpus, prompts in data.prompts.items():
            metrics[corpus] = scored[corpus]
            if name == "base":
                metrics[f"{corpus}:human"] = evaluate_references(
                    tokenizer, prompts, config.generate.max_new_tokens, base_model, training_index
                )
        write_json(folder / "metrics.json", metrics)
        return metrics

    return graph.run(
        name,
        work,
        load=lambda folder: read_json(folder / "metrics.json"),
        detail=f"{'sampled' if config.generate.do_sample else 'greedy'} continuations of the evaluation prompts",
    )


def diversity_probe(tokenizer, prompts: list[Prompt], config: RunConfig, heldout_blocks=None):
    """Greedy diversity on a fixed prompt subset, and optionally the final block's Delta PR: the
    hyperfitting curve and the expansion's dynamics, measured during training."""
    from hyperfitting.analysis.teacher_forcing import sample_block_positions
    from hyperfitting.analysis.geometry import participation_ratio
    from hyperfitting.generation.decoding import generate

    subset = [p.prompt_ids for p in prompts[: config.train.diversity_prompts]]
    # Plain greedy decoding whatever generate.* says: the curve is the training's own (train.diversity_*), and a
    # change of the evaluation's decoding must not make a finished training run again.
    args = unrecorded(
        GenerateArgs(do_sample=False, max_new_tokens=config.train.diversity_tokens, batch_size=len(subset) or 1)
    )
    geometry = config.train.probe_geometry and heldout_blocks is not None and len(heldout_blocks) > 0
    sample = (
        sample_block_positions(heldout_blocks, config.analysis.geometry_tokens, config.data.seed) if geometry else None
    )

    def final_block_pr(model) -> float:
        from hyperfitting.analysis.geometry import hidden_states_at

        states = hidden_states_at(model, heldout_blocks, sample)
        last_block = [name for name in states if name.startswith("block")][-1]
        return participation_ratio(states[last_block])

    def probe(model, lockstep: bool = False) -> dict:
        row: dict = {}
        if subset:
            # In lockstep (FSDP shards) every process decodes every prompt, so all take the same forward passes.
            outputs = generate(model, tokenizer, subset, args, show_progress=False, shard=not lockstep)
            ids = [o.token_ids for o in outputs]
            entropy = [v for o in outputs for v in o.entropy]
            row.update(
                ttr=ttr(ids),
                distinct_3=distinct_n(ids, 3),
                seq_rep_3=seq_rep_n(ids, 3),
                greedy_entropy=sum(entropy) / len(entropy),
            )
        if geometry:
            row["final_block_pr"] = final_block_pr(model)  # epoch 0 is the base model: the report takes differences
        return row

    return probe


# ------------------------------------------------------------------------------ training


def training_stage(graph: StageGraph, name: str, data: PreparedData, tokenizer, trackers=None) -> Path:
    """Hyperfit into stage ``name``; each epoch's numbers also go to ``trackers`` (tracking.py) as they come."""
    config = graph[name].config

    def work(folder: Path) -> Path:
        model, _ = load_model(config.model, for_training=True, sharded_training=config.train.parallelism == "fsdp")
        probe_prompts = data.prompts.get(config.data.corpus) or next(iter(data.prompts.values()), [])
        on_epoch = None
        if trackers:
            trackers.live.add(name)
            # noqa: E731
            on_epoch = lambda row: trackers.log(
                {name: {k: v for k, v in row.items() if k != "epoch"}}, step=int(row["epoch"])
            )
        result = hyperfit(
            model,
            data.train_blocks,
            data.heldout_blocks,
            config,
            folder,
            probe=diversity_probe(tokenizer, probe_prompts, config, data.heldout_blocks),
            on_epoch=on_epoch,
        )
        target = save_trained(result.model, tokenizer, result.plan, folder)
        wait_for_everyone()  # the other processes read the saved model next
        lowest = lowest_heldout_epoch(result.log)
        summary = {
            "method": result.plan.method,
            "blocks": result.plan.blocks,
            "trainable_parameters": result.plan.trainable_parameters,
            "total_parameters": result.plan.total_parameters,
            "final_train_loss": result.log[-1]["train_loss"],
            "initial_train_loss": result.log[0]["train_loss"],
            "until_loss": config.train.until_loss,
            "epochs_run": result.log[-1]["epoch"],
            "epoch_cap": config.train.epochs,
            "reached_target": reached_target(result.log, config.train.until_loss),
            "lowest_heldout_epoch": lowest,
            "lowest_heldout_loss": result.log[lowest]["heldout_loss"] if lowest is not None else None,
            "final_heldout_loss": result.log[-1]["heldout_loss"],
            "train_seconds": result.wall_seconds,
            "trunk_cache_seconds": result.trunk_cache_seconds,
            "precision": "bf16 autocast" if result.precision == "bf16" else "fp32",
            "saved_to": str(target),
        }
        write_json(folder / "summary.json", summary)
        write_model_card(target, config.to_dict(), summary, {"fingerprint": data.fingerprint})
        if is_main_process():
            remove_checkpoints(folder)  # the saved model supersedes them
            for cache_file in folder.glob("trunk_cache_*.npy"):
                cache_file.unlink()
        print(f"Saved {'adapter' if result.plan.method == 'lora' else 'model'} to {target}")
        return folder

    detail = (
        f"hyperfitting ({config.train.method} on {config.train.blocks}, to loss {config.train.until_loss}, "
        f"at most {config.train.epochs} epochs, lr {config.train.lr:g}, seed {config.train.seed})"
    )
    return graph.run(name, work, load=lambda folder: folder, detail=detail)


# ------------------------------------------------------------------------------ provenance


def source_commit() -> str | None:
    """The git commit of the hyperfitting source that ran ("+changes" when its files differ from it); None outside a
    checkout."""
    import subprocess

    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+changes" if changed else "")


def environment_record() -> dict:
    """Versions, machine and provenance (the command line, the date, the source commit) of a study's run."""
    import datetime
    import shlex
    import sys

    import accelerate
    import peft
    import transformers

    from hyperfitting.distributed import process_state

    return {
        "command": "hyperfit " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
        "hyperfitting": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "processes": process_state().num_processes,
        "device": str(process_state().device),
    }


def quality_stage(graph: StageGraph, data: PreparedData, base_model, tokenizer) -> dict:
    """MAUVE of base and hyperfitted continuations against the human ones, and the reader's rank-coloured tokens."""
    from hyperfitting.analysis.common import analysis_tokens
    from hyperfitting.report.quality import base_ranks_of_path, continuation_features, mauve_score

    config, run_dir = graph["quality"].config, graph.run_dir

    def work(folder: Path) -> dict:
        rows_decoded = ["base", "hyperfitted"] + (["hyperfitted-blocked"] if "hyperfitted-blocked" in graph else [])
        generations = {name: read_jsonl(run_dir / name / "generations.jsonl") for name in rows_decoded}
        # The temperature analyses whose decoded paths the judge places on the diversity-quality plane (claim 1(b)):
        # the stages it waits for (pipeline/graph.py: study_graph).
        frontiers = {}
        for name in (parent for parent in graph["quality"].parents if parent.startswith("analysis-temperature")):
            temperature = read_json(run_dir / name / "results.json")
            if "paths" in temperature:
                frontiers[name] = temperature
        baselines = graph.run_dir if "baselines" in graph else None
        clock = time.perf_counter()
        results: dict = {
            "mauve": {},
            "reader": [],
            "samples": 0,
            "judge": judge_quality(config, data, tokenizer, generations, frontiers, baselines),
        }
        # the stage's own profile: which of its three parts takes the time
        steps = {"judge": time.perf_counter() - clock}
        clock = time.perf_counter()
        if config.study.mauve:
            # the human texts and the greedy paths recur across the MAUVE rows: each is featurised once
            features: dict = {}
            for corpus, prompts in data.prompts.items():
                rows = {
                    name: [g for g in generations[name] if g["corpus"] == corpus] for name in ("base", "hyperfitted")
                }
                prompt_ids = [p.prompt_ids for p in prompts]
                human = continuation_features(
                    base_model,
                    prompt_ids,
                    [p.reference_ids[: config.generate.max_new_tokens] for p in prompts],
                    memo=features,
                )
                results["mauve"][corpus] = {
                    name: mauve_score(
                        human,
                        continuation_features(
                            base_model, prompt_ids, [g["continuation_ids"] for g in rows[name]], memo=features
                        ),
                    )
                    for name in rows
                }
                results["samples"] = len(prompts)
            # The judged paths of the temperature analyses too: MAUVE is the papers' second quality axis beside
            # perplexity.
            frontier = (results["judge"] or {}).get("frontier", {})
            if frontier:
                analysed = analysed_prompts(config, data)
                prompt_ids = [p.prompt_ids for p in analysed]
                human = continuation_features(
                    base_model,
                    prompt_ids,
                    [p.reference_ids[: analysis_tokens(config)] for p in analysed],
                    memo=features,
                )
                results["frontier_mauve"] = {
                    name: {
                        label: mauve_score(
                            human,
                            continuation_features(
                                base_model, prompt_ids, frontiers[name]["paths"][label], memo=features
                            ),
                        )
                        for label in points
                        if label != "human"
                    }
                    for name, points in frontier.items()
                }
            if "baselines" in graph:  # each decoding method's first seed against the same human continuations
                from hyperfitting.pipeline.baselines import baseline_paths

                results["baselines_mauve"] = {}
                for corpus in baseline_corpora(config, data):
                    prompts = data.prompts[corpus]
                    prompt_ids = [p.prompt_ids for p in prompts]
                    human = continuation_features(
                        base_model,
                        prompt_ids,
                        [p.reference_ids[: config.generate.max_new_tokens] for p in prompts],
                        memo=features,
                    )
                    results["baselines_mauve"][corpus] = {
                        name: mauve_score(human, continuation_features(base_model, prompt_ids, seeds[0], memo=features))
                        for name, seeds in baseline_paths(run_dir, corpus, config.baselines.methods).items()
                    }
        steps["mauve"] = time.perf_counter() - clock
        clock = time.perf_counter()
        reader_corpus = config.data.corpus if config.data.corpus in data.prompts else next(iter(data.prompts))
        for index, prompt in enumerate(data.prompts[reader_corpus][: config.study.reader_prompts]):
            item = {
                "prompt": tokenizer.decode(prompt.prompt_ids),
                "human": tokenizer.decode(prompt.reference_ids[: config.generate.max_new_tokens]),
            }
            for name in ("base", "hyperfitted"):
                row = [g for g in generations[name] if g["corpus"] == reader_corpus][index]
                item[f"{name}_tokens"] = [tokenizer.decode([t]) for t in row["continuation_ids"]]
                item[f"{name}_ranks"] = base_ranks_of_path(base_model, prompt.prompt_ids, row["continuation_ids"])
            results["reader"].append(item)
        steps["reader"] = time.perf_counter() - clock
        results["step_seconds"] = {name: round(seconds, 1) for name, seconds in steps.items()}
        print("quality: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in steps.items()))
        write_json(folder / "results.json", results)
        return results

    return graph.run("quality", work, load=lambda folder: read_json(folder / "results.json"))


def baseline_corpora(config: RunConfig, data: PreparedData) -> list[str]:
    return config.baselines.corpora or list(data.prompts)


def judge_quality(
    config: RunConfig,
    data: PreparedData,
    tokenizer,
    generations: dict[str, list[dict]],
    frontiers: dict[str, dict] | None = None,
    baselines_run_dir: Path | None = None,
) -> dict | None:
    """Perplexity of every row's continuations (and the human ones) under the independent judge, per corpus, with
    intervals; per temperature analysis in ``frontiers`` (stage -> results), each of its decoded paths as per-prompt
    points; and, when ``baselines_run_dir`` has a baselines stage, every decoding method beside the study's rows as
    per-prompt points."""
    from hyperfitting.analysis.common import analysis_tokens
    from hyperfitting.config import ModelArgs
    from hyperfitting.report.quality import judge_name, judged_points
    from hyperfitting.stats import mean

    name = judge_name(config.study.judge, config.model.name)
    if name is None:
        return None
    judge, judge_tokenizer = load_model(ModelArgs(name=name, dtype=config.model.dtype))
    results: dict = {"model": name, "corpora": {}}
    length = config.generate.max_new_tokens
    # a set of continuations seen before (the base model's frontier paths, a row also on the baselines plane) is judged
    # once
    memo: dict = {}
    rows_by_corpus = {}
    for corpus, prompts in data.prompts.items():
        prompt_ids = [p.prompt_ids for p in prompts]
        rows = {row: [g["continuation_ids"] for g in generations[row] if g["corpus"] == corpus] for row in generations}
        rows["human"] = [p.reference_ids[:length] for p in prompts]
        rows_by_corpus[corpus] = rows
        points = judged_points(judge, judge_tokenizer, tokenizer, prompt_ids, rows, memo)
        results["corpora"][corpus] = {}
        for row in rows:
            values = [v for v in points[row]["log_perplexity"] if v == v]
            estimate = mean(values)  # of log-perplexities: the interval is then exponentiated
            results["corpora"][corpus][row] = {
                "perplexity": math.exp(estimate.value),
                "low": math.exp(estimate.low),
                "high": math.exp(estimate.high),
                "per_prompt_log_perplexity": values,
            }
    if baselines_run_dir is not None and config.baselines.judged_seeds > 0:
        from hyperfitting.pipeline.baselines import baseline_paths

        results["baselines"] = {}
        for corpus in baseline_corpora(config, data):
            prompt_ids = [p.prompt_ids for p in data.prompts[corpus]]
            plane = {}
            for method, seeds in baseline_paths(baselines_run_dir, corpus, config.baselines.methods).items():
                per_seed = [
                    judged_points(judge, judge_tokenizer, tokenizer, prompt_ids, {method: seed}, memo)[method]
                    for seed in seeds[: config.baselines.judged_seeds]
                ]
                plane[method] = {
                    key: [_nanmean(column) for column in zip(*(p[key] for p in per_seed))]
                    for key in ("ttr", "log_perplexity")
                }
            # The study's own rows on the same plane: hyperfitted greedy (and blocked) among the methods, the human text
            # as the yardstick.
            plane.update(
                judged_points(
                    judge,
                    judge_tokenizer,
                    tokenizer,
                    prompt_ids,
                    {row: ids for row, ids in rows_by_corpus[corpus].items() if row != "base"},
                    memo,
                )
            )
            results["baselines"][corpus] = plane
    if frontiers:
        analysed = analysed_prompts(config, data)
        human = [p.reference_ids[: analysis_tokens(config)] for p in analysed]
        results["frontier"] = {
            stage: judged_points(
                judge,
                judge_tokenizer,
                tokenizer,
                [p.prompt_ids for p in analysed],
                {**temperature["paths"], "human": human},
                memo,
            )
            for stage, temperature in frontiers.items()
        }
    del judge
    return results


def _nanmean(values) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")
