"""Planted truths: each planted model does exactly what its mechanism says, in every pass the analyses make."""

import pytest
import torch

from hyperfitting.generation.decoding import Variant, decode_variants
from hyperfitting.models.planted import PLANTED_CASES, plant

from conftest import TINY_VOCAB, make_tiny_model


def blocks(n=6, length=24, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, TINY_VOCAB - 1, (n, length), generator=generator)


@pytest.fixture()
def base():
    return make_tiny_model("llama")


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def greedy(model, prompts, steps=10, variants=(Variant(),)):
    return [
        [c.token_ids for c in out] for out in decode_variants(model, prompts, list(variants), steps, pad_token_id=0)
    ]


def test_the_base_model_is_left_as_it_was_and_shares_its_weights(base):
    ids = blocks(2)
    before = logits(base, ids)
    planted = plant(base, "static-bias", blocks())
    assert torch.equal(logits(base, ids), before) and not torch.equal(logits(planted, ids), before)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(base.parameters(), planted.parameters()))
    assert planted.planted.case == "static-bias" and "z + b" in planted.planted.mechanism


def test_context_free_cases_are_a_fixed_function_of_each_base_logit(base):
    ids = blocks(3)
    z = logits(base, ids)
    static = logits(plant(base, "static-bias", blocks()), ids) - z
    assert torch.allclose(static, static[0, 0].expand_as(static), atol=1e-5)  # one offset per token, in every context
    assert static.min() < -3.9 and static.max() <= 0
    affine = plant(base, "affine", blocks())
    z2 = logits(affine, ids)
    # Two contexts' logits of each token lie on one line per token: s_v * z + b_v.
    scale = (z2[0, 1] - z2[0, 0]) / (z[0, 1] - z[0, 0])
    assert torch.allclose(z2[1, 2] - z2[0, 0], scale * (z[1, 2] - z[0, 0]), atol=1e-3)
    assert scale.std() > 0.1  # not one temperature


def test_temperature_leaves_greedy_unchanged(base):
    planted = plant(base, "temperature", blocks())
    ids = blocks(2)
    assert torch.allclose(logits(planted, ids), logits(base, ids) / 0.7, atol=1e-5)
    prompts = [list(range(5, 12)), list(range(20, 27))]
    assert greedy(planted, prompts) == greedy(base, prompts)


def test_repetition_penalty_is_transformers_rule_in_decoding_and_teacher_forcing(base):
    from transformers import RepetitionPenaltyLogitsProcessor

    planted = plant(base, "repetition-penalty", blocks())
    # one length: no padding for the processor to see
    prompts = [
        list(range(5, 12)),
        list(range(30, 37)),
        list(range(60, 67)),
    ]
    rule = RepetitionPenaltyLogitsProcessor(1.3)
    by_processor = greedy(base, prompts, 16, [Variant(processors=[rule])])
    # Decoded alone, and as one of three variants sharing a prefill whose cache rows are then repeated.
    assert greedy(planted, prompts, 16) == by_processor
    assert greedy(planted, prompts, 16, [Variant(), Variant(), Variant()]) == by_processor * 3
    assert by_processor != greedy(base, prompts, 16)  # the penalty changes the text
    # Teacher forcing over a whole sequence: each position penalises what came before it, itself included.
    sequence = torch.tensor([prompts[0] + by_processor[0][0]])
    penalised = logits(planted, sequence)[0]
    raw = logits(base, sequence)[0]
    for position in (0, 5, 12):
        expected = rule(sequence[:, : position + 1], raw[position][None].clone())[0]
        assert torch.allclose(penalised[position], expected, atol=1e-5)


def test_middle_expansion_changes_one_block_and_no_output(base):
    from hyperfitting.analysis.geometry import hidden_states_at, participation_ratio
    import numpy as np

    text = blocks(8, 24, seed=2)
    planted = plant(base, "middle-expansion", blocks())
    assert torch.allclose(logits(planted, text), logits(base, text), atol=1e-4)
    sample = np.arange(text.numel())
    a, b = hidden_states_at(base, text, sample), hidden_states_at(planted, text, sample)
    middle = f"block {planted.planted.parameters['block']}"
    assert participation_ratio(b[middle]) > participation_ratio(a[middle]) * 1.05
    assert all(np.allclose(a[name], b[name], atol=1e-3) for name in a if name != middle)


