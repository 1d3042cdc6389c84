"""The five claims of Li et al. (2026) as rules over measured evidence: holds, does not hold, or inconclusive.

Each claim is one ``Rule`` in ``RULES``: the effect it estimates, the direction the claim
predicts, the margin (the smallest effect that matters, with its reason). The decision is the
same for every claim (``decide``):

- *holds* when the 95% interval of the effect lies entirely beyond the margin in the claimed direction;
- *does not hold* when the interval lies entirely on the other side (it excludes the claimed effect);
- *inconclusive* otherwise, with roughly how many prompts would decide it at the observed spread;
- and *inconclusive*, never a decision, when a manipulation check failed (the model did not
  hyperfit, the ablation did not change anything, the localisation was forced by construction...),
  or when the estimate has no real interval (one prompt, every prompt identical, fewer than 3 blocks).

A rule with direction "apart" is two-sided: it holds when the interval lies wholly outside
[-margin, +margin], does not hold when it lies wholly inside (equivalence), and is
inconclusive otherwise. How often each rule is wrong is measured in ``report/calibration.py``; Holm's
correction over the rules of a study is reported beside the uncorrected verdicts.

The claim functions only read the results the analyses wrote, so a report can be rebuilt.
"""

from __future__ import annotations

import math
import statistics
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hyperfitting import stats
from hyperfitting.stats import Estimate

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"


@dataclass(frozen=True)
class Rule:
    effect: str
    direction: Literal["above", "below", "apart"]
    margin: float
    margin_reason: str
    units: str = "prompts"

    def in_words(self) -> str:
        if self.direction == "apart":
            return (f"effect: {self.effect}. Holds if its 95% interval lies entirely outside [-{self.margin:g}, +{self.margin:g}]; "
                    f"does not hold if it lies entirely inside; otherwise inconclusive. Margin: {self.margin_reason}. "
                    "A failed manipulation check makes it inconclusive.")
        side = "above" if self.direction == "above" else "below"
        other = "below" if self.direction == "above" else "above"
        return (f"effect: {self.effect}. Holds if its 95% interval lies entirely {side} {self.margin:+g}; does not hold if it lies "
                f"entirely {other}; otherwise inconclusive. Margin: {self.margin_reason}. A failed manipulation check makes it inconclusive.")


RULES: dict[int | str, Rule] = {
    1: Rule("hyperfitted greedy TTR minus the TTR of the base model sampled at the entropy-matched T*, paired over prompts",
            "above", 0.05, "0.05 TTR, a sixth of the paper's gap (0.287); smaller differences are within what length and seed choices move"),
    2: Rule("share of the hyperfitted TTR gain over base greedy that the best static reweighting of the base logits recovers "
            "(the best non-degenerate static model, chosen again inside every resample)",
            "below", 0.5, "a static offset that recovers half of the gain or more would explain a large part of hyperfitting"),
    3: Rule("share of hyperfitted greedy steps that override the base top-1 with a token the fitted context-free null does not "
            "choose (fitted on held-out text: a scale and an offset per token, or one temperature and an offset per token, "
            "whichever reproduces more of the hyperfitted top-1 choices there)", "above", 0.05,
            "one step in twenty; the paper reports 39.1% overrides in all, and a rarer reordering could not carry the diversity gain"),
    4: Rule("Delta participation ratio of the final block's output minus the largest Delta PR of any other block or the embeddings "
            "(or zero, if larger), every state RMS-normalised per token the same way, the rival's maximum taken again in every "
            "jackknife resample; the standardised and massive-dimension-trimmed variants must agree",
            "above", 0.0, "any positive amount: the claim is about where the largest increase is, not its size", units="held-out blocks"),
    5: Rule("share of LoRA-on-all-blocks' TTR gain over base greedy that LoRA on the last blocks reaches, both trained to the "
            "target loss, paired over prompts", "above", 0.8,
            "non-inferiority relative to the gain: 'matches' allows the last blocks to fall short of all blocks by less than a fifth of "
            "what all blocks gained (an absolute margin would mean a different thing at every size of gain)"),
    "1b": Rule("hyperfitted greedy TTR minus the TTR of the base model's temperature frontier at the same judge perplexity "
               "(the frontier's upper envelope: the best TTR any mixture of sampled temperatures reaches at that perplexity), "
               "paired over prompts", "above", 0.05,
               "0.05 TTR, as claim 1: sampling hotter buys diversity with quality, so only a point clear of that curve is "
               "more than a temperature"),
    "1c": Rule("TTR of the hyperfitted model sampled at T=1 minus the base model sampled at the entropy-matched T*, paired over "
               "prompts: if hyperfitting were a temperature these two would share one distribution", "apart", 0.05,
               "0.05 TTR either way, as claim 1: a smaller difference is what a temperature could still explain"),
}

NAMES = {
    1: "Not temperature: entropy-matched sampling does not recover the diversity",
    2: "Not static reweighting: a fixed logit offset does not reproduce the gain",
    3: "Dynamic, context-dependent rank reordering",
    4: "Terminal Expansion: the largest dimension increase is in the final layer",
    5: "Late-Stage LoRA: the last blocks match all blocks",
    "1b": "Not temperature (b): hyperfitted greedy lies above the base model's diversity-quality frontier",
    "1c": "Not temperature (c): hyperfitted sampling at T=1 differs from base sampling at T*",
}

PAPER = {
    1: "TTR 0.397 at T*=0.59 vs 0.684 hyperfitted (TinyLlama-1.1B): gap +0.287",
    2: "diversity falls as alpha grows (TTR 0.215 at alpha 0.5)",
    3: "39.1% overrides, 12.9% of them from base rank > 10",
    4: "Delta PR +80.8 at the final layer (TinyLlama, width 2048)",
    5: "last 5 blocks match or beat all blocks with ~80% fewer trainable parameters",
    "1b": "no frontier in the paper; Carlsson et al. find hyperfitted greedy preferred by people over top-p sampling",
    "1c": "not in the paper: its control compares hyperfitted greedy with sampled base output",
}

