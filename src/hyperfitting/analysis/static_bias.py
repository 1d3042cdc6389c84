"""Claim 2, "not static reweighting": can a fixed vocabulary offset, added to the base model's
logits at every step, reproduce what hyperfitting does?

Over held-out contexts we measure, per vocabulary token, the mean rank gain (base rank minus
hyperfitted rank) and the mean offset (hyperfitted minus base): of raw logits by default, as
the paper defines it, or of log-probabilities, which removes each context's arbitrary
normaliser. The K tokens with the largest rank gain get their mean offset in ``delta`` (zero
elsewhere), and the base model decodes greedily with ``z + alpha * delta``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hyperfitting.analysis.common import decode, decode_many, path_summary, per_prompt_ttr
from hyperfitting.analysis.teacher_forcing import StepChoice, path_scan, stacked_logits
from hyperfitting.figures import new_figure, savefig
from hyperfitting.config import RunConfig
from hyperfitting.generation.processors import StaticLogitBias
from hyperfitting.metrics.diversity import diversity
from hyperfitting.rundir import write_text

PAPER_TTR_AT_ALPHA_05 = 0.215


def ranks_of(logits: torch.Tensor) -> torch.Tensor:
    """Rank of every token in every row, 1 = most likely: (P, V) int32."""
    order = logits.argsort(dim=-1, descending=True)
    ranks = torch.empty_like(order, dtype=torch.int32)
    ranks.scatter_(
        1,
        order,
        torch.arange(1, logits.shape[1] + 1, dtype=torch.int32, device=logits.device).expand_as(order).contiguous(),
    )
    return ranks


def token_statistics(
    base_logits: torch.Tensor,
    tuned_logits: torch.Tensor,
    chunk: int = 256,
    offset_of: str = "logprobs",
    top_k: int = 10,
) -> dict[str, torch.Tensor]:
    """Per token, over the contexts (rows): mean rank gain, mean offset (of ``offset_of``: logits or logprobs),
    mean log-probability gain, and whether the hyperfitted model ranks it in its top ``top_k`` anywhere."""
    vocabulary, device = base_logits.shape[1], base_logits.device
    rank_gain = torch.zeros(vocabulary, dtype=torch.float64, device=device)
    offset = torch.zeros(vocabulary, dtype=torch.float64, device=device)
    logprob_gain = torch.zeros(vocabulary, dtype=torch.float64, device=device)
    promoted = torch.zeros(vocabulary, dtype=torch.bool, device=device)
    for start in range(0, len(base_logits), chunk):
        base, tuned = base_logits[start : start + chunk], tuned_logits[start : start + chunk]
        tuned_ranks = ranks_of(tuned)
        rank_gain += (ranks_of(base).double() - tuned_ranks.double()).sum(0)
        gain = (torch.log_softmax(tuned, -1) - torch.log_softmax(base, -1)).double()
        logprob_gain += gain.sum(0)
        offset += (tuned - base).double().sum(0) if offset_of == "logits" else gain.sum(0)
        promoted |= (tuned_ranks <= top_k).any(0)
    count = max(1, len(base_logits))
    return {
        "rank_gain": (rank_gain / count).float(),
        "offset": (offset / count).float(),
        "logprob_gain": (logprob_gain / count).float(),
        "promoted": promoted,
    }


def static_delta(
    stats: dict[str, torch.Tensor], top_k: int, select: str = "rank_gain"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta on the K selected tokens, zero elsewhere; their indices).

    ``rank_gain``: the K largest mean rank gains (the paper's choice; on a 49k vocabulary these are
    mostly deep-tail tokens that stay out of reach). ``promoted``: the K largest mean log-probability
    gains among tokens the hyperfitted model ranks in its top k somewhere: tokens that matter to its choices.
    """
    if select == "promoted":
        score = torch.where(stats["promoted"], stats["logprob_gain"], float("-inf"))
        top = score.topk(min(top_k, int(stats["promoted"].sum()))).indices
    else:
        top = stats["rank_gain"].topk(top_k).indices
    delta = torch.zeros_like(stats["offset"])
    delta[top] = stats["offset"][top]
    return delta, top


