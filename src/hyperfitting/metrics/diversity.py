"""Diversity and repetition metrics as small pure functions over token ids (or texts).

Definitions (each pinned by a hand-computed test):

- ``ttr``: distinct tokens / tokens, per continuation, averaged over continuations.
- ``ttr_last``: ``ttr`` over the last n tokens of each continuation (Carlsson et al.'s repository measures the
  last 96 tokens of continuations generated to 256; on shorter continuations it is ``ttr``).
- ``word_ttr``: the same over lower-cased words.
- ``distinct_n``: distinct n-grams / n-grams, pooled over all continuations (Li et al., 2016).
- ``seq_rep_n``: 1 - distinct n-grams / n-grams, per continuation, averaged (Welleck et al., 2020).
- ``diversity``: product over n = 2..4 of (1 - seq_rep_n) (Su et al., 2022).
- ``compression_ratio``: bytes of the concatenated texts / bytes after gzip; repetitive text compresses more.
- ``self_bleu``: BLEU-4 of each continuation against all the others as references, averaged.
"""

from __future__ import annotations

import gzip
import math
import re
from collections import Counter
from typing import Sequence

Tokens = Sequence[int]


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def ttr(sequences: Sequence[Tokens]) -> float:
    """Type-token ratio: distinct tokens over tokens, per sequence, averaged over sequences."""
    return _mean([len(set(s)) / len(s) for s in sequences if len(s)])


def ttr_last(sequences: Sequence[Tokens], n: int) -> float:
    """Type-token ratio of the last ``n`` tokens of each sequence, averaged over sequences."""
    return ttr([list(s)[-n:] for s in sequences])


_WORD = re.compile(r"\w+(?:'\w+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_ttr(texts: Sequence[str]) -> float:
    return ttr([words(t) for t in texts])


def distinct_n(sequences: Sequence[Tokens], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled across the sequences."""
    grams = [g for s in sequences for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def seq_rep_n(sequences: Sequence[Tokens], n: int) -> float:
    """Share of repeated n-grams within each sequence (1 - distinct/total), averaged over sequences."""
    values = []
    for s in sequences:
        grams = ngrams(s, n)
        if grams:
            values.append(1.0 - len(set(grams)) / len(grams))
    return _mean(values)


def diversity(sequences: Sequence[Tokens]) -> float:
    return math.prod(1.0 - seq_rep_n(sequences, n) for n in (2, 3, 4))


def compression_ratio(texts: Sequence[str]) -> float:
    raw = "\n".join(texts).encode("utf-8")
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0)) if raw else float("nan")


def self_bleu(sequences: Sequence[Tokens], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Mean BLEU-``max_n`` of each sequence against all the others (lower: more diverse across prompts).

    Clipped counts use, for every n-gram, the largest count in any *other* sequence; keeping
    the two largest counts per n-gram makes that leave-one-out maximum O(1), so 300
    continuations take well under a second. Zero precisions are smoothed by adding
    ``epsilon`` to the numerator (NLTK's method1); the brevity penalty uses the closest
    other length (shorter on ties), as in corpus BLEU.
    """
    if len(sequences) < 2:
        return float("nan")
    counts = [[Counter(ngrams(s, n)) for n in range(1, max_n + 1)] for s in sequences]
    # For each n-gram: (largest count, index of that sequence, second largest count).
    best: list[dict[tuple, tuple[int, int, int]]] = [dict() for _ in range(max_n)]
    for index, per_n in enumerate(counts):
        for n_index, counter in enumerate(per_n):
            table = best[n_index]
            for gram, c in counter.items():
                top, top_index, second = table.get(gram, (0, -1, 0))
                if c > top:
                    table[gram] = (c, index, top)
                elif c > second:
                    table[gram] = (top, top_index, c)
    lengths = [len(s) for s in sequences]
    scores = []
    for index, per_n in enumerate(counts):
        hyp_len = lengths[index]
        if hyp_len == 0:
            continue
        log_precision = 0.0
        for n_index, counter in enumerate(per_n):
            total = sum(counter.values())
            if total == 0:
                log_precision = float("-inf")
                break
            clipped = 0
            for gram, c in counter.items():
                top, top_index, second = best[n_index][gram]
                clipped += min(c, second if top_index == index else top)
            log_precision += math.log((clipped or epsilon) / total) / max_n
        others = lengths[:index] + lengths[index + 1 :]
        ref_len = min(others, key=lambda r: (abs(r - hyp_len), r))
        brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
        scores.append(0.0 if log_precision == float("-inf") else brevity * math.exp(log_precision))
    return _mean(scores)
