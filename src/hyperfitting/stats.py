"""Uncertainty for every number that enters a verdict: 95% bootstrap intervals over evaluation units.

The unit of resampling is what was drawn at random: an evaluation prompt (or a held-out block).
Decoding steps and token positions are nested in prompts, so statistics over steps resample
whole prompts (a cluster bootstrap: per-prompt totals resampled as pairs). Independent
hyperfitted replicates add a level above that (resample replicates, then prompts inside each).

One-level intervals come from ``scipy.stats.bootstrap`` (BCa, falling back to percentile where
BCa is undefined). scipy has no two-level bootstrap; ``hierarchical_mean`` resamples by hand.
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


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, paired: bool) -> Estimate:
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
            result = bootstrap(samples, statistic, paired=paired, vectorized=False, n_resamples=RESAMPLES,
                               confidence_level=CONFIDENCE, method=method, rng=np.random.default_rng(SEED))
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return Estimate(value, float(low), float(high), n, f"{method} bootstrap over {n} units")
    return _exact(value, n, "bootstrap undefined")


def mean(values: Sequence[float]) -> Estimate:
    """Mean of one value per unit (say, TTR per prompt)."""
    x = np.asarray(values, dtype=float)
    return _bootstrap((x,), np.mean, paired=False)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of a - b over units measured under both conditions (the same prompts)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    return _bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), paired=True)


def ratio_of_sums(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """sum(num) / sum(den), resampling units (clusters) whole: steps nested in prompts, say overrides / steps."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if den.sum() == 0:
        raise ValueError("ratio_of_sums: every denominator is zero")

    def ratio(x, y):
        total = np.sum(y)
        return np.sum(x) / total if total else np.nan

    return _bootstrap((num, den), ratio, paired=True)


def ratio_of_mean_differences(numerator: tuple[Sequence[float], Sequence[float]],
                              denominator: tuple[Sequence[float], Sequence[float]]) -> Estimate:
    """mean(a - b) / mean(c - d) over the same units: the share of one paired gain that another recovers."""
    a, b = (np.asarray(v, dtype=float) for v in numerator)
    c, d = (np.asarray(v, dtype=float) for v in denominator)

    def share(x, y, z, w):
        gain = np.mean(z) - np.mean(w)
        return (np.mean(x) - np.mean(y)) / gain if gain else np.nan

    return _bootstrap((a, b, c, d), share, paired=True)


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


def hierarchical_mean(per_replicate: Sequence[Sequence[float]], resamples: int = RESAMPLES) -> Estimate:
    """Mean over replicates of each replicate's mean over prompts, resampling replicates and then prompts inside each.

    With one replicate this is the ordinary one-level bootstrap over prompts.
    """
    groups = [np.asarray(g, dtype=float) for g in per_replicate]
    if len(groups) == 1:
        return mean(groups[0])
    value = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(SEED)
    draws = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(len(groups), size=len(groups))
        draws[r] = np.mean([rng.choice(groups[i], size=len(groups[i])).mean() for i in chosen])
    low, high = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(value, float(low), float(high), len(groups), f"hierarchical bootstrap over {len(groups)} replicates x prompts")


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
