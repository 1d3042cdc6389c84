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

from dataclasses import dataclass, field
from typing import Literal

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


RULES: dict[int, Rule] = {
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
}

NAMES = {
    1: "Not temperature: entropy-matched sampling does not recover the diversity",
    2: "Not static reweighting: a fixed logit offset does not reproduce the gain",
    3: "Dynamic, context-dependent rank reordering",
    4: "Terminal Expansion: the largest dimension increase is in the final layer",
    5: "Late-Stage LoRA: the last blocks match all blocks",
}

PAPER = {
    1: "TTR 0.397 at T*=0.59 vs 0.684 hyperfitted (TinyLlama-1.1B): gap +0.287",
    2: "diversity falls as alpha grows (TTR 0.215 at alpha 0.5)",
    3: "39.1% overrides, 12.9% of them from base rank > 10",
    4: "Delta PR +80.8 at the final layer (TinyLlama, width 2048)",
    5: "last 5 blocks match or beat all blocks with ~80% fewer trainable parameters",
}


@dataclass
class Check:
    """A manipulation check: did the experiment do what it needs to do for the effect to mean anything?"""

    name: str
    passed: bool
    detail: str


@dataclass
class Claim:
    number: int
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
    power = (f"roughly {needed} {rule.units} would decide it at the observed spread" if needed
             else "the estimate sits on the margin: no practical sample size decides it")
    return INCONCLUSIVE, f"the interval {estimate} contains the margin {rule.margin:+g}; {power}", needed


def make_claim(number: int, estimate: Estimate | None, checks: list[Check], evidence: str) -> Claim:
    rule = RULES[number]
    verdict, reason, needed = decide(rule, estimate, checks)
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction,
                 estimate.to_dict() if estimate else None, [c.__dict__ for c in checks], verdict, reason, needed, evidence)


def not_run(number: int, why: str = "not run in this study") -> Claim:
    rule = RULES[number]
    return Claim(number, NAMES[number], PAPER[number], rule.in_words(), rule.margin, rule.direction, None, [], NOT_RUN, why)


# ------------------------------------------------------------------------------ checks shared by claims 1-4


def hyperfitted_check(train: dict | None) -> Check:
    """The analysed model must have reached the target loss without diverging: otherwise it is not a hyperfitted model."""
    if not train:
        return Check("model hyperfitted", False, "no training summary")
    final, target = train["final_train_loss"], train.get("until_loss")
    if target is None:
        return Check("model hyperfitted", final < 0.5 * train["initial_train_loss"], f"loss {train['initial_train_loss']:.3f} -> {final:.3f}")
    return Check("model hyperfitted", final <= target, f"training loss {train['initial_train_loss']:.3f} -> {final:.3f}, target {target:g}")


def gain_check(tuned: list[float], base: list[float]) -> tuple[Check, Estimate]:
    """Hyperfitting must have made greedy output more diverse on these prompts: otherwise there is no gain to explain."""
    gain = stats.paired_difference(tuned, base)
    return Check("hyperfitting raised greedy TTR", gain.low > 0, f"gain {gain}"), gain


# ------------------------------------------------------------------------------ the claims


def claim_temperature(results: dict | None, train: dict | None) -> Claim:
    if not results:
        return not_run(1)
    per_prompt = results.get("per_prompt")
    if not per_prompt:
        return not_run(1, "these results predate per-prompt intervals: rerun the analysis")
    tuned = per_prompt["hyperfitted"][0]
    at_t_star = _seed_mean(per_prompt["base, T*"])
    estimate = stats.paired_difference(tuned, at_t_star)
    gain, gain_estimate = gain_check(tuned, per_prompt["base, greedy"][0])
    matched = results.get("t_star_matched", {}).get("teacher_forced", True)
    checks = [hyperfitted_check(train), gain,
              Check("entropy matched at T*", matched, f"T* = {results['sampling_temperature']:.3f}"
                    + ("" if matched else ": the bisection hit its bound, so the entropies differ"))]
    evidence = (f"T* = {results['sampling_temperature']:.2f}; TTR base at T* {stats.mean(at_t_star)} vs hyperfitted greedy "
                f"{stats.mean(tuned)} over {len(tuned)} prompts x {len(per_prompt['base, T*'])} seeds; hyperfitting gain over base greedy {gain_estimate}")
    return make_claim(1, estimate, checks, evidence)


