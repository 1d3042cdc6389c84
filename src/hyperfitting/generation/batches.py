"""What every decoding path shares: a continuation with its per-step statistics, a left-padded batch of prompts, and a
look at what the model's forward takes."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Sequence

import torch


SYNC_EVERY = 16
"""Decoding steps between two looks of the host at the rows (have they all reached EOS?): a look waits for the
device."""


@dataclass
class Continuation:
    prompt_ids: list[int]
    token_ids: list[int]
    entropy: list[float] = field(default_factory=list)
    """Entropy (nats) of the model's unprocessed next-token distribution at each step."""
    top1_prob: list[float] = field(default_factory=list)
    chosen_prob: list[float] = field(default_factory=list)
    """Probability of the emitted token under the unprocessed distribution."""
    decoded_entropy: list[float] = field(default_factory=list)
    """Entropy of the distribution actually decoded from (after temperature and other processors)."""


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a batch padded on the left, so every row's next token goes at the end."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def accepts(model, name: str) -> bool:
    """Whether the model's forward (through a PEFT wrapper) takes the keyword ``name`` (logits_to_keep,
    cache_position)."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return name in inspect.signature(forward).parameters


def text_config(model):
    """The config of the model's text decoder (a multimodal model's language half; the model's own config otherwise)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
