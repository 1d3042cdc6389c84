"""Claim 5: Late-Stage LoRA, LoRA on the last blocks matches LoRA on all blocks."""

from __future__ import annotations

import math

import numpy as np

from hyperfitting import stats
from hyperfitting.claims.core import (
    Check,
    Claim,
    ClaimSpec,
    Rule,
    gain_check,
    loss_hyperfitted,
    make_claim,
    not_run,
    register_claim,
)
from hyperfitting.claims.worlds import Truths, noisy, prompts, seed_shifts

RULE = Rule(
    "share of LoRA-on-all-blocks' TTR gain over base greedy that LoRA on the last blocks reaches, both trained to the "
    "target loss, paired over prompts",
    "above",
    0.8,
    "non-inferiority relative to the gain: 'matches' allows the last blocks to fall short of all blocks by less than a "
    "fifth of "
    "what all blocks gained (an absolute margin would mean a different thing at every size of gain)",
    seeds_key="study.controls_replicates",
)

# Claim 5 compares two trained arms: each arm's greedy TTR varies between seeds by this much (hyperfitted TTR over three
# fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373), propagated to the share of the gain.
ARM_SEED_SD = (
    0.047,
    "hyperfitted greedy TTR over three fp32 seeds of the standard preset, SmolLM2-135M: 0.451, 0.458, 0.373",
)


def claim_late_stage(results: dict | None) -> Claim:
    """Claim 5: is LoRA on the last blocks non-inferior to LoRA on all blocks, relative to what all blocks gained?

    Gated only by the two arms it compares (a diverged first-blocks control is evidence beside it, not a condition),
    and each arm must itself have hyperfitted and raised greedy TTR over the base model: two arms equal to base are not
    a match, they are no hyperfitting.
    """
    if not results or not all(k in results.get("methods", {}) for k in ("lora:last", "lora:all")):
        return not_run(5)
    m = results["methods"]
    if "per_prompt_ttr" not in results.get("base", {}):
        return not_run(5, "these results predate the base model's per-prompt TTR: rerun the controls")
    target = results["until_loss"]
    # Each arm's training seeds (study.controls_replicates), each arm on its own; one seed: its only run.
    seeds = {key: results.get("replicates", {}).get(key) or [m[key]] for key in ("lora:last", "lora:all")}
    runs = min(len(rows) for rows in seeds.values())
    if len({len(rows) for rows in seeds.values()}) > 1 and not any(
        r.get("diverged") for v in seeds.values() for r in v
    ):
        counts = ", ".join(f"{key} {len(rows)}" for key, rows in seeds.items())
        return make_claim(5, None, [], f"the arms have different numbers of training seeds ({counts}): not compared")
    checks = []
    for key, rows in seeds.items():
        for row in rows[:runs]:
            reached = not row.get("diverged", False) and loss_hyperfitted(
                row["initial_train_loss"], row["final_train_loss"], target
            )
            checks.append(
                Check(
                    f"{key} hyperfitted" + (f" (seed {row['seed']})" if runs > 1 and "seed" in row else ""),
                    reached,
                    f"loss {row['initial_train_loss']:.3f} -> {row['final_train_loss']:.3f} in {row['epochs']} epochs"
                    + (f", target {target:g}" if target is not None else "")
                    + ("; diverged" if row.get("diverged") else ""),
                )
            )
    lasts = [row.get("per_prompt_ttr") for row in seeds["lora:last"][:runs]]
    everys = [row.get("per_prompt_ttr") for row in seeds["lora:all"][:runs]]
    last, every, base = lasts[0], everys[0], results["base"]["per_prompt_ttr"]
    if any(arm is None for arm in lasts + everys):  # a diverged control has no continuations
        return make_claim(5, None, checks, "a compared arm diverged: nothing to compare")
    if runs > 1:  # each arm's gain over base, pooled over its seeds
        last, every = list(np.mean(lasts, axis=0)), list(np.mean(everys, axis=0))
    for key, arm in (("lora:last", last), ("lora:all", every)):
        checks.append(gain_check([(arm, base)], f"{key} raised greedy TTR over base")[0])
    blocks = results.get("train_blocks")
    evidence = (
        f"TTR base {stats.mean(base)}, last {stats.mean(last)}, all {stats.mean(every)}; last minus all "
        f"{stats.paired_difference(last, every)}; trainable parameters {m['lora:last']['trainable_parameters']:,} vs "
        f"{m['lora:all']['trainable_parameters']:,}"
        + (
            f"; the controls trained on {blocks} blocks"
            + (
                ", the study's own training data"
                if results.get("on_study_data")
                else ", the first of the study's training blocks, not all of "
                "them as in claims 1-4 (study.controls_on_study_data=false)"
            )
            if blocks
            else ""
        )
    )
    if m.get("lora:first", {}).get("per_prompt_ttr"):
        early = stats.paired_difference(last, m["lora:first"]["per_prompt_ttr"])
        evidence += f"; last minus first {early} (evidence beside the verdict)"
    # Each arm averaged over its seeds, per prompt; with several seeds per arm, each arm's seed-to-seed spread of its
    # mean gain is measured and carried to the share (stats.between_arms: no seed of one arm is paired with one of the
    # other).
    estimate = stats.pooled([(last, base, every, base)], stats.SHARE_OF_GAIN)
    if runs > 1:
        gains = [[float(np.mean(np.subtract(arm, base))) for arm in arms] for arms in (lasts, everys)]
        estimate = stats.between_arms(estimate, *gains)
        evidence += f"; {runs} training seeds per arm, each arm's seed spread measured"
        return make_claim(5, estimate, checks, evidence)
    # Each arm is one training run: its seed-to-seed spread, carried to the share (last - base) / (all - base) to first
    # order.
    gain = float(np.mean(every) - np.mean(base))
    share = estimate.value if math.isfinite(estimate.value) else 0.0
    seed_sd = (
        (
            ARM_SEED_SD[0] * math.sqrt(1 + share**2) / gain,
            f"each arm's TTR seed SD {ARM_SEED_SD[0]:g} at a gain of {gain:.3f}: {ARM_SEED_SD[1]}",
        )
        if gain > 0
        else None
    )
    return make_claim(5, estimate, checks, evidence, seed_sd)


