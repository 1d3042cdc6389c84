"""The GPU check runs in the suite at tiny shapes on the CPU, so the script cannot rot before a GPU is lent."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_every_phase_and_the_paths_agree(gpu_check, tmp_path):
    out = tmp_path / "gpu_check.json"
    results = gpu_check.main(["--tiny", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # the file holds what was measured
    tiny = results["shapes"]["tiny"]
    assert 0 < tiny["full_finetune"]["mfu_vs_measured"] and tiny["full_finetune"]["tokens_per_s"] > 0
    lora = tiny["late_stage_lora"]
    # The trunk cache feeds block k the states the frozen trunk would have computed: same first loss.
    assert lora["first_loss_difference"] < 1e-5
    assert lora["trainable_blocks"] == [1, 2, 3, 4, 5]
    decoding = tiny["decoding"]
    assert list(tiny)[0] == "decoding"  # first: it answers even if a training phase fails
    assert decoding["batch_1"]["tokens_per_s"] > 0 and decoding["batch_4"]["tokens_per_s"] > 0
    # no graph on a CPU: the study's decoder here is the growing cache, and the graph path is not entered
    assert decoding["decoder"] == "dynamic" and decoding["batch_4"]["graphs"]["captures"] == 0
    # In fp32 on one thread of work, greedy decoding through our path and through `generate` emit the same tokens.
    assert decoding["generate_batch_4"]["identical_continuations"] == decoding["generate_batch_4"]["of"] == 4


def test_a_spent_budget_skips_the_remaining_phases_and_says_so(gpu_check, tmp_path):
    results = gpu_check.main(["--tiny", "--budget-s", "0"])
    assert all(
        "time budget" in phase["skipped"] for phase in results["shapes"]["tiny"].values() if isinstance(phase, dict)
    )
    assert "matmul_tflops" in results["roofline"]
