"""Teacher forcing: a model's next-token logits along given sequences, reduced where they are computed.

The analyses read models this way (held-out text, each model's own greedy paths): full-vocabulary
rows for a sample of positions, and per-step summaries (ranks, entropies, the choices of static
models) for every step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from hyperfitting.generation.decoding import Continuation
from hyperfitting.precision import full_precision


def teacher_forced_logits(
    model,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    batch_size: int = 8,
    keep: dict[int, np.ndarray] | None = None,
    reduce: Callable[[int, torch.Tensor], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """For each sequence i, in order, the logits (L_i, V) predicting tokens ``sequences[i][starts[i]:]``.

    ``keep`` (sequence -> row indices) keeps only those rows, and ``reduce(i, logits)`` replaces
    them with what the caller needs from them (argmaxes, ranks), before anything is gathered: a
    caller never holds, or sends, more than its statistic reads. The logits, the kept rows and the
    reductions stay on the model's device (a GPU reduces its own rows; nothing of the vocabulary
    crosses to the host unless the caller moves it). Under several processes each scores a
    contiguous share of the sequences and the shares are gathered, on the host, so every process
    gets every sequence's (kept, reduced) result.
    """
    from hyperfitting.distributed import gather_in_order, my_share, process_state

    def kept(i: int, logits: torch.Tensor) -> Any:
        if keep is not None:
            logits = logits[torch.from_numpy(keep.get(i, np.empty(0, dtype=np.int64))).to(logits.device)]
        return logits if reduce is None else reduce(i, logits)

    if process_state().num_processes == 1:  # stream: callers that keep only an argmax never hold every logit
        for i, logits in _teacher_forced_logits_here(model, sequences, starts, batch_size):
            yield i, kept(i, logits)
        return
    share = my_share(len(sequences))
    mine = [
        (share.start + i, to_host(kept(share.start + i, logits)))
        for i, logits in _teacher_forced_logits_here(
            model, sequences[share.start : share.stop], starts[share.start : share.stop], batch_size
        )
    ]
    yield from gather_in_order(mine)


@torch.no_grad()
def _teacher_forced_logits_here(model, sequences, starts, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    from hyperfitting.generation.decoding import accepts

    from hyperfitting.generation import memory

    device = next(model.parameters()).device
    can_skip = accepts(model, "logits_to_keep")
    memory.note(
        memory.teacher_forcing_bytes(model, min(batch_size, len(sequences)), max(map(len, sequences), default=0))
    )
    for first in range(0, len(sequences), batch_size):
        rows = sequences[first : first + batch_size]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):  # right padding: positions need no adjustment
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        # The head runs only from the first scored position on: the prompts' logits are never read, and on a large
        # vocabulary (a 262k-token judge) the head is most of the cost.
        offset = max(0, min(starts[first : first + len(rows)]) - 1) if can_skip else 0
        keep = {"logits_to_keep": width - offset} if can_skip else {}
        with full_precision(device):  # a measurement: float32 whatever model.precision says
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **keep
            ).logits.float()
        for r, row in enumerate(rows):
            start = starts[first + r]
            yield first + r, logits[r, start - 1 - offset : len(row) - 1 - offset]


def to_host(value: Any) -> Any:
    """``value`` with every tensor in it (in dicts, lists and tuples too) copied to the host."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(item) for item in value)
    return value


def sample_positions(total: int, cap: int, seed: int = 0) -> np.ndarray:
    """A fixed subset of at most ``cap`` positions, so memory stays bounded and models see the same ones."""
    if total <= cap:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=cap, replace=False))


def sample_block_positions(blocks: torch.Tensor, cap: int, seed: int = 0) -> np.ndarray:
    """Flat positions in ``blocks`` (N, T) for hidden-state geometry, position 0 of each block left out.

    The first position sees no context (its state is the same for every block starting with
    that token) and carries the massive activations that dominate a covariance.
    """
    n, length = blocks.shape
    candidates = np.array([i for i in range(n * length) if i % length], dtype=np.int64)
    return candidates[sample_positions(len(candidates), cap, seed)]


