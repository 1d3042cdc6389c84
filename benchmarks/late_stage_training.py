"""Benchmark 1: one epoch of Late-Stage LoRA with the trunk cache, against transformers + PEFT with a full forward pass.

Both train LoRA (rank 32, alpha 64, all linear projections) on blocks 25-29 of the embedded
SmolLM2-135M, on the quick study's 64 blocks x 128 tokens, batch 4, Adam. The baseline is
what a researcher writes: `LoraConfig(layers_to_transform=...)` and `model(input_ids, labels=...)`.
We time the second epoch of each (the first warms up), and report the cache's one-off cost.

    .venv/bin/python benchmarks/late_stage_training.py
"""

from __future__ import annotations

import copy
import time

import torch

from common import forward_flops_per_token, load_embedded, machine, matmul_peak_gflops, record  # noqa: E402

from hyperfitting.config import load_config  # noqa: E402
from hyperfitting.training.hyperfit import BlockLoss, epoch_order  # noqa: E402
from hyperfitting.training.methods import prepare_for_training  # noqa: E402
from hyperfitting.training.trunk_cache import TrunkCache  # noqa: E402

BLOCKS, LENGTH, BATCH = 64, 128, 4


def one_epoch(loss_fn, ids, cache, optimizer, epoch):
    order = epoch_order(len(ids), 0, epoch)
    started = time.perf_counter()
    for i in range(0, len(order), BATCH):
        index = order[i : i + BATCH]
        loss = loss_fn(ids[index], cache[index] if cache is not None else None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started, loss.item()


def main():
    torch.manual_seed(0)
    base, _ = load_embedded()
    ids = torch.randint(3, base.config.vocab_size, (BLOCKS, LENGTH), generator=torch.Generator().manual_seed(0))
    config = load_config(overrides=["train.lora_rank=32", "train.lora_alpha=64", "train.blocks=last:5"])
    peak = matmul_peak_gflops()

    results = {}
    for name in ("baseline: PEFT, full forward", "hyperfitting: trunk cache"):
        model, plan = prepare_for_training(copy.deepcopy(base), config.train)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        cache, cache_seconds = None, 0.0
        if "trunk" in name:
            started = time.perf_counter()
            cache = TrunkCache.build(model, plan.first_trainable_block, ids, 8, 2.0)
            cache_seconds = time.perf_counter() - started
        loss_fn = BlockLoss(model, cache)
        one_epoch(loss_fn, ids, cache, optimizer, 1)  # warm-up epoch
        seconds, loss = one_epoch(loss_fn, ids, cache, optimizer, 2)
        results[name] = (seconds, cache_seconds, loss)
        print(
            f"{name:32s} epoch {seconds:6.1f} s  ({BLOCKS * LENGTH / seconds:6.0f} tok/s)  one-off cache "
            f"{cache_seconds:5.1f} s"
        )

    baseline, ours = results["baseline: PEFT, full forward"][0], results["hyperfitting: trunk cache"][0]
    n = len(range(30))
    full_forward = forward_flops_per_token(base)
    top_forward = forward_flops_per_token(base, range(25, n))
    # Backward of frozen weights computes input gradients only: about one forward's worth, for the top only.
    ceiling = (full_forward + top_forward) / (top_forward + top_forward)
    print(f"\nmachine: {machine()}, fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"speed-up per epoch after the first: {baseline / ours:.2f}x (goal 4x)")
    print(
        f"FLOP ceiling of skipping blocks 0-24: {ceiling:.2f}x (the LM head, 576 x 49152, is "
        f"{2 * 576 * 49152 / top_forward:.0%} "
        f"of the top's forward FLOPs); the cache reaches {baseline / ours / ceiling:.0%} of that ceiling"
    )
    payback = results["hyperfitting: trunk cache"][1] / max(baseline - ours, 1e-9)
    print(f"cache pays for itself after {payback:.2f} epochs")
    record(
        "late-stage-training",
        "Late-Stage LoRA: trunk cache against transformers + PEFT",
        ["path", "epoch (s)", "tokens/s", "one-off cost (s)", "loss after 2 epochs"],
        [
            [name, round(seconds, 1), round(BLOCKS * LENGTH / seconds), round(cache_seconds, 1), round(loss, 4)]
            for name, (seconds, cache_seconds, loss) in results.items()
        ],
        [
            f"Trunk cache {baseline / ours:.2f}x per epoch (goal 4x); the FLOP ceiling of skipping blocks 0-24 is "
            f"{ceiling:.2f}x (the head is most of the top's FLOPs), so the cache reaches "
            f"{baseline / ours / ceiling:.0%} of it and pays for itself after {payback:.2f} epochs.",
            f"fp32 matmul peak {peak:.0f} GFLOP/s measured in the same process.",
        ],
        seconds={name: value[0] for name, value in results.items()},
    )


if __name__ == "__main__":
    main()