def world_late_stage(design, spreads, effect, rng):
    gain, half = 0.25, spreads.paired_sd / math.sqrt(2)
    base = prompts(design, spreads, rng)
    row = {"initial_train_loss": 4.0, "final_train_loss": 0.05, "epochs": 10, "trainable_parameters": 1000}
    runs = design.control_replicates
    # Each training run of each arm: its own seed shift of the recipe's mean TTR.
    shifts = seed_shifts(spreads, ARM_SEED_SD[0], 2 * runs, rng)
    if runs == 1:
        last_seed, all_seed = shifts
        results = {
            "until_loss": 0.1,
            "base": {"per_prompt_ttr": noisy(base, 0.02, rng)},
            "methods": {
                "lora:last": {**row, "per_prompt_ttr": noisy(base + effect * gain + last_seed, half, rng)},
                "lora:all": {**row, "per_prompt_ttr": noisy(base + gain + all_seed, half, rng)},
            },
        }
        return claim_late_stage(results), effect
    seeds = {
        "lora:last": [
            {**row, "seed": r, "per_prompt_ttr": noisy(base + effect * gain + shifts[r], half, rng)}
            for r in range(runs)
        ],
        "lora:all": [
            {**row, "seed": r, "per_prompt_ttr": noisy(base + gain + shifts[runs + r], half, rng)} for r in range(runs)
        ],
    }
    results = {
        "until_loss": 0.1,
        "base": {"per_prompt_ttr": noisy(base, 0.02, rng)},
        "methods": {key: rows[0] for key, rows in seeds.items()},
        "replicates": seeds,
    }
    return claim_late_stage(results), effect


register_claim(
    ClaimSpec(
        5,
        "Late-Stage LoRA: the last blocks match all blocks",
        "last 5 blocks match or beat all blocks with ~80% fewer trainable parameters",
        RULE,
        lambda evidence: claim_late_stage(evidence.controls),
        world_late_stage,
        Truths(0.8, 0.6, 1.0, "the paper: the last blocks match all blocks (share 1)"),
        on_full_finetune=False,
    )
)
