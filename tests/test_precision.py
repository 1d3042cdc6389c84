"""The precision policy: auto decides from a measurement, training and decoding follow it, measurements stay float32."""

import torch

from hyperfitting.analysis.teacher_forcing import teacher_forced_logits
from hyperfitting.config import GenerateArgs, load_config
from hyperfitting.generation.decoding import generate
from hyperfitting.pipeline.graph import study_graph
from hyperfitting.precision import compute_precision, resolve_precision, training_precision
from tests.conftest import make_tiny_model
from tests.test_baselines import Tokenizer

CPU = torch.device("cpu")


def _rates(fp32: float, bf16: float):
    return lambda dtype, device: bf16 if dtype == torch.bfloat16 else fp32


def test_auto_takes_bf16_only_where_it_is_measured_much_faster():
    fast = resolve_precision("auto", CPU, measure=_rates(140.0, 406.0))
    assert (fast.training, fast.decoding) == ("bf16", "fp32")  # on a CPU decoding stays float32 (per-step weight casts)
    assert fast.bf16_gflops == 406.0 and "2.90x" in fast.reason and fast.label == "training bf16, decoding fp32"
    gpu = resolve_precision("auto", torch.device("cuda"), measure=_rates(60_000.0, 700_000.0))
    assert (gpu.training, gpu.decoding) == ("bf16", "bf16") and gpu.label == "bf16 autocast"
    # has bf16 but gains too little; bf16 slower (an older CPU)
    for slow in (
        _rates(140.0, 150.0),
        _rates(140.0, 90.0),
    ):
        choice = resolve_precision("auto", CPU, measure=slow)
        assert (choice.training, choice.decoding, choice.label) == ("fp32", "fp32", "fp32")

    def never(*_):
        raise AssertionError("an explicit setting must not measure")

    assert resolve_precision("fp32", CPU, measure=never).label == "fp32"
    assert resolve_precision("bf16", CPU, measure=never).label == "bf16 autocast"


def test_bf16_named_where_it_is_emulated_is_refused_before_anything_is_written(monkeypatch, capsys, tmp_path):
    """On a CPU without native bf16 products (this project's AVX2 machines: 1.3 against 183 GFLOP/s) a bf16 setting
    by name stops the command with what to set instead, and no run folder appears; `auto` measures and trains in
    float32 there, in bf16 where bf16 is fast, and the training stages' fingerprints follow what it chose."""
    import pytest

    from hyperfitting import precision
    from hyperfitting.errors import ConfigError
    from hyperfitting.precision import refuse_emulated_bf16
    from tests.test_cli import run_cli

    monkeypatch.setitem(precision._MEASURED, "cpu", (183.0, 1.3))
    for named in ("train.mixed_precision=bf16", "model.precision=bf16"):
        with pytest.raises(ConfigError, match=rf"{named}: bf16 matrix products run at 1.3 GFLOP/s against 183"):
            refuse_emulated_bf16(load_config(overrides=[named]), CPU)
    auto = load_config(overrides=["train.mixed_precision=auto"])
    refuse_emulated_bf16(auto, CPU)  # auto is never refused: it chooses
    assert training_precision(auto) == "no"
    said = []
    precision.precision_for(auto, say=said.append)  # the run's log says what auto chose, and why
    assert "; training steps: float32 (train.mixed_precision=auto: bf16 products 0.0071x float32's here)" in said[0]
    precision.precision_for(load_config(), say=said.append)
    assert "training steps" not in said[1]  # set by name: the line has nothing to add
    run_dir = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "study", f"run_dir={run_dir}", "train.mixed_precision=bf16")
    assert code != 0 and "no native bf16 products" in err and "train.mixed_precision=auto" in err, err
    assert not run_dir.exists()
    emulated = study_graph(auto, tmp_path / "a")
    emulated = emulated.inputs("train")["training precision"], emulated.fingerprint("train")  # (computed lazily)

    monkeypatch.setitem(precision._MEASURED, "cpu", (140.0, 406.0))  # a CPU with native bf16 products
    refuse_emulated_bf16(load_config(overrides=["train.mixed_precision=bf16"]), CPU)
    assert training_precision(auto) == "bf16"
    precision.precision_for(auto, say=said.append)
    assert "training steps: bf16 autocast (train.mixed_precision=auto: bf16 products 2.9x float32's here)" in said[2]
    native = study_graph(auto, tmp_path / "a")
    assert emulated[0] == "no" and native.inputs("train")["training precision"] == "bf16"
    assert emulated[1] != native.fingerprint("train")
    assert "training precision" not in study_graph(load_config(), tmp_path / "b").inputs("train")  # only for auto


