"""The trunk cache: run the frozen lower blocks once, then train only the top of the network.

When every trainable parameter lies in blocks k..L-1, the input to block k is the same at
every epoch. We capture it once for every training (and held-out) block, then, while
training, swap blocks 0..k-1 for pass-throughs and feed the cached states into block k.
The model's own forward still runs (embeddings, masks, rotary tables, final norm, head,
loss), so loss and gradients equal the uncached path; only blocks 0..k-1 are skipped.

Why pass-throughs rather than slicing the block list: several architectures (Qwen2,
Gemma) look up each block's attention type by its position in the list.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from hyperfitting.models.blocks import find_block_stack
from hyperfitting.progress import progress_bar


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the wanted activation is captured."""


class PassThrough(nn.Module):
    """Stands in for a skipped block: returns its hidden-state input unchanged."""

    def __init__(self, replaced: nn.Module):
        super().__init__()
        # Some model loops read per-block attributes (e.g. the attention type) from the block itself.
        if hasattr(replaced, "attention_type"):
            self.attention_type = replaced.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _replace_hidden_states(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _hidden_states_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block_index: int, input_ids: torch.Tensor) -> torch.Tensor:
    """Input to block ``block_index`` for a batch of full (unpadded) blocks of token ids, (B, T, C)."""
    stack = find_block_stack(model)
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        captured.append(_hidden_states_argument(args, kwargs).detach())
        raise _StopForward

    handle = stack.blocks[block_index].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


class TrunkCache:
    """Inputs to block k for a fixed set of token blocks, in memory or memory-mapped on disk."""

    def __init__(self, first_block: int, states: torch.Tensor | np.ndarray):
        self.first_block = first_block
        self._states = states  # (N, T, C)

    def __len__(self) -> int:
        return self._states.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._states.shape)) * 4

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(self._states, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self._states[np.asarray(index)]))
        return self._states[index]

    @classmethod
    def build(
        cls,
        model: nn.Module,
        first_block: int,
        input_ids: torch.Tensor,
        batch_size: int,
        max_memory_gb: float,
        disk_path: Path | None = None,
        desc: str = "trunk cache",
    ) -> "TrunkCache":
        """Run blocks 0..first_block-1 once over ``input_ids`` (N, T) and keep their output.

        Under several processes the work is split: each process runs the trunk on its own
        ``batch_size`` rows of every round and the rounds are gathered, so the trunk runs once
        per block in all, and every process ends up holding the whole cache (each epoch's
        shuffled batches may ask any process for any block).
        """
        from accelerate.utils import gather

        from hyperfitting.distributed import process_state

        state = process_state()
        world, rank = state.num_processes, state.process_index
        hidden_size = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        n_rows = input_ids.shape[0]
        shape = (n_rows, input_ids.shape[1], hidden_size)
        nbytes = math.prod(shape) * 4
        on_disk = disk_path is not None and nbytes > max_memory_gb * 1e9
        if on_disk:
            disk_path.parent.mkdir(parents=True, exist_ok=True)
            states = np.lib.format.open_memmap(disk_path, mode="w+", dtype=np.float32, shape=shape)
        else:
            states = torch.empty(shape, dtype=torch.float32)
        device = next(model.parameters()).device
        round_rows = batch_size * world
        for start in progress_bar(
            range(0, n_rows, round_rows), desc=desc, unit="batch", leave=False, disable=not state.is_main_process
        ):
            # This process's rows of the round; the last round is padded so every process runs
            # (and gathers) the same shape. Padding rows come last and are dropped below.
            stop = start + (rank + 1) * batch_size
            if world == 1:
                stop = min(stop, n_rows)  # one process needs no padding
            mine = torch.arange(start + rank * batch_size, stop) % n_rows
            batch = capture_block_inputs(model, first_block, input_ids[mine].to(device)).float()
            if world > 1:
                batch = gather(batch)  # (world * batch_size, T, C), in process order
            real = min(round_rows, n_rows - start)
            if on_disk:
                states[start : start + real] = batch[:real].cpu().numpy()
            else:
                states[start : start + real] = batch[:real].cpu()
        if on_disk:
            states.flush()
        return cls(first_block, states)


@contextmanager
def start_at_block(model: nn.Module, first_block: int) -> Iterator["callable"]:
    """Within the block, the model skips blocks below ``first_block`` and takes their output from ``feed``.

    Usage::

        with start_at_block(model, k) as feed:
            feed(cached_states)          # (B, T, C) input to block k for the next forward
            loss = model(input_ids=ids, labels=ids).loss
    """
    stack = find_block_stack(model)
    originals = [stack.blocks[i] for i in range(first_block)]
    pending: dict[str, torch.Tensor] = {}

    def substitute(module, args, kwargs):
        if "hidden" not in pending:
            raise RuntimeError("start_at_block: call feed(states) before each forward pass")
        hidden = pending.pop("hidden")
        return _replace_hidden_states(args, kwargs, hidden.to(_hidden_states_argument(args, kwargs).dtype))

    for i, block in enumerate(originals):
        stack.blocks[i] = PassThrough(block)
    handle = stack.blocks[first_block].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        yield lambda hidden: pending.__setitem__("hidden", hidden)
    finally:
        handle.remove()
        for i, block in enumerate(originals):
            stack.blocks[i] = block
