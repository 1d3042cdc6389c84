"""Claim 4's causal test: swap the final transformer block between the two models.

The geometry analysis shows *where* the representations change; it cannot say that the change
there *causes* the diverse greedy output. Here the base model runs with the hyperfitted model's
final block in place of its own (everything else base), and the hyperfitted model with the base
model's final block. Each decodes the analysis prompts greedily, and we ask what share of the
hyperfitted model's gain over the base model comes back (or goes away): in diversity (TTR) and
in rank reordering (the share of steps whose token is not the base model's top-1).

If Terminal Expansion in the final block drives hyperfitting, the first swap recovers most of
the gain and the second removes most of it. A block is swapped as a module (its LoRA layers
with it), so the swap is exact for any architecture whose blocks take the same inputs.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from hyperfitting import stats
from hyperfitting.analysis.common import analysis_tokens, decode, per_prompt_ttr
from hyperfitting.analysis.teacher_forcing import overrides_per_prompt
from hyperfitting.figures import new_figure, savefig
from hyperfitting.config import RunConfig
from hyperfitting.models.blocks import find_block_stack
from hyperfitting.rundir import write_text

BASE, FORWARD, REVERSE, TUNED = (
    "base",
    "base + hyperfitted final block",
    "hyperfitted + base final block",
    "hyperfitted",
)
MEASURES = {"ttr": "diversity (TTR)", "override_rate": "rank reordering (override rate)"}


@contextmanager
def swapped_block(model, donor, index: int) -> Iterator[None]:
    """``model`` runs with ``donor``'s block ``index`` in place of its own until the context exits.

    The donor's module is shared, not copied (no second copy of the weights): inside the context
    neither model may be trained. The original block is put back however the context ends.
    """
    stack, donor_stack = find_block_stack(model), find_block_stack(donor)
    if len(stack.blocks) != len(donor_stack.blocks):
        raise ValueError(
            f"the models have {len(stack.blocks)} and {len(donor_stack.blocks)} blocks: only blocks of the same "
            "architecture can be swapped"
        )
    original = stack.blocks[index]
    stack.blocks[index] = donor_stack.blocks[index]
    try:
        yield
    finally:
        stack.blocks[index] = original


def block_swap_analysis(
    base, tuned, tokenizer, prompts: list[list[int]], config: RunConfig, base_greedy=None, tuned_greedy=None
) -> dict:
    """Greedy decodes of the two models and of the two swaps, with the share of the gain each swap carries."""
    from hyperfitting.analysis.geometry import weight_change_per_block

    final = len(find_block_stack(base).blocks) - 1
    paths = {
        BASE: base_greedy or decode(base, tokenizer, prompts, config, desc="base greedy"),
        TUNED: tuned_greedy or decode(tuned, tokenizer, prompts, config, desc="hyperfitted greedy"),
    }
    with swapped_block(base, tuned, final):
        paths[FORWARD] = decode(base, tokenizer, prompts, config, desc=FORWARD)
    with swapped_block(tuned, base, final):
        paths[REVERSE] = decode(tuned, tokenizer, prompts, config, desc=REVERSE)

    per_prompt = {}
    for name in (BASE, FORWARD, REVERSE, TUNED):
        overrides, steps = overrides_per_prompt(base, prompts, [c.token_ids for c in paths[name]])
        per_prompt[name] = {
            "ttr": per_prompt_ttr(paths[name]),
            "override_rate": [o / s if s else 0.0 for o, s in zip(overrides, steps)],
        }
    rows = {
        name: {measure: stats.mean(values[measure]).to_dict() for measure in MEASURES}
        for name, values in per_prompt.items()
    }

    def share(name: str, measure: str) -> dict:
        """(row - base) / (hyperfitted - base) over the same prompts: 1 = the whole gain, 0 = none of it."""
        gain = np.mean(per_prompt[TUNED][measure]) - np.mean(per_prompt[BASE][measure])
        if abs(gain) < 1e-9:
            return {
                "value": None,
                "why": f"the hyperfitted model does not differ from the base model in {MEASURES[measure]}",
            }
        return stats.ratio_of_mean_differences(
            (per_prompt[name][measure], per_prompt[BASE][measure]),
            (per_prompt[TUNED][measure], per_prompt[BASE][measure]),
        ).to_dict()

    change = weight_change_per_block(base, tuned)
    return {
        "final_block": final,
        "final_block_weight_change": change[final],
        # A swap of a block that fine-tuning left unchanged is no test: say so rather than report a zero.
        "swap_is_effective": change[final] > 0,
        "rows": rows,
        "per_prompt": per_prompt,
        "share_of_gain": {row: {measure: share(row, measure) for measure in MEASURES} for row in (FORWARD, REVERSE)},
        "prompts": len(prompts),
        "max_new_tokens": analysis_tokens(config),
    }


def run(context) -> dict:
    """The registry's entry point (hyperfitting.registry): the analysis on a study's context."""
    return block_swap_analysis(
        context.base,
        context.tuned,
        context.tokenizer,
        context.prompts,
        context.config,
        context.base_greedy,
        context.tuned_greedy,
    )


def write_block_swap_analysis(results: dict, folder: Path) -> None:
    write_text(folder / "table.md", block_swap_table(results))
    plot_block_swap(results, folder / "block_swap.png")


def _share_text(share: dict) -> str:
    if share.get("value") is None:
        return f"undefined ({share['why']})"
    return f"{share['value']:+.2f} [{share['low']:+.2f}, {share['high']:+.2f}]"


def block_swap_table(results: dict) -> str:
    final = results["final_block"]
    lines = [
        f"Block {final} (the final block) swapped between the models; greedy decoding of {results['prompts']} prompts, "
        f"{results['max_new_tokens']} new tokens. Override rate: share of steps whose token is not the base model's "
        "top-1 "
        "(teacher-forcing the base model along each path). Mean [95% interval over prompts].",
        "",
    ]
    if not results["swap_is_effective"]:
        lines += [
            f"**No test**: fine-tuning left block {final} unchanged (relative weight change 0), so both swaps change "
            "nothing.",
            "",
        ]
    lines += ["| model | " + " | ".join(MEASURES.values()) + " |", "|---|---|---|"]
    for name, row in results["rows"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row[m]['value']:.3f} [{row[m]['low']:.3f}, {row[m]['high']:.3f}]" for m in MEASURES)
            + " |"
        )
    lines += [
        "",
        "| swap | share of the hyperfitted gain in " + " | share in ".join(MEASURES.values()) + " |",
        "|---|---|---|",
    ]
    for name, shares in results["share_of_gain"].items():
        lines.append(f"| {name} | " + " | ".join(_share_text(shares[m]) for m in MEASURES) + " |")
    lines += [
        "",
        "A share near 1 for the first swap and near 0 for the second would say the final block alone carries the "
        "effect. "
        f"Relative weight change of block {final}: {results['final_block_weight_change']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


def plot_block_swap(results: dict, path: Path) -> None:
    figure, axes = new_figure(1, len(MEASURES), figsize=(11, 3.8))
    figure.subplots_adjust(wspace=0.3)
    names = list(results["rows"])
    colours = ["tab:gray", "tab:purple", "tab:olive", "tab:red"]
    for axis, (measure, label) in zip(axes, MEASURES.items()):
        values = [results["rows"][n][measure] for n in names]
        errors = [[v["value"] - v["low"] for v in values], [v["high"] - v["value"] for v in values]]
        axis.bar(range(len(names)), [v["value"] for v in values], yerr=errors, capsize=3, color=colours[: len(names)])
        axis.set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
        axis.set_ylabel(label)
        axis.set_title(f"Final block swapped: {label}", fontsize=9)
    savefig(figure, path)
