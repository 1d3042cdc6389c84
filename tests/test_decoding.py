import pytest
import torch

from hyperfitting.config import GenerateArgs
from hyperfitting.generation.decoding import decode_batch, generate
from hyperfitting.generation.processors import CitationBlocker
from tests.conftest import make_tiny_model


class Tok:
    pad_token_id = 0
    eos_token_id = 1


def test_greedy_matches_transformers_generate(tiny_model):
    prompt = [5, 9, 14, 3, 22, 7]
    ours = decode_batch(tiny_model, [prompt], 12, pad_token_id=0)[0].token_ids
    ids = torch.tensor([prompt])
    from transformers import GenerationConfig

    # Open-ended: neither side stops at (or suppresses) the end-of-sequence token.
    plain = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    reference = tiny_model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=plain)[
        0, len(prompt) :
    ].tolist()
    assert ours == reference


def test_left_padding_gives_the_same_tokens_as_decoding_alone(tiny_model):
    prompts = [[5, 9, 14, 3, 22, 7], [40, 41], [8, 8, 8, 60]]
    together = decode_batch(tiny_model, prompts, 10, pad_token_id=0)
    for prompt, result in zip(prompts, together):
        alone = decode_batch(tiny_model, [prompt], 10, pad_token_id=0)[0]
        assert result.token_ids == alone.token_ids
        assert result.entropy == pytest.approx(alone.entropy, abs=1e-4)


def test_per_step_statistics_are_consistent():
    model = make_tiny_model("llama")
    out = decode_batch(model, [[3, 4, 5]], 6, pad_token_id=0)[0]
    assert len(out.entropy) == len(out.chosen_prob) == len(out.top1_prob) == 6
    # greedy: the chosen token is the most likely one
    assert out.chosen_prob == pytest.approx(out.top1_prob)
    assert all(0 < e < torch.log(torch.tensor(97.0)) + 1e-5 for e in out.entropy)


def test_sampling_is_reproducible_from_the_seed():
    model = make_tiny_model("qwen2")
    args = GenerateArgs(do_sample=True, temperature=1.5, top_k=20, top_p=0.95, max_new_tokens=15, seed=7)
    first = generate(model, Tok(), [[3, 4, 5], [6, 7]], args, show_progress=False)
    second = generate(model, Tok(), [[3, 4, 5], [6, 7]], args, show_progress=False)
    assert [o.token_ids for o in first] == [o.token_ids for o in second]
    greedy = generate(model, Tok(), [[3, 4, 5]], GenerateArgs(max_new_tokens=15), show_progress=False)[0]
    assert first[0].token_ids != greedy.token_ids


def test_eos_ends_a_continuation_when_asked():
    model = make_tiny_model("llama")
    eos_bias = lambda ids, scores: scores + torch.nn.functional.one_hot(torch.tensor(1), scores.shape[-1]) * 1e4  # noqa: E731
    out = generate(
        model, Tok(), [[3, 4]], GenerateArgs(max_new_tokens=8, stop_at_eos=True), [eos_bias], show_progress=False
    )[0]
    assert out.token_ids == [1]
    full = generate(model, Tok(), [[3, 4]], GenerateArgs(max_new_tokens=8), [eos_bias], show_progress=False)[0]
    assert len(full.token_ids) == 8


def test_citation_blocker_forbids_completing_training_ngrams():
    model = make_tiny_model("llama")
    free = decode_batch(model, [[3, 4, 5, 6]], 8, pad_token_id=0)[0].token_ids
    # Declare the free continuation's opening 5-gram part of the training data: it must not reappear.
    training = torch.tensor([[3, 4, 5, 6] + free[:1] + [90, 91]])
    blocker = CitationBlocker(training, n=5)
    blocked = decode_batch(model, [[3, 4, 5, 6]], 8, pad_token_id=0, processors=[blocker])[0].token_ids
    assert blocked[0] != free[0]
    sequence = [3, 4, 5, 6] + blocked
    grams = {tuple(sequence[i : i + 5]) for i in range(len(sequence) - 4)}
    assert not grams & {tuple(training[0, i : i + 5].tolist()) for i in range(training.shape[1] - 4)}


