"""Seeding without side effects: the toolkit seeds what it needs and hands the caller's random state back."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python, NumPy and torch (the CPU and this process's GPU) seeded with ``seed`` inside; the caller's states
    restored after.

    A researcher who seeds a notebook and then calls `hyperfit` gets the same random numbers
    afterwards as without the call.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    # Only this process's own GPU: forking every visible GPU's generator would open a context on each of them from
    # every process (8 processes x 8 GPUs under torchrun).
    devices = [_own_gpu()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _own_gpu() -> int:
    from hyperfitting.distributed import process_state

    device = process_state().device
    return device.index if device.type == "cuda" and device.index is not None else torch.cuda.current_device()
