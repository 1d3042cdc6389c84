"""Claim 3: hyperfitting re-ranks tokens dynamically, by context.

The share of hyperfitted greedy steps that override the base top-1 with a token no fitted context-free
null chooses, counted over the steps that do not recite training text.
"""

from __future__ import annotations

import math

import numpy as np

from hyperfitting import stats
from hyperfitting.claims.core import (
    HOLDS,
    INCONCLUSIVE,
    Check,
    Claim,
    ClaimSpec,
    Rule,
    contrary_p,
    gain_check,
    hyperfitted_check,
    make_claim,
    not_run,
    register_claim,
    with_replicates,
)
from hyperfitting.claims.worlds import TRAINED, Truths, noisy, temperature_results, world_seed_sd

RULE = Rule(
    "share of hyperfitted greedy steps that override the base top-1 with a token the fitted context-free null does not "
    "choose (fitted on held-out text: a scale and an offset per token, or one temperature and an offset per token, "
    "whichever reproduces more of the hyperfitted top-1 choices there); a 'holds' stands only if reverting those "
    "overrides to the null's choice clearly costs greedy TTR (the causal check: they carry the gain)",
    "above",
    0.05,
    "one step in twenty; the paper reports 39.1% overrides in all, and a rarer reordering could not carry the "
    "diversity gain",
)
SEED_SD = (0.043, "claim 3's effect over three fp32 seeds of the standard preset, SmolLM2-135M: .399, .427, .343")
TRUTHS = Truths(0.05, 0.03, 0.2, "assumed: about half of the paper's 39.1% overrides unexplained")


def claim_ranks(
    results: list[dict],
    trains: list[dict | None],
    gain_pairs: list[tuple[list[float], list[float]]] | None = None,
    control: dict | None = None,
) -> Claim:
    """``gain_pairs``: per replicate, (hyperfitted, base) greedy TTR per prompt (from the temperature or static-bias
    analysis): a reordering that did not raise diversity is not the reordering the claim is about. ``control``: the rank
    analysis of the first run at its lowest held-out loss (a fine-tune that did not hyperfit), shown beside the
    verdict."""
    if not results:
        return not_run(3)
    if not all(r.get("per_prompt") and "copied" in r["per_prompt"] for r in results):
        return not_run(
            3, "these results predate per-prompt counts with copied training spans left out: rerun the analysis"
        )
    groups = [(r["per_prompt"]["unexplained_overrides"], r["per_prompt"]["steps"]) for r in results]
    estimate = stats.pooled(groups, stats.RATIO_OF_SUMS)
    overrides = stats.pooled(
        [(r["per_prompt"]["overrides"], r["per_prompt"]["steps"]) for r in results], stats.RATIO_OF_SUMS
    )
    scales = [r["null"]["scale"] for r in results]
    first = results[0]
    if gain_pairs:
        gain, gain_estimate = gain_check(gain_pairs)
    else:
        gain, gain_estimate = (
            Check(
                "hyperfitting raised greedy TTR",
                False,
                "no per-prompt TTR of both models: run the temperature or static-bias analysis",
            ),
            None,
        )
    copied = [r.get("copied_spans") for r in results]
    checks = [
        hyperfitted_check(trains),
        gain,
        Check(
            "static+temperature null fitted",
            all(v > 0 for v in scales),
            "tau " + ", ".join(f"{1 / v:.3f}" if v > 0 else "undefined" for v in scales),
        ),
        Check(
            "copied training spans left out",
            all(copied),
            ", ".join(
                f"{c['share_of_steps']:.1%} of steps complete a training {c['n']}-gram"
                if c
                else "not known: the analysis had no training data"
                for c in copied
            ),
        ),
    ]
    fitted_on = f" fitted over {first['null']['fitted_on']}," if first["null"].get("fitted_on") else ""
    evidence = (
        f"overrides of the base top-1 {overrides} of the steps that do not recite training text, "
        f"{first['share_of_overrides_from_rank_over_10']:.1%} of all overrides from base rank > 10; the "
        "static+temperature model"
        f"{fitted_on} (tau {1 / scales[0]:.2f}) reproduces {first['null']['overrides_reproduced']:.1%} of the "
        f"overrides and {first['null']['deep_tail_reproduced']:.1%} of the deep-tail (rank > 10) ones"
        + (
            f" (on the held-out text it was fitted on, it chooses as the hyperfitted model does at "
            f"{first['null']['heldout_top1_agreement']:.1%} of positions)"
            if first["null"].get("heldout_top1_agreement") is not None
            else ""
        )
        + (f"; hyperfitting gain {gain_estimate}" if gain_estimate else "")
    )
    if (
        control
        and control.get("per_prompt")
        and "copied" in control["per_prompt"]
        and trains[0]
        and trains[0].get("lowest_heldout_epoch") is not None
    ):
        c = stats.pooled(
            [(control["per_prompt"]["unexplained_overrides"], control["per_prompt"]["steps"])], stats.RATIO_OF_SUMS
        )
        evidence += (
            f"; the non-hyperfitting control (the same run at epoch {trains[0]['lowest_heldout_epoch']}, its lowest "
            "held-out loss) "
            f"has effect {c}"
        )
    claim = make_claim(3, estimate, checks, evidence)
    return with_replicates(
        causal_check(claim, results, gain_pairs), [stats.pooled([g], stats.RATIO_OF_SUMS).value for g in groups]
    )


CARRIES = 0.5  # the reverted paths must keep less than half of the gain: the unexplained overrides carry most of it


