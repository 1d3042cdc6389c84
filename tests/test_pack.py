"""`hyperfit pack` / `unpack`: a study carried to another folder without its large weights resumes to the same numbers,
rerunning only the stages whose left-out files are still to be read."""

import json
import shutil
import time

import pytest

from hyperfitting.errors import RunDirError
from hyperfitting.pipeline.pack import WEIGHT_SUFFIXES, plan_pack, unpack, write_pack
from tests.test_cli import _study_args, run_cli


def _done(run_dir, name):
    return json.loads((run_dir / name / "stage-done.json").read_text())


@pytest.fixture()
def finished_study(monkeypatch, capsys, tiny_model_folder, corpus, tmp_path):
    """A whole tiny study with a full fine-tune (large weights) beside the LoRA run (a small adapter)."""
    run_dir = tmp_path / "runs" / "study"
    args = [
        *_study_args(tiny_model_folder, corpus, run_dir),
        "study.full_finetune=true",
        "study.analyses=[geometry]",
        "study.controls=[]",
        "study.lowest_heldout_control=false",
        "baselines.methods=[]",
    ]
    code, _, err = run_cli(monkeypatch, capsys, "study", *args)
    assert code == 0, err
    return run_dir, args


def _weights_limit(run_dir) -> float:
    """A limit (MB) under the full fine-tune's weights and over every other weight file (the LoRA adapter, the data's
    blocks): what a real pack's 50 MB is to a 135M-parameter model."""
    weights = [p for p in run_dir.rglob("*") if p.suffix in WEIGHT_SUFFIXES]
    full = min(p.stat().st_size for p in weights if "train-full" in p.parts)
    others = max(p.stat().st_size for p in weights if "train-full" not in p.parts)
    assert others < full, "the tiny study's full fine-tune must hold its largest weights"
    return (others + full) / 2 / 2**20


def test_a_finished_study_packs_without_weights_nothing_will_read_again(finished_study, monkeypatch, capsys, tmp_path):
    run_dir, args = finished_study
    limit = _weights_limit(run_dir)
    archive = tmp_path / "carried" / "study.tar.xz"
    plan = write_pack(run_dir, archive, limit)
    assert plan.rerun == [] and plan.left_out and all(p.startswith("train-full/") for p in plan.left_out)
    assert any(str(p).startswith("train/") and p.suffix == ".safetensors" for p in plan.kept)  # the adapter travels

    with pytest.raises(RunDirError, match="already exists"):
        write_pack(run_dir, archive, limit)
    with pytest.raises(RunDirError, match="already exists"):
        unpack(archive, run_dir.parent)  # never over a run folder

    carried = unpack(archive, tmp_path / "elsewhere")
    record = json.loads((carried / "pack.json").read_text())
    assert record["left_out"] == plan.left_out and "train-full" in record["finished_stages"]
    moved = [a if not a.startswith("run_dir=") else f"run_dir={carried}" for a in args]
    code, out, err = run_cli(monkeypatch, capsys, "study", *moved, "--dry-run")
    assert code == 0, err
    assert " rerun " not in out and " run " not in out  # every stage reused, the full fine-tune's included


