"""Uncertainty for every number that enters a verdict: 95% intervals over evaluation units.

The unit of resampling is what was drawn at random: an evaluation prompt (or a held-out block).
Decoding steps and token positions are nested in prompts, so statistics over steps resample
whole prompts (a cluster bootstrap: per-prompt totals resampled as pairs).

Replicates (independently hyperfitted models) are *crossed* with the prompts: every replicate
is evaluated on the same prompts. So prompts are resampled once for all replicates (the
statistic is taken on the per-prompt mean over replicates), and the spread between the
replicates' own estimates adds a between-seed variance with R - 1 degrees of freedom
(Satterthwaite's approximation for the sum). Passing the same replicate three times therefore
gives exactly the interval of one copy, and three seeds that disagree widen it as a t interval
over seeds would.

Interval methods, chosen for coverage at the sizes a study has (16-300 prompts):

- a mean of one value per unit (a mean, a paired difference): Student's t interval. At n = 16
  BCa covers a true paired mean about 91% of the time; t covers 95% for normal-like data.
- other statistics (ratios of sums, shares of a gain, the frontier gap): ``scipy.stats.bootstrap``
  (BCa, percentile where BCa is undefined), *expanded* by t(n-1)/z x sqrt(n/(n-1)) about the
  point (Hesterberg's small-sample correction: the bootstrap's spread is that of a
  plug-in, divided by n rather than n - 1, and read off normal rather than t quantiles).
- statistics that repeated rows would bias (participation ratios): a delete-one-cluster jackknife.

An estimate without a real interval (a single unit, every unit identical, an undefined
resampling, fewer than 3 clusters) is marked ``decisive = False``: it is shown, never decided on.
``report/calibration.py`` measures how often each rule built on these is wrong.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special
from scipy import stats as scipy_stats
from scipy.optimize import brentq

CONFIDENCE = 0.95
RESAMPLES = 4999
SEED = 12345
Z = 1.959963984540054  # two-sided 95% normal quantile
Z_POWER = 0.8416212335729143  # one-sided 80% power


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval and how it was obtained.

    ``units`` is the number of independent units resampled (prompts or blocks); ``replicates``
    the number of hyperfitted replicates pooled (crossed with the units). ``decisive`` is False
    when the interval is not a real one (zero width, a single unit): such an estimate never
    decides a verdict. ``unit_sd`` is the spread of one unit's contribution implied by the
    interval (width x sqrt(units)), which is what a sample-size estimate needs.
    """

    value: float
    low: float
    high: float
    units: int
    method: str
    replicates: int = 1
    decisive: bool = True
    df: float = math.inf  # degrees of freedom of the quantile the interval was built with (inf: normal)
    seed_se: float = (
        0.0  # a between-seed standard error inside the interval (declared or measured): no number of units shrinks it
    )
    seed_df: float = math.inf  # the degrees of freedom that seed SD was measured with

    @property
    def unit_sd(self) -> float:
        return (self.high - self.low) / (2 * Z) * math.sqrt(max(self.units, 1))

    def to_dict(self) -> dict:
        return {**asdict(self), "unit_sd": self.unit_sd}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        keys = ("value", "low", "high", "units", "method", "replicates", "decisive", "df", "seed_se", "seed_df")
        estimate = cls(**{k: d[k] for k in keys if k in d})
        if "decisive" not in d:  # written before the flag: a zero-width interval was never a real one
            estimate = cls(**{**asdict(estimate), "decisive": _real_interval(estimate.low, estimate.high)})
        return estimate

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]" + ("" if self.decisive else " (no interval)")


# Spreads and widths below this share of the value's scale are floating-point noise, not evidence: a constant difference
# computed in floats (x + 0.3 - x) has a spread of about 1e-17, and its interval must not decide.
RELATIVE_TOLERANCE = 1e-9


def _negligible(spread: float, value: float) -> bool:
    return not math.isfinite(spread) or spread <= RELATIVE_TOLERANCE * max(1.0, abs(value))


def _real_interval(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and not _negligible(high - low, (low + high) / 2))


def no_interval(value: float, units: int, why: str) -> Estimate:
    """The point as its own (zero-width) interval, marked never to decide a verdict."""
    return Estimate(float(value), float(value), float(value), units, why, decisive=False)


