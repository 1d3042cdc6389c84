"""What every claim shares: the rule it is judged by, its decision, Holm's correction, the registry of claims.

A claim of the papers is one ``ClaimSpec`` (``register_claim``): its rule (the effect it estimates, the
direction the claim predicts, the margin: the smallest effect that matters, with its reason), its name
and the paper's own figure, the function that decides it from a run folder's evidence, and the simulator
that calibrates that function on worlds whose truth is known (report/calibration.py). The built-in claims
are one file each in this package; a plug-in brings its own the same way:

    from hyperfitting.claims import ClaimSpec, Rule, make_claim, register_claim

    RULE = Rule("my probe's effect", "above", 0.1, "why 0.1 matters")

    def decide(evidence):                 # evidence.results("my-probe"): one results dict per replicate
        return make_claim("probe", estimate_from(evidence.results("my-probe")), [], "what it read")

    register_claim(ClaimSpec("probe", "My probe's claim", "the paper's figure", RULE, decide, simulate=my_world,
                             truths=Truths(0.1, 0.0, 0.3, "assumed")))

The decision is the same for every claim (``decide``):

- *holds* when the 95% interval of the effect lies entirely beyond the margin in the claimed direction;
- *does not hold* when the interval lies entirely on the other side (it excludes the claimed effect);
- *inconclusive* otherwise, with roughly how many prompts would decide it at the observed spread;
- and *inconclusive*, never a decision, when a manipulation check failed (the model did not
  hyperfit, the ablation did not change anything, the localisation was forced by construction...),
  or when the estimate has no real interval (one prompt, every prompt identical, fewer than 3 blocks).

A rule with direction "apart" is two-sided: it holds when the interval lies wholly outside
[-margin, +margin], does not hold when it lies wholly inside (equivalence), and is
inconclusive otherwise. Holm's correction over the rules of a study is the verdict the report leads with.
"""

from __future__ import annotations

import math
import statistics
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

from hyperfitting import stats
from hyperfitting.errors import ConfigError
from hyperfitting.stats import Estimate

if TYPE_CHECKING:
    from hyperfitting.claims.evidence import Evidence
    from hyperfitting.claims.worlds import Truths

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"


@dataclass(frozen=True)
class Rule:
    effect: str
    direction: Literal["above", "below", "apart"]
    margin: float
    margin_reason: str
    units: str = "prompts"
    seeds_key: str = "study.replicates"
    """The setting that trains more seeds of what this rule compares."""

    def in_words(self) -> str:
        if self.direction == "apart":
            return (
                f"effect: {self.effect}. Holds if its 95% interval lies entirely outside [-{self.margin:g}, "
                f"+{self.margin:g}]; "
                f"does not hold if it lies entirely inside; otherwise inconclusive. Margin: {self.margin_reason}. "
                "A failed manipulation check makes it inconclusive."
            )
        side = "above" if self.direction == "above" else "below"
        other = "below" if self.direction == "above" else "above"
        return (
            f"effect: {self.effect}. Holds if its 95% interval lies entirely {side} {self.margin:+g}; does not hold if "
            "it lies "
            f"entirely {other}; otherwise inconclusive. Margin: {self.margin_reason}. A failed manipulation check "
            "makes it inconclusive."
        )


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
    p_values: tuple[float, float] | None = (
        None  # (holds, does not hold) where the estimate alone does not give them (at_both_t_star)
    )


SEED_SD_DF = 2  # each declared seed SD is a standard deviation of three seeds: its uncertainty is carried, not ignored
# Off where no training seed exists: `hyperfit validate`'s planted models are made, not trained.
DECLARED_SEED_SPREAD: ContextVar[bool] = ContextVar("declared_seed_spread", default=True)


