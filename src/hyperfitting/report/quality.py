"""Quality beside diversity: MAUVE against the human continuations, and the side-by-side reader's rank colouring."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from hyperfitting.analysis.teacher_forcing import teacher_forced_logits
from hyperfitting.analysis.static_bias import ranks_of
from hyperfitting.precision import full_precision


@torch.no_grad()
def continuation_features(
    model,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 8,
    memo: dict | None = None,
) -> np.ndarray:
    """One vector per continuation: the model's final post-norm state, averaged over the continuation's tokens.

    ``memo`` (shared by the callers of one stage) computes each set of (prompts, continuations) once: the
    human continuations and the greedy paths recur across the MAUVE rows of a study.
    """
    from hyperfitting.generation.decoding import accepts

    key = (tuple(map(tuple, prompts)), tuple(map(tuple, continuations)))
    if memo is not None and key in memo:
        return memo[key]
    device = next(model.parameters()).device
    # the features are states: skip the head's logits
    head = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
    features = []
    for start in range(0, len(prompts), batch_size):
        rows = [
            list(p) + list(c)
            for p, c in zip(prompts[start : start + batch_size], continuations[start : start + batch_size])
        ]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        with full_precision(device):  # a measurement: float32 whatever model.precision says
            hidden = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                output_hidden_states=True,
                use_cache=False,
                **head,
            ).hidden_states[-1]
        for r, prompt in enumerate(prompts[start : start + batch_size]):
            features.append(hidden[r, len(prompt) : len(rows[r])].float().mean(0).cpu().numpy())
    features = np.stack(features)
    if memo is not None:
        memo[key] = features
    return features


def mauve_score(human: np.ndarray, generated: np.ndarray, seed: int = 25) -> float:
    """MAUVE (mauve-text) of generated against human feature sets; with few samples it is coarse, so report n beside
    it."""
    import mauve

    result = mauve.compute_mauve(
        p_features=human,
        q_features=generated,
        verbose=False,
        seed=seed,
        num_buckets=max(2, min(len(human), len(generated)) // 10),
    )
    return float(result.mauve)


def base_ranks_of_path(base, prompt: Sequence[int], continuation: Sequence[int]) -> list[int]:
    """Rank (1 = most likely) of each continuation token under the base model, given everything before it."""
    if not continuation:
        return []
    ((_, logits),) = teacher_forced_logits(base, [list(prompt) + list(continuation)], [len(prompt)])
    ranks = ranks_of(logits)
    return ranks.gather(1, torch.tensor(continuation, device=ranks.device)[:, None]).squeeze(1).tolist()


def judge_name(choice: str | None, studied: str) -> str | None:
    """The judge of a study: `auto` picks the other embedded model (Gemma judges SmolLM2 and the reverse)."""
    if choice in (None, "", "none"):
        return None
    if choice == "auto":
        return "smollm2-135m" if "gemma" in studied.lower() else "gemma3-270m"
    return choice


def judge_log_perplexities(
    judge, judge_tokenizer, prompts: Sequence[str], continuations: Sequence[str], desc: str = "judge"
) -> list[float]:
    """Per continuation, the mean negative log-likelihood (nats per judge token) of its text under an independent model,
    given the prompt's text (NaN for an empty continuation, so the list stays aligned with the prompts). Texts are
    re-tokenised by the judge, whose vocabulary differs from the studied model's; batches go through the analyses'
    teacher forcing."""
    from hyperfitting.distributed import process_state
    from hyperfitting.progress import progress_bar

    # with the judge's own leading tokens (Gemma's <bos>)
    contexts = [judge_tokenizer(prompt)["input_ids"] for prompt in prompts]
    targets = [judge_tokenizer(text, add_special_tokens=False)["input_ids"] for text in continuations]
    scored = [i for i, target in enumerate(targets) if target]
    values = [float("nan")] * len(prompts)
    sequences = [contexts[i] + targets[i] for i in scored]

    def mean_surprise(
        k: int, logits: torch.Tensor
    ) -> torch.Tensor:  # on the judge's device: one number per text crosses
        target = torch.tensor(targets[scored[k]], device=logits.device)
        return -torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).mean()

    scores = teacher_forced_logits(judge, sequences, [len(contexts[i]) for i in scored], reduce=mean_surprise)
    for k, surprise in progress_bar(
        scores, total=len(sequences), desc=desc, unit="text", leave=False, disable=not process_state().is_main_process
    ):
        values[scored[k]] = float(surprise)
    return values


def judged_points(
    judge,
    judge_tokenizer,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    paths: dict[str, Sequence[Sequence[int]]],
    memo: dict | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Each set of continuations of the same prompts as per-prompt TTR and judge log-perplexity: points of the
    diversity-quality plane. ``memo`` (shared across calls) scores a set of continuations seen before only once."""
    from hyperfitting.metrics.diversity import ttr

    memo = {} if memo is None else memo
    texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    points = {}
    for label, continuations in paths.items():
        key = tuple(map(tuple, continuations))
        if key not in memo:
            decoded = [tokenizer.decode(c, skip_special_tokens=True) for c in continuations]
            memo[key] = judge_log_perplexities(judge, judge_tokenizer, texts, decoded, desc=f"judge: {label}")
        points[label] = {"ttr": [ttr([c]) for c in continuations], "log_perplexity": memo[key]}
    return points


