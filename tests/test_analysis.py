"""The mechanism analyses pinned on constructed cases whose answer is known."""

import numpy as np
import pytest
import torch

from hyperfitting.analysis.entropy import entropy_matched_temperature, mean_entropy
from hyperfitting.analysis.teacher_forcing import top1_agreement
from hyperfitting.analysis.ranks import rank_statistics
from hyperfitting.analysis.static_bias import ranks_of, static_delta, token_statistics
from hyperfitting.generation.decoding import decode_batch
from hyperfitting.generation.processors import RankTransplant, StaticLogitBias
from tests.conftest import TINY_VOCAB, make_tiny_model


@pytest.fixture()
def base_logits():
    return torch.randn(200, 50, generator=torch.Generator().manual_seed(0)) * 3


def test_an_identical_model_gives_t_star_one(base_logits):
    assert entropy_matched_temperature(base_logits, mean_entropy(base_logits)) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("scale, expected", [(2.0, 0.5), (0.5, 2.0)])
def test_entropy_matching_recovers_a_pure_temperature(base_logits, scale, expected):
    # logits * 2 is the base model at T = 0.5; logits / 2 is the base model at T = 2.
    target = mean_entropy(base_logits * scale)
    t_star = entropy_matched_temperature(base_logits, target)
    assert t_star == pytest.approx(expected, rel=5e-3)
    assert mean_entropy(base_logits, t_star) == pytest.approx(target, abs=1e-3)


def test_ranks_of():
    assert ranks_of(torch.tensor([[0.1, 3.0, -1.0, 2.0]])).tolist() == [[3, 1, 4, 2]]


def test_identical_models_have_no_overrides_and_no_rank_change(base_logits):
    stats = rank_statistics(base_logits, base_logits.clone(), base_logits.argmax(-1))
    assert stats["override_rate"] == 0.0
    assert stats["promoted_tokens"] == 0
    assert stats["kendall_tau_top_k"]["mean"] == pytest.approx(1.0)
    tokens = token_statistics(base_logits, base_logits.clone())
    assert tokens["rank_gain"].abs().max() == 0 and tokens["offset"].abs().max() < 1e-5


def test_a_constant_logit_bias_is_detected_as_static(base_logits):
    bias = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 2
    tuned = base_logits + bias
    stats = rank_statistics(base_logits, tuned, tuned.argmax(-1))
    assert stats["override_rate"] > 0.1  # the bias does change choices...
    assert stats["context_dependence"]["static_share"] == pytest.approx(1.0, abs=1e-6)  # ...but the same way everywhere


def test_a_context_dependent_reranking_is_not_static(base_logits):
    tuned = base_logits + torch.randn(base_logits.shape, generator=torch.Generator().manual_seed(2)) * 2
    share = rank_statistics(base_logits, tuned, tuned.argmax(-1))["context_dependence"]["static_share"]
    assert share < 0.2


def test_rank_statistics_do_not_depend_on_the_chunk_they_rank_at_a_time(base_logits):
    tuned = base_logits + torch.randn(base_logits.shape, generator=torch.Generator().manual_seed(4)) * 2
    whole, chunked = (
        rank_statistics(base_logits, tuned, tuned.argmax(-1), chunk=chunk) for chunk in (len(base_logits), 7)
    )
    assert chunked["promoted_tokens"] == whole["promoted_tokens"] > 0
    dependence = chunked.pop("context_dependence"), whole.pop("context_dependence")
    assert chunked == whole
    assert dependence[0]["static_share"] == pytest.approx(dependence[1]["static_share"], rel=1e-9)
    assert dependence[0]["sign_consistency_per_token"] == dependence[1]["sign_consistency_per_token"]


def test_static_delta_keeps_only_the_top_gainers(base_logits):
    bias = torch.zeros(50)
    bias[[3, 7]] = 5.0
    stats = token_statistics(base_logits, base_logits + bias)
    delta, top = static_delta(stats, top_k=2)
    assert sorted(top.tolist()) == [3, 7]
    # log-prob offsets: the bias minus the change of the normaliser, the same for both tokens
    assert float(delta[3]) == pytest.approx(float(delta[7]), abs=1e-4) and float(delta[3]) > 0
    assert int((delta != 0).sum()) == 2