def claim_static_bias(results: dict | None, train: dict | None) -> Claim:
    if not results:
        return not_run(2)
    per_prompt = results.get("per_prompt")
    if not per_prompt:
        return not_run(2, "these results predate per-prompt intervals: rerun the analysis")
    base, tuned = per_prompt["base, greedy"], per_prompt["hyperfitted"]
    bite = results["bite"]
    # Only static models that changed the base model's choices are evidence; the best of them on these prompts
    # (chosen on the mean; the interval is then taken for it).
    static_rows = {k: v for k, v in per_prompt.items() if k in bite["biting"]}
    gain, gain_estimate = gain_check(tuned, base)
    checks = [hyperfitted_check(train), gain,
              Check("a static model changes base choices", bite["passed"],
                    f"{', '.join(bite['biting']) or 'none'} change the base greedy choice on at least {bite['required']:.0%} of steps "
                    f"(the K-token offset: {bite['top_k_flip_rate']:.1%} at alpha {bite['top_k_alpha']:g})")]
    if not static_rows:
        return make_claim(2, None, checks, f"no static model changed the base model's choices; hyperfitting gain {gain_estimate}")
    best = max(static_rows, key=lambda k: sum(static_rows[k]))
    estimate = stats.ratio_of_mean_differences((static_rows[best], base), (tuned, base))
    fitted = results.get("fitted_null", {})
    evidence = (f"best static model: {best} (TTR {sum(static_rows[best]) / len(base):.3f}; base {sum(base) / len(base):.3f}, hyperfitted "
                f"{sum(tuned) / len(tuned):.3f}); hyperfitting gain {gain_estimate}")
    if fitted:
        evidence += (f"; fitted static+temperature model (tau {fitted['tau']:.2f}) reproduces {fitted['top1_reproduced']:.1%} of the "
                     f"hyperfitted top-1 choices")
    return make_claim(2, estimate, checks, evidence)


def claim_ranks(results: dict | None, train: dict | None) -> Claim:
    if not results:
        return not_run(3)
    counts = results.get("per_prompt")
    if not counts:
        return not_run(3, "these results predate per-prompt intervals: rerun the analysis")
    estimate = stats.ratio_of_sums(counts["unexplained_overrides"], counts["steps"])
    overrides = stats.ratio_of_sums(counts["overrides"], counts["steps"])
    null = results["null"]
    checks = [hyperfitted_check(train),
              Check("static+temperature null fitted", null["scale"] > 0, f"tau {1 / null['scale']:.3f}" if null["scale"] > 0 else "non-positive scale")]
    evidence = (f"overrides of the base top-1 {overrides} of steps, {results['share_of_overrides_from_rank_over_10']:.1%} of them from base rank > 10; "
                f"the fitted static+temperature model (tau {1 / null['scale']:.2f}) reproduces {null['overrides_reproduced']:.1%} of the overrides "
                f"and {null['deep_tail_reproduced']:.1%} of the deep-tail (rank > 10) ones")
    return make_claim(3, estimate, checks, evidence)


def claim_geometry(results: dict | None, train: dict | None) -> Claim:
    if not results:
        return not_run(4)
    effect = results.get("effect")
    if not effect:
        return not_run(4, "these results predate intervals: rerun the analysis")
    estimate = Estimate(**{k: effect[k] for k in ("value", "low", "high", "units", "method")})
    forced = results.get("localisation_forced")
    checks = [hyperfitted_check(train),
              Check("localisation not forced", not forced,
                    forced or "every block was trainable")]
    v = results["verdict"]
    evidence = (f"reads {v['state']}: final layer Delta PR {v['final_delta_pr']:+.1f}; runner-up {v['runner_up']} {v['runner_up_delta_pr']:+.1f}; "
                f"last block's raw output {v['final_block_raw_delta_pr']:+.1f}; {results['tokens']} positions (position 0 left out)")
    return make_claim(4, estimate, checks, evidence)


def claim_late_stage(results: dict | None) -> Claim:
    if not results or not all(k in results.get("methods", {}) for k in ("lora:last", "lora:all")):
        return not_run(5)
    m = results["methods"]
    if "per_prompt_ttr" not in m["lora:last"]:
        return not_run(5, "these results predate per-prompt intervals: rerun the controls")
    estimate = stats.paired_difference(m["lora:last"]["per_prompt_ttr"], m["lora:all"]["per_prompt_ttr"])
    checks = []
    for key, row in m.items():
        reached = row["final_train_loss"] <= results["until_loss"]
        checks.append(Check(f"{key} hyperfitted", reached and not row.get("diverged", False),
                            f"loss {row['initial_train_loss']:.3f} -> {row['final_train_loss']:.3f} in {row['epochs']} epochs, "
                            f"target {results['until_loss']:g}" + ("; diverged" if row.get("diverged") else "")))
    evidence = (f"TTR last {stats.mean(m['lora:last']['per_prompt_ttr'])}, all {stats.mean(m['lora:all']['per_prompt_ttr'])}; "
                f"trainable parameters {m['lora:last']['trainable_parameters']:,} vs {m['lora:all']['trainable_parameters']:,}")
    if "lora:first" in m:
        evidence += f"; last minus first {stats.paired_difference(m['lora:last']['per_prompt_ttr'], m['lora:first']['per_prompt_ttr'])}"
    return make_claim(5, estimate, checks, evidence)


def all_claims(analyses: dict[str, dict | None], controls: dict | None, train: dict | None = None) -> list[Claim]:
    return [
        claim_temperature(analyses.get("temperature"), train),
        claim_static_bias(analyses.get("static-bias"), train),
        claim_ranks(analyses.get("ranks"), train),
        claim_geometry(analyses.get("geometry"), train),
        claim_late_stage(controls),
    ]


def _seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Per prompt, the mean over sampling seeds: seeds are repeated measurements of one prompt, not more prompts."""
    return [sum(values) / len(values) for values in zip(*per_seed)]
