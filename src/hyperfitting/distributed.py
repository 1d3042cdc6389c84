"""The one place that asks accelerate which process this is.

accelerate treats a torchrun job on a machine without an accelerator as *one* process (its
distributed type stays NO, every process believes it is process 0 of 1) unless it is told
``cpu=True``. Every caller therefore goes through :func:`process_state`, so CPU-only jobs under
torchrun / accelerate launch really split the work (gloo backend).
"""

from __future__ import annotations

import os

import torch


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun / accelerate launch job (only rank 0 writes files).

    Read from the launcher's environment, so asking sets nothing up (run folders ask before any model loads)."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """Barrier across processes, a no-op in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        process_state().wait_for_everyone()


def has_accelerator() -> bool:
    """A GPU (or other device) that PyTorch can use."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()


def process_state():
    """accelerate's shared ``PartialState`` (process index, count, device, barriers), set up for CPUs too."""
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator())


def make_accelerator(**kwargs):
    """An ``accelerate.Accelerator`` that agrees with :func:`process_state` about CPU-only jobs."""
    from accelerate import Accelerator

    process_state()  # the first construction fixes the shared state; make it ours
    return Accelerator(cpu=not has_accelerator(), **kwargs)


def my_share(n_items: int) -> range:
    """This process's contiguous slice of ``range(n_items)``: concatenating the shares in process order restores the
    order."""
    state = process_state()
    per, extra = divmod(n_items, state.num_processes)
    start = state.process_index * per + min(state.process_index, extra)
    return range(start, start + per + (state.process_index < extra))


def gather_in_order(mine: list) -> list:
    """Every process's list, concatenated in process order, on every process (one process: unchanged)."""
    state = process_state()
    if state.num_processes == 1:
        return mine
    from accelerate.utils import gather_object

    return gather_object(list(mine))  # all_gather_object, then one level flattened: the concatenation


def min_over_processes(value: int) -> int:
    """The smallest of every process's ``value`` (the value itself in one process): a choice all processes must
    share."""
    state = process_state()
    if state.num_processes == 1:
        return value
    tensor = torch.tensor(int(value), device=state.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor)
