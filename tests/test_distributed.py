"""Two processes under torchrun (gloo, CPU) follow the single-process run: same losses and weights, same greedy text."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.test_reliability import _environment, _train_command


def free_port() -> int:
    """A port no process listens on now (the OS picks it), so two suites on one machine do not collide."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


pytestmark = pytest.mark.e2e  # several processes each


def _run(command, **kwargs):
    import subprocess

    result = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_model_folder, corpus, tmp_path):
    extra = ["train.epochs=3", "train.batch_size=4"]
    single, double = tmp_path / "one", tmp_path / "two"
    _run(_train_command(tiny_model_folder, corpus, single, *extra))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command = _train_command(tiny_model_folder, corpus, double, *extra)
    _run(torchrun + command[1:])  # drop the interpreter: torchrun starts its own

    a = load_file(single / "train" / "adapter" / "adapter_model.safetensors")
    b = load_file(double / "train" / "adapter" / "adapter_model.safetensors")
    for name in a:  # float reductions differ in order across processes: a tolerance, not equality
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    losses = [
        [json.loads(line)["train_loss"] for line in (d / "train" / "train_log.jsonl").read_text().splitlines()]
        for d in (single, double)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    processes = [
        json.loads((d / "train" / "train_log.jsonl").read_text().splitlines()[-1])["processes"]
        for d in (single, double)
    ]
    assert processes == [1, 2]  # the work really was split (and the trunk cache, blocks=last:1, built in shares)

    # The other standard launcher. On CPUs it needs --multi_gpu to start several processes; they then use gloo.
    launched = tmp_path / "accelerate"
    accelerate = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]
    _run(accelerate + _train_command(tiny_model_folder, corpus, launched, *extra)[1:])
    rows = [json.loads(line) for line in (launched / "train" / "train_log.jsonl").read_text().splitlines()]
    assert rows[-1]["processes"] == 2 and [r["train_loss"] for r in rows] == pytest.approx(losses[0], abs=1e-4)

    # Generation: prompts sharded over the two processes, gathered back in order, written once.
    evaluate = lambda run_dir: [
        sys.executable,
        "-m",
        "hyperfitting.cli",
        "evaluate",
        f"model.name={tiny_model_folder}",  # noqa: E731
        f"model.adapter={single / 'train' / 'adapter'}",
        f"data.corpus={corpus}",
        f"data.eval_corpora=[{corpus}]",
        "data.train_blocks=16",
        "data.block_tokens=32",
        "data.heldout_blocks=2",
        "data.eval_prompts=5",
        "data.prompt_tokens=8",
        "data.reference_tokens=8",
        "generate.max_new_tokens=10",
        f"run_dir={run_dir}",
    ]
    _run(evaluate(tmp_path / "gen-one"))
    _run(torchrun + evaluate(tmp_path / "gen-two")[1:])
    rows = [
        [
            json.loads(line)["continuation_ids"]
            for line in (d / "evaluation" / "generations.jsonl").read_text().splitlines()
        ]
        for d in (tmp_path / "gen-one", tmp_path / "gen-two")
    ]
    assert len(rows[1]) == 5 and rows[0] == rows[1]


