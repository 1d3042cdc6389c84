"""Logits processors of the toolkit: the paper's citation blocker (more arrive with the analyses)."""

from __future__ import annotations

from collections import defaultdict

import torch


class CitationBlocker:
    """Forbid any token that would complete an n-gram present in the training data.

    Hyperfitted models memorise their training set; blocking every training n-gram (n=5 in
    the paper) shows whether their diversity survives without copying.
    """

    def __init__(self, training_blocks: torch.Tensor | list[list[int]], n: int = 5):
        self.n = n
        self.next_tokens: dict[tuple[int, ...], set[int]] = defaultdict(set)
        rows = training_blocks.tolist() if isinstance(training_blocks, torch.Tensor) else training_blocks
        for ids in rows:
            for i in range(len(ids) - n + 1):
                self.next_tokens[tuple(ids[i : i + n - 1])].add(ids[i + n - 1])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.n - 1:
            return scores
        prefixes = input_ids[:, -(self.n - 1):].tolist()
        for row, prefix in enumerate(prefixes):
            banned = self.next_tokens.get(tuple(prefix))
            if banned:
                scores[row, list(banned)] = float("-inf")
        return scores
