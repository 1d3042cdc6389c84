"""Benchmark: what each decoding baseline costs, as a ratio to plain greedy decoding in the same process.

The baselines stage decodes the base model with every method of `baselines.methods`. This times each
on the quick study's workload (16 fiction prompts of 32 tokens, 96 new tokens; sampled methods decode
the preset's baselines.seeds seeds in one batch, as the stage does) and prints tokens/s and the ratio to greedy.
Contrastive search scores k candidates per step on a copy of the KV cache; beam search keeps 4
hypotheses per prompt.

    .venv/bin/python benchmarks/decoding_methods.py
"""

from __future__ import annotations

from pathlib import Path

from common import load_embedded, machine  # noqa: E402

from hyperfitting.config import BASELINE_METHODS, load_config  # noqa: E402
from hyperfitting.data.splits import prepare_data  # noqa: E402
from hyperfitting.generation.baselines import decode_method  # noqa: E402


def main():
    model, tokenizer = load_embedded()
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "quick.yaml")
    data = prepare_data(config.data, tokenizer)
    prompts = [p.prompt_ids for p in data.prompts["fiction"]]
    decode_method("greedy", model, tokenizer, prompts[:2], config, show_progress=False)  # warm up
    timings = {name: decode_method(name, model, tokenizer, prompts, config, show_progress=False) for name in BASELINE_METHODS}
    greedy = timings["greedy"].tokens_per_second
    print(f"{machine()}; {len(prompts)} prompts x {config.generate.max_new_tokens} new tokens; sampled methods x {config.baselines.seeds} seeds")
    print(f"{'method':<20} {'settings':<62} {'tokens/s':>9} {'vs greedy':>10}")
    for name, decoded in timings.items():
        speed = decoded.tokens_per_second
        print(f"{name:<20} {decoded.method.settings:<62} {speed:9.1f} {speed / greedy:9.2f}x")


if __name__ == "__main__":
    main()
