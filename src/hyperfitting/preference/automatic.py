"""An automatic stand-in for the raters, so the preference pipeline runs end to end without people.

The judge model (the study's independent judge) prefers, in each pair, the continuation with the
higher mean log-probability given the prompt. It is labelled as what it is everywhere it appears:
a language model's likelihood, which favours predictable (often repetitive) text, not human preference.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hyperfitting.errors import HyperfitError
from hyperfitting.preference.export import judging_folder
from hyperfitting.rundir import read_jsonl


def automatic_judgements(run_dir: Path, judge: str | None = None) -> tuple[list[dict], str]:
    """(judgements in the page's format, the judge's name) for every task of the run's export."""
    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import load_model
    from hyperfitting.report.quality import judge_log_perplexities, judge_name

    folder = judging_folder(run_dir)
    if not (folder / "key.json").exists():
        raise HyperfitError(f"{run_dir} has no preference export yet: run `hyperfit judge export {run_dir}` first.")
    config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    name = judge_name(judge or config["study"].get("judge") or "auto", config["model"]["name"])
    if name is None:
        raise HyperfitError("No judge model: pass --judge NAME (any model name hyperfit loads).")
    tasks = read_jsonl(folder / "for-raters" / "tasks.jsonl")
    model, tokenizer = load_model(ModelArgs(name=name))
    # Each distinct (prompt, text) once: the same continuation appears in many pairs.
    unique = list(dict.fromkeys((t["prompt"], text) for t in tasks for text in (t["a"], t["b"])))
    nll = dict(zip(unique, judge_log_perplexities(model, tokenizer, [p for p, _ in unique], [c for _, c in unique])))
    judgements = []
    for task in tasks:
        a, b = nll[(task["prompt"], task["a"])], nll[(task["prompt"], task["b"])]
        # lower NLL = higher mean log-probability
        choice = "equal" if a == b or a != a or b != b else "A" if a < b else "B"
        judgements.append(
            {"export_id": task["export_id"], "task_id": task["task_id"], "rater": f"automatic:{name}", "choice": choice}
        )
    return judgements, name
