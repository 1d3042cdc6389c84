"""Benchmark: several decoding settings of the same prompts, one wide batch against one batch per setting.

The analyses' workload: the quick study's 16 fiction prompts of 32 tokens, 96 new tokens, under the
temperature analysis' sampled settings of the base model (T 1, T 0.4, T 0.7 with top-k 50 and top-p
0.9, and greedy) on the embedded SmolLM2-135M. Baseline: one `generate` call per setting (16 rows per
step); against it, `generate_variants` (64 rows per step, one prefill). Prints the ratio and how many
continuations came out identical (sampling draws from the same per-prompt generators either way; a
difference can only come from floating-point near-ties, which a wider matrix product may break
differently).

    .venv/bin/python benchmarks/decode_variants.py
"""

from __future__ import annotations

from dataclasses import replace

from common import forward_flops_per_token, load_embedded, machine, matmul_peak_gflops, quick_data, record, timed  # noqa: E402

from hyperfitting.config import GenerateArgs  # noqa: E402
from hyperfitting.generation.decoding import generate, generate_variants  # noqa: E402

NEW_TOKENS = 96


def main():
    model, tokenizer = load_embedded()
    data = quick_data(tokenizer)
    prompts = [p.prompt_ids for p in data.prompts["fiction"]]
    plain = GenerateArgs(max_new_tokens=NEW_TOKENS, batch_size=len(prompts))
    settings = [
        replace(plain, do_sample=True, temperature=1.0),
        replace(plain, do_sample=True, temperature=0.4),
        replace(plain, do_sample=True, temperature=0.7, top_k=50, top_p=0.9),
        plain,
    ]
    tokens = len(prompts) * NEW_TOKENS * len(settings)
    peak = matmul_peak_gflops()
    flops_per_token = forward_flops_per_token(model, context=32 + NEW_TOKENS // 2)

    apart, apart_seconds = timed(
        lambda: [generate(model, tokenizer, prompts, s, show_progress=False) for s in settings]
    )
    together, together_seconds = timed(
        generate_variants, model, tokenizer, prompts, [(s, []) for s in settings], show_progress=False
    )
    same = sum(a.token_ids == b.token_ids for one, other in zip(apart, together) for a, b in zip(one, other))
    print(
        f"machine: {machine()}, fp32 matmul peak {peak:.0f} GFLOP/s; {len(prompts)} prompts x {len(settings)} settings "
        f"x {NEW_TOKENS} new tokens"
    )
    for name, seconds in (("one batch per setting", apart_seconds), ("settings in one batch", together_seconds)):
        rate = tokens / seconds
        print(f"{name:24s} {rate:7.1f} tok/s   {rate * flops_per_token / 1e9 / peak:6.1%} of the compute bound")
    print(
        f"together / apart: {apart_seconds / together_seconds:.2f}x; identical continuations "
        f"{same}/{len(prompts) * len(settings)}"
    )
    record(
        "decode-variants",
        "Settings decoded together: one wide batch against one batch per setting",
        ["path", "seconds", "tokens/s", "share of the fp32 compute bound"],
        [
            [
                name,
                round(seconds, 1),
                round(tokens / seconds, 1),
                f"{tokens / seconds * flops_per_token / 1e9 / peak:.1%}",
            ]
            for name, seconds in (("one batch per setting", apart_seconds), ("settings in one batch", together_seconds))
        ],
        [
            f"{len(prompts)} prompts x {len(settings)} settings x {NEW_TOKENS} new tokens: together "
            f"{apart_seconds / together_seconds:.2f}x apart; identical continuations "
            f"{same}/{len(prompts) * len(settings)}."
        ],
    )


if __name__ == "__main__":
    main()
