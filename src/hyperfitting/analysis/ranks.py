"""Claim 3, "dynamic, context-dependent rank reordering".

The hyperfitted model's greedy continuations are teacher-forced through both models. At each
step we ask where the hyperfitted choice sat in the base model's ranking (overrides, the deep
tail), how the two top-k lists agree (Kendall's tau), and whether the promoted tokens move the
same way in every context (a static reweighting) or not. A rank transplant then separates
ranking from sharpening.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hyperfitting.analysis.common import decode, decode_many, mean_and_spread, path_summary, per_prompt_ttr
from hyperfitting.analysis.teacher_forcing import StepChoice, path_scan, ranks_of_chosen
from hyperfitting.figures import new_figure, savefig
from hyperfitting.metrics.diversity import ttr
from hyperfitting.analysis.static_bias import heldout_static_models, ranks_of, static_choice
from hyperfitting.config import RunConfig
from hyperfitting.generation.processors import CitationBlocker, RankTransplant, RevertUnexplained
from hyperfitting.rundir import write_text

RANK_BINS = [(1, 1, "1"), (2, 10, "2-10"), (11, 100, "11-100"), (101, 1000, "101-1000"), (1001, 10**9, ">1000")]
PAPER = {"override_rate": 0.391, "share_of_overrides_from_rank_over_10": 0.129}


def rank_statistics(
    base_logits: torch.Tensor, tuned_logits: torch.Tensor, chosen: torch.Tensor, top_k: int = 10, chunk: int = 256
) -> dict:
    """Statistics of the steps (rows) of a path: logits of both models (P, V) and the tokens chosen (P,).

    Whole-vocabulary rankings are computed ``chunk`` rows at a time, once, keeping only the columns
    of the tokens in the hyperfitted top-k lists: memory stays at a few (chunk x V) tensors beside
    the inputs, whatever the vocabulary (262k tokens on Gemma).
    """
    from scipy.stats import kendalltau

    chosen = chosen.to(base_logits.device)
    chosen_base_rank = ranks_of_chosen(base_logits, chosen)
    overrides = chosen_base_rank > 1
    n_overrides = int(overrides.sum())
    histogram = {
        label: int(((chosen_base_rank >= low) & (chosen_base_rank <= high)).sum()) for low, high, label in RANK_BINS
    }

    taus = []
    base_top = base_logits.topk(top_k, dim=-1).indices
    tuned_top = tuned_logits.topk(top_k, dim=-1).indices
    # Both models' logits at both top-k lists are gathered where the logits are and cross to the host once, (P, 2k)
    # each.
    columns = torch.cat([base_top, tuned_top], dim=1)
    columns_host = columns.cpu().numpy()
    base_at, tuned_at = (logits.gather(1, columns).cpu().numpy() for logits in (base_logits, tuned_logits))
    for step in range(len(chosen)):
        _, first = np.unique(columns_host[step], return_index=True)  # the union of the two lists, in token order
        tau = kendalltau(base_at[step, first], tuned_at[step, first]).statistic
        taus.append(0.0 if np.isnan(tau) else float(tau))

    # Context dependence, on the tokens the hyperfitted model promoted into its top-k somewhere: all of them are among
    # the tokens of its top-k lists, so one chunked pass keeps only those columns of the two rankings and of the shift.
    candidates = torch.unique(tuned_top)
    base_ranks, tuned_ranks, shifts = [], [], []
    for rows in _chunks(len(chosen), chunk):
        base, tuned = base_logits[rows], tuned_logits[rows]
        base_ranks.append(ranks_of(base)[:, candidates])
        tuned_ranks.append(ranks_of(tuned)[:, candidates])
        shifts.append(
            (torch.log_softmax(tuned, -1)[:, candidates] - torch.log_softmax(base, -1)[:, candidates]).double()
        )
    tokens, dependence = candidates, {}
    if shifts:
        base_ranks, tuned_ranks = torch.cat(base_ranks), torch.cat(tuned_ranks)
        promoted = ((tuned_ranks <= top_k) & (tuned_ranks < base_ranks)).any(0)
        tokens = candidates[promoted]
        if len(tokens):
            dependence = context_dependence(
                torch.cat(shifts)[:, promoted], base_ranks[:, promoted], tuned_ranks[:, promoted]
            )
    return {
        "steps": len(chosen),
        "override_rate": n_overrides / max(1, len(chosen)),
        "base_rank_histogram": histogram,
        "share_of_overrides_from_rank_over_10": int((chosen_base_rank > 10).sum()) / max(1, n_overrides),
        "share_of_overrides_from_rank_over_200": int((chosen_base_rank > 200).sum()) / max(1, n_overrides),
        "max_base_rank_chosen": int(chosen_base_rank.max()) if len(chosen) else 0,
        "kendall_tau_top_k": {"k": top_k, "mean": float(np.mean(taus)) if taus else float("nan")},
        "promoted_tokens": int(len(tokens)),
        "context_dependence": dependence,
    }


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def context_dependence(shift: torch.Tensor, base_ranks: torch.Tensor, tuned_ranks: torch.Tensor) -> dict:
    """How much of each promoted token's log-probability shift is the same in every context.

    ``shift``: (contexts x tokens) log_softmax(tuned) - log_softmax(base) of the promoted tokens; ``base_ranks``,
    ``tuned_ranks``: their ranks (1 = top) under each model. A static reweighting z + b shifts token v's
    log-probability by b_v minus a per-context normaliser, so after removing each context's mean over the tokens,
    the shift is the same in every context: ``static_share`` (the variance explained by a per-token constant) is 1.
    A context-dependent re-ranking leaves most of the variance to the context: the share is low.
    """
    shift = shift - shift.mean(dim=1, keepdim=True)  # remove the per-context normaliser
    total = float(((shift - shift.mean()) ** 2).sum())
    within = float(((shift - shift.mean(dim=0, keepdim=True)) ** 2).sum())
    rank_change = (base_ranks - tuned_ranks).float()  # > 0: promoted in that context
    majority = torch.maximum((rank_change > 0).float().mean(0), (rank_change < 0).float().mean(0))
    return {
        "static_share": 1.0 - within / total if total > 1e-12 else float("nan"),
        "sign_consistency_mean": float(majority.mean()),
        "sign_consistency_per_token": majority.tolist(),
    }


def null_choices(fitted: dict) -> dict[str, StepChoice]:
    """The decision rules the null comparison reads along a path: the base model's top-1 and the fitted null's pick."""
    return {"top1": lambda logits: logits.argmax(-1), "null": lambda logits: static_choice(logits, fitted)}


def null_comparison(
    path: dict[str, torch.Tensor],
    chosen: torch.Tensor,
    prompt_of_step: torch.Tensor,
    fitted: dict,
    n_prompts: int,
    copied: torch.Tensor | None = None,
    ngram: int = 5,
) -> dict:
    """Per prompt: steps, overrides of the base top-1, and overrides the fitted static+temperature model does not
    reproduce.

    ``path`` holds, per step of the hyperfitted paths, the base model's ``top1``, the fitted
    null's pick (``null``) and the base rank of the token taken (``chosen_rank``): a
    :func:`path_scan` of the base model with :func:`null_choices`. The null is the strongest
    static explanation (a temperature and a fixed per-token bias, fitted on held-out text): an
    override it also makes is explained by a static reweighting, however deep in the base
    ranking the chosen token sat.

    ``copied`` marks the steps whose token completes an ``ngram``-gram of the training data: there the hyperfitted model
    recites, and an override is memory, not re-ranking. Those steps are counted apart (``copied``) and left out of the
    other counts; without ``copied`` (no training data given) nothing is left out and ``copied_spans`` says so.
    """
    base_top1, null_choice = path["top1"], path["null"]
    novel = ~copied if copied is not None else torch.ones_like(chosen, dtype=torch.bool)
    overrides = (chosen != base_top1) & novel
    unexplained = overrides & (null_choice != chosen)
    deep = overrides & (path["chosen_rank"] > 10)

    def per_prompt(mask: torch.Tensor) -> list[int]:
        return torch.bincount(prompt_of_step[mask], minlength=n_prompts).tolist()

    return {
        "per_prompt": {
            "steps": per_prompt(novel),
            "overrides": per_prompt(overrides),
            "unexplained_overrides": per_prompt(unexplained),
            "copied": per_prompt(~novel),
        },
        "copied_spans": None
        if copied is None
        else {"share_of_steps": float((~novel).float().mean()) if len(chosen) else 0.0, "n": ngram},
        "null": {
            "scale": fitted["scale"],
            "fitted_on": fitted.get("fitted_on"),
            # How well the null fits where it was fitted (held-out text): a weak fit leaves overrides "unexplained"
            # cheaply.
            "heldout_top1_agreement": (fitted.get("top1_agreement_by_fit") or {}).get(fitted.get("fitted_on")),
            "overrides_reproduced": float((overrides & (null_choice == chosen)).sum()) / max(1, int(overrides.sum())),
            "deep_tail_reproduced": float((deep & (null_choice == chosen)).sum()) / max(1, int(deep.sum())),
            "null_override_rate": float(((null_choice != base_top1) & novel).sum()) / max(1, int(novel.sum())),
        },
    }


def copied_steps(prompts: list[list[int]], continuations, training_blocks: torch.Tensor, n: int) -> torch.Tensor:
    """Per step of the continuations (in order): does its token complete an n-gram of the training blocks, prompt
    included?"""
    table = CitationBlocker(training_blocks, n)
    return torch.tensor(
        [
            flag
            for prompt, c in zip(prompts, continuations)
            for flag in table.completes(list(prompt) + list(c.token_ids), len(prompt))
        ],
        dtype=torch.bool,
    )


def rank_analysis(
    base,
    tuned,
    tokenizer,
    prompts: list[list[int]],
    config: RunConfig,
    tuned_greedy=None,
    heldout_blocks: torch.Tensor | None = None,
    heldout_static=None,
    training_blocks: torch.Tensor | None = None,
    transplant: bool = True,
) -> dict:
    """Claim 3: overrides and deep-tail promotions along the hyperfitted paths, against the static+temperature null, and
    the rank transplant.

    ``training_blocks``: steps that complete one of their n-grams (generate.citation_blocker_n) are left out of the
    comparison with the null. ``transplant=False`` leaves out the rank transplant (the non-hyperfitting control needs
    only the comparison with the null).
    """
    args = config.analysis
    tuned_greedy = tuned_greedy or decode(tuned, tokenizer, prompts, config, desc="hyperfitted greedy")
    chosen = torch.tensor([t for c in tuned_greedy for t in c.token_ids], dtype=torch.long)
    prompt_of_step = torch.tensor([i for i, c in enumerate(tuned_greedy) for _ in c.token_ids], dtype=torch.long)
    # The null model is fitted on held-out human text, not on the paths it is then asked to explain.
    _, fitted = heldout_static or heldout_static_models(base, tuned, heldout_blocks, config)
    # claim 3's null: the widest context-free family (a scale and offset per token)
    fitted = fitted.get("widest", fitted)
    # The steps whose whole rankings the statistics compare are drawn first; every other step keeps a few numbers only.
    keep = np.sort(np.random.default_rng(0).choice(len(chosen), min(len(chosen), args.max_positions), replace=False))
    base_path = path_scan(base, prompts, tuned_greedy, null_choices(fitted), keep_steps=keep)
    tuned_path = path_scan(tuned, prompts, tuned_greedy, keep_steps=keep, chosen_rank=False)  # its rows only
    statistics = rank_statistics(
        base_path.pop("kept"), tuned_path.pop("kept"), chosen[torch.from_numpy(keep)], args.rank_top_k
    )
    copied = None
    if training_blocks is not None:
        copied = copied_steps(prompts, tuned_greedy, training_blocks, config.generate.citation_blocker_n)
    comparison = null_comparison(
        base_path, chosen, prompt_of_step, fitted, len(prompts), copied, config.generate.citation_blocker_n
    )
    results = {**statistics, **comparison, "seeds": args.seeds, "paper": PAPER}
    if transplant:
        results["rank_transplant"] = rank_transplant(base, tuned, tokenizer, prompts, config)
    results["reverted"] = reverted_paths(base, tuned, tokenizer, prompts, config, fitted)
    return results


def reverted_paths(base, tuned, tokenizer, prompts: list[list[int]], config: RunConfig, fitted: dict) -> dict:
    """Claim 3's causal check: the hyperfitted model decoded greedily with every unexplained override (its choice is
    neither the base top-1 nor the fitted null's) reverted to the null's choice. If those overrides carry the diversity
    gain, these paths lose it; the claim reads the per-prompt TTR. Steps that recite training text are reverted too
    where they are unexplained overrides (the decode cannot tell them apart before the token is chosen)."""
    revert = RevertUnexplained(base, null_choices(fitted)["null"])
    outputs = decode(
        tuned, tokenizer, prompts, config, processors=[revert], desc="hyperfitted, unexplained overrides reverted"
    )
    return {
        "per_prompt_ttr": per_prompt_ttr(outputs),
        "ttr": ttr([o.token_ids for o in outputs]),
        "share_of_steps_reverted": revert.reverted / max(1, revert.steps),
    }


def rank_transplant(base, tuned, tokenizer, prompts: list[list[int]], config: RunConfig) -> dict:
    """Sampling at T = 1 with one model's ranking and the other's probability profile: which of the two carries the
    gain?"""
    args = config.analysis
    settings = {
        "base, T=1": (base, None),
        "hyperfitted, T=1": (tuned, None),
        "hyperfitted ranking + base profile": (tuned, base),
        "base ranking + hyperfitted profile": (base, tuned),
    }
    # The settings of each decoding model run at once (prompts x settings x seeds rows per step).
    runs: dict[str, list] = {}
    for model in {id(base): base, id(tuned): tuned}.values():  # once each, even if they are one model
        mine = [(name, companion) for name, (decoder, companion) in settings.items() if decoder is model]
        requests = [
            {
                "temperature": 1.0,
                "seed": seed,
                "processors": [RankTransplant(companion)] if companion is not None else [],
            }
            for _, companion in mine
            for seed in range(args.seeds)
        ]
        outputs = iter(decode_many(model, tokenizer, prompts, config, requests, desc="rank transplant, T=1"))
        for name, _ in mine:
            runs[name] = [next(outputs) for _ in range(args.seeds)]
    return {name: mean_and_spread([path_summary(outputs) for outputs in runs[name]]) for name in settings}


def run(context) -> dict:
    """The registry's entry point (hyperfitting.registry): the analysis on a study's context (the lowest-held-out
    control needs only the comparison with the null, not the rank transplant)."""
    return rank_analysis(
        context.base,
        context.tuned,
        context.tokenizer,
        context.prompts,
        context.config,
        context.tuned_greedy,
        context.data.heldout_blocks,
        context.heldout_static,
        training_blocks=context.data.train_blocks,
        transplant=context.config.analysis.rank_transplant and not context.control,
    )


def write_rank_analysis(results: dict, folder: Path) -> None:
    write_text(folder / "table.md", rank_table(results))
    plot_ranks(results, folder / "ranks.png")


def rank_table(results: dict) -> str:
    histogram = results["base_rank_histogram"]
    steps = max(1, results["steps"])
    dependence = results["context_dependence"]
    lines = [
        f"Over {results['steps']} greedy steps of the hyperfitted model: override rate {results['override_rate']:.3f} "
        f"(paper {PAPER['override_rate']}); of the overrides, {results['share_of_overrides_from_rank_over_10']:.3f} "
        "came from base rank > 10 "
        f"(paper {PAPER['share_of_overrides_from_rank_over_10']}) and "
        f"{results['share_of_overrides_from_rank_over_200']:.3f} from rank > 200; "
        f"deepest base rank chosen: {results['max_base_rank_chosen']}. Mean Kendall tau of the "
        f"top-{results['kendall_tau_top_k']['k']} lists: "
        f"{results['kendall_tau_top_k']['mean']:.3f}.",
        "",
        "| base rank of the chosen token | " + " | ".join(histogram) + " |",
        "|---|" + "---|" * len(histogram),
        "| share of steps | " + " | ".join(f"{v / steps:.3f}" for v in histogram.values()) + " |",
        "",
    ]
    null = results.get("null")
    if null:
        counts = results["per_prompt"]
        copied = results.get("copied_spans")
        fitted_on = f", fitted over {null['fitted_on']}" if null.get("fitted_on") else ""
        tau = (
            f"tau {1 / null['scale']:.2f}"
            if null["scale"] > 0
            else f"scale {null['scale']:.2f}, no positive temperature"
        )
        lines += [
            (
                f"Of these steps, {copied['share_of_steps']:.1%} complete a training {copied['n']}-gram (the model "
                "recites): they are left "
                "out of what follows. "
                if copied
                else "Steps that copy the training data are not left out (no training data given). "
            )
            + f"Null model (base logits / tau + a fixed per-token bias, fitted on held-out text{fitted_on}; {tau}): it "
            "overrides the base "
            f"top-1 on {null['null_override_rate']:.1%} of the steps and reproduces {null['overrides_reproduced']:.1%} "
            "of the hyperfitted "
            f"overrides ({null['deep_tail_reproduced']:.1%} of those from base rank > 10). Overrides it does not "
            "explain: "
            f"{sum(counts['unexplained_overrides']) / max(1, sum(counts['steps'])):.1%} of steps.",
            "",
        ]
    if dependence:
        lines += [
            f"Context dependence over {results['promoted_tokens']} promoted tokens: static share of their "
            "log-probability shift "
            f"{dependence['static_share']:.3f} (1 = a fixed reweighting), mean sign consistency of their rank change "
            f"{dependence['sign_consistency_mean']:.3f} (1 = always the same direction).",
            "",
        ]
    if "rank_transplant" not in results:
        return "\n".join(lines) + "\n"
    seeds = results.get("seeds")  # absent from results written before it was recorded: spreads shown as they were
    one = seeds == 1
    spread = ", one seed" if one else f", mean ± standard deviation over {seeds or 'the'} seeds"
    lines += [
        f"| rank transplant (sampling, T=1{spread}) | ttr | bigram_rep | trigram_rep | entropy |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["rank_transplant"].items():
        cells = [
            f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" if not one else f"{row[k]['mean']:.3f}"
            for k in ("ttr", "bigram_rep", "trigram_rep", "entropy")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_ranks(results: dict, path: Path) -> None:

    figure, (left, right) = new_figure(1, 2, figsize=(11, 3.8))
    figure.subplots_adjust(wspace=0.3)
    histogram = results["base_rank_histogram"]
    left.bar(list(histogram), [v / max(1, results["steps"]) for v in histogram.values()], color="tab:blue")
    left.set_xlabel("base rank of the hyperfitted greedy token")
    left.set_ylabel("share of steps")
    left.set_title("Where hyperfitted choices sit in the base ranking")
    consistency = results["context_dependence"].get("sign_consistency_per_token", [])
    right.hist(consistency, bins=20, range=(0.5, 1.0), color="tab:orange")
    right.set_xlabel("sign consistency across contexts")
    right.set_ylabel("tokens")
    right.set_title("Static (1.0) or context-dependent?")
    savefig(figure, path)
