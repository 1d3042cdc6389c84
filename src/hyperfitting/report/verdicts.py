"""The five claims of Li et al. (2026) as rules over measured evidence: holds, does not hold, or inconclusive.

Each claim is one ``Rule`` in ``RULES``: the effect it estimates, the direction the claim
predicts, the margin (the smallest effect that matters, with its reason). The decision is the
same for every claim (``decide``):

- *holds* when the 95% interval of the effect lies entirely beyond the margin in the claimed direction;
- *does not hold* when the interval lies entirely on the other side (it excludes the claimed effect);
- *inconclusive* otherwise, with roughly how many prompts would decide it at the observed spread;
- and *inconclusive*, never a decision, when a manipulation check failed (the model did not
  hyperfit, the ablation did not change anything, the localisation was forced by construction...).

The claim functions only read the results the analyses wrote, so a report can be rebuilt.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hyperfitting import stats
from hyperfitting.stats import Estimate

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"


@dataclass(frozen=True)
class Rule:
    effect: str
    direction: Literal["above", "below"]
    margin: float
    margin_reason: str
    units: str = "prompts"

    def in_words(self) -> str:
        side = "above" if self.direction == "above" else "below"
        other = "below" if self.direction == "above" else "above"
        return (f"effect: {self.effect}. Holds if its 95% interval lies entirely {side} {self.margin:+g}; does not hold if it lies "
                f"entirely {other}; otherwise inconclusive. Margin: {self.margin_reason}. A failed manipulation check makes it inconclusive.")


RULES: dict[int | str, Rule] = {
    1: Rule("hyperfitted greedy TTR minus the TTR of the base model sampled at the entropy-matched T*, paired over prompts",
            "above", 0.05, "0.05 TTR, a sixth of the paper's gap (0.287); smaller differences are within what length and seed choices move"),
    2: Rule("share of the hyperfitted TTR gain over base greedy that the best static reweighting of the base logits recovers",
            "below", 0.5, "a static offset that recovers half of the gain or more would explain a large part of hyperfitting"),
    3: Rule("share of hyperfitted greedy steps that override the base top-1 with a token the fitted static+temperature model "
            "(base logits / tau + a per-token bias) does not choose", "above", 0.05,
            "one step in twenty; the paper reports 39.1% overrides in all, and a rarer reordering could not carry the diversity gain"),
    4: Rule("Delta participation ratio of the final layer's state minus the largest Delta PR of any other layer (or zero, if larger)",
            "above", 0.0, "any positive amount: the claim is about where the largest increase is, not its size", units="held-out blocks"),
    5: Rule("greedy TTR of LoRA on the last blocks minus LoRA on all blocks, both trained to the target loss, paired over prompts",
            "above", -0.02, "a non-inferiority margin of 0.02 TTR: 'matches' allows the last blocks to trail all blocks by less than that"),
    "1b": Rule("hyperfitted greedy TTR minus the TTR of the base model's temperature frontier at the same judge perplexity "
               "(linear between neighbouring temperatures, greedy as T=0), paired over prompts", "above", 0.05,
               "0.05 TTR, as claim 1: sampling hotter buys diversity with quality, so only a point clear of that curve is "
               "more than a temperature"),
}

NAMES = {
    1: "Not temperature: entropy-matched sampling does not recover the diversity",
    2: "Not static reweighting: a fixed logit offset does not reproduce the gain",
    3: "Dynamic, context-dependent rank reordering",
    4: "Terminal Expansion: the largest dimension increase is in the final layer",
    5: "Late-Stage LoRA: the last blocks match all blocks",
    "1b": "Not temperature (b): hyperfitted greedy lies above the base model's diversity-quality frontier",
}

PAPER = {
    1: "TTR 0.397 at T*=0.59 vs 0.684 hyperfitted (TinyLlama-1.1B): gap +0.287",
    2: "diversity falls as alpha grows (TTR 0.215 at alpha 0.5)",
    3: "39.1% overrides, 12.9% of them from base rank > 10",
    4: "Delta PR +80.8 at the final layer (TinyLlama, width 2048)",
    5: "last 5 blocks match or beat all blocks with ~80% fewer trainable parameters",
    "1b": "no frontier in the paper; Carlsson et al. find hyperfitted greedy preferred by people over top-p sampling",
}


@dataclass
class Check:
    """A manipulation check: did the experiment do what it needs to do for the effect to mean anything?"""

    name: str
    passed: bool
    detail: str


@dataclass
class Claim:
    number: int | str  # 1-5, and "1b" (claim 1's stronger control)
    name: str
    paper: str
    rule: str
    margin: float
    direction: str
    estimate: dict | None
    checks: list[dict] = field(default_factory=list)
    verdict: str = NOT_RUN
    reason: str = ""
    units_needed: int | None = None
    evidence: str = "-"
    replicates: list[float] = field(default_factory=list)


def decide(rule: Rule, estimate: Estimate | None, checks: list[Check] = ()) -> tuple[str, str, int | None]:
    """(verdict, reason, units needed) from an effect's interval, its rule and the manipulation checks."""
    failed = [c for c in checks if not c.passed]
    if failed:
        return INCONCLUSIVE, "manipulation check failed: " + "; ".join(f"{c.name} ({c.detail})" for c in failed), None
    if estimate is None:
        return INCONCLUSIVE, "the effect could not be estimated", None
    beyond = estimate.low > rule.margin if rule.direction == "above" else estimate.high < rule.margin
    contrary = estimate.high < rule.margin if rule.direction == "above" else estimate.low > rule.margin
    if beyond:
        return HOLDS, f"the interval {estimate} lies {rule.direction} the margin {rule.margin:+g}", None
    if contrary:
        return FAILS, f"the interval {estimate} lies {'below' if rule.direction == 'above' else 'above'} the margin {rule.margin:+g}", None
    needed = stats.units_needed(estimate, rule.margin)
    units = "replicates" if "replicates" in estimate.method else rule.units  # pooled estimates resample replicates first
    power = (f"roughly {needed} {units} would decide it at the observed spread" if needed
             else "the estimate sits on the margin: no practical sample size decides it")
    return INCONCLUSIVE, f"the interval {estimate} contains the margin {rule.margin:+g}; {power}", needed


