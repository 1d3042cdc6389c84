"""`hyperfit pack`: a run folder without its largest files, in one archive that another machine resumes from.

A long study (the standard preset is hours of stages on a CPU) can outlive the machine it started on. Most of what its
finished stages hold is small: numbers, decoded texts, LoRA adapters, the prepared data. A fully fine-tuned model's
weights are not (about 0.5 GB for a 135M-parameter model). A pack leaves out the weight files (and checkpoints) over a
size limit that nothing will load again, and `hyperfit study ... --resume` on the unpacked folder goes on where the
study stopped:

- a finished stage's large files are left out once every stage that loads them has finished (its children in the
  graph; the weights at the lowest held-out loss, only the analyses of that run; the controls, a reused run's weights
  only until that run's control is measured). While one has not, they are packed, however large: a stage is never
  trained again under finished stages that describe the model it had, so its numbers and theirs stay one model's;
- an unfinished stage's large partial work (a training checkpoint) is left out with its folder: it starts again. In
  the controls, whose finished placements are kept one folder each, only the unfinished placement's folder goes.

The pack says what it left out, what it kept over the limit and what will start again in its `pack.json`; a study
that later needs a left-out file (its config changed) stops with an error that names it (pipeline/runner.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperfitting.config import load_config
from hyperfitting.errors import RunDirError
from hyperfitting.layout import CONFIG, LOWEST, MARKER, STAGE_DONE
from hyperfitting.rundir import atomic_path, lock_run_dir, read_json
from hyperfitting.training.hyperfit import LOWEST_HELDOUT

PACK_RECORD = "pack.json"
# What a pack may leave out: model weights, optimizer state, checkpoints (sharded ones too), cached arrays. Texts and
# numbers always travel.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".distcp", ".npy")
ARCHIVE_SUFFIXES = {".tar.xz": "w:xz", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar": "w"}
# Stages that keep their finished pieces one folder each, marked done by this file: an unfinished one loses only the
# unfinished pieces' folders.
PIECES = {"controls": "control.json"}


@dataclass
class PackPlan:
    kept: list[Path] = field(default_factory=list)
    """Files that go into the pack, relative to the run folder."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Weight files over the limit that nothing will load again: relative path -> bytes."""
    kept_over_limit: dict[str, list[str]] = field(default_factory=dict)
    """Weight files over the limit that an unfinished stage will still load: relative path -> those stages."""
    restarted: list[str] = field(default_factory=list)
    """Unfinished stages (or controls' placements, `controls/NAME`) left out whole: they start again on --resume."""


def _graph(run_dir: Path):
    from hyperfitting.pipeline.graph import study_graph

    config = load_config(str(run_dir / CONFIG), [])
    return config, study_graph(config, run_dir)


def _control_loads(config, run_dir: Path) -> dict[str, str]:
    """The study's runs the controls still load (their reused placements not yet measured): stage -> placement."""
    from hyperfitting.layout import control_folder
    from hyperfitting.pipeline.graph import control_seeds, reused_replicate

    waiting = {}
    for spec in config.study.controls:
        for r in range(control_seeds(config, spec)):
            stage = reused_replicate(config, spec, r)
            if stage and not (run_dir / "controls" / control_folder(spec, r) / PIECES["controls"]).exists():
                waiting[stage] = spec
    return waiting


