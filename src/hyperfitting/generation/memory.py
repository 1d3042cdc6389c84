"""How much device memory a decode or a teacher-forced pass needs beyond the weights, and how wide a batch fits.

The estimate counts what grows with the batch: the KV cache (2 x layers x KV heads x head size per token and
row) and the vocabulary-wide rows each step computes (the logits and the half-dozen tensors of the same shape
that the statistics, the processors and a draw make from them). Each stage keeps the largest estimate it made,
so the stage profile shows it beside the peak the device measured (``estimated_memory_mib``,
``device_peak_memory_mib`` in metrics.json).
"""

from __future__ import annotations

import torch

from hyperfitting.generation.batches import text_config

VOCABULARY_ROWS_PER_STEP = 8
"""Full-vocabulary float32 tensors alive at once per row in a decoding step (logits, log-probabilities,
probabilities, processed scores, their softmax, a draw's float64 cumulative sum counts twice)."""

_largest_estimate = 0


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache per token of one row, over every layer."""
    config = text_config(model)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    element = next(model.parameters()).element_size()
    return 2 * layers * kv_heads * head_dim * element


def decode_bytes(model, rows: int, length: int) -> int:
    """Beyond the weights: a decode of ``rows`` rows to ``length`` tokens (prompt and continuation)."""
    vocabulary = text_config(model).vocab_size
    return rows * (length * kv_bytes_per_token(model) + VOCABULARY_ROWS_PER_STEP * vocabulary * 4)


def teacher_forcing_bytes(model, rows: int, length: int) -> int:
    """Beyond the weights: one teacher-forced batch of ``rows`` sequences of ``length`` tokens (the logits, in float32
    and as the model computed them, and a reduction's copy)."""
    config = text_config(model)
    vocabulary, hidden = config.vocab_size, getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return rows * length * (3 * vocabulary * 4 + 16 * hidden * 4)


def note(estimate: int) -> None:
    """Remember ``estimate`` (bytes) if it is the stage's largest so far."""
    global _largest_estimate
    _largest_estimate = max(_largest_estimate, int(estimate))


def take_largest() -> int:
    """The largest estimate noted since the last call (bytes), and start again from zero."""
    global _largest_estimate
    largest, _largest_estimate = _largest_estimate, 0
    return largest


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a GPU (None elsewhere: a CPU's batches are not narrowed)."""
    if device.type != "cuda":
        return None
    from hyperfitting.generation.fixed import kept_bytes

    # What the device has free, what PyTorch's caching allocator holds but no tensor uses (it hands that out first), and
    # the kept decode buffers, which the next decode reuses or lets go before it allocates its own.
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + kept_bytes()


def prompts_that_fit(model, prompts: int, variants: int, length: int, headroom: float = 0.8, rows_of=None) -> int:
    """How many prompts (each decoded under ``variants`` settings) one batch can hold on the model's device: ``prompts``
    when they fit, fewer when the GPU's free memory would not hold them (at least one). ``rows_of``: the rows a batch
    of n rows allocates (the fixed buffers round them up), n itself by default."""
    device = next(model.parameters()).device
    free = free_bytes(device)
    rows_of = rows_of or (lambda n: n)

    def need(n: int) -> int:
        return decode_bytes(model, rows_of(n * variants), length)

    if free is None or need(prompts) <= headroom * free:
        return prompts
    fit = max(1, min(prompts, int(headroom * free // decode_bytes(model, variants, length))))
    while fit > 1 and need(fit) > headroom * free:  # rounding up the rows can take a few prompts' room
        fit -= 1
    return fit