def fit_static_temperature(
    base_logits: torch.Tensor, tuned_logits: torch.Tensor, top_k: int = 10, chunk: int = 256
) -> dict:
    """The strongest static model: a temperature and a fixed per-token offset, log_softmax(tuned) ~ scale * base +
    bias[token].

    Two fits, and the one that reproduces more of the hyperfitted model's top-1 choices on these contexts is kept:
    least squares over every vocabulary entry (:func:`fit_over_vocabulary`) and least squares over the top of each
    context's hyperfitted ranking (:func:`fit_over_top_of_ranking`). The first lets the deep tail, tens of thousands of
    entries a context, set the temperature; the second fits what the null has to explain, the order of the few tokens
    that compete for the choice. Its greedy choice is argmax(scale * base + bias).
    """
    candidates = {
        "every vocabulary entry": fit_over_vocabulary(base_logits, tuned_logits, chunk),
        f"the top {top_k} of each context": fit_over_top_of_ranking(base_logits, tuned_logits, top_k),
    }
    chosen = tuned_logits.argmax(-1)
    agreement = {
        name: float((static_choice(base_logits, fit) == chosen).float().mean()) if len(chosen) else 0.0
        for name, fit in candidates.items()
    }
    best = max(agreement, key=agreement.get)  # ties: the first, the full-vocabulary fit
    # Claim 3's null is the widest context-free family: a scale and an offset of its own for every token (which holds
    # the single temperature). Kept apart, so claim 2's static models stay the single-temperature ones they decode.
    per_token = fit_per_token_affine(base_logits, tuned_logits, chunk)
    per_token_agreement = (
        float((static_choice(base_logits, per_token) == chosen).float().mean()) if len(chosen) else 0.0
    )
    widest_name = PER_TOKEN if per_token_agreement > agreement[best] else best
    widest = {
        **(per_token if widest_name == PER_TOKEN else candidates[best]),
        "fitted_on": widest_name,
        "top1_agreement_by_fit": {**agreement, PER_TOKEN: per_token_agreement},
    }
    return {**candidates[best], "fitted_on": best, "top1_agreement_by_fit": agreement, "widest": widest}


PER_TOKEN = "a scale and an offset per token"


def fit_per_token_affine(base_logits: torch.Tensor, tuned_logits: torch.Tensor, chunk: int = 4096) -> dict:
    """Least squares over every (context, token) of tuned = scale[token] * base + bias[token] + c[context]:
    every context-free change of each token's logit that is affine in it (a temperature per token, an offset per token),
    on the raw logits (a context's constant is the context term's, and the softmax ignores it).

    Solved exactly, not by alternating updates (which crawl where the contexts' constants are large and shared by the
    two models, as logits' are): with H_v the projection onto (1, base[:, v]) over the contexts, the context terms solve
    [sum_v (I - H_v)] c = sum_v (I - H_v) tuned[:, v], a contexts x contexts system; each token's (scale, bias) is then
    its own regression. A token whose base logit does not vary over the contexts keeps the mean scale. Its greedy choice
    is argmax(scale * base + bias), per token.
    """
    rows, vocabulary = base_logits.shape
    on = {"dtype": torch.float64, "device": base_logits.device}
    if rows < 3:
        return {
            "scale": 0.0,
            "token_scale": torch.zeros(vocabulary, **on).float(),
            "bias": torch.zeros(vocabulary, **on).float(),
        }
    columns = [slice(start, min(start + chunk, vocabulary)) for start in range(0, vocabulary, chunk)]
    system, rhs = vocabulary * torch.eye(rows, **on) - vocabulary / rows, torch.zeros(rows, **on)
    weights = torch.zeros(vocabulary, **on)
    for where in columns:
        z, y = base_logits[:, where].double(), tuned_logits[:, where].double()
        z, y = z - z.mean(0), y - y.mean(0)
        square = (z * z).sum(0)
        varies = square > 1e-12 * square.max().clamp(min=1e-300)
        w = torch.where(varies, 1 / square.clamp(min=1e-300), torch.zeros_like(square))
        weights[where] = w
        system -= (z * w) @ z.T
        rhs += (y - z * ((z * y).sum(0) * w)).sum(1)
    # singular along the constant: the minimum-norm one
    context = torch.linalg.lstsq(system, rhs[:, None]).solution[:, 0]
    context -= context.mean()
    scale, bias = torch.empty(vocabulary, **on), torch.empty(vocabulary, **on)
    for where in columns:
        z, r = base_logits[:, where].double(), tuned_logits[:, where].double() - context[:, None]
        z_mean, r_mean = z.mean(0), r.mean(0)
        scale[where] = ((z - z_mean) * (r - r_mean)).sum(0) * weights[where]
        bias[where] = r_mean
    varies = weights > 0
    mean_scale = float(scale[varies].mean()) if bool(varies.any()) else 0.0
    scale = torch.where(varies, scale, torch.full_like(scale, mean_scale))
    for where in columns:
        bias[where] -= scale[where] * base_logits[:, where].double().mean(0)
    return {"scale": mean_scale, "token_scale": scale.float(), "bias": bias.float()}