def stacked_logits(model, sequences, starts, cap: int) -> torch.Tensor:
    """Teacher-forced logits at ``cap`` positions sampled from all of them, in position order: (P, V).

    The positions are drawn first (from the sequences' lengths alone) and only their logits are
    kept, so memory grows with ``cap``, not with the text scored. They stay on the model's device,
    where the statistics that read them (entropies, rankings, the static fits) run.
    """
    lengths = [len(sequence) - start for sequence, start in zip(sequences, starts)]
    bounds = np.cumsum([0, *lengths])
    chosen = sample_positions(int(bounds[-1]), cap)
    keep = {i: chosen[(chosen >= bounds[i]) & (chosen < bounds[i + 1])] - bounds[i] for i in range(len(sequences))}
    rows = [logits for _, logits in teacher_forced_logits(model, sequences, starts, keep=keep)]
    return torch.cat(rows) if rows else torch.empty(0)


StepChoice = Callable[[torch.Tensor], torch.Tensor]
"""Logits (L, V) of L steps -> the token some decision rule picks at each step (L,)."""


def ranks_of_chosen(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Rank (1 = top) of each chosen token under ``logits``, without ranking the whole vocabulary."""
    return (logits > logits.gather(1, chosen[:, None])).sum(1) + 1


def step_summary(
    logits: torch.Tensor,
    chosen: torch.Tensor | None,
    choices: dict[str, StepChoice] | None = None,
    keep_rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What the path statistics read from the logits (L, V) of L steps whose tokens were ``chosen`` (L,).

    ``chosen_rank``: each chosen token's rank (left out when ``chosen`` is None); one entry per named decision rule in
    ``choices`` (its pick at every step); ``kept``: the full rows at ``keep_rows``, for statistics that need them.
    """
    summary = {"chosen_rank": ranks_of_chosen(logits, chosen)} if chosen is not None else {}
    summary.update({name: pick(logits) for name, pick in (choices or {}).items()})
    if keep_rows is not None:
        summary["kept"] = logits[keep_rows]
    return summary


def path_scan(
    model,
    prompts,
    continuations: Sequence[Continuation],
    choices: dict[str, StepChoice] | None = None,
    keep_steps: np.ndarray | None = None,
    chosen_rank: bool = True,
) -> dict[str, torch.Tensor]:
    """One teacher-forced pass of ``model`` along the continuations, keeping only what the statistics read.

    The step summaries (:func:`step_summary`) of every continuation, concatenated in step order and brought to the host,
    and the full logit rows at ``keep_steps`` (sorted flat step indices, drawn before the pass; ``kept``, left on the
    model's device) only. Memory grows with the steps kept, not with (steps x vocabulary): on a 262k-token vocabulary
    the whole path of 16 prompts x 96 tokens would be 1.6 GB per model.
    """
    sequences = [list(p) + list(c.token_ids) for p, c in zip(prompts, continuations)]
    bounds = np.cumsum([0, *(len(c.token_ids) for c in continuations)])
    keep_steps = None if keep_steps is None else np.asarray(keep_steps, dtype=np.int64)

    def reduce(i: int, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        chosen = (
            torch.tensor(list(continuations[i].token_ids), dtype=torch.long, device=logits.device)
            if chosen_rank
            else None
        )
        rows = None
        if keep_steps is not None:
            mine = keep_steps[(keep_steps >= bounds[i]) & (keep_steps < bounds[i + 1])] - bounds[i]
            rows = torch.from_numpy(mine).to(logits.device)
        return step_summary(logits, chosen, choices, rows)

    parts = [
        summary for _, summary in teacher_forced_logits(model, sequences, [len(p) for p in prompts], reduce=reduce)
    ]
    if not parts:
        return {}
    joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    return {key: value if key == "kept" else value.cpu() for key, value in joined.items()}


def overrides_per_prompt(
    base, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> tuple[list[int], list[int]]:
    """Per continuation, (steps whose token is not the base model's top-1, steps), teacher-forcing the base model along
    it."""
    sequences = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    overrides, steps = [0] * len(sequences), [len(c) for c in continuations]

    def count(i: int, logits: torch.Tensor) -> torch.Tensor:  # on the device: one number per continuation crosses
        return (logits.argmax(-1) != torch.tensor(list(continuations[i]), dtype=torch.long, device=logits.device)).sum()

    for i, overridden in teacher_forced_logits(base, sequences, [len(p) for p in prompts], reduce=count):
        overrides[i] = int(overridden)
    return overrides, steps


def top1_agreement(base, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> float:
    """Share of decoded tokens that are the base model's top-1 at their step (teacher forcing the base model along the
    paths).

    Measured for every row, the base model's own included: sampling picks the base argmax only
    some of the time, greedy decoding of the base every time (up to numerical ties).
    """
    overrides, steps = overrides_per_prompt(base, prompts, continuations)
    total = sum(steps)
    return 1 - sum(overrides) / total if total else float("nan")