def make_claim(number: int | str, estimate: Estimate | None, checks: list[Check], evidence: str) -> Claim:
    rule = RULES[number]
    if estimate is not None and not math.isfinite(estimate.value):
        # Say why instead of printing nan: the usual cause is a ratio whose denominator (the gain) is zero.
        estimate, evidence = None, evidence + "; the effect is undefined here (a ratio over a zero gain or an empty set)"
    verdict, reason, needed = decide(rule, estimate, checks)
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction,
                 estimate.to_dict() if estimate else None, [c.__dict__ for c in checks], verdict, reason, needed, evidence)


def not_run(number: int | str, why: str = "not run in this study") -> Claim:
    rule = RULES[number]
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction, None, [], NOT_RUN, why)


# ------------------------------------------------------------------------------ checks shared by claims 1-4
#
# Claims 1-4 get one results dict and one training summary per hyperfitted replicate (a list of
# one in a single-seed study); their effects pool the replicates (see stats.pooled).


def loss_hyperfitted(initial: float, final: float, target: float | None) -> bool:
    """Did a training run hyperfit? At or below the target loss (the test `training.hyperfit.reached_target` stops on);
    without a target (train.until_loss=null), at least halved."""
    return final <= target if target is not None else final < 0.5 * initial


def hyperfitted_check(trains: list[dict | None]) -> Check:
    """Every analysed model must have reached the target loss without diverging: otherwise it is not a hyperfitted model."""
    details, passed = [], True
    for train in trains:
        if not train:
            return Check("model hyperfitted", False, "no training summary")
        passed &= loss_hyperfitted(train["initial_train_loss"], train["final_train_loss"], train.get("until_loss"))
        details.append(f"{train['initial_train_loss']:.3f} -> {train['final_train_loss']:.3f}")
    target = trains[0].get("until_loss")
    return Check("model hyperfitted", passed, f"training loss {', '.join(details)}" + (f", target {target:g}" if target is not None else ""))


def gain_check(pairs: list[tuple[list[float], list[float]]]) -> tuple[Check, Estimate]:
    """Hyperfitting must have made greedy output more diverse on these prompts: otherwise there is no gain to explain."""
    gain = stats.pooled(pairs, stats.MEAN_DIFFERENCE)
    return Check("hyperfitting raised greedy TTR", gain.low > 0, f"gain {gain}"), gain


def with_replicates(claim: Claim, per_replicate: list[float]) -> Claim:
    """Each replicate's own point estimate, and their spread, beside the pooled interval."""
    if len(per_replicate) > 1:
        spread = statistics.stdev(per_replicate)
        claim.evidence += (f"; per replicate {', '.join(f'{v:+.3f}' for v in per_replicate)} (seed-to-seed standard deviation "
                           f"{spread:.3f}, {len(per_replicate)} replicates)")
    claim.replicates = per_replicate
    return claim


# ------------------------------------------------------------------------------ the claims