# Student's t and the normal through scipy.special, which scipy.stats.t and scipy.stats.norm call themselves (the same
# floats, checked on 20,000 arguments): without scipy.stats' argument handling, 40x faster per call, and the
# calibration makes hundreds of thousands of calls.
def t_isf(alpha: float, df: float) -> float:
    """scipy.stats.t.isf(alpha, df)."""
    return float(-special.stdtrit(df, alpha))


def t_sf(z: float, df: float) -> float:
    """scipy.stats.t.sf(z, df), or the normal's at infinite df."""
    return float(special.stdtr(df, -z)) if math.isfinite(df) else float(special.ndtr(-z))


@functools.lru_cache(maxsize=4096)  # the calibration asks for the same few quantiles hundreds of thousands of times
def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    return float(special.stdtrit(df, (1 + confidence) / 2)) if df < 1e6 else float(special.ndtri((1 + confidence) / 2))


# ------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Statistic:
    """A statistic of paired columns (one row per unit), vectorised: ``function(*columns, axis=-1)``.

    ``per_unit``, when the statistic is the mean of one value per unit, gives that value
    (``x - y`` for a paired difference): such statistics get a t interval.
    """

    name: str
    function: Callable
    per_unit: Callable | None = None

    def __call__(self, *columns, axis=-1):
        return self.function(*columns, axis=axis)


def _ratio(x, y, axis=-1):
    total = np.sum(y, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total != 0, np.sum(x, axis=axis) / np.where(total != 0, total, 1), np.nan)


def _share_of_gain(x, y, z, w, axis=-1):
    gain = np.mean(z, axis=axis) - np.mean(w, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            gain != 0, (np.mean(x, axis=axis) - np.mean(y, axis=axis)) / np.where(gain != 0, gain, 1), np.nan
        )


MEAN = Statistic("mean", lambda x, axis=-1: np.mean(x, axis=axis), per_unit=lambda x: x)
MEAN_DIFFERENCE = Statistic(
    "mean difference", lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis), per_unit=lambda x, y: x - y
)
RATIO_OF_SUMS = Statistic("ratio of sums", _ratio)
SHARE_OF_GAIN = Statistic("share of a gain", _share_of_gain)


def _as_statistic(statistic: Statistic | Callable) -> Statistic:
    """A plain function of columns (not vectorised) becomes a Statistic evaluated resample by resample."""
    if isinstance(statistic, Statistic):
        return statistic

    def looped(*columns, axis=-1):
        columns = [np.moveaxis(np.asarray(c), axis, -1) for c in columns]
        if columns[0].ndim == 1:
            return statistic(*columns)
        batch = columns[0].shape[:-1]
        out = np.empty(batch)
        for index in np.ndindex(batch):
            out[index] = statistic(*(c[index] for c in columns))
        return out

    return Statistic(getattr(statistic, "__name__", "statistic"), looped)


# ------------------------------------------------------------------------------ one level: units


def _one_level(columns: tuple[np.ndarray, ...], statistic: Statistic, confidence: float = CONFIDENCE) -> Estimate:
    n = len(columns[0])
    value = float(statistic(*columns))
    if n < 2:
        return no_interval(value, n, "a single unit: no interval")
    if not math.isfinite(value):
        return no_interval(value, n, "undefined on these units")
    if statistic.per_unit is not None:
        per_unit = np.asarray(statistic.per_unit(*columns), dtype=float)
        sd = float(per_unit.std(ddof=1))
        if _negligible(sd, value):
            return no_interval(value, n, "every unit identical: no interval")
        half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
        return Estimate(value, value - half, value + half, n, f"t interval over {n} units", df=n - 1)
    if all(_negligible(float(np.ptp(c)), float(np.max(np.abs(c)))) for c in columns):
        return no_interval(value, n, "every unit identical: no interval")
    expand = t_quantile(n - 1, confidence) / t_quantile(math.inf, confidence) * math.sqrt(n / (n - 1))
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-data warning: we fall back instead
            result = scipy_stats.bootstrap(
                columns,
                statistic.function,
                paired=True,
                vectorized=True,
                n_resamples=RESAMPLES,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(SEED),
            )
        low, high = result.confidence_interval
        if _real_interval(low, high):
            low, high = value - expand * (value - low), value + expand * (high - value)
            return Estimate(
                value, float(low), float(high), n, f"{method} bootstrap over {n} units, expanded for small n", df=n - 1
            )
    return no_interval(value, n, "bootstrap undefined")


