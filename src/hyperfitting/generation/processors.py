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

    def completes(self, ids: list[int], start: int) -> list[bool]:
        """For each position from ``start`` on, whether its token completes an n-gram of the training data."""
        k = self.n - 1
        return [i >= k and ids[i] in self.next_tokens.get(tuple(ids[i - k:i]), ()) for i in range(start, len(ids))]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.n - 1:
            return scores
        prefixes = input_ids[:, -(self.n - 1):].tolist()
        for row, prefix in enumerate(prefixes):
            banned = self.next_tokens.get(tuple(prefix))
            if banned:
                scores[row, list(banned)] = float("-inf")
        return scores


class StaticLogitBias:
    """Add a fixed vector to the logits at every step: ``z + alpha * delta``.

    The static-reweighting hypothesis says hyperfitting amounts to such a vector; if so,
    decoding the base model with it should recover the diversity gain.
    """

    def __init__(self, delta: torch.Tensor, alpha: float = 1.0):
        self.delta = delta.float()
        self.alpha = alpha

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.alpha * self.delta.to(scores.device)


class CompanionModel:
    """Runs a second model in step with the decoding loop, with its own KV cache.

    ``begin`` receives the left-padded prompts; each later call feeds the token the loop
    just appended, so the companion sees exactly the same sequence as the decoding model.
    """

    def __init__(self, model):
        self.model = model

    def begin(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.attention_mask = attention_mask
        self.positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.seen = 0  # tokens of input_ids already fed

    @torch.no_grad()
    def logits(self, input_ids: torch.LongTensor) -> torch.FloatTensor:
        if self.seen == 0:
            step_ids, positions = input_ids, self.positions
        else:
            new = input_ids.shape[1] - self.seen
            step_ids = input_ids[:, -new:]
            self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(step_ids)], dim=1)
            positions = self.positions[:, -1:] + torch.arange(1, new + 1, device=input_ids.device)
            self.positions = positions
        self.seen = input_ids.shape[1]
        out = self.model(input_ids=step_ids, attention_mask=self.attention_mask, position_ids=positions,
                         cache=self.cache, use_cache=True)
        return out.logits[:, -1, :].float()


class RankTransplant(CompanionModel):
    """Keep the decoding model's *ranking* of tokens, but give the r-th ranked token the
    probability of the companion model's r-th ranked token (its sorted probability profile).

    Decoding the hyperfitted model with the base model as companion asks "is the hyperfitted
    ranking enough?"; decoding the base model with the hyperfitted companion asks "is the
    hyperfitted sharpness enough?".
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        profile = torch.log_softmax(self.logits(input_ids), dim=-1).sort(dim=-1, descending=True).values  # (B, V)
        order = scores.argsort(dim=-1, descending=True)  # the decoding model's ranking
        transplanted = torch.empty_like(scores)
        transplanted.scatter_(1, order, profile)
        return transplanted