@dataclass(frozen=True)
class ClaimSpec:
    """One claim: everything the report, metrics.json, the calibration and `hyperfit results` need to know about it."""

    number: int | str
    """How the report names it: 1-5 for the paper's claims, "1b", "1c" for claim 1's stronger controls, any short name
    for a plug-in's."""
    name: str
    paper: str
    """What the paper itself reports, shown beside our verdict."""
    rule: Rule
    decide: Callable[[Evidence], Claim]
    """The verdict from a run folder's evidence (``make_claim`` turns an estimate and checks into one)."""
    simulate: Callable | None = None
    """(design, spreads, true effect, rng) -> (the claim ``decide``'s own logic gives on that world, the true value of
    its estimand): report/calibration.py runs it at ``truths``. A claim without one is uncalibrated and decides
    nothing."""
    truths: Truths | None = None
    seed_sd: tuple[float, str] | None = None
    """The effect's declared seed-to-seed SD and where it was measured: widens a one-training-run interval
    (make_claim)."""
    on_full_finetune: bool = True
    """Decided again on the fully fine-tuned model (study.full_finetune): false for a claim about other trained arms."""

    @property
    def key(self) -> str:
        return str(self.number)


_CLAIMS: dict[str, ClaimSpec] = {}


def register_claim(spec: ClaimSpec, replace: bool = False) -> ClaimSpec:
    """Add a claim every report decides (a plug-in module does this on import: study.plugins)."""
    if spec.key in _CLAIMS and not replace:
        raise ConfigError(
            f"A claim numbered {spec.key!r} is already registered; choose another number or pass replace=True."
        )
    if not spec.key or not all(c.isalnum() or c in "-_" for c in spec.key):
        raise ConfigError(
            f"Claim number {spec.key!r}: use letters, digits, '-' and '_' (it names calibration rows and metrics keys)."
        )
    _CLAIMS[spec.key] = spec
    return spec


def unregister_claim(number: int | str) -> None:
    _CLAIMS.pop(str(number), None)


def claim_specs() -> tuple[ClaimSpec, ...]:
    """Every registered claim: the paper's numbered claims in order, then the lettered and named ones (1b, 1c, a
    plug-in's)."""
    return tuple(
        sorted(
            _CLAIMS.values(),
            key=lambda spec: (not spec.key.isdigit(), spec.key.zfill(8) if spec.key.isdigit() else spec.key),
        )
    )


def get_claim(number: int | str) -> ClaimSpec:
    try:
        return _CLAIMS[str(number)]
    except KeyError:
        raise ConfigError(
            f"Unknown claim {number!r}; known: {', '.join(_CLAIMS)} (hyperfitting.claims.register_claim adds one)."
        ) from None


def decide(rule: Rule, estimate: Estimate | None, checks: list[Check] = ()) -> tuple[str, str, int | None]:
    """(verdict, reason, units needed) from an effect's interval, its rule and the manipulation checks."""
    failed = [c for c in checks if not c.passed]
    if failed:
        return INCONCLUSIVE, "manipulation check failed: " + "; ".join(f"{c.name} ({c.detail})" for c in failed), None
    if estimate is None:
        return INCONCLUSIVE, "the effect could not be estimated", None
    if not estimate.decisive:
        return (
            INCONCLUSIVE,
            f"the effect {estimate.value:+.3f} has no real interval ({estimate.method}): an estimate without one never "
            "decides",
            None,
        )
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
    seed_bound = estimate.seed_se > 0 and stats.seed_half(estimate) >= abs(estimate.value - margin)
    power = (
        f"roughly {needed} {units} would decide it at the observed spread"
        if needed
        else f"more replicates ({rule.seeds_key}) and {units} may decide it: part of the width is seed-to-seed spread"
        if estimate.replicates > 1
        else f"no number of {units} decides it at one training run: the declared seed-to-seed spread alone spans the "
        f"distance to the margin (train more seeds: {rule.seeds_key})"
        if seed_bound
        else "the estimate sits on the margin: no practical sample size decides it"
    )
    return INCONCLUSIVE, f"the interval {estimate} contains the margin; {power}", needed


