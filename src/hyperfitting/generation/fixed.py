"""The decoding state of a batch, kept in one of two ways.

:class:`GrowingState` (``generate.decoder=dynamic``) is the reference: a KV cache, a token buffer and a mask that
grow by a column per step. :class:`FixedState` (``fixed``) allocates everything for the whole continuation before
the first step (a static KV cache, the tokens, a 4D attention mask and the positions), so that a step reads and
writes the same tensors every time: on a GPU one step is captured as a CUDA graph and replayed, which takes the
~700 kernel launches of a step off the host. Rows and lengths are rounded up to a few buckets there, so a study's
many batch widths share a handful of graphs. On a CPU nothing is captured and nothing is rounded; the fixed state
gives the greedy tokens of the growing one (tests/test_decoding.py).

A graph is kept with its buffers for the model, bucket and dtype it was captured for, across decodes, until the
stage that made it ends (``release_all_workspaces``, called by the stage runner in a ``finally``). A replay is
checked against an eager step of the same inputs at the first two replayed steps and the last step of every decode:
the usual graph bug (a value frozen into the capture) shows from the step after capture on. A failed capture or check
is remembered for the model, with its cause, and that model decodes eagerly from then on.
"""

from __future__ import annotations

import weakref
from collections import Counter
from typing import Callable, Sequence

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


def fixed_state_supported(model, length: int, bucketed: bool | None = None) -> str | None:
    """Why the fixed state cannot decode this model to ``length`` tokens (None: it can). Where graphs are captured (a
    GPU) or the step is compiled (``bucketed``), the buffers are ``bucketed_length(length)`` long, and that is the
    length checked."""
    config = text_config(model)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    if implementation.startswith("flash") or implementation == "flex_attention":
        return f"its attention ({implementation}) takes no prepared 4D mask"
    if getattr(config, "attention_chunk_size", None):
        return "its chunked attention would need a mask of its own"
    kinds = set(getattr(config, "layer_types", None) or ())
    if kinds - SUPPORTED_LAYERS:
        return f"its layers of kind {', '.join(sorted(kinds - SUPPORTED_LAYERS))} keep no plain key-value cache"
    if bucketed if bucketed is not None else graphs_wanted(next(model.parameters()).device):
        length = bucketed_length(length)
    window = getattr(config, "sliding_window", None)
    if window and length > window and ("sliding_attention" in kinds or not kinds):
        return f"{length} positions exceed its sliding window ({window}), which a prepared mask would not apply"
    return None