def fit_over_vocabulary(base_logits: torch.Tensor, tuned_logits: torch.Tensor, chunk: int = 256) -> dict:
    """Least squares over every (context, token): log_softmax(tuned) = scale * base + bias[token] + c[context].

    The design is a full (contexts x tokens) grid, so the fit is exact by double centring: remove
    row and column means from both sides, regress for the scale, then the bias is the column mean
    of what is left.
    """
    rows, vocabulary = base_logits.shape
    on = {"dtype": torch.float64, "device": base_logits.device}
    y_rows, y_cols = torch.empty(rows, **on), torch.zeros(vocabulary, **on)
    z_rows, z_cols = torch.empty(rows, **on), torch.zeros(vocabulary, **on)
    for start in range(0, rows, chunk):
        y = torch.log_softmax(tuned_logits[start : start + chunk].float(), -1).double()
        z = base_logits[start : start + chunk].double()
        y_rows[start : start + chunk], z_rows[start : start + chunk] = y.mean(1), z.mean(1)
        y_cols += y.sum(0)
        z_cols += z.sum(0)
    y_cols /= rows
    z_cols /= rows
    y_grand, z_grand = y_cols.mean(), z_cols.mean()
    cross = square = 0.0
    for start in range(0, rows, chunk):
        y = torch.log_softmax(tuned_logits[start : start + chunk].float(), -1).double()
        z = base_logits[start : start + chunk].double()
        y = y - y_rows[start : start + chunk, None] - y_cols[None] + y_grand
        z = z - z_rows[start : start + chunk, None] - z_cols[None] + z_grand
        cross += float((y * z).sum())
        square += float((z * z).sum())
    scale = cross / square if square > 0 else 0.0
    bias = (y_cols - scale * z_cols).float()
    return {"scale": scale, "bias": bias}


def fit_over_top_of_ranking(base_logits: torch.Tensor, tuned_logits: torch.Tensor, top_k: int = 10) -> dict:
    """Least squares over each context's hyperfitted top ``top_k`` only: log_softmax(tuned) = scale * base + bias[token]
    + c[context].

    The entries form a sparse, unbalanced design (each context names its own tokens), solved by LSQR. A token that
    is in no context's top k has no fitted bias: it gets the lowest fitted one, so the null never favours it.
    """
    from scipy import sparse
    from scipy.sparse.linalg import lsqr

    rows, vocabulary = base_logits.shape
    if not rows:
        return {"scale": 0.0, "bias": torch.zeros(vocabulary, device=base_logits.device)}
    # The top-k columns are gathered where the logits are; only they (rows x k numbers) go to the host's sparse solver.
    top = tuned_logits.topk(min(top_k, vocabulary), dim=-1).indices
    y = torch.log_softmax(tuned_logits.double(), -1).gather(1, top).reshape(-1).cpu().numpy()
    z = base_logits.double().gather(1, top).reshape(-1).cpu().numpy()
    tokens, column = np.unique(top.reshape(-1).cpu().numpy(), return_inverse=True)
    context = np.repeat(np.arange(rows), top.shape[1])
    n, ones = len(y), np.ones(len(y))
    design = sparse.hstack(
        [
            sparse.csr_matrix(z[:, None]),
            sparse.csr_matrix((ones, (np.arange(n), column)), shape=(n, len(tokens))),
            sparse.csr_matrix((ones, (np.arange(n), context)), shape=(n, rows)),
        ]
    ).tocsr()
    solution = lsqr(design, y, atol=1e-10, btol=1e-10, iter_lim=20 * design.shape[1])[0]
    fitted = solution[1 : 1 + len(tokens)]
    bias = np.full(vocabulary, fitted.min())
    bias[tokens] = fitted
    return {"scale": float(solution[0]), "bias": torch.from_numpy(bias).float().to(base_logits.device)}


