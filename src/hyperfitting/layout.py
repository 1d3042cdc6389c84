"""The run folder's layout: every stage folder and file a study writes, named in this one place.

    RUN_DIR/
      hyperfit-run.json        marks the folder as a run (and its layout's SCHEMA_VERSION)
      config.yaml              the resolved config
      metrics.json             the study's numbers and the claims' verdicts
      report.md, report.html   the report; report-figures/ its plots; calibration.json the rules' error rates
      results.md               the generation table
      STAGE/                   one folder per stage: data, base, train, hyperfitted, analysis-NAME, controls, ...
        stage-started.json     the inputs it was started with (partial work of other inputs is wiped)
        stage-done.json        its fingerprint, inputs, wall time and memory: present only once it finished
        results.json, table.md, figures, generations.jsonl, ...

Stage names: replicate K of a trained model and what is computed from it carry `-rK` (replicate 0 none), the fully
fine-tuned model `-full` (its seed K `-full-rK`), the main run at its lowest held-out loss `-lowest-heldout`:
`analysis-ranks-r1`, `train-full`, `analysis-ranks-full-r2`, `analysis-geometry-lowest-heldout`. `RunFolder` reads a
finished run through these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 2
"""1: run folders before the layout was written down (read the same way); 2: hyperfit-run.json records the version."""

MARKER = "hyperfit-run.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
STAGE_DONE = "stage-done.json"
STAGE_STARTED = "stage-started.json"
RESULTS = "results.json"
TABLE = "table.md"

FULL = "-full"  # stage-name suffix of the fully fine-tuned model a study can analyse beside its LoRA replicates
LOWEST = "-lowest-heldout"  # ... and of the main run at its lowest held-out loss: the non-hyperfitting control


def replicate_suffix(replicate: int) -> str:
    """Replicate 0 keeps the plain stage names (`train`, `analysis-ranks`); replicate K adds `-rK`."""
    return f"-r{replicate}" if replicate else ""


def full_suffix(replicate: int) -> str:
    """The fully fine-tuned model's seed K: `train-full`, `train-full-r1`, `analysis-ranks-full-r1`."""
    return FULL + replicate_suffix(replicate)


def control_folder(spec: str, replicate: int = 0) -> str:
    """The controls stage's folder of placement ``spec`` (`lora:first:5`) at seed ``replicate``: `lora-first-5-r1`."""
    return spec.replace(":", "-") + replicate_suffix(replicate)


def analysis_stage_name(name: str, suffix: str = "") -> str:
    """The stage (and folder) of analysis ``name`` of the model named by ``suffix`` (replicate_suffix, FULL, LOWEST)."""
    return f"analysis-{name}{suffix}"


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


@dataclass(frozen=True)
class StageOutputs:
    """One stage's folder, as the report reads it: None for whatever the stage did not write (or never ran). A folder
    of a stage the run's config no longer has (``gone``: controls since dropped, a replicate beyond study.replicates)
    reads as never run: its numbers belong to another study."""

    dir: Path
    gone: bool = False

    @property
    def done(self) -> bool:
        return not self.gone and (self.dir / STAGE_DONE).exists()

    @property
    def record(self) -> dict | None:
        """stage-done.json: fingerprint, inputs, wall time, peak memory."""
        return None if self.gone else _read(self.dir / STAGE_DONE)

    @property
    def results(self) -> Any:
        return None if self.gone else _read(self.dir / RESULTS)

    @property
    def table(self) -> str | None:
        path = self.dir / TABLE
        return path.read_text(encoding="utf-8") if path.exists() and not self.gone else None

    def json(self, name: str) -> Any:
        return None if self.gone else _read(self.dir / name)


class RunFolder:
    """Typed access to a run folder: `RunFolder(path).analysis("ranks", replicate=1).results`."""

    def __init__(self, path: str | Path, stages: Iterable[str] | None = None):
        """``stages``: the stages the study has (the study records them in metrics.json as it ends, by default); any
        other folder reads as never run. None where nothing recorded them (an older folder): every folder is read."""
        self.path = Path(path)
        if stages is None:
            stages = (_read(self.path / METRICS) or {}).get("stages")
        self.stages = None if stages is None else frozenset(stages)

    def stage(self, name: str) -> StageOutputs:
        return StageOutputs(self.path / name, gone=self.stages is not None and name not in self.stages)

    def analysis(self, name: str, replicate: int = 0, suffix: str = "") -> StageOutputs:
        """Analysis ``name`` of replicate ``replicate``, or of the model a ``suffix`` names (FULL, LOWEST)."""
        return self.stage(analysis_stage_name(name, suffix or replicate_suffix(replicate)))

    def train(self, replicate: int = 0, suffix: str = "") -> StageOutputs:
        return self.stage("train" + (suffix or replicate_suffix(replicate)))

    @property
    def metrics(self) -> dict | None:
        return _read(self.path / METRICS)

    @property
    def config(self) -> dict:
        import yaml

        return yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8"))

    @property
    def schema_version(self) -> int:
        """The layout's version the folder was written with (1 for folders written before it was recorded)."""
        return (_read(self.path / MARKER) or {}).get("schema_version", 1)

    def finished_stages(self) -> dict[str, dict]:
        """Every finished stage's record (stage-done.json), in the order the stages finished."""
        done = sorted(self.path.glob(f"*/{STAGE_DONE}"), key=lambda p: p.stat().st_mtime)
        return {path.parent.name: _read(path) for path in done}