def test_training_follows_model_precision_unless_overridden():
    assert training_precision(load_config(overrides=["model.precision=bf16"])) == "bf16"
    assert training_precision(load_config(overrides=["model.precision=fp32"])) == "no"
    assert training_precision(load_config(overrides=["model.precision=bf16", "train.mixed_precision=no"])) == "no"
    assert training_precision(load_config(overrides=["model.precision=fp32", "train.mixed_precision=bf16"])) == "bf16"


def test_decoding_runs_in_bf16_but_teacher_forcing_measures_in_float32():
    model = make_tiny_model("llama")
    ids = torch.randint(1, 90, (2, 12))
    exact = [logits for _, logits in teacher_forced_logits(model, ids.tolist(), [4, 4])]
    with compute_precision("bf16", CPU):
        plain = model(input_ids=ids).logits  # an ordinary forward inside the policy: bf16 products
        measured = [logits for _, logits in teacher_forced_logits(model, ids.tolist(), [4, 4])]
        decoded = generate(
            model, Tokenizer(), ids[:, :4].tolist(), GenerateArgs(max_new_tokens=6, batch_size=2), show_progress=False
        )
    assert plain.dtype == torch.bfloat16  # the policy is in force, so the next line can fail
    for a, b in zip(exact, measured):
        assert torch.equal(a, b)
    assert all(len(c.token_ids) == 6 for c in decoded)


def test_stages_rerun_when_the_resolved_precision_changes(tmp_path):
    fp32 = study_graph(load_config(overrides=["model.precision=fp32"]), tmp_path)
    bf16 = study_graph(load_config(overrides=["model.precision=bf16"]), tmp_path)
    assert fp32.fingerprint("data") == bf16.fingerprint("data")  # reading text does not depend on it
    for name in ("base", "train", "hyperfitted"):
        assert fp32.fingerprint(name) != bf16.fingerprint(name)
        assert fp32.inputs(name)["precision"] == "fp32" and bf16.inputs(name)["precision"] == "bf16 autocast"
    # "auto" is not itself an input: where it resolves to fp32 the stages are the fp32 ones.
    assert load_config(overrides=["model.precision=auto"]).fingerprint("model") == load_config(
        overrides=["model.precision=fp32"]
    ).fingerprint("model")


def test_training_inside_the_policy_moves_the_weights(tmp_path):
    # A study holds one bf16 autocast region around every stage. With autocast's cast cache on, every forward of the
    # training loop reused the bf16 copies of the initial weights and the loss never moved (found in a quick study).
    from hyperfitting.training.hyperfit import hyperfit

    train = torch.randint(2, 8, (6, 16), generator=torch.Generator().manual_seed(2))
    heldout = torch.randint(2, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    for method, blocks in (("lora", "last:2"), ("full", "all")):
        config = load_config(
            overrides=[
                "model.precision=bf16",
                f"train.method={method}",
                f"train.blocks={blocks}",
                "train.epochs=3",
                "train.batch_size=2",
                "train.lr=1e-2",
                "train.diversity_every=0",
                "train.until_loss=null",
            ]
        )
        with compute_precision("bf16", CPU):
            result = hyperfit(make_tiny_model("llama"), train, heldout, config, tmp_path / method)
        losses = [row["train_loss"] for row in result.log]
        assert result.precision == "bf16"
        assert losses[-1] < 0.8 * losses[0], (method, losses)


def test_tf32_is_set_inside_the_commands_context_recorded_and_given_back():
    import torch

    from hyperfitting.config import load_config
    from hyperfitting.precision import precision_for

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    for wanted in (True, False):
        choice, context = precision_for(load_config(None, [f"model.tf32={str(wanted).lower()}"]), say=lambda line: None)
        with context:
            assert torch.backends.cuda.matmul.allow_tf32 is wanted and torch.backends.cudnn.allow_tf32 is wanted
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        assert choice.as_dict()["tf32"] is wanted and ("TF32" in choice.label) is wanted
    # Off (the default) leaves the label, and so every stage's fingerprint, as it was before the key existed.
    assert precision_for(load_config(None, []), say=lambda line: None)[0].label == "fp32"


def test_bf16_decoding_uses_one_bf16_copy_of_the_weights_per_version():
    import torch

    from hyperfitting.precision import bf16_copy, decoding_model
    from tests.conftest import make_tiny_model

    model = make_tiny_model("gpt2")  # tied input and output embeddings
    twin = bf16_copy(model)
    assert {p.dtype for p in twin.parameters()} == {torch.bfloat16} and {p.dtype for p in model.parameters()} == {
        torch.float32
    }
    assert twin.transformer.wte.weight is twin.lm_head.weight  # tied weights stay tied
    assert bf16_copy(model) is twin  # made once for these weights
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # trained in place: the next decode needs a new copy
    fresh = bf16_copy(model)
    assert fresh is not twin and torch.equal(fresh.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))
    # On a CPU (and outside a bf16 autocast anywhere) decoding runs the model itself: nothing changes there.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoding_model(model) is model
