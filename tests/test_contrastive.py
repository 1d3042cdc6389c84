"""Contrastive search against a direct computation of Su and Collier's scoring rule, without a cache or batching."""

import pytest
import torch

from hyperfitting.generation.contrastive import contrastive_batch, contrastive_scores
from hyperfitting.generation.decoding import decode_batch
from tests.conftest import make_tiny_model

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # of different lengths: the batch is left-padded


@torch.no_grad()
def direct_contrastive(model, prompt, steps, top_k, alpha):
    """The rule as written: full forward passes for the context and for every candidate, one prompt at a time."""
    sequence = list(prompt)
    for _ in range(steps):
        out = model(input_ids=torch.tensor([sequence]), output_hidden_states=True)
        probabilities = torch.softmax(out.logits[0, -1].float(), dim=-1)
        context = out.hidden_states[-1][0]
        top_probabilities, candidates = probabilities.topk(top_k)
        scores = []
        for probability, candidate in zip(top_probabilities, candidates):
            state = model(
                input_ids=torch.tensor([sequence + [int(candidate)]]), output_hidden_states=True
            ).hidden_states[-1][0, -1]
            penalty = max(float(torch.cosine_similarity(state, earlier, dim=0)) for earlier in context)
            scores.append((1 - alpha) * float(probability) - alpha * penalty)
        sequence.append(int(candidates[max(range(top_k), key=scores.__getitem__)]))
    return sequence[len(prompt) :]


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
def test_contrastive_search_chooses_what_the_rule_says(architecture):
    model = make_tiny_model(architecture)
    ours = contrastive_batch(model, PROMPTS, 10, pad_token_id=0, top_k=4, alpha=0.6)
    for prompt, continuation in zip(PROMPTS, ours):
        assert continuation.token_ids == direct_contrastive(model, prompt, 10, 4, 0.6)
        assert len(continuation.entropy) == len(continuation.chosen_prob) == 10


def test_without_the_penalty_contrastive_search_is_greedy():
    model = make_tiny_model("llama")
    greedy = decode_batch(model, PROMPTS, 12, pad_token_id=0)
    assert [c.token_ids for c in contrastive_batch(model, PROMPTS, 12, pad_token_id=0, top_k=3, alpha=0.0)] == [
        c.token_ids for c in greedy
    ]


def test_the_penalty_prefers_a_candidate_unlike_the_context():
    context = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, T=2, d=2)
    candidates = torch.tensor([[[1.0, 0.01], [1.0, -1.0]]])  # the first nearly repeats a context state
    mask = torch.ones((1, 2), dtype=torch.bool)
    probabilities = torch.tensor([[0.6, 0.4]])
    assert contrastive_scores(probabilities, candidates, context, mask, alpha=0.0).argmax() == 0  # confidence alone
    # the degeneration penalty
    assert contrastive_scores(probabilities, candidates, context, mask, alpha=0.6).argmax() == 1
    padded = torch.tensor([[False, True]])  # a padding state never counts as context
    assert float(contrastive_scores(probabilities, candidates, context, padded, 1.0)[0, 0]) == pytest.approx(
        -0.01 / (1 + 1e-4) ** 0.5, abs=1e-4
    )


def test_generate_runs_contrastive_search_when_the_config_asks_for_it():
    from hyperfitting.config import GenerateArgs
    from hyperfitting.generation.decoding import generate
    from tests.test_side_effects import _Tokenizer

    model = make_tiny_model("qwen2")
    args = GenerateArgs(max_new_tokens=6, contrastive_top_k=3, contrastive_alpha=0.5)
    through_generate = generate(model, _Tokenizer(), PROMPTS, args, show_progress=False)
    direct = contrastive_batch(model, PROMPTS, 6, pad_token_id=0, top_k=3, alpha=0.5)
    assert [c.token_ids for c in through_generate] == [c.token_ids for c in direct]