def static_choice(base_logits: torch.Tensor, fitted: dict) -> torch.Tensor:
    """The fitted static+temperature model's greedy choice at each row of base logits (a scale per token, if fitted
    so)."""
    scale = fitted["token_scale"].to(base_logits.device) if "token_scale" in fitted else fitted["scale"]
    return (scale * base_logits + fitted["bias"].to(base_logits.device)).argmax(-1)


def biased_choice(delta: torch.Tensor, alpha: float) -> StepChoice:
    """The greedy pick of the base model with alpha * delta added to its logits, as a decision rule."""
    return lambda logits: (logits + alpha * delta.to(logits.device)).argmax(-1)


def flip_rate(base_logits: torch.Tensor, delta: torch.Tensor, alpha: float) -> float:
    """Share of rows whose argmax changes when alpha * delta is added: does the ablation bite at all?"""
    if not len(base_logits):
        return 0.0
    return float((biased_choice(delta, alpha)(base_logits) != base_logits.argmax(-1)).float().mean())


def heldout_static_models(base, tuned, heldout_blocks: torch.Tensor, config: RunConfig) -> tuple[dict, dict]:
    """From one teacher-forced pass of both models over held-out text: the per-token statistics (rank gain,
    offset) and the fitted static+temperature model. The static-bias and rank analyses share it."""
    if not len(heldout_blocks):
        raise ValueError("the static models are fitted on held-out blocks: set data.heldout_blocks above 0")
    heldout, starts = heldout_blocks.tolist(), [1] * len(heldout_blocks)
    base_heldout = stacked_logits(base, heldout, starts, config.analysis.max_positions)
    tuned_heldout = stacked_logits(tuned, heldout, starts, config.analysis.max_positions)
    return (
        token_statistics(
            base_heldout, tuned_heldout, offset_of=config.analysis.static_bias_offset, top_k=config.analysis.rank_top_k
        ),
        fit_static_temperature(base_heldout, tuned_heldout, config.analysis.rank_top_k),
    )


