import pytest

from hyperfitting.config import RunConfig, describe_fields, load_config, parse_overrides
from hyperfitting.errors import ConfigError


def test_defaults_are_late_stage_lora():
    config = load_config()
    assert config.train.method == "lora" and config.train.blocks == "last:5"
    assert config.train.weight_decay == 0.0


def test_full_method_defaults_to_every_block():
    assert load_config(overrides=["train.method=full"]).train.blocks == "all"


def test_overrides_parse_numbers_lists_and_booleans():
    config = load_config(
        overrides=["train.lr=1e-4", "data.eval_corpora=[wikipedia]", "generate.do_sample=true", "train.epochs=3"]
    )
    assert config.train.lr == pytest.approx(1e-4)
    assert config.data.eval_corpora == ["wikipedia"]
    assert config.generate.do_sample is True and config.train.epochs == 3


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 4\n")
    config = load_config(path, ["train.epochs=5"])
    assert config.train.lr == pytest.approx(1e-3) and config.train.epochs == 5


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"Unknown config key 'train.learning_rate'\. Known keys in train: .*\blr\b"):
        load_config(overrides=["train.learning_rate=1e-3"])


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, got 'many'"):
        load_config(overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"train.method: 'adapter' is not one of 'full', 'lora'"):
        load_config(overrides=["train.method=adapter"])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.lr=0",
            r"train.lr = 0.0: must be above 0. Use a positive rate, or leave it out for the method's default.",
        ),
        ("train.lr=-1e-3", r"train.lr = -0.001: must be above 0."),
        ("train.batch_size=0", r"train.batch_size = 0: must be at least 1. For example train.batch_size=8."),
        (
            "data.heldout_fraction=1.5",
            r"data.heldout_fraction = 1.5: must lie strictly between 0 and 1. For example data.heldout_fraction=0.2.",
        ),
        (
            "analysis.corpora=[news]",
            r"analysis.corpora = \['news'\]: 'news' is not among data.eval_corpora \['fiction', 'wikipedia'\]. Add it "
            r"there",
        ),
        ("study.analyses=[tempo]", r"study.analyses = \['tempo'\]: 'tempo' is not an analysis. Choose from"),
        (
            "study.controls=[lora:middle]",
            r"study.controls = \['lora:middle'\]: cannot read 'lora:middle'. Use lora:last:K",
        ),
    ],
)
def test_impossible_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


# One value that breaks each rule.
BREAKING = {
    ">= 1": 0,
    "> 0": 0,
    ">= 0": -1,
    ">= 2": 1,
    "> 1": 1,
    "(0, 1)": 1.5,
    "(0, 1]": 0,
    "[0, 1)": 1,
    "[0, 1]": 1.5,
    "all > 0": [-1],
}


def _ruled_fields():
    import dataclasses

    for section in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(
            section.type if not isinstance(section.type, str) else getattr(RunConfig(), section.name)
        ):
            for f in dataclasses.fields(getattr(RunConfig(), section.name)):
                if "rule" in f.metadata:
                    yield section.name, f.name, f.metadata["rule"]


@pytest.mark.parametrize("section, key, rule", list(_ruled_fields()))
def test_every_rule_names_the_key_the_value_the_rule_and_a_fix(section, key, rule):
    from hyperfitting.config import RULES

    value = BREAKING[rule]
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[f"{section}.{key}={value}"])
    message = str(error.value)
    assert message.startswith(f"{section}.{key} = "), message
    assert RULES[rule][1] in message and message.rstrip().endswith("."), message
    fix = message.split(RULES[rule][1] + ". ", 1)[1]
    assert fix and fix[0].isupper(), message  # a sentence that says what to do


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["train.lr"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_field_is_documented():
    rows = describe_fields(RunConfig)
    assert len(rows) > 30
    assert all(doc for key, _, doc in rows), [key for key, _, doc in rows if not doc]


def test_fingerprint_follows_sections():
    a, b = load_config(), load_config(overrides=["train.lr=1e-3"])
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_a_key_added_later_leaves_the_fingerprints_of_earlier_runs_alone():
    """At the value that does what the toolkit did before it existed, a new key is not hashed: an upgrade keeps
    existing runs' finished stages; any other value is hashed like every key."""
    import hashlib
    import json

    from hyperfitting.config import LATER_KEYS

    default = load_config()
    before = default.to_dict()
    before["model"].pop("precision")
    for (section, key), unchanged in LATER_KEYS.items():
        assert before[section].pop(key) == unchanged  # the default is the old behaviour
    assert (
        default.fingerprint("train")
        == hashlib.sha256(json.dumps({"train": before["train"]}, sort_keys=True).encode()).hexdigest()[:16]
    )
    assert load_config(overrides=["train.heldout_every=2"]).fingerprint("train") != default.fingerprint("train")


def test_a_small_preset_says_what_it_left_out_and_a_full_study_leaves_nothing():
    from hyperfitting.report.build import left_out

    quick = left_out(load_config("configs/quick.yaml").to_dict())
    assert any("block-swap" in m for m in quick) and any("study.replicates" in m for m in quick)
    assert any("study.full_finetune" in m for m in quick) and any("study.lowest_heldout_control" in m for m in quick)
    assert any("baselines.seeds" in m for m in quick)  # 1 seed per sampled baseline, not 3
    assert any("lora:first:5" in m for m in quick) and any("add full to study.controls" in m for m in quick)
    assert any("data.eval_corpora" in m for m in quick) and any("study.mauve" in m for m in quick)
    assert any("study.retention" in m for m in quick) and any("beam, contrastive" in m for m in quick)
    assert any("study.controls_on_study_data" in m for m in quick)
    assert any("analysis.rank_transplant" in m for m in quick) and any("baselines.judged_seeds" in m for m in quick)
    everything = load_config(
        overrides=[
            "study.replicates=3",
            "study.full_finetune=true",
            "study.judge=auto",
            "study.controls_on_study_data=true",
        ]
    ).to_dict()
    assert left_out(everything) == []
    # An older run folder's config without a key had the default then: the harness ran (retention is on by default).
    del everything["study"]["retention"], everything["study"]["mauve"]
    assert left_out(everything) == []
    # The standard preset runs everything the protocol asks for: no verdict rests on a part it skipped. It judges the
    # first seed of each sampled baseline only (time), and says so.
    (skipped,) = left_out(load_config("configs/standard.yaml").to_dict())
    assert "baselines.judged_seeds" in skipped and "first 1 seed(s)" in skipped


def test_the_quick_preset_takes_ones_own_text_as_the_readme_says(tmp_path):
    # README, "Quick start": the quick preset with one's own corpus for training and evaluation, nothing else changed.
    config = load_config("configs/quick.yaml", overrides=[f"data.corpus={tmp_path}", f"data.eval_corpora=[{tmp_path}]"])
    assert config.corpora_of("analysis") == config.corpora_of("baselines") == [str(tmp_path)]
    # Naming every evaluation corpus, or none ([] = all of them), is the same stage: a resume reuses it.
    named = load_config("configs/quick.yaml", overrides=["analysis.corpora=[fiction]", "baselines.corpora=[fiction]"])
    assert named.fingerprint("analysis", "baselines") == load_config("configs/quick.yaml").fingerprint(
        "analysis", "baselines"
    )