def bucketed_length(length: int) -> int:
    """The cache length a GPU decode of ``length`` tokens allocates (a multiple of 64: nearby lengths share a graph)."""
    return -(-length // 64) * 64


def bucketed_rows(rows: int) -> int:
    """The rows a GPU decode of ``rows`` rows allocates: a multiple of 8, or of an eighth of the power of two below
    ``rows`` where that is larger (65 -> 72, 300 -> 320), so that from 64 rows up no decode computes more than an
    eighth of rows it never reads (below 64, up to 7 rows more), and a study's batch widths still share a few
    graphs."""
    step = max(8, (1 << (rows.bit_length() - 1)) // 8) if rows > 0 else 8
    return -(-rows // step) * step


def replay_tolerance(dtype: torch.dtype, tf32: bool = False) -> float:
    """How far a replayed logit may lie from the eager one, relative to the largest logit: two rounding steps of the
    precision the logits were computed in (the logits' dtype, or TF32's 10-bit mantissa where float32 products run in
    it), and never less than float32's accumulation noise. A replay runs the same kernels on the same inputs, usually
    to the bit; a kernel chosen differently under capture may round differently; a frozen value moves far more."""
    eps = 2.0**-10 if tf32 and dtype == torch.float32 else torch.finfo(dtype).eps
    return max(2 * eps, 2e-5)


def replay_difference(replayed: torch.Tensor, expected: torch.Tensor, tf32: bool = False) -> tuple[str | None, float]:
    """(why ``replayed`` logits (rows, V) are not the eager step's ``expected`` ones (None: they agree), the largest
    difference relative to the largest logit), at the tolerance of their precision. A row's greedy token may differ
    only where the eager top two are within it. One read from the device."""
    dtype = expected.dtype
    replayed, expected = replayed.float(), expected.float()
    scale = expected.abs().amax().clamp(min=1.0)
    tolerance = replay_tolerance(dtype, tf32) * scale
    top2 = expected.topk(min(2, expected.shape[-1]), dim=-1).values
    tied = (top2[:, 0] - top2[:, -1]) <= tolerance
    same_choice = ((replayed.argmax(-1) == expected.argmax(-1)) | tied).all()
    largest, allowed, agree, scale = torch.stack(
        [(replayed - expected).abs().amax(), tolerance, same_choice.float(), scale]
    ).tolist()
    relative = largest / scale
    if not largest <= allowed:  # also catches NaN
        return f"the largest difference {largest:.3g} exceeds the {allowed:.3g} allowed in {dtype}", relative
    if not agree:
        return "a greedy choice differs where the eager step's top two are not tied", relative
    return None, relative


def capture_step(step: Callable[[], torch.Tensor], rewind: Callable[[], None], device: torch.device, cuda=torch.cuda):
    """Capture ``step`` (one decoding step into fixed buffers, returning its logits) as a CUDA graph on ``device``.

    Two warm-up steps run first on a side stream (lazy initialisations and allocations stay out of the capture);
    ``rewind`` puts the cache's write counters back before each run, outside the capture (inside it, it would be
    replayed). Returns (graph, the logits tensor every replay rewrites). On failure it raises the error that made the
    capture fail (the step's own, not the ``capture_end`` error that follows it) and leaves the thread on the stream it
    was on. ``cuda`` is the module that does this (tests pass a stand-in).
    """
    with cuda.device(device):
        original = cuda.current_stream()
        side = cuda.Stream()
        side.wait_stream(original)
        try:
            cuda.set_stream(side)
            synced = None
            for warm_up in range(2):
                rewind()
                # The second warm-up refuses any operation that syncs the host, which capture would also refuse: the
                # operation is then named by its own error. Eager and captured steps may take different branches
                # (libraries look at is_current_stream_capturing), so the capture still has its say.
                try:
                    with _syncs_refused(cuda, refuse=warm_up == 1):
                        step()
                except RuntimeError as error:
                    if warm_up == 0:
                        raise
                    synced = error
                    rewind()
                    step()
            cuda.synchronize()
            rewind()
            graph = cuda.CUDAGraph()
            graph.capture_begin()
            cause, output = None, None
            try:
                output = step()
            except BaseException as error:  # noqa: BLE001 (even an interruption: the capture is ended first, then raised)
                cause = error
            try:
                graph.capture_end()
            except Exception as error:  # noqa: BLE001 (secondary when the step failed)
                cause = cause or error
            if cause is not None:
                if synced is not None and isinstance(cause, Exception):
                    raise RuntimeError(f"{cause} (in its warm-up the step synced the host: {synced})") from cause
                raise cause
            return graph, output
        finally:
            cuda.set_stream(original)
            original.wait_stream(side)


class _syncs_refused:
    """Within: a CUDA operation that would sync the host raises (torch.cuda.set_sync_debug_mode("error"))."""

    def __init__(self, cuda, refuse: bool):
        self.cuda, self.refuse = cuda, refuse and hasattr(cuda, "set_sync_debug_mode")

    def __enter__(self):
        if self.refuse:
            self.before = self.cuda.get_sync_debug_mode()
            self.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if self.refuse:
            self.cuda.set_sync_debug_mode(self.before)


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


# The workspace (and its graph) kept across decodes: one for the whole process, for one model, bucket and dtype at a
# time (a static cache is large: a decode of another model or bucket lets the kept one go first), until the stage that
# made it ends (StageGraph.run calls release_all_workspaces in a finally). Weak keys: a model that is let go takes its
# workspace with it.
_WORKSPACES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
# Why capturing a model's step failed: remembered, so that the model decodes eagerly from then on without retrying.
_GRAPH_FAILED: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
# What the graph path did since the last reset_graph_stats(): captures, replays, checked replays, eager steps taken
# where a graph was wanted, failures (the first-run check reports these).
_STATS: Counter = Counter()
_FAILURES: list[str] = []


def release_all_workspaces() -> None:
    """Let go of every model's fixed buffers and graphs (what was learned of a failed capture is kept)."""
    _WORKSPACES.clear()


def graph_stats() -> dict:
    """What the graph path has done since :func:`reset_graph_stats`: counts, each failure's cause (and those remembered
    from before, for models still alive), the largest difference a checked replay showed (relative to the largest
    logit), and torch.compile's graphs and recompiles where a compiled step ran (those two since the process
    started)."""
    from torch._dynamo.utils import counters

    return {
        **{k: _STATS[k] for k in ("captures", "replays", "checked_replays", "eager_steps", "failures")},
        "why_not": list(_FAILURES) + sorted(set(_GRAPH_FAILED.values()) - set(_FAILURES)),
        "largest_checked_difference": _STATS.get("largest_difference", 0.0),
        "compiled_graphs": counters["stats"]["unique_graphs"],
        "recompiles": sum(counters["recompiles"].values()),
    }


def _step(model, space: "_Workspace", keep_last: dict) -> torch.Tensor:
    """One decoding step of the fixed buffers: the logits (rows, V) that predict the next token."""
    return model(
        input_ids=space.step_ids,
        attention_mask=space.mask,
        position_ids=space.positions,
        cache=space.cache,
        use_cache=True,
        **keep_last,
    ).logits[:, -1, :]


# torch.compile's backend for compile_step (inductor: generated, fused kernels; tests may name a lighter one).
COMPILE_BACKEND = "inductor"
_COMPILED: dict = {}


def compiled_step(device: torch.device):
    """:func:`_step` compiled once per process and device type: on a GPU in "reduce-overhead" mode (CUDA graphs of the
    compiled kernels, as gpt-fast does). Every model, bucket and dtype compiles on its first step (guards), and the
    fixed buffers keep the shapes static, so a decode compiles once and replays from then on."""
    key = (device.type, COMPILE_BACKEND)
    if key not in _COMPILED:
        # One compiled function serves every model, bucket and dtype of the process, each a cache entry of its own: at
        # dynamo's default limit of 8 a study's ninth would silently run uncompiled.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        mode = "reduce-overhead" if device.type == "cuda" and COMPILE_BACKEND == "inductor" else None
        _COMPILED[key] = torch.compile(_step, backend=COMPILE_BACKEND, mode=mode, dynamic=False)
    return _COMPILED[key]


def compile_supported(model) -> str | None:
    """Why the step of this model cannot be compiled (None: it can)."""
    kinds = set(getattr(text_config(model), "layer_types", None) or ())
    if "sliding_attention" in kinds or getattr(text_config(model), "sliding_window", None) and not kinds:
        # transformers' sliding-window cache layer counts its length in a Python int, a new guard at every step
        return "its sliding-window layers count their length in a Python number, which would recompile every step"
    return None


def _failure_key(model):
    """The model a failed capture is remembered for: the source of a bf16 decoding copy (made again for each version of
    the weights, precision.bf16_copy), or the model itself."""
    source = getattr(model, "decoding_source", None)
    return (source() if source is not None else None) or model


def kept_bytes() -> int:
    """Device memory the kept workspace's buffers hold (its graph's pool aside): free for the decode that would replace
    or reuse it."""
    return sum(
        t.numel() * t.element_size()
        for spaces in _WORKSPACES.values()
        for space in spaces.values()
        for t in (
            space.tokens,
            space.mask,
            *(x for layer in space.cache.layers if layer.is_initialized for x in (layer.keys, layer.values)),
        )
    )


def graphs_wanted(device: torch.device) -> bool:
    """Whether a decode on ``device`` captures its step (CUDA only: on a CPU there is nothing to replay)."""
    return device.type == "cuda"


def reset_graph_stats() -> None:
    _STATS.clear()
    _FAILURES.clear()


def _forward_identity(model, device: torch.device) -> tuple:
    """What decides the kernels a captured step runs and the addresses it reads, beyond its shapes: every parameter's
    and buffer's storage and dtype, the hooks (the model's and the global ones, by identity), the training flag, PEFT's
    adapter state (merged, disabled, active: a Python flag or weights changed in place), autocast, TF32 and the
    attention backends allowed."""
    from torch.nn.modules import module as nn_module

    modules = list(model.modules())
    hooks = [id(h) for m in modules for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    hooks += [id(h) for h in (*nn_module._global_forward_hooks.values(), *nn_module._global_forward_pre_hooks.values())]
    adapters = [
        (
            getattr(m, "merged", None),
            getattr(m, "disable_adapters", None),
            tuple(getattr(m, "active_adapters", ())),
            tuple(sorted(getattr(m, "scaling", {}).items())),  # a Python number the graph keeps
        )
        for m in modules
        if hasattr(m, "active_adapters") and hasattr(m, "merged")
    ]
    backends = torch.backends.cuda
    return (
        hash(tuple((t.data_ptr(), t.dtype) for t in (*model.parameters(), *model.buffers()))),
        hash(tuple(hooks)),
        any(m.training for m in modules),
        hash(tuple(adapters)),
        torch.is_autocast_enabled(device.type),
        torch.get_autocast_dtype(device.type),
        backends.matmul.allow_tf32,
        (
            backends.flash_sdp_enabled(),
            backends.mem_efficient_sdp_enabled(),
            backends.math_sdp_enabled(),
            backends.cudnn_sdp_enabled(),
        ),
    )


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
        compile_step: bool = False,
        bucket_rows: int = 0,
        bucket_length: int = 0,
    ):
        device = next(model.parameters()).device
        # A compiled step makes its own graphs (torch.compile's "reduce-overhead" on a GPU): none is captured here.
        self.wanted = (graphs_wanted(device) if graphs is None else graphs) and not compile_step
        self.graphs = self.wanted and _failure_key(model) not in _GRAPH_FAILED
        # Where a step is replayed (a graph) or compiled, rows and length are rounded up so that batches of nearby
        # sizes share one; the extra rows decode a copy of the first row and are never read.
        kept = self.graphs or compile_step
        why_not = fixed_state_supported(model, max(map(len, prompts)) + max_new_tokens, bucketed=kept)
        why_not = why_not or (compile_supported(model) if compile_step else None)
        if why_not:
            raise ValueError(
                f"The fixed-buffer decoder cannot decode this model: {why_not}; decode it with the dynamic one."
            )
        self.model = model
        self.compiled = compiled_step(device) if compile_step else None
        self.max_new_tokens = max_new_tokens
        logits, prefill_cache, input_ids, attention_mask, positions, _ = _prefill(
            model, prompts, pad_token_id, n_variants
        )
        self.first_logits = logits
        self.rows, width = input_ids.shape
        self.width = width
        self.step = 0
        # bucket_rows: the width of the call's full batches, so that its last, narrower batch replays their graph
        rows = bucketed_rows(max(self.rows, bucket_rows)) if kept else self.rows
        # bucket_length likewise: the call's longest prompt and continuation, so all its batches share one length
        length = bucketed_length(max(width + max_new_tokens, bucket_length)) if kept else width + max_new_tokens
        config = text_config(model)
        mask_dtype = (
            None if getattr(config, "_attn_implementation", "eager") == "sdpa" else next(model.parameters()).dtype
        )
        if kept:  # a captured graph or a compiled step is worth keeping: until its stage ends, one at a time
            key = (rows, length, *_forward_identity(model, device), getattr(config, "_attn_implementation", None))
            spaces = _WORKSPACES.get(model, {})
            if key not in spaces:
                _WORKSPACES.clear()  # a static cache is large: the one kept goes first, whichever model it was for
                spaces = _WORKSPACES[model] = {key: _Workspace(model, rows, length, device, mask_dtype)}
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
            if hasattr(layer, "cumulative_length_int"):  # a sliding-window layer's own count, kept in Python
                layer.cumulative_length_int = width
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
        if self.compiled is not None:
            if space.tokens.device.type == "cuda":  # the compiled graphs' outputs are rewritten at the next replay
                torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(self.model, space, self.keep_last).clone()
            return self.compiled(self.model, space, self.keep_last)
        return _step(self.model, space, self.keep_last)

    def _forward(self) -> torch.Tensor:
        space = self.space
        if not self.graphs or _failure_key(self.model) in _GRAPH_FAILED:  # none wanted, or failed earlier
            _STATS["eager_steps"] += self.wanted
            return self._eager().float()
        if space.graph is None:
            return self._capture()
        # The first two replays of a decode and its last step are checked: a value frozen into the capture shows from
        # the step after it, and stale state from an earlier decode at this decode's first replay.
        if self.step <= 2 or self.step == self.max_new_tokens - 1:
            return self._checked_replay()
        space.graph.replay()
        _STATS["replays"] += 1
        return space.graph_logits.float()

    def _counters(self) -> Callable[[], None]:
        """A function that puts the cache's write counters back where they are now (an extra run of a step then
        writes the same cache column, and the decode sees the step taken once)."""
        layers = self.space.cache.layers
        counters = [layer.cumulative_length.clone() for layer in layers]
        counts = [getattr(layer, "cumulative_length_int", None) for layer in layers]

        def rewind():
            for layer, counter, count in zip(layers, counters, counts):
                layer.cumulative_length.copy_(counter)
                if count is not None:
                    layer.cumulative_length_int = count

        return rewind

    def _fail(self, cause: str, rewind: Callable[[], None], remember: bool = True) -> torch.Tensor:
        """Remember that graphs fail for this model (``remember``: not for a lack of memory, which may pass), say why
        once, and take this step eagerly. The workspace's graph goes; its buffers serve the rest of this decode."""
        import warnings

        if remember:
            _GRAPH_FAILED[_failure_key(self.model)] = cause
        _STATS["failures"] += 1
        _STATS["eager_steps"] += 1
        _FAILURES.append(cause)
        self.space.graph, self.space.graph_logits = None, None
        self.graphs = False
        _WORKSPACES.pop(self.model, None)
        rewind()
        when = "from now on" if remember else "in this decode"
        warnings.warn(f"Decoding this model runs without CUDA graphs {when}: {cause}.", stacklevel=3)
        return self._eager().float()

    def _check(self, expected: torch.Tensor, what: str, rewind: Callable[[], None]) -> torch.Tensor:
        """The replayed logits, if they agree with ``expected`` (an eager step of the same inputs); else the step
        taken eagerly, and graphs given up for this model."""
        why, relative = replay_difference(self.space.graph_logits, expected, torch.backends.cuda.matmul.allow_tf32)
        _STATS["checked_replays"] += 1
        before = _STATS.get("largest_difference", 0.0)
        _STATS["largest_difference"] = relative if relative != relative or not relative <= before else before
        if why:
            return self._fail(f"the replay of {what} differs from the eager step: {why}", rewind)
        return self.space.graph_logits.float()

    def _checked_replay(self) -> torch.Tensor:
        space, rewind = self.space, self._counters()
        expected = self._eager().clone()
        rewind()
        space.graph.replay()
        _STATS["replays"] += 1
        return self._check(expected, f"step {self.step}", rewind)

    def _capture(self) -> torch.Tensor:
        """Capture one step as a CUDA graph and check its first replay against an eager step of the same inputs.

        The warm-up steps and the capture write the cache at this step's position, and the cache's write counter is
        put back before every one, so the step is taken exactly once as far as the decode can tell.
        """
        space, rewind = self.space, self._counters()
        try:
            expected = self._eager().clone()
            space.graph, space.graph_logits = capture_step(self._eager, rewind, space.tokens.device)
        except Exception as error:  # noqa: BLE001 (any failure of capture falls back to eager steps, said once)
            out_of_memory = isinstance(error, torch.OutOfMemoryError)
            if out_of_memory:
                torch.cuda.empty_cache()
            cause = f"capturing a step failed ({type(error).__name__}: {str(error).splitlines()[0][:300]})"
            return self._fail(cause, rewind, remember=not out_of_memory)
        _STATS["captures"] += 1
        rewind()
        space.graph.replay()
        _STATS["replays"] += 1
        return self._check(expected, "the captured step", rewind)
