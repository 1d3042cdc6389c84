"""Benchmark 2: tokens/s of the toolkit's batched greedy decoding against `model.generate`.

The quick study's evaluation workload: its prompts (16 fiction prompts of 32 tokens since the quick preset left out
the Wikipedia ones), 128 new greedy tokens each, on the embedded SmolLM2-135M. Baselines: `model.generate` one
prompt at a time, and `model.generate` on the whole left-padded batch.

    .venv/bin/python benchmarks/generation.py
"""

from __future__ import annotations


import torch

from common import (  # noqa: E402
    forward_flops_per_token,
    load_embedded,
    machine,
    matmul_peak_gflops,
    quick_data,
    record,
    timed,
)

from hyperfitting.config import GenerateArgs  # noqa: E402
from hyperfitting.generation.decoding import generate  # noqa: E402

NEW_TOKENS = 128


def hf_generate(model, tokenizer, prompts):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return out[:, width:]


def main():
    model, tokenizer = load_embedded()
    data = quick_data(tokenizer)
    prompts = [p.prompt_ids for corpus in data.prompts.values() for p in corpus]
    tokens = len(prompts) * NEW_TOKENS
    peak = matmul_peak_gflops()
    flops_per_token = forward_flops_per_token(model, context=32 + NEW_TOKENS // 2)

    ours, ours_seconds = timed(
        generate,
        model,
        tokenizer,
        prompts,
        GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts)),
        show_progress=False,
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # what model.precision=bf16 does to decoding
        in_bf16, bf16_seconds = timed(
            generate,
            model,
            tokenizer,
            prompts,
            GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts)),
            show_progress=False,
        )
    batched, batched_seconds = timed(hf_generate, model, tokenizer, prompts)
    subset = prompts[:8]  # one at a time is slow: time 8 prompts and scale
    _, single_seconds = timed(lambda: [hf_generate(model, tokenizer, [p]) for p in subset])
    single_rate = len(subset) * NEW_TOKENS / single_seconds

    # The widest batch: every prompt under 8 sampling seeds at once, 256 rows per step (what stacked settings give).
    wide_rows = [p for _ in range(8) for p in prompts]
    _, wide_seconds = timed(
        generate,
        model,
        tokenizer,
        wide_rows,
        GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(wide_rows), do_sample=True),
        show_progress=False,
    )
    agree = sum(o.token_ids == b.tolist()[: len(o.token_ids)] for o, b in zip(ours, batched))
    rates = {
        "hyperfitting batched decode": tokens / ours_seconds,
        "the same under bf16 autocast": tokens / bf16_seconds,
        f"ours, {len(wide_rows)} rows per step (sampled)": len(wide_rows) * NEW_TOKENS / wide_seconds,
        "model.generate, whole batch": tokens / batched_seconds,
        "model.generate, one prompt at a time": single_rate,
    }
    print(
        f"machine: {machine()}, fp32 matmul peak {peak:.0f} GFLOP/s; {len(prompts)} prompts x {NEW_TOKENS} new tokens"
    )
    for name, rate in rates.items():
        print(f"{name:38s} {rate:7.1f} tok/s   {rate * flops_per_token / 1e9 / peak:6.1%} of the compute bound")
    print(
        f"ours / one at a time: {rates['hyperfitting batched decode'] / single_rate:.1f}x (goal 5x); "
        f"ours / batched generate: {rates['hyperfitting batched decode'] / rates['model.generate, whole batch']:.2f}x "
        "(goal >= 1)"
    )
    print(f"identical greedy tokens on {agree}/{len(prompts)} prompts")
    same = sum(o.token_ids == b.token_ids for o, b in zip(ours, in_bf16))
    print(
        "bf16 autocast / fp32 decoding: "
        f"{rates['the same under bf16 autocast'] / rates['hyperfitting batched decode']:.2f}x; "
        f"identical greedy tokens on {same}/{len(prompts)} prompts (the share of the compute bound above is against "
        "the fp32 peak)"
    )
    ours_rate = rates["hyperfitting batched decode"]
    record(
        "generation",
        "Generation: batched greedy decoding against `model.generate`",
        ["path", "tokens/s", "share of the fp32 compute bound", "ours over it"],
        [
            [name, round(rate, 1), f"{rate * flops_per_token / 1e9 / peak:.1%}", round(ours_rate / rate, 2)]
            for name, rate in rates.items()
        ],
        [
            f"{len(prompts)} prompts x {NEW_TOKENS} new tokens; fp32 matmul peak {peak:.0f} GFLOP/s measured in the "
            "same process.",
            f"Greedy tokens identical to batched `generate` on {agree}/{len(prompts)} prompts, to bf16 autocast's on "
            f"{same}/{len(prompts)}.",
        ],
        rates=rates,
        peak_gflops=peak,
    )


if __name__ == "__main__":
    main()
