"""Decoding baselines: each method decodes what its definition says, at the study's budget, and the table reports it."""

import math

import pytest
import torch

from hyperfitting.config import BASELINE_METHODS, RunConfig, build_dataclass
from hyperfitting.errors import ConfigError
from hyperfitting.generation.baselines import decode_group, decode_method, decoding_groups
from tests.conftest import TINY_VOCAB, make_tiny_model


class Tokenizer:
    pad_token_id = 0
    eos_token_id = TINY_VOCAB - 1

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _config(**baselines) -> RunConfig:
    return build_dataclass(
        RunConfig, {"generate": {"max_new_tokens": 10, "batch_size": 2}, "baselines": {"seeds": 2, **baselines}}
    )


PROMPTS = [[5, 9, 3, 7], [11, 4], [20, 21, 22]]


@pytest.mark.parametrize("name", BASELINE_METHODS)
def test_every_method_decodes_the_full_budget_for_every_prompt(name):
    model = make_tiny_model("llama")
    decoded = decode_method(name, model, Tokenizer(), PROMPTS, _config(), show_progress=False)
    assert len(decoded.continuations) == (2 if decoded.method.sampled else 1)
    for seed in decoded.continuations:
        assert [c.prompt_ids for c in seed] == PROMPTS
        assert all(len(c.token_ids) == 10 for c in seed)
    assert decoded.tokens_per_second > 0


def test_sampled_seeds_differ_and_do_not_depend_on_the_batch_width():
    model = make_tiny_model("llama")
    narrow = decode_method("min-p", model, Tokenizer(), PROMPTS, _config(), show_progress=False)
    wide = decode_method(
        "min-p",
        model,
        Tokenizer(),
        PROMPTS,
        build_dataclass(RunConfig, {"generate": {"max_new_tokens": 10, "batch_size": 16}, "baselines": {"seeds": 2}}),
        show_progress=False,
    )
    tokens = lambda d: [[c.token_ids for c in seed] for seed in d.continuations]  # noqa: E731
    assert tokens(narrow) == tokens(wide)
    assert tokens(narrow)[0] != tokens(narrow)[1]  # two seeds, two samples


def test_methods_of_one_kind_decode_together_to_the_text_each_gives_alone():
    """One wide batch per group (every sampled method; the greedy methods with a processor): the same rows, seeds and
    processors as decoding each method alone, so the same tokens, and each method's share of the batch's time."""
    assert decoding_groups(BASELINE_METHODS) == [
        ["greedy"],
        ["top-p", "min-p", "typical", "eta", "epsilon"],
        ["repetition-penalty", "no-repeat-ngram"],
        ["beam"],
        ["contrastive"],
    ]
    assert decoding_groups(["min-p", "beam", "top-p"]) == [["min-p", "top-p"], ["beam"]]
    model = make_tiny_model("llama")
    config = _config(repetition_penalty=1.5, no_repeat_ngram=2)
    tokens = lambda d: [[c.token_ids for c in seed] for seed in d.continuations]  # noqa: E731
    for group in (["top-p", "min-p", "typical", "eta", "epsilon"], ["repetition-penalty", "no-repeat-ngram"]):
        together = decode_group(group, model, Tokenizer(), PROMPTS, config, show_progress=False)
        assert list(together) == group
        for name in group:
            alone = decode_method(name, model, Tokenizer(), PROMPTS, config, show_progress=False)
            assert tokens(together[name]) == tokens(alone), name
            assert together[name].together == tuple(group) and together[name].seconds > 0
        shares = [together[name].seconds for name in group]
        assert max(shares) == pytest.approx(min(shares))  # every member decoded the same number of tokens
    with pytest.raises(ValueError, match="do not decode together"):
        decode_group(["min-p", "repetition-penalty"], model, Tokenizer(), PROMPTS, config, show_progress=False)


def _reference_greedy(model, prompt, steps, adjust):
    """Greedy decoding by full forward passes (no cache, no batching), with ``adjust(sequence, logits)`` before the
    argmax."""
    sequence = list(prompt)
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([sequence])).logits[0, -1].float()
        sequence.append(int(adjust(sequence, logits).argmax()))
    return sequence[len(prompt) :]