def make_claim(
    number: int | str,
    estimate: Estimate | None,
    checks: list[Check],
    evidence: str,
    seed_sd: tuple[float, str] | None = None,
) -> Claim:
    """The verdict of claim ``number`` on ``estimate``. An estimate from one training run is widened by the claim's
    declared seed-to-seed spread (``seed_sd``, default the claim's declared one): the claims are about a recipe, not
    about one run of it."""
    spec = get_claim(number)
    rule = spec.rule
    if estimate is not None and not math.isfinite(estimate.value):
        # Say why instead of printing nan: the usual cause is a ratio whose denominator (the gain) is zero.
        estimate, evidence = (
            None,
            evidence + "; the effect is undefined here (a ratio over a zero gain or an empty set)",
        )
    seed_sd = seed_sd if seed_sd is not None else spec.seed_sd
    if (
        estimate is not None
        and estimate.replicates < 2
        and seed_sd
        and seed_sd[0] > 0
        and estimate.decisive
        and DECLARED_SEED_SPREAD.get()
    ):
        one_run = estimate
        estimate = stats.with_declared_seed_spread(estimate, seed_sd[0], df=SEED_SD_DF)
        evidence += (
            f"; one training run: its interval {one_run} widened by a declared seed-to-seed SD of {seed_sd[0]:.3g} "
            f"({seed_sd[1]}; {SEED_SD_DF} degrees of freedom) to speak of the recipe"
        )
    verdict, reason, needed = decide(rule, estimate, checks)
    return Claim(
        spec.number,
        spec.name,
        spec.paper,
        rule.in_words(),
        rule.margin,
        rule.direction,
        estimate.to_dict() if estimate else None,
        [c.__dict__ for c in checks],
        verdict,
        reason,
        needed,
        evidence,
    )


def not_run(number: int | str, why: str = "not run in this study") -> Claim:
    spec = get_claim(number)
    return Claim(
        spec.number,
        spec.name,
        spec.paper,
        spec.rule.in_words(),
        spec.rule.margin,
        spec.rule.direction,
        None,
        [],
        NOT_RUN,
        why,
    )


def contrary_p(estimate: Estimate, margin: float, direction: str) -> float:
    """P-value of "the effect is on the other side of the margin" (the test behind "does not hold"), read off the
    interval.

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
        p_holds, p_fails = claim.p_values or (
            stats.one_sided_p(estimate, claim.margin, claim.direction),
            contrary_p(estimate, claim.margin, claim.direction),
        )
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
    """Every analysed model must have reached the target loss without diverging: otherwise it is not a hyperfitted
    model."""
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
    return Check(
        "model hyperfitted",
        passed,
        f"training loss {', '.join(details)}" + (f", target {target:g}" if target is not None else ""),
    )


def gain_check(
    pairs: list[tuple[list[float], list[float]]], name: str = "hyperfitting raised greedy TTR"
) -> tuple[Check, Estimate]:
    """Hyperfitting must have made greedy output more diverse on these prompts: otherwise there is no gain to
    explain."""
    gain = stats.pooled(pairs, stats.MEAN_DIFFERENCE)
    return Check(name, gain.decisive and gain.low > 0, f"gain {gain}"), gain


def with_replicates(claim: Claim, per_replicate: list[float]) -> Claim:
    """Each replicate's own point estimate, and their spread, beside the pooled interval."""
    if len(per_replicate) > 1:
        defined = [v for v in per_replicate if math.isfinite(v)]  # a replicate without a gain has no share of it
        spread = f"{statistics.stdev(defined):.3f}" if len(defined) > 1 else "undefined"
        claim.evidence += (
            f"; per replicate {', '.join(f'{v:+.3f}' if math.isfinite(v) else 'undefined' for v in per_replicate)} "
            f"(seed-to-seed standard deviation "
            f"{spread}, {len(per_replicate)} replicates)"
        )
    claim.replicates = per_replicate
    return claim


def seed_mean(per_seed: list[list[float]]) -> list[float]:
    """Per prompt, the mean over sampling seeds: seeds are repeated measurements of one prompt, not more prompts."""
    return [sum(values) / len(values) for values in zip(*per_seed)]
