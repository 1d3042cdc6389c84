import gzip
import math

import pytest

from hyperfitting.metrics import diversity as div
from hyperfitting.metrics.overlap import SuffixAutomaton, training_overlap
from hyperfitting.metrics.registry import METRICS, Samples, compute_metrics


def test_ttr_per_continuation():
    assert div.ttr([[1, 2, 2, 3], [5, 5]]) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_word_ttr_lowercases():
    assert div.word_ttr(["The cat and the hat"]) == pytest.approx(4 / 5)


def test_distinct_n_is_pooled():
    assert div.distinct_n([[1, 2, 1, 2], [1, 2]], 2) == pytest.approx(2 / 4)
    assert div.distinct_n([[1, 2, 3]], 1) == 1.0


def test_seq_rep_n_is_per_continuation():
    assert div.seq_rep_n([[1, 2, 1, 2], [1, 2, 3]], 2) == pytest.approx((1 - 2 / 3 + 0) / 2)


def test_diversity_on_a_loop():
    # bigrams: 2 of 5 distinct, trigrams 2 of 4, 4-grams 2 of 3
    assert div.diversity([[1, 2, 1, 2, 1, 2]]) == pytest.approx((2 / 5) * (2 / 4) * (2 / 3))


def test_compression_ratio_rises_with_repetition():
    loop, varied = ["the cat sat " * 30], [" ".join(f"word{i}" for i in range(90))]
    assert div.compression_ratio(loop) > 3 * div.compression_ratio(varied)
    raw = "abc abc".encode()
    assert div.compression_ratio(["abc abc"]) == pytest.approx(len(raw) / len(gzip.compress(raw, 9, mtime=0)))


def test_self_bleu_hand_computed():
    # precisions 3/4, 2/3, 1/2 and a smoothed 0.1/1 for 4-grams; equal lengths, so no brevity penalty
    expected = (0.75 * (2 / 3) * 0.5 * 0.1) ** 0.25
    assert div.self_bleu([[1, 2, 3, 4], [1, 2, 3, 5]]) == pytest.approx(expected)
    assert div.self_bleu([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]) == pytest.approx(1.0)


def test_self_bleu_leaves_the_hypothesis_out_of_its_references():
    # A's clipping uses B's counts (2 ones, 1 pair), never its own; B and C have no 3-grams, so score 0.
    expected_a = (0.5 * (1 / 3) * 0.05 * 0.1) ** 0.25
    assert div.self_bleu([[1, 1, 1, 1], [1, 1], [2, 2]]) == pytest.approx(expected_a / 3)


def test_suffix_automaton_longest_match_stays_inside_one_sequence():
    index = SuffixAutomaton([[1, 2, 3, 4, 5], [6, 7, 8]])
    assert index.longest_match([9, 2, 3, 4, 9]) == 3
    assert index.longest_match([5, 6, 7]) == 2  # 5 then 6 would cross two sequences
    assert index.longest_match([]) == 0
    overlap = training_overlap([[1, 2, 3, 4, 5], [9]], index, threshold=4)
    assert overlap["train_overlap_mean_span"] == pytest.approx(2.5)
    assert overlap["train_overlap_share_over_4"] == pytest.approx(0.5)


def test_suffix_automaton_against_brute_force():
    import random

    rng = random.Random(0)
    training = [[rng.randrange(4) for _ in range(40)] for _ in range(3)]
    index = SuffixAutomaton(training)
    for _ in range(20):
        query = [rng.randrange(4) for _ in range(15)]
        spans = {tuple(s[i:j]) for s in training for i in range(len(s)) for j in range(i + 1, len(s) + 1)}
        brute = max(
            (j - i for i in range(len(query)) for j in range(i + 1, len(query) + 1) if tuple(query[i:j]) in spans),
            default=0,
        )
        assert index.longest_match(query) == brute


def test_every_metric_declares_a_direction_and_computes():
    assert all(m.higher_is_better in (True, False, None) and m.description for m in METRICS.values())
    samples = Samples(
        token_ids=[[1, 2, 3, 1], [4, 5, 6, 7]],
        texts=["a b c a", "d e f g"],
        entropy=[[1.0, 2.0], [3.0]],
        top1_prob=[[0.5], [1.0]],
    )
    values = compute_metrics(samples)
    assert values["mean_entropy"] == pytest.approx(2.0)
    assert values["mean_top1_prob"] == pytest.approx(0.75)
    assert values["ttr"] == pytest.approx((3 / 4 + 1) / 2)
    assert all(not math.isnan(v) for k, v in values.items())


def test_ttr_over_the_last_tokens_reads_only_their_tail():
    from hyperfitting.metrics.diversity import ttr_last

    # 200 distinct tokens, then a 96-token loop of two: the whole is diverse, its last 96 tokens are not.
    sequence = list(range(200)) + [1, 2] * 48
    assert ttr_last([sequence], 96) == 2 / 96
    assert ttr_last([[5, 6, 5]], 96) == 2 / 3  # shorter than 96: the whole continuation
