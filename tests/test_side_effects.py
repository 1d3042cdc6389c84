"""Using the toolkit from a notebook changes nothing the caller owns, and nothing it remembers goes stale."""

import os
import random
import re

import numpy as np
import pytest
import torch

from hyperfitting.analysis.common import decode
from hyperfitting.figures import new_figure, savefig
from hyperfitting.config import ModelArgs, load_config
from hyperfitting.hashing import content_hash
from hyperfitting.training.hyperfit import hyperfit
from tests.conftest import make_tiny_model
from tests.test_training import _tiny_run


class _Tokenizer:
    pad_token_id, eos_token_id = 0, 96


def test_remembered_decodes_are_dropped_when_the_weights_change_in_place():
    model = make_tiny_model("llama")
    config = load_config(overrides=["generate.max_new_tokens=8", "generate.stop_at_eos=false"])
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    first = decode(model, _Tokenizer(), prompts, config)
    assert decode(model, _Tokenizer(), prompts, config) is first  # same weights: remembered
    with torch.no_grad():  # an in-place update, as an optimizer step makes
        model.lm_head.weight.mul_(-1.0)
    again = decode(model, _Tokenizer(), prompts, config)
    assert again is not first and [c.token_ids for c in again] != [c.token_ids for c in first]


def test_figures_leave_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    matplotlib.use("svg")
    figure, axis = new_figure()
    axis.plot([0, 1], [1, 0])
    savefig(figure, tmp_path / "plot.png")
    assert matplotlib.get_backend() == "svg"
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loading_a_model_leaves_hf_hub_offline_as_it_was(monkeypatch, tiny_model_folder):
    from hyperfitting.models.loading import load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_model(ModelArgs(name=str(tiny_model_folder)))
    assert "HF_HUB_OFFLINE" not in os.environ


def test_training_hands_back_the_callers_random_state(tmp_path):
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    model = make_tiny_model("llama")  # (the test's own model building seeds torch: done before the caller seeds)
    config = load_config(
        overrides=["train.epochs=1", "train.batch_size=2", "train.diversity_every=0", "train.blocks=last:1"]
    )
    blocks = torch.randint(2, 97, (4, 8), generator=torch.Generator().manual_seed(2))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    hyperfit(model, blocks, blocks[:2], config, tmp_path)
    assert draws() == expected


def test_lora_dropout_acts_in_training_steps_and_not_in_measurements(tmp_path):
    (plain, *_), (dropped, *_) = (
        _tiny_run(tmp_path / name, "train.method=lora", "train.lora_rank=4", f"train.lora_dropout={p}")
        for name, p in (("plain", 0.0), ("dropped", 0.5))
    )
    # Epoch 0 is measured before any step: no dropout there, so both runs start from the same loss.
    assert plain.log[0]["train_loss"] == dropped.log[0]["train_loss"]
    assert plain.log[1]["train_loss"] != dropped.log[1]["train_loss"]
    # After training, the adapters' dropout is off again: two measurements of the same input agree.
    ids = torch.randint(2, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(dropped.model(input_ids=ids).logits, dropped.model(input_ids=ids).logits)


def test_the_public_api_imports_lazily_and_every_name_is_documented():
    import subprocess
    import sys

    code = (
        "import sys, hyperfitting as hf; assert 'torch' not in sys.modules, 'import pulled in torch';"
        "missing = [n for n in hf.__all__[1:] if callable(getattr(hf, n)) and not (getattr(hf, n).__doc__ or "
        "'').strip()];"
        "assert not missing, missing"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_example_runs_on_a_tiny_model(tiny_model_folder, corpus, tmp_path, monkeypatch):
    import importlib.util
    import tempfile
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # the library writes no folder of its own: nothing appears here or in the temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()

    path = Path(__file__).resolve().parents[1] / "examples" / "notebook_walkthrough.py"
    spec = importlib.util.spec_from_file_location("walkthrough", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(
        [
            f"model.name={tiny_model_folder}",
            f"data.corpus={corpus}",
            f"data.eval_corpora=[{corpus}]",
            "data.train_blocks=4",
            "data.block_tokens=32",
            "data.heldout_blocks=2",
            "data.prompt_tokens=8",
            "data.reference_tokens=12",
            "data.eval_prompts=2",
            "train.epochs=1",
            "train.batch_size=2",
            "train.blocks=last:1",
            "generate.max_new_tokens=8",
        ]
    )
    assert set(results["generation"]) == {"base", "hyperfitted"} and 0 < results["generation"]["base"]["ttr"] <= 1
    assert (
        results["geometry"]["effect"]["low"]
        <= results["geometry"]["effect"]["value"]
        <= results["geometry"]["effect"]["high"]
    )
    assert {p.name for p in tmp_path.iterdir()} <= {"scratch", "corpus"} and not list((tmp_path / "scratch").iterdir())


def test_a_dry_run_writes_nothing(monkeypatch, capsys, tmp_path):
    """`hyperfit study --dry-run` on the Gemma preset (a model assembled from its parts on first use) plans every stage
    and leaves the model cache and the run folder as they were: empty."""
    from tests.test_cli import run_cli

    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cache.mkdir()
    monkeypatch.setenv("HYPERFIT_CACHE", str(cache))
    code, out, err = run_cli(
        monkeypatch, capsys, "study", "configs/gemma3-270m-quick.yaml", f"run_dir={run_dir}", "--dry-run"
    )
    assert code == 0, err
    assert "nothing is run" in out and re.search(r"^train\s+run\s", out, re.M)
    assert list(cache.rglob("*")) == [] and not run_dir.exists()


def test_an_assembled_model_has_the_content_its_fingerprint_declared(tmp_path):
    """The dry run fingerprints an embedded model by the checksum its package declares: once assembled, the file's own
    hash is the same, so assembling it reruns no stage."""
    from hyperfitting.hashing import _hash_file
    from hyperfitting.models.loading import cache_root, embedded_model_path

    declared = embedded_model_path("gemma3-270m", assemble=False)
    assembled = cache_root() / "assembled" / declared.name
    if not assembled.exists():
        pytest.skip("Gemma-3-270M not assembled on this machine yet (the quality stage does it on first use)")
    stat = assembled.stat()
    assert _hash_file(str(assembled), stat.st_size, stat.st_mtime_ns) == content_hash(declared)
