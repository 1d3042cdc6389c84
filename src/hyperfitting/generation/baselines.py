"""Decoding methods that hyperfitting is compared with: "better than what?"

Each method decodes the *base* model at the generation table's budget (same prompts, same number
of new tokens). Most are logits processors from transformers (min-p, typical, eta, epsilon,
repetition penalty, no-repeat-n-gram) run through the toolkit's one decoding path
(`generation/decoding.py`); contrastive search is the project's own (`generation/contrastive.py`);
beam search is the one exception: it keeps several hypotheses per prompt, which a
one-token-per-row loop cannot, so it goes through transformers' `generate`.

Sampled methods decode every seed of every prompt in one batch: row s * P + p is seed s of prompt
p, and samples from its own generator, so the text does not depend on batching. Methods of one
kind decode together (`decode_group`): every sampled method in one wide batch, and the greedy
methods with a processor in another, one forward pass per step for all of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from hyperfitting.config import BaselinesArgs, GenerateArgs, RunConfig, replace
from hyperfitting.distributed import process_state
from hyperfitting.generation.decoding import Continuation, generate, left_padded
from hyperfitting.generation.processors import NoRepeatNGram
from hyperfitting.progress import progress_bar

SAMPLED = ("top-p", "min-p", "typical", "eta", "epsilon")
GREEDY_WITH_PROCESSOR = ("repetition-penalty", "no-repeat-ngram")


@dataclass(frozen=True)
class Method:
    name: str
    settings: str
    """The method's settings in words, for the table."""
    sampled: bool


def describe(name: str, config: RunConfig) -> Method:
    """A method of `baselines.methods` with the settings this config gives it."""
    b, a = config.baselines, config.analysis
    settings = {
        "greedy": "argmax at every step",
        "top-p": f"T {a.baseline_temperature:g}, top-k {a.baseline_top_k}, top-p {a.baseline_top_p:g} (Carlsson et "
        "al.'s baseline)",
        "min-p": f"min-p {b.min_p:g}, T 1",
        "typical": f"typical mass {b.typical_p:g}, T 1",
        "eta": f"eta {b.eta:g}, T 1",
        "epsilon": f"epsilon {b.epsilon:g}, T 1",
        "repetition-penalty": f"greedy, penalty {b.repetition_penalty:g}",
        "no-repeat-ngram": f"greedy, no repeated {b.no_repeat_ngram}-gram",
        "beam": f"{b.beams} beams, no length penalty",
        "contrastive": f"k {b.contrastive_top_k}, alpha {b.contrastive_alpha:g}",
    }[name]
    return Method(name, settings, name in SAMPLED)


def _processors(name: str, baselines: BaselinesArgs) -> list:
    from transformers import (
        EpsilonLogitsWarper,
        EtaLogitsWarper,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TypicalLogitsWarper,
    )

    return {
        "min-p": lambda: [MinPLogitsWarper(baselines.min_p)],
        "typical": lambda: [TypicalLogitsWarper(baselines.typical_p)],
        "eta": lambda: [EtaLogitsWarper(baselines.eta)],
        "epsilon": lambda: [EpsilonLogitsWarper(baselines.epsilon)],
        "repetition-penalty": lambda: [RepetitionPenaltyLogitsProcessor(baselines.repetition_penalty)],
        # transformers' ban, matched on the device
        "no-repeat-ngram": lambda: [NoRepeatNGram(baselines.no_repeat_ngram)],
    }.get(name, lambda: [])()


def decoding_args(name: str, config: RunConfig) -> GenerateArgs:
    """The generate settings of a method (its logits processors come from ``_processors``)."""
    a, b = config.analysis, config.baselines
    plain = replace(
        config.generate,
        do_sample=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        citation_blocker=False,
        contrastive_top_k=0,
    )
    if name == "top-p":
        return replace(
            plain, do_sample=True, temperature=a.baseline_temperature, top_k=a.baseline_top_k, top_p=a.baseline_top_p
        )
    if name in SAMPLED:
        return replace(plain, do_sample=True)
    if name == "contrastive":
        return replace(plain, contrastive_top_k=b.contrastive_top_k, contrastive_alpha=b.contrastive_alpha)
    return plain


