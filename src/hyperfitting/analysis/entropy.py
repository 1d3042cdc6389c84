"""Mean next-token entropy, and the entropy-matched temperature T* that claim 1 samples the base model at."""

from __future__ import annotations

import math

import torch


def mean_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk: int = 512) -> float:
    """Mean entropy (nats) of softmax(logits / T) over rows."""
    total = 0.0
    for start in range(0, len(logits), chunk):
        log_probs = torch.log_softmax(logits[start : start + chunk] / temperature, dim=-1)
        total += float(-(log_probs.exp() * log_probs).sum(-1).sum())
    return total / max(1, len(logits))


def entropy_matched_temperature(
    logits: torch.Tensor, target: float, low: float = 0.01, high: float = 10.0, tolerance: float = 1e-3
) -> float:
    """Bisection for T with mean_entropy(logits, T) = target (entropy rises with T)."""
    if mean_entropy(logits, low) > target:
        return low
    if mean_entropy(logits, high) < target:
        return high
    for _ in range(100):
        middle = math.sqrt(low * high)  # temperatures live on a log scale
        value = mean_entropy(logits, middle)
        if abs(value - target) <= tolerance:
            return middle
        low, high = (middle, high) if value < target else (low, middle)
    return math.sqrt(low * high)