def claim_temperature(results: list[dict], trains: list[dict | None]) -> Claim:
    if not results:
        return not_run(1)
    if not all(r.get("per_prompt") for r in results):
        return not_run(1, "these results predate per-prompt intervals: rerun the analysis")
    tuned = [r["per_prompt"]["hyperfitted"][0] for r in results]
    at_t_star = [_seed_mean(r["per_prompt"]["base, T*"]) for r in results]
    pairs = list(zip(tuned, at_t_star))
    estimate = stats.pooled(pairs, stats.MEAN_DIFFERENCE)
    gain, gain_estimate = gain_check([(t, r["per_prompt"]["base, greedy"][0]) for t, r in zip(tuned, results)])
    matched = all(r.get("t_star_matched", {}).get("teacher_forced", True) for r in results)
    temperatures = ", ".join(f"{r['sampling_temperature']:.3f}" for r in results)
    checks = [hyperfitted_check(trains), gain,
              Check("entropy matched at T*", matched, f"T* = {temperatures}" + ("" if matched else ": the bisection hit its bound, so the entropies differ"))]
    evidence = (f"T* = {temperatures}; TTR base at T* {stats.pooled([(t,) for t in at_t_star], stats.MEAN)} vs hyperfitted greedy "
                f"{stats.pooled([(t,) for t in tuned], stats.MEAN)} over {len(tuned[0])} prompts, "
                f"{len(results[0]['per_prompt']['base, T*'])} sampling seed(s); hyperfitting gain over base greedy {gain_estimate}")
    return with_replicates(make_claim(1, estimate, checks, evidence), [stats.paired_difference(*pair).value for pair in pairs])


def claim_static_bias(results: list[dict], trains: list[dict | None]) -> Claim:
    if not results:
        return not_run(2)
    if not all(r.get("per_prompt") and "biting" in r.get("bite", {}) for r in results):
        return not_run(2, "these results predate per-prompt intervals and flip rates: rerun the analysis")
    gain, gain_estimate = gain_check([(r["per_prompt"]["hyperfitted"], r["per_prompt"]["base, greedy"]) for r in results])
    bites = [r["bite"] for r in results]
    checks = [hyperfitted_check(trains), gain,
              Check("a static model changes base choices", all(b["passed"] for b in bites),
                    "; ".join(f"{', '.join(b['biting']) or 'none'} change the base greedy choice on at least {b['required']:.0%} of steps "
                              f"(the K-token offset: {b['top_k_flip_rate']:.1%} at alpha {b['top_k_alpha']:g})" for b in bites))]
    if not all(b["passed"] for b in bites):
        return make_claim(2, None, checks, f"no static model changed the base model's choices; hyperfitting gain {gain_estimate}")
    groups, chosen = [], []
    for r in results:
        # Only static models that changed the base model's choices are evidence; the best of them on these
        # prompts (chosen on the mean; the interval is then taken for it).
        per_prompt = r["per_prompt"]
        best = max(r["bite"]["biting"], key=lambda k: sum(per_prompt[k]))
        chosen.append(best)
        groups.append((per_prompt[best], per_prompt["base, greedy"], per_prompt["hyperfitted"], per_prompt["base, greedy"]))
    estimate = stats.pooled(groups, stats.SHARE_OF_GAIN)
    first, fitted = results[0]["per_prompt"], results[0].get("fitted_null", {})
    evidence = (f"best static model: {chosen[0]} (TTR {sum(first[chosen[0]]) / len(first[chosen[0]]):.3f}; base "
                f"{sum(first['base, greedy']) / len(first['base, greedy']):.3f}, hyperfitted {sum(first['hyperfitted']) / len(first['hyperfitted']):.3f}); "
                f"hyperfitting gain {gain_estimate}")
    if fitted:
        evidence += (f"; fitted static+temperature model (tau {fitted['tau']:.2f}) reproduces {fitted['top1_reproduced']:.1%} of the "
                     f"hyperfitted top-1 choices")
    return with_replicates(make_claim(2, estimate, checks, evidence), [stats.pooled([g], stats.SHARE_OF_GAIN).value for g in groups])


