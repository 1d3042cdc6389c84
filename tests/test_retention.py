"""Capability retention through the LM Evaluation Harness: our offline last-word task, scored as its definition says."""

import json

import pytest
import torch

from hyperfitting.pipeline.retention import last_word_items, run_harness, task_name


def test_last_word_items_cut_before_the_last_word_of_letters():
    items = last_word_items(
        [
            "one two three four five six seven eight nine ten eleven, said Mr. Darcy.",
            "too short to use.",
            "a b c d e f g h i j 1234 .",
        ]
    )
    assert items == [
        {"context": "one two three four five six seven eight nine ten eleven, said Mr.", "target": "Darcy"}
    ]
    assert task_name("/data/My Corpus#test") == "hyperfit_lastword_my_corpus"


@pytest.mark.e2e
def test_the_harness_scores_our_task_as_a_direct_computation_does(tiny_model_folder, tmp_path):
    """Accuracy = share of items whose target tokens are each the model's greedy choice; perplexity = exp(mean NLL per
    item)."""
    import math

    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder)
    # Repeated words, so that a tiny model gets some targets right.
    texts = [" ".join(["river lamp garden"] * (4 + i)) + " river" for i in range(6)] + [
        " ".join(["stone road hill"] * (5 + i)) + " evening" for i in range(6)
    ]
    items = last_word_items(texts)
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "lastword.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "lastword.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "hyperfit_lastword_test",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(folder / "lastword.jsonl")}},
                "output_type": "loglikelihood",
                "test_split": "test",
                "doc_to_text": "{{context}}",
                "doc_to_target": "{{' ' + target}}",
                "metric_list": [
                    {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                ],
            }
        )
    )
    scores, skipped = run_harness(
        model, tokenizer, ["hyperfit_lastword_test", "no_such_task_anywhere"], folder, batch_size=4
    )
    assert "no_such_task_anywhere" in skipped

    greedy, nll = [], []
    with torch.no_grad():
        for item in items:
            whole = tokenizer(item["context"] + " " + item["target"])["input_ids"]
            context = tokenizer(item["context"])["input_ids"]
            logits = model(input_ids=torch.tensor([whole])).logits[0, :-1].float()
            target = torch.tensor(whole[len(context) :])
            rows = logits[len(context) - 1 :]
            greedy.append(bool((rows.argmax(-1) == target).all()))
            nll.append(-float(torch.log_softmax(rows, -1).gather(1, target[:, None]).sum()))
    row = scores["hyperfit_lastword_test"]
    assert row["n"] == len(items) == 12
    assert abs(row["acc"] - sum(greedy) / len(greedy)) < 1e-9
    assert abs(row["perplexity"] - math.exp(sum(nll) / len(nll))) < 1e-3 * row["perplexity"]


def test_the_harness_bootstraps_in_this_process_and_leaves_the_environment_as_it_was(monkeypatch):
    """lm-eval's bootstrap of a perplexity's standard error forks a pool unless DISABLE_MULTIPROC is set; forked beside
    the process group's threads (torchrun) its worker could wait for ever on a lock held at the fork. The harness runs
    with it set, and every variable is put back afterwards."""
    import os

    from hyperfitting.pipeline.retention import _offline

    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    with _offline():
        assert os.environ["DISABLE_MULTIPROC"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "DISABLE_MULTIPROC" not in os.environ