def plot_diversity_quality(points: dict[str, dict[str, list[float]]], judge: str, path) -> None:
    """The base model's temperature frontier, the sampling baseline, hyperfitted greedy and the human text, each with
    95% intervals over prompts, on the plane of judge perplexity (log scale) and TTR."""
    import math

    from hyperfitting import stats
    from hyperfitting.figures import new_figure, savefig

    def centre(label):
        values = points[label]
        quality = stats.mean([v for v in values["log_perplexity"] if math.isfinite(v)])
        diversity = stats.mean(values["ttr"])
        x = [
            math.exp(quality.value),
            math.exp(quality.value) - math.exp(quality.low),
            math.exp(quality.high) - math.exp(quality.value),
        ]
        return x, [diversity.value, diversity.value - diversity.low, diversity.high - diversity.value]

    figure, axis = new_figure(figsize=(6.5, 4.5))
    frontier = sorted(
        (l for l in points if l == "base, greedy" or l.startswith("base, T=")),
        key=lambda l: np.nanmean(points[l]["log_perplexity"]),
    )
    centres = {label: centre(label) for label in points}
    axis.plot(
        [centres[l][0][0] for l in frontier], [centres[l][1][0] for l in frontier], "-", color="tab:blue", alpha=0.6
    )
    styles = {
        "hyperfitted": ("*", "tab:red", 13),
        "base, sampling baseline": ("D", "tab:green", 7),
        "human": ("P", "black", 9),
    }
    for label, (x, y) in centres.items():
        marker, colour, size = styles.get(label, ("o", "tab:blue", 6))
        axis.errorbar(
            x[0],
            y[0],
            xerr=[[x[1]], [x[2]]],
            yerr=[[y[1]], [y[2]]],
            fmt=marker,
            color=colour,
            markersize=size,
            capsize=2,
            label=label if label in styles else None,
        )
        if label in frontier:
            axis.annotate(
                label.removeprefix("base, "), (x[0], y[0]), textcoords="offset points", xytext=(4, -10), fontsize=7
            )
    axis.plot([], [], "o-", color="tab:blue", label="base model over temperatures")
    axis.set_xscale("log")
    axis.set_xlabel(f"perplexity under the judge, {judge} (lower: more predictable)")
    axis.set_ylabel("type-token ratio")
    axis.set_title("Diversity against quality: is hyperfitted greedy above the frontier?", fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    savefig(figure, path)
