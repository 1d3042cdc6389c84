"""Evaluate a model on evaluation prompts: generate, write the generations, compute every metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from hyperfitting.config import GenerateArgs
from hyperfitting.data.splits import Prompt
from hyperfitting.generation.decoding import Continuation, generate
from hyperfitting.generation.processors import CitationBlocker
from hyperfitting.metrics.overlap import SuffixAutomaton, training_overlap
from hyperfitting.metrics.registry import Samples, compute_metrics
from hyperfitting.precision import full_precision
from hyperfitting.rundir import write_jsonl


@torch.no_grad()
def continuation_perplexity(
    model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], batch_size: int = 16
) -> float:
    """exp(mean NLL) of the continuation tokens given their prompts, under ``model`` (split over processes, if
    several)."""
    from hyperfitting.distributed import gather_in_order, my_share

    device = next(model.parameters()).device
    share = my_share(len(prompts))
    prompts, continuations = prompts[share.start : share.stop], continuations[share.start : share.stop]
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        rows = [
            list(p) + list(c)
            for p, c in zip(prompts[start : start + batch_size], continuations[start : start + batch_size])
        ]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (row, prompt) in enumerate(zip(rows, prompts[start : start + batch_size])):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
            labels[r, len(prompt) : len(row)] = torch.tensor(row[len(prompt) :])
        with full_precision(device):  # a measurement: float32 whatever model.precision says
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1).to(device),
            ignore_index=-100,
            reduction="sum",
        )
        total_nll += float(nll)
        total_tokens += int((labels[:, 1:] != -100).sum())
    shares = gather_in_order([(total_nll, total_tokens)])
    total_nll, total_tokens = sum(n for n, _ in shares), sum(t for _, t in shares)
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


def samples_of(tokenizer, continuations: Sequence[Continuation]) -> Samples:
    return Samples(
        token_ids=[c.token_ids for c in continuations],
        texts=tokenizer.batch_decode([c.token_ids for c in continuations], skip_special_tokens=True),
        entropy=[c.entropy for c in continuations],
        top1_prob=[c.top1_prob for c in continuations],
    )


def score(
    tokenizer,
    prompts: Sequence[Prompt],
    token_ids: Sequence[Sequence[int]],
    samples: Samples,
    base_model,
    training_index: SuffixAutomaton | None,
) -> dict[str, float]:
    metrics = compute_metrics(samples)
    if base_model is not None:
        metrics["base_perplexity"] = continuation_perplexity(base_model, [p.prompt_ids for p in prompts], token_ids)
    if training_index is not None:
        metrics.update(training_overlap(token_ids, training_index))
    return metrics


def evaluate_model(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    args: GenerateArgs,
    out_file: Path | None,
    base_model=None,
    training_blocks: torch.Tensor | None = None,
    training_index: SuffixAutomaton | None = None,
    desc: str = "generating",
    by_corpus: bool = False,
) -> dict:
    """Continue each prompt, write the generations as JSONL, return the metrics (per corpus if ``by_corpus``)."""
    processors = (
        [CitationBlocker(training_blocks, args.citation_blocker_n)]
        if args.citation_blocker and training_blocks is not None
        else []
    )
    continuations = generate(model, tokenizer, [p.prompt_ids for p in prompts], args, processors, desc=desc)
    samples = samples_of(tokenizer, continuations)
    if out_file is not None:
        write_jsonl(
            out_file,
            [
                {
                    "corpus": p.corpus,
                    "source": p.source,
                    "prompt": tokenizer.decode(p.prompt_ids),
                    "prompt_ids": p.prompt_ids,
                    "continuation": text,
                    "continuation_ids": c.token_ids,
                    "reference": tokenizer.decode(p.reference_ids),
                    "entropy": [round(v, 5) for v in c.entropy],
                    "chosen_prob": [round(v, 5) for v in c.chosen_prob],
                    "top1_prob": [round(v, 5) for v in c.top1_prob],
                }
                for p, c, text in zip(prompts, continuations, samples.texts)
            ],
        )
    if not by_corpus:
        return score(tokenizer, prompts, samples.token_ids, samples, base_model, training_index)
    results = {}
    for corpus in dict.fromkeys(p.corpus for p in prompts):
        rows = [i for i, p in enumerate(prompts) if p.corpus == corpus]
        subset = Samples(
            token_ids=[samples.token_ids[i] for i in rows],
            texts=[samples.texts[i] for i in rows],
            entropy=[samples.entropy[i] for i in rows],
            top1_prob=[samples.top1_prob[i] for i in rows],
        )
        results[corpus] = score(
            tokenizer, [prompts[i] for i in rows], subset.token_ids, subset, base_model, training_index
        )
    return results


def evaluate_references(
    tokenizer,
    prompts: Sequence[Prompt],
    max_tokens: int,
    base_model=None,
    training_index: SuffixAutomaton | None = None,
) -> dict[str, float]:
    """The same metrics on the human continuations, cut to the generated length: the yardstick."""
    token_ids = [p.reference_ids[:max_tokens] for p in prompts]
    samples = Samples(token_ids=token_ids, texts=tokenizer.batch_decode(token_ids, skip_special_tokens=True))
    return score(tokenizer, prompts, token_ids, samples, base_model, training_index)
