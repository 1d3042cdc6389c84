"""`hyperfit pack` / `unpack`: a study carried to another folder without the weights nothing will load again resumes
to the same numbers; weights a stage will still load travel, and a stage that needs left-out ones says so."""

import io
import json
import shutil
import tarfile
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


def _moved(args, carried):
    return [a if not a.startswith("run_dir=") else f"run_dir={carried}" for a in args]


def test_a_finished_study_packs_without_the_weights_nothing_will_load_again(
    finished_study, monkeypatch, capsys, tmp_path
):
    run_dir, args = finished_study
    limit = _weights_limit(run_dir)
    archive = tmp_path / "carried" / "study.tar.xz"
    plan = write_pack(run_dir, archive, limit)
    assert plan.restarted == [] and plan.kept_over_limit == {}
    assert plan.left_out and all(p.startswith("train-full/") for p in plan.left_out)
    assert any(str(p).startswith("train/") and p.suffix == ".safetensors" for p in plan.kept)  # the adapter travels

    with pytest.raises(RunDirError, match="already exists"):
        write_pack(run_dir, archive, limit)
    with pytest.raises(RunDirError, match="already exists"):
        unpack(archive, run_dir.parent)  # never over a run folder

    carried = unpack(archive, tmp_path / "elsewhere")
    record = json.loads((carried / "pack.json").read_text())
    assert record["left_out"] == plan.left_out and "train-full" in record["finished_stages"]
    code, out, err = run_cli(monkeypatch, capsys, "study", *_moved(args, carried), "--dry-run")
    assert code == 0, err
    assert " rerun " not in out and " run " not in out  # every stage reused, the full fine-tune's included

    # A config that now analyses the full fine-tune again cannot: said, not decoded from a model that is not there.
    code, _, err = run_cli(
        monkeypatch, capsys, "study", *_moved(args, carried), "study.analyses=[geometry,ranks]", "--resume"
    )
    assert code != 0 and "left out by `hyperfit pack`" in err and "train-full/model/model.safetensors" in err

    # Packed again, the folder still says what the first pack left out.
    again = write_pack(carried, tmp_path / "again.tar", limit)
    assert again.left_out == {}
    assert json.loads(tarfile.open(tmp_path / "again.tar").extractfile("study/pack.json").read())["left_out"] == (
        plan.left_out
    )


def test_an_interrupted_study_carries_what_it_will_still_load_and_resumes_to_the_same_numbers(
    finished_study, monkeypatch, capsys, tmp_path
):
    run_dir, args = finished_study
    limit = _weights_limit(run_dir)
    # Stopped after training its full fine-tune, before analysing it: its weights are still to be loaded.
    stopped = tmp_path / "runs-stopped" / "study"
    shutil.copytree(run_dir, stopped)
    for name in ("analysis-geometry-full", "quality"):
        shutil.rmtree(stopped / name)
    archive = tmp_path / "study.tar.gz"
    code, out, err = run_cli(monkeypatch, capsys, "pack", str(stopped), str(archive), "--limit-mb", str(limit))
    assert code == 0, err
    assert "Kept train-full/model/model.safetensors over the limit: analysis-geometry-full will still load it." in out
    code, out, err = run_cli(monkeypatch, capsys, "unpack", str(archive), "--into", str(tmp_path / "elsewhere"))
    assert code == 0, err
    carried = tmp_path / "elsewhere" / "study"

    resumed = time.time()
    code, _, err = run_cli(monkeypatch, capsys, "study", *_moved(args, carried), "--resume")
    assert code == 0, err

    def written(name):
        return (carried / name / "stage-done.json").stat().st_mtime

    for name in ("data", "base", "train", "hyperfitted", "analysis-geometry", "train-full"):
        assert _done(carried, name) == _done(run_dir, name) and written(name) < resumed  # carried, not redone
    assert written("analysis-geometry-full") >= resumed
    same = json.loads((run_dir / "analysis-geometry-full" / "results.json").read_text())
    again = json.loads((carried / "analysis-geometry-full" / "results.json").read_text())
    assert [r["delta_pr"] for r in again["layers"]] == pytest.approx([r["delta_pr"] for r in same["layers"]], rel=1e-6)

    # Stopped during the full fine-tune itself (started, not done): its partial work goes, and it starts again.
    (stopped / "train-full" / "stage-done.json").unlink()
    plan = plan_pack(stopped, int(limit * 2**20))
    assert plan.restarted == ["train-full"] and not any(p.parts[0] == "train-full" for p in plan.kept)


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
            "study.controls=[lora:last:5,lora:first:5,lora:all,full]",
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


