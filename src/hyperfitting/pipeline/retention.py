"""Capability retention: what hyperfitting costs in general ability, measured with the LM Evaluation Harness (lm-eval).

Carlsson et al. report that benchmark scores barely drop after hyperfitting. Here the base and the
hyperfitted model run the same harness tasks:
- our own offline task, in the harness's task format, built from the run's held-out text: a
  LAMBADA-style last-word prediction (context = a held-out passage without its last word, target =
  that word; accuracy of the greedy word and its perplexity), one task per evaluation corpus;
- the harness's standard tasks named in study.retention_tasks, where their data is already in the
  local datasets cache; a task whose data is not there is listed as skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import yaml

from hyperfitting.data.splits import PreparedData
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.rundir import is_main_process, read_json, write_json, write_jsonl, write_text

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[A-Za-z]$")


def last_word_items(texts: list[str]) -> list[dict]:
    """LAMBADA-style items: each passage cut before its last word of letters, which becomes the target."""
    items = []
    for text in texts:
        words = text.split()
        for index in range(len(words) - 1, 0, -1):
            word = words[index].strip('.,;:!?"()[]')
            if _WORD.match(word) and len(words[:index]) >= 8:
                items.append({"context": " ".join(words[:index]), "target": word})
                break
    return items


def task_name(corpus: str) -> str:
    return "hyperfit_lastword_" + re.sub(r"[^a-z0-9]+", "_", Path(corpus.partition("#")[0]).name.lower()).strip("_")


def write_lastword_tasks(folder: Path, data: PreparedData, tokenizer) -> list[str]:
    """One harness task (YAML + JSONL) per evaluation corpus, from its held-out prompts and their human
    continuations."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for corpus, prompts in data.prompts.items():
        texts = [tokenizer.decode(p.prompt_ids + p.reference_ids, skip_special_tokens=True) for p in prompts]
        items = last_word_items(texts)
        if not items:
            continue
        name = task_name(corpus)
        write_jsonl(folder / f"{name}.jsonl", items)
        write_text(
            folder / f"{name}.yaml",
            yaml.safe_dump(
                {
                    "task": name,
                    "dataset_path": "json",
                    "dataset_kwargs": {"data_files": {"test": str((folder / f"{name}.jsonl").resolve())}},
                    "output_type": "loglikelihood",
                    "test_split": "test",
                    "doc_to_text": "{{context}}",
                    "doc_to_target": "{{' ' + target}}",
                    "metric_list": [
                        {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                        {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    ],
                    "metadata": {"version": 1.0, "built_from": f"held-out passages of {corpus}"},
                },
                sort_keys=False,
            ),
        )
        names.append(name)
    return names


@contextmanager
def _offline():
    """No hub requests while the harness runs: a standard task loads only from the local datasets cache. And its
    bootstrap of a perplexity's standard error in this process (DISABLE_MULTIPROC, the same seeds and numbers): its
    forked pool could hang for ever where the fork caught a lock held by another thread (seen under torchrun, with
    the process group's threads running)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "DISABLE_MULTIPROC")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_harness(model, tokenizer, tasks: list[str], include: Path, batch_size: int = 8) -> tuple[dict, dict]:
    """(scores per task, skipped task -> why) for one model. Each task runs alone, so one missing dataset skips only
    itself."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include))
    harness_model = HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device)
    )
    scores, skipped = {}, {}
    with _offline():
        for task in tasks:
            try:
                output = simple_evaluate(
                    model=harness_model, tasks=[task], task_manager=manager, log_samples=False, bootstrap_iters=1000
                )
            except Exception as error:  # noqa: BLE001 - the harness raises many kinds when a dataset is not cached
                skipped[task] = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
                continue
            row = output["results"][task]
            scores[task] = {
                key.split(",")[0]: value
                for key, value in row.items()
                if isinstance(value, (int, float))
                and key.split(",")[0]
                in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "perplexity", "perplexity_stderr")
            }
            scores[task]["n"] = output.get("n-samples", {}).get(task, {}).get("effective")
    return scores, skipped


def retention_stage(graph: StageGraph, data: PreparedData, base_model, tuned_model, tokenizer) -> dict:
    """The harness on the base and the hyperfitted model: our last-word tasks and the cached standard tasks."""
    config = graph["retention"].config

    def work(folder: Path) -> None:
        if is_main_process():  # the harness evaluates an in-memory model in one process; the others wait for its file
            ours = write_lastword_tasks(folder / "tasks", data, tokenizer)
            tasks = ours + list(config.study.retention_tasks)
            results: dict = {"tasks": {}, "skipped": {}, "ours": ours}
            for label, model in (("base", base_model), ("hyperfitted", tuned_model)):
                scores, skipped = run_harness(model, tokenizer, tasks, folder / "tasks")
                for task, row in scores.items():
                    results["tasks"].setdefault(task, {})[label] = row
                results["skipped"].update(skipped)
            write_json(folder / "results.json", results)
            print(
                json.dumps(
                    {
                        task: {k: round(v.get("acc", float("nan")), 3) for k, v in rows.items()}
                        for task, rows in results["tasks"].items()
                    }
                )
            )
        # None: every process reads the results back once process 0 has written them and all have reached the end

    return graph.run("retention", work, load=lambda folder: read_json(folder / "results.json"))
