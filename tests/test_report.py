"""The report a researcher reads at a glance: the claims' forest plot, generated text that Markdown leaves alone, no
column or cell for what was not run, progress lines without nan."""

import re
from dataclasses import replace

from hyperfitting.claims import FAILS, HOLDS
from hyperfitting.claims.core import not_run
from hyperfitting.report.baselines import baselines_table
from hyperfitting.report.build import claims_section, render_html
from hyperfitting.report.forest import plot_claims
from hyperfitting.training.hyperfit import _format_row


def _claims():
    decided = replace(
        not_run(1),
        estimate={"value": 0.12, "low": 0.05, "high": 0.19, "decisive": True},
        verdict=HOLDS,
        holm=HOLDS,
        checks=[{"name": "model hyperfitted", "passed": True, "detail": ""}],
        reason="entropy matched at T*, both ways and alike (T* 0.644 and T* 0.765) | a pipe",
    )
    failed = replace(
        not_run(4),
        estimate={"value": -2.9, "low": -4.8, "high": -0.7, "decisive": True},
        verdict=FAILS,
        holm=FAILS,
        reason="the final layer is not the largest",
    )
    return [decided, failed, not_run(5), not_run("1b")]


def test_generated_text_is_not_read_as_markdown(tmp_path):
    md = "\n".join(claims_section(_claims(), []))
    body = render_html(md, tmp_path, [])
    assert "<em>" not in body  # T* ... T* was emphasis
    assert "T* 0.644 and T* 0.765" in body and "| a pipe" in body  # the pipe stays inside its cell
    rows = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert len(re.split(r"(?<!\\)\|", rows[0])) == 11  # 9 cells, none split by the escaped pipe


def test_the_forest_plot_has_a_row_per_claim_including_those_not_run(tmp_path):
    plot_claims(_claims(), tmp_path / "claims.png")
    assert (tmp_path / "claims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_mauve_column_when_mauve_did_not_run():
    baselines = {
        "greedy": {
            "settings": "argmax",
            "seeds": 1,
            "tokens_per_second": 10.0,
            "corpora": {"c": {"per_prompt_ttr": [0.3, 0.4, 0.5], "metrics": {"distinct_3": 0.5, "seq_rep_3": 0.1}}},
        }
    }
    without = baselines_table("c", baselines, {}, None, None)
    assert "MAUVE" not in without and "nan" not in without
    with_mauve = baselines_table("c", baselines, {}, None, {"greedy": 0.71})
    assert "MAUVE" in with_mauve and "0.710" in with_mauve


def test_progress_lines_leave_out_a_held_out_loss_not_measured():
    assert "held-out" not in _format_row({"epoch": 3, "train_loss": 0.5, "heldout_loss": float("nan")})
    assert "held-out loss 0.7000" in _format_row({"epoch": 4, "train_loss": 0.5, "heldout_loss": 0.7})


def test_a_stage_the_config_no_longer_has_reads_as_not_run(tmp_path):
    """The report decides from the stages the study had (metrics.json records them): a controls folder left from a
    study that had controls, or a replicate beyond study.replicates, holds another study's numbers."""
    import json

    from hyperfitting.claims.evidence import Evidence
    from hyperfitting.config import dump_config, load_config
    from hyperfitting.pipeline.graph import study_graph

    def folder_with(*overrides):
        config = load_config("configs/quick.yaml", [f"run_dir={tmp_path}", *overrides])
        (tmp_path / "config.yaml").write_text(dump_config(config))
        (tmp_path / "metrics.json").write_text(json.dumps({"stages": study_graph(config, tmp_path).names}))
        for stage in ("controls", "analysis-ranks-r1"):
            (tmp_path / stage).mkdir(exist_ok=True)
            (tmp_path / stage / "results.json").write_text(json.dumps({"placements": {}}))
            (tmp_path / stage / "stage-done.json").write_text(json.dumps({"fingerprint": "old"}))
        return Evidence.of_run(tmp_path)

    kept = folder_with("study.replicates=2")
    assert kept.controls == {"placements": {}} and len(kept.results("ranks")) == 1
    dropped = folder_with("study.controls=[]", "study.replicates=1")
    assert dropped.controls is None and dropped.results("ranks") == []


def test_results_put_each_studys_verdicts_side_by_side():
    from hyperfitting.report.results import overview_table

    claim = {"number": 1, "name": "Not temperature", "verdict": "holds", "holm": "inconclusive"}
    other = {"number": 5, "name": "Late-Stage LoRA", "verdict": "does not hold", "holm": "does not hold"}
    studies = [
        ("smollm", {"claims": [claim, other], "claims_full_finetune": [dict(claim, holm="holds")]}),
        ("gemma", {"claims": [other]}),
    ]
    lines = overview_table(studies)
    assert lines[0] == "| claim | `smollm` | `smollm, full fine-tune` | `gemma` |"
    # after Holm first, the uncorrected verdict beside it only where it differs; a claim a study lacks is a dash
    assert lines[2] == "| 1. Not temperature | inconclusive (holds uncorrected) | holds | - |"
    assert lines[3] == "| 5. Late-Stage LoRA | does not hold | - | does not hold |"


def test_the_calibration_inputs_follow_every_rule_a_claim_is_decided_by():
    """calibration.json is reused only under the same inputs: a claim registered again with another margin, or a
    plug-in whose simulation has no source file (a partial), moves the hash instead of reusing a stale table."""
    import functools

    from hyperfitting.claims import ClaimSpec, Rule, Truths, get_claim, register_claim, unregister_claim
    from hyperfitting.claims.core import DECLARED_SEED_SPREAD
    from hyperfitting.config import load_config
    from hyperfitting.report.build import calibration_inputs
    from hyperfitting.report.calibration import Design, Spreads

    design, spreads = Design.of(load_config(overrides=[])), Spreads()
    before = calibration_inputs(design, spreads, 10)
    assert calibration_inputs(design, spreads, 10) == before and calibration_inputs(design, spreads, 11) != before
    original = get_claim(1)
    register_claim(replace(original, rule=replace(original.rule, margin=original.rule.margin + 0.01)), replace=True)
    try:
        assert calibration_inputs(design, spreads, 10) != before
    finally:
        register_claim(original, replace=True)
    assert calibration_inputs(design, spreads, 10) == before
    token = DECLARED_SEED_SPREAD.set(False)
    try:
        assert calibration_inputs(design, spreads, 10) != before
    finally:
        DECLARED_SEED_SPREAD.reset(token)

    def world(effect, design, spreads, truth, rng):
        return None, truth

    rule, truths = Rule("a toy", "above", 1.0, "one"), Truths(1.0, 0.0, 3.0, "assumed")
    register_claim(ClaimSpec("toy", "A toy", "-", rule, original.decide, functools.partial(world, 0.0), truths))
    try:
        assert calibration_inputs(design, spreads, 10) != before  # a partial: no source file, no crash
    finally:
        unregister_claim("toy")