def test_an_unfinished_study_reruns_the_stages_that_still_read_what_was_left_out(
    finished_study, monkeypatch, capsys, tmp_path
):
    run_dir, args = finished_study
    limit = _weights_limit(run_dir)
    # As if the study had been stopped after training its full fine-tune, before analysing it and the quality stage.
    stopped = tmp_path / "runs-stopped" / "study"
    shutil.copytree(run_dir, stopped)
    for name in ("analysis-geometry-full", "quality"):
        shutil.rmtree(stopped / name)
    assert plan_pack(stopped, int(limit * 2**20)).rerun == ["train-full"]

    archive = tmp_path / "study.tar.gz"
    code, out, err = run_cli(monkeypatch, capsys, "pack", str(stopped), str(archive), "--limit-mb", str(limit))
    assert code == 0, err
    assert "Will run again on --resume: train-full." in out
    code, out, err = run_cli(monkeypatch, capsys, "unpack", str(archive), "--into", str(tmp_path / "elsewhere"))
    assert code == 0, err
    carried = tmp_path / "elsewhere" / "study"
    assert not (carried / "train-full").exists() and (carried / "train" / "stage-done.json").exists()

    moved = [a if not a.startswith("run_dir=") else f"run_dir={carried}" for a in args]
    resumed = time.time()
    code, _, err = run_cli(monkeypatch, capsys, "study", *moved, "--resume")
    assert code == 0, err

    def written(name):
        return (carried / name / "stage-done.json").stat().st_mtime

    for name in ("data", "base", "train", "hyperfitted", "analysis-geometry"):
        assert _done(carried, name) == _done(run_dir, name) and written(name) < resumed  # carried, not redone
    # the full fine-tune trained again, to the same model: its analysis gives the uninterrupted study's numbers
    assert written("train-full") >= resumed and written("analysis-geometry-full") >= resumed
    same = json.loads((run_dir / "analysis-geometry-full" / "results.json").read_text())
    again = json.loads((carried / "analysis-geometry-full" / "results.json").read_text())
    assert [r["delta_pr"] for r in again["layers"]] == pytest.approx([r["delta_pr"] for r in same["layers"]], rel=1e-6)


def test_pack_refuses_what_is_not_a_run_folder_or_an_archive_name(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(RunDirError, match="not a hyperfit run folder"):
        plan_pack(tmp_path / "notes", 1)
    with pytest.raises(RunDirError, match=r"\.tar\.xz"):
        write_pack(tmp_path / "notes", tmp_path / "pack.zip")


def _folder(tmp_path, finished: set[str], files: dict[str, int]):
    """A run folder of the standard shape with the ``finished`` stages marked done and ``files`` (path -> bytes)."""
    from hyperfitting.config import dump_config, load_config
    from hyperfitting.pipeline.graph import study_graph

    run_dir = tmp_path / "run"
    config = load_config(
        "configs/quick.yaml",
        [
            f"run_dir={run_dir}",
            "study.full_finetune=true",
            "study.lowest_heldout_control=true",
            "study.analyses=[geometry]",
            "study.controls=[lora:last:5,full]",
            "study.controls_on_study_data=true",
        ],
    )
    run_dir.mkdir(parents=True)
    (run_dir / "hyperfit-run.json").write_text("{}")
    (run_dir / "config.yaml").write_text(dump_config(config))
    names = study_graph(config, run_dir).names
    for name in finished:
        assert name in names, name
        (run_dir / name).mkdir(exist_ok=True)
        (run_dir / name / "stage-done.json").write_text("{}")
    for path, size in files.items():
        (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / path).write_bytes(b"\0" * size)
    return run_dir, names


def test_left_out_weights_rerun_their_stage_only_while_a_stage_that_loads_them_is_unfinished(tmp_path):
    files = {
        "train/lowest_heldout.pt": 3000,  # loaded by the lowest-held-out analyses alone
        "train/adapter/adapter_model.safetensors": 100,
        "train-full/model/model.safetensors": 3000,  # loaded by its analyses and the controls' full arm
    }
    # Stopped before the controls: the full fine-tune's weights are still to be loaded, the main run's lowest-held-out
    # weights are not (their analyses are done), and its adapter travels.
    names = _folder(tmp_path / "a", set(), {})[1]
    before_controls = set(names[: names.index("controls")])
    run_dir, _ = _folder(tmp_path / "b", before_controls, files)
    plan = plan_pack(run_dir, 1000)
    assert plan.rerun == ["train-full"]
    assert plan.left_out == {"train/lowest_heldout.pt": 3000}
    assert "train/adapter/adapter_model.safetensors" in map(str, plan.kept)

    # Stopped before the lowest-held-out geometry: the main run trains again too (and only the stages above it).
    run_dir, _ = _folder(tmp_path / "c", before_controls - {"analysis-geometry-lowest-heldout"}, files)
    assert plan_pack(run_dir, 1000).rerun == ["train", "train-full"]

    # Every stage done: nothing will load either, so both are left behind and nothing reruns.
    run_dir, _ = _folder(tmp_path / "d", set(names), files)
    plan = plan_pack(run_dir, 1000)
    assert plan.rerun == [] and set(plan.left_out) == {"train/lowest_heldout.pt", "train-full/model/model.safetensors"}
