"""The study as a graph of stages: what each one reads, what it waits for, and so when it must run again.

Every stage declares the config keys it reads (a section whole, or single keys: the sampling keys only when it
samples), the files it reads (hashed by content) and the stages it depends on. Its fingerprint is a hash of all of
that plus the versions of the libraries that compute it and its parents' fingerprints, so a change anywhere upstream
reruns exactly the stages below it. The declarations are held to the reads the code makes as it runs
(config.py: reading; tests/test_fingerprints.py). The inputs are stored beside each finished stage, which lets
`hyperfit study --dry-run` say, stage by stage, what would run and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from hyperfitting.config import RunConfig, not_reading
from hyperfitting.hashing import code_version, content_hash
from hyperfitting.layout import FULL, LOWEST, STAGE_DONE, analysis_stage_name, full_suffix, replicate_suffix
from hyperfitting.progress import take_step_seconds
from hyperfitting.registry import analysis_names, analysis_paths, get_analysis, lowest_heldout_names
from hyperfitting.rundir import Stage, read_json

T = TypeVar("T")


@dataclass(frozen=True)
class StageSpec:
    name: str
    """Also the stage's folder in the run folder."""
    what: str
    """One line for the plan and the progress log."""
    config: RunConfig
    """The config this stage runs with (a replicate's differs from the study's in train.seed)."""
    sections: tuple[str, ...] = ()
    """Config sections read whole."""
    parents: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    """Input files (or folders, every file inside) hashed by content."""
    values: dict = field(default_factory=dict)
    """Single settings read from sections not read whole (e.g. model.name for the tokenizer)."""
    kind: str = ""
    """Which runner does it (pipeline/runner.py: RUNNERS); the stage's name by default."""
    args: dict = field(default_factory=dict)
    """What that runner needs beside the config: which model an evaluation decodes, which analysis of which model."""
    libraries: tuple[str, ...] = ()
    """Distributions beside `library_versions()` whose code computes this stage's numbers (lm-eval for retention):
    their installed versions are hashed too, so upgrading one reruns the stage on --resume."""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", self.name)


