"""Claim 4's causal test on constructed pairs whose answer is known: which block carries the change."""

import copy

import pytest
import torch

from hyperfitting.analysis.block_swap import (
    BASE,
    FORWARD,
    REVERSE,
    TUNED,
    block_swap_analysis,
    block_swap_table,
    swapped_block,
)
from hyperfitting.analysis.common import decode
from hyperfitting.config import load_config
from hyperfitting.models.blocks import find_block_stack
from tests.conftest import make_tiny_model
from tests.test_side_effects import _Tokenizer

PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12], [20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43], [50, 51, 52, 53]]


def _config():
    return load_config(overrides=["generate.max_new_tokens=16", "generate.stop_at_eos=false"])


def _changed_in(block: int, architecture: str = "llama"):
    """(base, a copy whose block ``block`` alone is perturbed strongly)."""
    base = make_tiny_model(architecture)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in find_block_stack(tuned).blocks[block].parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.abs().mean() * 3)
    return base, tuned


def _paths(model):
    return [c.token_ids for c in decode(model, _Tokenizer(), PROMPTS, _config())]


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "gpt2"])
def test_a_swapped_block_is_put_back_and_decodes_as_the_donor_would(architecture):
    base, tuned = _changed_in(2, architecture)
    before = _paths(base)
    with swapped_block(base, tuned, 2):
        swapped = _paths(base)
    # The only block that differs came across: the base model now decodes exactly as the tuned one.
    assert swapped == _paths(tuned) != before
    assert _paths(base) == before  # and its own block is back (not a stale remembered decode)


def test_the_final_block_carries_the_whole_gain_when_it_alone_changed():
    base, tuned = _changed_in(2)
    results = block_swap_analysis(base, tuned, _Tokenizer(), PROMPTS, _config())
    assert results["swap_is_effective"] and results["final_block"] == 2
    assert results["per_prompt"][FORWARD] == results["per_prompt"][TUNED]
    assert results["per_prompt"][REVERSE] == results["per_prompt"][BASE]
    for measure in ("ttr", "override_rate"):
        if results["share_of_gain"][FORWARD][measure].get("value") is not None:
            assert results["share_of_gain"][FORWARD][measure]["value"] == pytest.approx(1.0)
            assert results["share_of_gain"][REVERSE][measure]["value"] == pytest.approx(0.0)
    # The base model's own greedy path never overrides its top-1; the changed model's does.
    assert results["rows"][BASE]["override_rate"]["value"] == 0.0 < results["rows"][TUNED]["override_rate"]["value"]
    assert "| base + hyperfitted final block |" in block_swap_table(results)


def test_a_change_in_an_early_block_is_not_carried_by_the_final_block():
    base, tuned = _changed_in(0)
    results = block_swap_analysis(base, tuned, _Tokenizer(), PROMPTS, _config())
    assert not results["swap_is_effective"]  # the final block is unchanged: the table says there is no test
    assert results["per_prompt"][FORWARD] == results["per_prompt"][BASE]
    assert results["per_prompt"][REVERSE] == results["per_prompt"][TUNED]
    assert "**No test**" in block_swap_table(results)
    shares = results["share_of_gain"][FORWARD]["override_rate"]
    assert shares["value"] == pytest.approx(0.0)


def test_swapping_blocks_of_different_depths_is_refused():
    from transformers import AutoModelForCausalLM

    from tests.conftest import tiny_config

    shallow = make_tiny_model("llama")
    config = tiny_config("llama")
    config.num_hidden_layers = 4
    deep = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="same architecture"):
        with swapped_block(shallow, deep, 2):
            pass
