"""Every preset in configs/: loaded, validated, holding only what differs from its base, obeying the rules that join
fields, and run end to end at a shrunk size on the tiny model."""

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from hyperfitting.config import load_config, read_config_file
from hyperfitting.pipeline.controls import control_train_args
from hyperfitting.pipeline.graph import control_seeds, reused_replicate, reused_runs, study_graph
from tests.conftest import WORDS

CONFIGS = Path(__file__).parent.parent / "configs"
PRESETS = sorted(path.name for path in CONFIGS.glob("*.yaml"))


def test_every_preset_loads_and_is_checked():
    assert "quick.yaml" in PRESETS and len(PRESETS) >= 7
    for name in PRESETS:
        config = load_config(CONFIGS / name)
        assert config.run_dir.startswith("runs/"), name


@pytest.mark.parametrize("name", [p for p in PRESETS if p != "quick.yaml"])
def test_a_preset_holds_only_what_differs_from_its_base(name):
    """Each preset names its base and sets no key to the value its base already gives it."""
    own = yaml.safe_load((CONFIGS / name).read_text())
    assert "base" in own, f"{name} names no base: write it as the differences from configs/quick.yaml"
    base = read_config_file(CONFIGS / own["base"])
    same = [
        f"{section}.{key}"
        for section, values in own.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if base.get(section, {}).get(key) == value
    ]
    assert not same, f"{name} repeats its base's values: {same}"


@pytest.mark.parametrize("name", PRESETS)
def test_a_lora_control_never_takes_a_full_fine_tunes_rate(name):
    """On the study's data a LoRA placement starts from the main run's rate only when the main run is LoRA; a comment's
    claim of reuse is what the graph does."""
    config = load_config(CONFIGS / name)
    for spec in config.study.controls:
        if spec == "full":
            continue
        lr = control_train_args(config, spec).lr
        if config.study.controls_on_study_data and config.train.method == "lora":
            assert lr == config.train.lr, (name, spec)
        else:
            assert lr == config.study.controls_lr_lora, (name, spec, lr)
    reused = reused_runs(config)
    text = (CONFIGS / name).read_text()
    if config.train.method != "lora":
        assert not any(stage == "train" for stage, _ in reused.values()), name
        assert "main Late-Stage run is reused" not in text, name
    graph = study_graph(config, Path(config.run_dir))
    if "controls" in graph:
        # every seed of a reused placement that the study trains anyway (study.controls_replicates)
        stands_for = {
            reused_replicate(config, spec, r)
            for spec in config.study.controls
            for r in range(control_seeds(config, spec))
        }
        assert set(graph["controls"].parents) - {"data"} == stands_for - {None}, name
        assert {stage for stage, _ in reused.values()} <= stands_for, name


def _shrunk(name: str, model: Path, corpora: list[Path], run_dir: Path) -> list[str]:
    """The preset at the tiny model's size: its structure (analyses, controls, replicates, baselines, judge, harness)
    kept, its sizes and its model and corpora replaced."""
    config = load_config(CONFIGS / name)
    eval_corpora = corpora[: len(config.data.eval_corpora)]
    one_block = lambda spec: re.sub(r"(last|first):\d+", r"\1:1", spec)  # noqa: E731 (the tiny model has 2 blocks)
    return [
        f"train.blocks={one_block(config.train.blocks)}",
        f"study.controls=[{','.join(map(one_block, config.study.controls))}]",
        f"run_dir={run_dir}",
        f"model.name={model}",
        "model.allow_download=false",
        f"data.corpus={corpora[0]}",
        f"data.eval_corpora=[{','.join(map(str, eval_corpora))}]",
        "data.streaming=false",
        "data.max_documents=null",
        "data.train_blocks=4",
        "data.block_tokens=32",
        "data.heldout_blocks=2",
        "data.eval_prompts=2",
        "data.prompt_tokens=8",
        "data.reference_tokens=12",
        "train.epochs=1",
        "train.batch_size=2",
        "train.diversity_prompts=2",
        "train.diversity_tokens=8",
        "generate.max_new_tokens=10",
        "generate.batch_size=4",
        f"analysis.corpora=[{corpora[0]}]",
        "analysis.max_new_tokens=6",
        "analysis.max_positions=64",
        "analysis.geometry_tokens=32",
        "analysis.static_bias_top_k=20",
        f"baselines.corpora=[{corpora[0]}]",
        "study.controls_epochs=1",
        "study.controls_sweep_epochs=1",
        "study.controls_train_blocks=2",
        f"study.judge={model}",
        "study.reader_prompts=1",
        "study.calibration_worlds=20",
    ]


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    folders = []
    for k in range(2):
        folder = tmp_path_factory.mktemp(f"corpus{k}")
        rng = random.Random(k)
        for i in range(4):
            (folder / f"story{i}.txt").write_text(" ".join(rng.choice(WORDS.split()) for _ in range(300)) + ".\n")
        folders.append(folder)
    return folders


@pytest.mark.e2e
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_end_to_end_shrunk(name, monkeypatch, capsys, tiny_model_folder, two_corpora, tmp_path):
    from tests.test_cli import run_cli

    run_dir = tmp_path / "run"
    code, out, err = run_cli(
        monkeypatch, capsys, "study", str(CONFIGS / name), *_shrunk(name, tiny_model_folder, two_corpora, run_dir)
    )
    assert code == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = load_config(CONFIGS / name)
    assert len(metrics["replicates"]) == config.study.replicates
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive", "not run") for c in metrics["claims"])
    assert (run_dir / "report.html").exists()