def static_bias_analysis(
    base,
    tuned,
    tokenizer,
    prompts: list[list[int]],
    heldout_blocks: torch.Tensor,
    config: RunConfig,
    base_greedy=None,
    tuned_greedy=None,
    heldout_static=None,
) -> dict:
    """Claim 2: can a fixed per-token reweighting of the base model (z + alpha * delta) reproduce the gain?"""
    from scipy.stats import spearmanr

    args = config.analysis
    stats, fitted = heldout_static or heldout_static_models(base, tuned, heldout_blocks, config)
    delta, top = static_delta(stats, args.static_bias_top_k, args.static_bias_select)

    per_prompt: dict[str, list[float]] = {}

    def summary(name, outputs):
        row = path_summary(outputs)
        row["diversity"] = diversity([o.token_ids for o in outputs])
        per_prompt[name] = per_prompt_ttr(outputs)
        return row

    base_greedy = base_greedy or decode(base, tokenizer, prompts, config, desc="base greedy")
    tuned_greedy = tuned_greedy or decode(tuned, tokenizer, prompts, config, desc="hyperfitted greedy")

    # Manipulation check: along the base model's own greedy paths, how often does each static model change its choice?
    # A static model that changes nothing is no evidence. The alpha grid is extended (x4) until the K-token offset
    # bites, and only the first alpha that bites is decoded (the flip rate itself needs no decoding).
    # One pass along the base paths reads every candidate's pick at every step (the grid, then the ladder x4 up to 1e3).
    alphas = sorted(args.static_bias_alphas)
    ladder = [alphas[-1]]
    while ladder[-1] < 1e3:
        ladder.append(ladder[-1] * 4)
    rules = {f"alpha = {alpha:g}": biased_choice(delta, alpha) for alpha in alphas + ladder[1:]}
    rules["full-vocabulary offset"] = biased_choice(stats["offset"], 1.0)
    if fitted["scale"] > 0:
        rules["fitted static+temperature"] = biased_choice(fitted["bias"] / fitted["scale"], 1.0)
    base_path = path_scan(base, prompts, base_greedy, {"top1": lambda logits: logits.argmax(-1), **rules})
    steps = len(base_path["top1"]) if base_path else 0
    flips = {name: float((base_path[name] != base_path["top1"]).float().mean()) if steps else 0.0 for name in rules}
    bites = [alpha for alpha in ladder if flips[f"alpha = {alpha:g}"] >= args.static_bias_bite]
    extended = bites[:1] if bites and bites[0] != alphas[-1] else []
    alphas += extended
    flips = {
        name: rate
        for name, rate in flips.items()
        if not name.startswith("alpha = ") or name in {f"alpha = {a:g}" for a in alphas}
    }

    # Every static model decodes greedily at once (prompts x models rows per step). The fitted static+temperature
    # model's greedy choice: argmax(scale * z + bias) = argmax(z + bias / scale) for a positive scale.
    biases = {f"alpha = {alpha:g}": StaticLogitBias(delta, alpha) for alpha in alphas}
    biases["full-vocabulary offset"] = StaticLogitBias(stats["offset"], 1.0)
    if fitted["scale"] > 0:
        biases["fitted static+temperature"] = StaticLogitBias(fitted["bias"] / fitted["scale"], 1.0)
    decoded = dict(
        zip(
            biases,
            decode_many(
                base,
                tokenizer,
                prompts,
                config,
                [{"processors": [bias]} for bias in biases.values()],
                desc="static models, greedy",
            ),
        )
    )
    curve = [{"alpha": 0.0, "flip_rate": 0.0, **summary("base, greedy", base_greedy)}]
    for alpha in alphas:
        curve.append(
            {
                "alpha": alpha,
                "flip_rate": flips[f"alpha = {alpha:g}"],
                **summary(f"alpha = {alpha:g}", decoded[f"alpha = {alpha:g}"]),
            }
        )
    full_vocabulary = summary("full-vocabulary offset", decoded["full-vocabulary offset"])
    full_vocabulary["flip_rate"] = flips["full-vocabulary offset"]
    fitted_row = None
    if fitted["scale"] > 0:
        fitted_row = summary("fitted static+temperature", decoded["fitted static+temperature"])
        fitted_row["flip_rate"] = flips["fitted static+temperature"]
        along_tuned = path_scan(base, prompts, tuned_greedy, {"null": lambda logits: static_choice(logits, fitted)})
        chosen = torch.tensor([t for c in tuned_greedy for t in c.token_ids], dtype=torch.long)
        fitted_row["top1_reproduced"] = float((along_tuned["null"] == chosen).float().mean()) if len(chosen) else 0.0
    biting = {name: rate for name, rate in flips.items() if rate >= args.static_bias_bite}
    bite = {
        "required": args.static_bias_bite,
        "flip_rates": flips,
        "biting": sorted(biting),
        "passed": bool(biting),
        "top_k_alpha": alphas[-1],
        "top_k_flip_rate": flips[f"alpha = {alphas[-1]:g}"],
        "extended": extended,
    }
    alpha_values = [row["alpha"] for row in curve]
    repetition = [row["trigram_rep"] for row in curve]
    correlation = spearmanr(alpha_values, repetition) if len(curve) >= 4 and len(set(repetition)) > 1 else None
    why_no_correlation = (
        f"repetition did not change over the {len(curve)} alphas"
        if len(set(repetition)) == 1
        else f"{len(curve)} alphas are too few for a rank correlation (at least 4)"
    )
    results = {
        "top_k": args.static_bias_top_k,
        "select": args.static_bias_select,
        "offset_of": args.static_bias_offset,
        "top_tokens": [tokenizer.decode([int(i)]) for i in top[:30]],
        "mean_rank_gain_of_top_k": float(stats["rank_gain"][top].mean()),
        "mean_offset_of_top_k": float(stats["offset"][top].mean()),
        "bite": bite,
        "curve": curve,
        "full_vocabulary_offset": full_vocabulary,
        "fitted_null": {"tau": 1 / fitted["scale"], "fitted_on": fitted["fitted_on"], **fitted_row}
        if fitted_row
        else {},
        "hyperfitted": summary("hyperfitted", tuned_greedy),
        "per_prompt": per_prompt,
        # Over fewer than 4 points a rank correlation says nothing; the report says so instead of printing nan.
        "spearman_alpha_vs_trigram_rep": (
            {"rho": float(correlation.statistic), "p_value": float(correlation.pvalue)}
            if correlation
            else {"unavailable": why_no_correlation}
        ),
        "paper": {"ttr_at_alpha_0.5": PAPER_TTR_AT_ALPHA_05},
    }
    return results


