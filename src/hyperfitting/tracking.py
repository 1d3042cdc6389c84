"""Experiment tracking, local first: the numbers of a run sent to trackio, TensorBoard or MLflow as well as to its JSON
files.

`tracking.report_to` names the trackers (none by default). Each keeps its store on this machine:
- tensorboard: event files in RUN/tracking/tensorboard (`tensorboard --logdir RUN/tracking/tensorboard`);
- mlflow: a SQLite store in RUN/tracking/mlflow.db, figures in RUN/tracking/mlflow-artifacts
  (`mlflow ui --backend-store-uri sqlite:///RUN/tracking/mlflow.db`);
- trackio: its own local database, in $TRACKIO_DIR (default: the Hugging Face cache), project
  `tracking.project` (`trackio show`). Nothing is uploaded.

What is logged: every epoch's training numbers (live, as training runs), every stage's scalar metrics,
the verdicts (effect and interval as numbers, the verdict as text) and the report's figures.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

from hyperfitting.config import TRACKERS


def flatten(values: dict, prefix: str = "") -> dict[str, float]:
    """Nested dict -> {"a/b/c": number} for every finite number inside (lists and strings are left out)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            # the characters every tracker accepts in a name
            flat[re.sub(r"[^A-Za-z0-9_./-]+", "_", name)] = float(value)
    return flat


class _TensorBoard:
    def __init__(self, folder: Path, name: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard" / name))
        self.writer.add_text(
            "config", "```\n" + "\n".join(f"{k}: {v}" for k, v in flatten_config(config).items()) + "\n```"
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def text(self, key: str, value: str) -> None:
        self.writer.add_text(key, value)

    def image(self, key: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(key, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, folder: Path, name: str, config: dict, project: str):
        from mlflow.tracking import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=mlflow_uri(folder))
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(
                project, artifact_location=(folder / "mlflow-artifacts").resolve().as_uri()
            )
        )
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        for key, value in flatten_config(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def text(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value[:5000])

    def image(self, key: str, path: Path) -> None:
        # Under the key's folder: figures of the same file name from two stages (geometry.png, LoRA and full) both stay.
        self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(key).parent))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Trackio:
    def __init__(self, name: str, config: dict, project: str):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(
            project=project,
            name=name,
            config=flatten_config(config),
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )
        self.texts: dict[str, str] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def text(self, key: str, value: str) -> None:
        self.run.log({key: self.trackio.Markdown(value)})

    def image(self, key: str, path: Path) -> None:
        self.run.log({key: self.trackio.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


def mlflow_uri(folder: Path) -> str:
    """MLflow's store in a run's tracking folder: a SQLite database (MLflow's plain-file store is frozen and refused by
    default)."""
    return f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"


def flatten_config(config: dict) -> dict:
    flat: dict = {}
    for section, values in config.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


class Trackers:
    """The run's trackers, all fed the same numbers. With none configured every call does nothing."""

    def __init__(self, report_to: Iterable[str], folder: Path, name: str, config: dict, project: str = "hyperfitting"):
        self.backends = []
        self.live: set[str] = set()
        """Training stages whose epochs were logged as they ran (a reused stage's epochs are logged from its log
        file)."""
        for tracker in report_to:
            if tracker == "tensorboard":
                self.backends.append(_TensorBoard(folder, name, config))
            elif tracker == "mlflow":
                self.backends.append(_MLflow(folder, name, config, project))
            elif tracker == "trackio":
                self.backends.append(_Trackio(name, config, project))
            else:
                raise ValueError(f"unknown tracker {tracker!r}; known: {', '.join(TRACKERS)}")

    def __bool__(self) -> bool:
        return bool(self.backends)

    def log(self, metrics: dict, step: int = 0) -> None:
        flat = flatten(metrics)
        if flat:
            for backend in self.backends:
                backend.log(flat, step)

    def text(self, key: str, value: str) -> None:
        for backend in self.backends:
            backend.text(key, value)

    def image(self, key: str, path: Path) -> None:
        for backend in self.backends:
            backend.image(key, path)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


def trackers_for(config, run_dir: Path, stage: str) -> Trackers:
    """The trackers of ``config.tracking`` for one command (the run folder's name and the stage name the run)."""
    from hyperfitting.rundir import is_main_process

    if not config.tracking.report_to or not is_main_process():
        return Trackers((), run_dir, "", {})
    name = f"{Path(run_dir).name}-{stage}"
    return Trackers(
        config.tracking.report_to, Path(run_dir) / "tracking", name, config.to_dict(), config.tracking.project
    )


def log_study(trackers: Trackers, study: dict, run_dir: Path) -> None:
    """A finished study: every epoch's numbers, each stage's metrics, the verdicts and the report's figures."""
    if not trackers:
        return
    if "train" not in trackers.live:  # trained in an earlier command: its epochs from the log it wrote
        for row in study.get("train_log", []):
            trackers.log({"train": {k: v for k, v in row.items() if k != "epoch"}}, step=int(row["epoch"]))
    baselines = {
        name: {corpus: row["metrics"] for corpus, row in result["corpora"].items()}
        | {"tokens_per_second": result.get("tokens_per_second")}
        for name, result in (study.get("baselines") or {}).items()
    }
    trackers.log(
        {
            "metrics": study.get("metrics", {}),
            "quality": {"mauve": (study.get("quality") or {}).get("mauve", {})},
            "baselines": baselines,
            "stage_seconds": study.get("stage_seconds", {}),
        }
    )
    verdicts = []
    for claim in study.get("claims", []):
        estimate = claim.get("estimate") or {}
        trackers.log({f"claim_{claim['number']}": {k: estimate.get(k) for k in ("value", "low", "high")}})
        verdicts.append(f"- claim {claim['number']} ({claim['name']}): **{claim['verdict']}**: {claim['reason']}")
    if verdicts:
        trackers.text("verdicts", "\n".join(verdicts))
    for path in sorted(Path(run_dir).glob("report-figures/*.png")) + sorted(Path(run_dir).glob("analysis-*/*.png")):
        trackers.image(f"figures/{path.parent.name}/{path.stem}", path)
