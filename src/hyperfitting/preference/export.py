"""Blind pairwise preference tasks from a finished study: what a rater sees, and the key that only the scorer reads.

A task is a prompt and two continuations of it, A and B, drawn from the hyperfitted model, the
decoding baselines of the base model and the original human text. The tasks file and the page
carry nothing but the texts and opaque ids: the methods, and which side each one is on, are in
the key, kept in another folder (``judging/key.json``; hand raters only ``judging/for-raters/``).
Sides and order are shuffled with a seed, so the same export can be made again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from hyperfitting.errors import HyperfitError
from hyperfitting.rundir import read_json, read_jsonl, write_json, write_jsonl, write_text

TASK_FIELDS = ("export_id", "task_id", "prompt", "a", "b")
"""Everything a task file holds: no method, no side, no position in any list."""


@dataclass
class Candidates:
    corpus: str
    prompts: list[str]
    texts: dict[str, list[str]]
    """method -> one continuation per prompt ("human" is the original text)."""


def judging_folder(run_dir: Path) -> Path:
    return Path(run_dir) / "judging"


def key_of(run_dir: Path) -> dict:
    """The run's export key (methods and sides of every task), for scoring."""
    path = judging_folder(run_dir) / "key.json"
    if not path.exists():
        raise HyperfitError(f"{run_dir} has no preference export: run `hyperfit judge export {run_dir}` first.")
    return read_json(path)


def collect_candidates(run_dir: Path, corpus: str | None = None) -> Candidates:
    """Every continuation a finished study decoded for ``corpus`` (default: its training corpus), as text."""
    from hyperfitting.config import ModelArgs
    from hyperfitting.models.loading import tokenizer_for

    run_dir = Path(run_dir)
    if (
        not (run_dir / "base" / "generations.jsonl").exists()
        or not (run_dir / "hyperfitted" / "generations.jsonl").exists()
    ):
        raise HyperfitError(
            f"'{run_dir}' has no base and hyperfitted generations: finish the study first (hyperfit study ... "
            "--resume)."
        )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    prompts = [row for row in read_jsonl(run_dir / "data" / "prompts.jsonl")]
    corpora = list(dict.fromkeys(row["corpus"] for row in prompts))
    corpus = corpus or (config["data"]["corpus"] if config["data"]["corpus"] in corpora else corpora[0])
    if corpus not in corpora:
        raise HyperfitError(f"corpus {corpus!r} has no prompts in this study; it has {', '.join(corpora)}.")
    prompts = [row for row in prompts if row["corpus"] == corpus]
    tokenizer = tokenizer_for(ModelArgs(name=config["model"]["name"]))
    length = config["generate"]["max_new_tokens"]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    texts: dict[str, list[str]] = {}
    for method, stage in (
        ("hyperfitted", "hyperfitted"),
        ("hyperfitted-blocked", "hyperfitted-blocked"),
        ("greedy", "base"),
    ):
        path = run_dir / stage / "generations.jsonl"
        if path.exists():
            texts[method] = [decode(g["continuation_ids"]) for g in read_jsonl(path) if g["corpus"] == corpus]
    for path in sorted((run_dir / "baselines").glob("*.jsonl")) if (run_dir / "baselines").is_dir() else []:
        if path.stem not in texts:
            texts[path.stem] = [
                decode(g["continuation_ids"]) for g in read_jsonl(path) if g["corpus"] == corpus and g["seed"] == 0
            ]
    texts["human"] = [decode(p["reference_ids"][:length]) for p in prompts]
    return Candidates(corpus, [decode(p["prompt_ids"]) for p in prompts], texts)


def make_export(
    candidates: Candidates,
    methods: list[str] | None = None,
    against: str = "human",
    prompts: int | None = None,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """(tasks, key). ``against="human"``: every method against the original text on every prompt (the papers' figure);
    ``"all"``: every pair of methods, human included (more evidence for the Bradley-Terry ranking)."""
    available = [m for m in candidates.texts if m != "human"]
    methods = methods or available
    unknown = [m for m in methods if m not in candidates.texts]
    if unknown:
        raise HyperfitError(
            f"method {unknown[0]!r} has no continuations in this study; it has {', '.join(available)} and human."
        )
    methods = [m for m in methods if m != "human"]
    if against not in ("human", "all"):
        raise HyperfitError(
            f"--against {against!r}: use human (each method against the original text) or all (every pair)."
        )
    pairs = (
        [(m, "human") for m in methods] if against == "human" else list(itertools.combinations([*methods, "human"], 2))
    )
    count = len(candidates.prompts) if prompts is None else min(prompts, len(candidates.prompts))
    rng = random.Random(seed)
    drawn = []
    for index in range(count):
        for first, second in pairs:
            a, b = (first, second) if rng.random() < 0.5 else (second, first)  # which side a method is on: a coin
            drawn.append((index, a, b))
    rng.shuffle(drawn)  # and no order to read it from
    digest = hashlib.sha256(
        json.dumps(
            [candidates.corpus, seed, drawn, [candidates.texts[m][i] for i, a, b in drawn for m in (a, b)]]
        ).encode()
    ).hexdigest()[:12]
    export_id = f"hf-{digest}"
    tasks, key = [], {}
    for number, (index, a, b) in enumerate(drawn):
        task_id = f"{export_id}-{number:04d}"
        tasks.append(
            {
                "export_id": export_id,
                "task_id": task_id,
                "prompt": candidates.prompts[index],
                "a": candidates.texts[a][index],
                "b": candidates.texts[b][index],
            }
        )
        key[task_id] = {"a": a, "b": b, "prompt_index": index}
    return tasks, {
        "export_id": export_id,
        "corpus": candidates.corpus,
        "seed": seed,
        "against": against,
        "methods": methods,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": key,
    }


def tasks_csv(tasks: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TASK_FIELDS)
    writer.writeheader()
    writer.writerows(tasks)
    return buffer.getvalue()


def write_export(run_dir: Path, tasks: list[dict], key: dict, overwrite: bool = False) -> Path:
    """judging/for-raters/{tasks.jsonl, tasks.csv, judge.html} and judging/key.json. An earlier export is never replaced
    silently: judgements made on it would no longer match."""
    from hyperfitting.preference.page import rater_page

    folder = judging_folder(run_dir)
    if (folder / "key.json").exists() and not overwrite:
        earlier = read_json(folder / "key.json")["export_id"]
        raise HyperfitError(
            f"{folder} already holds export {earlier}; judgements made on it would no longer match a new one. "
            "Pass --overwrite to replace it, or import its judgements first."
        )
    raters = folder / "for-raters"
    raters.mkdir(parents=True, exist_ok=True)
    write_jsonl(raters / "tasks.jsonl", tasks)
    write_text(raters / "tasks.csv", tasks_csv(tasks))
    write_text(raters / "judge.html", rater_page(tasks))
    write_json(folder / "key.json", key)
    return folder