def test_static_logit_bias_processor():
    scores = torch.zeros(2, 4)
    out = StaticLogitBias(torch.tensor([0.0, 1.0, 0.0, -1.0]), alpha=0.5)(None, scores)
    assert out.tolist() == [[0.0, 0.5, 0.0, -0.5]] * 2


def test_rank_transplant_with_itself_changes_nothing_and_tracks_left_padding():
    model = make_tiny_model("llama")
    prompts = [[5, 9, 14, 3], [40, 41]]
    plain = decode_batch(model, prompts, 6, pad_token_id=0)
    transplanted = decode_batch(model, prompts, 6, pad_token_id=0, processors=[RankTransplant(model)])
    assert [o.token_ids for o in transplanted] == [o.token_ids for o in plain]
    for a, b in zip(plain, transplanted):
        assert a.entropy == pytest.approx(b.decoded_entropy, abs=1e-4)  # own profile on own ranking: same distribution


def test_reverting_against_the_model_itself_changes_nothing_and_against_another_reverts_its_overrides():
    from hyperfitting.generation.processors import RevertUnexplained

    model, other = make_tiny_model("llama"), make_tiny_model("llama", seed=1)
    prompts = [[5, 9, 14, 3], [40, 41]]
    plain = decode_batch(model, prompts, 6, pad_token_id=0)
    # no override of its own top-1: nothing to revert
    itself = RevertUnexplained(model, lambda logits: logits.argmax(-1))
    assert [o.token_ids for o in decode_batch(model, prompts, 6, pad_token_id=0, processors=[itself])] == [
        o.token_ids for o in plain
    ]
    assert itself.reverted == 0 and itself.steps == 12
    # Against another model whose null is its own top-1, every override is unexplained: the path becomes that model's.
    reverted = RevertUnexplained(other, lambda logits: logits.argmax(-1))
    forced = decode_batch(model, prompts, 6, pad_token_id=0, processors=[reverted])
    assert [o.token_ids for o in forced] == [o.token_ids for o in decode_batch(other, prompts, 6, pad_token_id=0)]


def test_rank_transplant_swaps_profile_not_ranking():
    scores = torch.tensor([[1.0, 3.0, 2.0]])

    class Fixed(RankTransplant):
        def logits(self, input_ids):
            return torch.tensor([[0.0, 0.0, 10.0]])  # a sharp profile, ranking token 2 first

    out = Fixed(None)(None, scores.clone())
    assert out.argmax().item() == 1  # the decoding model's ranking is kept
    assert torch.softmax(out, -1).max().item() == pytest.approx(
        torch.softmax(torch.tensor([0.0, 0.0, 10.0]), -1).max().item()
    )


def test_top1_agreement_is_measured_by_a_forward_pass_of_the_base_model():
    from hyperfitting.generation.decoding import decode_batch

    model = make_tiny_model("qwen2")
    greedy = decode_batch(model, [[3, 4, 5]], 8, pad_token_id=0)[0].token_ids
    assert top1_agreement(model, [[3, 4, 5]], [greedy]) == 1.0  # its own greedy path: every token is its top-1
    other = [(t + 1) % 97 for t in greedy]  # never the top-1
    assert top1_agreement(model, [[3, 4, 5]], [other]) == 0.0
    half = greedy[:4] + other[4:]
    assert top1_agreement(model, [[3, 4, 5]], [half]) == pytest.approx(
        sum(a == b for a, b in zip(half[:4], greedy[:4])) / 8
    )


def test_the_logit_offset_of_a_constant_bias_is_the_bias(base_logits):
    bias = torch.randn(50, generator=torch.Generator().manual_seed(3))
    stats = token_statistics(base_logits, base_logits + bias, offset_of="logits")
    torch.testing.assert_close(stats["offset"], bias, atol=1e-5, rtol=0)


def test_promoted_selection_keeps_tokens_that_enter_the_hyperfitted_top_k(base_logits):
    tuned = base_logits.clone()
    tuned[:, 7] = tuned.max(-1).values + 1.0  # token 7 becomes the hyperfitted top-1 everywhere
    tuned[:, 30] -= 50.0  # token 30 sinks (a large rank loss, never promoted)
    stats = token_statistics(base_logits, tuned, offset_of="logits", top_k=3)
    assert bool(stats["promoted"][7]) and not bool(stats["promoted"][30])
    delta, top = static_delta(stats, top_k=1, select="promoted")
    assert top.tolist() == [7] and float(delta[7]) > 0
    assert 30 not in static_delta(stats, top_k=5, select="promoted")[1].tolist()


