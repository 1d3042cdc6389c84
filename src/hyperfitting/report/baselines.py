"""The baselines table and the diversity-quality plane: hyperfitted greedy among the decoding methods."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from hyperfitting import stats

STUDY_ROWS = {
    "hyperfitted": "hyperfitted (greedy)",
    "hyperfitted-blocked": "hyperfitted, citation blocker",
    "human": "human text",
}


def _interval(values: list[float], log: bool = False) -> str:
    finite = [v for v in values if v == v and math.isfinite(v)]
    if not finite:
        return "n/a"
    e = stats.mean(finite)
    if log:  # a mean of log-perplexities: shown as a geometric-mean perplexity with its interval
        return f"{math.exp(e.value):.1f} [{math.exp(e.low):.1f}, {math.exp(e.high):.1f}]"
    return f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"


def _cell(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return f"{value:.3f}" if value is not None and value == value else "n/a"


def baselines_table(corpus: str, baselines: dict, study_metrics: dict, plane: dict | None, mauve: dict | None) -> str:
    """Markdown: one row per decoding method of the base model, then the study's rows, on one corpus.

    TTR and judge perplexity carry 95% intervals over prompts (sampled methods: each prompt's mean over seeds).
    ``study_metrics`` is metrics.json's ``metrics`` (row -> corpus -> metrics); ``plane`` the judge's per-prompt points.
    """
    plane, mauve = plane or {}, mauve or {}
    # MAUVE's column only where it was computed (study.mauve): a column of blanks says nothing.
    mauve_head, mauve_of = (
        ("MAUVE | ", lambda name: f"{mauve[name]:.3f} | " if name in mauve else "- | ")
        if mauve
        else ("", lambda name: "")
    )
    lines = [
        "| method | settings | seeds | TTR [95% CI] | distinct-3 | seq-rep-3 (lower: less repetition) | judge "
        "perplexity [95% CI] | "
        f"{mauve_head}copies >10 training tokens | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if mauve else ""),
    ]
    for name, row in baselines.items():
        measured = row["corpora"].get(corpus)
        if measured is None:
            continue
        metrics = measured["metrics"]
        judged = plane.get(name, {})
        speed = row.get("tokens_per_second")
        lines.append(
            f"| {name} | {row['settings']} | {row['seeds']} | {_interval(measured['per_prompt_ttr'])} | "
            f"{_cell(metrics, 'distinct_3')} | "
            f"{_cell(metrics, 'seq_rep_3')} | {_interval(judged.get('log_perplexity', []), log=True)} | "
            f"{mauve_of(name)}{_cell(metrics, 'train_overlap_share_over_10')} | "
            f"{f'{speed:.0f}' if speed is not None and speed == speed else 'base stage'}"
            f"{' *' if row.get('decoded_with') else ''} |"
        )
    for key, label in STUDY_ROWS.items():
        metrics = (
            study_metrics.get("base", {}).get(f"{corpus}:human")
            if key == "human"
            else study_metrics.get({"hyperfitted-blocked": "hyperfitted, citation blocker"}.get(key, key), {}).get(
                corpus
            )
        )
        if metrics is None:
            continue
        judged = plane.get(key, {})
        ttr_cell = _interval(judged["ttr"]) if judged.get("ttr") else _cell(metrics, "ttr")
        lines.append(
            f"| **{label}** | {'the study' if key != 'human' else 'reference'} | 1 | {ttr_cell} | "
            f"{_cell(metrics, 'distinct_3')} | "
            f"{_cell(metrics, 'seq_rep_3')} | {_interval(judged.get('log_perplexity', []), log=True)} | {mauve_of(key)}"
            f"{_cell(metrics, 'train_overlap_share_over_10')} | - |"
        )
    groups = list(dict.fromkeys(tuple(row["decoded_with"]) for row in baselines.values() if row.get("decoded_with")))
    if groups:
        lines += [
            "",
            "\\* decoded in one batch, one forward pass per step for all of them: "
            + "; ".join(", ".join(g) for g in groups)
            + ". Their tokens/s is the batch's (its time shared by tokens), not what each would reach alone.",
        ]
    return "\n".join(lines) + "\n"


def plot_methods(plane: dict[str, dict[str, list[float]]], judge: str, corpus: str, path: Path) -> None:
    """Every decoding method of the base model and the study's rows as points with 95% intervals over prompts, on the
    plane of judge perplexity (log scale) and TTR."""
    from hyperfitting.figures import new_figure, savefig

    figure, axis = new_figure(figsize=(7.5, 5))
    colours = {"hyperfitted": "tab:red", "hyperfitted-blocked": "tab:orange", "human": "black"}
    markers = {"hyperfitted": "*", "hyperfitted-blocked": "*", "human": "P"}
    for label, values in plane.items():
        quality = [v for v in values["log_perplexity"] if v == v and math.isfinite(v)]
        if not quality:
            continue
        q, d = stats.mean(quality), stats.mean(values["ttr"])
        x = math.exp(q.value)
        axis.errorbar(
            x,
            d.value,
            xerr=[[x - math.exp(q.low)], [math.exp(q.high) - x]],
            yerr=[[d.value - d.low], [d.high - d.value]],
            fmt=markers.get(label, "o"),
            color=colours.get(label, "tab:blue"),
            markersize=12 if label in markers else 6,
            capsize=2,
        )
        axis.annotate(
            STUDY_ROWS.get(label, label),
            (x, d.value),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            color=colours.get(label, "tab:blue"),
        )
    axis.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    low, high = axis.get_xlim()
    axis.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if low <= t <= high])
    axis.xaxis.set_major_formatter(ScalarFormatter())  # 2, 5, 10, 20 rather than crowded powers of ten
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel(f"perplexity under the judge, {judge} (lower: more predictable)")
    axis.set_ylabel("type-token ratio (higher: more diverse)")
    axis.set_title(f"Decoding methods of the base model and hyperfitted greedy ({corpus})", fontsize=10)
    axis.grid(alpha=0.3)
    savefig(figure, path)


def figure_name(corpus: str) -> str:
    """A file name for a corpus, which may be a path: its last part, with anything but letters, digits, '-' and '_'
    replaced."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(corpus).name or corpus)


def baselines_section(
    run_dir: Path, baselines: dict, study_metrics: dict, quality: dict | None, figures: Path
) -> list[str]:
    """The report's section: per corpus, the table and (with a judge) the plane."""
    judge = (quality or {}).get("judge") or {}
    planes = judge.get("baselines", {})
    mauve = (quality or {}).get("baselines_mauve", {})
    corpora = list(dict.fromkeys(c for row in baselines.values() for c in row["corpora"]))
    md = [
        "## Better than what? The base model under other decoding methods",
        "",
        "Every row decodes the same prompts to the same length. Sampled methods average over their seeds "
        "(each prompt's mean over seeds enters the interval). Judge perplexity is the geometric mean over prompts "
        "under "
        f"{judge.get('model', 'no judge (study.judge)')}; MAUVE compares the first seed's continuations with the human "
        "ones "
        "(coarse at a few dozen samples). Low perplexity alone rewards repetition: read it beside TTR and seq-rep-3.",
        "",
    ]
    for corpus in corpora:
        md += [
            f"### {corpus}",
            "",
            baselines_table(corpus, baselines, study_metrics, planes.get(corpus), mauve.get(corpus)),
        ]
        if planes.get(corpus):
            image = figures / f"methods_{figure_name(corpus)}.png"
            plot_methods(planes[corpus], judge["model"], corpus, image)
            md += [f"![decoding methods, {corpus}]({image.relative_to(run_dir).as_posix()})", ""]
            above = _dominating(planes[corpus])
            if above is not None:
                md += [above, ""]
    return md


def _dominating(plane: dict) -> str | None:
    """Which methods are at least as diverse as hyperfitted greedy at no higher judge perplexity (point estimates)."""
    if "hyperfitted" not in plane:
        return None

    def centre(label):
        values = plane[label]
        quality = [v for v in values["log_perplexity"] if v == v and math.isfinite(v)]
        return float(np.mean(values["ttr"])), float(np.mean(quality)) if quality else float("nan")

    ttr, quality = centre("hyperfitted")
    better = [
        label for label in plane if label not in STUDY_ROWS and centre(label)[0] >= ttr and centre(label)[1] <= quality
    ]
    if not better:
        return (
            "No decoding method of the base model is both at least as diverse (TTR) and at most as perplexing to the "
            "judge as "
            "hyperfitted greedy (point estimates; the intervals above say how firmly)."
        )
    return (
        "At least as diverse (TTR) as hyperfitted greedy at no higher judge perplexity (point estimates; see the "
        "intervals): " + ", ".join(better) + "."
    )