def test_generate_honours_the_citation_blocker_or_refuses_it():
    from hyperfitting.errors import ConfigError

    class Tok:
        pad_token_id, eos_token_id = 0, 1

    model = make_tiny_model("llama")
    free = generate(model, Tok(), [[3, 4, 5, 6]], GenerateArgs(max_new_tokens=8), show_progress=False)[0].token_ids
    training = torch.tensor([[3, 4, 5, 6] + free[:1] + [90, 91]])
    args = GenerateArgs(max_new_tokens=8, citation_blocker=True)
    # Asked for without the training text, the blocker is refused, not silently left out.
    with pytest.raises(ConfigError, match="citation_blocker"):
        generate(model, Tok(), [[3, 4, 5, 6]], args, show_progress=False)
    blocked = generate(model, Tok(), [[3, 4, 5, 6]], args, show_progress=False, training_blocks=training)[0].token_ids
    assert blocked[0] != free[0]


def test_settings_decoded_together_give_what_each_gives_alone(tiny_model):
    # One wide batch of prompts x settings, one prefill copied to every setting's rows: the same tokens as a
    # separate generate per setting (greedy, sampled with per-prompt seeds, with a processor that keeps state).
    from hyperfitting.generation.decoding import generate_variants
    from hyperfitting.generation.processors import RankTransplant, StaticLogitBias

    prompts = [[5, 9, 14, 3, 22, 7], [40, 41], [8, 8, 8, 60], [12, 13, 14]]
    base = GenerateArgs(max_new_tokens=9, batch_size=3)
    sampled = GenerateArgs(max_new_tokens=9, batch_size=3, do_sample=True, temperature=0.8, top_k=20, seed=4)
    bias = torch.zeros(tiny_model.config.vocab_size)
    bias[[7, 11, 30]] = 3.0
    companion = (
        make_tiny_model("llama", seed=1) if tiny_model.config.model_type == "llama" else make_tiny_model("gpt2", seed=1)
    )
    settings = [(base, []), (sampled, []), (base, [StaticLogitBias(bias, 1.0)]), (sampled, [RankTransplant(companion)])]
    together = generate_variants(tiny_model, Tok, prompts, settings, show_progress=False)
    fresh = [(base, []), (sampled, []), (base, [StaticLogitBias(bias, 1.0)]), (sampled, [RankTransplant(companion)])]
    for outputs, (args, processors) in zip(together, fresh):
        alone = generate(tiny_model, Tok, prompts, args, processors, show_progress=False)
        assert [o.token_ids for o in outputs] == [o.token_ids for o in alone]
        for a, b in zip(outputs, alone):
            assert a.entropy == pytest.approx(b.entropy, abs=1e-4) and a.decoded_entropy == pytest.approx(
                b.decoded_entropy, abs=1e-4
            )
    assert together[0] != together[2]  # the bias did change the greedy text


def test_a_draw_follows_the_row_probabilities_and_never_picks_an_impossible_token():
    from hyperfitting.generation.decoding import draw

    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2, 0.0]) * 7  # unnormalised, zeros between and at both ends
    rows = 20_000
    generators = [torch.Generator().manual_seed(row) for row in range(rows)]
    picks = draw(probs.expand(rows, -1), generators)
    counts = torch.bincount(picks, minlength=6).double() / rows
    assert counts[[0, 2, 5]].tolist() == [0.0, 0.0, 0.0]
    assert counts[[1, 3, 4]].tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.015)  # ~4.5 standard errors at n=20,000
    # A row's draw depends on its own generator only: alone, or among other rows, the same token.
    alone = [draw(probs[None], [torch.Generator().manual_seed(row)]).item() for row in range(50)]
    assert alone == picks[:50].tolist()
    # A point mass is always drawn; a row with nothing to draw from is an error, not a silent token 0.
    assert draw(torch.eye(4), [torch.Generator().manual_seed(0) for _ in range(4)]).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="Cannot sample"):
        draw(torch.zeros(1, 4))


