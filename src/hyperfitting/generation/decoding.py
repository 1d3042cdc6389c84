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
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from hyperfitting.config import GenerateArgs

LogitsProcessor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


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


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of a batch padded on the left, so every row's next token goes at the end."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids.to(device), attention_mask.to(device)


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
    device = next(model.parameters()).device
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids, attention_mask = left_padded(prompts, pad_token_id, device)
    # Left padding: positions count real tokens only, so a padded row sees the same positions as alone.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    padded = any(len(p) != width for p in prompts)
    keep_last = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    sequences = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    outputs = [Continuation(list(p), []) for p in prompts]
    steps: list[torch.Tensor] = []  # (6, B) per step: token, entropy, top-1 prob, chosen prob, decoded entropy, finished before
    step_input, step_positions = input_ids, position_ids
    for processor in processors:
        if hasattr(processor, "begin"):
            processor.begin(input_ids, attention_mask)
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=step_input,
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
        scores = logits
        for processor in processors:
            scores = processor(sequences, scores)
        if processors or do_sample:
            decoded_log_probs = torch.log_softmax(scores, dim=-1)
            decoded_probs = decoded_log_probs.exp()
            decoded_entropy = -(decoded_probs * decoded_log_probs.nan_to_num(neginf=0.0)).sum(-1)
        else:  # plain greedy decodes from the raw distribution: no second softmax over the vocabulary
            decoded_probs, decoded_entropy = probs, entropy
        if do_sample:
            if generators is None:
                next_tokens = torch.multinomial(decoded_probs, 1).squeeze(1)
            else:
                next_tokens = torch.cat([torch.multinomial(decoded_probs[r], 1, generator=g) for r, g in enumerate(generators)])
        else:
            next_tokens = scores.argmax(dim=-1)
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
        step_input = next_tokens[:, None]
        step_positions = step_positions[:, -1:] + 1
        if on_step is not None:
            on_step()
    for row, (tokens, entropy, top1, chosen, decoded, was_finished) in enumerate(torch.stack(steps).permute(2, 1, 0).tolist()):
        live = [i for i, done in enumerate(was_finished) if not done]  # steps after this row's EOS are padding
        outputs[row].token_ids = [int(tokens[i]) for i in live]
        outputs[row].entropy = [entropy[i] for i in live]
        outputs[row].top1_prob = [top1[i] for i in live]
        outputs[row].chosen_prob = [chosen[i] for i in live]
        outputs[row].decoded_entropy = [decoded[i] for i in live]
    return outputs


def generate(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    args: GenerateArgs,
    extra_processors: Sequence[LogitsProcessor] = (),
    desc: str = "generating",
    show_progress: bool = True,
    shard: bool = True,
) -> list[Continuation]:
    """Continue every prompt, ``args.batch_size`` at a time; the continuations come back in the prompts' order.

    Under several processes (torchrun, accelerate launch) each decodes a contiguous share of the
    prompts and every process gets all continuations back. ``shard=False``: every process decodes
    every prompt (for an FSDP-sharded model, whose forward passes are collectives that all
    processes must take together). Prompt i samples from its own generator, seeded from
    ``args.seed`` and i: the same text on one process or many.

    ``extra_processors`` run before the sampling warpers (so a bias shifts logits before
    temperature is applied, as it would inside the model).
    """
    from hyperfitting.distributed import gather_in_order, my_share, process_state

    mine = my_share(len(prompts)) if shard else range(len(prompts))
    device = next(model.parameters()).device
    processors = list(extra_processors) + sampling_processors(args)
    eos = tokenizer.eos_token_id if args.stop_at_eos else None
    results: list[Continuation] = []
    starts = range(mine.start, mine.stop, args.batch_size)
    # One tick per decoding step of a batch, so long batches show progress and tokens/s.
    bar = tqdm(total=len(starts) * args.max_new_tokens, desc=desc, unit="step",
               disable=not (show_progress and process_state().is_main_process), leave=False)
    for batch_index, start in enumerate(starts):
        batch = range(start, min(start + args.batch_size, mine.stop))
        if args.contrastive_top_k:  # its own search, not a processor: it looks one token ahead for each candidate
            from hyperfitting.generation.contrastive import contrastive_batch

            results += contrastive_batch(model, [prompts[i] for i in batch], args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                         top_k=args.contrastive_top_k, alpha=args.contrastive_alpha, eos_token_id=eos, on_step=bar.update)
            bar.update((batch_index + 1) * args.max_new_tokens - bar.n)
            continue
        results += decode_batch(
            model,
            [prompts[i] for i in batch],
            args.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos,
            do_sample=args.do_sample,
            processors=processors,
            generators=[torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + i) for i in batch] if args.do_sample else None,
            on_step=bar.update,
        )
        bar.update((batch_index + 1) * args.max_new_tokens - bar.n)  # catch up after a batch that stopped early at EOS
    bar.close()
    return gather_in_order(results) if shard else results
