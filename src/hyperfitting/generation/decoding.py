"""The toolkit's one decoding path: batched, left-padded, with a KV cache.

Every decoding variant (temperature, top-k/p, the citation blocker, and the analyses' static biases or rank transplants)
is a logits processor: a callable ``(input_ids (B, S), scores (B, V)) -> scores`` in the transformers convention,
applied in order after the model's raw logits. A processor that runs a second model alongside (the rank transplant) also
has ``begin(input_ids, attention_mask)``, called once per batch. Per step we record, under the model's *unprocessed*
distribution, the entropy, the top-1 probability and the chosen token's probability.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hyperfitting.config import GenerateArgs
from hyperfitting.errors import ConfigError
from hyperfitting.generation.batches import SYNC_EVERY, Continuation, accepts, left_padded  # noqa: F401 (part of this module's interface)
from hyperfitting.generation.contrastive import contrastive_batch
from hyperfitting.generation.processors import CitationBlocker
from hyperfitting.progress import progress_bar

LogitsProcessor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


def sampling_processors(args: GenerateArgs) -> list[LogitsProcessor]:
    """transformers' own warpers for temperature, top-k and top-p (only used when sampling)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    processors: list[LogitsProcessor] = []
    if args.do_sample:
        if args.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(args.temperature))
        if args.top_k > 0:
            processors.append(TopKLogitsWarper(args.top_k))
        if args.top_p < 1.0:
            processors.append(TopPLogitsWarper(args.top_p))
    return processors


@dataclass
class Variant:
    """One way of decoding a batch of prompts: greedy or sampled, after its own logits processors.

    ``generators`` (one per prompt) make row r's samples depend on its own seed only, not on
    which rows share its batch or its process. ``seeds`` (one per prompt) do the same without a
    generator per row: the fixed-buffer decoder draws row r's number at step t from (seed r, t)
    alone (:func:`counter_uniform`), one batched draw per step instead of a draw per row.
    """

    processors: Sequence[LogitsProcessor] = ()
    do_sample: bool = False
    generators: Sequence[torch.Generator] | None = None
    seeds: Sequence[int] | None = None


