"""The end-to-end GPU study runs in the suite at tiny shapes with the CPU as the device, so it cannot rot before a GPU
is lent."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_study.py"


@pytest.mark.e2e
def test_the_tiny_gpu_study_runs_every_stage_and_measures_every_phase(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu_study.json"
    results = module.main(["--tiny", "--json", str(out), "--out", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # the file holds what was measured

    study = results["study"]
    assert study["unfinished_stages"] == [] and {
        "train",
        "quality",
        "controls",
        "analysis-block-swap",
        "analysis-geometry",
    } <= set(study["stages"])
    # Every stage that reads a model ran its forwards on the device (the CPU on a machine without a GPU), none
    # elsewhere.
    forwards, device = study["forwards_by_stage"], results["device_type"]
    assert all(set(devices) == {device} and devices[device] > 0 for devices in forwards.values())
    assert {"base", "train", "analysis-ranks", "analysis-temperature", "controls", "quality"} <= set(forwards)
    assert study["host_forwards"] == 0 and study["device_forwards"] == sum(d[device] for d in forwards.values())
    # The estimate of a decode's memory is recorded beside each decoding stage's profile.
    assert all(
        study["stage_profile"][stage]["estimated_memory_mib"] >= 0 for stage in ("base", "analysis-ranks", "quality")
    )

    for width in (64, 300):
        row = results["decoding"][f"width_{width}"]
        assert (
            row["fixed"]["tokens_per_s"] > 0 and row["dynamic"]["tokens_per_s"] > 0 and row["fixed"]["first_pass_s"] > 0
        )
        assert row["identical_greedy_continuations"] == width  # the fixed buffers give the growing cache's tokens
    equality = results["greedy_equality"]
    assert equality["identical_continuations"] == equality["of"] == 64 and equality["first_differing_step"] == []
    assert 0 < results["training"]["mfu_vs_measured"] < 1
    assert results["teacher_forcing"]["tokens_per_s"] > 0
    estimate = results["paper_study_estimate"]
    assert estimate["total_min"] == pytest.approx(
        estimate["training_min"] + estimate["decoding_min"] + estimate["teacher_forcing_min"]
    )
