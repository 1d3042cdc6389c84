"""Claim 1(b): hyperfitted greedy lies above the base model's diversity-quality frontier.

Sampling hotter buys diversity with quality; only a point clear of the curve the base model's temperatures
trace (TTR against judge perplexity) is more than a temperature.
"""

from __future__ import annotations

import math

import numpy as np

from hyperfitting import stats
from hyperfitting.claims.core import (
    Check,
    Claim,
    ClaimSpec,
    Rule,
    gain_check,
    hyperfitted_check,
    make_claim,
    not_run,
    register_claim,
    with_replicates,
)
from hyperfitting.claims.worlds import TRAINED, Truths, noisy, prompts, seed_shifts

RULE = Rule(
    "hyperfitted greedy TTR minus the TTR of the base model's temperature frontier at the same judge perplexity "
    "(the frontier's upper envelope: the best TTR any mixture of sampled temperatures reaches at that perplexity), "
    "paired over prompts",
    "above",
    0.05,
    "0.05 TTR, as claim 1: sampling hotter buys diversity with quality, so only a point clear of that curve is "
    "more than a temperature",
)
# 1(b) moves with the hyperfitted greedy TTR alone: the base frontier it is set against has no training seed.
SEED_SD = (
    0.047,
    "hyperfitted greedy TTR over three fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373",
)


