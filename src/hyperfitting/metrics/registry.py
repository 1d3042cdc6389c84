"""Every metric the toolkit reports, with its direction, so tables and verdicts need no special cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from hyperfitting.metrics import diversity as div


@dataclass(frozen=True)
class Samples:
    """What the metrics read: continuations as token ids and texts, with per-step statistics if decoded."""

    token_ids: Sequence[Sequence[int]]
    texts: Sequence[str]
    entropy: Sequence[Sequence[float]] | None = None
    top1_prob: Sequence[Sequence[float]] | None = None


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool | None
    """None: neither direction is better in itself (compare with the human text)."""
    description: str
    compute: Callable[[Samples], float] | None = None
    """None for metrics that need a model or the training data; evaluation fills those in."""


def _path_mean(values: Sequence[Sequence[float]] | None) -> float:
    flat = [v for row in values or [] for v in row]
    return sum(flat) / len(flat) if flat else float("nan")


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> None:
    METRICS[metric.name] = metric


register(Metric("ttr", True, "type-token ratio of generated tokens, per continuation", lambda s: div.ttr(s.token_ids)))
register(
    Metric(
        "ttr_last_96",
        True,
        "type-token ratio of the last 96 generated tokens (the papers' repository), per continuation",
        lambda s: div.ttr_last(s.token_ids, 96),
    )
)
register(
    Metric("word_ttr", True, "type-token ratio of lower-cased words, per continuation", lambda s: div.word_ttr(s.texts))
)
for _n in (1, 2, 3, 4):
    register(
        Metric(
            f"distinct_{_n}",
            True,
            f"distinct {_n}-grams / {_n}-grams, pooled",
            lambda s, n=_n: div.distinct_n(s.token_ids, n),
        )
    )
for _n in (2, 3, 4):
    register(
        Metric(
            f"seq_rep_{_n}",
            False,
            f"1 - distinct/total {_n}-grams, per continuation",
            lambda s, n=_n: div.seq_rep_n(s.token_ids, n),
        )
    )
register(Metric("diversity", True, "product over n=2..4 of (1 - seq_rep_n)", lambda s: div.diversity(s.token_ids)))
register(
    Metric(
        "compression_ratio",
        False,
        "raw bytes / gzip bytes of all continuations",
        lambda s: div.compression_ratio(s.texts),
    )
)
register(
    Metric("self_bleu", False, "BLEU-4 of each continuation against the others", lambda s: div.self_bleu(s.token_ids))
)
register(
    Metric(
        "mean_entropy", None, "mean next-token entropy (nats) along the decoded path", lambda s: _path_mean(s.entropy)
    )
)
register(
    Metric("mean_top1_prob", None, "mean top-1 probability along the decoded path", lambda s: _path_mean(s.top1_prob))
)
register(
    Metric("base_perplexity", None, "perplexity of the continuations under the base model (compare with human text)")
)
register(Metric("train_overlap_mean_span", False, "mean longest span (tokens) shared with the training blocks"))
register(Metric("train_overlap_max_span", False, "longest span (tokens) shared with the training blocks"))
register(
    Metric("train_overlap_share_over_10", False, "share of continuations sharing more than 10 tokens with training")
)


def compute_metrics(samples: Samples) -> dict[str, float]:
    return {name: metric.compute(samples) for name, metric in METRICS.items() if metric.compute is not None}
