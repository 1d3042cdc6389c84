"""Analyses as plug-ins: one file registers an analysis, and the plan, the study, the report and metrics.json see it."""

import json
import re
import sys
import textwrap

import pytest

from hyperfitting.config import RunConfig, load_config
from hyperfitting.errors import ConfigError
from hyperfitting.registry import BUILT_IN_NAMES, Analysis, analysis_names, get_analysis, register, unregister

# The whole plug-in: nothing else in the package or the tests names it.
TOY_PROBE = textwrap.dedent('''
    """A toy analysis: how long the hyperfitted model's greedy continuations are, and how many distinct tokens they
    use."""
    from hyperfitting.registry import Analysis, register


    def run(context):
        paths = [list(c.token_ids) for c in context.tuned_greedy]
        distinct = len({t for p in paths for t in p})
        return {"prompts": len(context.prompts), "tokens": sum(map(len, paths)), "distinct": distinct}


    def write(results, folder):
        (folder / "table.md").write_text(f"| prompts | tokens | distinct |\\n|---|---|---|\\n"
                                         f"| {results['prompts']} | {results['tokens']} | {results['distinct']} |\\n")


    toy = Analysis("toy-probe", "Toy probe: distinct tokens of the greedy paths", run=run, write=write, weight=1.0)
    register(toy, replace=True)
''')


@pytest.fixture()
def toy_module(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "toy_probe.py").write_text(TOY_PROBE)
    monkeypatch.syspath_prepend(str(folder))
    yield "toy_probe"
    unregister("toy-probe")
    sys.modules.pop("toy_probe", None)


def test_built_in_analyses_are_registered_in_study_order():
    assert analysis_names()[: len(BUILT_IN_NAMES)] == ("temperature", "static-bias", "ranks", "geometry", "block-swap")
    assert get_analysis("ranks").lowest_heldout and get_analysis("geometry").lowest_heldout
    assert not get_analysis("temperature").lowest_heldout
    assert RunConfig().study.analyses == list(BUILT_IN_NAMES)


def test_unknown_analysis_and_unknown_plugin_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match=r"'my-probe' is not an analysis.*temperature"):
        load_config(None, ["study.analyses=[my-probe]"])
    with pytest.raises(ConfigError, match=r"study.plugins names 'no_such_module_here'.*cannot be imported"):
        load_config(None, ["study.plugins=[no_such_module_here]"])


def test_register_refuses_a_taken_name_a_folder_unsafe_name_and_removing_a_built_in():
    with pytest.raises(ConfigError, match="already registered"):
        register(Analysis("ranks", "another", run=lambda context: {}))
    with pytest.raises(ConfigError, match="names a folder"):
        register(Analysis("my probe/2", "bad", run=lambda context: {}))
    with pytest.raises(ConfigError, match="built in"):
        unregister("geometry")


def test_a_plugin_named_in_the_config_is_accepted_and_in_the_plan(toy_module, tmp_path):
    from hyperfitting.pipeline.graph import stage_weight, study_graph

    config = load_config(
        None, [f"study.plugins=[{toy_module}]", "study.analyses=[ranks,toy-probe]", f"run_dir={tmp_path / 'run'}"]
    )
    graph = study_graph(config, tmp_path / "run")
    assert "analysis-toy-probe" in graph.names and "analysis-ranks" in graph.names
    assert "analysis-temperature" not in graph.names
    # its own cost, from its entry
    assert stage_weight("analysis-toy-probe") == 1.0 and stage_weight("analysis-toy-probe", config) > 0
    assert re.search(r"^analysis-toy-probe +run +the toy-probe analysis: not run yet$", graph.explain(), re.M)


@pytest.mark.e2e
def test_a_plugin_runs_in_the_study_and_reaches_the_report_and_metrics(
    toy_module, monkeypatch, capsys, tiny_model_folder, corpus, tmp_path
):
    from test_cli import run_cli

    run_dir = tmp_path / "run"
    args = [
        f"model.name={tiny_model_folder}",
        f"data.corpus={corpus}",
        f"data.eval_corpora=[{corpus}]",
        "data.train_blocks=4",
        "data.block_tokens=32",
        "data.heldout_blocks=2",
        "data.eval_prompts=3",
        "data.prompt_tokens=8",
        "data.reference_tokens=12",
        "train.epochs=2",
        "train.batch_size=2",
        "train.lr=1e-2",
        "train.blocks=last:1",
        "train.diversity_prompts=2",
        "train.diversity_tokens=8",
        "generate.max_new_tokens=12",
        "analysis.max_new_tokens=6",
        f"run_dir={run_dir}",
        f"study.plugins=[{toy_module}]",
        "study.analyses=[toy-probe]",
        "study.controls=[]",
        "study.judge=null",
        "study.mauve=false",
        "study.retention=false",
        "baselines.methods=[]",
        "model.precision=fp32",
    ]
    code, out, err = run_cli(monkeypatch, capsys, "study", "--dry-run", *args)
    assert code == 0, err
    assert "analysis-toy-probe" in out and "the toy-probe analysis" in out
    code, out, err = run_cli(monkeypatch, capsys, "study", *args)
    assert code == 0, err
    results = json.loads((run_dir / "analysis-toy-probe" / "results.json").read_text())
    assert results["prompts"] == 3 and 0 < results["distinct"] <= results["tokens"] <= 3 * 6
    report = (run_dir / "report.md").read_text()
    assert (
        "## Toy probe: distinct tokens of the greedy paths" in report
        and f"| 3 | {results['tokens']} | {results['distinct']} |" in report
    )
    assert json.loads((run_dir / "metrics.json").read_text())["analyses"]["toy-probe"] == results
    assert (run_dir / "analysis-toy-probe" / "stage-done.json").exists()
    # Resumed, the finished plug-in stage is reused, not run again.
    code, out, err = run_cli(monkeypatch, capsys, "study", "--resume", *args)
    assert code == 0, err
    assert "analysis-toy-probe:" not in out


def test_names_that_would_share_a_replicates_folder_are_refused_and_a_plugins_source_is_an_input(toy_module, tmp_path):
    from hyperfitting.pipeline.graph import study_graph

    for name in ("probe-r1", "probe-full", "probe-lowest-heldout"):
        with pytest.raises(ConfigError, match="ends like a replicate's"):
            register(Analysis(name, "clash", run=lambda context: {}))
    with pytest.raises(ConfigError, match="names an analysis twice"):
        load_config(None, ["study.analyses=[ranks,ranks]"])
    config = load_config(
        None, [f"study.plugins=[{toy_module}]", "study.analyses=[toy-probe]", f"run_dir={tmp_path / 'run'}"]
    )
    inputs = study_graph(config, tmp_path / "run").inputs("analysis-toy-probe")
    # editing the plug-in reruns its stage
    assert any(key.startswith("file ") and key.endswith("toy_probe.py") for key in inputs)
