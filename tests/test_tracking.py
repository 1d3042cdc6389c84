"""Experiment tracking: the numbers read back from each tracker's own local store (no mock)."""

import json
import os
import subprocess
import sys

import pytest

from hyperfitting.config import RunConfig, build_dataclass
from hyperfitting.errors import ConfigError
from hyperfitting.tracking import mlflow_uri
from tests.test_cli import _study_args

READ_TRACKIO = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
runs = SQLiteStorage.get_runs(project)
print(json.dumps({run: SQLiteStorage.get_logs(project, run) for run in runs}, default=str))
"""


@pytest.mark.e2e
def test_training_numbers_reach_tensorboard_mlflow_and_trackio(tiny_model_folder, corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        a
        for a in _study_args(tiny_model_folder, corpus, run_dir)
        if a.startswith(("model.", "data.", "train.", "run_dir"))
    ]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hyperfitting.cli",
            "train",
            *args,
            "tracking.report_to=[tensorboard,mlflow,trackio]",
            "tracking.project=tracked",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (run_dir / "train" / "train_log.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in log]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((run_dir / "tracking" / "tensorboard").iterdir())
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [(e.step, round(e.value, 5)) for e in accumulator.Scalars("train/train_loss")] == [
        (i, round(v, 5)) for i, v in enumerate(losses)
    ]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(run_dir / "tracking"))
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/train_loss")
    assert [(m.step, round(m.value, 5)) for m in sorted(history, key=lambda m: m.step)] == [
        (i, round(v, 5)) for i, v in enumerate(losses)
    ]
    assert run.data.params["train.lr"] == "0.01"

    read = subprocess.run([sys.executable, "-c", READ_TRACKIO, "tracked"], env=env, capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-3000:]
    (logs,) = json.loads(read.stdout).values()
    assert [round(row["train/train_loss"], 5) for row in logs if "train/train_loss" in row] == [
        round(v, 5) for v in losses
    ]


def test_a_study_logs_its_metrics_verdicts_and_figures(tmp_path):
    from hyperfitting.figures import new_figure, savefig
    from hyperfitting.tracking import Trackers, log_study

    figure, axis = new_figure()
    axis.plot([0, 1], [0, 1])
    (tmp_path / "report-figures").mkdir()
    savefig(figure, tmp_path / "report-figures" / "curve.png")
    study = {
        "train_log": [{"epoch": 0, "train_loss": 4.0}, {"epoch": 1, "train_loss": 0.5}],
        # names as the study writes them
        "metrics": {
            "base": {"fiction": {"ttr": 0.3}},
            "hyperfitted": {"fiction": {"ttr": 0.5}},
            "hyperfitted, citation blocker": {"fiction:human": {"ttr": 0.4}},
        },
        "claims": [
            {
                "number": 1,
                "name": "not temperature",
                "verdict": "holds",
                "reason": "clear of the margin",
                "estimate": {"value": 0.2, "low": 0.1, "high": 0.3},
            }
        ],
    }
    trackers = Trackers(["tensorboard", "mlflow"], tmp_path / "tracking", "study", {"train": {"lr": 0.1}})
    log_study(trackers, study, tmp_path)
    trackers.close()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(tmp_path / "tracking"))
    (run,) = client.search_runs([client.get_experiment_by_name("hyperfitting").experiment_id])
    assert run.data.metrics["metrics/hyperfitted/fiction/ttr"] == 0.5 and run.data.metrics["claim_1/low"] == 0.1
    assert run.data.metrics["metrics/hyperfitted_citation_blocker/fiction_human/ttr"] == 0.4
    assert "**holds**" in run.data.tags["verdicts"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures/report-figures")] == [
        "figures/report-figures/curve.png"
    ]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "study"), size_guidance={"images": 0})
    accumulator.Reload()
    assert accumulator.Scalars("claim_1/value")[0].value == pytest.approx(0.2)
    assert accumulator.Tags()["images"] == ["figures/report-figures/curve"]


def test_an_unknown_tracker_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="'wandb' is not a tracker here. Choose from trackio, tensorboard, mlflow"):
        build_dataclass(RunConfig, {"tracking": {"report_to": ["wandb"]}})
