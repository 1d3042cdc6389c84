"""Planted truths: the base model with one change whose mechanism is known by construction.

A verdict rule is only as good as what it decides on models whose answer is known. Each planted model
is a copy of the base model that shares its weights and adds one mechanism through hooks, so every
analysis, decoder and teacher-forced pass of the toolkit runs on it unchanged:

- ``static-bias``: z + b, one fixed offset per vocabulary entry (context-free);
- ``affine``: s * z + b, a fixed scale and offset per vocabulary entry (context-free, outside a
  single-temperature null);
- ``temperature``: z / T (greedy output unchanged);
- ``repetition-penalty``: transformers' repetition penalty on every token already in the text
  (prompt and continuation), in the model itself: context-dependent by construction;
- ``final-expansion``: the last block's output partially whitened (its spectrum flattened), so
  the effective dimension rises there and nowhere before it;
- ``middle-expansion``: the same in the middle block, undone at the next block's input, so the
  model's outputs are the base model's and only that block's states differ.

The context-free offsets b push down the tokens the base model predicts most often (its mean
next-token probability over the given training blocks), which makes greedy text less repetitive
without any dependence on context.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from hyperfitting.models.blocks import find_block_stack

STATIC_STRENGTH = 16.0  # logits taken from the most repeated token (quick study: base greedy TTR 0.294 -> 0.383)
PLANTED_CASES = ("static-bias", "affine", "temperature", "repetition-penalty", "final-expansion", "middle-expansion")


@dataclass(frozen=True)
class Planting:
    """What was planted, with the numbers that define it (recorded beside every verdict it feeds)."""

    case: str
    mechanism: str
    parameters: dict = field(default_factory=dict)


def shared_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers are the original's tensors: hooks on the copy leave
    the original as it was, and no weight is duplicated."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def plant(
    base: nn.Module,
    case: str,
    fit_blocks: torch.Tensor,
    strength: float | None = None,
    habits: torch.Tensor | None = None,
) -> nn.Module:
    """The base model with ``case`` planted (see the module's docstring). ``fit_blocks`` (N, T): training text, from
    which the context-free offsets and the whitening are set (never the held-out text the analyses measure on).
    ``habits`` (V,) in [0, 1]: which tokens the context-free offsets push down, and how far (default: the base model's
    mean next-token probability over ``fit_blocks``, relative to its largest; `hyperfit validate` passes
    :func:`loop_habits`). The returned model carries ``.planted``."""
    if case not in PLANTED_CASES:
        raise ValueError(f"Unknown planted case {case!r}; choose one of {', '.join(PLANTED_CASES)}.")
    model = shared_copy(base)
    model.eval()
    if case == "static-bias":
        offset = -(strength or STATIC_STRENGTH) * (habits if habits is not None else habit_weights(base, fit_blocks))
        _transform_logits(model, lambda z, _: z + offset.to(z))
        planting = Planting(
            case,
            f"z + b: a fixed offset per token, {int((offset < -0.1).sum())} tokens pushed down by 0.1 to "
            f"{-float(offset.min()):.1f} logits",
            {"strength": strength or STATIC_STRENGTH},
        )
    elif case == "affine":
        offset = -(strength or STATIC_STRENGTH) * (habits if habits is not None else habit_weights(base, fit_blocks))
        generator = torch.Generator().manual_seed(0)
        scale = torch.exp(0.2 * torch.randn(offset.shape[0], generator=generator))
        # Each token's logit scaled about its own mean over the fitting text (its level kept, its swing changed), then
        # offset: s * z + ((1 - s) * mean + b), one fixed affine map per token.
        shift = (1 - scale) * mean_logits(base, fit_blocks) + offset
        _transform_logits(model, lambda z, _: z * scale.to(z) + shift.to(z))
        planting = Planting(
            case,
            "s * z + c: a fixed scale per token (log-normal, 20% spread, about the token's mean logit) "
            "and the static offset",
            {"strength": strength or STATIC_STRENGTH, "scale_spread": 0.2},
        )
    elif case == "temperature":
        temperature = strength or 0.7
        _transform_logits(model, lambda z, _: z / temperature)
        planting = Planting(
            case, f"z / {temperature:g}: a temperature, greedy output unchanged", {"temperature": temperature}
        )
    elif case == "repetition-penalty":
        penalty = strength or 1.3
        history = _TokenHistory(model)

        def penalised(z: torch.Tensor, _) -> torch.Tensor:
            seen = history.present(z.shape[1])
            return torch.where(seen, torch.where(z > 0, z / penalty, z * penalty), z)

        _transform_logits(model, penalised)
        planting = Planting(
            case,
            f"repetition penalty {penalty:g} on every token already in the text (transformers' rule)",
            {"penalty": penalty},
        )
    else:
        blocks = find_block_stack(model).blocks
        index = len(blocks) - 1 if case == "final-expansion" else (len(blocks) - 1) // 2
        power = strength or 0.5
        whiten, unwhiten = partial_whitening(base, fit_blocks, index, power)
        _map_output(blocks[index], whiten)
        if case == "middle-expansion":
            _map_input(blocks[index + 1], unwhiten)
        planting = Planting(
            case,
            f"block {index}'s output partially whitened (covariance eigenvalues to the power {1 - power:g})"
            + (f", undone at block {index + 1}'s input" if case == "middle-expansion" else ""),
            {"block": index, "power": power},
        )
    model.planted = planting
    return model


# ------------------------------------------------------------------------------ what each mechanism is fitted on


@torch.no_grad()
def _forward_blocks(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8):
    device = next(model.parameters()).device
    for start in range(0, len(blocks), batch_size):
        yield model(input_ids=blocks[start : start + batch_size].to(device), use_cache=False)


def mean_logits(base: nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Per token, the base model's mean logit over ``blocks``."""
    total, count = None, 0
    for out in _forward_blocks(base, blocks):
        logits = out.logits.float()
        total = logits.sum((0, 1)) if total is None else total + logits.sum((0, 1))
        count += logits.shape[0] * logits.shape[1]
    return (total / count).cpu()


@torch.no_grad()
def loop_habits(base: nn.Module, blocks: torch.Tensor, opening: int, new_tokens: int) -> torch.Tensor:
    """Per token, how often the base model's greedy continuations of the blocks' openings (their first ``opening``
    tokens: training text, never the held-out prompts) repeat it, relative to the most repeated: the static offsets
    push down what its loops are made of, so greedy text becomes more diverse without any dependence on context."""
    device = next(base.parameters()).device
    openings = blocks[:, :opening].to(device)
    out = base.generate(
        input_ids=openings,
        attention_mask=torch.ones_like(openings),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
    )[:, opening:].cpu()
    counts = torch.zeros(base.get_output_embeddings().weight.shape[0])
    for row in out:
        counts += (torch.bincount(row, minlength=len(counts)) - 1).clamp(min=0).float()  # occurrences after the first
    return counts / counts.max().clamp(min=1)


def habit_weights(base: nn.Module, blocks: torch.Tensor) -> torch.Tensor:
    """Per token, the base model's mean next-token probability over ``blocks`` relative to its largest: the offsets
    -strength * weight push down what it predicts most (punctuation, "the"), whatever the context."""
    total = None
    for out in _forward_blocks(base, blocks):
        probs = torch.softmax(out.logits.float(), -1).sum((0, 1))
        total = probs if total is None else total + probs
    return (total / total.max()).cpu()


def partial_whitening(
    base: nn.Module, blocks: torch.Tensor, index: int, power: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, A^-1): A = V diag(lambda^(-power/2)) V^T from the covariance of block ``index``'s output on ``blocks``,
    scaled to keep the states' total variance. x A has covariance eigenvalues lambda^(1 - power): the spectrum is
    flatter, so the participation ratio rises, and A is invertible, so the change can be undone exactly."""
    states = []
    block = find_block_stack(base).blocks[index]
    handle = block.register_forward_hook(
        lambda module, args, output: states.append(_hidden(output).detach().float().flatten(0, -2))
    )
    try:
        for _ in _forward_blocks(base, blocks):
            pass
    finally:
        handle.remove()
    x = torch.cat(states).double()
    covariance = torch.cov(x.T)
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp(min=values.max() * 1e-9)
    weights = values ** (-power / 2)
    weights *= (values.sum() / (values * weights**2).sum()).sqrt()  # the same total variance after as before
    whiten = (vectors * weights) @ vectors.T
    unwhiten = (vectors / weights) @ vectors.T
    return whiten.float(), unwhiten.float()


# ------------------------------------------------------------------------------ hooks


def _transform_logits(model: nn.Module, transform: Callable[[torch.Tensor, nn.Module], torch.Tensor]) -> None:
    """Every logit the model returns, as ``transform(logits (B, S, V), model)``: a hook on its output embeddings."""
    head = model.get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: transform(output, model))


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _map_output(block: nn.Module, matrix: torch.Tensor) -> None:
    block.register_forward_hook(
        lambda module, args, output: _replace_hidden(output, _hidden(output) @ matrix.to(_hidden(output)))
    )


def _map_input(block: nn.Module, matrix: torch.Tensor) -> None:
    def hook(module, args, kwargs):
        if args:
            return (args[0] @ matrix.to(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] @ matrix.to(kwargs["hidden_states"])}

    block.register_forward_pre_hook(hook, with_kwargs=True)


class _TokenHistory:
    """Which tokens each row's text holds so far, at every position of the current forward pass.

    A forward pass over whole sequences (teacher forcing) sees its history in its input; a decoding step sees one new
    token, so the history of each KV cache is kept beside it (weakly: it goes with the cache) and carried over when
    the cache's rows are repeated for several decoding variants (row r of the wider batch is row r // k before).
    Padding (attention mask 0) is not text.
    """

    def __init__(self, model: nn.Module):
        self.by_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.current: torch.Tensor | None = None  # (B, S, V) bool
        model.register_forward_pre_hook(self._before, with_kwargs=True)

    def _before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        vocabulary = module.get_output_embeddings().weight.shape[0]
        rows, length = ids.shape
        seen = self.by_cache.get(cache) if cache is not None else None
        if seen is not None and len(seen) != rows:
            seen = seen.repeat_interleave(rows // len(seen), dim=0)
        seen = seen.clone() if seen is not None else torch.zeros(rows, vocabulary, dtype=torch.bool, device=ids.device)
        real = mask[:, -length:].bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        present = torch.empty(rows, length, vocabulary, dtype=torch.bool, device=ids.device)
        arange = torch.arange(rows, device=ids.device)
        for position in range(length):
            seen[arange[real[:, position]], ids[real[:, position], position]] = True
            present[:, position] = seen
        self.current = present
        if cache is not None:
            self.by_cache[cache] = seen
        return None

    def present(self, positions: int) -> torch.Tensor:
        """The history at the last ``positions`` positions (the model may return logits for the last few only)."""
        return self.current[:, -positions:]
