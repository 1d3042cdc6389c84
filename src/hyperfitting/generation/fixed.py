"""The decoding state of a batch, kept in one of two ways.

:class:`GrowingState` (``generate.decoder=dynamic``) is the reference: a KV cache, a token buffer and a mask that
grow by a column per step. :class:`FixedState` (``fixed``) allocates everything for the whole continuation before
the first step (a static KV cache, the tokens, a 4D attention mask and the positions), so that a step reads and
writes the same tensors every time: on a GPU one step is captured as a CUDA graph and replayed, which takes the
~700 kernel launches of a step off the host. Rows and lengths are rounded up to a few buckets there, so a study's
many batch widths share a handful of graphs. On a CPU nothing is captured and nothing is rounded; the fixed state
gives the greedy tokens of the growing one (tests/test_decoding.py).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch

from hyperfitting.generation.batches import accepts, left_padded, text_config


def _keep_last(model) -> dict:
    return {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}


def _prefill(model, prompts: Sequence[Sequence[int]], pad_token_id: int, n_variants: int):
    """The prompts' prefill, once, into a growing cache, then every row of prompts x variants (row r: prompt r // V).

    Returns (logits of the last prompt token (B, V), cache, input_ids, attention_mask, position_ids, padded).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids, attention_mask = left_padded(prompts, pad_token_id, device)
    # Left padding: positions count real tokens only, so a padded row sees the same positions as alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = any(len(p) != width for p in prompts)
    cache = DynamicCache(config=model.config)
    logits = (
        model(
            input_ids=input_ids,
            attention_mask=attention_mask if padded else None,
            position_ids=position_ids if padded else None,
            cache=cache,
            use_cache=True,
            **_keep_last(model),
        )
        .logits[:, -1, :]
        .float()
    )
    if n_variants > 1:
        cache.batch_repeat_interleave(n_variants)
        logits, input_ids, attention_mask, position_ids = (
            t.repeat_interleave(n_variants, dim=0) for t in (logits, input_ids, attention_mask, position_ids)
        )
    return logits, cache, input_ids, attention_mask, position_ids, padded