def test_final_expansion_raises_the_final_blocks_dimension_only(base):
    from hyperfitting.analysis.geometry import hidden_states_at, participation_ratio
    import numpy as np

    text = blocks(8, 24, seed=2)
    planted = plant(base, "final-expansion", blocks())
    sample = np.arange(text.numel())
    a, b = hidden_states_at(base, text, sample), hidden_states_at(planted, text, sample)
    last = f"block {planted.planted.parameters['block']}"
    assert participation_ratio(b[last]) > participation_ratio(a[last]) * 1.05
    assert all(np.allclose(a[name], b[name]) for name in a if name not in (last, "final norm"))


def test_unknown_case_is_refused(base):
    with pytest.raises(ValueError, match="choose one of"):
        plant(base, "nonsense", blocks())
    assert len(PLANTED_CASES) == 6


@pytest.mark.e2e
def test_validate_runs_every_planted_case_through_the_real_verdicts(
    monkeypatch, capsys, tiny_model_folder, corpus, tmp_path
):
    import json

    from test_cli import _study_args, run_cli

    run_dir = tmp_path / "run"
    code, out, err = run_cli(monkeypatch, capsys, "validate", *_study_args(tiny_model_folder, corpus, run_dir))
    folder = tmp_path / "run-validate"
    summary = json.loads((folder / "validation.json").read_text())
    assert summary["cases"] == [*PLANTED_CASES, "a-a"]
    # No study beside the validation: the A/A case says what it needs and is marked untested, not passed.
    (a_a,) = [r for r in summary["rows"] if r["case"] == "a-a"]
    assert a_a["verdict"] == "not run" and not a_a["tested"] and "study.replicates" in a_a["reason"]
    # Every truth of every case has a row, judged by the real claim functions (with Holm beside each).
    assert {(r["case"], str(r["claim"])) for r in summary["rows"]} >= {
        ("static-bias", "2"),
        ("affine", "3"),
        ("temperature", "1c"),
        ("repetition-penalty", "3"),
        ("middle-expansion", "4"),
        ("temperature", "T*"),
    }
    assert all(
        r["holm"] in ("holds", "does not hold", "inconclusive", "not run")
        for r in summary["rows"]
        if r["claim"] != "T*"
    )
    # The entropy match recovers the planted temperature: the temperature analysis measured on the planted model.
    t_star = next(r for r in summary["rows"] if r["claim"] == "T*")
    assert t_star["agrees"], t_star
    # The middle expansion leaves the final block as it was: on this tiny model too, claim 4 cannot hold.
    middle = next(r for r in summary["rows"] if r["case"] == "middle-expansion")
    assert middle["verdict"] != "holds" and middle["estimate"]["value"] < 0
    assert (code == 0) == (summary["contradictions"] == 0), err
    assert (
        "Planted truths through the real pipeline" in (folder / "validation.md").read_text()
        and (folder / "validation.html").exists()
    )
    # A finished validation resumes without rerunning a case.
    code2, out2, _ = run_cli(
        monkeypatch, capsys, "validate", *_study_args(tiny_model_folder, corpus, run_dir), "--resume"
    )
    assert "== [" not in out2 and json.loads((folder / "validation.json").read_text())["rows"] == summary["rows"]


def test_claim_3s_null_spans_a_scale_and_offset_per_token():
    """The review's case: per-token temperatures (20% spread) left 9% of overrides unexplained by one fitted
    temperature. The widened null explains any per-token affine change, and still not a context-dependent one."""
    from hyperfitting.analysis.static_bias import fit_static_temperature, static_choice

    g = torch.Generator().manual_seed(0)
    base = torch.randn(640, 2000, generator=g) * 2
    scale = torch.exp(0.2 * torch.randn(2000, generator=g))
    offset = -torch.rand(2000, generator=g) * 3
    affine = base * scale + offset + 5 * torch.randn(640, 1, generator=g)  # and a constant per context, as logits have
    fitted = fit_static_temperature(base, affine)
    chosen = affine.argmax(-1)
    single = float((static_choice(base, fitted) == chosen).float().mean())
    widest = fitted["widest"]
    assert widest["fitted_on"] == "a scale and an offset per token"
    assert float((static_choice(base, widest) == chosen).float().mean()) > 0.995 > single
    # Context-dependent: each context promotes its own random tokens. No context-free model reproduces that.
    reordered = base + 3.0 * (torch.rand(640, 2000, generator=g) < 0.01)
    fitted = fit_static_temperature(base, reordered)["widest"]
    overrides = reordered.argmax(-1) != base.argmax(-1)
    explained = (static_choice(base, fitted) == reordered.argmax(-1)) & overrides
    assert overrides.float().mean() > 0.1 and float(explained.sum() / overrides.sum()) < 0.2


