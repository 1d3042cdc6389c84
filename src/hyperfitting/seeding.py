"""Seeding without side effects: the toolkit seeds what it needs and hands the caller's random state back."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python, NumPy and torch (CPU and every GPU) seeded with ``seed`` inside; the caller's states restored after.

    A researcher who seeds a notebook and then calls `hyperfit` gets the same random numbers
    afterwards as without the call.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