# A static model whose flips of the base top-1 exceed this multiple of the hyperfitted model's override rate is not a
# reweighting that could stand in for hyperfitting: it rewrites the text (the reported case: TTR 0.02, share -1.38).
DEGENERATE_FLIP_FACTOR = 2.0
# ... or whose own greedy text is far more repetitive than the base model's: it wrecks the text it would explain.
DEGENERATE_TTR_SHARE = 0.5


# The spread of each claim's effect between training runs of the same recipe (standard deviation over seeds), declared
# for a study with one training run per arm: its interval carries it, so the verdict is about the recipe. Measured with
# three seeds each (study.replicates=3); a study with two or more replicates measures its own instead.
SEED_SD: dict[int | str, tuple[float, str]] = {
    1: (0.039, "claim 1's effect over three fp32 seeds of the standard preset, SmolLM2-135M: -0.043, -0.056, -0.116"),
    3: (0.043, "claim 3's effect over three fp32 seeds of the standard preset, SmolLM2-135M: .399, .427, .343"),
    # 1(b) moves with the hyperfitted greedy TTR alone: the base frontier it is set against has no training seed.
    "1b": (0.047, "hyperfitted greedy TTR over three fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373"),
}
SEED_SD_DF = 2  # each declared SD is a standard deviation of three seeds: its uncertainty is carried, not ignored
# Off where no training seed exists: `hyperfit validate`'s planted models are made, not trained.
DECLARED_SEED_SPREAD: ContextVar[bool] = ContextVar("declared_seed_spread", default=True)
# Claim 5 compares two trained arms: each arm's greedy TTR varies between seeds by this much (hyperfitted TTR over three
# fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373), propagated to the share of the gain.
ARM_SEED_SD = (0.047, "hyperfitted greedy TTR over three fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373")


@dataclass
class Check:
    """A manipulation check: did the experiment do what it needs to do for the effect to mean anything?"""

    name: str
    passed: bool
    detail: str


@dataclass
class Claim:
    number: int | str  # 1-5, and "1b", "1c" (claim 1's stronger controls)
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
    holm: str | None = None  # the verdict after Holm's correction over the study's decided rules (see with_holm)
    p_values: tuple[float, float] | None = None  # (holds, does not hold) where the estimate alone does not give them (at_both_t_star)


def decide(rule: Rule, estimate: Estimate | None, checks: list[Check] = ()) -> tuple[str, str, int | None]:
    """(verdict, reason, units needed) from an effect's interval, its rule and the manipulation checks."""
    failed = [c for c in checks if not c.passed]
    if failed:
        return INCONCLUSIVE, "manipulation check failed: " + "; ".join(f"{c.name} ({c.detail})" for c in failed), None
    if estimate is None:
        return INCONCLUSIVE, "the effect could not be estimated", None
    if not estimate.decisive:
        return INCONCLUSIVE, f"the effect {estimate.value:+.3f} has no real interval ({estimate.method}): an estimate without one never decides", None
    if rule.direction == "apart":
        beyond = estimate.low > rule.margin or estimate.high < -rule.margin
        contrary = -rule.margin < estimate.low and estimate.high < rule.margin
        where = f"outside ±{rule.margin:g}", f"inside ±{rule.margin:g}"
    else:
        beyond = estimate.low > rule.margin if rule.direction == "above" else estimate.high < rule.margin
        contrary = estimate.high < rule.margin if rule.direction == "above" else estimate.low > rule.margin
        other = "below" if rule.direction == "above" else "above"
        where = f"{rule.direction} the margin {rule.margin:+g}", f"{other} the margin {rule.margin:+g}"
    if beyond:
        return HOLDS, f"the interval {estimate} lies {where[0]}", None
    if contrary:
        return FAILS, f"the interval {estimate} lies {where[1]}", None
    # The nearer margin, inside it (equivalence: "does not hold" for an "apart" rule) or outside it.
    margin = (rule.margin if estimate.value >= 0 else -rule.margin) if rule.direction == "apart" else rule.margin
    needed = stats.units_needed(estimate, margin)
    units = rule.units
    seed_bound = estimate.seed_se > 0 and (stats.Z + stats.Z_POWER) * estimate.seed_se >= abs(estimate.value - margin)
    power = (f"roughly {needed} {units} would decide it at the observed spread" if needed
             else f"more replicates (study.replicates) and {units} may decide it: part of the width is seed-to-seed spread"
             if estimate.replicates > 1 else
             f"no number of {units} decides it at one training run: the declared seed-to-seed spread alone spans the distance "
             "to the margin (train more seeds: study.replicates)" if seed_bound
             else "the estimate sits on the margin: no practical sample size decides it")
    return INCONCLUSIVE, f"the interval {estimate} contains the margin; {power}", needed


def make_claim(number: int | str, estimate: Estimate | None, checks: list[Check], evidence: str,
               seed_sd: tuple[float, str] | None = None) -> Claim:
    """The verdict of claim ``number`` on ``estimate``. An estimate from one training run is widened by the claim's declared
    seed-to-seed spread (``seed_sd``, default SEED_SD[number]): the claims are about a recipe, not about one run of it."""
    rule = RULES[number]
    if estimate is not None and not math.isfinite(estimate.value):
        # Say why instead of printing nan: the usual cause is a ratio whose denominator (the gain) is zero.
        estimate, evidence = None, evidence + "; the effect is undefined here (a ratio over a zero gain or an empty set)"
    seed_sd = seed_sd if seed_sd is not None else SEED_SD.get(number)
    if estimate is not None and estimate.replicates < 2 and seed_sd and seed_sd[0] > 0 and estimate.decisive and DECLARED_SEED_SPREAD.get():
        one_run = estimate
        estimate = stats.with_declared_seed_spread(estimate, seed_sd[0], df=SEED_SD_DF)
        evidence += (f"; one training run: its interval {one_run} widened by a declared seed-to-seed SD of {seed_sd[0]:.3g} "
                     f"({seed_sd[1]}; {SEED_SD_DF} degrees of freedom) to speak of the recipe")
    verdict, reason, needed = decide(rule, estimate, checks)
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction,
                 estimate.to_dict() if estimate else None, [c.__dict__ for c in checks], verdict, reason, needed, evidence)