def claim_ranks(results: list[dict], trains: list[dict | None]) -> Claim:
    if not results:
        return not_run(3)
    if not all(r.get("per_prompt") for r in results):
        return not_run(3, "these results predate per-prompt intervals: rerun the analysis")
    groups = [(r["per_prompt"]["unexplained_overrides"], r["per_prompt"]["steps"]) for r in results]
    estimate = stats.pooled(groups, stats.RATIO_OF_SUMS)
    overrides = stats.pooled([(r["per_prompt"]["overrides"], r["per_prompt"]["steps"]) for r in results], stats.RATIO_OF_SUMS)
    scales = [r["null"]["scale"] for r in results]
    first = results[0]
    checks = [hyperfitted_check(trains),
              Check("static+temperature null fitted", all(v > 0 for v in scales), "tau " + ", ".join(f"{1 / v:.3f}" if v > 0 else "undefined" for v in scales))]
    evidence = (f"overrides of the base top-1 {overrides} of steps, {first['share_of_overrides_from_rank_over_10']:.1%} of them from base rank > 10; "
                f"the fitted static+temperature model (tau {1 / scales[0]:.2f}) reproduces {first['null']['overrides_reproduced']:.1%} of the "
                f"overrides and {first['null']['deep_tail_reproduced']:.1%} of the deep-tail (rank > 10) ones")
    return with_replicates(make_claim(3, estimate, checks, evidence), [stats.pooled([g], stats.RATIO_OF_SUMS).value for g in groups])


def claim_geometry(results: list[dict], trains: list[dict | None], control: dict | None = None) -> Claim:
    """``control``: the geometry of the first run at its lowest held-out loss (a fine-tune that did not hyperfit)."""
    if not results:
        return not_run(4)
    if not all(r.get("effect") for r in results):
        return not_run(4, "these results predate intervals: rerun the analysis")
    effects = [Estimate(**{k: r["effect"][k] for k in ("value", "low", "high", "units", "method")}) for r in results]
    forced = next((r["localisation_forced"] for r in results if r.get("localisation_forced")), None)
    checks = [hyperfitted_check(trains), Check("localisation not forced", not forced, forced or "every block was trainable")]
    v = results[0]["verdict"]
    evidence = (f"reads {v['state']}: final layer Delta PR {v['final_delta_pr']:+.1f}; runner-up {v['runner_up']} {v['runner_up_delta_pr']:+.1f}; "
                f"last block's raw output {v['final_block_raw_delta_pr']:+.1f}; {results[0]['tokens']} positions (position 0 left out)")
    if control and trains[0] and trains[0].get("lowest_heldout_epoch") is not None:
        c = control["verdict"]
        evidence += (f"; the non-hyperfitting control (the same run at epoch {trains[0]['lowest_heldout_epoch']}, its lowest held-out loss) "
                     f"has final layer Delta PR {c['final_delta_pr']:+.1f} and effect {Estimate(**{k: control['effect'][k] for k in ('value', 'low', 'high', 'units', 'method')})}")
    return with_replicates(make_claim(4, stats.mean_of_estimates(effects), checks, evidence), [e.value for e in effects])


def frontier_gap(hyperfitted_ttr, hyperfitted_log_perplexity, *frontier_columns) -> float:
    """Mean hyperfitted TTR minus the frontier's TTR at the hyperfitted mean judge log-perplexity.

    ``frontier_columns`` are (TTR, log-perplexity) per prompt for each base point; the frontier is
    the piecewise-linear curve through their means, ordered by log-perplexity (flat beyond its ends).
    """
    ttrs = np.array([np.mean(c) for c in frontier_columns[0::2]])
    quality = np.array([np.mean(c) for c in frontier_columns[1::2]])
    order = np.argsort(quality)
    return float(np.mean(hyperfitted_ttr) - np.interp(np.mean(hyperfitted_log_perplexity), quality[order], ttrs[order]))


