"""The toolkit's one decoding path: batched, left-padded, with a KV cache.

Every decoding variant (temperature, top-k/p, the citation blocker, and the analyses'
static biases or rank transplants) is a logits processor: a callable
``(input_ids (B, S), scores (B, V)) -> scores`` in the transformers convention, applied in
order after the model's raw logits. A processor that runs a second model alongside (the
rank transplant) also has ``begin(input_ids, attention_mask)``, called once per batch. Per step we record, under the model's *unprocessed*
distribution, the entropy, the top-1 probability and the chosen token's probability.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from hyperfitting.config import GenerateArgs
from hyperfitting.errors import ConfigError
from hyperfitting.generation.batches import Continuation, left_padded  # noqa: F401 (part of this module's interface)
from hyperfitting.generation.contrastive import contrastive_batch
from hyperfitting.generation.processors import CitationBlocker

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


def accepts(model, name: str) -> bool:
    """Whether the model's forward (through a PEFT wrapper) takes the keyword ``name`` (logits_to_keep, cache_position)."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return name in inspect.signature(forward).parameters


@dataclass
class Variant:
    """One way of decoding a batch of prompts: greedy or sampled, after its own logits processors.

    ``generators`` (one per prompt) make row r's samples depend on its own seed only, not on
    which rows share its batch or its process.
    """

    processors: Sequence[LogitsProcessor] = ()
    do_sample: bool = False
    generators: Sequence[torch.Generator] | None = None


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
) -> list[list[Continuation]]:
    """Decode the prompts under every variant at once: one list of continuations per variant.

    The variants share one batch of (prompts x variants) rows, so each decoding step is one
    forward pass as wide as all of them (on a CPU a 16-row step reads every weight for 16 tokens,
    a 64-row step for 64), and one prefill of the prompts whose KV cache is then copied to
    every variant's rows. Rows are prompt-major: row r is prompt r // V under variant r % V.
    """
    device = next(model.parameters()).device
    n_variants = len(variants)
    width = max(len(p) for p in prompts)
    input_ids, attention_mask = left_padded(prompts, pad_token_id, device)
    # Left padding: positions count real tokens only, so a padded row sees the same positions as alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = any(len(p) != width for p in prompts)
    keep_last = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    # The prompts' prefill, once; then every row of the batch of prompts x variants.
    logits = model(input_ids=input_ids, attention_mask=attention_mask if padded else None,
                   position_ids=position_ids if padded else None, cache=cache, use_cache=True, **keep_last).logits[:, -1, :].float()
    if n_variants > 1:
        cache.batch_repeat_interleave(n_variants)
        logits, input_ids, attention_mask, position_ids = (t.repeat_interleave(n_variants, dim=0)
                                                           for t in (logits, input_ids, attention_mask, position_ids))
    rows_of = [slice(v, None, n_variants) for v in range(n_variants)]
    batch = len(input_ids)
    sequences = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []  # (6, B) per step: token, entropy, top-1 prob, chosen prob, decoded entropy, finished before
    step_positions = position_ids
    for variant, rows in zip(variants, rows_of):
        for processor in variant.processors:
            if hasattr(processor, "begin"):
                processor.begin(input_ids[rows], attention_mask[rows])
    for step in range(max_new_tokens):
        if step > 0:
            logits = model(
                input_ids=sequences[:, -1:],
                # Without padding the model's own causal masking is exact, and faster than an explicit mask.
                attention_mask=attention_mask if padded else None,
                position_ids=step_positions if padded else None,
                cache=cache,
                use_cache=True,
                **keep_last,
            ).logits[:, -1, :].float()  # (B, V)
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
        next_tokens = torch.empty(batch, dtype=torch.long, device=device)
        decoded_entropy = torch.empty(batch, device=device)
        for variant, rows in zip(variants, rows_of):
            next_tokens[rows], decoded_entropy[rows] = _choose(variant, sequences[rows], logits[rows], probs[rows], entropy[rows])
        # Per-step statistics stay tensors until the batch ends: one conversion, not one per row and step.
        steps.append(torch.stack([next_tokens.float(), entropy, probs.max(dim=-1).values,
                                  probs.gather(1, next_tokens[:, None]).squeeze(1), decoded_entropy, finished.float()]))
        if eos_token_id is not None:
            finished |= next_tokens == eos_token_id
            if bool(finished.all()):
                break
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_token_id), next_tokens)
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones((batch, 1), dtype=attention_mask.dtype, device=device)], dim=1)
        step_positions = step_positions[:, -1:] + 1
        if on_step is not None:
            on_step()
    outputs = [[Continuation(list(p), []) for p in prompts] for _ in variants]
    for row, (tokens, entropy, top1, chosen, decoded, was_finished) in enumerate(torch.stack(steps).permute(2, 1, 0).tolist()):
        live = [i for i, done in enumerate(was_finished) if not done]  # steps after this row's EOS are padding
        out = outputs[row % n_variants][row // n_variants]
        out.token_ids = [int(tokens[i]) for i in live]
        out.entropy = [entropy[i] for i in live]
        out.top1_prob = [top1[i] for i in live]
        out.chosen_prob = [chosen[i] for i in live]
        out.decoded_entropy = [decoded[i] for i in live]
    return outputs


def _choose(variant: Variant, sequences: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor, entropy: torch.Tensor):
    """(next token, entropy of the distribution decoded from) for one variant's rows."""
    scores = logits
    for processor in variant.processors:
        scores = processor(sequences, scores)
    if variant.processors:
        decoded_log_probs = torch.log_softmax(scores, dim=-1)
        decoded_probs = decoded_log_probs.exp()
        decoded_entropy = -(decoded_probs * decoded_log_probs.nan_to_num(neginf=0.0)).sum(-1)
    else:  # no processor: greedy or sampled, the decoded distribution is the raw one (no second softmax over the vocabulary)
        decoded_probs, decoded_entropy = probs, entropy
    if not variant.do_sample:
        return scores.argmax(dim=-1), decoded_entropy
    return draw(decoded_probs, variant.generators), decoded_entropy


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One token per row of ``probs`` (B, V; unnormalised), drawn by inverting the row's cumulative sum at one uniform
    number taken from the row's own generator, so a row's draw does not depend on the rows beside it.

    One batched search instead of ``torch.multinomial`` per row, which spends a vocabulary of random exponentials
    on each row: a fifth of a sampled decode's time at 128 rows. The sums are float64, so that the last tokens of a
    49k-262k vocabulary keep their share; a token of probability 0 is never drawn (its cumulative sum equals the one
    before it, which is found first).
    """
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise ValueError("Cannot sample: a row of probabilities is all zero or not finite (a processor masked every token, or the logits hold NaN).")
    if generators is None:
        uniform = torch.rand(len(probs), 1, dtype=torch.float64, device=probs.device)
    else:
        uniform = torch.cat([torch.rand(1, 1, dtype=torch.float64, generator=g, device=g.device) for g in generators])
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))  # below the total, whatever the rounding
    return torch.searchsorted(cdf, point, right=True).squeeze(1).to(probs.device)


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
    if args.citation_blocker and training_blocks is not None and not any(isinstance(p, CitationBlocker) for p in extra_processors):
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
    from hyperfitting.distributed import gather_in_order, my_share, process_state

    first = settings[0][0]
    if any((a.max_new_tokens, a.batch_size, a.stop_at_eos) != (first.max_new_tokens, first.batch_size, first.stop_at_eos) for a, _ in settings):
        raise ValueError("settings decoded together must share max_new_tokens, batch_size and stop_at_eos")
    if any(a.citation_blocker and not any(isinstance(p, CitationBlocker) for p in processors) for a, processors in settings):
        raise ConfigError("generate.citation_blocker=true needs the training text it blocks: pass training_blocks= to generate "
                          "(or a CitationBlocker among the processors), or set generate.citation_blocker=false.")
    mine = my_share(len(prompts)) if shard else range(len(prompts))
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id if first.stop_at_eos else None
    stacked = [k for k, (a, _) in enumerate(settings) if not a.contrastive_top_k]
    contrastive = [k for k, (a, _) in enumerate(settings) if a.contrastive_top_k]
    results: list[list[Continuation]] = [[] for _ in settings]
    starts = range(mine.start, mine.stop, first.batch_size)
    passes = (1 if stacked else 0) + len(contrastive)
    # One tick per decoding step of a batch (of all its stacked settings), so long batches show progress.
    bar = tqdm(total=len(starts) * first.max_new_tokens * passes, desc=desc, unit="step",
               disable=not (show_progress and process_state().is_main_process), leave=False)
    for batch_index, start in enumerate(starts):
        batch = range(start, min(start + first.batch_size, mine.stop))
        rows = [prompts[i] for i in batch]
        if stacked:
            variants = [Variant(list(settings[k][1]) + sampling_processors(settings[k][0]), settings[k][0].do_sample,
                                [torch.Generator(device=device).manual_seed(settings[k][0].seed * 1_000_003 + i) for i in batch]
                                if settings[k][0].do_sample else None)
                        for k in stacked]
            for k, outputs in zip(stacked, decode_variants(model, rows, variants, first.max_new_tokens, tokenizer.pad_token_id, eos,
                                                           on_step=bar.update)):
                results[k] += outputs
        for k in contrastive:  # it looks one token ahead for each candidate: not a processor
            args = settings[k][0]
            results[k] += contrastive_batch(model, rows, args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                            top_k=args.contrastive_top_k, alpha=args.contrastive_alpha, eos_token_id=eos, on_step=bar.update)
        bar.update((batch_index + 1) * first.max_new_tokens * passes - bar.n)  # catch up after a batch that stopped early at EOS
    bar.close()
    return [gather_in_order(r) for r in results] if shard else results