def causal_check(claim: Claim, results: list[dict], gain_pairs) -> Claim:
    """'Holds' stands only if the unexplained overrides carry the gain: the hyperfitted model decoded with them reverted
    to the null's choice keeps clearly less than CARRIES of its TTR gain over base greedy. Holm then reads the larger of
    the two p-values ("frequent" and "they carry it": an intersection-union test). Without the reverted paths, no
    "holds"."""
    reverted = [r.get("reverted") for r in results]
    if not (gain_pairs and all(reverted) and len(gain_pairs) == len(reverted)):
        if claim.verdict == HOLDS:
            claim.verdict, claim.p_values = INCONCLUSIVE, (1.0, 1.0)
            claim.reason = (
                f"the overrides are frequent ({claim.reason}), but these results have no reverted paths to show they "
                "carry "
                "the gain: rerun the ranks analysis"
            )
        return claim
    kept = stats.pooled(
        [(rv["per_prompt_ttr"], base, tuned, base) for rv, (tuned, base) in zip(reverted, gain_pairs)],
        stats.SHARE_OF_GAIN,
    )
    shown = kept if math.isfinite(kept.value) else "an undefined share (no gain to share)"
    claim.evidence += (
        f"; causal check: the hyperfitted model decoded with its unexplained overrides reverted to the null's "
        f"choice ({reverted[0]['share_of_steps_reverted']:.1%} of its steps) keeps {shown} of the gain "
        f"(it must keep clearly less than {CARRIES:g})"
    )
    if claim.estimate is None:
        return claim
    estimate = stats.Estimate.from_dict(claim.estimate)
    # nan: 1
    p_carries = stats.one_sided_p(kept, CARRIES, "below") if kept.decisive else float(not kept.value < CARRIES)
    claim.p_values = (
        max(stats.one_sided_p(estimate, RULE.margin, RULE.direction), p_carries),
        contrary_p(estimate, RULE.margin, RULE.direction),
    )
    # Reverted paths whose TTR equals base greedy's on every prompt keep exactly none of the gain: certain, not
    # undecided.
    exact = not kept.decisive and kept.units >= 3 and kept.low == kept.high and math.isfinite(kept.value)
    if claim.verdict == HOLDS and not ((kept.decisive or exact) and kept.high < CARRIES):
        claim.verdict, claim.p_values = INCONCLUSIVE, (1.0, claim.p_values[1])
        claim.reason = (
            f"the unexplained overrides are frequent ({claim.reason}), but reverting them to the null's choice does "
            f"not clearly cost most of the diversity (the reverted paths keep {shown} of the gain): they do not carry "
            "it"
        )
    return claim


# The share at which claim 3's seed SD was measured (.399, .427, .343): a share cannot go below 0, so a training seed
# moves it in proportion (a seed SD of 0.043 at 0.39, about 11%), not by 0.043 at a share of 0.05.
SEED_SD_AT = 0.39


def rank_results(design, spreads, rng, effect) -> list[dict]:
    results = []
    relative = world_seed_sd(spreads, SEED_SD[0] / SEED_SD_AT, rng)
    # log-normal, mean 1: the recipe's share stays `effect`
    for seed_effect in rng.normal(-(relative**2) / 2, relative, design.replicates):
        share = float(np.clip(effect * math.exp(seed_effect), 1e-4, 1 - 1e-4))
        k = spreads.override_heterogeneity
        per_prompt_share = rng.beta(share * k, (1 - share) * k, design.prompts)
        steps = np.full(design.prompts, design.steps)
        unexplained = rng.binomial(steps, per_prompt_share)
        overrides = np.maximum(unexplained, rng.binomial(steps, 0.4))
        results.append(
            {
                "per_prompt": {
                    "unexplained_overrides": unexplained.tolist(),
                    "overrides": overrides.tolist(),
                    "steps": steps.tolist(),
                    "copied": [0] * design.prompts,
                },
                "copied_spans": {"share_of_steps": 0.0, "n": 5},
                "null": {"scale": 1.5, "overrides_reproduced": 0.5, "deep_tail_reproduced": 0.3},
                "share_of_overrides_from_rank_over_10": 0.1,
            }
        )
    return results


# In the worlds the unexplained overrides carry the gain: reverted, the paths keep this share of it (per prompt, noisy).
WORLD_KEPT = 0.1


def world_ranks(design, spreads, effect, rng):
    results = rank_results(design, spreads, rng, effect)
    gains = [
        (r["per_prompt"]["hyperfitted"][0], r["per_prompt"]["base, greedy"][0])
        for r in temperature_results(design, spreads, rng, 0.0, 0.0)
    ]
    half = spreads.paired_sd / math.sqrt(2)
    for result, (tuned, base) in zip(results, gains):
        gain = np.mean(tuned) - np.mean(base)
        result["reverted"] = {
            "per_prompt_ttr": noisy(np.asarray(base) + WORLD_KEPT * gain, half, rng),
            "share_of_steps_reverted": 0.2,
        }
    return claim_ranks(results, [TRAINED] * len(results), gains), effect


def gain_pairs(evidence) -> list[tuple[list[float], list[float]]] | None:
    """Per replicate, (hyperfitted, base) greedy TTR per prompt, from whichever analysis recorded them."""
    for name, read in (
        ("temperature", lambda p: (p["hyperfitted"][0], p["base, greedy"][0])),
        ("static-bias", lambda p: (p["hyperfitted"], p["base, greedy"])),
    ):
        results = evidence.results(name)
        if results and all(r.get("per_prompt") for r in results):
            return [read(r["per_prompt"]) for r in results]
    return None


register_claim(
    ClaimSpec(
        3,
        "Dynamic, context-dependent rank reordering",
        "39.1% overrides, 12.9% of them from base rank > 10",
        RULE,
        lambda evidence: claim_ranks(
            evidence.results("ranks"), evidence.trains, gain_pairs(evidence), evidence.lowest_heldout.get("ranks")
        ),
        world_ranks,
        TRUTHS,
        SEED_SD,
    )
)