def not_run(number: int | str, why: str = "not run in this study") -> Claim:
    rule = RULES[number]
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction, None, [], NOT_RUN, why)


def contrary_p(estimate: Estimate, margin: float, direction: str) -> float:
    """P-value of "the effect is on the other side of the margin" (the test behind "does not hold"), read off the interval.

    For a two-sided ("apart") rule that is equivalence: inside +-margin, the larger of the two one-sided p-values."""
    if direction == "apart":
        return max(stats.one_sided_p(estimate, margin, "below"), stats.one_sided_p(estimate, -margin, "above"))
    return stats.one_sided_p(estimate, margin, "below" if direction == "above" else "above")


def with_holm(claims: list[Claim]) -> list[Claim]:
    """Holm's correction over every rule the study ran: a claim keeps "holds" or "does not hold" only if the p-value of
    that side survives the step-down; otherwise it becomes inconclusive. This is the verdict the report leads with.

    Each rule enters once, with the smaller of its two one-sided p-values against 2.5% / (rules left): Holm over the
    rules' two-sided tests at 5%. So the family-wise level is 5% for an error in either direction (a false "holds" or a
    false "does not hold" anywhere in the study), the same two-sided 95% as each rule's own interval; with every rule on
    its margin the simulated rate is about 4%. (Counting the two sides as 2m hypotheses at 2.5% would halve each side's
    level and make a lone rule stricter than its own interval.)

    The family is fixed by what the study ran, not by what its data allowed: a rule whose checks failed, or whose effect
    could not be estimated, still counts in it (with p = 1).
    """
    family = [c for c in claims if c.verdict != NOT_RUN]
    p_values, sides = [], []
    for claim in family:
        if claim.estimate is None or any(not k["passed"] for k in claim.checks):
            p_values.append(1.0)
            sides.append(None)
            continue
        estimate = Estimate.from_dict(claim.estimate)
        p_holds, p_fails = claim.p_values or (stats.one_sided_p(estimate, claim.margin, claim.direction),
                                              contrary_p(estimate, claim.margin, claim.direction))
        p_values.append(min(p_holds, p_fails))
        sides.append(HOLDS if p_holds <= p_fails else FAILS)
    for claim, rejected, side in zip(family, stats.holm(p_values), sides):
        kept = claim.verdict in (HOLDS, FAILS) and rejected and side == claim.verdict
        claim.holm = claim.verdict if claim.verdict not in (HOLDS, FAILS) or kept else INCONCLUSIVE
    for claim in claims:
        if claim.holm is None:
            claim.holm = claim.verdict
    return claims


def holm_note(claim: dict) -> str:
    """' (after Holm: inconclusive)' where the correction over the study's rules changes a verdict, else nothing."""
    holm = claim.get("holm")
    return f" (after Holm over the study's rules: {holm})" if holm and holm != claim["verdict"] else ""


# ------------------------------------------------------------------------------ checks shared by the claims
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
    if trains and all(train and train.get("planted") for train in trains):
        # `hyperfit validate`: a planted mechanism stands where training would, and is named instead of a loss.
        return Check("model hyperfitted", True, "planted, not trained: " + "; ".join(t["mechanism"] for t in trains))
    for train in trains:
        if not train:
            return Check("model hyperfitted", False, "no training summary")
        passed &= loss_hyperfitted(train["initial_train_loss"], train["final_train_loss"], train.get("until_loss"))
        details.append(f"{train['initial_train_loss']:.3f} -> {train['final_train_loss']:.3f}")
    target = trains[0].get("until_loss")
    return Check("model hyperfitted", passed, f"training loss {', '.join(details)}" + (f", target {target:g}" if target is not None else ""))


def gain_check(pairs: list[tuple[list[float], list[float]]], name: str = "hyperfitting raised greedy TTR") -> tuple[Check, Estimate]:
    """Hyperfitting must have made greedy output more diverse on these prompts: otherwise there is no gain to explain."""
    gain = stats.pooled(pairs, stats.MEAN_DIFFERENCE)
    return Check(name, gain.decisive and gain.low > 0, f"gain {gain}"), gain


def with_replicates(claim: Claim, per_replicate: list[float]) -> Claim:
    """Each replicate's own point estimate, and their spread, beside the pooled interval."""
    if len(per_replicate) > 1:
        defined = [v for v in per_replicate if math.isfinite(v)]  # a replicate without a gain has no share of it
        spread = f"{statistics.stdev(defined):.3f}" if len(defined) > 1 else "undefined"
        claim.evidence += (f"; per replicate {', '.join(f'{v:+.3f}' if math.isfinite(v) else 'undefined' for v in per_replicate)} "
                           f"(seed-to-seed standard deviation "
                           f"{spread}, {len(per_replicate)} replicates)")
    claim.replicates = per_replicate
    return claim


# ------------------------------------------------------------------------------ the claims


