"""Benchmark: greedy decoding of a Late-Stage LoRA model, adapter merged into the weights against kept apart.

hyperfit loads an adapter for inference with `merge_and_unload` (models/loading.py); this measures what
that buys. A fresh LoRA adapter (rank 32 on every linear projection of the last 5 blocks, as the
quick preset trains) with random B, so the merged and unmerged models differ from the base model and
agree with each other up to float rounding. The quick study's evaluation workload: 32 prompts of 32
tokens, 96 new tokens, one batch.

    .venv/bin/python benchmarks/merged_adapter.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from common import load_embedded, machine, record, timed  # noqa: E402

from hyperfitting.config import GenerateArgs, load_config  # noqa: E402
from hyperfitting.data.splits import prepare_data  # noqa: E402
from hyperfitting.generation.decoding import generate  # noqa: E402
from hyperfitting.training.methods import prepare_for_training  # noqa: E402

NEW_TOKENS = 96


def main():
    base, tokenizer = load_embedded()
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "quick.yaml")
    data = prepare_data(config.data, tokenizer)
    prompts = [p.prompt_ids for corpus in data.prompts.values() for p in corpus]
    unmerged, _ = prepare_for_training(copy.deepcopy(base), config.train)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter's B is not zero: give it weights so the merge changes the model
        for name, parameter in unmerged.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    unmerged.eval()
    merged = copy.deepcopy(unmerged).merge_and_unload().eval()
    args = GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts))
    generate(merged, tokenizer, prompts[:2], GenerateArgs(max_new_tokens=4), show_progress=False)  # warm up

    slow, slow_seconds = timed(generate, unmerged, tokenizer, prompts, args, show_progress=False)
    fast, fast_seconds = timed(generate, merged, tokenizer, prompts, args, show_progress=False)
    same = sum(a.token_ids == b.token_ids for a, b in zip(slow, fast))
    tokens = len(prompts) * NEW_TOKENS
    print(f"{machine()}; {len(prompts)} prompts x {NEW_TOKENS} new tokens, one batch")
    print(f"adapter kept apart (PEFT):   {tokens / slow_seconds:7.1f} tokens/s")
    print(f"adapter merged into weights: {tokens / fast_seconds:7.1f} tokens/s  ({slow_seconds / fast_seconds:.2f}x)")
    print(f"identical greedy continuations: {same} of {len(prompts)} (the rest part at a float-rounding tie)")
    record(
        "merged-adapter",
        "Decoding a Late-Stage LoRA model: adapter merged into the weights against kept apart",
        ["path", "seconds", "tokens/s"],
        [
            ["adapter kept apart (PEFT)", round(slow_seconds, 1), round(tokens / slow_seconds, 1)],
            ["adapter merged into the weights", round(fast_seconds, 1), round(tokens / fast_seconds, 1)],
        ],
        [
            f"{len(prompts)} prompts x {NEW_TOKENS} new tokens, one batch: merged {slow_seconds / fast_seconds:.2f}x; "
            f"identical greedy continuations {same} of {len(prompts)}."
        ],
    )


if __name__ == "__main__":
    main()