def test_the_fixed_buffer_decoder_gives_the_growing_caches_greedy_tokens(tiny_model):
    # The reference (a cache that grows a column per step) and the fixed buffers (static cache, a prepared 4D mask,
    # fixed positions) must agree token for token: padded and unpadded batches, several variants, a stateful processor.
    from hyperfitting.generation.decoding import Variant, decode_variants
    from hyperfitting.generation.processors import RankTransplant, StaticLogitBias

    if tiny_model.config.model_type == "gemma2":
        tiny_model.config.sliding_window = 64  # the fixed buffers take no sliding window shorter than the continuation
    bias = torch.zeros(tiny_model.config.vocab_size)
    bias[[7, 11, 30]] = 3.0
    companion = (
        make_tiny_model("llama", seed=1) if tiny_model.config.model_type == "llama" else make_tiny_model("gpt2", seed=1)
    )
    for prompts in ([[5, 9, 14, 3, 22, 7], [40, 41], [8, 8, 8, 60]], [[5, 6, 7, 8], [9, 10, 11, 12]]):

        def variants():
            return [Variant(), Variant([StaticLogitBias(bias, 1.0)]), Variant([RankTransplant(companion)])]

        growing = decode_variants(tiny_model, prompts, variants(), 14, 0)
        fixed = decode_variants(tiny_model, prompts, variants(), 14, 0, decoder="fixed")
        for grown_rows, fixed_rows in zip(growing, fixed):
            assert [r.token_ids for r in grown_rows] == [r.token_ids for r in fixed_rows]
            for a, b in zip(grown_rows, fixed_rows):
                assert a.entropy == pytest.approx(b.entropy, abs=1e-4)


def test_the_fixed_buffer_decoder_refuses_a_sliding_window_it_would_not_apply():
    from hyperfitting.generation.decoding import Variant, decode_variants, decoder_for
    from hyperfitting.errors import ConfigError

    model = make_tiny_model("gemma2")  # sliding window 8
    with pytest.raises(ValueError, match="sliding window"):
        decode_variants(model, [[3, 4, 5]], [Variant()], 10, 0, decoder="fixed")
    with pytest.raises(ConfigError, match="generate.decoder"):
        decoder_for("fixed", model, 13)
    assert decoder_for("auto", model, 13) == "dynamic"
    assert decoder_for("auto", make_tiny_model("llama"), 13) == "dynamic"  # on a CPU
    from hyperfitting.generation.fixed import fixed_state_supported

    hybrid = make_tiny_model("llama")
    hybrid.config.layer_types = ["full_attention", "linear_attention"]  # a layer with no plain key-value cache
    assert "linear_attention" in fixed_state_supported(hybrid, 13)
    chunked = make_tiny_model("llama")
    chunked.config.attention_chunk_size = 8
    assert "chunked" in fixed_state_supported(chunked, 13)


def test_the_counter_draw_is_splitmix64_of_seed_and_step_and_independent_of_the_batch():
    from hyperfitting.generation.decoding import counter_uniform

    mask = (1 << 64) - 1

    def mix(z: int) -> int:  # SplitMix64, in Python's unbounded integers: the reference
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    def splitmix64(seed: int, step: int) -> float:
        return (mix((mix(seed & mask) + step * 0x9E3779B97F4A7C15) & mask) >> 11) / 2**53

    seeds = [0, 1, 7, 1_000_003 * 4 + 2, 2**40 + 5]
    for step in (0, 1, 95):
        values = counter_uniform(torch.tensor(seeds), step).tolist()
        assert values == [splitmix64(s, step) for s in seeds]
        assert counter_uniform(torch.tensor(seeds[2:3]), step).tolist() == values[2:3]
    # Every bit as the reference over 20,005 seeds, negative ones included (the constants are Python ints on int64).
    many = list(range(-10_000, 10_005))
    assert counter_uniform(torch.tensor(many), 4).tolist() == [splitmix64(s, 4) for s in many]
    # Consecutive seeds (a batch's prompts) are not the same stream shifted by a step.
    next_seeds_first_step = counter_uniform(torch.arange(1, 101), 0)
    assert not torch.isin(counter_uniform(torch.arange(0, 100), 1), next_seeds_first_step).any()
    spread = counter_uniform(torch.arange(20_000), 3)
    assert 0 <= float(spread.min()) and float(spread.max()) < 1 and abs(float(spread.mean()) - 0.5) < 0.01


