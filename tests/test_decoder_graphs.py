"""The CUDA-graph path of the fixed-buffer decoder, on a CPU.

No graph can be captured here, so the capture is replaced by a stand-in at its one seam (``fixed.capture_step``). The
main one has a graph's semantics: it records the captured step's operations with the very tensors and numbers they
were given, and a replay runs exactly those again, results written into the captured tensors, so a value kept in a
Python number or a buffer rebound instead of written in place stays frozen, as on a GPU. Simpler ones replay
faithfully, freeze the output, fail, or run out of memory. Everything around them is the real decoder: the workspace
kept across decodes, the checks of replays against eager steps, the fallback and what it remembers. The real
``capture_step`` is run against a stand-in of ``torch.cuda`` for what it must do when a capture fails.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

from hyperfitting.generation import fixed
from hyperfitting.generation.decoding import Variant, decode_variants
from tests.conftest import make_tiny_model

PROMPTS = [[5, 9, 14, 3, 22, 7], [40, 41], [8, 8, 8, 60]]


def faithful_capture(step, rewind, device):
    rewind()
    output = step()

    class Graph:
        def replay(self):
            output.copy_(step())

    return Graph(), output


def frozen_capture(step, rewind, device):
    rewind()
    output = step()

    class Graph:
        def replay(self):  # the bug: the step runs (its cache writes too), but its logits were frozen at capture
            step()

    return Graph(), output


class _Recording(TorchDispatchMode):
    """What a CUDA graph keeps of a captured step: each operation, with the very tensors it read and wrote and the
    numbers it was given. A read of a device value into Python fails, as it does under capture."""

    def __init__(self):
        super().__init__()
        self.operations = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name in ("index", "index_put_", "index_put") and any(  # x[mask]: a nonzero below the dispatcher
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        )
        if name in HOST_SYNCS or masked:
            raise RuntimeError(f"operation not permitted when stream is capturing ({name})")
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.operations.append((func, args, kwargs, out))
        return out


def _replay(operations) -> None:
    """Run the recorded operations again on the same tensors, each result written into the tensor the capture
    produced (a graph's fixed addresses): the numbers stay those of the capture, the tensors' contents are today's."""
    for func, args, kwargs, out in operations:
        fresh = func(*args, **kwargs)
        for kept, new in zip(torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(fresh)):
            if isinstance(kept, torch.Tensor) and new.data_ptr() != kept.data_ptr():
                assert new.shape == kept.shape, f"{func} changed shape at replay: a graph would not"
                kept.copy_(new)


def recorded_capture(step, rewind, device):
    """A stand-in capture with a graph's semantics, on a CPU: a value frozen at capture stays frozen at replay."""
    rewind()
    step()  # warm-up, as the real capture does
    rewind()
    recording = _Recording()
    with recording:
        output = step()

    class Graph:
        def replay(self):
            with torch.no_grad():
                _replay(recording.operations)

    return Graph(), output


@pytest.fixture()
def graphs_on_cpu(monkeypatch):
    """The graph path taken on this CPU, with a count of captures; state from other tests cleared."""
    captures = []
    monkeypatch.setattr(fixed, "graphs_wanted", lambda device: True)
    monkeypatch.setattr(fixed, "_GRAPH_FAILED", type(fixed._GRAPH_FAILED)())
    fixed.release_all_workspaces()
    fixed.reset_graph_stats()

    def use(capture):
        def counted(*args):
            captures.append(1)
            return capture(*args)

        monkeypatch.setattr(fixed, "capture_step", counted)
        return captures

    yield use
    fixed.release_all_workspaces()


def greedy(model, decoder, steps=12):
    return [c.token_ids for c in decode_variants(model, PROMPTS, [Variant()], steps, 0, decoder=decoder)[0]]


def test_rows_are_rounded_up_by_at_most_an_eighth_above_64():
    assert [fixed.bucketed_rows(n) for n in (1, 8, 9, 64, 65, 96, 129, 300)] == [8, 8, 16, 64, 72, 96, 144, 320]
    for rows in range(64, 2048):
        assert rows <= fixed.bucketed_rows(rows) <= rows * 9 / 8


def test_a_replay_is_checked_at_the_tolerance_of_its_dtype():
    torch.manual_seed(0)
    logits = torch.randn(4, 500) * 8
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        expected = logits.to(dtype)
        # one rounding step of the dtype on every logit: a different kernel, not a bug
        nudged = torch.nextafter(expected.float(), torch.full_like(expected.float(), 1e9)).to(dtype)
        nudged = torch.where(nudged == expected, (expected.float() * (1 + torch.finfo(dtype).eps)).to(dtype), nudged)
        assert fixed.replay_difference(nudged, expected)[0] is None, dtype
        # another step's logits (what a value frozen into the graph gives): caught
        other = torch.randn(4, 500).mul(8).to(dtype)
        assert "largest difference" in fixed.replay_difference(other, expected)[0]
        if dtype == torch.bfloat16:  # the old fixed tolerance (1e-3) turned graphs off at one bf16 rounding step
            assert not torch.allclose(nudged.float(), expected.float(), atol=1e-3, rtol=1e-3)


def test_graphs_are_kept_across_decodes_and_replay_the_growing_caches_tokens(graphs_on_cpu):
    captures = graphs_on_cpu(faithful_capture)
    model = make_tiny_model("llama")
    reference = greedy(model, "dynamic")
    assert greedy(model, "fixed") == reference
    assert greedy(model, "fixed") == reference  # the second decode replays the first one's graph
    stats = fixed.graph_stats()
    assert len(captures) == 1 and stats["captures"] == 1 and stats["failures"] == 0
    assert stats["largest_checked_difference"] == 0.0  # a faithful replay runs the same kernels: the same bits
    # per decode: the captured step, the next replay and the last step checked (a second decode: its first two and last)
    assert stats["checked_replays"] == 3 + 3
    assert stats["replays"] == 2 * 11  # every step after the first, in both decodes
    fixed.release_all_workspaces()  # what the stage runner does when a stage ends
    assert greedy(model, "fixed") == reference and len(captures) == 2


def test_a_value_frozen_into_the_graph_is_caught_at_the_next_step_and_remembered(graphs_on_cpu):
    captures = graphs_on_cpu(frozen_capture)
    model = make_tiny_model("llama")
    reference = greedy(model, "dynamic")
    with pytest.warns(UserWarning, match="the replay of step 2 differs from the eager step"):
        assert greedy(model, "fixed") == reference
    stats = fixed.graph_stats()
    assert stats["failures"] == 1 and "step 2" in stats["why_not"][0]
    fixed.reset_graph_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next decode neither retries nor warns
        assert greedy(model, "fixed") == reference
    assert len(captures) == 1
    stats = fixed.graph_stats()  # the next decode's steps are counted as eager, and the remembered cause given
    assert stats["eager_steps"] == 11 and stats["failures"] == 0 and "step 2" in stats["why_not"][0]
    other = make_tiny_model("llama", seed=3)
    with pytest.warns(UserWarning, match="step 2"):  # another model is tried afresh
        assert greedy(other, "fixed") == greedy(other, "dynamic")
    assert len(captures) == 2


def test_a_failed_capture_falls_back_with_its_own_cause(graphs_on_cpu):
    def failing_capture(step, rewind, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs_on_cpu(failing_capture)
    model = make_tiny_model("qwen2")
    reference = greedy(model, "dynamic")
    with pytest.warns(UserWarning, match="RuntimeError: operation not permitted when stream is capturing"):
        assert greedy(model, "fixed") == reference


def test_a_capture_out_of_memory_is_not_remembered(graphs_on_cpu):
    attempts = []

    def short_of_memory(step, rewind, device):
        attempts.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    graphs_on_cpu(short_of_memory)
    model = make_tiny_model("llama")
    reference = greedy(model, "dynamic")
    with pytest.warns(UserWarning, match="without CUDA graphs in this decode: .*OutOfMemoryError"):
        assert greedy(model, "fixed") == reference
    with pytest.warns(UserWarning, match="in this decode"):  # memory may have been freed since: tried again
        assert greedy(model, "fixed") == reference
    assert len(attempts) == 2


def test_one_workspace_is_kept_for_the_process_and_a_calls_last_batch_shares_its_graph(graphs_on_cpu):
    captures = graphs_on_cpu(faithful_capture)
    first, second = make_tiny_model("llama"), make_tiny_model("llama", seed=4)
    greedy(first, "fixed")
    greedy(second, "fixed")  # the second model's workspace replaces the first's: one static cache at a time
    assert len(fixed._WORKSPACES) == 1 and second in fixed._WORKSPACES and len(captures) == 2
    # 13 prompts 9 at a time: batches of 9 and 4 rows, which alone would round to 16 and 8 rows, and prompts of 3 and
    # 70 tokens, whose lengths alone would round to 64 and 128: the call's widest batch and longest prompt put both
    # batches in one bucket, so one capture serves the call
    from hyperfitting.config import GenerateArgs
    from hyperfitting.generation.decoding import generate

    class Tokenizer:
        pad_token_id, eos_token_id = 0, None

    prompts = [[5 + i, 9, 14] for i in range(9)] + [[7] * 70, [1, 2, 3], [4, 4, 4], [9, 8, 7]]
    args = GenerateArgs(max_new_tokens=6, batch_size=9, decoder="fixed")
    fixed_tokens = generate(first, Tokenizer(), prompts, args, show_progress=False)
    assert len(captures) == 3 and next(iter(fixed._WORKSPACES[first].values())).tokens.shape == (16, 128)
    grown = generate(first, Tokenizer(), prompts, GenerateArgs(max_new_tokens=6, batch_size=9), show_progress=False)
    assert [c.token_ids for c in fixed_tokens] == [c.token_ids for c in grown]


class StandInCuda:
    """What capture_step uses of torch.cuda, with a capture that fails the way CUDA's does after a bad step: the
    step's error first, then capture_end's own (the capture was invalidated)."""

    class Stream:
        def wait_stream(self, other):
            pass

    def __init__(self):
        self.default = self.Stream()
        self.stream = self.default

    def device(self, device):
        return contextlib.nullcontext()

    def current_stream(self):
        return self.stream

    def set_stream(self, stream):
        self.stream = stream

    def synchronize(self):
        pass

    sync_debug_mode = 0

    def get_sync_debug_mode(self):
        return self.sync_debug_mode

    def set_sync_debug_mode(self, mode):
        self.sync_debug_mode = mode

    class CUDAGraph:
        def capture_begin(self):
            pass

        def capture_end(self):
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")


def test_capture_step_raises_the_steps_error_and_gives_the_stream_back():
    cuda = StandInCuda()
    runs = []

    def step():
        runs.append(1)
        if len(runs) == 3:  # the warm-up steps pass; the captured one syncs the host
            raise RuntimeError("operation not permitted when stream is capturing")
        return torch.zeros(1)

    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        fixed.capture_step(step, lambda: None, torch.device("cpu"), cuda=cuda)
    assert cuda.stream is cuda.default


def test_a_step_that_syncs_is_named_by_the_warm_up_and_the_debug_mode_given_back():
    cuda = StandInCuda()
    calls = []

    def step():  # syncs the host, which the stand-in refuses as CUDA's sync debug mode "error" would
        calls.append(cuda.sync_debug_mode)
        if cuda.sync_debug_mode == "error" or len(calls) > 3:
            raise RuntimeError("called a synchronizing CUDA operation")
        return torch.zeros(1)

    with pytest.raises(RuntimeError, match="in its warm-up the step synced the host: called a synchronizing"):
        fixed.capture_step(step, lambda: None, torch.device("cpu"), cuda=cuda)
    # warm-up 1, warm-up 2 refused and taken again without refusal, then the capture
    assert calls == [0, "error", 0, 0] and cuda.sync_debug_mode == 0 and cuda.stream is cuda.default


def test_a_hook_added_between_decodes_gets_a_capture_of_its_own(graphs_on_cpu):
    # A graph replays the forward it captured: a hook added later would never run. The workspace key holds the hooks
    # by identity (and the adapters' state, autocast, TF32, the attention backends), so the next decode captures anew.
    captures = graphs_on_cpu(faithful_capture)
    model = make_tiny_model("llama")
    greedy(model, "fixed")
    greedy(model, "fixed")
    assert len(captures) == 1
    seen = []
    handle = model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(1))
    greedy(model, "fixed")
    assert len(captures) == 2
    handle.remove()
    greedy(model, "fixed")
    assert len(captures) == 3


def test_a_failure_is_remembered_for_the_model_a_bf16_copy_was_made_from():
    from hyperfitting.precision import bf16_copy

    model = make_tiny_model("llama")
    twin = bf16_copy(model)
    assert fixed._failure_key(twin) is model and fixed._failure_key(model) is model


# Operations that make the host wait for the device (or read a device value into Python): none may run in a step.
HOST_SYNCS = ("_local_scalar_dense", "nonzero", "equal", "masked_select", "_unique2", "unique_dim")


class Recorder(TorchDispatchMode):
    """Every operation of a step, with the storages it reads and writes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        tensors = [t.untyped_storage().data_ptr() for t in leaves if isinstance(t, torch.Tensor)]
        # a number passed to an operation is baked into a captured graph: it must not change from step to step
        numbers = [a for a in leaves if isinstance(a, (int, float, bool)) and not isinstance(a, torch.Tensor)]
        self.calls.append((str(func), tensors, numbers))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma2", "gpt2"])
def test_consecutive_steps_issue_the_same_operations_on_the_same_buffers_and_never_sync(architecture):
    # What a replay needs: the step a graph captured is the step every later one would have run (same operations, the
    # same persistent buffers: the workspace, the cache and the weights), and no step reads a device value on the host.
    model = make_tiny_model(architecture)
    if architecture == "gemma2":
        model.config.sliding_window = 64
    state = fixed.FixedState(model, PROMPTS, 1, 10, 0, graphs=False)
    space = state.space
    persistent = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    persistent |= {t.untyped_storage().data_ptr() for t in (space.tokens, space.step_ids, space.positions, space.mask)}
    for layer in space.cache.layers:
        persistent |= {t.untyped_storage().data_ptr() for t in (layer.keys, layer.values, layer.cumulative_length)}
    steps = []
    for token in (3, 4):
        state.space.step_ids.fill_(token)
        with Recorder() as recorder, torch.no_grad():
            state._eager()
        steps.append([(op, [p for p in ptrs if p in persistent], numbers) for op, ptrs, numbers in recorder.calls])
        state.step += 1  # what advance() moves besides the buffers
    assert steps[0] == steps[1]
    assert sum(len(ptrs) for _, ptrs, _ in steps[0]) > len(list(model.parameters()))  # the buffers were seen at all
    assert not [op for op, _, _ in steps[0] if any(f"aten.{name}." in op for name in HOST_SYNCS)]


def test_a_compiled_step_gives_the_eager_steps_tokens(monkeypatch):
    # generate.compile_step: the fixed decoder's step through torch.compile (here its "aot_eager" backend: dynamo's
    # capture and AOT autograd's functionalised graph without generating kernels, which a suite cannot afford).
    from hyperfitting.config import GenerateArgs
    from hyperfitting.errors import ConfigError
    from hyperfitting.generation.decoding import generate

    monkeypatch.setattr(fixed, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(fixed, "_COMPILED", {})
    model = make_tiny_model("llama")

    class Tokenizer:
        pad_token_id, eos_token_id = 0, None

    torch._dynamo.reset()
    for sampled in (False, True, False):
        args = dict(max_new_tokens=10, batch_size=3, do_sample=sampled, temperature=0.8, seed=5)
        eager = generate(model, Tokenizer(), PROMPTS, GenerateArgs(**args, decoder="fixed"), show_progress=False)
        compiled = generate(model, Tokenizer(), PROMPTS, GenerateArgs(**args, compile_step=True), show_progress=False)
        assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]
    assert len(fixed._COMPILED) == 1
    # compiled once: the later decodes (same model, bucket and dtype) reuse the kept workspace and its compiled graph
    assert fixed.graph_stats()["compiled_graphs"] == 1 and fixed.graph_stats()["recompiles"] == 0
    gemma = make_tiny_model("gemma2")
    gemma.config.sliding_window = 64
    with pytest.raises(ConfigError, match="sliding-window layers"):
        generate(gemma, Tokenizer(), PROMPTS, GenerateArgs(max_new_tokens=4, compile_step=True), show_progress=False)
    with pytest.raises(ConfigError, match="compile_step"):
        GenerateArgs(compile_step=True, decoder="dynamic")


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma2", "gpt2"])
def test_a_graph_replay_of_the_real_step_gives_the_growing_caches_tokens(graphs_on_cpu, architecture):
    # The stand-in replays exactly what the capture recorded (the operations, their tensors, their numbers), as a CUDA
    # graph does: a step that kept a position or a length in a Python number, or rebuilt a buffer instead of writing
    # it in place, would replay the captured step's value and part from the growing cache. Two decodes of different
    # prompts share the kept graph.
    captures = graphs_on_cpu(recorded_capture)
    model = make_tiny_model(architecture)
    if architecture == "gemma2":
        model.config.sliding_window = 64
    for prompts in (PROMPTS, [[7, 3, 3, 1, 9, 2], [11, 12, 13, 14, 15, 16], [2, 4]]):
        reference = [c.token_ids for c in decode_variants(model, prompts, [Variant()], 12, 0)[0]]
        replayed = [c.token_ids for c in decode_variants(model, prompts, [Variant()], 12, 0, decoder="fixed")[0]]
        assert replayed == reference
    stats = fixed.graph_stats()
    assert len(captures) == 1 and stats["failures"] == 0 and stats["replays"] == 2 * 11


def test_the_stand_in_replays_a_rebound_buffer_as_a_graph_would_and_the_check_catches_it(graphs_on_cpu, monkeypatch):
    # The control for the test above: advance() rebinding the positions to a new tensor (instead of writing them in
    # place) is the bug a graph hides, since it keeps reading the captured tensor. The replay at step 2 is checked
    # against an eager step, which sees the new tensor: the difference is caught and the decode goes on eagerly.
    graphs_on_cpu(recorded_capture)
    advance = fixed.FixedState.advance

    def rebinding_advance(self, next_tokens):
        self.space.positions = self.space.positions.clone()
        return advance(self, next_tokens)

    monkeypatch.setattr(fixed.FixedState, "advance", rebinding_advance)
    model = make_tiny_model("llama")
    reference = greedy(model, "dynamic")
    with pytest.warns(UserWarning, match="the replay of step 2 differs"):
        assert greedy(model, "fixed") == reference