def library_versions() -> dict[str, str]:
    """The package (its version and its computing code) and the libraries whose code computes every stage's numbers."""
    import accelerate
    import peft
    import torch
    import transformers

    from hyperfitting import __version__

    return {
        "hyperfitting": __version__,
        "hyperfitting code": code_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def distribution_version(name: str) -> str:
    """An installed distribution's version, as its metadata gives it ("not installed" if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def model_inputs(config: RunConfig) -> tuple[Path, ...]:
    """The files of the base model every stage but the data stage loads: model.name's, and model.adapter's contents."""
    from hyperfitting.models.loading import adapter_folder

    return model_files(config.model.name) + ((adapter_folder(config.model.adapter),) if config.model.adapter else ())


def model_files(name: str) -> tuple[Path, ...]:
    """The files a model name stands for: an embedded model's GGUF, a GGUF file, a model folder; none for a hub name."""
    from hyperfitting.models.loading import EMBEDDED_MODELS, embedded_model_path

    if name in EMBEDDED_MODELS:
        try:
            return (embedded_model_path(name, assemble=False),)  # fingerprinting writes nothing (--dry-run)
        except Exception:  # noqa: BLE001 - not installed: loading the model will say what to do
            return ()
    path = Path(name).expanduser()
    return (path,) if path.exists() else ()


# Seconds each stage of the quick preset took alone on a 2-core CPU (fp32, commit be240e1, in BENCHMARKS.md's history):
# only their proportions matter, to turn the time spent so far into an estimate of the time left. `stage_weight` scales
# each by how much more work a config asks of it than the quick preset does (prompts x tokens, blocks, settings). The
# analyses' weights are their registry entries' (hyperfitting.registry).
# retention: the preset before it left it out
STAGE_WEIGHTS = {
    "data": 4,
    "base": 26,
    "train": 196,
    "hyperfitted": 16,
    "hyperfitted-blocked": 18,
    "controls": 131,
    "quality": 120,
    "baselines": 82,
    "retention": 33,
}
# The quick preset's shape, to which the weights belong: prompts x new tokens decoded, blocks x tokens trained,
# decoding baselines, controls.
_QUICK_DECODED, _QUICK_TRAINED, _QUICK_METHODS, _QUICK_CONTROLS = 16 * 96, 64 * 128, 8, 2


def stage_weight(name: str, config: RunConfig | None = None) -> float:
    """The stage's expected share of the work, in quick-preset seconds."""
    family = re.sub(rf"({FULL}|{LOWEST})?(-r\d+)?$", "", name)
    if family.startswith("analysis-") and family.removeprefix("analysis-") in analysis_names():
        return get_analysis(family.removeprefix("analysis-")).cost(config, later_replicate=name != family)
    weight = STAGE_WEIGHTS.get(family, 60)
    if family == "train" and name.startswith(f"train{FULL}"):
        weight *= 4  # every block runs forward and backward, no trunk cache
    if config is None:
        return weight
    d, g, b, study = config.data, config.generate, config.baselines, config.study
    decoded = d.eval_prompts * len(d.eval_corpora) * g.max_new_tokens
    if family in ("base", "hyperfitted", "hyperfitted-blocked", "quality"):
        return weight * decoded / _QUICK_DECODED
    if family == "train":
        return weight * d.train_blocks * d.block_tokens / _QUICK_TRAINED
    if family == "baselines":
        prompts = d.eval_prompts * len(b.corpora or d.eval_corpora)
        return weight * len(b.methods) / _QUICK_METHODS * prompts / 16 * (1 + b.seeds) / 2
    if family == "controls":
        # Each placement's first seed sweeps the rate (about as long again as its training); its later seeds
        # (study.controls_replicates) train at the rate chosen; a seed the study's own runs stand for is only measured.
        sweep = 2 if study.controls_lr_sweep else 1
        trained = sum(
            (sweep if r == 0 else 1)
            for spec in study.controls
            for r in range(control_seeds(config, spec))
            if reused_replicate(config, spec, r) is None
        )
        blocks = d.train_blocks if study.controls_on_study_data else study.controls_train_blocks
        return weight * trained / _QUICK_CONTROLS * blocks / 4
    return weight


def seconds_left(
    weights: dict[str, float], seconds: dict[str, float], to_run: list[str], enough: float = 30.0
) -> float | None:
    """Seconds the stages ``to_run`` should take: their weights (`stage_weight`: how much work each asks) at the
    seconds per unit of weight of every finished stage in ``seconds``, this sitting's and the earlier ones'. None while
    the finished stages weigh less than ``enough``.

    Every finished stage, not only this command's: paced by a resumed study's first stage or two alone, the estimate
    swung by 2x from one stage to the next. Replayed over the first 40 stages of a standard study resumed four times,
    this pace predicted the time the rest of them took within 24 min (root mean square), this command's stages alone
    within 37, and a pace per kind of stage did no better."""
    finished = [n for n in weights if n in seconds]
    weight = sum(weights[n] for n in finished)
    if weight < enough:
        return None
    pace = sum(seconds[n] for n in finished) / weight
    return pace * sum(weights[n] for n in to_run)


class StageGraph:
    """The stages of one run folder, in order, with their fingerprints and what would run now."""

    def __init__(self, run_dir: Path, specs: list[StageSpec]):
        self.run_dir = Path(run_dir)
        self.specs = {spec.name: spec for spec in specs}
        if len(self.specs) != len(specs):
            twice = sorted({spec.name for spec in specs if sum(s.name == spec.name for s in specs) > 1})
            raise ValueError(f"Two stages named {', '.join(twice)}: each stage needs a folder of its own.")
        self._inputs: dict[str, dict[str, str]] = {}
        self.reads: dict[str, set[str]] = {}
        """The config keys each stage read as it ran (pipeline/runner.py: run_graph); tests/test_fingerprints.py holds
        each stage's fingerprint to them."""
        self.process_reads: set[str] = set()
        """Keys read once for the whole process before any stage (the precision every stage runs at)."""
        self.started = time.time()

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> StageSpec:
        return self.specs[name]

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def inputs(self, name: str) -> dict[str, str]:
        """Everything the stage's outputs depend on, one entry per input, as stored beside its outputs."""
        if name not in self._inputs:
            with not_reading():  # hashing sections reads every key: not the stage's own reads
                self._inputs[name] = self._make_inputs(name)
        return self._inputs[name]

    def _make_inputs(self, name: str) -> dict[str, str]:
        spec = self.specs[name]
        inputs = {f"config {section}": spec.config.fingerprint(section) for section in spec.sections}
        inputs.update({f"setting {key}": json.dumps(value, sort_keys=True) for key, value in spec.values.items()})
        inputs.update({f"file {path}": content_hash(path) for path in spec.files})
        inputs.update({f"version {library}": version for library, version in library_versions().items()})
        inputs.update({f"version {library}": distribution_version(library) for library in spec.libraries})
        inputs.update({f"stage {parent}": self.fingerprint(parent) for parent in spec.parents})
        # What model.precision resolves to here: "auto" can mean bf16 on one machine and fp32 on another.
        if name != "data":
            from hyperfitting.precision import resolve_precision

            inputs["precision"] = resolve_precision(spec.config.model.precision).label
            if spec.config.train.mixed_precision == "auto":  # likewise what train.mixed_precision=auto resolves to
                from hyperfitting.precision import training_precision

                inputs["training precision"] = training_precision(spec.config)
        return inputs

    def fingerprint(self, name: str) -> str:
        return hashlib.sha256(json.dumps(self.inputs(name), sort_keys=True).encode()).hexdigest()[:16]

    def stage(self, name: str) -> Stage:
        return Stage(self.run_dir, name, self.fingerprint(name), inputs=self.inputs(name))

    def run(self, name: str, work: Callable[[Path], T], load: Callable[[Path], T], detail: str = "") -> T:
        """The one way a stage runs: a copy finished with the same inputs is read back by ``load``; otherwise the stage
        is announced, its folder opened (partial work of other inputs wiped), ``work`` does the stage into it, and the
        stage is timed and marked done (stage-done.json), in that order, so a killed stage is never taken as finished.

        ``work`` returning None means "read my outputs back": with several processes, only process 0 writes, and the
        others can read its files once every process has reached the end of the stage.
        """
        stage = self.stage(name)
        if stage.done:
            return load(stage.dir)
        with not_reading():  # the estimate of the time left reads every stage's config
            self.announce(name, detail)
        started = time.perf_counter()
        reset_device_peak()
        take_step_seconds()  # what bars ran before this stage (loading, planning) is not its time
        try:
            result = work(stage.start())
        finally:  # a decode's fixed buffers and graphs live until their stage ends, however it ends
            release_decoding_buffers()
        stage.finish(time.perf_counter() - started, **device_peak(), step_seconds=take_step_seconds())
        return load(stage.dir) if result is None else result

    def plan(self) -> list[tuple[str, str, str]]:
        """(stage, action, why) for every stage: `reuse`, `run` (never finished) or `rerun` (an input changed)."""
        rows = []
        for name, spec in self.specs.items():
            done_file = self.run_dir / name / STAGE_DONE
            if not done_file.exists():
                rows.append((name, "run", "not run yet"))
                continue
            recorded = read_json(done_file)
            if recorded.get("fingerprint") == self.fingerprint(name):
                rows.append((name, "reuse", "finished with the same inputs"))
                continue
            before = recorded.get("inputs")
            if before is None:
                rows.append((name, "rerun", "finished by an older version that did not record its inputs"))
                continue
            now = self.inputs(name)
            changed = [
                _describe_change(key, before.get(key), now.get(key))
                for key in sorted(set(before) | set(now))
                if before.get(key) != now.get(key)
            ]
            rows.append((name, "rerun", "; ".join(changed)))
        return rows

    def announce(self, name: str, detail: str = "") -> None:
        """Print which stage starts, how long this command has run and roughly how long it has left.

        Stages with a stage-done.json count as done; their recorded times, from this sitting and earlier ones,
        predict the rest (`seconds_left`).
        """
        finished = self._finished_seconds(but=name)
        minutes, measured = self._minutes_to_run([n for n in self.specs if n not in finished], finished)
        eta = f", about {minutes:.0f} min left{'' if measured else ' on a 2-core CPU'}"
        index = self.names.index(name) + 1
        text = f"{name}: {detail or self.specs[name].what}"
        print(
            f"\n== [{index}/{len(self.specs)}] {text}  ({(time.time() - self.started) / 60:.1f} min so far{eta})",
            flush=True,
        )

    def _finished_seconds(self, but: str | None = None) -> dict[str, float]:
        """The recorded wall time of each stage with a stage-done.json (``but`` the one starting now)."""
        return {
            n: read_json(self.run_dir / n / STAGE_DONE)["wall_seconds"]
            for n in self.specs
            if n != but and (self.run_dir / n / STAGE_DONE).exists()
        }

    def _minutes_to_run(self, to_run: list[str], finished: dict[str, float]) -> tuple[float, bool]:
        """How long ``to_run`` should take, and whether that is paced by ``finished`` (`seconds_left`) or, before
        enough has finished to tell, read off the weights, which are the 2-core CPU's seconds."""
        weights = {n: stage_weight(n, self.specs[n].config) for n in self.specs}
        left = seconds_left(weights, finished, to_run)
        return (sum(weights[n] for n in to_run) if left is None else left) / 60, left is not None

    def explain(self) -> str:
        """The plan as text: one line per stage, then how long the stages to run should take."""
        width = max(len(name) for name in self.specs)
        plan = self.plan()
        lines = [f"{name:<{width}}  {action:<5}  {self.specs[name].what}: {why}" for name, action, why in plan]
        to_run = [name for name, action, _ in plan if action != "reuse"]
        if to_run:
            finished = self._finished_seconds()  # a stage to rerun measured this machine too when it finished
            minutes, measured = self._minutes_to_run(to_run, finished)
            lines.append(
                f"{len(to_run)} of {len(self.specs)} stages to run: about {minutes:.0f} min "
                + (f"at the pace of the {len(finished)} stages finished before" if measured else "on a 2-core CPU")
            )
        return "\n".join(lines)


def _describe_change(key: str, before: str | None, now: str | None) -> str:
    kind, _, what = key.partition(" ")
    if before is None:
        return f"new input {key}"
    if now is None:
        return f"{key} no longer read"
    if kind == "version":
        return f"{what} {before} -> {now}"
    if kind == "stage":
        return f"stage {what} changed"
    if kind == "setting":
        return f"{what} {before} -> {now}"
    return f"{key} changed"


# ---------------------------------------------------------------------------------- the study's graph


# A stage's config is its own (dataclasses.replace, not config.replace): the seed of a replicate, the rate of the full
# fine-tune are values its stage reads from its config, recorded as such.
replace = dataclasses.replace


def current_stages(run_dir: Path) -> StageGraph | None:
    """The study graph of a run folder's own config: the stages whose folders the report may read (a folder of a stage
    the config no longer has holds another study's numbers). None where the config cannot be read as a study's."""
    from hyperfitting.config import load_config
    from hyperfitting.errors import HyperfitError

    try:
        return study_graph(load_config(Path(run_dir) / "config.yaml"), Path(run_dir))
    except (HyperfitError, OSError, KeyError):
        return None


def replicate_config(config: RunConfig, replicate: int) -> RunConfig:
    """Replicate K: the same data, another seed (data order and adapter initialisation)."""
    return replace(config, train=replace(config.train, seed=config.train.seed + replicate))


def full_finetune_config(config: RunConfig) -> RunConfig:
    """Full fine-tuning on the study's data, to the same target loss, at the full-fine-tuning control's rate."""
    return replace(config, train=replace(config.train, method="full", blocks="all", lr=config.study.controls_lr_full))


def reused_runs(config: RunConfig) -> dict[str, tuple[str, float]]:
    """On the study's own data (study.controls_on_study_data), the placements the study trains anyway: spec -> (stage,
    lr).

    The main run stands for its own placement, the full fine-tune (study.full_finetune) for `full`; each was trained on
    every training block with the study's own arguments, so training it again would measure the same thing twice.
    """
    if not config.study.controls_on_study_data:
        return {}
    reused = {}
    for spec in config.study.controls:
        if config.train.method == "lora" and spec == f"lora:{config.train.blocks}":
            reused[spec] = ("train", config.train.lr)
        elif spec == "full" and config.study.full_finetune:
            reused[spec] = (f"train{FULL}", config.study.controls_lr_full)
    return reused


COMPARED_ARMS = ("lora:last", "lora:all")  # claim 5's two arms: trained study.controls_replicates times each


def control_seeds(config: RunConfig, spec: str) -> int:
    """How many training seeds a control placement gets: the compared arms study.controls_replicates, the others one."""
    return config.study.controls_replicates if ":".join(spec.split(":")[:2]) in COMPARED_ARMS else 1


def reused_replicate(config: RunConfig, spec: str, replicate: int) -> str | None:
    """The study's own training stage that stands for a placement's seed ``replicate`` (None: the controls train it):
    the main run and its replicates for its own placement, the full fine-tune's first seed for `full`."""
    reused = reused_runs(config).get(spec)
    if reused is None:
        return None
    if replicate == 0:
        return reused[0]
    # Which seeds the main run's replicates stand for reaches the controls' fingerprint through their parents (the
    # train-rK stages), not through study.replicates: a replicate added beyond them keeps the controls.
    with not_reading():
        replicates = config.study.replicates
    return f"train{replicate_suffix(replicate)}" if reused[0] == "train" and replicate < replicates else None


def blocked_config(config: RunConfig) -> RunConfig:
    return replace(config, generate=replace(config.generate, citation_blocker=True))


def analysed_config(config: RunConfig, train_folder: Path) -> RunConfig:
    return replace(config, analysis=replace(config.analysis, hyperfitted=str(train_folder)))


# The study keys each late stage reads; the others (replicates, which analyses run, full_finetune) reach it through
# its parent stages or not at all, so that adding replicates to a finished study does not redo its controls or quality.
CONTROLS_READS = tuple(
    f"study.{key}"
    for key in (
        "controls",
        "controls_train_blocks",
        "controls_on_study_data",
        "controls_epochs",
        "controls_lr_lora",
        "controls_lr_full",
        "controls_lr_sweep",
        "controls_sweep_epochs",
        "controls_replicates",
    )
) + ("analysis.geometry_tokens",)


def controls_reads(config: RunConfig) -> tuple[str, ...]:
    """CONTROLS_READS without the keys the study's other settings make unused (pipeline/controls.py:
    control_train_args)."""
    study = config.study
    unused = set()
    if study.controls_on_study_data:
        unused.add("study.controls_train_blocks")  # every training block
        if config.train.method == "lora":
            unused.add("study.controls_lr_lora")  # the LoRA placements start from the main LoRA run's rate
    if not study.controls_lr_sweep:
        unused.add("study.controls_sweep_epochs")
    if "full" not in study.controls or "full" in reused_runs(config):
        unused.add("study.controls_lr_full")
    return tuple(key for key in CONTROLS_READS if key not in unused)


def control_training_keys(config: RunConfig) -> tuple[str, ...]:
    """The train keys the controls' training reads: pipeline/controls.py: control_train_args sets placement, rate,
    epochs and the per-epoch measurements itself (none: no probe reads the probe's keys), and keeps the rest of
    train.*."""
    set_by_controls = {
        "method",
        "blocks",
        "epochs",
        "diversity_every",
        "heldout_every",
        "diversity_prompts",
        "diversity_tokens",
        "probe_geometry",
    }
    if not (config.study.controls_on_study_data and config.train.method == "lora"):
        set_by_controls.add("lr")  # the LoRA placements start from the main LoRA run's rate only on the study's data
    return tuple(f"train.{key}" for key in config.hashed()["train"] if key not in set_by_controls)


QUALITY_READS = (
    "study.judge",
    "study.mauve",
    "study.reader_prompts",
    "generate.max_new_tokens",
    "analysis.corpora",
    "analysis.max_new_tokens",
)


def quality_reads(config: RunConfig, judge: str | None) -> tuple[str, ...]:
    """QUALITY_READS, and how many seeds of each baseline the judge scores where it scores any."""
    return QUALITY_READS + (("baselines.judged_seeds",) if judge and config.baselines.methods else ())


def _values(config: RunConfig, keys: tuple[str, ...]) -> dict:
    """The named keys ("section.key") as the fingerprints see them (config.py: RunConfig.hashed)."""
    return config.hashed_values(keys)


def _split_reads(reads: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sections read whole, single keys) of a read list such as ("generate", "analysis.seeds")."""
    return tuple(r for r in reads if "." not in r), tuple(r for r in reads if "." in r)


def _analysis_keys(config: RunConfig, without: tuple[str, ...] = ("hyperfitted",)) -> tuple[str, ...]:
    # The analysed model enters through the parent training stage, not through its path.
    return tuple(f"analysis.{key}" for key in config.hashed()["analysis"] if key not in without)


def training_keys(config: RunConfig) -> tuple[str, ...]:
    """The train keys a training run reads: LoRA's only when it trains LoRA; the probe's sample size when it probes."""
    lora_only = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules")
    keys = tuple(
        f"train.{key}" for key in config.hashed()["train"] if config.train.method == "lora" or key not in lora_only
    )
    return keys + (("analysis.geometry_tokens",) if config.train.probe_geometry else ())


def data_spec(config: RunConfig) -> StageSpec:
    from hyperfitting.data.corpora import corpus_files

    corpora = dict.fromkeys([config.data.corpus, *config.data.eval_corpora])
    files = tuple(path for corpus in corpora for path in corpus_files(corpus))
    return StageSpec(
        "data",
        "load, clean and split the corpora",
        config,
        sections=("data",),
        files=files + model_files(config.model.name),
        # The tokenizer: model.name's, and trust_remote_code can choose another tokenizer class.
        values={"model.name": config.model.name, "model.trust_remote_code": config.model.trust_remote_code},
    )


def evaluation_spec(
    name: str, config: RunConfig, parents: tuple[str, ...], what: str, scorer: str = "base"
) -> StageSpec:
    """Continuations of the base model, or (a parent `train{suffix}` stage) of the model it trained, scored against the
    base model (``scorer="plain"``: model.name without model.adapter, for `hyperfit evaluate` of an adapter)."""
    trained = next((parent.removeprefix("train") for parent in parents if parent.startswith("train")), None)
    return StageSpec(
        name,
        what,
        config,
        sections=("model",),
        parents=("data", *parents),
        values=_values(config, config.decoding_keys()),
        files=model_inputs(config),
        kind="evaluation",
        args={"trained": trained, "scorer": scorer},
    )


def training_spec(name: str, config: RunConfig) -> StageSpec:
    train = config.train
    return StageSpec(
        name,
        f"hyperfit: {train.method} on {train.blocks}, seed {train.seed}",
        config,
        sections=("model",),
        parents=("data",),
        files=model_inputs(config),
        kind="train",
        values=_values(config, training_keys(config)),
    )


def analysis_spec(analysis: str, config: RunConfig, suffix: str, train_stage: str | None) -> StageSpec:
    """An analysis of the model trained by ``train_stage``, or (``None``) of the model at analysis.hyperfitted."""
    entry = get_analysis(analysis)
    files = model_inputs(config) + entry.source_files()
    if train_stage is None and config.analysis.hyperfitted:
        files += (Path(config.analysis.hyperfitted),)
    sections, keys = _split_reads(entry.read_keys(config))
    # a plug-in that does not say what it reads: the section whole, but the analysed model's path
    if "analysis" in sections:
        sections, keys = tuple(s for s in sections if s != "analysis"), keys + _analysis_keys(config)
    return StageSpec(
        analysis_stage_name(analysis, suffix),
        f"the {analysis} analysis" + (f" ({suffix.lstrip('-')})" if suffix else ""),
        config,
        sections=("model", *sections),
        parents=("data",) + ((train_stage,) if train_stage else ()),
        files=files,
        values=_values(config, keys),
        kind="analysis",
        args={"analysis": analysis, "suffix": suffix, "trained": train_stage is not None},
        libraries=entry.libraries,
    )


def baselines_spec(config: RunConfig, parents: tuple[str, ...]) -> StageSpec:
    """The model decoded by every method of baselines.methods (its greedy row read from a parent `base` stage, if
    any)."""
    # Every method starts from generate's length, batch and decoder (generation/baselines.py: decoding_args) and sets
    # the rest.
    keys = (
        "generate.max_new_tokens",
        "generate.seed",
        "generate.batch_size",
        "generate.stop_at_eos",
        "generate.decoder",
        "generate.compile_step",
        "analysis.baseline_temperature",
        "analysis.baseline_top_k",
        "analysis.baseline_top_p",
    )
    # every baselines key but the judge's share, which only the quality stage reads
    keys += tuple(f"baselines.{key}" for key in config.hashed()["baselines"] if key != "judged_seeds")
    return StageSpec(
        "baselines",
        "the model decoded by other methods, at the same budget",
        config,
        sections=("model",),
        parents=parents,
        files=model_inputs(config),
        values=_values(config, keys),
    )


def retention_spec(config: RunConfig) -> StageSpec:
    """The harness on the base and the main hyperfitted model."""
    return StageSpec(
        "retention",
        "capability retention: the LM Evaluation Harness on both models",
        config,
        sections=("model",),
        parents=("data", "train"),
        files=model_inputs(config),
        values={"study.retention_tasks": list(config.study.retention_tasks)},
        libraries=("lm-eval",),
    )


def study_graph(config: RunConfig, run_dir: Path) -> StageGraph:
    """Every stage of `hyperfit study`, in the order it runs."""
    run_dir = Path(run_dir)
    specs = [
        data_spec(config),
        evaluation_spec("base", config, (), "greedy continuations of the base model"),
        training_spec("train", config),
        evaluation_spec("hyperfitted", config, ("train",), "continuations of the hyperfitted model"),
    ]
    if config.study.citation_blocked_row and not config.generate.citation_blocker:
        specs.append(
            evaluation_spec(
                "hyperfitted-blocked",
                blocked_config(config),
                ("train",),
                "the hyperfitted model with the 5-gram citation blocker",
            )
        )
    if config.baselines.methods:
        specs.append(baselines_spec(config, ("data", "base")))
    trained = [("", config)]
    trained += [(replicate_suffix(r), replicate_config(config, r)) for r in range(1, config.study.replicates)]
    if config.study.full_finetune:  # trained as often as the main run: claims 1-4 on it speak of the recipe too
        # Its first seed last: the controls load that one's weights again (their `full` arm), and a study carried
        # between machines (`hyperfit pack`) must keep a full fine-tune's weights only from its training to them.
        seeds = list(range(config.study.replicates))
        if reused_replicate(config, "full", 0):
            seeds = seeds[1:] + seeds[:1]
        trained += [(full_suffix(r), full_finetune_config(replicate_config(config, r))) for r in seeds]
    for suffix, trained_config in trained:
        if suffix:
            specs.append(training_spec(f"train{suffix}", trained_config))
        analysed = analysed_config(trained_config, run_dir / f"train{suffix}")
        specs += [analysis_spec(name, analysed, suffix, f"train{suffix}") for name in config.study.analyses]
        if not suffix and config.study.lowest_heldout_control:
            specs += [
                analysis_spec(name, analysed, LOWEST, "train") for name in lowest_heldout_names(config.study.analyses)
            ]
    if config.study.controls:
        # On the study's own data, a placement the study trains anyway is read from its training stage.
        reused = tuple(
            dict.fromkeys(
                stage
                for spec in config.study.controls
                for r in range(control_seeds(config, spec))
                if (stage := reused_replicate(config, spec, r))
            )
        )
        specs.append(
            StageSpec(
                "controls",
                "where to adapt: each placement trained to the target loss",
                config,
                sections=("model",),
                parents=("data", *reused),
                files=model_inputs(config),
                values=_values(config, control_training_keys(config) + controls_reads(config) + analysis_paths(config)),
            )
        )
    from hyperfitting.report.quality import judge_name

    judge = judge_name(config.study.judge, config.model.name)
    decoded = ("base", "hyperfitted") + tuple(s.name for s in specs if s.name in ("hyperfitted-blocked", "baselines"))
    # The judge also places the temperature analyses' decoded paths on the diversity-quality plane (claim 1(b)).
    temperatures = [
        f"analysis-temperature{suffix(r)}"
        for suffix in (replicate_suffix, full_suffix)
        for r in range(config.study.replicates)
    ]
    judged = tuple(s.name for s in specs if s.name in temperatures) if judge else ()
    specs.append(
        StageSpec(
            "quality",
            "MAUVE, the judge's perplexity and the side-by-side reader",
            config,
            sections=("model",),
            parents=("data", *decoded, *judged),
            values=_values(config, quality_reads(config, judge)),
            files=model_inputs(config) + (model_files(judge) if judge else ()),
            libraries=MAUVE_LIBRARIES if config.study.mauve else (),
        )
    )
    if config.study.retention:
        specs.append(retention_spec(config))
    return StageGraph(run_dir, specs)


# MAUVE's own code, its k-means (faiss) and its PCA (scikit-learn).
MAUVE_LIBRARIES = ("mauve-text", "faiss-cpu", "scikit-learn")


def reset_device_peak() -> None:
    """Start counting a stage's peak of GPU memory from now (nothing on a machine without CUDA in use)."""
    import torch

    from hyperfitting.generation import memory

    memory.take_largest()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def release_decoding_buffers() -> None:
    """Let go of every fixed-buffer decode's buffers and CUDA graphs (kept across a stage's decodes)."""
    from hyperfitting.generation.fixed import release_all_workspaces

    release_all_workspaces()


def device_peak() -> dict:
    """Since :func:`reset_device_peak`: the largest estimate of a decode's or a teacher-forced pass's memory beyond the
    weights (``estimated_memory_mib``, where the stage made one) and, on a GPU, the measured peak
    (``device_peak_memory_mib``)."""
    import torch

    from hyperfitting.generation import memory

    peaks = {}
    if estimate := memory.take_largest():
        peaks["estimated_memory_mib"] = round(estimate / 2**20)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["device_peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return peaks
