"""The stage graph: a change to an input reruns exactly the stages that read it, and the plan says why."""

import json

import pytest

from hyperfitting.config import load_config
from hyperfitting.errors import ConfigError
from hyperfitting.pipeline import graph as graph_module
from hyperfitting.pipeline.graph import StageGraph, StageSpec, study_graph
from tests.test_cli import _study_args, run_cli


def _finish(graph, name):
    stage = graph.stage(name)
    stage.start()
    stage.finish(0.0)


def _actions(graph):
    return {name: action for name, action, _ in graph.plan()}


def test_plan_follows_sections_files_versions_and_parents(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one two three")

    def build(config):
        return StageGraph(
            tmp_path / "run",
            [
                StageSpec("data", "read", config, sections=("data",), files=(corpus,)),
                StageSpec("train", "train", config, sections=("train",), parents=("data",)),
                StageSpec("decode", "decode", config, sections=("generate",), parents=("data", "train")),
            ],
        )

    config = load_config()
    graph = build(config)
    assert _actions(graph) == {"data": "run", "train": "run", "decode": "run"}
    for name in graph.names:
        _finish(graph, name)
    assert set(_actions(build(config)).values()) == {"reuse"}

    # A setting of one section: that stage and the ones below it, nothing above.
    changed = build(load_config(overrides=["train.lr=0.5"]))
    assert _actions(changed) == {"data": "reuse", "train": "rerun", "decode": "rerun"}
    why = dict((name, reason) for name, _, reason in changed.plan())
    assert why["train"] == "config train changed" and why["decode"] == "stage train changed"
    assert _actions(build(load_config(overrides=["generate.max_new_tokens=7"]))) == {
        "data": "reuse",
        "train": "reuse",
        "decode": "rerun",
    }

    # A file's content (not its name or time): everything downstream of the stage that reads it.
    corpus.write_text("one two four")
    edited = build(config)
    assert _actions(edited) == {"data": "rerun", "train": "rerun", "decode": "rerun"}
    assert f"file {corpus} changed" in dict((n, r) for n, _, r in edited.plan())["data"]
    corpus.write_text("one two three")
    assert set(_actions(build(config)).values()) == {"reuse"}

    # A library upgrade reruns everything, and the plan names the versions.
    versions = graph_module.library_versions()
    monkeypatch.setattr(graph_module, "library_versions", lambda: {**versions, "torch": "99.0"})
    upgraded = build(config)
    assert set(_actions(upgraded).values()) == {"rerun"}
    assert f"torch {versions['torch']} -> 99.0" in upgraded.plan()[0][2]


def test_a_library_that_some_stages_use_reruns_only_those(tmp_path, monkeypatch):
    # lm-eval computes only the retention numbers, scikit-dimension only the geometry's TwoNN, MAUVE's libraries only
    # the quality stage's (when it computes MAUVE): upgrading one reruns those stages and no other.
    overrides = ["study.analyses=[geometry,ranks]", "study.replicates=2", "study.retention=true", "study.mauve=true"]
    config = load_config(overrides=overrides)
    installed = graph_module.distribution_version
    assert study_graph(config, tmp_path).inputs("retention")["version lm-eval"] == installed("lm-eval")

    def fingerprints(config):
        graph = study_graph(config, tmp_path)
        return {name: graph.fingerprint(name) for name in graph.names}

    def rerun_by(library, config=config):
        before = fingerprints(config)
        monkeypatch.setattr(
            graph_module, "distribution_version", lambda name: "99.0" if name == library else installed(name)
        )
        after = fingerprints(config)
        monkeypatch.setattr(graph_module, "distribution_version", installed)
        return {name for name in before if after[name] != before[name]}

    assert rerun_by("lm-eval") == {"retention"}
    assert rerun_by("scikit-dimension") == {
        "analysis-geometry",
        "analysis-geometry-r1",
        "analysis-geometry-lowest-heldout",
    }
    assert rerun_by("mauve-text") == rerun_by("faiss-cpu") == {"quality"}
    assert rerun_by("mauve-text", load_config(overrides=[*overrides, "study.mauve=false"])) == set()


def test_stage_done_records_its_inputs(tmp_path):
    config = load_config()
    graph = StageGraph(tmp_path, [StageSpec("data", "read", config, sections=("data",))])
    _finish(graph, "data")
    recorded = json.loads((tmp_path / "data" / "stage-done.json").read_text())
    assert recorded["inputs"] == graph.inputs("data") and recorded["fingerprint"] == graph.fingerprint("data")
    assert "version transformers" in recorded["inputs"] and "config data" in recorded["inputs"]


def test_a_stage_records_where_its_time_went(tmp_path):
    import time

    from hyperfitting.progress import progress_bar

    config = load_config()
    graph = StageGraph(tmp_path, [StageSpec("data", "read", config, sections=("data",))])
    for _ in progress_bar(range(2), desc="before the stage", disable=True):
        time.sleep(0.01)

    def work(folder):
        for epoch in (1, 2):  # a bar per epoch: one step
            for _ in progress_bar(range(2), desc=f"epoch {epoch}/2", disable=True):
                time.sleep(0.02)
        bar = progress_bar(total=1, desc="decode", disable=True)
        time.sleep(0.05)
        bar.close()
        return "done"

    assert graph.run("data", work, load=lambda folder: "loaded") == "done"
    done = json.loads((tmp_path / "data" / "stage-done.json").read_text())
    steps = done["step_seconds"]
    assert list(steps) == ["epoch", "decode"]  # the bar that ran before the stage is not its time
    assert steps["epoch"] >= 0.08 and steps["decode"] >= 0.05
    assert sum(steps.values()) <= done["wall_seconds"] + 0.02  # each rounded to 0.01 s


def test_study_graph_names_every_stage_in_order(tmp_path):
    config = load_config(
        overrides=[
            "study.replicates=2",
            "study.full_finetune=true",
            "study.analyses=[ranks]",
            "study.controls=[lora:last:5]",
        ]
    )
    graph = study_graph(config, tmp_path)
    assert graph.names == [
        "data",
        "base",
        "train",
        "hyperfitted",
        "hyperfitted-blocked",
        "baselines",
        "analysis-ranks",
        "analysis-ranks-lowest-heldout",
        "train-r1",
        "analysis-ranks-r1",
        "train-full",
        "analysis-ranks-full",
        "train-full-r1",
        "analysis-ranks-full-r1",
        "controls",
        "quality",
        "retention",
    ]
    assert graph["train-r1"].config.train.seed == config.train.seed + 1
    assert graph["train-full"].config.train.method == "full"
    # the full fine-tune is trained once per seed, as the main run is: claims 1-4 on it speak of the recipe
    full_r1 = graph["train-full-r1"].config.train
    assert (full_r1.method, full_r1.seed) == ("full", config.train.seed + 1)
    assert graph["analysis-ranks-full-r1"].parents == ("data", "train-full-r1")
    assert graph["analysis-ranks-r1"].parents == ("data", "train-r1")
    # The data stage reads the embedded corpora's files, by content.
    assert any("summaries_en-us.json" in str(path) for path in graph["data"].files)


def test_the_judge_places_the_temperature_analyses_paths_so_it_follows_them(tmp_path):
    overrides = ["study.full_finetune=true", "study.analyses=[temperature]", "study.controls=[]"]
    graph = study_graph(load_config(overrides=overrides), tmp_path)
    assert graph["quality"].parents == (
        "data",
        "base",
        "hyperfitted",
        "hyperfitted-blocked",
        "baselines",
        "analysis-temperature",
        "analysis-temperature-full",
    )
    assert graph["baselines"].parents == ("data", "base")  # its greedy row is the base stage's decoding
    unjudged = study_graph(load_config(overrides=[*overrides, "study.judge=null"]), tmp_path)
    assert "analysis-temperature" not in unjudged["quality"].parents


def test_claim_5_on_the_study_data_reads_the_runs_it_reuses(tmp_path):
    overrides = ["study.full_finetune=true", "study.analyses=[]", "study.controls=[lora:last:5,lora:all,full]"]
    subset = study_graph(load_config(overrides=overrides), tmp_path)
    assert subset["controls"].parents == ("data",)  # every placement trained afresh on the first blocks
    own = study_graph(load_config(overrides=[*overrides, "study.controls_on_study_data=true"]), tmp_path)
    assert own["controls"].parents == ("data", "train", "train-full")
    assert own.fingerprint("controls") != subset.fingerprint("controls")
    # The full fine-tune the controls load again is trained last of its seeds, just before them: a study carried
    # between machines (hyperfit pack) holds its weights for as short a time as it can.
    three = study_graph(
        load_config(overrides=[*overrides, "study.controls_on_study_data=true", "study.replicates=3"]), tmp_path
    )
    trained = [name for name in three.names if name.startswith("train-full")]
    assert trained == ["train-full-r1", "train-full-r2", "train-full"]
    assert three.names.index("controls") == three.names.index("train-full") + 1  # study.analyses=[]
    # The main run is another placement: nothing to reuse for it, lora:last:5 is trained like the others.
    other = study_graph(
        load_config(overrides=[*overrides, "study.controls_on_study_data=true", "train.blocks=last:3"]), tmp_path
    )
    assert other["controls"].parents == ("data", "train-full")


def test_claim_5s_seeds_per_arm_reuse_the_main_runs_replicates(tmp_path):
    # Three seeds per compared arm on the study's data: the main run's replicates stand for lora:last's seeds, so the
    # controls wait for them; a replicate beyond them keeps the controls, fewer seeds per arm redo them.
    overrides = [
        "study.analyses=[]",
        "study.controls=[lora:last:5,lora:all]",
        "study.controls_on_study_data=true",
        "study.controls_replicates=3",
        "study.replicates=3",
    ]
    graph = study_graph(load_config(overrides=overrides), tmp_path)
    assert graph["controls"].parents == ("data", "train", "train-r1", "train-r2")
    four = study_graph(load_config(overrides=[*overrides, "study.replicates=4"]), tmp_path)
    assert four["controls"].parents == graph["controls"].parents
    assert four.fingerprint("controls") == graph.fingerprint("controls")
    two = study_graph(load_config(overrides=[*overrides, "study.controls_replicates=2"]), tmp_path)
    assert two["controls"].parents == ("data", "train", "train-r1")
    assert two.fingerprint("controls") != graph.fingerprint("controls")
    # lora:last's seeds would otherwise mix the main run's recipe with the controls' (their own epoch cap)
    with pytest.raises(ConfigError, match="study.replicates to at least study.controls_replicates"):
        load_config(overrides=[*overrides, "study.replicates=2"])


def test_the_late_stages_follow_only_the_study_keys_they_read(tmp_path):
    # Replicates added to a finished study keep its controls and quality; a control's setting redoes the controls
    # alone, a reader setting the quality stage alone.
    base = ["study.judge=null", "study.analyses=[geometry]", "baselines.methods=[]"]

    def fingerprints(*overrides):
        graph = study_graph(load_config(overrides=[*base, *overrides]), tmp_path)
        return {name: graph.fingerprint(name) for name in ("controls", "quality")}

    before = fingerprints()
    assert fingerprints("study.replicates=3") == before
    assert fingerprints("study.full_finetune=true") == before
    epochs = fingerprints("study.controls_epochs=7")
    assert epochs["controls"] != before["controls"] and epochs["quality"] == before["quality"]
    reader = fingerprints("study.reader_prompts=5")
    assert reader["controls"] == before["controls"] and reader["quality"] != before["quality"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_change_reruns_exactly_the_stages_that_read_it(monkeypatch, capsys, tiny_model_folder, corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = [*_study_args(tiny_model_folder, corpus, run_dir), "study.analyses=[geometry]", "study.controls=[]"]
    code, _, err = run_cli(monkeypatch, capsys, "study", *args)
    assert code == 0, err

    def done(name):
        return json.loads((run_dir / name / "stage-done.json").read_text())

    before = {name: done(name) for name in ("data", "base", "train", "hyperfitted", "analysis-geometry", "quality")}
    code, out, _ = run_cli(monkeypatch, capsys, "study", *args, "--dry-run")
    # with hyperfitted-blocked, baselines, retention and the lowest-held-out control
    assert code == 0 and " rerun " not in out and out.count(" reuse ") == 10

    # model.dtype: the data stage (tokenizer and text) is kept; every stage that runs the model is planned again.
    code, out, _ = run_cli(monkeypatch, capsys, "study", *args, "model.dtype=bfloat16", "--dry-run")
    # "base" also matches baselines
    plan = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.startswith(("data", "base", "train", "hyper", "analysis", "quality"))
    }
    assert plan["data"] == "reuse" and {plan[n] for n in plan if n != "data"} == {"rerun"}
    assert "config model changed" in out

    # A shorter continuation: decoding stages run again; data, training and the geometry analysis (it decodes nothing)
    # do not (tested by running it).
    code, _, err = run_cli(monkeypatch, capsys, "study", *args, "generate.max_new_tokens=10", "--resume")
    assert code == 0, err
    after = {name: done(name) for name in before}
    assert (
        after["data"] == before["data"]
        and after["train"] == before["train"]
        and after["analysis-geometry"] == before["analysis-geometry"]
    )
    assert all(after[n]["fingerprint"] != before[n]["fingerprint"] for n in ("base", "hyperfitted", "quality"))


def test_the_time_estimate_scales_with_the_work_a_config_asks_for(tmp_path):
    # The progress line's "min left" weighs each stage by its work: the standard preset (100 prompts per corpus, three
    # replicates, full fine-tuning) must not be estimated like the quick one, whose stage times the weights come from.
    from hyperfitting.pipeline.graph import STAGE_WEIGHTS, stage_weight
    from hyperfitting.registry import get_analysis

    def total(preset):
        from pathlib import Path

        graph = study_graph(
            load_config(Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"), tmp_path / preset
        )
        return {name: stage_weight(name, graph[name].config) for name in graph.names}

    quick, standard = total("quick"), total("standard")
    assert quick["base"] == STAGE_WEIGHTS["base"] and quick["analysis-ranks"] == get_analysis("ranks").weight
    assert standard["base"] > 5 * quick["base"] and standard["train-r1"] == standard["train"]
    assert standard["analysis-temperature-r1"] < standard["analysis-temperature"]  # the base model's rows are reused
    assert sum(standard.values()) > 8 * sum(quick.values())
    # Claim 5's arms over three seeds on the 64 blocks: lora:first:5 and lora:all each swept and trained, lora:all twice
    # more at the chosen rate; lora:last:5's and full's seeds are the study's own runs, only measured.
    assert standard["controls"] == pytest.approx(STAGE_WEIGHTS["controls"] * (2 + 2 + 1 + 1) / 2 * 64 / 4)


def test_a_resumed_study_estimates_the_time_left_from_every_finished_stage(tmp_path, monkeypatch, capsys):
    # Stages finished in an earlier sitting pace the estimate: the resumed command has run nothing yet.
    weights = {"data": 10, "train": 30, "decode": 20, "report": 40}
    monkeypatch.setattr(graph_module, "stage_weight", lambda name, config=None: weights[name])
    config = load_config()

    def build():
        return StageGraph(tmp_path, [StageSpec(name, name, config) for name in weights])

    first = build()
    first.stage("data").start()
    first.stage("data").finish(30.0)
    build().announce("train")
    assert "min left on a 2-core CPU" in capsys.readouterr().out  # 10 of weight finished: too little to tell
    first.stage("train").start()
    first.stage("train").finish(90.0)

    build().announce("decode")  # 120 s for 40 of weight: 3 s each, and 60 of weight to go
    assert "about 3 min left)" in capsys.readouterr().out
    # --dry-run says the same of the stages it would run
    assert build().explain().endswith("2 of 4 stages to run: about 3 min at the pace of the 2 stages finished before")


def test_the_code_version_follows_what_the_code_does_not_its_layout(tmp_path):
    """A change of the toolkit's computing code reruns the stages on --resume; comments, docstrings and formatting do
    not."""
    from hyperfitting.pipeline.graph import code_version

    def version(source: str) -> str:
        folder = tmp_path / str(abs(hash(source)))
        (folder / "analysis").mkdir(parents=True)
        (folder / "analysis" / "ranks.py").write_text(source)
        return code_version(folder, ("analysis",))

    plain = version('def share(x):\n    """Half of x."""\n    return x / 2\n')
    assert (
        version(
            'def share(x):\n    """Half of x, documented again."""\n    # a comment\n    return (x\n            / 2)\n'
        )
        == plain
    )
    assert version('def share(x):\n    """Half of x."""\n    return x / 3\n') != plain