def test_sampled_logits_are_the_sampled_rows_of_all_logits_without_holding_all():
    from hyperfitting.analysis.teacher_forcing import sample_positions, stacked_logits, teacher_forced_logits

    model = make_tiny_model("llama")
    sequences = [list(range(5, 5 + n)) for n in (12, 7, 20)]
    starts = [3, 2, 5]
    everything = torch.cat([logits for _, logits in teacher_forced_logits(model, sequences, starts)])
    expected = everything[torch.from_numpy(sample_positions(len(everything), 10))]
    torch.testing.assert_close(stacked_logits(model, sequences, starts, 10), expected)
    # a cap above the total keeps all
    torch.testing.assert_close(stacked_logits(model, sequences, starts, 1000), everything)


def test_a_path_scan_reads_what_the_whole_path_logits_would_give():
    # The scan keeps a few numbers per step and whole rows only at the drawn steps; each must equal what the
    # concatenated (steps x vocabulary) logits of the same paths give, continuations of uneven length included.
    from hyperfitting.analysis.common import Continuation
    from hyperfitting.analysis.teacher_forcing import path_scan, teacher_forced_logits

    model = make_tiny_model("llama")
    prompts = [list(range(5, 11)), list(range(20, 23)), list(range(40, 49))]
    paths = [
        Continuation(
            p, [int(t) for t in torch.randint(0, TINY_VOCAB, (n,), generator=torch.Generator().manual_seed(n))]
        )
        for p, n in zip(prompts, (7, 1, 12))
    ]
    sequences = [p + c.token_ids for p, c in zip(prompts, paths)]
    everything = torch.cat([logits for _, logits in teacher_forced_logits(model, sequences, [len(p) for p in prompts])])
    chosen = torch.tensor([t for c in paths for t in c.token_ids])
    offset = torch.randn(TINY_VOCAB, generator=torch.Generator().manual_seed(3))
    keep = np.array([0, 7, 8, 19])  # the first step of each path, and the last step of the last
    scan = path_scan(
        model, prompts, paths, {"top1": lambda z: z.argmax(-1), "shifted": lambda z: (z + offset).argmax(-1)}, keep
    )
    assert torch.equal(scan["top1"], everything.argmax(-1))
    assert torch.equal(scan["shifted"], (everything + offset).argmax(-1))
    assert torch.equal(scan["chosen_rank"], ranks_of(everything).gather(1, chosen[:, None]).squeeze(1).long())
    torch.testing.assert_close(scan["kept"], everything[torch.from_numpy(keep)])
    assert set(path_scan(model, prompts, paths)) == {"chosen_rank"}  # nothing else is kept unless asked for


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_teacher_forced_logits_equal_one_forward_per_sequence(architecture):
    # Rows of different lengths and prompt lengths in one batch: the head skips the prompts' positions where the model
    # allows.
    from hyperfitting.analysis.teacher_forcing import teacher_forced_logits

    model = make_tiny_model(architecture)
    sequences = [list(range(5, 25)), list(range(30, 42)), list(range(50, 77))]
    starts = [6, 3, 11]
    for i, logits in teacher_forced_logits(model, sequences, starts, batch_size=3):
        direct = model(input_ids=torch.tensor([sequences[i]])).logits[0, starts[i] - 1 : len(sequences[i]) - 1]
        assert logits.shape == (len(sequences[i]) - starts[i], TINY_VOCAB)
        torch.testing.assert_close(logits, direct, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_mauve_features_are_the_mean_final_state_over_each_continuation(architecture):
    # Computed without the head's logits (logits_to_keep where the model takes it) and remembered per set of paths.
    from hyperfitting.report.quality import continuation_features

    model = make_tiny_model(architecture)
    prompts, paths = [list(range(5, 11)), list(range(20, 23))], [list(range(60, 69)), list(range(70, 74))]
    memo: dict = {}
    features = continuation_features(model, prompts, paths, batch_size=2, memo=memo)
    for row, (prompt, path) in enumerate(zip(prompts, paths)):
        states = model(input_ids=torch.tensor([prompt + path]), output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(features[row], states[len(prompt) :].mean(0).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert continuation_features(None, prompts, paths, memo=memo) is features  # a set seen before is not recomputed
