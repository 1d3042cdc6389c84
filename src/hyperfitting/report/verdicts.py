"""The five claims of Li et al. (2026) as rules over measured evidence: holds, does not hold, or inconclusive.

Each rule is stated in words next to its verdict in the report, so a reader can disagree
with the thresholds rather than with a hidden judgement.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE, NOT_RUN = "holds", "does not hold", "inconclusive", "not run"


@dataclass
class Claim:
    number: int
    name: str
    evidence: str
    paper: str
    verdict: str
    rule: str


def claim_temperature(results: dict | None) -> Claim:
    name = "Not temperature: entropy-matched sampling does not recover the diversity"
    rule = ("holds if the base model sampled at T* has a TTR at least 0.05 and two seed spreads below the hyperfitted model's "
            "greedy TTR; does not hold if it reaches the hyperfitted TTR; otherwise inconclusive")
    paper = "TTR 0.397 at T*=0.59 vs 0.684 hyperfitted (TinyLlama-1.1B)"
    if not results:
        return Claim(1, name, "-", paper, NOT_RUN, rule)
    at_t_star = results["table"]["base, T*"]["ttr"]
    tuned = results["table"]["hyperfitted"]["ttr"]["mean"]
    gap = tuned - at_t_star["mean"]
    evidence = (f"T* = {results['sampling_temperature']:.2f}; TTR base at T* {at_t_star['mean']:.3f} ± {at_t_star['std']:.3f} "
                f"vs hyperfitted {tuned:.3f}; base at T=1 {results['table']['base, T=1']['ttr']['mean']:.3f}")
    if gap >= 0.05 and gap >= 2 * at_t_star["std"]:
        verdict = HOLDS
    elif gap <= 0:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Claim(1, name, evidence, paper, verdict, rule)


def claim_static_bias(results: dict | None) -> Claim:
    name = "Not static reweighting: a fixed logit offset does not reproduce the gain"
    rule = ("share of the hyperfitted TTR gain over base greedy recovered by the best alpha (or the full offset): "
            "holds below 25%, does not hold above 75%, otherwise inconclusive")
    paper = "diversity falls as alpha grows (TTR 0.215 at alpha 0.5)"
    if not results:
        return Claim(2, name, "-", paper, NOT_RUN, rule)
    base_ttr = results["curve"][0]["ttr"]
    gain = results["hyperfitted"]["ttr"] - base_ttr
    best = max([r["ttr"] for r in results["curve"][1:]] + [results["full_vocabulary_offset"]["ttr"]])
    recovered = (best - base_ttr) / gain if gain > 0 else float("nan")
    evidence = (f"best static TTR {best:.3f} vs base {base_ttr:.3f} and hyperfitted {results['hyperfitted']['ttr']:.3f} "
                f"({recovered:.0%} of the gain); Spearman(alpha, trigram rep) {results['spearman_alpha_vs_trigram_rep']['rho']:+.2f}")
    if gain <= 0:
        return Claim(2, name, evidence + "; hyperfitting gave no TTR gain to explain", paper, INCONCLUSIVE, rule)
    verdict = HOLDS if recovered < 0.25 else FAILS if recovered > 0.75 else INCONCLUSIVE
    return Claim(2, name, evidence, paper, verdict, rule)


def claim_ranks(results: dict | None) -> Claim:
    name = "Dynamic, context-dependent rank reordering"
    rule = ("holds if at least 10% of greedy steps override the base top-1 and the promoted tokens' shift is mostly "
            "context-dependent (static share below 0.5); does not hold if overrides are under 2% or the static share exceeds 0.8")
    paper = "39.1% overrides, 12.9% of them from base rank > 10"
    if not results:
        return Claim(3, name, "-", paper, NOT_RUN, rule)
    static = results["context_dependence"].get("static_share", float("nan"))
    transplant = results["rank_transplant"]
    evidence = (f"{results['override_rate']:.1%} overrides, {results['share_of_overrides_from_rank_over_10']:.1%} of them from rank > 10 "
                f"(deepest {results['max_base_rank_chosen']}); static share {static:.2f}; transplant TTR: hyperfitted ranking + base profile "
                f"{transplant['hyperfitted ranking + base profile']['ttr']['mean']:.3f}, base ranking + hyperfitted profile "
                f"{transplant['base ranking + hyperfitted profile']['ttr']['mean']:.3f}")
    if results["override_rate"] < 0.02 or static > 0.8:
        verdict = FAILS
    elif results["override_rate"] >= 0.10 and static < 0.5:
        verdict = HOLDS
    else:
        verdict = INCONCLUSIVE
    return Claim(3, name, evidence, paper, verdict, rule)


def claim_geometry(results: dict | None) -> Claim:
    name = "Terminal Expansion: the largest dimension increase is in the final block"
    rule = ("holds if the block with the largest increase of participation ratio is the final block and the increase is positive; "
            "does not hold if the final block's increase is zero or negative; otherwise inconclusive")
    paper = "Delta PR +80.8 at the final block (TinyLlama, width 2048: +0.039 per unit width)"
    if not results:
        return Claim(4, name, "-", paper, NOT_RUN, rule)
    v = results["verdict"]
    evidence = (f"largest Delta PR at {v['largest_delta_pr_layer']} ({v['largest_delta_pr']:+.1f}); final block {v['final_block_delta_pr']:+.1f} "
                f"({v['final_block_delta_pr_per_hidden_size']:+.3f} per unit width)")
    post_norm = [r for r in results["layers"] if r["layer"] == "final norm"]
    if post_norm:  # the pitfall: Hugging Face's last hidden state is taken after this norm
        evidence += f"; after the final norm {post_norm[0]['delta_pr']:+.1f} (standardised {post_norm[0]['delta_pr_std']:+.1f})"
    if v["final_block_delta_pr"] <= 0:
        verdict = FAILS
    elif v["final_block_is_largest"]:
        verdict = HOLDS
    else:
        verdict = INCONCLUSIVE
    return Claim(4, name, evidence, paper, verdict, rule)


def claim_late_stage(results: dict | None) -> Claim:
    name = "Late-Stage LoRA: the last blocks suffice, the first do not"
    rule = ("on the same data and budget, holds if LoRA on the last K blocks reaches a greedy TTR within 0.02 of LoRA on all blocks "
            "(or above) and above LoRA on the first K; does not hold if it trails all blocks by more than 0.05; otherwise inconclusive")
    paper = "last 5 blocks match or beat all blocks with ~80% fewer trainable parameters"
    if not results or not all(k in results["methods"] for k in ("lora:last", "lora:all", "lora:first")):
        return Claim(5, name, "-", paper, NOT_RUN, rule)
    m = results["methods"]
    last, every, first = m["lora:last"]["ttr"], m["lora:all"]["ttr"], m["lora:first"]["ttr"]
    evidence = (f"TTR last {last:.3f}, all {every:.3f}, first {first:.3f}, base {results['base']['ttr']:.3f}; trainable parameters "
                f"{m['lora:last']['trainable_parameters']:,} vs {m['lora:all']['trainable_parameters']:,}")
    if "full" in m:
        evidence += f"; full fine-tune TTR {m['full']['ttr']:.3f}"
    if last >= every - 0.02 and last > first:
        verdict = HOLDS
    elif last < every - 0.05:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Claim(5, name, evidence, paper, verdict, rule)


def all_claims(analyses: dict[str, dict | None], controls: dict | None) -> list[Claim]:
    return [
        claim_temperature(analyses.get("temperature")),
        claim_static_bias(analyses.get("static-bias")),
        claim_ranks(analyses.get("ranks")),
        claim_geometry(analyses.get("geometry")),
        claim_late_stage(controls),
    ]