def envelope_at(quality: np.ndarray, ttr: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The frontier's upper envelope at log-perplexity ``at``: the best TTR that any base point of no worse perplexity
    reaches, or any mixture of two points (decoding a share of the prompts at each temperature reaches every point on
    the segment between them). A dominated, noisy temperature cannot pull the curve down, as a line through every
    point would. Flat beyond the ends. Vectorised: ``quality``, ``ttr`` are (..., k), ``at`` is (...).
    """
    at = at[..., None]
    left = quality <= at
    best = np.where(left, ttr, -np.inf).max(-1)
    first = np.take_along_axis(ttr, quality.argmin(-1)[..., None], -1)[..., 0]
    best = np.where(np.isfinite(best), best, first)  # left of every point: flat at the best-quality one
    k = quality.shape[-1]
    for i in range(k):
        for j in range(k):
            qi, qj, ti, tj = quality[..., i], quality[..., j], ttr[..., i], ttr[..., j]
            straddle = (qi <= at[..., 0]) & (at[..., 0] < qj)
            with np.errstate(divide="ignore", invalid="ignore"):
                on_segment = ti + (tj - ti) * (at[..., 0] - qi) / (qj - qi)
            best = np.where(straddle, np.maximum(best, on_segment), best)
    return best


def _frontier_gap(hyperfitted_ttr, hyperfitted_log_perplexity, *frontier_columns, axis=-1):
    """Mean hyperfitted TTR minus the frontier's upper envelope at the hyperfitted mean judge log-perplexity.

    ``frontier_columns`` are (TTR, log-perplexity) per prompt for each base point; the envelope is
    taken over their means.
    """
    ttrs = np.stack([np.mean(c, axis=axis) for c in frontier_columns[0::2]], axis=-1)
    quality = np.stack([np.mean(c, axis=axis) for c in frontier_columns[1::2]], axis=-1)
    return np.mean(hyperfitted_ttr, axis=axis) - envelope_at(
        quality, ttrs, np.mean(hyperfitted_log_perplexity, axis=axis)
    )


FRONTIER_GAP = stats.Statistic("gap above the frontier's envelope", _frontier_gap)


def frontier_gap(hyperfitted_ttr, hyperfitted_log_perplexity, *frontier_columns) -> float:
    return float(
        FRONTIER_GAP(
            np.asarray(hyperfitted_ttr), np.asarray(hyperfitted_log_perplexity), *map(np.asarray, frontier_columns)
        )
    )


def claim_frontier(replicates: list[dict] | dict | None, trains: list[dict | None]) -> Claim:
    """Claim 1(b): the base model sampled over temperatures traces diversity against judge perplexity; is hyperfitted
    greedy above it?

    ``replicates``: per hyperfitted replicate, the judged points of its temperature analysis (one dict: one replicate).
    The gap is pooled over replicates crossed with the prompts, as every other claim's.
    """
    replicates = [replicates] if isinstance(replicates, dict) else [r for r in (replicates or []) if r]
    if not replicates:
        return not_run("1b", "needs the temperature analysis and a judge model (study.judge)")
    points = replicates[0]
    # The base model's temperatures every replicate decoded: each replicate also samples at its own T* (0.644, 0.643,
    # 0.632 over three seeds), a point of the same base frontier that only the grid's shared points can pool.
    frontier = sorted(
        (
            label
            for label in points
            if (label == "base, greedy" or label.startswith("base, T=")) and all(label in r for r in replicates)
        ),
        key=lambda label: float(np.nanmean(points[label]["log_perplexity"])),
    )
    labels = ["hyperfitted", *frontier]
    if len(frontier) < 2 or not all("hyperfitted" in r for r in replicates):
        return not_run(
            "1b",
            "the replicates' temperature analyses share fewer than two base temperatures: rerun them with one grid",
        )
    # A prompt whose continuation the judge could not score (empty text) leaves every column of every replicate, so they
    # stay paired.
    keep = [
        i
        for i in range(len(points["hyperfitted"]["ttr"]))
        if all(math.isfinite(r[l]["log_perplexity"][i]) for r in replicates for l in labels)
    ]
    groups = [
        tuple(np.array(r[l][measure])[keep] for l in labels for measure in ("ttr", "log_perplexity"))
        for r in replicates
    ]
    estimate = stats.pooled(groups, FRONTIER_GAP)
    mean_of = {
        l: (float(np.mean(points[l]["ttr"])), float(np.exp(np.nanmean(points[l]["log_perplexity"])))) for l in points
    }
    # hyperfitted, then the frontier
    qualities = [float(np.mean([np.mean(g[i]) for g in groups])) for i in range(1, len(groups[0]), 2)]
    tuned_quality, low, high = qualities[0], min(qualities[1:]), max(qualities[1:])
    inside = low <= tuned_quality <= high
    gain, _ = gain_check([(r["hyperfitted"]["ttr"], r["base, greedy"]["ttr"]) for r in replicates])
    checks = [
        hyperfitted_check(trains[: len(replicates)]),
        gain,
        Check(
            "hyperfitted judge perplexity within the frontier",
            inside,
            f"{math.exp(tuned_quality):.1f} against {math.exp(low):.1f}-{math.exp(high):.1f}"
            + ("" if inside else ": add temperatures to analysis.temperature_grid so the frontier reaches it"),
        ),
    ]
    evidence = (
        "frontier (TTR at judge perplexity, replicate 0): "
        + ", ".join(f"{l.removeprefix('base, ')} {mean_of[l][0]:.3f} at {mean_of[l][1]:.1f}" for l in frontier)
        + f"; hyperfitted {mean_of['hyperfitted'][0]:.3f} at {mean_of['hyperfitted'][1]:.1f}; {len(keep)} prompts"
        + (f" x {len(replicates)} replicates" if len(replicates) > 1 else "")
    )
    baseline = "base, sampling baseline"
    if baseline in points:
        scored = [
            i
            for i in range(len(points[baseline]["ttr"]))
            if math.isfinite(points[baseline]["log_perplexity"][i])
            and math.isfinite(points["hyperfitted"]["log_perplexity"][i])
        ]
        tuned, other = (
            {m: [points[l][m][i] for i in scored] for m in ("ttr", "log_perplexity")} for l in ("hyperfitted", baseline)
        )
        evidence += (
            "; hyperfitted minus the base model's sampling baseline (analysis.baseline_*; Carlsson et al.'s top-p): "
            "TTR "
            f"{stats.paired_difference(tuned['ttr'], other['ttr'])}, judge log-perplexity "
            f"{stats.paired_difference(tuned['log_perplexity'], other['log_perplexity'])}"
        )
    if "human" in points:
        evidence += f"; human text {mean_of['human'][0]:.3f} at {mean_of['human'][1]:.1f}"
    claim = make_claim("1b", estimate, checks, evidence)
    return with_replicates(claim, [stats.pooled([g], FRONTIER_GAP).value for g in groups])


def world_frontier(design, spreads, effect, rng):
    """A concave frontier of base temperatures in (judge log-perplexity, TTR); hyperfitted ``effect`` above its
    envelope.

    Each replicate's temperature analysis decodes its own base paths over the same prompts; its hyperfitted model
    carries its own seed effect."""
    k = max(design.frontier_points, 2)
    quality = np.linspace(1.5, 3.5, k)
    ttr = 0.2 + 0.5 * (1 - np.exp(-(quality - 1.5)))
    tuned_quality = 2.3
    tuned_ttr = float(np.interp(tuned_quality, quality, ttr)) + effect
    base = prompts(design, spreads, rng) - 0.30
    half = spreads.paired_sd / math.sqrt(2)
    replicates = []
    for seed_effect in seed_shifts(spreads, spreads.seed_sd, design.replicates, rng):
        points = {
            "hyperfitted": {
                "ttr": noisy(base + tuned_ttr + seed_effect, half, rng),
                "log_perplexity": noisy(np.full(design.prompts, tuned_quality), 0.3, rng),
            }
        }
        for i, (q, t) in enumerate(zip(quality, ttr)):
            label = "base, greedy" if i == 0 else f"base, T={0.2 * i:.3f}"
            points[label] = {
                "ttr": noisy(base + t, half, rng),
                "log_perplexity": noisy(np.full(design.prompts, q), 0.3, rng),
            }
        replicates.append(points)
    return claim_frontier(replicates, [TRAINED] * len(replicates)), effect


register_claim(
    ClaimSpec(
        "1b",
        "Not temperature (b): hyperfitted greedy lies above the base model's diversity-quality frontier",
        "no frontier in the paper; Carlsson et al. find hyperfitted greedy preferred by people over top-p sampling",
        RULE,
        lambda evidence: claim_frontier(evidence.frontier, evidence.trains),
        world_frontier,
        Truths(0.05, 0.0, 0.15, "assumed: the paper has no frontier"),
        SEED_SD,
    )
)