# ------------------------------------------------------------------------------ replicates crossed with units


Replicates = Sequence[tuple[Sequence[float], ...]]


def pooled(replicates: Replicates, statistic: Statistic | Callable, confidence: float = CONFIDENCE) -> Estimate:
    """``statistic`` of paired columns pooled over replicates, with an interval over prompts and seeds.

    ``replicates`` holds, per hyperfitted replicate, a tuple of equally long columns (one row
    per prompt, the same prompts in every replicate). The statistic is taken on the per-prompt
    mean over replicates (for means and ratios of sums that is the pooled value); its interval
    over prompts is widened by the between-replicate spread (see the module docstring).
    """
    statistic = _as_statistic(statistic)
    groups = [tuple(np.asarray(column, dtype=float) for column in columns) for columns in replicates]
    shapes = {c.shape for columns in groups for c in columns}
    if len(shapes) != 1:
        raise ValueError(f"every column of every replicate must cover the same prompts; lengths {sorted(shapes)}")
    width = len(groups[0])
    averaged = tuple(np.mean([g[i] for g in groups], axis=0) for i in range(width))
    prompt_level = _one_level(averaged, statistic, confidence)
    if len(groups) == 1:
        return prompt_level
    return between_replicates(prompt_level, [float(statistic(*g)) for g in groups], confidence)


