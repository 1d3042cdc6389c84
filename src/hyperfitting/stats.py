"""Uncertainty for every number that enters a verdict: 95% bootstrap intervals over evaluation units.

The unit of resampling is what was drawn at random: an evaluation prompt (or a held-out block).
Decoding steps and token positions are nested in prompts, so statistics over steps resample
whole prompts (a cluster bootstrap: per-prompt totals resampled as pairs). Independent
hyperfitted replicates add a level above that (resample replicates, then prompts inside each).

One-level intervals come from ``scipy.stats.bootstrap`` (BCa, falling back to percentile where
BCa is undefined). scipy has no two-level bootstrap; ``pooled`` resamples replicates by hand.
Statistics that repeated rows would bias (participation ratios) get a jackknife over clusters.
Every resampling is seeded, so the same inputs give the same interval on every machine.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 4999
SEED = 12345
Z = 1.959963984540054  # two-sided 95% normal quantile
Z_POWER = 0.8416212335729143  # one-sided 80% power


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% interval and how it was obtained.

    ``units`` is the number of independent units resampled (prompts, blocks or replicates);
    ``unit_sd`` the spread of one unit's contribution implied by the interval (interval width
    x sqrt(units)), which is what a sample-size estimate needs.
    """

    value: float
    low: float
    high: float
    units: int
    method: str

    @property
    def unit_sd(self) -> float:
        return (self.high - self.low) / (2 * Z) * math.sqrt(max(self.units, 1))

    def to_dict(self) -> dict:
        return {**asdict(self), "unit_sd": self.unit_sd}

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _exact(value: float, units: int, why: str) -> Estimate:
    return Estimate(float(value), float(value), float(value), units, why)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable) -> Estimate:
    """One level: resample units (rows), the columns of a row together."""
    from scipy.stats import bootstrap

    n = len(samples[0])
    value = float(statistic(*samples))
    if n < 2:
        return _exact(value, n, "a single unit: no interval")
    if all(np.ptp(s) == 0 for s in samples):
        return _exact(value, n, "every unit identical: the interval is the point")
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's degenerate-data warning: we fall back instead
            result = bootstrap(samples, statistic, paired=True, vectorized=False, n_resamples=RESAMPLES,
                               confidence_level=CONFIDENCE, method=method, rng=np.random.default_rng(SEED))
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return Estimate(value, float(low), float(high), n, f"{method} bootstrap over {n} units")
    return _exact(value, n, "bootstrap undefined")


# The statistics of the verdicts, each over paired columns (one row per prompt). Pooled over
# replicates, rows are concatenated: with the same prompts in every replicate, a mean over all
# rows is the mean of the replicates' means.


def _mean_difference(x, y):
    return np.mean(x) - np.mean(y)


def _ratio(x, y):
    total = np.sum(y)
    return np.sum(x) / total if total else np.nan


def _share_of_gain(x, y, z, w):
    gain = np.mean(z) - np.mean(w)
    return (np.mean(x) - np.mean(y)) / gain if gain else np.nan


Replicates = Sequence[tuple[Sequence[float], ...]]


def pooled(replicates: Replicates, statistic: Callable) -> Estimate:
    """``statistic`` of paired columns, with a bootstrap interval over prompts, and over replicates when there are several.

    ``replicates`` holds, per hyperfitted replicate, a tuple of equally long columns (one row
    per prompt). One replicate: scipy's bootstrap over prompts. Several: a two-level bootstrap
    (resample replicates, then prompts inside each), which scipy does not offer.
    """
    groups = [tuple(np.asarray(column, dtype=float) for column in columns) for columns in replicates]
    for columns in groups:
        if len({c.shape for c in columns}) != 1:
            raise ValueError(f"paired columns differ in length: {[c.shape for c in columns]}")
    if len(groups) == 1:
        return _bootstrap(groups[0], statistic)
    return _hierarchical(groups, statistic)


