"""Resume never reuses a stage whose inputs changed: every config key a stage reads, recorded as the tiny study runs, is
covered by that stage's fingerprint, and changing any key of `hyperfit keys` reruns exactly the stages that read it."""

import random
import types
import typing

import pytest

from hyperfitting.config import RunConfig, build_dataclass, describe_fields, load_config
from hyperfitting.errors import ConfigError, HyperfitError
from hyperfitting.pipeline.graph import study_graph
from hyperfitting.rundir import prepare_run_dir
from tests.conftest import WORDS
from tests.test_cli import _study_args

pytestmark = pytest.mark.e2e


# Two studies whose reads differ where the code reads conditionally: Late-Stage LoRA decoded greedily with every stage
# (replicates, the full fine-tune, controls on the study's data and the lowest-held-out control, baselines, judge,
# MAUVE, harness); a full fine-tune decoded by sampling, analyses as long as the generation table, controls on a subset.
STUDIES = {
    "lora-greedy": ["study.replicates=2", "study.full_finetune=true", "study.controls_on_study_data=true"],
    "full-sampled": [
        "train.method=full",
        "train.blocks=all",
        "train.lr=1e-3",
        "generate.do_sample=true",
        "generate.temperature=0.9",
        "analysis.max_new_tokens=null",
        "study.controls=[lora:last:1,full]",
        "study.controls_lr_sweep=[]",
    ],
}


@pytest.fixture(scope="module", params=sorted(STUDIES))
def recorded_study(request, tmp_path_factory, tiny_model_folder):
    """The tiny study run once: its graph with each stage's recorded reads."""
    import hyperfitting.pipeline.runner as runner

    folder = tmp_path_factory.mktemp("fingerprints")
    corpus = folder / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(6):
        (corpus / f"story{i}.txt").write_text(" ".join(rng.choice(WORDS.split()) for _ in range(400)) + ".\r\n")
    config = load_config(overrides=[*_study_args(tiny_model_folder, corpus, folder / "run"), *STUDIES[request.param]])
    graphs = []
    made = runner.study_graph

    def keep(*args, **kwargs):
        graphs.append(made(*args, **kwargs))
        return graphs[-1]

    runner.study_graph = keep
    try:
        runner.run_study(config, prepare_run_dir(config))
    finally:
        runner.study_graph = made
    return config, graphs[0]