def t_star_check(results: list[dict]) -> Check:
    """Claims 1 and 1c need T* entropy-matched both ways (on human text and along the decoded paths): a bisection that
    hit its bound matched nothing. Whether the two T* differ is not a check: the claims are decided at both."""
    problems, shown = [], []
    for r in results:
        matched, t_star = r.get("t_star_matched"), r.get("t_star")
        if not matched or not t_star or "greedy_path" not in matched:
            problems.append("the entropy match was not recorded both ways: rerun the temperature analysis")
            continue
        for way in ("teacher_forced", "greedy_path"):
            if not matched[way]:
                problems.append(f"the {way.replace('_', '-')} bisection hit its bound")
        shown.append(f"T* {t_star['teacher_forced']:.3f} on human text, {t_star['greedy_path']:.3f} on the decoded paths")
    return Check("entropy matched at T*, both ways", not problems, "; ".join(shown + problems))


AT_T_STAR = {"teacher_forced": "base, T*", "greedy_path": "base, T* (decoded paths)"}  # analysis/temperature.py's rows
T_STAR_WORDS = {"teacher_forced": "T* matched on human text", "greedy_path": "T* matched on the decoded paths"}


def at_both_t_star(number: int | str, tuned: list[list[float]], results: list[dict], checks: list[Check], evidence: str) -> Claim:
    """Claim ``number`` decided at each entropy-matched T* (the base model sampled at each, seeds averaged per prompt),
    and only where the two agree: an intersection-union test. It holds only if it holds at both (its p-value the larger
    of the two), does not hold only if it does not hold at both, and is inconclusive otherwise, saying which way each
    went. The estimate shown is human text's; the decoded paths' is in the evidence."""
    claims = {}
    for way, label in AT_T_STAR.items():
        pairs = [(t, _seed_mean(r["per_prompt"][label])) for t, r in zip(tuned, results)]
        claim = make_claim(number, stats.pooled(pairs, stats.MEAN_DIFFERENCE), checks, evidence)
        claims[way] = with_replicates(claim, [stats.paired_difference(*pair).value for pair in pairs])
    first, second = claims["teacher_forced"], claims["greedy_path"]
    rule = RULES[number]
    combined = first  # its estimate is human text's T*: unbiased where the base model loops (the decoded paths' is not)
    if first.verdict == second.verdict:
        combined.reason = f"at both T*: {first.reason}"
    else:
        combined.verdict, combined.units_needed = INCONCLUSIVE, None
        combined.reason = ("the two entropy-matched temperatures disagree, and the claim is decided only where they agree: "
                           + "; ".join(f"{T_STAR_WORDS[way]}, {c.verdict} ({c.reason})" for way, c in claims.items()))
    combined.evidence += "; " + "; ".join(
        f"{T_STAR_WORDS[way]}: effect {stats.Estimate.from_dict(c.estimate) if c.estimate else '-'}, {c.verdict}" for way, c in claims.items())
    estimates = [stats.Estimate.from_dict(c.estimate) for c in claims.values() if c.estimate]
    if len(estimates) == 2 and all(e.decisive for e in estimates):
        combined.p_values = (max(stats.one_sided_p(e, rule.margin, rule.direction) for e in estimates),
                             max(contrary_p(e, rule.margin, rule.direction) for e in estimates))
    return combined


def claim_temperature(results: list[dict], trains: list[dict | None]) -> Claim:
    if not results:
        return not_run(1)
    if not all(r.get("per_prompt") and AT_T_STAR["greedy_path"] in r["per_prompt"] for r in results):
        return not_run(1, "these results predate sampling at both entropy-matched temperatures: rerun the temperature analysis")
    tuned = [r["per_prompt"]["hyperfitted"][0] for r in results]
    gain, gain_estimate = gain_check([(t, r["per_prompt"]["base, greedy"][0]) for t, r in zip(tuned, results)])
    checks = [hyperfitted_check(trains), gain, t_star_check(results)]
    at_t_star = [_seed_mean(r["per_prompt"]["base, T*"]) for r in results]
    evidence = (f"TTR base at T* (human text) {stats.pooled([(t,) for t in at_t_star], stats.MEAN)} vs hyperfitted greedy "
                f"{stats.pooled([(t,) for t in tuned], stats.MEAN)} over {len(tuned[0])} prompts, "
                f"{len(results[0]['per_prompt']['base, T*'])} sampling seed(s); hyperfitting gain over base greedy {gain_estimate}")
    return at_both_t_star(1, tuned, results, checks, evidence)


def claim_temperature_like_for_like(results: list[dict], trains: list[dict | None]) -> Claim:
    """Claim 1(c): under "hyperfitting is a temperature", hyperfitted sampled at T=1 and base sampled at T* are one distribution."""
    if not results:
        return not_run("1c")
    if not all("hyperfitted, T=1" in r.get("per_prompt", {}) and AT_T_STAR["greedy_path"] in r["per_prompt"] for r in results):
        return not_run("1c", "these results predate the hyperfitted T=1 rows or sampling at both T*: rerun the temperature analysis")
    tuned = [_seed_mean(r["per_prompt"]["hyperfitted, T=1"]) for r in results]
    gain, gain_estimate = gain_check([(r["per_prompt"]["hyperfitted"][0], r["per_prompt"]["base, greedy"][0]) for r in results])
    checks = [hyperfitted_check(trains), gain, t_star_check(results)]
    evidence = (f"TTR hyperfitted at T=1 {stats.pooled([(a,) for a in tuned], stats.MEAN)}, {len(results[0]['per_prompt']['base, T*'])} "
                f"sampling seed(s) averaged per prompt; hyperfitting gain over base greedy {gain_estimate}")
    return at_both_t_star("1c", tuned, results, checks, evidence)


def best_static_share(*columns, axis=-1):
    """The share of the gain recovered by the best of k static models, the choice made on the same resample:
    columns are (static_1, ..., static_k, base, hyperfitted) per prompt."""
    *statics, base, tuned = columns
    shares = [stats.SHARE_OF_GAIN(s, base, tuned, base, axis=axis) for s in statics]
    return np.max(np.stack(shares), axis=0)