def _hierarchical(groups: list[tuple[np.ndarray, ...]], statistic: Callable, resamples: int = RESAMPLES) -> Estimate:
    width = len(groups[0])
    value = float(statistic(*(np.concatenate([g[i] for g in groups]) for i in range(width))))
    rng = np.random.default_rng(SEED)
    draws = np.empty(resamples)
    for r in range(resamples):
        rows = [_resample_rows(groups[chosen], rng) for chosen in rng.integers(len(groups), size=len(groups))]
        draws[r] = statistic(*(np.concatenate([row[i] for row in rows]) for i in range(width)))
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return _exact(value, len(groups), "bootstrap undefined")
    low, high = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(value, float(low), float(high), len(groups), f"hierarchical bootstrap over {len(groups)} replicates x prompts")


def _resample_rows(group: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The same rows of every column: the columns of a replicate are paired."""
    index = rng.integers(len(group[0]), size=len(group[0]))
    return tuple(column[index] for column in group)


def mean(values: Sequence[float]) -> Estimate:
    """Mean of one value per unit (say, TTR per prompt)."""
    return pooled([(values,)], np.mean)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of a - b over units measured under both conditions (the same prompts)."""
    return pooled([(a, b)], _mean_difference)


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """sum(num) / sum(den), resampling units (clusters) whole: steps nested in prompts, say overrides / steps."""
    if np.sum(denominators) == 0:
        raise ValueError("ratio_of_sums: every denominator is zero")
    return pooled([(numerators, denominators)], _ratio)


def ratio_of_mean_differences(numerator: tuple[Sequence[float], Sequence[float]],
                              denominator: tuple[Sequence[float], Sequence[float]]) -> Estimate:
    """mean(a - b) / mean(c - d) over the same units: the share of one paired gain that another recovers."""
    return pooled([(*numerator, *denominator)], _share_of_gain)


# The same statistics for several replicates: pass pooled() one of these and one tuple of columns per replicate.
MEAN, MEAN_DIFFERENCE, RATIO_OF_SUMS, SHARE_OF_GAIN = np.mean, _mean_difference, _ratio, _share_of_gain


def mean_of_estimates(estimates: Sequence[Estimate]) -> Estimate:
    """Several replicates' estimates of one quantity whose rows cannot be pooled (a participation ratio):
    their mean, with a t interval over replicates (each replicate's own noise is inside the spread between them)."""
    from scipy.stats import t

    if len(estimates) == 1:
        return estimates[0]
    values = np.array([e.value for e in estimates])
    n = len(values)
    half = float(t.ppf((1 + CONFIDENCE) / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Estimate(float(values.mean()), float(values.mean()) - half, float(values.mean()) + half, n, f"t interval over {n} replicates")


def jackknife_over_clusters(clusters: np.ndarray, statistic: Callable[[np.ndarray], float]) -> Estimate:
    """A statistic of a set of rows (say, a participation ratio of hidden states), with a delete-one-cluster jackknife interval.

    ``clusters[i]`` is the cluster (held-out block) of row i; ``statistic(rows)`` gets row indices.
    Not a bootstrap, on purpose: a bootstrap resample repeats rows, and the participation ratio
    of a sample with repeated rows is strongly biased (on 16 blocks of 64 positions, the
    resampled Delta PR sat wholly beside the estimate, percentile and basic intervals alike).
    Leaving one block out repeats nothing. The interval is estimate +- t(n-1) x jackknife SE.
    """
    from scipy.stats import t

    labels = np.unique(clusters)
    value = float(statistic(np.arange(len(clusters))))
    if len(labels) < 3:
        return _exact(value, len(labels), "fewer than 3 blocks: no interval")
    leave_one_out = np.array([statistic(np.flatnonzero(clusters != label)) for label in labels])
    n = len(labels)
    se = math.sqrt((n - 1) / n * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
    half = float(t.ppf((1 + CONFIDENCE) / 2, n - 1)) * se
    return Estimate(value, value - half, value + half, n, f"delete-one-block jackknife over {n} blocks")


def units_needed(estimate: Estimate, margin: float) -> int | None:
    """Roughly how many units would put the interval clear of ``margin``, at the observed effect and spread.

    The usual normal approximation with 80% power: n = ((z_0.975 + z_0.8) * sd / |effect - margin|)^2.
    None when the estimate sits on the margin (no sample size decides it) or has no spread.
    """
    distance = abs(estimate.value - margin)
    sd = estimate.unit_sd
    if distance < 1e-12 or sd <= 0:
        return None
    return max(estimate.units, math.ceil(((Z + Z_POWER) * sd / distance) ** 2))
