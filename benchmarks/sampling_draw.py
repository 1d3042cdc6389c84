"""Benchmark: the sampling draw, one batched inverse-CDF search against ``torch.multinomial`` row by row.

The widest sampled workload of a study: the quick study's 32 prompts (16 fiction + 16 Wikipedia) x 4 seeds =
128 rows per step, 48 new tokens at temperature 1, on the embedded SmolLM2-135M. Baseline: the same decode with
the draw swapped back to per-row ``torch.multinomial`` (what decoding.draw replaced), in the same process; greedy
decoding of the same rows as the ceiling (a sampled step cannot be cheaper than a greedy one). Both draws are exact
samples from the same distributions, through different random numbers: the texts differ, their statistics do not
(tests/test_decoding.py checks the draw's frequencies).

    .venv/bin/python benchmarks/sampling_draw.py
"""

from __future__ import annotations


import torch

from common import forward_flops_per_token, load_embedded, machine, matmul_peak_gflops, quick_data, record, timed  # noqa: E402

import hyperfitting.generation.decoding as decoding  # noqa: E402
from hyperfitting.config import GenerateArgs  # noqa: E402

NEW_TOKENS = 48
SEEDS = 4
ROUNDS = 2


def multinomial_per_row(probs, generators=None):
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(generators)])


def main():
    model, tokenizer = load_embedded()
    data = quick_data(tokenizer)
    prompts = [p.prompt_ids for corpus in data.prompts.values() for p in corpus] * SEEDS
    sampled = GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts), do_sample=True, temperature=1.0)
    tokens = len(prompts) * NEW_TOKENS
    peak = matmul_peak_gflops()
    flops_per_token = forward_flops_per_token(model, context=32 + NEW_TOKENS // 2)

    decoding.generate(model, tokenizer, prompts[:8], GenerateArgs(max_new_tokens=4), show_progress=False)  # warm-up
    batched_draw = decoding.draw

    def sampled_with(draw):
        decoding.draw = draw
        try:
            return timed(decoding.generate, model, tokenizer, prompts, sampled, show_progress=False)[1]
        finally:
            decoding.draw = batched_draw

    # Two rounds, interleaved, the best of each kept: this machine's speed drifts by 10-20% within a minute.
    greedy_seconds = draw_seconds = multinomial_seconds = float("inf")
    for _ in range(ROUNDS):
        greedy_seconds = min(
            greedy_seconds,
            timed(
                decoding.generate,
                model,
                tokenizer,
                prompts,
                GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts)),
                show_progress=False,
            )[1],
        )
        draw_seconds = min(draw_seconds, sampled_with(batched_draw))
        multinomial_seconds = min(multinomial_seconds, sampled_with(multinomial_per_row))
    print(
        f"machine: {machine()}, fp32 matmul peak {peak:.0f} GFLOP/s; {len(prompts)} rows x {NEW_TOKENS} new tokens, "
        "temperature 1"
    )
    for name, seconds in (
        ("greedy (the ceiling)", greedy_seconds),
        ("sampled, batched draw", draw_seconds),
        ("sampled, multinomial per row", multinomial_seconds),
    ):
        rate = tokens / seconds
        print(f"{name:30s} {rate:7.1f} tok/s   {rate * flops_per_token / 1e9 / peak:6.1%} of the compute bound")
    print(
        f"batched draw / multinomial per row: {multinomial_seconds / draw_seconds:.2f}x; "
        f"sampled / greedy: {greedy_seconds / draw_seconds:.2f} of the greedy rate"
    )
    rows = (
        ("greedy (the ceiling)", greedy_seconds),
        ("sampled, batched draw", draw_seconds),
        ("sampled, multinomial per row", multinomial_seconds),
    )
    record(
        "sampling-draw",
        "The sampling draw: one batched inverse-CDF search against `torch.multinomial` row by row",
        ["path", "tokens/s", "share of the fp32 compute bound"],
        [[name, round(tokens / s, 1), f"{tokens / s * flops_per_token / 1e9 / peak:.1%}"] for name, s in rows],
        [
            f"{len(prompts)} rows x {NEW_TOKENS} new tokens at temperature 1, best of {ROUNDS} interleaved rounds: the "
            f"batched draw {multinomial_seconds / draw_seconds:.2f}x the per-row one; a sampled step costs "
            f"{greedy_seconds / draw_seconds:.2f} of a greedy one."
        ],
    )


if __name__ == "__main__":
    main()
