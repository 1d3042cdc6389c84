"""Benchmark 3: model FLOPs utilisation of a full fine-tuning step, fp32 and bf16 autocast (fp32 master weights).

Batch 8 x 128 tokens of the embedded SmolLM2-135M, Adam, lr 1e-4. MFU = 6 x (matmul
parameters) x tokens + attention, per second, over the fp32 matmul peak measured in this
process. The bf16 loss curve over the same steps is compared with fp32's.

    .venv/bin/python benchmarks/full_finetune_mfu.py
"""

from __future__ import annotations

import copy
import time

import torch

from common import forward_flops_per_token, load_embedded, machine, matmul_peak_gflops, record  # noqa: E402

BATCH, LENGTH, STEPS = 8, 128, 6


def run(model, ids, bf16: bool):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses, times = [], []
    for step in range(STEPS):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids[step % len(ids)], labels=ids[step % len(ids)], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
        losses.append(float(loss))
    return losses, sorted(times[1:])[len(times[1:]) // 2]  # median step, first one excluded


def main():
    base, _ = load_embedded()
    base.train(False)
    ids = torch.randint(3, base.config.vocab_size, (2, BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    peak32, peak16 = matmul_peak_gflops(), matmul_peak_gflops(torch.bfloat16)
    step_flops = 3 * forward_flops_per_token(base, context=LENGTH) * BATCH * LENGTH  # forward + backward (2x)
    print(f"machine: {machine()}; matmul peak fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    results = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        losses, seconds = run(copy.deepcopy(base), ids, bf16)
        results[name] = (losses, seconds)
        rate = step_flops / seconds / 1e9
        against = f"; {rate / peak16:5.1%} of the bf16 peak" if bf16 else " (goal 60%)"
        print(
            f"{name:14s} step {seconds:5.2f} s  {rate:5.1f} GFLOP/s  MFU {rate / peak32:5.1%} of the fp32 "
            f"peak{against}  "
            f"losses {' '.join(f'{l:.3f}' for l in losses)}"
        )
    (l32, s32), (l16, s16) = results["fp32"], results["bf16 autocast"]
    drift = max(abs(a - b) for a, b in zip(l32, l16))
    print(
        f"bf16 / fp32 speed: {s32 / s16:.2f}x; largest loss difference over {STEPS} steps {drift:.3f} nats "
        f"({'within' if drift < 0.05 else 'outside'} the 0.05 tolerance)"
    )
    record(
        "full-finetune-mfu",
        "Full fine-tuning efficiency (MFU), fp32 and bf16 autocast",
        ["precision", "step (s)", "GFLOP/s", "MFU of the fp32 peak", "MFU of the bf16 peak"],
        [
            [
                name,
                round(seconds, 2),
                round(step_flops / seconds / 1e9, 1),
                f"{step_flops / seconds / 1e9 / peak32:.1%}",
                f"{step_flops / seconds / 1e9 / peak16:.1%}",
            ]
            for name, (_, seconds) in results.items()
        ],
        [
            f"Matmul peaks measured in the same process: fp32 {peak32:.0f}, bf16 {peak16:.0f} GFLOP/s.",
            f"bf16 autocast {s32 / s16:.2f}x fp32 per step; the losses differ by up to {drift:.3f} nats over "
            f"{STEPS} steps.",
        ],
        losses={name: losses for name, (losses, _) in results.items()},
    )


if __name__ == "__main__":
    main()