def plan_pack(run_dir: Path, limit_bytes: int) -> PackPlan:
    """What a pack of ``run_dir`` holds when the weight files over ``limit_bytes`` are left out (module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER).exists() or not (run_dir / CONFIG).exists():
        raise RunDirError(f"'{run_dir}' is not a hyperfit run folder ({MARKER} or {CONFIG} is missing).")
    config, graph = _graph(run_dir)
    children: dict[str, list[str]] = {}
    for name in graph.names:
        for parent in graph[name].parents:
            children.setdefault(parent, []).append(name)
    control_waits = _control_loads(config, run_dir)

    def finished(name: str) -> bool:
        return (run_dir / name / STAGE_DONE).exists()

    def loaders(path: Path) -> list[str]:
        """The unfinished stages that will load this file of a finished stage."""
        stage = path.parts[0]
        readers = children.get(stage, [])
        if path.name == LOWEST_HELDOUT:  # only the analyses of the run at its lowest held-out loss load it
            readers = [c for c in readers if c.endswith(LOWEST)]
        if "controls" in readers and stage not in control_waits:  # measured already: its control.json is written
            readers = [c for c in readers if c != "controls"]
        return [c for c in readers if not finished(c)]

    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file() and p.name != PACK_RECORD)
    large = [p for p in files if p.suffix in WEIGHT_SUFFIXES and (run_dir / p).stat().st_size > limit_bytes]
    plan = PackPlan()
    left_out: set[Path] = set()
    for path in large:
        stage = path.parts[0]
        if len(path.parts) == 1:
            plan.kept_over_limit[str(path)] = []  # not a stage's: the folder's own
            continue
        if finished(stage):
            waiting = loaders(path)
        elif stage in PIECES and len(path.parts) > 2:
            piece = f"{stage}/{path.parts[1]}"
            if not (run_dir / piece / PIECES[stage]).exists():
                plan.restarted.append(piece)
                continue
            waiting = []  # a finished piece's weights: nothing loads them again
        else:
            plan.restarted.append(stage)
            continue
        if waiting:
            plan.kept_over_limit[str(path)] = waiting
        else:
            plan.left_out[str(path)] = (run_dir / path).stat().st_size
            left_out.add(path)
    plan.restarted = list(dict.fromkeys(plan.restarted))
    gone = {Path(p) for p in plan.restarted}
    plan.kept = [p for p in files if p not in left_out and not any(p.is_relative_to(g) for g in gone)]
    return plan


def refuse_left_out(run_dir: Path, stage: str, file: str | None = None) -> None:
    """Stop, naming them, if a pack left out the weights of ``stage`` that a stage now loads: its model (or, named as
    ``file``, its weights at the lowest held-out loss)."""
    missing = [
        p
        for p in earlier_left_out(run_dir)
        if Path(p).parts[0] == stage and (Path(p).name == file if file else Path(p).name != LOWEST_HELDOUT)
    ]
    if missing:
        raise RunDirError(
            f"{', '.join(missing)} of {run_dir} were left out by `hyperfit pack` (nothing was to load them then; this "
            f"config now does). Copy them back from the machine that trained them, or delete {run_dir / stage} to "
            f"train it again, with the stages below it."
        )


def load_study_run(model_args, train_folder: Path):
    """(model, tokenizer) that the study's training stage ``train_folder`` saved; refused, naming the files, where a
    pack left them out."""
    from hyperfitting.models.loading import load_hyperfitted

    refuse_left_out(train_folder.parent, train_folder.name)
    return load_hyperfitted(model_args, train_folder)


def earlier_left_out(run_dir: Path) -> dict[str, int]:
    """What an earlier pack of this folder left out and is still not here (a folder unpacked, resumed, packed again)."""
    record = run_dir / PACK_RECORD
    if not record.exists():
        return {}
    return {p: size for p, size in read_json(record)["left_out"].items() if not (run_dir / p).exists()}


def write_pack(run_dir: Path, archive: Path, limit_mb: float = 50.0, overwrite: bool = False) -> PackPlan:
    """Pack ``run_dir`` into ``archive`` (.tar.xz, .tar.gz or .tar), written whole or not at all."""
    from hyperfitting.pipeline.stages import environment_record

    run_dir, archive = Path(run_dir), Path(archive)
    mode = next((m for suffix, m in ARCHIVE_SUFFIXES.items() if archive.name.endswith(suffix)), None)
    if mode is None:
        raise RunDirError(f"Name the pack {archive.name}.tar.xz (or .tar.gz, .tar): '{archive}' has no such ending.")
    if archive.exists() and not overwrite:
        raise RunDirError(f"'{archive}' already exists: pass --overwrite to replace it, or name another file.")
    lock_run_dir(run_dir)  # a study still writing the folder would be packed half-way
    plan = plan_pack(run_dir, int(limit_mb * 2**20))
    record = {
        "run_dir": str(run_dir),
        "packed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "by": environment_record(),
        "limit_mb": limit_mb,
        "left_out": {**earlier_left_out(run_dir), **plan.left_out},
        "kept_over_limit": plan.kept_over_limit,
        "restarted": plan.restarted,
        "finished_stages": sorted(p.parts[0] for p in plan.kept if len(p.parts) == 2 and p.name == STAGE_DONE),
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    root = run_dir.name
    with atomic_path(archive) as tmp, tarfile.open(tmp, mode) as tar:
        for path in plan.kept:
            tar.add(run_dir / path, arcname=f"{root}/{path}", recursive=False)
        data = (json.dumps(record, indent=2) + "\n").encode()
        info = tarfile.TarInfo(f"{root}/{PACK_RECORD}")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
    return plan


def unpack(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` into the folder ``into`` (its run folder must not be there yet): the run folder's path."""
    archive, into = Path(archive), Path(into)
    if not hasattr(tarfile, "data_filter"):
        raise RunDirError("Unpacking safely needs tarfile's data filter: Python 3.10.12, 3.11.4 or newer.")
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        roots = {Path(m.name).parts[0] for m in members}
        if len(roots) != 1 or not any(m.name == f"{next(iter(roots))}/{MARKER}" for m in members):
            raise RunDirError(f"'{archive}' is not a pack of one run folder (`hyperfit pack` writes those).")
        root = next(iter(roots))
        if root in {".", "..", "/"}:
            raise RunDirError(f"'{archive}' names its run folder '{root}': not a pack `hyperfit pack` writes.")
        target = into / root
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RunDirError(
                f"'{target}' already exists: unpack elsewhere (--into), or move that run folder away first."
            )
        into.mkdir(parents=True, exist_ok=True)
        partial = into / f".{root}.unpacking"
        shutil.rmtree(partial, ignore_errors=True)  # left by an unpack that was killed
        try:
            # the "data" filter refuses absolute paths, links out of the folder and device files
            tar.extractall(partial, filter="data")
            os.replace(partial / root, target)
        except tarfile.FilterError as error:
            raise RunDirError(f"'{archive}' holds {error}: refused, nothing unpacked.") from error
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return target