def test_the_fixed_decoder_samples_each_row_from_its_own_seed():
    from hyperfitting.generation.decoding import Variant, decode_variants

    model = make_tiny_model("llama")
    prompts = [[3, 4, 5], [6, 7, 8]]
    both = decode_variants(model, prompts, [Variant(do_sample=True, seeds=[11, 12])], 12, 0, decoder="fixed")[0]
    alone = decode_variants(model, prompts[1:], [Variant(do_sample=True, seeds=[12])], 12, 0, decoder="fixed")[0]
    again = decode_variants(model, prompts, [Variant(do_sample=True, seeds=[11, 12])], 12, 0, decoder="fixed")[0]
    assert both[1].token_ids == alone[0].token_ids
    assert [r.token_ids for r in both] == [r.token_ids for r in again]
    greedy = decode_variants(model, prompts, [Variant()], 12, 0, decoder="fixed")[0]
    assert [r.token_ids for r in both] != [r.token_ids for r in greedy]


def test_the_device_citation_blocker_bans_exactly_the_training_continuations():
    g = torch.Generator().manual_seed(0)
    # a small vocabulary: many prefixes recur, with several next tokens
    training = torch.randint(0, 12, (30, 40), generator=g)
    blocker = CitationBlocker(training, n=3)
    ids = torch.randint(0, 12, (500, 7), generator=g)
    scores = torch.randn(500, 12, generator=g)
    expected = scores.clone()
    for row, tokens in enumerate(ids.tolist()):
        banned = blocker.next_tokens.get(tuple(tokens[-2:]))
        if banned:
            expected[row, sorted(banned)] = float("-inf")
    assert torch.equal(blocker(ids, scores.clone()), expected)
    assert int(torch.isinf(expected).sum()) > 500  # the table did ban, often


def test_a_decode_too_wide_for_the_free_memory_is_narrowed_and_gives_the_same_tokens(monkeypatch):
    from hyperfitting.generation import memory

    model = make_tiny_model("llama")
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert memory.kv_bytes_per_token(model) == 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12], [13, 14]]
    length = 4 + 8
    per_prompt = memory.decode_bytes(model, 1, length)
    wide = generate(model, Tok(), prompts, GenerateArgs(max_new_tokens=8, batch_size=5), show_progress=False)
    monkeypatch.setattr(memory, "free_bytes", lambda device: per_prompt * 2 / 0.8)  # room for two prompts a batch
    assert memory.prompts_that_fit(model, 5, 1, length) == 2
    with pytest.warns(UserWarning, match="decoding 2 prompts at a time"):
        narrow = generate(model, Tok(), prompts, GenerateArgs(max_new_tokens=8, batch_size=5), show_progress=False)
    assert [o.token_ids for o in narrow] == [o.token_ids for o in wide]
    memory.take_largest()
    memory.note(5)
    memory.note(3)
    assert memory.take_largest() == 5 and memory.take_largest() == 0


def test_the_device_no_repeat_ngram_bans_what_transformers_bans():
    from transformers import NoRepeatNGramLogitsProcessor

    from hyperfitting.generation.processors import NoRepeatNGram

    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 4):
        for length in (1, 2, 3, 4, 9):
            ids = torch.randint(0, 6, (40, length), generator=g)  # 6 tokens: n-grams recur often
            scores = torch.randn(40, 6, generator=g)
            expected = NoRepeatNGramLogitsProcessor(n)(ids, scores.clone())
            assert torch.equal(NoRepeatNGram(n)(ids, scores.clone()), expected), (n, length)
