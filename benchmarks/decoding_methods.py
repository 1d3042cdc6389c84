"""Benchmark: what each decoding baseline costs, as a ratio to plain greedy decoding in the same process.

The baselines stage decodes the base model with every method of `baselines.methods`. This times each
on the quick study's workload (16 fiction prompts of 32 tokens, 96 new tokens; sampled methods decode
the preset's baselines.seeds seeds in one batch, as the stage does) and prints tokens/s and the ratio to greedy.
Contrastive search scores k candidates per step on a copy of the KV cache; beam search keeps 4
hypotheses per prompt.

Then the stage's grouping: the sampled methods in one wide batch and the greedy methods with a
processor in another (`decode_group`), against the same methods one by one, best of two interleaved
runs each, with the share of continuations whose tokens differ (floating-point near-ties of the
wider batch).

    .venv/bin/python benchmarks/decoding_methods.py
"""

from __future__ import annotations

import time
from pathlib import Path

from common import load_embedded, machine, record  # noqa: E402

from hyperfitting.config import BASELINE_METHODS, load_config  # noqa: E402
from hyperfitting.data.splits import prepare_data  # noqa: E402
from hyperfitting.generation.baselines import decode_group, decode_method, decoding_groups  # noqa: E402


def main():
    model, tokenizer = load_embedded()
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "quick.yaml")
    data = prepare_data(config.data, tokenizer)
    prompts = [p.prompt_ids for p in data.prompts["fiction"]]
    decode_method("greedy", model, tokenizer, prompts[:2], config, show_progress=False)  # warm up
    timings = {
        name: decode_method(name, model, tokenizer, prompts, config, show_progress=False) for name in BASELINE_METHODS
    }
    greedy = timings["greedy"].tokens_per_second
    print(
        f"{machine()}; {len(prompts)} prompts x {config.generate.max_new_tokens} new tokens; sampled methods x "
        f"{config.baselines.seeds} seeds"
    )
    print(f"{'method':<20} {'settings':<62} {'tokens/s':>9} {'vs greedy':>10}")
    for name, decoded in timings.items():
        speed = decoded.tokens_per_second
        print(f"{name:<20} {decoded.method.settings:<62} {speed:9.1f} {speed / greedy:9.2f}x")
    print("\nmethods of one kind in one wide batch against one by one (best of 2 interleaved runs):")
    grouped = []
    for group in (g for g in decoding_groups(BASELINE_METHODS) if len(g) > 1):
        alone_seconds, together_seconds = [], []
        for _ in range(2):
            started = time.perf_counter()
            alone = {
                name: decode_method(name, model, tokenizer, prompts, config, show_progress=False) for name in group
            }
            alone_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            together = decode_group(group, model, tokenizer, prompts, config, show_progress=False)
            together_seconds.append(time.perf_counter() - started)
        rows = [
            (a.token_ids, b.token_ids)
            for name in group
            for sa, sb in zip(alone[name].continuations, together[name].continuations)
            for a, b in zip(sa, sb)
        ]
        differ = sum(a != b for a, b in rows) / len(rows)
        print(
            f"{', '.join(group)}: one by one {min(alone_seconds):.1f} s, together {min(together_seconds):.1f} s: "
            f"{min(alone_seconds) / min(together_seconds):.2f}x; continuations that differ {differ:.1%}"
        )
        grouped.append(
            [
                ", ".join(group),
                round(min(alone_seconds), 1),
                round(min(together_seconds), 1),
                f"{min(alone_seconds) / min(together_seconds):.2f}x",
                f"{differ:.1%}",
            ]
        )
    record(
        "decoding-methods",
        "What each decoding baseline costs",
        ["method", "settings", "tokens/s", "vs greedy"],
        [
            [name, d.method.settings, round(d.tokens_per_second, 1), f"{d.tokens_per_second / greedy:.2f}x"]
            for name, d in timings.items()
        ],
        [
            f"{len(prompts)} prompts x {config.generate.max_new_tokens} new tokens; sampled methods x "
            f"{config.baselines.seeds} seed(s), in the same process.",
            *(
                f"{names} decoded together (`decode_group`): {alone} s one by one, {together} s together, {ratio}; "
                f"continuations that differ {differ}."
                for names, alone, together, ratio, differ in grouped
            ),
        ],
    )


if __name__ == "__main__":
    main()