BEST_STATIC_SHARE = stats.Statistic("best static share of the gain", best_static_share)


def degenerate_static_models(result: dict, override_rate: float | None) -> dict[str, str]:
    """Static models that rewrite the text rather than reweight it, excluded from the best-of choice and reported:
    they flip the base choice far more often than the hyperfitted model overrides it, or their own greedy text is far
    more repetitive than the base model's (its TTR below DEGENERATE_TTR_SHARE of base greedy's). Without an override
    rate only the second test can be made (the check then fails: see claim_static_bias)."""
    per_prompt = result.get("per_prompt", {})
    base_ttr = float(np.mean(per_prompt["base, greedy"])) if len(per_prompt.get("base, greedy", ())) else None
    degenerate = {}
    for name in result["bite"]["biting"]:
        rate = result["bite"]["flip_rates"][name]
        if override_rate is not None and rate > DEGENERATE_FLIP_FACTOR * override_rate:
            degenerate[name] = (f"flips {rate:.1%} of base choices, beyond {DEGENERATE_FLIP_FACTOR:g}x the hyperfitted override "
                                f"rate {override_rate:.1%}")
        elif base_ttr and name in per_prompt and float(np.mean(per_prompt[name])) < DEGENERATE_TTR_SHARE * base_ttr:
            degenerate[name] = (f"its own greedy text has TTR {float(np.mean(per_prompt[name])):.3f}, below {DEGENERATE_TTR_SHARE:g}x "
                                f"base greedy's {base_ttr:.3f}")
    return degenerate


def claim_static_bias(results: list[dict], trains: list[dict | None], override_rates: list[float | None] | None = None) -> Claim:
    """``override_rates``: per replicate, the share of steps where the hyperfitted greedy choice is not the base top-1
    (from the ranks analysis), which sets the bound beyond which a static model is degenerate."""
    if not results:
        return not_run(2)
    if not all(r.get("per_prompt") and "biting" in r.get("bite", {}) for r in results):
        return not_run(2, "these results predate per-prompt intervals and flip rates: rerun the analysis")
    override_rates = override_rates or [None] * len(results)
    gain, gain_estimate = gain_check([(r["per_prompt"]["hyperfitted"], r["per_prompt"]["base, greedy"]) for r in results])
    bites = [r["bite"] for r in results]
    degenerate = [degenerate_static_models(r, rate) for r, rate in zip(results, override_rates)]
    usable = [[name for name in r["bite"]["biting"] if name not in bad] for r, bad in zip(results, degenerate)]
    # Every replicate is resampled with the same static models: those usable in all of them.
    common = [name for name in usable[0] if all(name in u for u in usable)]
    excluded = sorted({name for bad in degenerate for name in bad})
    checks = [hyperfitted_check(trains), gain,
              Check("a static model changes base choices", all(b["passed"] for b in bites),
                    "; ".join(f"{', '.join(b['biting']) or 'none'} change the base greedy choice on at least {b['required']:.0%} of steps "
                              f"(the K-token offset: {b['top_k_flip_rate']:.1%} at alpha {b['top_k_alpha']:g})" for b in bites)),
              Check("a non-degenerate static model remains", bool(common) and override_rates[0] is not None,
                    ("excluded: " + "; ".join(f"{name} ({why})" for bad in degenerate[:1] for name, why in bad.items())) if excluded
                    else "none excluded" if override_rates[0] is not None else
                    "cannot judge: no override rate to judge the flips by (the ranks analysis did not run on the same replicates)")]
    if not all(b["passed"] for b in bites):
        return make_claim(2, None, checks, f"no static model changed the base model's choices; hyperfitting gain {gain_estimate}")
    # Excluding a model can only change the verdict when that model recovers much of the gain: then the exclusion removed
    # the evidence against the claim. An excluded model is set aside only if its share is clearly below the margin.
    explaining = {}
    for name in excluded:
        if all(name in r["per_prompt"] for r in results):
            share = stats.pooled([tuple(r["per_prompt"][k] for k in (name, "base, greedy", "hyperfitted", "base, greedy")) for r in results],
                                 stats.SHARE_OF_GAIN)
            if not (share.decisive and share.high < RULES[2].margin):
                explaining[name] = share
    if excluded:
        checks.append(Check("no excluded static model recovers the gain", not explaining,
                            "; ".join(f"{name} recovers {share if math.isfinite(share.value) else 'an undefined share (no gain to share)'}, "
                                      f"not clearly below {RULES[2].margin:g}" for name, share in explaining.items())
                            or f"every excluded model recovers clearly less than {RULES[2].margin:g} of the gain"))
    if not common:  # only degenerate ones: their estimate is shown, and the failed check keeps it from deciding
        common = [name for name in results[0]["bite"]["biting"] if all(name in r["bite"]["biting"] for r in results)]
    groups = [tuple(r["per_prompt"][name] for name in common) + (r["per_prompt"]["base, greedy"], r["per_prompt"]["hyperfitted"]) for r in results]
    estimate = stats.pooled(groups, BEST_STATIC_SHARE)
    # A static model whose greedy text has the hyperfitted model's TTR on every prompt of every replicate recovers the whole
    # gain on every resample: a share of exactly 1 with no spread is then a certainty, not a missing interval.
    exact = [name for name in common if all(np.array_equal(np.asarray(r["per_prompt"][name], float), np.asarray(r["per_prompt"]["hyperfitted"], float))
                                            for r in results)]
    if exact and not estimate.decisive and estimate.units >= 3 and gain.passed:
        estimate = stats.Estimate(1.0, 1.0, 1.0, estimate.units, f"{exact[0]} reproduces the hyperfitted TTR on every prompt",
                                  estimate.replicates, True)
    first = results[0]["per_prompt"]
    shares = {name: stats.pooled([(first[name], first["base, greedy"], first["hyperfitted"], first["base, greedy"])], stats.SHARE_OF_GAIN).value
              for name in common}
    evidence = (f"static models compared ({len(common)}; the best is chosen again in every resample, so the choice is inside the interval): "
                + ", ".join(f"{name} recovers {share:+.2f}" if math.isfinite(share) else f"{name}: undefined (no gain)" for name, share in shares.items())
                + (f"; excluded as degenerate: {', '.join(excluded)}" if excluded else "")
                + f"; base TTR {np.mean(first['base, greedy']):.3f}, hyperfitted {np.mean(first['hyperfitted']):.3f}; hyperfitting gain {gain_estimate}")
    fitted = results[0].get("fitted_null", {})
    if fitted:
        evidence += (f"; fitted static+temperature model (tau {fitted['tau']:.2f}) reproduces {fitted['top1_reproduced']:.1%} of the "
                     f"hyperfitted top-1 choices")
    claim = make_claim(2, estimate, checks, evidence)
    if claim.verdict == FAILS:
        # The maximum of several models is biased upwards: "does not hold" needs one model that by itself recovers more
        # than the margin, at a Bonferroni level over the models compared (with six tied models at a true 0.45 the
        # maximum alone said "does not hold" 8% of the time).
        level = 1 - (1 - stats.CONFIDENCE) / len(common)
        singles = {name: stats.pooled([tuple(r["per_prompt"][k] for k in (name, "base, greedy", "hyperfitted", "base, greedy")) for r in results],
                                      stats.SHARE_OF_GAIN, level) for name in common}
        if not exact and not any(e.decisive and e.low > RULES[2].margin for e in singles.values()):
            claim.verdict = INCONCLUSIVE
            claim.reason = (f"the best-of-{len(common)} interval {estimate} lies above the margin, but no single static model's "
                            f"{level:.1%} interval does (the maximum of several is biased upwards)")
    return with_replicates(claim, [stats.pooled([g], BEST_STATIC_SHARE).value for g in groups])


