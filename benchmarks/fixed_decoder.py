"""Benchmark: the fixed-buffer decoder against the growing KV cache, on the CPU, and whether their greedy tokens agree.

The generation table's workload on the embedded SmolLM2-135M: the quick study's 16 fiction prompts of 32 tokens,
96 new greedy tokens, as one batch of 16 rows and as the analyses' wide batch of 64 rows (each prompt four times,
with the citation blocker on the training blocks in the wide batch, so the device table is in the loop). Each
decoder runs twice per width (the first pass apart) in this process; the ratio is fixed over growing. On a CPU
there is no graph to replay, so the fixed buffers are expected to cost about what the growing cache does (the
study's `generate.decoder=auto` keeps the growing cache here); the point is the agreement, token for token.

    .venv/bin/python benchmarks/fixed_decoder.py
"""

from __future__ import annotations


from common import load_embedded, machine, quick_data, record, timed  # noqa: E402

from hyperfitting.config import GenerateArgs  # noqa: E402
from hyperfitting.generation.decoding import generate  # noqa: E402

NEW_TOKENS = 96


def main():
    model, tokenizer = load_embedded()
    data = quick_data(tokenizer)
    prompts = [p.prompt_ids for p in data.prompts["fiction"]]
    print(f"{machine()}; SmolLM2-135M, {len(prompts)} prompts of 32 tokens, {NEW_TOKENS} new greedy tokens")
    table = []
    for label, rows, blocker in (("16 rows", prompts, False), ("64 rows, citation blocker", prompts * 4, True)):
        outputs, seconds = {}, {}
        for decoder in ("dynamic", "fixed"):
            args = GenerateArgs(
                max_new_tokens=NEW_TOKENS, batch_size=len(rows), decoder=decoder, citation_blocker=blocker
            )
            run = lambda: generate(model, tokenizer, rows, args, show_progress=False, training_blocks=data.train_blocks)  # noqa: E731
            first, first_seconds = timed(run)
            outputs[decoder], seconds[decoder] = timed(run)
            # a decoder agrees with itself
            assert [o.token_ids for o in first] == [o.token_ids for o in outputs[decoder]]
            print(
                f"  {label}, {decoder:7s}: first pass {first_seconds:5.1f} s, then {seconds[decoder]:5.1f} s "
                f"({len(rows) * NEW_TOKENS / seconds[decoder]:,.0f} tokens/s)"
            )
        same = sum(a.token_ids == b.token_ids for a, b in zip(outputs["dynamic"], outputs["fixed"]))
        parted = [
            next(i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y)
            for a, b in zip(outputs["dynamic"], outputs["fixed"])
            if a.token_ids != b.token_ids
        ]
        entropy = max(
            abs(x - y) for a, b in zip(outputs["dynamic"], outputs["fixed"]) for x, y in zip(a.entropy, b.entropy)
        )
        print(
            f"  {label}: fixed / growing speed x{seconds['dynamic'] / seconds['fixed']:.2f}; identical greedy "
            "continuations "
            f"{same}/{len(rows)}"
            + (f" (the others part at steps {parted})" if parted else "")
            + f"; largest entropy difference {entropy:.1e} nats"
        )
        table.append(
            [
                label,
                round(seconds["dynamic"], 1),
                round(seconds["fixed"], 1),
                f"{seconds['dynamic'] / seconds['fixed']:.2f}x",
                f"{same}/{len(rows)}",
                f"{entropy:.1e}",
            ]
        )
    record(
        "fixed-decoder",
        "Fixed buffers against the growing cache, on the CPU",
        [
            "batch",
            "growing cache (s)",
            "fixed buffers (s)",
            "fixed / growing",
            "identical greedy",
            "largest entropy difference (nats)",
        ],
        table,
        [
            f"{len(prompts)} prompts of 32 tokens, {NEW_TOKENS} new greedy tokens; each decoder's second pass, in one "
            "process (the first pass of each is left out)."
        ],
    )


if __name__ == "__main__":
    main()
