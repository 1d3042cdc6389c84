"""`hyperfit pack`: a run folder without its largest files, in one archive that another machine resumes from.

A long study (the standard preset is hours of stages on a CPU) can outlive the machine it started on. Most of what its
finished stages hold is small: numbers, decoded texts, LoRA adapters, the prepared data. A fully fine-tuned model's
weights are not (about 0.5 GB for a 135M-parameter model). A pack keeps every file up to a size limit, and
`hyperfit study ... --resume` on the unpacked folder goes on where the study stopped:

- a finished stage whose large files were left out stays finished when every stage that loads them has finished
  too (its children in the graph; for the weights at the lowest held-out loss, the analyses of that run alone):
  nothing will load them again;
- otherwise it is left out whole, with every unfinished stage below it in the graph, and they run again from their
  start on --resume (same config, same seed; on another machine the rerun's numbers may differ in the last digits).

The pack says which files it left out and which stages will run again in its `pack.json`.
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
from hyperfitting.rundir import atomic_path, lock_run_dir
from hyperfitting.training.hyperfit import LOWEST_HELDOUT

PACK_RECORD = "pack.json"
# What a pack may leave out: model weights, optimizer state and checkpoints. Texts and numbers always travel.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
ARCHIVE_SUFFIXES = {".tar.xz": "w:xz", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar": "w"}


@dataclass
class PackPlan:
    kept: list[Path] = field(default_factory=list)
    """Files that go into the pack, relative to the run folder."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Weight files over the limit, relative path -> bytes."""
    rerun: list[str] = field(default_factory=list)
    """Stages left out whole, in the study's order: --resume runs them again."""


def stage_children(run_dir: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The run's stages in order, and for each the stages that list it as a parent (from the folder's config)."""
    from hyperfitting.pipeline.graph import study_graph

    config = load_config(str(run_dir / CONFIG), [])
    graph = study_graph(config, run_dir)
    children: dict[str, list[str]] = {name: [] for name in graph.names}
    for name in graph.names:
        for parent in graph[name].parents:
            children.setdefault(parent, []).append(name)
    return list(graph.names), children


def plan_pack(run_dir: Path, limit_bytes: int) -> PackPlan:
    """What a pack of ``run_dir`` holds when every weight file over ``limit_bytes`` is left out (module docstring)."""
    run_dir = Path(run_dir)
    if not (run_dir / MARKER).exists() or not (run_dir / CONFIG).exists():
        raise RunDirError(f"'{run_dir}' is not a hyperfit run folder ({MARKER} or {CONFIG} is missing).")
    names, children = stage_children(run_dir)
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file() and p.name != PACK_RECORD)
    large = {
        str(p): size
        for p in files
        if p.suffix in WEIGHT_SUFFIXES and (size := (run_dir / p).stat().st_size) > limit_bytes
    }
    heavy_stages = {Path(p).parts[0] for p in large if len(Path(p).parts) > 1}

    def finished(name: str) -> bool:
        return (run_dir / name / STAGE_DONE).exists()

    def below(name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(children.get(name, []))
        while todo:
            child = todo.pop()
            if child not in seen:
                seen.add(child)
                todo += children.get(child, [])
        return seen

    def readers(path: str) -> list[str]:
        """The stages that load a stage's file: its children (a grandchild reads its own parent's outputs)."""
        stage = Path(path).parts[0]
        if Path(path).name == LOWEST_HELDOUT:  # only the analyses of the run at its lowest held-out loss load it
            return [c for c in children.get(stage, []) if c.endswith(LOWEST)]
        return children.get(stage, [])

    rerun: set[str] = set()
    changed = True
    while changed:  # a stage left out makes its parents' files needed again in turn
        changed = False
        for name in heavy_stages - rerun:
            needed_again = not finished(name) or any(
                not finished(reader) or reader in rerun
                for path in large
                if Path(path).parts[0] == name
                for reader in readers(path)
            )
            if needed_again:
                rerun.add(name)
                changed = True
    # what an unfinished stage below a left-out one has begun was made from the files that will be made again
    rerun |= {c for name in list(rerun) for c in below(name) if not finished(c) and (run_dir / c).exists()}

    plan = PackPlan(rerun=[n for n in names if n in rerun] + sorted(rerun - set(names)))
    for path in files:
        if path.parts[0] in rerun and len(path.parts) > 1:
            continue
        if str(path) in large:
            plan.left_out[str(path)] = large[str(path)]
        else:
            plan.kept.append(path)
    return plan


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
        "left_out": plan.left_out,
        "rerun": plan.rerun,
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
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        roots = {Path(m.name).parts[0] for m in members}
        if len(roots) != 1 or not any(m.name == f"{next(iter(roots))}/{MARKER}" for m in members):
            raise RunDirError(f"'{archive}' is not a pack of one run folder (`hyperfit pack` writes those).")
        root = next(iter(roots))
        target = into / root
        if target.exists() and any(target.iterdir()):
            raise RunDirError(
                f"'{target}' already exists: unpack elsewhere (--into), or move that run folder away first."
            )
        into.mkdir(parents=True, exist_ok=True)
        partial = into / f".{root}.unpacking"
        if partial.exists():  # left by an unpack that was killed
            shutil.rmtree(partial)
        tar.extractall(partial, filter="data")
        os.replace(partial / root, target)
        partial.rmdir()
    return target
