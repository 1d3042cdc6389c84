"""The baselines stage: the base model decoded by every method of `baselines.methods`, scored like the generation table.

Each finished method is kept in the stage folder (its generations and scores), so a study killed
half-way through the baselines resumes with the next method, not the first.
"""

from __future__ import annotations

from pathlib import Path

from hyperfitting.data.splits import PreparedData, Prompt
from hyperfitting.generation.baselines import Decoded, decode_group, decoding_groups, describe
from hyperfitting.generation.decoding import Continuation
from hyperfitting.metrics.diversity import ttr
from hyperfitting.metrics.overlap import SuffixAutomaton
from hyperfitting.pipeline.evaluate import samples_of, score
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.rundir import STAGE_DONE, read_json, read_jsonl, write_json, write_jsonl


def baseline_prompts(config, data: PreparedData) -> list[Prompt]:
    """The baselines' prompts: baselines.corpora, or every evaluation corpus (the generation table's prompts)."""
    return [p for corpus in (config.baselines.corpora or list(data.prompts)) for p in data.prompts[corpus]]


def _reuses_base_stage(config) -> bool:
    """The greedy row is the base stage's own decoding when the generation table decodes plain greedy."""
    g = config.generate
    return not (g.do_sample or g.citation_blocker or g.contrastive_top_k)


def score_method(
    name: str, decoded: Decoded, prompts: list[Prompt], tokenizer, base_model, training_index: SuffixAutomaton | None
) -> dict:
    """Per corpus: every generation-table metric (mean over seeds), per-prompt TTR (mean over seeds) for intervals."""
    results = {
        "method": name,
        "settings": decoded.method.settings,
        "seeds": len(decoded.continuations),
        "seconds": decoded.seconds,
        "tokens_per_second": decoded.tokens_per_second,
        "decoded_with": list(decoded.together),
        "corpora": {},
    }
    for corpus in dict.fromkeys(p.corpus for p in prompts):
        rows = [i for i, p in enumerate(prompts) if p.corpus == corpus]
        per_seed = []
        for seed in decoded.continuations:
            chosen = [seed[i] for i in rows]
            per_seed.append(
                score(
                    tokenizer,
                    [prompts[i] for i in rows],
                    [c.token_ids for c in chosen],
                    samples_of(tokenizer, chosen),
                    base_model,
                    training_index,
                )
            )
        metrics = {key: sum(m[key] for m in per_seed) / len(per_seed) for key in per_seed[0]}
        per_prompt_ttr = [
            sum(ttr([seed[i].token_ids]) for seed in decoded.continuations) / len(decoded.continuations) for i in rows
        ]
        results["corpora"][corpus] = {"metrics": metrics, "per_prompt_ttr": per_prompt_ttr}
    return results


def baselines_stage(
    graph: StageGraph, data: PreparedData, base_model, tokenizer, training_index: SuffixAutomaton | None
) -> dict:
    """Decode and score every baseline method; results.json maps method -> scores."""
    config = graph["baselines"].config

    def work(folder: Path) -> dict:
        prompts = baseline_prompts(config, data)
        results: dict = {}
        for group in decoding_groups(config.baselines.methods):
            pending = [name for name in group if not (folder / f"{name}.json").exists()]
            for name in group:
                if name not in pending:  # finished before an interruption
                    results[name] = read_json(folder / f"{name}.json")
            if not pending:
                continue
            if pending == ["greedy"] and "base" in graph and _reuses_base_stage(config):
                by_prompt = {
                    (g["corpus"], tuple(g["prompt_ids"])): g["continuation_ids"]
                    for g in read_jsonl(graph.run_dir / "base" / "generations.jsonl")
                }
                base_stage = read_json(graph.run_dir / "base" / STAGE_DONE)
                decoded = {
                    "greedy": Decoded(
                        describe("greedy", config),
                        [[Continuation(p.prompt_ids, by_prompt[(p.corpus, tuple(p.prompt_ids))]) for p in prompts]],
                        float("nan"),
                    )
                }
                print(
                    f"baseline greedy: the base stage's continuations (decoded in {base_stage['wall_seconds']:.0f} s "
                    "with the other corpora)"
                )
            else:
                decoded = decode_group(pending, base_model, tokenizer, [p.prompt_ids for p in prompts], config)
            # each method's files as soon as its group is decoded: a resumed study starts at the next group
            for name in pending:
                _keep_method(folder, name, decoded[name], prompts, tokenizer, base_model, training_index, results)
        # the order of baselines.methods, not of the groups
        results = {name: results[name] for name in config.baselines.methods}
        write_json(folder / "results.json", results)
        return results

    return graph.run(
        "baselines",
        work,
        load=lambda folder: read_json(folder / "results.json"),
        detail=f"the model decoded by {len(config.baselines.methods)} methods, at the same budget",
    )


def _keep_method(
    folder,
    name: str,
    decoded: Decoded,
    prompts: list[Prompt],
    tokenizer,
    base_model,
    training_index: SuffixAutomaton | None,
    results: dict,
) -> None:
    """Write one decoded method's continuations and scores into the stage folder, and into ``results``."""
    write_jsonl(
        folder / f"{name}.jsonl",
        [
            {
                "corpus": p.corpus,
                "seed": s,
                "prompt_ids": p.prompt_ids,
                "continuation_ids": c.token_ids,
                "continuation": tokenizer.decode(c.token_ids, skip_special_tokens=True),
            }
            for s, seed in enumerate(decoded.continuations)
            for p, c in zip(prompts, seed)
        ],
    )
    results[name] = score_method(name, decoded, prompts, tokenizer, base_model, training_index)
    write_json(folder / f"{name}.json", results[name])
    speed = f", {decoded.tokens_per_second:.0f} tokens/s" if decoded.seconds == decoded.seconds else ""
    print(
        f"baseline {name} ({decoded.method.settings}): "
        + ", ".join(f"{corpus} TTR {row['metrics']['ttr']:.3f}" for corpus, row in results[name]["corpora"].items())
        + speed
        + (
            f" (decoded together with {', '.join(n for n in decoded.together if n != name)})"
            if decoded.together
            else ""
        )
    )


def baseline_paths(run_dir, corpus: str, methods: list[str]) -> dict[str, list[list[list[int]]]]:
    """For the judge: each method's continuations on ``corpus`` as [seed][prompt] -> token ids, read back from the
    stage."""
    paths = {}
    for name in methods:
        rows = [r for r in read_jsonl(run_dir / "baselines" / f"{name}.jsonl") if r["corpus"] == corpus]
        seeds = sorted({r["seed"] for r in rows})
        paths[name] = [[r["continuation_ids"] for r in rows if r["seed"] == s] for s in seeds]
    return paths
