"""Exports load back and decode the same greedy tokens as the run's model."""

import json

import pytest
import torch

from hyperfitting.errors import HyperfitError
from tests.test_cli import _study_args, run_cli


def test_a_merged_export_loads_in_plain_transformers_and_decodes_the_same_tokens(
    monkeypatch, capsys, tiny_model_folder, corpus, tmp_path
):
    run_dir = tmp_path / "run"
    args = [
        a
        for a in _study_args(tiny_model_folder, corpus, run_dir)
        if a.startswith(("model.", "data.", "train.", "run_dir", "generate."))
    ]
    code, _, err = run_cli(monkeypatch, capsys, "train", *args)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "export", str(run_dir), "--merged", str(tmp_path / "merged"))
    assert code == 0, err
    report = json.loads((run_dir / "exports.json").read_text())["merged"]
    assert report["identical_rows"] == report["rows"] >= 1
    assert not list((tmp_path / "merged").glob("adapter_*")) and (tmp_path / "merged" / "README.md").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.num_hidden_layers == 2  # no PEFT needed
    # A second export into the same folder, and a GGUF of a model that never came from one, are refused before any work.
    code, _, err = run_cli(monkeypatch, capsys, "export", str(run_dir), "--merged", str(tmp_path / "merged"))
    assert code == 2 and "is not empty" in err
    code, _, err = run_cli(monkeypatch, capsys, "export", str(run_dir), "--gguf", str(tmp_path / "model.gguf"))
    assert code == 2 and "did not come from one" in err and not (tmp_path / "model.gguf").exists()


@pytest.mark.slow
def test_a_gguf_export_of_the_embedded_model_round_trips_exactly(real_model, real_tokenizer, tmp_path):
    """The embedded SmolLM2 with one block changed (as hyperfitting changes it), written as float32 GGUF and read
    back."""
    from hyperfitting.config import GenerateArgs, ModelArgs
    from hyperfitting.generation.decoding import generate
    from hyperfitting.pipeline.export import export_gguf, greedy_agreement
    from hyperfitting.models.loading import embedded_model_path, load_model

    with torch.no_grad():
        torch.manual_seed(0)
        layer = real_model.model.layers[-1]
        for weight in (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.mlp.down_proj.weight):
            weight.add_(0.02 * torch.randn_like(weight))  # the q and k rows are permuted on the way out and back
    path = export_gguf(real_model, embedded_model_path("smollm2-135m"), tmp_path / "hyperfitted.gguf")
    back, tokenizer = load_model(ModelArgs(name=str(path)))
    original, loaded = real_model.state_dict(), back.state_dict()
    assert max(float((original[k] - loaded[k]).abs().max()) for k in original) == 0.0
    prompts = [real_tokenizer("The old house stood at the end of the lane, and")["input_ids"]]
    args = GenerateArgs(max_new_tokens=16, batch_size=1)
    ours = [c.token_ids for c in generate(real_model, real_tokenizer, prompts, args, show_progress=False)]
    theirs = [c.token_ids for c in generate(back, tokenizer, prompts, args, show_progress=False)]
    assert greedy_agreement(theirs, ours)["identical_rows"] == 1
    with pytest.raises(HyperfitError, match="exists"):
        export_gguf(real_model, embedded_model_path("smollm2-135m"), path)