def claim_ranks(results: list[dict], trains: list[dict | None], gain_pairs: list[tuple[list[float], list[float]]] | None = None,
                control: dict | None = None) -> Claim:
    """``gain_pairs``: per replicate, (hyperfitted, base) greedy TTR per prompt (from the temperature or static-bias analysis):
    a reordering that did not raise diversity is not the reordering the claim is about. ``control``: the rank analysis of
    the first run at its lowest held-out loss (a fine-tune that did not hyperfit), shown beside the verdict."""
    if not results:
        return not_run(3)
    if not all(r.get("per_prompt") and "copied" in r["per_prompt"] for r in results):
        return not_run(3, "these results predate per-prompt counts with copied training spans left out: rerun the analysis")
    groups = [(r["per_prompt"]["unexplained_overrides"], r["per_prompt"]["steps"]) for r in results]
    estimate = stats.pooled(groups, stats.RATIO_OF_SUMS)
    overrides = stats.pooled([(r["per_prompt"]["overrides"], r["per_prompt"]["steps"]) for r in results], stats.RATIO_OF_SUMS)
    scales = [r["null"]["scale"] for r in results]
    first = results[0]
    if gain_pairs:
        gain, gain_estimate = gain_check(gain_pairs)
    else:
        gain, gain_estimate = Check("hyperfitting raised greedy TTR", False, "no per-prompt TTR of both models: run the temperature or static-bias analysis"), None
    copied = [r.get("copied_spans") for r in results]
    checks = [hyperfitted_check(trains), gain,
              Check("static+temperature null fitted", all(v > 0 for v in scales), "tau " + ", ".join(f"{1 / v:.3f}" if v > 0 else "undefined" for v in scales)),
              Check("copied training spans left out", all(copied),
                    ", ".join(f"{c['share_of_steps']:.1%} of steps complete a training {c['n']}-gram" if c else
                              "not known: the analysis had no training data" for c in copied))]
    fitted_on = f" fitted over {first['null']['fitted_on']}," if first["null"].get("fitted_on") else ""
    evidence = (f"overrides of the base top-1 {overrides} of the steps that do not recite training text, "
                f"{first['share_of_overrides_from_rank_over_10']:.1%} of all overrides from base rank > 10; the static+temperature model"
                f"{fitted_on} (tau {1 / scales[0]:.2f}) reproduces {first['null']['overrides_reproduced']:.1%} of the "
                f"overrides and {first['null']['deep_tail_reproduced']:.1%} of the deep-tail (rank > 10) ones"
                + (f" (on the held-out text it was fitted on, it chooses as the hyperfitted model does at "
                   f"{first['null']['heldout_top1_agreement']:.1%} of positions)" if first["null"].get("heldout_top1_agreement") is not None else "")
                + (f"; hyperfitting gain {gain_estimate}" if gain_estimate else ""))
    if control and control.get("per_prompt") and "copied" in control["per_prompt"] and trains[0] and trains[0].get("lowest_heldout_epoch") is not None:
        c = stats.pooled([(control["per_prompt"]["unexplained_overrides"], control["per_prompt"]["steps"])], stats.RATIO_OF_SUMS)
        evidence += (f"; the non-hyperfitting control (the same run at epoch {trains[0]['lowest_heldout_epoch']}, its lowest held-out loss) "
                     f"has effect {c}")
    return with_replicates(make_claim(3, estimate, checks, evidence), [stats.pooled([g], stats.RATIO_OF_SUMS).value for g in groups])


