"""A killed run resumes to the same result, files are never half-written, untrusted weights are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hyperfitting.config import ModelArgs
from hyperfitting.errors import ModelError
from hyperfitting.models.loading import load_model
from tests.test_cli import _study_args


def _train_command(model, corpus, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "hyperfitting.cli",
        "train",
        f"model.name={model}",
        f"data.corpus={corpus}",
        f"data.eval_corpora=[{corpus}]",
        "data.train_blocks=16",
        "data.block_tokens=32",
        "data.heldout_blocks=2",
        "data.eval_prompts=2",
        "data.prompt_tokens=8",
        "data.reference_tokens=8",
        "train.epochs=30",
        "train.batch_size=2",
        "train.lr=1e-2",
        "train.blocks=last:1",
        "train.diversity_every=0",
        "model.precision=fp32",
        f"run_dir={run_dir}",
        *extra,
    ]


def _environment():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}


def _wait_for_checkpoint(process, run_dir) -> None:
    """Until the training run has written its first epoch checkpoint (it is then well inside the train stage)."""
    checkpoint = run_dir / "train" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_run_killed_mid_training_resumes_to_the_same_weights(tiny_model_folder, corpus, tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(
        _train_command(tiny_model_folder, corpus, straight), check=True, env=_environment(), capture_output=True
    )

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(tiny_model_folder, corpus, killed),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_checkpoint(process, killed)
    time.sleep(0.3)  # into a later epoch, most likely mid-write of something
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "train" / "adapter").exists()
    # Nothing half-written: every JSON parses, no temporary file is left where a reader would look.
    for path in killed.rglob("*.json"):
        json.loads(path.read_text())

    resumed = subprocess.run(
        _train_command(tiny_model_folder, corpus, killed, "--resume"),
        env=_environment(),
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming from the checkpoint after epoch" in resumed.stdout
    a = load_file(straight / "train" / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "train" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    log_a = [json.loads(line) for line in (straight / "train" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (killed / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in log_a] == pytest.approx([r["train_loss"] for r in log_b], abs=1e-6)


@pytest.mark.e2e
def test_sigterm_ends_a_run_with_a_word_and_leaves_it_to_resume(tiny_model_folder, corpus, tmp_path):
    # As a scheduler ends a job (SIGTERM, then SIGKILL), and with SIGINT ignored, as a command started in the
    # background from a script has it: the command still says how to go on, and leaves nothing half-written.
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        _train_command(tiny_model_folder, corpus, run_dir),
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    _wait_for_checkpoint(process, run_dir)
    assert process.poll() is None, "the run finished before it could be stopped; make it longer"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "Terminated (SIGTERM). Run the same command with --resume to continue." in stderr
    assert not (run_dir / "train" / "stage-done.json").exists() and not (run_dir / "train" / "adapter").exists()
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())


def test_pickle_weights_are_refused_unless_allowed(tiny_model_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "pickled"
    AutoModelForCausalLM.from_pretrained(tiny_model_folder).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_model_folder / name).read_bytes())
    for path in folder.glob("*.safetensors"):  # transformers 5 no longer writes pickle: make the old format by hand
        torch.save(load_file(path), folder / "pytorch_model.bin")
        path.unlink()
    assert list(folder.glob("*.bin")), "expected a pickle checkpoint"
    with pytest.raises(
        ModelError, match=r"holds no \.safetensors weights, only pickle files .* model\.allow_pickle=true"
    ):
        load_model(ModelArgs(name=str(folder)))
    model, _ = load_model(ModelArgs(name=str(folder), allow_pickle=True))
    assert model is not None


def test_a_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        load_model(ModelArgs(name=str(tmp_path)))


def test_a_second_command_on_a_run_folder_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from hyperfitting.config import load_config
    from hyperfitting.errors import RunDirError
    from hyperfitting.rundir import prepare_run_dir

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from hyperfitting.config import load_config; from hyperfitting.rundir import prepare_run_dir; "
            f"prepare_run_dir(load_config(overrides=['run_dir={run_dir}'])); print('locked', flush=True); "
            f"import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunDirError, match=rf"is in use by process {holder.pid} \(started .*\)\. Wait for that command"
        ):
            prepare_run_dir(load_config(overrides=[f"run_dir={run_dir}"]), "resume")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock went with its process: the folder is usable again, its contents intact.
    assert prepare_run_dir(load_config(overrides=[f"run_dir={run_dir}"]), "resume") == run_dir
    assert (run_dir / "config.yaml").exists()


def test_a_model_cache_entry_records_its_files_and_names_what_is_wrong(tmp_path):
    from hyperfitting.models.loading import cache_problem, write_cache_manifest

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    assert "no record of its files" in cache_problem(tmp_path)
    write_cache_manifest(tmp_path)
    assert cache_problem(tmp_path) is None
    (tmp_path / "model.safetensors").write_bytes(b"x" * 500)
    assert cache_problem(tmp_path) == "model.safetensors has 500 bytes instead of 1,000 (truncated or replaced)"
    (tmp_path / "model.safetensors").write_bytes(b"y" * 1000)
    assert cache_problem(tmp_path) == "model.safetensors does not match its recorded checksum"


@pytest.mark.slow
def test_a_truncated_model_cache_is_rebuilt_with_a_notice(real_model_folder, tmp_path, monkeypatch, capsys):
    import shutil

    from hyperfitting.models.loading import cache_problem, dequantised_gguf_folder, embedded_model_path

    monkeypatch.setenv("HYPERFIT_CACHE", str(tmp_path))
    target = tmp_path / "gguf" / real_model_folder.name
    shutil.copytree(real_model_folder, target)
    weights = target / "model.safetensors"
    with open(weights, "r+b") as handle:  # as a full disk or a bad copy leaves it
        handle.truncate(weights.stat().st_size // 2)
    assert dequantised_gguf_folder(embedded_model_path("smollm2-135m")) == target
    assert "failed its check: model.safetensors has" in capsys.readouterr().out
    assert cache_problem(target) is None
    model, _ = load_model(ModelArgs(name="smollm2-135m"))
    assert model.config.num_hidden_layers == 30


# ------------------------------------------------------------------------------ faults in every stage of a study


def _study_command(model, corpus, run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "hyperfitting.cli",
        "study",
        *_study_args(model, corpus, run_dir),
        "study.controls=[lora:last:1]",
        "study.controls_lr_sweep=[]",
        "study.reader_prompts=1",
        "baselines.methods=[greedy,top-p,repetition-penalty]",
        *extra,
    ]


def _comparable(value, path=""):
    """A results file flattened to {path: value}, without what may differ between two identical runs: times and
    folders."""
    if isinstance(value, dict):
        return {
            k: v
            for key, item in value.items()
            if not any(word in key for word in ("second", "wall", "saved_to", "environment", "memory"))
            for k, v in _comparable(item, f"{path}/{key}").items()
        }
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _comparable(item, f"{path}/{i}").items()}
    return {path: value}


@pytest.mark.e2e
def test_a_study_killed_inside_each_kind_of_stage_resumes_to_the_same_results(tiny_model_folder, corpus, tmp_path):
    """SIGKILL inside each kind of stage in turn (at its first completed write, before the file lands), resume, and
    the finished study's metrics.json equals an uninterrupted run's."""
    from hyperfitting.config import load_config
    from hyperfitting.pipeline.graph import study_graph
    from hyperfitting.rundir import FAULT_ENV

    environment = {**_environment(), "OMP_NUM_THREADS": "1"}  # the same threads in every process: the same floats
    straight, faulted = tmp_path / "straight" / "run", tmp_path / "faulted" / "run"
    done = subprocess.run(
        _study_command(tiny_model_folder, corpus, straight), env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]

    config = load_config(
        overrides=[
            *_study_args(tiny_model_folder, corpus, faulted),
            "study.controls=[lora:last:1]",
            "study.controls_lr_sweep=[]",
        ]
    )
    stages = [*study_graph(config, faulted).names, "report-figures"]
    assert {"data", "train", "analysis-block-swap", "analysis-geometry-lowest-heldout", "controls", "quality"} <= set(
        stages
    )
    # One stage of each kind is killed, for time: stages of one kind run the same runner and write the same way
    # (hyperfitted and hyperfitted-blocked as base, every analysis of a trained model as the temperature analysis; the
    # block swap, which loads both models' blocks, is killed on its own).
    same_kind = {"hyperfitted", "hyperfitted-blocked", "analysis-static-bias", "analysis-ranks", "analysis-geometry"}
    stages = [s for s in stages if s not in same_kind and not s.endswith("-lowest-heldout")]
    assert {"base", "analysis-temperature", "analysis-block-swap", "baselines", "retention"} <= set(stages)
    for stage in stages:
        killed = subprocess.run(
            _study_command(tiny_model_folder, corpus, faulted, "--resume"),
            capture_output=True,
            text=True,
            env={**environment, FAULT_ENV: stage},
        )
        assert killed.returncode == -signal.SIGKILL, f"{stage}: {killed.stderr[-3000:]}"
        for path in faulted.rglob("*.json"):  # nothing half-written where a reader would look
            json.loads(path.read_text())
    resumed = subprocess.run(
        _study_command(tiny_model_folder, corpus, faulted, "--resume"), env=environment, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = (_comparable(json.loads((folder / "metrics.json").read_text())) for folder in (straight, faulted))
    assert got.keys() == expected.keys()
    assert {
        k: v for k, v in got.items() if v != expected[k] and not (v != v and expected[k] != expected[k])
    } == {}  # NaN is NaN


@pytest.mark.e2e
def test_a_write_that_hits_a_file_size_limit_names_the_file_and_the_run_resumes(tiny_model_folder, corpus, tmp_path):
    import resource

    run_dir = tmp_path / "run"
    command = _train_command(tiny_model_folder, corpus, run_dir, "train.epochs=2")

    # 30 kB: the data stage's files fit, the first checkpoint of the training (weights and Adam state) does not
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, resource.RLIM_INFINITY))

    failed = subprocess.run(command, env=_environment(), capture_output=True, text=True, preexec_fn=limit)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert f"error: Could not write {run_dir / 'train' / 'checkpoint.pt'}: File too large" in failed.stderr, (
        failed.stderr[-3000:]
    )
    assert "--resume" in failed.stderr
    assert not list(run_dir.rglob(".*.tmp"))  # the temporary was removed
    resumed = subprocess.run([*command, "--resume"], env=_environment(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").exists()


def test_an_adapter_on_the_wrong_base_model_is_refused_before_anything_loads(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    # as a study's model card records it
    (adapter / "hyperfit.json").write_text(json.dumps({"base_model": "gemma3-270m"}))
    with pytest.raises(ModelError, match="trained on 'gemma3-270m'.*model.name=gemma3-270m"):
        load_model(ModelArgs(name="smollm2-135m", adapter=str(adapter)))