def run(context) -> dict:
    """The registry's entry point (hyperfitting.registry): the analysis on a study's context."""
    return static_bias_analysis(
        context.base,
        context.tuned,
        context.tokenizer,
        context.prompts,
        context.data.heldout_blocks,
        context.config,
        context.base_greedy,
        context.tuned_greedy,
        context.heldout_static,
    )


def write_static_bias_analysis(results: dict, folder: Path) -> None:
    write_text(folder / "table.md", static_bias_table(results))
    plot_static_bias(results, folder / "static_bias.png")


def static_bias_table(results: dict) -> str:
    bite = results["bite"]
    lines = [
        f"Static offset on the K={results['top_k']} tokens "
        + (
            "with the largest mean rank gain "
            if results.get("select", "rank_gain") == "rank_gain"
            else "with the largest mean log-probability gain among those the hyperfitted model ranks in its top k "
            "somewhere "
        )
        + f"(mean gain {results['mean_rank_gain_of_top_k']:.0f} ranks, mean {results.get('offset_of', 'logprobs')} "
        "offset "
        f"{results['mean_offset_of_top_k']:+.2f}); greedy decoding of the base model with z + alpha * delta. "
        "Manipulation check: a static model counts as evidence only if it changes the base model's greedy choice on "
        "at least "
        f"{bite['required']:.0%} of its steps (column 'choices changed'); the K-token offset does so "
        + (
            f"from alpha {bite['top_k_alpha']:g} ({bite['top_k_flip_rate']:.1%}; the grid was extended to reach it)."
            if bite["extended"]
            else f"at alpha {bite['top_k_alpha']:g}: {bite['top_k_flip_rate']:.1%}"
            + (
                "."
                if bite["top_k_flip_rate"] >= bite["required"]
                else " (it never does below alpha 1000: the ablation is ineffective here)."
            )
        ),
        "",
        "| setting | choices changed | ttr | bigram_rep | trigram_rep | diversity |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"alpha = {r['alpha']:g}", r, f"{r['flip_rate']:.1%}") for r in results["curve"]]
    rows += [
        (
            "full-vocabulary offset",
            results["full_vocabulary_offset"],
            f"{results['full_vocabulary_offset']['flip_rate']:.1%}",
        )
    ]
    fitted = results.get("fitted_null")
    if fitted:
        over = f", fitted over {fitted['fitted_on']}" if fitted.get("fitted_on") else ""
        rows.append(
            (
                f"fitted static + temperature (tau {fitted['tau']:.2f}{over}; reproduces "
                f"{fitted['top1_reproduced']:.1%} of the hyperfitted top-1 choices)",
                fitted,
                f"{fitted['flip_rate']:.1%}",
            )
        )
    rows.append(("hyperfitted (greedy)", results["hyperfitted"], "-"))
    for name, r, changed in rows:
        lines.append(
            f"| {name} | {changed} | {r['ttr']:.3f} | {r['bigram_rep']:.3f} | {r['trigram_rep']:.3f} | "
            f"{r['diversity']:.3f} |"
        )
    rho = results["spearman_alpha_vs_trigram_rep"]
    correlation = (
        f"rho = {rho['rho']:+.3f} (p = {rho['p_value']:.3f})" if "rho" in rho else f"not computed: {rho['unavailable']}"
    )
    lines += [
        "",
        f"Spearman correlation of alpha with trigram repetition: {correlation}. Paper: TTR falls to "
        f"{PAPER_TTR_AT_ALPHA_05} at alpha = 0.5.",
    ]
    return "\n".join(lines) + "\n"


def plot_static_bias(results: dict, path: Path) -> None:

    figure, axis = new_figure(figsize=(6, 4))
    alphas = [r["alpha"] for r in results["curve"]]
    axis.plot(alphas, [r["ttr"] for r in results["curve"]], "o-", label="base + alpha * delta: TTR")
    axis.plot(alphas, [r["trigram_rep"] for r in results["curve"]], "s--", label="base + alpha * delta: trigram rep")
    axis.axhline(results["hyperfitted"]["ttr"], color="tab:red", linestyle=":", label="hyperfitted TTR")
    axis.set_xlabel("alpha")
    axis.set_ylabel("value")
    axis.set_title("Static-bias ablation")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    savefig(figure, path)