def claim_geometry(results: list[dict], trains: list[dict | None], control: dict | None = None) -> Claim:
    """``control``: the geometry of the first run at its lowest held-out loss (a fine-tune that did not hyperfit).

    The verdict is decided on each variant of the participation ratio (RMS-normalised, standardised, massive dimensions
    removed); it is that verdict only if all three agree, and inconclusive otherwise.
    """
    if not results:
        return not_run(4)
    if not all(r.get("footing") for r in results):
        return not_run(4, "these results predate the common footing of every layer (RMS-normalised states, the rival's maximum "
                          "in every resample): rerun the geometry analysis")
    variants = list(results[0]["footing"]["effects"])
    def pooled(variant):
        effects = [r["footing"]["effects"][variant] for r in results]
        shared = all("leave_one_out" in e for e in effects) and len({len(e["leave_one_out"]) for e in effects}) == 1
        return stats.mean_of_estimates([Estimate.from_dict(e) for e in effects], [e["leave_one_out"] for e in effects] if shared else None)

    pooled_by_variant = {v: pooled(v) for v in variants}
    primary = variants[0]
    estimate = pooled_by_variant[primary]
    verdicts = {v: decide(RULES[4], e)[0] for v, e in pooled_by_variant.items()}
    forced = next((r["localisation_forced"] for r in results if r.get("localisation_forced")), None)
    agree = len(set(verdicts.values())) == 1
    checks = [hyperfitted_check(trains), Check("localisation not forced", not forced, forced or "every block was trainable"),
              Check("the participation-ratio variants agree", agree, "; ".join(f"{v}: {pooled_by_variant[v]} ({verdicts[v]})" for v in variants))]
    f = results[0]["footing"]
    evidence = (f"every layer's state RMS-normalised per token (no learned gain); final block Delta PR {f['final_delta_pr'][primary]:+.1f}, "
                f"largest rival {f['rival'][primary]} {f['rival_delta_pr'][primary]:+.1f} (the rival is chosen again in every jackknife "
                f"resample); {results[0]['tokens']} positions (position 0 left out). As transformers' hidden_states[-1] gives it (after the "
                f"final norm, with its gain): Delta PR {results[0]['verdict']['final_delta_pr']:+.1f}")
    if control and control.get("footing") and trains[0] and trains[0].get("lowest_heldout_epoch") is not None:
        c = Estimate.from_dict(control["footing"]["effects"][primary])
        evidence += (f"; the non-hyperfitting control (the same run at epoch {trains[0]['lowest_heldout_epoch']}, its lowest held-out loss) "
                     f"has effect {c}")
    per_replicate = [Estimate.from_dict(r["footing"]["effects"][primary]).value for r in results]
    return with_replicates(make_claim(4, estimate, checks, evidence), per_replicate)


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
    return np.mean(hyperfitted_ttr, axis=axis) - envelope_at(quality, ttrs, np.mean(hyperfitted_log_perplexity, axis=axis))


FRONTIER_GAP = stats.Statistic("gap above the frontier's envelope", _frontier_gap)


def frontier_gap(hyperfitted_ttr, hyperfitted_log_perplexity, *frontier_columns) -> float:
    return float(FRONTIER_GAP(np.asarray(hyperfitted_ttr), np.asarray(hyperfitted_log_perplexity), *map(np.asarray, frontier_columns)))


def claim_frontier(replicates: list[dict] | dict | None, trains: list[dict | None]) -> Claim:
    """Claim 1(b): the base model sampled over temperatures traces diversity against judge perplexity; is hyperfitted greedy above it?

    ``replicates``: per hyperfitted replicate, the judged points of its temperature analysis (one dict: one replicate).
    The gap is pooled over replicates crossed with the prompts, as every other claim's.
    """
    replicates = [replicates] if isinstance(replicates, dict) else [r for r in (replicates or []) if r]
    if not replicates:
        return not_run("1b", "needs the temperature analysis and a judge model (study.judge)")
    points = replicates[0]
    frontier = sorted((label for label in points if label == "base, greedy" or label.startswith("base, T=")),
                      key=lambda label: float(np.nanmean(points[label]["log_perplexity"])))
    labels = ["hyperfitted", *frontier]
    if not all(label in r for r in replicates for label in labels):
        return not_run("1b", "the replicates' temperature analyses decoded different temperatures: rerun them with one grid")
    # A prompt whose continuation the judge could not score (empty text) leaves every column of every replicate, so they stay paired.
    keep = [i for i in range(len(points["hyperfitted"]["ttr"]))
            if all(math.isfinite(r[l]["log_perplexity"][i]) for r in replicates for l in labels)]
    groups = [tuple(np.array(r[l][measure])[keep] for l in labels for measure in ("ttr", "log_perplexity")) for r in replicates]
    estimate = stats.pooled(groups, FRONTIER_GAP)
    mean_of = {l: (float(np.mean(points[l]["ttr"])), float(np.exp(np.nanmean(points[l]["log_perplexity"])))) for l in points}
    qualities = [float(np.mean([np.mean(g[i]) for g in groups])) for i in range(1, len(groups[0]), 2)]  # hyperfitted, then the frontier
    tuned_quality, low, high = qualities[0], min(qualities[1:]), max(qualities[1:])
    inside = low <= tuned_quality <= high
    gain, _ = gain_check([(r["hyperfitted"]["ttr"], r["base, greedy"]["ttr"]) for r in replicates])
    checks = [hyperfitted_check(trains[:len(replicates)]), gain,
              Check("hyperfitted judge perplexity within the frontier", inside,
                    f"{math.exp(tuned_quality):.1f} against {math.exp(low):.1f}-{math.exp(high):.1f}" +
                    ("" if inside else ": add temperatures to analysis.temperature_grid so the frontier reaches it"))]
    evidence = ("frontier (TTR at judge perplexity, replicate 0): "
                + ", ".join(f"{l.removeprefix('base, ')} {mean_of[l][0]:.3f} at {mean_of[l][1]:.1f}" for l in frontier)
                + f"; hyperfitted {mean_of['hyperfitted'][0]:.3f} at {mean_of['hyperfitted'][1]:.1f}; {len(keep)} prompts"
                + (f" x {len(replicates)} replicates" if len(replicates) > 1 else ""))
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
    claim = make_claim("1b", estimate, checks, evidence)
    return with_replicates(claim, [stats.pooled([g], FRONTIER_GAP).value for g in groups])