@torch.no_grad()
def beam_search(
    model, tokenizer, prompts: Sequence[Sequence[int]], args: GenerateArgs, beams: int
) -> list[Continuation]:
    """transformers' beam search, left-padded batches, every continuation ``args.max_new_tokens`` long (EOS suppressed
    unless generate.stop_at_eos): the same budget as every other row."""
    device = next(model.parameters()).device
    outputs: list[Continuation] = []
    for start in progress_bar(
        range(0, len(prompts), args.batch_size),
        desc="beam search",
        unit="batch",
        leave=False,
        disable=not process_state().is_main_process,
    ):
        batch = prompts[start : start + args.batch_size]
        input_ids, attention_mask = left_padded(batch, tokenizer.pad_token_id, device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=beams,
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=0 if args.stop_at_eos else args.max_new_tokens,
            length_penalty=0.0,
            early_stopping=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            top_k=None,
            top_p=None,
            temperature=None,
        )
        for prompt, row in zip(batch, generated[:, input_ids.shape[1] :].tolist()):
            if args.stop_at_eos and tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id) + 1]
            outputs.append(Continuation(list(prompt), row))
    return outputs


@dataclass
class Decoded:
    method: Method
    continuations: list[list[Continuation]]
    """continuations[s][p]: seed s (one for deterministic methods) of prompt p."""
    seconds: float
    """Decoding time; a method decoded in a group gets the group's time in proportion to its tokens."""
    together: tuple[str, ...] = ()
    """The methods decoded in one batch with this one (itself included); empty when it decoded alone."""

    @property
    def tokens_per_second(self) -> float:
        tokens = sum(len(c.token_ids) for seed in self.continuations for c in seed)
        return tokens / self.seconds if self.seconds > 0 else float("nan")


def decode_method(
    name: str, model, tokenizer, prompts: Sequence[Sequence[int]], config: RunConfig, show_progress: bool = True
) -> Decoded:
    """Decode ``prompts`` from ``model`` with one method of the baselines; sampled methods once per seed."""
    method = describe(name, config)
    args = decoding_args(name, config)
    seeds = config.baselines.seeds if method.sampled else 1
    rows = [p for _ in range(seeds) for p in prompts]
    started = time.perf_counter()
    if name == "beam":
        decoded = beam_search(model, tokenizer, rows, args, config.baselines.beams)
    else:
        # Every seed of a sampled method in one batch: decoding a CPU is bound by reading the weights once per step.
        args = replace(args, batch_size=args.batch_size * seeds)
        decoded = generate(
            model,
            tokenizer,
            rows,
            args,
            _processors(name, config.baselines),
            desc=f"baseline {name}",
            show_progress=show_progress,
        )
    seconds = time.perf_counter() - started
    return Decoded(method, [decoded[s * len(prompts) : (s + 1) * len(prompts)] for s in range(seeds)], seconds)


def decoding_groups(names: Sequence[str]) -> list[list[str]]:
    """``names`` in the groups they decode in, in order of first appearance: the sampled methods together, the greedy
    methods with a processor together, every other method (greedy, beam, contrastive: searches of their own) alone."""
    groups: list[list[str]] = []
    for name in names:
        kind = SAMPLED if name in SAMPLED else GREEDY_WITH_PROCESSOR if name in GREEDY_WITH_PROCESSOR else None
        joined = next((g for g in groups if kind and g[0] in kind), None)
        if joined is not None:
            joined.append(name)
        else:
            groups.append([name])
    return groups


def decode_group(
    names: Sequence[str],
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    config: RunConfig,
    show_progress: bool = True,
) -> dict[str, Decoded]:
    """Decode ``prompts`` by one group of :func:`decoding_groups` in one wide batch (prompts x methods rows per step,
    one prefill): the same rows and seeds as :func:`decode_method` per method, so the same text up to floating-point
    near-ties of the wider batch. On a CPU a step reads every weight once whatever its width, so the group costs
    little more than its widest member."""
    from hyperfitting.generation.decoding import generate_variants

    if len(names) == 1:
        return {names[0]: decode_method(names[0], model, tokenizer, prompts, config, show_progress)}
    methods = [describe(name, config) for name in names]
    if len({m.sampled for m in methods}) != 1 or any(n not in SAMPLED + GREEDY_WITH_PROCESSOR for n in names):
        raise ValueError(f"{names} do not decode together: see decoding_groups")
    seeds = config.baselines.seeds if methods[0].sampled else 1
    rows = [p for _ in range(seeds) for p in prompts]
    settings = [
        (
            replace(decoding_args(name, config), batch_size=config.generate.batch_size * seeds),
            _processors(name, config.baselines),
        )
        for name in names
    ]
    started = time.perf_counter()
    decoded = generate_variants(
        model, tokenizer, rows, settings, desc=f"baselines {', '.join(names)}", show_progress=show_progress
    )
    seconds = time.perf_counter() - started
    tokens = [sum(len(c.token_ids) for c in rows_of) for rows_of in decoded]
    return {
        name: Decoded(
            method,
            [out[s * len(prompts) : (s + 1) * len(prompts)] for s in range(seeds)],
            seconds * n / max(1, sum(tokens)),
            tuple(names),
        )
        for name, method, out, n in zip(names, methods, decoded, tokens)
    }