def between_replicates(within: Estimate, per_replicate: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Widen an interval over units by the between-seed variance of R replicates crossed with the units: s^2 / R.

    Each side of the (possibly asymmetric) interval is widened on its own, to the root sum of squares of the units'
    half-width and the seed term's own, t(R - 1) x s / sqrt(R), as for a declared seed SD (with_declared_seed_spread):
    with s known to R - 1 degrees of freedom, Satterthwaite's pooled t under-covered at the standard preset's sizes
    (100 prompts, R = 3: 91-93% in ``report/calibration.py``'s 1000 worlds per truth; its one quantile cannot follow
    the seed term's heavy t(2) tail). Conservative by design: s^2 also holds the unit-by-seed interaction, which the
    interval over units already counts. The degrees of freedom recorded (for p-values between the interval's own
    levels) are Satterthwaite's.
    """
    values = np.asarray(per_replicate, dtype=float)
    r = len(values)
    if r < 2:
        return within
    method = f"{within.method} x {r} replicates (between-seed variance, t({r - 1}) root sum of squares)"
    if not within.decisive or not np.all(np.isfinite(values)):
        return Estimate(within.value, within.low, within.high, within.units, method, r, False)
    return with_seed_variance(within, float(values.var(ddof=1)) / r, r - 1, r, method, confidence)


def between_arms(
    within: Estimate, last_gains: Sequence[float], all_gains: Sequence[float], confidence: float = CONFIDENCE
) -> Estimate:
    """Widen the interval of a share of gains, last / all, by each arm's own between-seed spread: R training seeds per
    arm, each seed's mean gain over base. The delta method, Var(share) ~ (s_last^2 + share^2 s_all^2) / (R gain_all^2),
    with t(R - 1) as for one arm (conservative: the two arms' seed spreads give up to 2(R - 1) degrees of freedom).
    It does not pair seed k of one arm with seed k of the other: the arms' seeds are independent training runs, and a
    pairing would make the interval depend on which runs were set side by side (paired, the verdict changed with the
    pairing in 44 of 150 simulated studies at the paper's share). The seed term's degrees of freedom are Welch's for the
    two arms' variances, between R - 1 and 2(R - 1): at the standard preset's sizes with three seeds per arm this covers
    96.9% (t(R - 1), 98.6%, had a sixth of the power)."""
    last, every = np.asarray(last_gains, dtype=float), np.asarray(all_gains, dtype=float)
    r = min(len(last), len(every))
    method = f"{within.method} x {r} seeds per arm (each arm's between-seed variance, Welch's t, root sum of squares)"
    gain = float(every.mean()) if r else float("nan")
    if r < 2 or not within.decisive or not (np.all(np.isfinite(last)) and np.all(np.isfinite(every))) or gain <= 0:
        return Estimate(within.value, within.low, within.high, within.units, method, r, False)
    share = within.value
    from_last, from_all = float(last.var(ddof=1)) / (r * gain**2), share**2 * float(every.var(ddof=1)) / (r * gain**2)
    between = from_last + from_all
    df = between**2 / ((from_last**2 + from_all**2) / (r - 1)) if between > 0 else r - 1
    return with_seed_variance(within, between, df, r, method, confidence)


def with_seed_variance(
    within: Estimate, between: float, seed_df: float, r: int, method: str, confidence: float = CONFIDENCE
) -> Estimate:
    """``within`` (an interval over units) widened by a measured between-seed variance of its value, ``between``, with
    ``seed_df`` degrees of freedom, from ``r`` seeds: each side to the root sum of squares of its half-width and
    t(seed_df) x sqrt(between)."""
    seed_half = t_quantile(seed_df, confidence) * math.sqrt(between)
    q_units = t_quantile(max(within.units - 1, 1), confidence)
    ends, dfs = [], []
    for half in (within.value - within.low, within.high - within.value):
        se_units = half / q_units
        total = se_units**2 + between
        df = (
            total**2 / (se_units**4 / max(within.units - 1, 1) + between**2 / seed_df)
            if total > 0
            else within.units - 1
        )
        ends.append(math.sqrt(half**2 + seed_half**2))
        dfs.append(df)
    # The seed term rides along (seed_se, seed_df), so p-values and the units a decision needs follow the same rule.
    return Estimate(
        within.value,
        within.value - ends[0],
        within.value + ends[1],
        within.units,
        method,
        r,
        True,
        min(dfs),
        math.sqrt(between),
        seed_df,
    )


def with_declared_seed_spread(
    within: Estimate, seed_sd: float, replicates: int = 1, confidence: float = CONFIDENCE, df: float = math.inf
) -> Estimate:
    """Widen an interval over units by a *declared* between-seed standard deviation: the spread of this effect between
    training runs of the same recipe, measured in another study, for a study with too few replicates to measure it.

    The declared SD has ``df`` degrees of freedom of its own (a standard deviation of three seeds has 2: it is itself
    uncertain). Each side's half-width is the root sum of squares of the units' half-width and the seed term's own,
    t(df) x seed_sd / sqrt(R): with the true seed SD as uncertain as three seeds leave it, this covers 95.1-95.5%
    at every mix of the two terms, where Satterthwaite's pooled t under-covered (90-93%: its single quantile cannot
    follow the seed term's heavy t(2) tail). The degrees of freedom recorded (for p-values between the interval's own
    levels) are Satterthwaite's; at the interval's level the p-value and the interval agree either way.
    """
    if seed_sd <= 0 or not within.decisive:
        return within
    between = seed_sd**2 / max(replicates, 1)
    seed_half = t_quantile(df, confidence) * math.sqrt(between)
    df_units = max(within.units - 1, 1)
    q_units = t_quantile(df_units, confidence)
    ends, dfs = [], []
    for half in (within.value - within.low, within.high - within.value):
        se_units = half / q_units
        total = se_units**2 + between
        dfs.append(total**2 / (se_units**4 / df_units + (between**2 / df if math.isfinite(df) else 0.0)))
        ends.append(math.sqrt(half**2 + seed_half**2))
    method = f"{within.method} + declared seed SD {seed_sd:.3g}" + (f" ({df:g} df)" if math.isfinite(df) else "")
    return Estimate(
        within.value,
        within.value - ends[0],
        within.value + ends[1],
        within.units,
        method,
        within.replicates,
        True,
        min(dfs),
        math.sqrt(between),
        df,
    )


def seed_half(estimate: Estimate) -> float:
    """The part of an interval's half-width that a declared seed spread holds (t(seed df) x its SE): no number of units
    shrinks it, so an effect nearer the margin than this is never decided at one training run."""
    if estimate.seed_se <= 0:
        return 0.0
    return t_quantile(estimate.seed_df) * estimate.seed_se


def _p_beyond(estimate: Estimate, half: float, distance: float) -> float:
    """One-sided p-value of an effect ``distance`` clear of a bound, on the side of the interval whose half-width is
    ``half``: the level at which that side of the interval would just reach the bound. With a declared seed term that is
    the root-sum-of-squares rule of with_declared_seed_spread solved for its level (two t scales, the units' and the
    seed SD's own); otherwise the t (or normal) tail the interval was built with."""
    if half <= 0:
        return 1.0
    if estimate.seed_se > 0 and math.isfinite(estimate.seed_df):
        df_units = max(estimate.units - 1, 1)
        se_units = math.sqrt(max(half**2 - seed_half(estimate) ** 2, 0.0)) / t_quantile(df_units)

        def width(alpha: float) -> float:
            return math.hypot(t_isf(alpha, df_units) * se_units, t_isf(alpha, estimate.seed_df) * estimate.seed_se)

        reach = abs(distance)
        if reach == 0:
            return 0.5
        p = 1e-15 if width(1e-15) <= reach else float(brentq(lambda alpha: width(alpha) - reach, 1e-15, 0.5))
        return p if distance > 0 else 1 - p
    se = half / t_quantile(estimate.df)
    z = distance / se
    return t_sf(z, estimate.df)


def mean(values: Sequence[float]) -> Estimate:
    """Mean of one value per unit (say, TTR per prompt)."""
    return pooled([(values,)], MEAN)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of a - b over units measured under both conditions (the same prompts)."""
    return pooled([(a, b)], MEAN_DIFFERENCE)


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """sum(num) / sum(den), resampling units (clusters) whole: steps nested in prompts, say overrides / steps."""
    if np.sum(denominators) == 0:
        raise ValueError("ratio_of_sums: every denominator is zero")
    return pooled([(numerators, denominators)], RATIO_OF_SUMS)


def ratio_of_mean_differences(
    numerator: tuple[Sequence[float], Sequence[float]], denominator: tuple[Sequence[float], Sequence[float]]
) -> Estimate:
    """mean(a - b) / mean(c - d) over the same units: the share of one paired gain that another recovers."""
    return pooled([(*numerator, *denominator)], SHARE_OF_GAIN)


def mean_of_estimates(
    estimates: Sequence[Estimate], leave_one_out: Sequence[Sequence[float]] | None = None
) -> Estimate:
    """Several replicates' estimates of one quantity on the same units whose rows cannot be pooled (a participation
    ratio).

    Their mean, with each replicate's own unit noise kept: the replicates share their held-out
    blocks, so their unit errors are taken as fully correlated (the mean keeps the average
    standard error, the conservative end), and the spread between replicates adds as in
    :func:`between_replicates`. Three estimates 9.0 / 9.2 / 9.4, each [-6, +24], stay as wide.
    With ``leave_one_out`` (per replicate, the statistic with each shared block left out), the blocks are crossed with
    the replicates instead: a jackknife of the mean over replicates, plus the between-seed part.
    """
    if len(estimates) == 1:
        return estimates[0]
    values = [e.value for e in estimates]
    if leave_one_out is not None and all(e.decisive for e in estimates):
        # Crossed on the same blocks: the jackknife of the mean over replicates, plus the between-seed part.
        table = np.asarray(leave_one_out, dtype=float)  # (replicates, blocks)
        within = jackknife_interval(float(np.mean(values)), table.mean(0))
        return between_replicates(within, values)
    units = min(e.units for e in estimates)
    if not all(e.decisive for e in estimates):
        centre = float(np.mean(values))
        return Estimate(
            centre,
            centre,
            centre,
            units,
            f"mean of {len(values)} replicates, one without an interval",
            len(values),
            False,
        )
    within = Estimate(
        float(np.mean(values)),
        float(np.mean(values)) - float(np.mean([e.value - e.low for e in estimates])),
        float(np.mean(values)) + float(np.mean([e.high - e.value for e in estimates])),
        units,
        estimates[0].method,
    )
    return between_replicates(within, values)


def jackknife_over_clusters(clusters: np.ndarray, statistic: Callable[[np.ndarray], float]) -> Estimate:
    """A statistic of a set of rows (say, a participation ratio of hidden states), with a delete-one-cluster jackknife
    interval.

    ``clusters[i]`` is the cluster (held-out block) of row i; ``statistic(rows)`` gets row indices.
    Not a bootstrap, on purpose: a bootstrap resample repeats rows, and the participation ratio
    of a sample with repeated rows is strongly biased (on 16 blocks of 64 positions, the
    resampled Delta PR sat wholly beside the estimate, percentile and basic intervals alike).
    Leaving one block out repeats nothing. The interval is estimate +- t(n-1) x jackknife SE.
    """
    labels = np.unique(clusters)
    value = float(statistic(np.arange(len(clusters))))
    if len(labels) < 3:
        return no_interval(value, len(labels), "fewer than 3 blocks: no interval")
    leave_one_out = np.array([statistic(np.flatnonzero(clusters != label)) for label in labels])
    return jackknife_interval(value, leave_one_out)


def jackknife_interval(value: float, leave_one_out: np.ndarray) -> Estimate:
    """estimate +- t(n-1) x the jackknife standard error of the n leave-one-cluster-out values."""
    n = len(leave_one_out)
    se = math.sqrt((n - 1) / n * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
    if _negligible(se, value):
        return no_interval(value, n, "the jackknife has no spread: no interval")
    half = t_quantile(n - 1) * se
    return Estimate(value, value - half, value + half, n, f"delete-one-block jackknife over {n} blocks", df=n - 1)


def leave_one_out_estimates(
    values: dict[str, dict], replicates: Sequence[dict[str, dict]] | None = None, fewest: int = 4
) -> list[Estimate]:
    """Per key of ``values`` (``{"value": v, "leave_one_out": [...]}``: a statistic and its delete-one-cluster values),
    its jackknife estimate, pooled with the same key of ``replicates`` (more training runs on the same clusters) by
    :func:`mean_of_estimates`. Fewer than ``fewest`` clusters: no interval (claim 4's split-half statistic needs two
    clusters in each half left after one is deleted)."""
    estimates = []
    for key, value in values.items():
        runs = [value] + [r[key] for r in replicates or []]
        per_run = [
            jackknife_interval(r["value"], np.asarray(r["leave_one_out"]))
            if len(r["leave_one_out"]) >= fewest
            else no_interval(r["value"], len(r["leave_one_out"]), f"fewer than {fewest} blocks: no interval")
            for r in runs
        ]
        estimates.append(mean_of_estimates(per_run, [r["leave_one_out"] for r in runs] if len(runs) > 1 else None))
    return estimates


def simultaneous_minimum(estimates: Sequence[Estimate], confidence: float = CONFIDENCE) -> Estimate:
    """The smallest of K effects (say, the final layer's Delta PR minus each rival's), with an interval that covers it
    at any K: the lower end is the smallest of the K lower ends at the usual level, the upper end the smallest of the K
    upper ends at Bonferroni's level (1 - alpha / K).

    Why it covers: the true minimum is some effect k's; its own lower end lies below it with probability 1 - alpha/2 and
    the minimum of the lower ends lies lower still. Every upper end lies above its own effect (so above the minimum)
    with probability 1 - alpha/2 over all K together, by Bonferroni. "Holds" (every effect clear of the margin) is then
    an intersection-union test at the usual level, and "does not hold" (some effect clearly below) is corrected for the
    K it could be. A jackknife of the minimum itself does neither: with 30 rivals it covered 77% at a tie.
    """
    if not estimates:
        raise ValueError("no effects to take the minimum of")
    value = min(e.value for e in estimates)
    units = min(e.units for e in estimates)
    k = len(estimates)
    method = f"the smallest of {k} effects, each a {estimates[0].method}; upper end at Bonferroni's level over {k}"
    if not all(e.decisive and math.isfinite(e.value) for e in estimates):
        return Estimate(
            value, value, value, units, method + " (one without an interval)", estimates[0].replicates, False
        )
    wider = 1 - (1 - confidence) / k
    highs = [e.value + (e.high - e.value) / t_quantile(e.df, confidence) * t_quantile(e.df, wider) for e in estimates]
    return Estimate(
        value,
        min(e.low for e in estimates),
        min(highs),
        units,
        method,
        estimates[0].replicates,
        True,
        min(e.df for e in estimates),
        max(e.seed_se for e in estimates),
    )


# ------------------------------------------------------------------------------ several rules at once


def one_sided_p(estimate: Estimate, margin: float, direction: str) -> float:
    """P-value of "the effect is beyond the margin", read off the interval: the half facing the margin gives the
    standard error, on the t (or normal) scale the interval was built with. 1 without an interval.

    "apart" (beyond +-margin on either side) is the nearer side's one-sided test plus the far side's tail, the same
    test the interval rule makes (not doubled: only one side can be clear of the margin at once)."""
    if not estimate.decisive or not math.isfinite(estimate.value):
        return 1.0
    below, above = estimate.value - estimate.low, estimate.high - estimate.value  # the half-widths by side
    if direction == "apart":
        if estimate.value >= 0:
            return min(
                1.0,
                _p_beyond(estimate, below, estimate.value - margin)
                + _p_beyond(estimate, below, estimate.value + margin),
            )
        return min(
            1.0,
            _p_beyond(estimate, above, -margin - estimate.value) + _p_beyond(estimate, above, margin - estimate.value),
        )
    if direction == "above":
        return _p_beyond(estimate, below, estimate.value - margin)
    return _p_beyond(estimate, above, margin - estimate.value)


def holm(p_values: Sequence[float], alpha: float = (1 - CONFIDENCE) / 2) -> list[bool]:
    """Holm's step-down: which of m one-sided hypotheses are rejected at family-wise level ``alpha``.

    ``alpha`` defaults to 0.025: a 95% two-sided interval clear of the margin is a one-sided test at 2.5%.
    """
    order = np.argsort(p_values)
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def units_needed(estimate: Estimate, margin: float) -> int | None:
    """Roughly how many units would put the interval clear of ``margin``, at the observed effect and spread.

    With 80% power: n solves half(n) + z_0.8 * sd / sqrt(n) = |effect - margin|, where half(n) is the facing half of the
    interval at n units, built as the interval is: z * sd / sqrt(n), combined by root sum of squares with a declared
    seed term's own half (t(seed df) x its SE), which no number of units shrinks. sd, the spread of one unit, is read
    off the facing half after the seed term is taken out, on the interval's own t scale (a t interval at 16 units is
    1.1x wider than z: reading it as z would inflate n). None when the seed term alone spans the distance, when the
    estimate sits on the margin, and when the interval holds a measured between-replicate term (more replicates, not
    units, may decide it).
    """
    distance = abs(estimate.value - margin)
    if distance < 1e-12 or not estimate.decisive or estimate.replicates > 1:
        return None
    facing = estimate.value - estimate.low if estimate.value > margin else estimate.high - estimate.value
    fixed = seed_half(estimate)
    if fixed >= distance:
        return None  # the seed term alone spans the distance: no number of units decides it
    if estimate.seed_se > 0 and math.isfinite(estimate.seed_df):
        unit_sd = (
            math.sqrt(max(facing**2 - fixed**2, 0.0))
            / t_quantile(max(estimate.units - 1, 1))
            * math.sqrt(estimate.units)
        )
    else:
        unit_sd = math.sqrt(max((facing / t_quantile(estimate.df)) ** 2 - estimate.seed_se**2, 0.0) * estimate.units)
    if unit_sd <= 0:
        return None

    def short(n: float) -> float:  # how far the interval at n units, with 80% power, still falls short of the margin
        return math.hypot(Z * unit_sd / math.sqrt(n), fixed) + Z_POWER * unit_sd / math.sqrt(n) - distance

    if short(1e9) > 0:
        return None
    low, high = float(estimate.units), 1e9
    if short(low) <= 0:
        return estimate.units
    for _ in range(100):  # bisection on log n
        middle = math.sqrt(low * high)
        low, high = (low, middle) if short(middle) <= 0 else (middle, high)
    return math.ceil(high)