def claim_frontier(points: dict | None, trains: list[dict | None]) -> Claim:
    """Claim 1(b): the base model sampled over temperatures traces diversity against judge perplexity; is hyperfitted greedy above it?"""
    if not points:
        return not_run("1b", "needs the temperature analysis and a judge model (study.judge)")
    frontier = sorted((label for label in points if label == "base, greedy" or label.startswith("base, T=")),
                      key=lambda label: float(np.nanmean(points[label]["log_perplexity"])))
    labels = ["hyperfitted", *frontier]
    # A prompt whose continuation the judge could not score (empty text) leaves every column, so the columns stay paired.
    keep = [i for i in range(len(points["hyperfitted"]["ttr"])) if all(math.isfinite(points[l]["log_perplexity"][i]) for l in labels)]
    columns = tuple(np.array(points[l][measure])[keep] for l in labels for measure in ("ttr", "log_perplexity"))
    estimate = stats.pooled([columns], frontier_gap)
    mean_of = {l: (float(np.mean(points[l]["ttr"])), float(np.exp(np.nanmean(points[l]["log_perplexity"])))) for l in points}
    qualities = [float(np.mean(column)) for column in columns[1::2]]  # hyperfitted first, then the frontier, over the same prompts
    tuned_quality, low, high = qualities[0], min(qualities[1:]), max(qualities[1:])
    inside = low <= tuned_quality <= high
    gain, _ = gain_check([(points["hyperfitted"]["ttr"], points["base, greedy"]["ttr"])])
    checks = [hyperfitted_check(trains[:1]), gain,
              Check("hyperfitted judge perplexity within the frontier", inside,
                    f"{math.exp(tuned_quality):.1f} against {math.exp(low):.1f}-{math.exp(high):.1f}" +
                    ("" if inside else ": add temperatures to analysis.temperature_grid so the frontier reaches it"))]
    evidence = ("frontier (TTR at judge perplexity): " + ", ".join(f"{l.removeprefix('base, ')} {mean_of[l][0]:.3f} at {mean_of[l][1]:.1f}" for l in frontier)
                + f"; hyperfitted {mean_of['hyperfitted'][0]:.3f} at {mean_of['hyperfitted'][1]:.1f}; {len(keep)} prompts, replicate 0")
    baseline = "base, sampling baseline"
    if baseline in points:
        scored = [i for i in range(len(points[baseline]["ttr"]))
                  if math.isfinite(points[baseline]["log_perplexity"][i]) and math.isfinite(points["hyperfitted"]["log_perplexity"][i])]
        tuned, other = ({m: [points[l][m][i] for i in scored] for m in ("ttr", "log_perplexity")} for l in ("hyperfitted", baseline))
        evidence += (f"; hyperfitted minus the base model's sampling baseline (analysis.baseline_*; Carlsson et al.'s top-p): TTR "
                     f"{stats.paired_difference(tuned['ttr'], other['ttr'])}, judge log-perplexity "
                     f"{stats.paired_difference(tuned['log_perplexity'], other['log_perplexity'])}")
    if "human" in points:
        evidence += f"; human text {mean_of['human'][0]:.3f} at {mean_of['human'][1]:.1f}"
    return make_claim("1b", estimate, checks, evidence)


def claim_late_stage(results: dict | None) -> Claim:
    if not results or not all(k in results.get("methods", {}) for k in ("lora:last", "lora:all")):
        return not_run(5)
    m = results["methods"]
    if not any("per_prompt_ttr" in row for row in m.values()) and not all(row.get("diverged") for row in m.values()):
        return not_run(5, "these results predate per-prompt intervals: rerun the controls")
    target = results["until_loss"]
    checks = []
    for key, row in m.items():
        reached = not row.get("diverged", False) and loss_hyperfitted(row["initial_train_loss"], row["final_train_loss"], target)
        checks.append(Check(f"{key} hyperfitted", reached,
                            f"loss {row['initial_train_loss']:.3f} -> {row['final_train_loss']:.3f} in {row['epochs']} epochs"
                            + (f", target {target:g}" if target is not None else "") + ("; diverged" if row.get("diverged") else "")))
    last, every = m["lora:last"].get("per_prompt_ttr"), m["lora:all"].get("per_prompt_ttr")
    if last is None or every is None:  # a diverged control has no continuations
        return make_claim(5, None, checks, "a control diverged: nothing to compare")
    evidence = (f"TTR last {stats.mean(last)}, all {stats.mean(every)}; "
                f"trainable parameters {m['lora:last']['trainable_parameters']:,} vs {m['lora:all']['trainable_parameters']:,}")
    if m.get("lora:first", {}).get("per_prompt_ttr"):
        evidence += f"; last minus first {stats.paired_difference(last, m['lora:first']['per_prompt_ttr'])}"
    return make_claim(5, stats.paired_difference(last, every), checks, evidence)


def all_claims(analyses: dict[str, list[dict]], controls: dict | None, trains: list[dict | None], frontier: dict | None = None,
               geometry_control: dict | None = None) -> list[Claim]:
    """``analyses`` maps each analysis to its results, one per hyperfitted replicate; ``trains`` their training summaries;
    ``frontier`` the judged diversity-quality points of the first replicate's temperature analysis (quality stage);
    ``geometry_control`` the geometry of the first replicate at its lowest held-out loss. Claims 1-5 in order, then claim 1(b)."""
    return [
        claim_temperature(analyses.get("temperature", []), trains),
        claim_static_bias(analyses.get("static-bias", []), trains),
        claim_ranks(analyses.get("ranks", []), trains),
        claim_geometry(analyses.get("geometry", []), trains, geometry_control),
        claim_late_stage(controls),
        claim_frontier(frontier, trains),
    ]


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Per prompt, the mean over sampling seeds: seeds are repeated measurements of one prompt, not more prompts."""
    return [sum(values) / len(values) for values in zip(*per_seed)]