def test_repetition_penalty_matches_its_definition():
    """CTRL's rule: a token already in the text has its logit divided by the penalty if positive, multiplied if
    negative."""
    model = make_tiny_model("llama")

    def penalise(sequence, logits):
        logits = logits.clone()
        seen = torch.tensor(sorted(set(sequence)))
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / 1.5, logits[seen] * 1.5)
        return logits

    decoded = decode_method(
        "repetition-penalty", model, Tokenizer(), PROMPTS[:1], _config(repetition_penalty=1.5), show_progress=False
    )
    with torch.no_grad():
        assert decoded.continuations[0][0].token_ids == _reference_greedy(model, PROMPTS[0], 10, penalise)


def test_no_repeat_ngram_never_repeats_and_matches_its_definition():
    model = make_tiny_model("llama")

    def forbid(sequence, logits):
        logits = logits.clone()
        for i in range(len(sequence) - 1):
            if sequence[i] == sequence[-1]:  # bigrams: the token after an earlier copy of the last token is banned
                logits[sequence[i + 1]] = -math.inf
        return logits

    decoded = decode_method(
        "no-repeat-ngram", model, Tokenizer(), PROMPTS, _config(no_repeat_ngram=2), show_progress=False
    )
    with torch.no_grad():
        for prompt, continuation in zip(PROMPTS, decoded.continuations[0]):
            assert continuation.token_ids == _reference_greedy(model, prompt, 10, forbid)
            text = prompt + continuation.token_ids
            bigrams = list(zip(text, text[1:]))
            assert len(bigrams) == len(set(bigrams))


def test_beam_search_keeps_the_budget_and_is_deterministic():
    model = make_tiny_model("llama")
    first = decode_method("beam", model, Tokenizer(), PROMPTS, _config(beams=3), show_progress=False)
    again = decode_method("beam", model, Tokenizer(), PROMPTS, _config(beams=3), show_progress=False)
    assert [c.token_ids for c in first.continuations[0]] == [c.token_ids for c in again.continuations[0]]


def test_unknown_methods_and_corpora_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="'nucleus' is not a decoding method here. Choose from greedy, top-p"):
        build_dataclass(RunConfig, {"baselines": {"methods": ["nucleus"]}})
    with pytest.raises(ConfigError, match="baselines.corpora"):
        build_dataclass(RunConfig, {"baselines": {"corpora": ["news"]}})


def test_the_table_gives_every_method_and_the_study_rows_with_intervals():
    from hyperfitting.report.baselines import baselines_table

    row = lambda ttr: {
        "metrics": {"ttr": ttr, "distinct_3": 0.5, "seq_rep_3": 0.2, "train_overlap_share_over_10": 0.0},  # noqa: E731
        "per_prompt_ttr": [ttr - 0.1, ttr, ttr + 0.1, ttr],
    }
    baselines = {
        "greedy": {
            "settings": "argmax",
            "seeds": 1,
            "tokens_per_second": float("nan"),
            "corpora": {"fiction": row(0.3)},
        },
        "min-p": {"settings": "min-p 0.1", "seeds": 3, "tokens_per_second": 120.0, "corpora": {"fiction": row(0.6)}},
    }
    study = {
        "base": {
            "fiction:human": {"ttr": 0.7, "distinct_3": 0.9, "seq_rep_3": 0.01, "train_overlap_share_over_10": 0.0}
        },
        "hyperfitted": {
            "fiction": {"ttr": 0.5, "distinct_3": 0.8, "seq_rep_3": 0.05, "train_overlap_share_over_10": 0.25}
        },
    }
    plane = {
        name: {"ttr": [0.4, 0.5, 0.6, 0.5], "log_perplexity": [1.0, 2.0, 1.5, 1.2]}
        for name in ("greedy", "min-p", "hyperfitted", "human")
    }
    table = baselines_table("fiction", baselines, study, plane, {"greedy": 0.4, "min-p": 0.8})
    lines = table.strip().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "greedy",
        "min-p",
        "**hyperfitted (greedy)**",
        "**human text**",
    ]
    assert "0.600 [" in lines[3] and "| 120 |" in lines[3] and "| 0.250 |" in lines[4]
    assert "nan" not in table and "*" not in table.replace("**", "")
    # Methods decoded in one batch share its tokens/s, and the table says so.
    baselines["min-p"]["decoded_with"] = ["top-p", "min-p"]
    baselines["top-p"] = {**baselines["min-p"], "settings": "top-p 0.9"}
    lines = baselines_table("fiction", baselines, study, plane, {}).strip().splitlines()
    assert "| 120 * |" in lines[3] and "| 120 * |" in lines[4]
    assert lines[-1].startswith("\\* decoded in one batch") and "top-p, min-p." in lines[-1]