@torch.no_grad()
def decode_batch(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id: int | None = None,
    do_sample: bool = False,
    processors: Sequence[LogitsProcessor] = (),
    generators: Sequence[torch.Generator] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[Continuation]:
    """Decode one batch of prompts (lists of token ids) together; ``on_step`` is called after every new token.

    Sampling draws row r's tokens from ``generators[r]`` (one per prompt), so a prompt's sample
    does not depend on which other prompts share its batch or its process.
    """
    variant = Variant(processors, do_sample, generators)
    return decode_variants(model, prompts, [variant], max_new_tokens, pad_token_id, eos_token_id, on_step)[0]


@torch.no_grad()
def decode_variants(
    model,
    prompts: Sequence[Sequence[int]],
    variants: Sequence[Variant],
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id: int | None = None,
    on_step: Callable[[], None] | None = None,
    decoder: str = "dynamic",
    compile_step: bool = False,
    bucket_rows: int = 0,
    bucket_length: int = 0,
) -> list[list[Continuation]]:
    """Decode the prompts under every variant at once: one list of continuations per variant.

    The variants share one batch of (prompts x variants) rows, so each decoding step is one
    forward pass as wide as all of them (on a CPU a 16-row step reads every weight for 16 tokens,
    a 64-row step for 64), and one prefill of the prompts whose KV cache is then copied to
    every variant's rows. Rows are prompt-major: row r is prompt r // V under variant r % V.

    ``decoder``: ``dynamic`` grows the cache a column per step; ``fixed`` decodes in fixed buffers
    (:mod:`hyperfitting.generation.fixed`; CUDA graphs on a GPU), its step compiled with ``compile_step``, its rows
    rounded up to at least ``bucket_rows`` and its length to at least ``bucket_length`` (a call's full batches' width
    and its longest prompt: all its batches then share one graph).
    The per-step statistics stay on the device in one preallocated buffer, and the host looks at the
    rows (has every row reached EOS?) once every ``SYNC_EVERY`` steps, not at every step.
    """
    from hyperfitting.generation.fixed import FixedState, GrowingState

    n_variants = len(variants)
    if decoder == "fixed":
        state = FixedState(
            model,
            prompts,
            n_variants,
            max_new_tokens,
            pad_token_id,
            compile_step=compile_step,
            bucket_rows=bucket_rows,
            bucket_length=bucket_length,
        )
    elif compile_step:
        raise ValueError("compile_step compiles the fixed decoder's step: decode with decoder='fixed'")
    else:
        state = GrowingState(model, prompts, n_variants, max_new_tokens, pad_token_id)
    logits = state.first_logits
    rows_of = [slice(v, None, n_variants) for v in range(n_variants)]
    batch = len(logits)
    device = logits.device
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # (step, 6, B): token, entropy, top-1 prob, chosen prob, decoded entropy, finished before
    steps = torch.zeros((max_new_tokens, 6, batch), device=device)
    for variant, rows in zip(variants, rows_of):
        for processor in variant.processors:
            if hasattr(processor, "begin"):
                processor.begin(state.prompt_ids[rows], state.prompt_mask[rows])
    taken = 0
    for step in range(max_new_tokens):
        if step > 0:
            logits = state.advance(next_tokens)  # (B, V)  # noqa: F821 (the previous step's choice)
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
        next_tokens = torch.empty(batch, dtype=torch.long, device=device)
        decoded_entropy = torch.empty(batch, device=device)
        sequences = state.sequences
        for variant, rows in zip(variants, rows_of):
            next_tokens[rows], decoded_entropy[rows] = _choose(
                variant, sequences[rows], logits[rows], probs[rows], entropy[rows], step
            )
        steps[step] = torch.stack(
            [
                next_tokens.float(),
                entropy,
                probs.max(dim=-1).values,
                probs.gather(1, next_tokens[:, None]).squeeze(1),
                decoded_entropy,
                finished.float(),
            ]
        )
        taken = step + 1
        if eos_token_id is not None:
            finished |= next_tokens == eos_token_id
            if (step + 1) % SYNC_EVERY == 0 and bool(finished.all()):  # steps past a row's EOS are dropped below
                break
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        if on_step is not None:
            on_step()
    outputs = [[Continuation(list(p), []) for p in prompts] for _ in variants]
    for row, (tokens, entropy, top1, chosen, decoded, was_finished) in enumerate(
        steps[:taken].permute(2, 1, 0).tolist()
    ):
        live = [i for i, done in enumerate(was_finished) if not done]  # steps after this row's EOS are padding
        out = outputs[row % n_variants][row // n_variants]
        out.token_ids = [int(tokens[i]) for i in live]
        out.entropy = [entropy[i] for i in live]
        out.top1_prob = [top1[i] for i in live]
        out.chosen_prob = [chosen[i] for i in live]
        out.decoded_entropy = [decoded[i] for i in live]
    return outputs


def _choose(
    variant: Variant,
    sequences: torch.Tensor,
    logits: torch.Tensor,
    probs: torch.Tensor,
    entropy: torch.Tensor,
    step: int = 0,
):
    """(next token, entropy of the distribution decoded from) for one variant's rows."""
    scores = logits
    for processor in variant.processors:
        scores = processor(sequences, scores)
    if variant.processors:
        decoded_log_probs = torch.log_softmax(scores, dim=-1)
        decoded_probs = decoded_log_probs.exp()
        decoded_entropy = -(decoded_probs * decoded_log_probs.nan_to_num(neginf=0.0)).sum(-1)
    else:
        # no processor: greedy or sampled, the decoded distribution is the raw one (no second softmax over the
        # vocabulary)
        decoded_probs, decoded_entropy = probs, entropy
    if not variant.do_sample:
        return scores.argmax(dim=-1), decoded_entropy
    if variant.seeds is not None:
        uniform = counter_uniform(torch.as_tensor(variant.seeds, dtype=torch.long, device=probs.device), step)
        # The check of the rows (a host sync) runs every SYNC_EVERY steps: a NaN or a fully masked row persists.
        return draw(decoded_probs, uniform=uniform[:, None], check=step % SYNC_EVERY == 0), decoded_entropy
    return draw(decoded_probs, variant.generators), decoded_entropy


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's is arithmetic: it would copy the sign bit in)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's step and output mix, on int64 (products wrap modulo 2^64, as the algorithm wants). The constants
    are Python ints, not tensors: a tensor made from a number is a copy from the host, and a blocking one on a GPU,
    six of them per sampled step."""
    z = z + _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def counter_uniform(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One number in [0, 1) per seed (int64, (B,)), a function of (seed, step) alone.

    The seed is mixed first and the step added to the mixed value, then mixed again: adding seed and step before any
    mixing would give seed s at step t+1 the number of seed s+1 at step t (the prompts' seeds are consecutive).
    Counter-based, so a row's draw at a step needs no generator state, depends on no other row, and a whole batch's
    draws are a few elementwise operations on the device.
    """
    z = _splitmix64(_splitmix64(seeds) + _signed(step * 0x9E3779B97F4A7C15))
    return _shift_right(z, 11).double() * 2.0**-53


def draw(
    probs: torch.Tensor,
    generators: Sequence[torch.Generator] | None = None,
    uniform: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """One token per row of ``probs`` (B, V; unnormalised), drawn by inverting the row's cumulative sum at one uniform
    number taken from the row's own generator, so a row's draw does not depend on the rows beside it.

    One batched search instead of ``torch.multinomial`` per row, which spends a vocabulary of random exponentials
    on each row: a fifth of a sampled decode's time at 128 rows. The sums are float64, so that the last tokens of a
    49k-262k vocabulary keep their share; a token of probability 0 is never drawn (its cumulative sum equals the one
    before it, which is found first). ``uniform`` (B, 1) in [0, 1): the numbers to invert at, given instead of drawn.
    """
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    if check and not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError(
            "Cannot sample: a row of probabilities is all zero or not finite (a processor masked every token, or the "
            "logits hold NaN)."
        )
    if uniform is not None:
        uniform = uniform.to(torch.float64)
    elif generators is None:
        uniform = torch.rand(len(probs), 1, dtype=torch.float64, device=probs.device)
    else:
        uniform = torch.cat([torch.rand(1, 1, dtype=torch.float64, generator=g, device=g.device) for g in generators])
    # below the total, whatever the rounding
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1).to(probs.device)


def decoder_for(setting: str, model, length: int, compile_step: bool = False) -> str:
    """The decoder (``dynamic`` or ``fixed``) that ``generate.decoder`` names for this model and continuation length.

    ``auto``: fixed buffers on a GPU, where they let a step be replayed as a CUDA graph, and the growing cache on a
    CPU, where there is nothing to replay (and a study's numbers stay those it has always had); either way the
    growing cache where the model's attention rules the fixed buffers out. ``compile_step`` (generate.compile_step)
    compiles the fixed decoder's step: ``auto`` is then fixed everywhere, and a model it cannot decode is refused.
    """
    from hyperfitting.generation.fixed import compile_supported, fixed_state_supported

    from torch.distributed.tensor import DTensor

    if setting == "dynamic":
        return "dynamic"
    # An FSDP-sharded model gathers its weights in hooks at every forward: a replayed graph would skip them.
    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    why_not = (
        "its parameters are FSDP shards" if sharded else fixed_state_supported(model, length, compile_step or None)
    )
    if setting == "fixed" and why_not:
        raise ConfigError(
            f"generate.decoder=fixed cannot decode this model: {why_not}. Set generate.decoder=auto or dynamic."
        )
    if compile_step:
        why_not = why_not or compile_supported(model)
        if why_not:
            raise ConfigError(
                f"generate.compile_step=true compiles the fixed decoder's step, which cannot decode this model: "
                f"{why_not}. Set generate.compile_step=false."
            )
        return "fixed"
    if setting == "auto" and (why_not or next(model.parameters()).device.type != "cuda"):
        return "dynamic"
    return "fixed"


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    args: GenerateArgs,
    extra_processors: Sequence[LogitsProcessor] = (),
    desc: str = "generating",
    show_progress: bool = True,
    shard: bool = True,
    training_blocks: torch.Tensor | None = None,
) -> list[Continuation]:
    """Continue every prompt, ``args.batch_size`` at a time; the continuations come back in the prompts' order.

    ``training_blocks``: the training text, which ``args.citation_blocker`` forbids continuing (its n-grams); the
    blocker needs it, so asking for the blocker without it is refused rather than ignored.

    Under several processes (torchrun, accelerate launch) each decodes a contiguous share of the
    prompts and every process gets all continuations back. ``shard=False``: every process decodes
    every prompt (for an FSDP-sharded model, whose forward passes are collectives that all
    processes must take together). Prompt i samples from its own generator, seeded from
    ``args.seed`` and i: the same text on one process or many.

    ``extra_processors`` run before the sampling warpers (so a bias shifts logits before
    temperature is applied, as it would inside the model).
    """
    if (
        args.citation_blocker
        and training_blocks is not None
        and not any(isinstance(p, CitationBlocker) for p in extra_processors)
    ):
        extra_processors = [CitationBlocker(training_blocks, args.citation_blocker_n), *extra_processors]
    return generate_variants(model, tokenizer, prompts, [(args, extra_processors)], desc, show_progress, shard)[0]


def generate_variants(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    settings: Sequence[tuple[GenerateArgs, Sequence[LogitsProcessor]]],
    desc: str = "generating",
    show_progress: bool = True,
    shard: bool = True,
) -> list[list[Continuation]]:
    """:func:`generate` under several settings of the same prompts: one list of continuations per setting.

    Each batch of ``batch_size`` prompts is decoded under every setting at once (one forward pass
    of prompts x settings rows per step, one prefill; :func:`decode_variants`), with the same
    tokens as one :func:`generate` call per setting up to floating-point ties. The settings must
    agree on ``max_new_tokens``, ``batch_size`` and ``stop_at_eos``; each brings its own processor
    objects (a processor with ``begin`` keeps state for its rows). Contrastive search is its own
    search and runs apart.
    """
    from hyperfitting.distributed import gather_in_order, min_over_processes, my_share, process_state
    from hyperfitting.generation import memory
    from hyperfitting.generation.fixed import bucketed_length, bucketed_rows, graphs_wanted
    from hyperfitting.precision import decoding_model

    model = decoding_model(model)  # under bf16 autocast on a GPU: a bf16 copy of the weights, not a cast at every step
    first = settings[0][0]
    if any(
        (a.max_new_tokens, a.batch_size, a.stop_at_eos, a.decoder, a.compile_step)
        != (first.max_new_tokens, first.batch_size, first.stop_at_eos, first.decoder, first.compile_step)
        for a, _ in settings
    ):
        raise ValueError(
            "settings decoded together must share max_new_tokens, batch_size, stop_at_eos, decoder and compile_step"
        )
    if any(
        a.citation_blocker and not any(isinstance(p, CitationBlocker) for p in processors) for a, processors in settings
    ):
        raise ConfigError(
            "generate.citation_blocker=true needs the training text it blocks: pass training_blocks= to generate "
            "(or a CitationBlocker among the processors), or set generate.citation_blocker=false."
        )
    mine = my_share(len(prompts)) if shard else range(len(prompts))
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id if first.stop_at_eos else None
    stacked = [k for k, (a, _) in enumerate(settings) if not a.contrastive_top_k]
    contrastive = [k for k, (a, _) in enumerate(settings) if a.contrastive_top_k]
    results: list[list[Continuation]] = [[] for _ in settings]
    length = max(map(len, prompts), default=0) + first.max_new_tokens
    # One decoder for the whole call, from its longest prompt: a prompt's text does not depend on the batch it lands in.
    decoder = decoder_for(first.decoder, model, length, first.compile_step)
    # What a batch allocates: where fixed buffers are kept for a graph or a compiled step, its rows and length are
    # rounded up to their buckets (generation/fixed.py).
    kept = decoder == "fixed" and (graphs_wanted(device) or first.compile_step)
    allocated, rows_of = (bucketed_length(length), bucketed_rows) if kept else (length, None)
    # On a GPU a batch is narrowed when its KV cache and vocabulary rows would not fit in the free memory (said once).
    per_batch = memory.prompts_that_fit(model, first.batch_size, len(stacked) or 1, allocated, rows_of=rows_of)
    # lockstep (an FSDP model): every process takes the same batches
    if not shard and process_state().num_processes > 1:
        per_batch = min_over_processes(per_batch)
    if per_batch < first.batch_size:
        warnings.warn(
            f"generate.batch_size={first.batch_size} would not fit on {device} ({len(stacked)} settings x "
            f"{first.batch_size} prompts x {length} tokens): decoding {per_batch} prompts at a time.",
            stacklevel=2,
        )
    rows = per_batch * (len(stacked) or 1)
    memory.note(memory.decode_bytes(model, rows_of(rows) if rows_of else rows, allocated))
    starts = range(mine.start, mine.stop, per_batch)
    passes = (1 if stacked else 0) + len(contrastive)
    # One tick per decoding step of a batch (of all its stacked settings), so long batches show progress.
    bar = progress_bar(
        total=len(starts) * first.max_new_tokens * passes,
        desc=desc,
        unit="step",
        disable=not (show_progress and process_state().is_main_process),
        leave=False,
    )
    for batch_index, start in enumerate(starts):
        batch = range(start, min(start + per_batch, mine.stop))
        rows = [prompts[i] for i in batch]
        if stacked:
            variants = []
            for k in stacked:
                args = settings[k][0]
                seeds = [args.seed * 1_000_003 + i for i in batch] if args.do_sample else None
                # Row i samples from its own stream: a generator seeded from (seed, i), or the counter draw of (seed, i,
                # step).
                generators = (
                    [torch.Generator(device=device).manual_seed(s) for s in seeds]
                    if seeds and decoder == "dynamic"
                    else None
                )
                variants.append(
                    Variant(
                        list(settings[k][1]) + sampling_processors(args),
                        args.do_sample,
                        generators,
                        torch.tensor(seeds, device=device) if seeds and decoder == "fixed" else None,
                    )
                )
            for k, outputs in zip(
                stacked,
                decode_variants(
                    model,
                    rows,
                    variants,
                    first.max_new_tokens,
                    tokenizer.pad_token_id,
                    eos,
                    on_step=bar.update,
                    decoder=decoder,
                    compile_step=first.compile_step,
                    # the call's widest batch and longest prompt: every batch of the call in one bucket
                    bucket_rows=min(per_batch, len(mine)) * len(stacked),
                    bucket_length=length,
                ),
            ):
                results[k] += outputs
        for k in contrastive:  # it looks one token ahead for each candidate: not a processor
            args = settings[k][0]
            results[k] += contrastive_batch(
                model,
                rows,
                args.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                top_k=args.contrastive_top_k,
                alpha=args.contrastive_alpha,
                eos_token_id=eos,
                on_step=bar.update,
            )
        # catch up after a batch that stopped early at EOS
        bar.update((batch_index + 1) * first.max_new_tokens * passes - bar.n)
    bar.close()
    return [gather_in_order(r) for r in results] if shard else results