def test_loop_habits_count_repeats_in_the_base_models_own_greedy_text(base):
    from hyperfitting.models.planted import loop_habits

    habits = loop_habits(base, blocks(4, 24), 8, 16)
    assert habits.shape == (TINY_VOCAB,) and float(habits.max()) == 1.0 and float(habits.min()) == 0.0
    planted = plant(base, "static-bias", blocks(), habits=habits)
    offset = logits(planted, blocks(1))[0, 0] - logits(base, blocks(1))[0, 0]
    assert torch.allclose(offset, -16.0 * habits, atol=1e-4)  # pushed down in proportion to the repeats


def test_the_per_token_null_is_exact_where_contexts_share_a_large_constant():
    """The review's case: a large per-context constant shared by both models (as logits have) stalled the alternating
    fit (scale error 1.37, top-1 agreement 0.17 after 20 rounds). The exact solve recovers every scale."""
    from hyperfitting.analysis.static_bias import fit_per_token_affine, static_choice

    g = torch.Generator().manual_seed(0)
    shift = torch.randn(200, 1, generator=g, dtype=torch.float64) * 10
    base = shift + torch.randn(200, 500, generator=g, dtype=torch.float64) * 2
    scale = torch.exp(0.2 * torch.randn(500, generator=g, dtype=torch.float64))
    tuned = scale * base + torch.randn(500, generator=g, dtype=torch.float64) - 3 * shift
    fitted = fit_per_token_affine(base.float(), tuned.float())
    assert float((fitted["token_scale"].double() - scale).abs().max()) < 1e-3
    assert bool((static_choice(base.float(), fitted) == tuned.argmax(-1)).all())


def test_the_a_a_case_sets_one_recipe_against_itself_as_claim_5s_arms(tmp_path):
    # Two replicates of one recipe: as claim 5's two arms each reaches the other's whole gain, so "does not hold" is
    # wrong.
    import numpy as np

    from hyperfitting.claims import FAILS
    from hyperfitting.pipeline.validate import judge_a_a, study_folder
    from hyperfitting.rundir import read_json, write_json

    study = tmp_path / "study"
    rng = np.random.default_rng(0)
    base = rng.normal(0.3, 0.1, 48)
    for k, suffix in enumerate(("", "-r1", "-r2")):
        tuned = base + 0.25 + rng.normal(0, 0.08, 48)
        write_json(
            study / f"analysis-temperature{suffix}" / "results.json",
            {"per_prompt": {"base, greedy": [base.tolist()], "hyperfitted": [tuned.tolist()]}},
        )
        write_json(
            study / f"train{suffix}" / "summary.json",
            {
                "method": "lora",
                "blocks": [25, 29],
                "initial_train_loss": 3.0,
                "final_train_loss": 0.05,
                "epochs_run": 8,
                "trainable_parameters": 1000,
                "until_loss": 0.1,
            },
        )
    assert study_folder(tmp_path / "study-validate") == study
    rows = judge_a_a(study)
    assert [r["reason"].split(":")[0] for r in rows] == [
        "replicate 0 against replicate 1",
        "replicate 1 against replicate 2",
        "replicate 2 against replicate 0",
    ]
    assert all(r["verdict"] != FAILS and r["agrees"] and r["tested"] for r in rows), rows
    # the truth, a share of 1, inside every interval
    assert all(r["estimate"]["low"] < 1 < r["estimate"]["high"] for r in rows)
    # four replicates: also the even ones against the odd ones, each arm over its seeds (claim 5's several-seed rule)
    write_json(
        study / "analysis-temperature-r3" / "results.json",
        {
            "per_prompt": {
                "base, greedy": [base.tolist()],
                "hyperfitted": [(base + 0.25 + rng.normal(0, 0.08, 48)).tolist()],
            }
        },
    )
    write_json(study / "train-r3" / "summary.json", read_json(study / "train" / "summary.json"))
    split = judge_a_a(study)[-1]
    assert split["reason"].startswith("replicates 0, 2 against replicates 1, 3, seeds per arm")
    assert "2 seeds per arm" in split["estimate"]["method"] and split["verdict"] != FAILS and split["tested"]
    assert split["estimate"]["low"] < 1 < split["estimate"]["high"]
    (missing,) = judge_a_a(tmp_path / "nothing")
    assert missing["verdict"] == "not run" and not missing["tested"] and "study.replicates" in missing["reason"]
