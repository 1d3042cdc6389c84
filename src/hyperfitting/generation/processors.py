"""Logits processors of the toolkit: the paper's citation blocker (more arrive with the analyses)."""

from __future__ import annotations

from collections import defaultdict

import torch


class CitationBlocker:
    """Forbid any token that would complete an n-gram present in the training data.

    Hyperfitted models memorise their training set; blocking every training n-gram (n=5 in
    the paper) shows whether their diversity survives without copying.

    At a decoding step the lookup runs where the scores are, with no host sync: the training
    n-grams form a table sorted by a hash of their first n-1 tokens, each row's last n-1 tokens
    are hashed and found by binary search, and the candidates are checked token by token (so a
    hash collision can never block a token).
    """

    def __init__(self, training_blocks: torch.Tensor | list[list[int]], n: int = 5):
        self.n = n
        self.next_tokens: dict[tuple[int, ...], set[int]] = defaultdict(set)
        rows = training_blocks.tolist() if isinstance(training_blocks, torch.Tensor) else training_blocks
        for ids in rows:
            for i in range(len(ids) - n + 1):
                self.next_tokens[tuple(ids[i : i + n - 1])].add(ids[i + n - 1])
        self._tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def completes(self, ids: list[int], start: int) -> list[bool]:
        """For each position from ``start`` on, whether its token completes an n-gram of the training data."""
        k = self.n - 1
        return [i >= k and ids[i] in self.next_tokens.get(tuple(ids[i - k : i]), ()) for i in range(start, len(ids))]

    @staticmethod
    def _hash(prefixes: torch.Tensor) -> torch.Tensor:
        """A polynomial hash of each row of (M, n-1) token ids (int64, wrapping)."""
        key = torch.zeros(len(prefixes), dtype=torch.long, device=prefixes.device)
        for column in prefixes.unbind(1):
            key = key * 1_000_003 + column
        return key

    def _table(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(keys sorted, their prefixes, the token each n-gram continues with, the longest run of one key), on
        ``device``."""
        if device not in self._tables:
            pairs = [(*prefix, token) for prefix, tokens in self.next_tokens.items() for token in sorted(tokens)]
            grams = torch.tensor(pairs, dtype=torch.long).reshape(-1, self.n)
            keys = self._hash(grams[:, :-1])
            order = keys.argsort(stable=True)
            keys, grams = keys[order], grams[order]
            span = int(torch.unique_consecutive(keys, return_counts=True)[1].max()) if len(keys) else 0
            self._tables[device] = (keys.to(device), grams[:, :-1].to(device), grams[:, -1].to(device), span)
        return self._tables[device]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.n - 1:
            return scores
        keys, prefixes, tokens, span = self._table(scores.device)
        if not span:
            return scores
        prefix = input_ids[:, -(self.n - 1) :].to(scores.device)
        key = self._hash(prefix)
        first = torch.searchsorted(keys, key)  # (B,): where each row's key would start
        candidates = (first[:, None] + torch.arange(span, device=scores.device)).clamp(max=len(keys) - 1)  # (B, span)
        found = (keys[candidates] == key[:, None]) & (prefixes[candidates] == prefix[:, None, :]).all(-1)
        vocabulary = scores.shape[-1]
        # Found tokens are marked in a (B, V + 1) mask; the rest point at the extra column, which is dropped.
        banned = torch.zeros((len(scores), vocabulary + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(found, tokens[candidates], vocabulary), True)
        return scores.masked_fill_(banned[:, :vocabulary], float("-inf"))


class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram already in the row (prompt included): transformers'
    ``NoRepeatNGramLogitsProcessor``, as a window match on the device instead of a Python loop over each row's
    n-grams with a host copy at every step.

    Each step compares every window of n-1 tokens of a row with its last n-1 tokens; the token that followed each
    matching window is banned.
    """

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"no-repeat n-gram size must be at least 1, got {n}")
        self.n = n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length, vocabulary = input_ids.shape[1], scores.shape[-1]
        if length < self.n:  # no whole n-gram in the row yet: nothing to repeat
            return scores
        ids = input_ids.to(scores.device)
        if self.n == 1:  # every token seen so far
            windows, found = ids[:, :, None], torch.ones_like(ids, dtype=torch.bool)
        else:
            windows = ids.unfold(1, self.n, 1)  # (B, length - n + 1, n): every n-gram of the row
            found = (windows[:, :, :-1] == ids[:, None, length - self.n + 1 :]).all(-1)
        banned = torch.zeros((len(scores), vocabulary + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(found, windows[:, :, -1], vocabulary), True)
        return scores.masked_fill_(banned[:, :vocabulary], float("-inf"))


class StaticLogitBias:
    """Add a fixed vector to the logits at every step: ``z + alpha * delta``.

    The static-reweighting hypothesis says hyperfitting amounts to such a vector; if so,
    decoding the base model with it should recover the diversity gain.
    """

    def __init__(self, delta: torch.Tensor, alpha: float = 1.0):
        self.delta = delta.float()
        self.alpha = alpha

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.delta.device != scores.device:  # moved once, not copied at every step
            self.delta = self.delta.to(scores.device)
        return scores + self.alpha * self.delta


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
        out = self.model(
            input_ids=step_ids,
            attention_mask=self.attention_mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
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


class RevertUnexplained(CompanionModel):
    """Decode the hyperfitted model greedily, but wherever its choice overrides the companion (base) model's top-1 with
    a token that ``null_choice`` (a fitted context-free model of the base logits) would not choose, take the null's
    choice instead: the text the hyperfitted model writes without its unexplained overrides (claim 3's causal check).
    ``reverted`` and ``steps`` count the steps changed and seen."""

    def __init__(self, model, null_choice):
        super().__init__(model)
        self.null_choice = null_choice
        self.reverted = self.steps = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        base = self.logits(input_ids).to(scores.device)
        own, top1, null = scores.argmax(-1), base.argmax(-1), self.null_choice(base).to(scores.device)
        revert = (own != top1) & (own != null)
        self.reverted += int(revert.sum())
        self.steps += len(own)
        forced = torch.full_like(scores, float("-inf")).scatter_(1, null[:, None], 0.0)
        return torch.where(revert[:, None], forced, scores)