class GrowingState:
    """A dynamic KV cache; the sequences and the mask grow by one column per step."""

    def __init__(
        self, model, prompts: Sequence[Sequence[int]], n_variants: int, max_new_tokens: int, pad_token_id: int
    ):
        self.model = model
        self.first_logits, self.cache, self.sequences, self.attention_mask, positions, self.padded = _prefill(
            model, prompts, pad_token_id, n_variants
        )
        self.prompt_ids, self.prompt_mask = self.sequences, self.attention_mask
        self.positions = positions[:, -1:]
        self.keep_last = _keep_last(model)

    def advance(self, next_tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; the logits (B, V) that predict the next one."""
        batch = len(next_tokens)
        self.sequences = torch.cat([self.sequences, next_tokens[:, None]], dim=1)
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((batch, 1))], dim=1)
        self.positions = self.positions + 1
        return (
            self.model(
                input_ids=self.sequences[:, -1:],
                # Without padding the model's own causal masking is exact, and faster than an explicit mask.
                attention_mask=self.attention_mask if self.padded else None,
                position_ids=self.positions if self.padded else None,
                cache=self.cache,
                use_cache=True,
                **self.keep_last,
            )
            .logits[:, -1, :]
            .float()
        )


SUPPORTED_LAYERS = {"full_attention", "sliding_attention"}


def fixed_state_supported(model, length: int) -> str | None:
    """Why the fixed state cannot decode this model to ``length`` tokens (None: it can). On a GPU the buffers are
    ``bucketed_length(length)`` long, and that is the length checked."""
    config = text_config(model)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation.startswith("flash") or implementation == "flex_attention":
        return f"its attention ({implementation}) takes no prepared 4D mask"
    if getattr(config, "attention_chunk_size", None):
        return "its chunked attention would need a mask of its own"
    kinds = set(getattr(config, "layer_types", None) or ())
    if kinds - SUPPORTED_LAYERS:
        return f"its layers of kind {', '.join(sorted(kinds - SUPPORTED_LAYERS))} keep no plain key-value cache"
    if next(model.parameters()).device.type == "cuda":
        length = bucketed_length(length)
    window = getattr(config, "sliding_window", None)
    if window and length > window and ("sliding_attention" in kinds or not kinds):
        return f"{length} positions exceed its sliding window ({window}), which a prepared mask would not apply"
    return None


def bucketed_length(length: int) -> int:
    """The cache length a GPU decode of ``length`` tokens allocates (a multiple of 64: nearby lengths share a graph)."""
    return bucket(length, 64, 64, 0)


def bucket(n: int, fine: int, coarse: int, switch: int) -> int:
    """``n`` rounded up: to a multiple of ``fine`` up to ``switch``, of ``coarse`` above it (a few sizes cover a
    study)."""
    step = fine if n <= switch else coarse
    return -(-n // step) * step


class _Workspace:
    """The tensors a fixed-state batch of ``rows`` rows and ``length`` positions reads and writes, and (on CUDA) its
    graph."""

    def __init__(self, model, rows: int, length: int, device: torch.device, mask_dtype: torch.dtype | None):
        from transformers import StaticCache

        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.tokens = torch.zeros((rows, length), dtype=torch.long, device=device)
        self.step_ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        # sdpa takes a boolean mask (True: attend); eager attention adds a float one.
        self.mask = (
            torch.zeros((rows, 1, 1, length), dtype=torch.bool, device=device)
            if mask_dtype is None
            else torch.full((rows, 1, 1, length), torch.finfo(mask_dtype).min, dtype=mask_dtype, device=device)
        )
        self.open = True if mask_dtype is None else 0.0
        self.shut = False if mask_dtype is None else torch.finfo(mask_dtype).min
        self.graph = None
        self.graph_logits: torch.Tensor | None = None
        self.graph_failed = False


# Workspaces (and their graphs) per model, one (rows, length) bucket at a time, until the decode that made them ends
# (generate_variants releases them): a static cache is large, and the stages after a decode need the memory.
_WORKSPACES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def release_workspaces(model) -> None:
    """Let go of ``model``'s fixed buffers and graphs."""
    _WORKSPACES.pop(model, None)


class FixedState:
    """A static KV cache and fixed buffers for the whole continuation (see the module's docstring)."""

    def __init__(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        n_variants: int,
        max_new_tokens: int,
        pad_token_id: int,
        graphs: bool | None = None,
    ):
        why_not = fixed_state_supported(model, max(map(len, prompts)) + max_new_tokens)
        if why_not:
            raise ValueError(
                f"The fixed-buffer decoder cannot decode this model: {why_not}; decode it with the dynamic one."
            )
        self.model = model
        device = next(model.parameters()).device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        logits, prefill_cache, input_ids, attention_mask, positions, _ = _prefill(
            model, prompts, pad_token_id, n_variants
        )
        self.first_logits = logits
        self.rows, width = input_ids.shape
        self.width = width
        self.step = 0
        # On a GPU rows and length are rounded up so that batches of nearby sizes replay one graph; the extra rows
        # decode a copy of the first row and are never read.
        rows = bucket(self.rows, 8, 32, 64) if self.graphs else self.rows
        length = bucketed_length(width + max_new_tokens) if self.graphs else width + max_new_tokens
        config = text_config(model)
        mask_dtype = (
            None if getattr(config, "_attn_implementation", "eager") == "sdpa" else next(model.parameters()).dtype
        )
        if self.graphs:  # a captured graph is worth keeping: until release_workspaces(model), one at a time
            # A graph reads tensors at their addresses: the key holds every parameter's and buffer's storage, and what
            # decides the kernels (dtypes, autocast, the attention implementation).
            tensors = [*model.parameters(), *model.buffers()]
            key = (
                rows,
                length,
                hash(tuple((t.data_ptr(), t.dtype) for t in tensors)),
                torch.is_autocast_enabled("cuda"),
                torch.get_autocast_dtype("cuda"),
                getattr(config, "_attn_implementation", None),
            )
            spaces = _WORKSPACES.setdefault(model, {})
            if key not in spaces:
                spaces.clear()  # the cache of a wide bucket is large: the previous one goes first
                spaces[key] = _Workspace(model, rows, length, device, mask_dtype)
            self.space = space = spaces[key]
        else:  # nothing to replay: this batch's buffers go with it
            self.space = space = _Workspace(model, rows, length, device, mask_dtype)
        space.cache.reset()
        space.tokens.zero_()
        space.tokens[: self.rows, :width] = input_ids
        space.tokens[self.rows :, :width] = input_ids[:1]
        space.mask.fill_(space.shut)
        prompt_mask = attention_mask.bool()
        space.mask[: self.rows, 0, 0, :width] = torch.where(prompt_mask, space.open, space.shut)
        space.mask[self.rows :, 0, 0, :width] = torch.where(prompt_mask[:1], space.open, space.shut)
        space.positions[: self.rows] = positions[:, -1:]
        space.positions[self.rows :] = positions[:1, -1:]
        # The prefill's keys and values go into the static cache, row for row (the extra rows copy the first).
        for layer, filled in zip(space.cache.layers, prefill_cache.layers):
            keys, values = filled.keys, filled.values
            if not layer.is_initialized:
                layer.lazy_initialization(
                    keys[:1].expand(rows, *keys.shape[1:]), values[:1].expand(rows, *values.shape[1:])
                )
            layer.keys[: self.rows, :, :width] = keys
            layer.keys[self.rows :, :, :width] = keys[:1]
            layer.values[: self.rows, :, :width] = values
            layer.values[self.rows :, :, :width] = values[:1]
            layer.cumulative_length.fill_(width)
        self.prompt_ids, self.prompt_mask = input_ids, attention_mask
        self.keep_last = _keep_last(model)

    @property
    def sequences(self) -> torch.Tensor:
        """The rows' tokens so far (a view of the fixed buffer)."""
        return self.space.tokens[: self.rows, : self.width + self.step]

    def advance(self, next_tokens: torch.Tensor) -> torch.Tensor:
        space, column = self.space, self.width + self.step
        space.tokens[: self.rows, column] = next_tokens
        space.tokens[self.rows :, column] = next_tokens[:1]
        space.step_ids.copy_(space.tokens[:, column : column + 1])
        space.mask[:, 0, 0, column] = space.open
        space.positions += 1  # the first new token sits one past the prompt's last position, each next one past that
        self.step += 1
        return self._forward()[: self.rows]

    def _eager(self) -> torch.Tensor:
        space = self.space
        return self.model(
            input_ids=space.step_ids,
            attention_mask=space.mask,
            position_ids=space.positions,
            cache=space.cache,
            use_cache=True,
            **self.keep_last,
        ).logits[:, -1, :]

    def _forward(self) -> torch.Tensor:
        space = self.space
        if not self.graphs or space.graph_failed:
            return self._eager().float()
        if space.graph is None:
            return self._capture()
        space.graph.replay()
        return space.graph_logits.float()

    def _capture(self) -> torch.Tensor:
        """Capture one step as a CUDA graph and check its first replay against an eager step of the same inputs.

        The warm-up steps and the capture write the cache at this step's position, and the cache's write counter
        is put back before every one, so the step is taken exactly once as far as the decode can tell.
        """
        import warnings

        space = self.space
        counters = [layer.cumulative_length.clone() for layer in space.cache.layers]

        def rewind():
            for layer, counter in zip(space.cache.layers, counters):
                layer.cumulative_length.copy_(counter)

        try:
            # the graph and its stream on the model's GPU, not the current one
            torch.cuda.set_device(space.tokens.device)
            expected = self._eager().float().clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    rewind()
                    self._eager()
            torch.cuda.current_stream().wait_stream(stream)
            rewind()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                space.graph_logits = self._eager()
            rewind()
            graph.replay()
            replayed = space.graph_logits.float()
            if not torch.equal(replayed.argmax(-1), expected.argmax(-1)) or not torch.allclose(
                replayed, expected, atol=1e-3, rtol=1e-3
            ):
                raise RuntimeError(
                    "the replayed step differs from the eager one (largest difference "
                    f"{float((replayed - expected).abs().max()):.3g})"
                )
            space.graph = graph
            return replayed
        except Exception as error:  # noqa: BLE001 (any failure of capture falls back to eager steps, said once)
            space.graph_failed = True
            space.graph = None
            rewind()
            warnings.warn(
                f"Decoding runs without CUDA graphs for this model: capturing a step failed ({error}).", stacklevel=2
            )
            return self._eager().float()