def test_weights_are_left_out_only_once_every_stage_that_loads_them_has_finished(tmp_path):
    files = {
        "train/lowest_heldout.pt": 3000,  # loaded by the lowest-held-out analyses alone
        "train/adapter/adapter_model.safetensors": 100,
        "train-full/model/model.safetensors": 3000,  # loaded by its analyses and the controls' full arm
    }
    names = _folder(tmp_path / "a", set(), {})[1]
    before_controls = set(names[: names.index("controls")])

    # Stopped before the controls: the full fine-tune's weights are still to be loaded (the `full` arm), the main
    # run's lowest-held-out weights are not (their analyses are done); the adapter is under the limit.
    run_dir, _ = _folder(tmp_path / "b", before_controls, files)
    plan = plan_pack(run_dir, 1000)
    assert plan.kept_over_limit == {"train-full/model/model.safetensors": ["controls"]}
    assert plan.left_out == {"train/lowest_heldout.pt": 3000} and plan.restarted == []
    assert "train/adapter/adapter_model.safetensors" in map(str, plan.kept)

    # The controls measured the full fine-tune (its control.json) and died training another placement: the full
    # weights stay behind, the unfinished placement's checkpoint goes with its folder, the finished one stays.
    measured = {
        **files,
        "controls/full/control.json": 2,
        "controls/lora-all/checkpoint.pt": 3000,
        "controls/lora-first-5/control.json": 2,
        "controls/lora-first-5/lowest_heldout.pt": 3000,
    }
    run_dir, _ = _folder(tmp_path / "c", before_controls, measured)
    plan = plan_pack(run_dir, 1000)
    assert plan.kept_over_limit == {} and plan.restarted == ["controls/lora-all"]
    assert set(plan.left_out) == {
        "train/lowest_heldout.pt",
        "train-full/model/model.safetensors",
        "controls/lora-first-5/lowest_heldout.pt",
    }
    assert "controls/full/control.json" in map(str, plan.kept)
    assert not any(str(p).startswith("controls/lora-all") for p in plan.kept)

    # Stopped before the lowest-held-out geometry: the main run's weights at that epoch travel too.
    run_dir, _ = _folder(tmp_path / "d", before_controls - {"analysis-geometry-lowest-heldout"}, files)
    assert set(plan_pack(run_dir, 1000).kept_over_limit) == {
        "train/lowest_heldout.pt",
        "train-full/model/model.safetensors",
    }

    # Every stage done: nothing will load either, so both stay behind.
    run_dir, _ = _folder(tmp_path / "e", set(names), files)
    plan = plan_pack(run_dir, 1000)
    assert plan.kept_over_limit == {} and set(plan.left_out) == {
        "train/lowest_heldout.pt",
        "train-full/model/model.safetensors",
    }


def test_the_controls_refuse_to_measure_a_reused_run_whose_weights_a_pack_left_out(tmp_path):
    """A config changed after unpacking (a `full` arm added to the controls) reaches the full fine-tune's weights by
    the controls' own path: it stops naming them, instead of failing later inside the model loader."""
    from hyperfitting.config import load_config
    from hyperfitting.pipeline.controls import reused_control
    from hyperfitting.pipeline.pack import PACK_RECORD

    run_dir, _ = _folder(tmp_path, set(), {"train-full/summary.json": 2})
    (run_dir / PACK_RECORD).write_text(json.dumps({"left_out": {"train-full/model/model.safetensors": 3000}}))
    config = load_config("configs/quick.yaml", [f"run_dir={run_dir}"])
    with pytest.raises(RunDirError, match=r"train-full/model/model\.safetensors .*left out by `hyperfit pack`"):
        reused_control(config, "full", run_dir / "train-full", 1e-5, None, None, None, None, None)


@pytest.mark.parametrize(
    "hostile",
    [
        "study/../../escaped.txt",  # a path out of the folder
        "study/link",  # a link to a file outside it
    ],
)
def test_unpack_refuses_an_archive_that_would_write_outside_its_folder_and_leaves_nothing(tmp_path, hostile):
    def add(tar, name, data=b"", **link):
        member = tarfile.TarInfo(name)
        member.size = len(data)
        for key, value in link.items():
            setattr(member, key, value)
        tar.addfile(member, io.BytesIO(data))

    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:
        add(tar, "study/hyperfit-run.json", b"{}")
        add(tar, "study/config.yaml")
        if hostile.endswith("link"):
            add(tar, hostile, type=tarfile.SYMTYPE, linkname="/etc/passwd")
        else:
            add(tar, hostile, b"x")
    into = tmp_path / "deep" / "runs"
    with pytest.raises(RunDirError, match="refused, nothing unpacked"):
        unpack(archive, into)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "hostile.tar", "runs"]