def _candidates(value, tp):
    """Other values of a key's type to try, nearest first (the first that makes a valid config is used)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(tp) if option is not type(None)]
        out = [] if value is None else [None]
        for option in options:
            out += _candidates(value if value is not None else _typical(option), option) + (
                [_typical(option)] if value is None else []
            )
        return out
    if origin is typing.Literal:
        return [option for option in typing.get_args(tp) if option != value]
    if tp is bool:
        return [not value]
    if tp is int:
        return [value + 1, value - 1, 1, 2, 0]
    if tp is float:
        return [value * 2, value / 2, 0.5, 0.25, 2.0]
    if tp is str:
        return [f"{value}x", "last:2", "all", "auto", "none"]
    if origin is list:
        return [value[:-1], value + value[-1:], value[1:], [_typical(typing.get_args(tp)[0])]]
    raise AssertionError(f"no candidates for {tp}")


def _typical(tp):
    return {bool: True, int: 1, float: 0.5, str: "x"}.get(tp, "x")


def _with(config, changes: dict):
    tree = config.to_dict()
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            tree[section][name] = value
        else:
            tree[section] = value
    return build_dataclass(RunConfig, tree)


def _value(config, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name) if name else getattr(config, section)


# Keys no stage can meaningfully change here: what each means, and why the tiny study has no other value for it.
UNCHANGEABLE = {
    "analysis.corpora": "[] and [the one evaluation corpus] mean the same here, and no other corpus is allowed",
    "baselines.corpora": "as analysis.corpora",
    "study.plugins": "modules imported to register analyses (tests/test_plugins.py); no stage reads the list itself",
}
# What must change with a key for the config to stay valid (the cross-field rules of config.py).
COMPANIONS = {
    # Contrastive search is deterministic: no sampling, and the blocked row cannot run it.
    "generate.contrastive_top_k": {"study.citation_blocked_row": False, "generate.do_sample": False},
    "train.keep_lowest_heldout": {"study.lowest_heldout_control": False},  # that control reads those weights
    "data.streaming": {"data.max_documents": 20000},  # a stream needs a stopping point
}
# Keys that permit or refuse loading and never change what is loaded: a stage that reads them need not rerun.
PERMISSIONS = {"model.allow_download", "model.allow_pickle"}
# The nearest value that changes what a key means (where the first candidate would not): model.precision=auto is fp32
# on a CPU without fast bf16 products, the same computation.
# generate.decoder=auto is the growing cache (dynamic) on a CPU: the same computation.
PREFERRED = {
    "generate.decoder": ["fixed"],
    "model.precision": ["bf16"],
    "generate.contrastive_top_k": [4],
    "tracking.report_to": [["tensorboard"]],
}


def rerun_errors(config, graph) -> tuple[list, list, list]:
    """Change every key of `hyperfit keys` in turn to another valid value (and so every key's value as each stage's own
    config holds it: a replicate's seed, the full fine-tune's rate), and list what breaks:

    - stale: a stage that read a key whose value changed in its own config, and would be reused;
    - needless: a stage that would rerun, though it read no key whose value changed, waits for no stage that reruns,
      and waits for the same stages as before;
    - untried: a key for which no other valid value was found.

    The reads are those the tiny study recorded stage by stage as it ran (pipeline/runner.py: run_graph), and the
    precision keys every stage runs under."""
    stale, needless, untried = [], [], []
    before = study_graph(config, graph.run_dir)  # made now: under the declarations in force, as `after` is
    for key, _, _ in describe_fields(RunConfig):
        if key in UNCHANGEABLE:
            continue
        section, _, name = key.partition(".")
        owner = getattr(config, section) if name else config
        tp = typing.get_type_hints(type(owner))[name or section]
        value = _value(config, key)
        if key == "model.adapter":  # an adapter on the tiny model: the LoRA study's own, where it trained one
            if not (graph.run_dir / "train" / "adapter").is_dir():
                continue
            PREFERRED[key] = [str(graph.run_dir)]
        for candidate in PREFERRED.get(key, []) + _candidates(value, tp):
            if candidate == value:
                continue
            try:
                changed_config = _with(config, {key: candidate, **COMPANIONS.get(key, {})})
                after = study_graph(changed_config, graph.run_dir)
            except (ConfigError, HyperfitError, ValueError):
                continue
            break
        else:
            untried.append(key)
            continue
        rerun = {
            stage for stage in graph.names if stage in after and after.fingerprint(stage) != before.fingerprint(stage)
        }
        for stage in graph.names:
            if stage not in after or key in PERMISSIONS:
                continue  # a stage the change removes is not reused either
            # The precision set up for the whole process, in every stage that runs a model (not the data stage).
            reads = graph.reads[stage] | (graph.process_reads if "precision" in graph.inputs(stage) else set())
            moved = {k for k in reads if _value(graph[stage].config, k) != _value(after[stage].config, k)}
            if moved and stage not in rerun:
                stale.append((key, stage, sorted(moved)))
            spec = graph[stage]
            if (
                stage in rerun
                and not moved
                and not set(spec.parents) & rerun
                and set(after[stage].parents) == set(spec.parents)
            ):
                needless.append((key, stage))
    return stale, needless, untried


def test_changing_any_key_reruns_exactly_the_stages_that_read_it(recorded_study):
    """No stale reuse and no needless rerun, for every key of `hyperfit keys`."""
    stale, needless, untried = rerun_errors(*recorded_study)
    assert not stale and not needless and not untried, (stale, needless, untried)


def test_a_key_left_out_of_a_fingerprint_is_caught(recorded_study, monkeypatch):
    """The check bites: an analysis that reads analysis.rank_top_k but does not declare it is reused stale."""
    from dataclasses import replace

    from hyperfitting import registry

    config, graph = recorded_study
    ranks = registry.get_analysis("ranks")
    forgetful = replace(ranks, reads=lambda c: tuple(k for k in ranks.read_keys(c) if k != "analysis.rank_top_k"))
    monkeypatch.setitem(registry._ANALYSES, "ranks", forgetful)
    stale, _, _ = rerun_errors(config, graph)
    assert ("analysis.rank_top_k", "analysis-ranks", ["analysis.rank_top_k"]) in stale