@pytest.mark.slow
def test_fsdp_full_fine_tuning_on_two_processes_matches_one(tiny_model_folder, corpus, tmp_path):
    """train.parallelism=fsdp shards parameters, gradients and optimizer state (FSDP2 on gloo);
    the per-epoch probe then decodes in lockstep on both processes. Same result as one process."""
    extra = [
        "train.method=full",
        "train.blocks=all",
        "train.parallelism=fsdp",
        "train.epochs=2",
        "train.batch_size=4",
        "train.lr=1e-3",
        "train.diversity_every=1",
        "train.diversity_tokens=6",
    ]
    single, double = tmp_path / "one", tmp_path / "two"
    _run(_train_command(tiny_model_folder, corpus, single, *extra))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    _run(torchrun + _train_command(tiny_model_folder, corpus, double, *extra)[1:])

    a = load_file(single / "train" / "model" / "model.safetensors")
    b = load_file(double / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    logs = [
        [json.loads(line) for line in (d / "train" / "train_log.jsonl").read_text().splitlines()]
        for d in (single, double)
    ]
    assert [r["train_loss"] for r in logs[0]] == pytest.approx([r["train_loss"] for r in logs[1]], abs=1e-4)
    assert [r["ttr"] for r in logs[0]] == [r["ttr"] for r in logs[1]]  # greedy probe text, identical
    assert logs[1][-1]["train_loss"] < logs[1][0]["train_loss"]
    assert [logs[0][-1]["processes"], logs[1][-1]["processes"]] == [1, 2]


@pytest.mark.slow
def test_whole_study_on_two_processes_matches_one(tiny_model_folder, corpus, tmp_path):
    """Every stage under torchrun: sharded trunk cache, DDP, sharded generation (greedy and sampled,
    seeded per prompt), sharded teacher forcing and geometry capture, controls, quality, report."""
    from tests.test_cli import _study_args

    study = lambda run_dir: [
        sys.executable,
        "-m",
        "hyperfitting.cli",
        "study",
        *_study_args(tiny_model_folder, corpus, run_dir),  # noqa: E731
        "train.batch_size=4",
        "data.train_blocks=8",
        "data.eval_prompts=5",
        # One rate per control and three decoding methods (greedy, sampled, with a processor): the
        # sharding is the same for every method and every rate, and the three studies stay short.
        "study.controls_lr_sweep=[]",
        "baselines.methods=[greedy,top-p,repetition-penalty]",
    ]
    _run(study(tmp_path / "one"))
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    _run(torchrun + study(tmp_path / "two")[1:])

    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["train_log"][-1]["processes"] == 2
    assert _numbers(one["metrics"]) == pytest.approx(_numbers(two["metrics"]), rel=1e-3, abs=1e-4, nan_ok=True)
    assert [c["verdict"] for c in one["claims"]] == [c["verdict"] for c in two["claims"]]
    for name in ("temperature", "ranks", "geometry", "static-bias"):
        a, b = (json.loads((tmp_path / d / f"analysis-{name}" / "results.json").read_text()) for d in ("one", "two"))
        assert len(_numbers(a)) > 10, name
        assert _numbers(a) == pytest.approx(_numbers(b), rel=1e-3, abs=1e-3, nan_ok=True), name
    for d in ("one", "two"):
        assert (tmp_path / d / "report.html").exists()
    generations = [(tmp_path / d / "hyperfitted" / "generations.jsonl").read_text() for d in ("one", "two")]
    assert [json.loads(r)["continuation_ids"] for r in generations[0].splitlines()] == [
        json.loads(r)["continuation_ids"] for r in generations[1].splitlines()
    ]

    # The same study with FSDP: sharded LoRA training with the probe in lockstep, and the `full`
    # control sharded too, its greedy decoding in lockstep as well.
    _run(torchrun + study(tmp_path / "fsdp")[1:] + ["train.parallelism=fsdp"])
    sharded = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert _numbers(one["metrics"]) == pytest.approx(_numbers(sharded["metrics"]), rel=1e-3, abs=1e-4, nan_ok=True)
    controls = [
        json.loads((tmp_path / d / "controls" / "results.json").read_text())["methods"]["full"] for d in ("one", "fsdp")
    ]
    assert controls[0]["ttr"] == controls[1]["ttr"]
    assert controls[0]["final_train_loss"] == pytest.approx(controls[1]["final_train_loss"], abs=1e-4)


def _numbers(tree, prefix=""):
    """A nested JSON value flattened to {path: number}, for comparing two results files with a tolerance."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _numbers(value, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _numbers(value, f"{prefix}/{i}").items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: tree}
    return {}


@pytest.mark.slow
def test_a_sharded_run_killed_on_two_processes_resumes_on_one(tiny_model_folder, corpus, tmp_path):
    """Checkpoints are unsharded and keyed by name: an FSDP run cut short on 2 processes finishes on 1."""
    import signal
    import subprocess
    import time

    extra = [
        "train.method=full",
        "train.blocks=all",
        "train.parallelism=fsdp",
        "train.epochs=12",
        "train.batch_size=4",
        "train.lr=1e-3",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_train_command(tiny_model_folder, corpus, straight, *extra))

    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    process = subprocess.Popen(
        torchrun + _train_command(tiny_model_folder, corpus, killed, *extra)[1:],
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = killed / "train" / "train_log.jsonl"
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and process.poll() is None
        and not (log.exists() and len(log.read_text().splitlines()) >= 3)
    ):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    # The launcher and both workers (torchrun starts each worker in a session of its own).
    import psutil

    for victim in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        victim.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1)
    assert not (killed / "train" / "model").exists()

    resumed = _run(_train_command(tiny_model_folder, corpus, killed, *extra, "--resume"))
    assert "Resuming from the checkpoint after epoch" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a = load_file(straight / "train" / "model" / "model.safetensors")
    b = load_file(killed / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["processes"] for r in rows} == {1, 2}  # the first epochs on two processes, the rest on one
