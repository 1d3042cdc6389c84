"""Judgements back in: check them against the export's key, merge raters, and score.

Three numbers answer "do people prefer it?":
- per method, against the original human text: win, tie and loss rates, and the papers' figure,
  the share "preferred or equal to the original", with a 95% bootstrap interval over prompts;
- a Bradley-Terry strength per method over every judged pair (choix's maximum-likelihood fit;
  a tie counts half a win each way), relative to the human text, with a bootstrap interval;
- agreement between raters on the tasks two or more judged: Fleiss' kappa (three categories:
  A, B, equal), which for two raters per task is Cohen's up to how chance agreement is pooled.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from hyperfitting import stats
from hyperfitting.errors import HyperfitError

CHOICES = ("A", "B", "equal")
FIELDS = {"export_id", "task_id", "rater", "choice"}


def read_judgements(files: list[Path], key: dict) -> list[dict]:
    """Every judgement of ``files``, checked: each line a JSON object with the four fields, made for this export, of a
    task in it, a known choice, and no rater judging one task twice (within a file or across files)."""
    seen: dict[tuple[str, str], str] = {}
    judgements = []
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise HyperfitError(f"{path}: no such file.")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{path}, line {number}"
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise HyperfitError(
                    f"{where}: not a JSON object ({error.msg}). Each line must be one judgement as the page writes it."
                ) from None
            if not isinstance(row, dict) or set(row) != FIELDS:
                raise HyperfitError(
                    f"{where}: a judgement has exactly the fields {', '.join(sorted(FIELDS))}; this line has "
                    f"{', '.join(sorted(row)) if isinstance(row, dict) else type(row).__name__}."
                )
            if row["export_id"] != key["export_id"]:
                raise HyperfitError(
                    f"{where}: made for export {row['export_id']}, but this run's export is {key['export_id']}. "
                    "Import it into the run it was exported from."
                )
            if row["task_id"] not in key["tasks"]:
                raise HyperfitError(f"{where}: task {row['task_id']} is not in export {key['export_id']}.")
            if row["choice"] not in CHOICES:
                raise HyperfitError(f"{where}: choice {row['choice']!r} is not one of {', '.join(CHOICES)}.")
            rater = str(row["rater"]).strip() or "anonymous"
            earlier = seen.get((rater, row["task_id"]))
            if earlier is not None:
                raise HyperfitError(
                    f"{where}: rater {rater!r} already judged task {row['task_id']} ({earlier}). Give each rater's "
                    "file once, and each rater a distinct name."
                )
            seen[(rater, row["task_id"])] = where
            judgements.append({**row, "rater": rater})
    if not judgements:
        raise HyperfitError("No judgements in " + ", ".join(map(str, files)) + ".")
    return judgements


def outcomes(judgements: list[dict], key: dict) -> list[dict]:
    """Each judgement as (winner, loser, tie) in method names, with its prompt."""
    rows = []
    for j in judgements:
        task = key["tasks"][j["task_id"]]
        if j["choice"] == "equal":
            rows.append({"first": task["a"], "second": task["b"], "tie": True, "prompt": task["prompt_index"], **j})
        else:
            winner, loser = (task["a"], task["b"]) if j["choice"] == "A" else (task["b"], task["a"])
            rows.append({"first": winner, "second": loser, "tie": False, "prompt": task["prompt_index"], **j})
    return rows


def against_human(rows: list[dict]) -> dict:
    """Per method: wins, ties, losses against the human text, and the share preferred or equal, with an interval over
    prompts."""
    results = {}
    methods = sorted({m for r in rows for m in (r["first"], r["second"])} - {"human"})
    for method in methods:
        mine = [r for r in rows if {r["first"], r["second"]} == {method, "human"}]
        if not mine:
            continue
        wins = sum(not r["tie"] and r["first"] == method for r in mine)
        ties = sum(r["tie"] for r in mine)
        # Prompts are the unit: each prompt's share of "preferred or equal" over its judgements, then the mean over
        # prompts.
        by_prompt = defaultdict(list)
        for r in mine:
            by_prompt[r["prompt"]].append(1.0 if r["tie"] or r["first"] == method else 0.0)
        estimate = stats.mean([float(np.mean(v)) for v in by_prompt.values()])
        results[method] = {
            "judgements": len(mine),
            "wins": wins,
            "ties": ties,
            "losses": len(mine) - wins - ties,
            "preferred_or_equal": estimate.to_dict(),
        }
    return results


def bradley_terry(rows: list[dict], resamples: int = 500, seed: int = stats.SEED) -> dict:
    """Strength per method (log scale, the human text at 0 when judged), maximum likelihood by choix, with a bootstrap
    interval over judgements. A tie counts as half a win each way: each decisive judgement enters twice, a tie once each
    way."""
    import choix

    methods = sorted({m for r in rows for m in (r["first"], r["second"])})
    index = {m: i for i, m in enumerate(methods)}

    def fit(sample: list[dict]) -> np.ndarray:
        data = []
        for r in sample:
            winner, loser = index[r["first"]], index[r["second"]]
            data += [(winner, loser), (loser, winner)] if r["tie"] else [(winner, loser), (winner, loser)]
        # A little regularisation keeps the fit finite when a method won (or lost) every comparison.
        strengths = choix.ilsr_pairwise(len(methods), data, alpha=0.01)
        return strengths - (strengths[index["human"]] if "human" in index else strengths.mean())

    point = fit(rows)
    rng = np.random.default_rng(seed)
    draws = np.array([fit([rows[i] for i in rng.integers(len(rows), size=len(rows))]) for _ in range(resamples)])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    return {m: {"strength": float(point[i]), "low": float(low[i]), "high": float(high[i])} for m, i in index.items()}


def fleiss_kappa(ratings: list[list[str]], categories: tuple[str, ...] = CHOICES) -> float | None:
    """Fleiss' kappa over items each rated by two or more raters (the number may vary by item). None without such items,
    or when every rating is one category (agreement beyond chance is then undefined)."""
    items = [r for r in ratings if len(r) >= 2]
    if not items:
        return None
    counts = np.array([[Counter(r)[c] for c in categories] for r in items], dtype=float)
    n = counts.sum(axis=1)
    per_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / n.sum()
    chance = float((shares**2).sum())
    if chance >= 1.0:
        return None
    return float((per_item.mean() - chance) / (1 - chance))


def score_judgements(judgements: list[dict], key: dict, source: str) -> dict:
    """Everything the report shows about preference; ``source`` says who judged ("people" or the automatic judge's
    name)."""
    rows = outcomes(judgements, key)
    by_task = defaultdict(list)
    for j in judgements:
        by_task[j["task_id"]].append(j["choice"])
    raters = sorted({j["rater"] for j in judgements})
    return {
        "export_id": key["export_id"],
        "corpus": key["corpus"],
        "source": source,
        "raters": raters,
        "judgements": len(judgements),
        "tasks_judged": len(by_task),
        "tasks": len(key["tasks"]),
        "against_human": against_human(rows),
        "bradley_terry": bradley_terry(rows),
        "agreement": {
            "fleiss_kappa": fleiss_kappa(list(by_task.values())),
            "tasks_with_two_or_more_raters": sum(len(v) >= 2 for v in by_task.values()),
        },
    }


def preference_markdown(scores: dict, heading: str) -> list[str]:
    """The report's section for one set of scores."""
    md = [
        heading,
        "",
        f"{scores['judgements']} judgements of {scores['tasks_judged']} of {scores['tasks']} blind pairs "
        f"({scores['corpus']}, export {scores['export_id']}) by {len(scores['raters'])} rater(s): "
        f"{', '.join(scores['raters'])}.",
        "",
        "| method | against the human text: wins / ties / losses | preferred or equal to the original [95% CI] | "
        "Bradley-Terry strength vs human [95% CI] |",
        "|---|---|---|---|",
    ]
    strengths = scores["bradley_terry"]
    for method, row in sorted(scores["against_human"].items(), key=lambda kv: -kv[1]["preferred_or_equal"]["value"]):
        share = row["preferred_or_equal"]
        bt = strengths.get(method)
        md.append(
            f"| {method} | {row['wins']} / {row['ties']} / {row['losses']} | {share['value']:.2f} [{share['low']:.2f}, "
            f"{share['high']:.2f}] | "
            + (f"{bt['strength']:+.2f} [{bt['low']:+.2f}, {bt['high']:+.2f}]" if bt else "-")
            + " |"
        )
    kappa = scores["agreement"]["fleiss_kappa"]
    md += [
        "",
        f"Agreement between raters: Fleiss' kappa {kappa:.2f} over "
        f"{scores['agreement']['tasks_with_two_or_more_raters']} pairs "
        "judged by two or more."
        if kappa is not None
        else "Agreement between raters: not measured (no pair was judged by two or more raters).",
        "",
    ]
    return md