def claim_late_stage(results: dict | None) -> Claim:
    """Claim 5: is LoRA on the last blocks non-inferior to LoRA on all blocks, relative to what all blocks gained?

    Gated only by the two arms it compares (a diverged first-blocks control is evidence beside it, not a condition),
    and each arm must itself have hyperfitted and raised greedy TTR over the base model: two arms equal to base are not
    a match, they are no hyperfitting.
    """
    if not results or not all(k in results.get("methods", {}) for k in ("lora:last", "lora:all")):
        return not_run(5)
    m = results["methods"]
    if "per_prompt_ttr" not in results.get("base", {}):
        return not_run(5, "these results predate the base model's per-prompt TTR: rerun the controls")
    target = results["until_loss"]
    checks = []
    for key in ("lora:last", "lora:all"):
        row = m[key]
        reached = not row.get("diverged", False) and loss_hyperfitted(row["initial_train_loss"], row["final_train_loss"], target)
        checks.append(Check(f"{key} hyperfitted", reached,
                            f"loss {row['initial_train_loss']:.3f} -> {row['final_train_loss']:.3f} in {row['epochs']} epochs"
                            + (f", target {target:g}" if target is not None else "") + ("; diverged" if row.get("diverged") else "")))
    last, every, base = m["lora:last"].get("per_prompt_ttr"), m["lora:all"].get("per_prompt_ttr"), results["base"]["per_prompt_ttr"]
    if last is None or every is None:  # a diverged control has no continuations
        return make_claim(5, None, checks, "a compared arm diverged: nothing to compare")
    for key, arm in (("lora:last", last), ("lora:all", every)):
        checks.append(gain_check([(arm, base)], f"{key} raised greedy TTR over base")[0])
    blocks = results.get("train_blocks")
    evidence = (f"TTR base {stats.mean(base)}, last {stats.mean(last)}, all {stats.mean(every)}; last minus all "
                f"{stats.paired_difference(last, every)}; trainable parameters {m['lora:last']['trainable_parameters']:,} vs "
                f"{m['lora:all']['trainable_parameters']:,}" + (f"; the controls trained on {blocks} blocks" + (", the study's own training data" if results.get("on_study_data") else
                                                                  ", the first of the study's training blocks, not all of "
                                                                  "them as in claims 1-4 (study.controls_on_study_data=false)") if blocks else ""))
    if m.get("lora:first", {}).get("per_prompt_ttr"):
        evidence += f"; last minus first {stats.paired_difference(last, m['lora:first']['per_prompt_ttr'])} (evidence beside the verdict)"
    estimate = stats.pooled([(last, base, every, base)], stats.SHARE_OF_GAIN)
    # Each arm is one training run: its seed-to-seed spread, carried to the share (last - base) / (all - base) to first order.
    gain = float(np.mean(every) - np.mean(base))
    share = estimate.value if math.isfinite(estimate.value) else 0.0
    seed_sd = (ARM_SEED_SD[0] * math.sqrt(1 + share ** 2) / gain, f"each arm's TTR seed SD {ARM_SEED_SD[0]:g} at a gain of "
               f"{gain:.3f}: {ARM_SEED_SD[1]}") if gain > 0 else None
    return make_claim(5, estimate, checks, evidence, seed_sd)


def _gain_pairs(analyses: dict[str, list[dict]]) -> list[tuple[list[float], list[float]]] | None:
    """Per replicate, (hyperfitted, base) greedy TTR per prompt, from whichever analysis recorded them."""
    for name, read in (("temperature", lambda p: (p["hyperfitted"][0], p["base, greedy"][0])),
                       ("static-bias", lambda p: (p["hyperfitted"], p["base, greedy"]))):
        results = analyses.get(name) or []
        if results and all(r.get("per_prompt") for r in results):
            return [read(r["per_prompt"]) for r in results]
    return None


def all_claims(analyses: dict[str, list[dict]], controls: dict | None, trains: list[dict | None], frontier: list[dict] | None = None,
               geometry_control: dict | None = None, ranks_control: dict | None = None) -> list[Claim]:
    """``analyses`` maps each analysis to its results, one per hyperfitted replicate; ``trains`` their training summaries;
    ``frontier`` the judged diversity-quality points of each replicate's temperature analysis (quality stage);
    ``geometry_control``, ``ranks_control`` the geometry and rank analyses of the first replicate at its lowest held-out
    loss. Claims 1-5 in order, then 1(b), 1(c), each with its verdict after Holm's correction over the study's rules beside it."""
    ranks = analyses.get("ranks") or []
    override_rates = [r.get("override_rate") for r in ranks] if len(ranks) == len(analyses.get("static-bias") or []) else None
    return with_holm([
        claim_temperature(analyses.get("temperature", []), trains),
        claim_static_bias(analyses.get("static-bias", []), trains, override_rates),
        claim_ranks(ranks, trains, _gain_pairs(analyses), ranks_control),
        claim_geometry(analyses.get("geometry", []), trains, geometry_control),
        claim_late_stage(controls),
        claim_frontier(frontier, trains),
        claim_temperature_like_for_like(analyses.get("temperature", []), trains),
    ])


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Per prompt, the mean over sampling seeds: seeds are repeated measurements of one prompt, not more prompts."""
    return [sum(values) / len(values) for values in zip(*per_seed)]
