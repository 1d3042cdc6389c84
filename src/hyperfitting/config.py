"""Typed configuration: dataclasses with a docstring per field, loaded from YAML,
overridden with dotted ``key=value`` arguments.

Unknown keys and values of the wrong type raise :class:`ConfigError` with a message
that says what to do; impossible combinations are checked in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import types
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal, TypeVar, Union

import yaml

from hyperfitting.errors import ConfigError
from hyperfitting.registry import BUILT_IN_NAMES, analysis_names, import_plugin, lowest_heldout_names


# ----------------------------------------------------------------------------------
# Declarative checks: a field's rule sits beside it, and one function checks every rule with one message
# format (key, value, rule, fix). Rules that join fields of several sections are in RunConfig.


RULES = {
    "> 0": (lambda v: v > 0, "must be above 0"),
    ">= 0": (lambda v: v >= 0, "must be 0 or more"),
    ">= 1": (lambda v: v >= 1, "must be at least 1"),
    ">= 2": (lambda v: v >= 2, "must be at least 2"),
    "> 1": (lambda v: v > 1, "must be above 1"),
    "(0, 1)": (lambda v: 0 < v < 1, "must lie strictly between 0 and 1"),
    "(0, 1]": (lambda v: 0 < v <= 1, "must lie in (0, 1]"),
    "[0, 1)": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    "[0, 1]": (lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
    "all > 0": (lambda v: all(x > 0 for x in v), "must hold only values above 0"),
}


def ruled(default: Any, rule: str, fix: str = "") -> Any:
    """A field whose value must satisfy ``rule`` (a key of RULES); ``fix`` says what to do instead. None is always
    allowed where the type allows it (it means "the default")."""
    assert rule in RULES, rule
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule, "fix": fix})
    return field(default=default, metadata={"rule": rule, "fix": fix})


def check_rules(instance: Any, section: str) -> None:
    """Raise ConfigError for the first field of ``instance`` that breaks its rule: `section.key = value: rule. Fix.`"""
    for f in dataclasses.fields(instance):
        rule = f.metadata.get("rule")
        value = getattr(instance, f.name)
        if rule is None or value is None:
            continue
        test, words = RULES[rule]
        if not test(value):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            fix = f.metadata.get("fix") or f"For example {section}.{f.name}={default}."
            raise ConfigError(f"{section}.{f.name} = {value!r}: {words}. {fix}")


def check_choices(key: str, values: list[str], known: tuple[str, ...], what: str, otherwise: str = "") -> None:
    """Raise ConfigError naming the first of ``values`` that is not among ``known``, and the choices."""
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{key} = {values!r}: {unknown[0]!r} is not {what}. Choose from {', '.join(known)}{otherwise}."
        )


# ----------------------------------------------------------------------------------
# Which keys a piece of code reads: while `reading()` is open, every read of a section's field is recorded as
# "section.key". The study records each stage's reads, and a test holds them against what the stage's fingerprint
# covers (pipeline/graph.py), so a stage cannot read a key that changing would not make it run again.

_OPEN_READS: list[set[str]] = []
S = TypeVar("S")


def _unrecorded(check: Any) -> Any:
    """Validation reads every key it checks whenever a config is made or copied: not a stage's own reads."""

    def checked(self: Any) -> None:
        with not_reading():
            check(self)

    return checked


# Copying a section (dataclasses.replace) reads every key it carries over: the copy's keys are recorded when they are
# read.
_COPYING = frozenset(
    getattr(dataclasses, name).__code__ for name in ("replace", "_replace") if hasattr(dataclasses, name)
)


class Section:
    """A config section whose field reads are recorded while a `reading()` block is open."""

    SECTION: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__post_init__" in cls.__dict__:
            cls.__post_init__ = _unrecorded(cls.__dict__["__post_init__"])

    def __getattribute__(self, name: str) -> Any:
        if (
            _OPEN_READS
            and name in object.__getattribute__(self, "__dataclass_fields__")
            and name not in object.__getattribute__(self, "__dict__").get("_set_by_code", ())
            and sys._getframe(1).f_code not in _COPYING
        ):
            key = f"{type(self).SECTION}.{name}"
            for reads in _OPEN_READS:
                reads.add(key)
        return object.__getattribute__(self, name)


def replace(instance: S, **changes: Any) -> S:
    """dataclasses.replace that remembers which values the code set: reading those later is not reading the config
    (the temperature analysis sets each row's temperature; generate.temperature is not what it decodes with)."""
    with not_reading():
        copy = dataclasses.replace(instance, **changes)
    if isinstance(copy, Section):
        before = object.__getattribute__(instance, "__dict__").get("_set_by_code", frozenset())
        object.__setattr__(copy, "_set_by_code", before | frozenset(changes))
    return copy


def unrecorded(section: S) -> S:
    """A section the code makes for itself (fixed settings, not the run's config): its reads are not the config's."""
    object.__setattr__(section, "_set_by_code", frozenset(f.name for f in dataclasses.fields(section)))
    return section


@contextmanager
def reading() -> Iterator[set[str]]:
    """Record the config keys read inside the block (nested blocks record into every open one)."""
    reads: set[str] = set()
    _OPEN_READS.append(reads)
    try:
        yield reads
    finally:  # by identity: two sets of the same keys are equal
        _OPEN_READS[:] = [open_reads for open_reads in _OPEN_READS if open_reads is not reads]


def replay(reads: set[str]) -> None:
    """Record ``reads`` in every open block: the code that uses a shared object reads what making it read."""
    for open_reads in _OPEN_READS:
        open_reads.update(reads)


class shared:
    """A cached property shared by the stages of a run (the base model, an analysed model's greedy paths): made by the
    first stage that needs it, and every stage that uses it is recorded as reading the keys that making it read."""

    def __init__(self, function: Any):
        self.function, self.name = function, function.__name__
        self.__doc__ = function.__doc__

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        made = instance.__dict__.setdefault("_shared", {})
        if self.name not in made:
            with reading() as reads:
                made[self.name] = (self.function(instance), reads)
        value, reads = made[self.name]
        replay(reads)
        return value

    @staticmethod
    def is_made(instance: Any, name: str) -> bool:
        return name in instance.__dict__.get("_shared", {})


@contextmanager
def not_reading() -> Iterator[None]:
    """Reads that are not the code's own (hashing a whole section for a fingerprint) are not recorded."""
    opened = list(_OPEN_READS)
    _OPEN_READS.clear()
    try:
        yield
    finally:
        _OPEN_READS.extend(opened)


@dataclass
class ModelArgs(Section):
    SECTION: ClassVar[str] = "model"
    name: str = "smollm2-135m"
    """Base model: an embedded name (see `hyperfit list`), a local Hugging Face folder, a .gguf file, or a hub id
    already in the local cache."""
    adapter: str | None = None
    """Optional PEFT adapter folder (or a hyperfit run folder) applied on top of the base model."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype. Keep float32 for training: at lr ~1e-6, bf16 weights lose updates to rounding."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """Precision of training and decoding: bf16 autocast over float32 weights, or fp32 (the default: the same numbers on
    every machine; bf16 training moved the quick study's claim 1 as much as another training seed does:
    BENCHMARKS.md, "Precision"). auto times bf16 and fp32 matrix products on the device for a moment and, where bf16
    is at least 1.5x faster, trains under bf16 (and on a GPU decodes under it too; on a CPU decoding stays fp32);
    recorded in the run. What the analyses measure (log-probabilities, ranks, entropies, geometry, perplexities) is
    always computed in float32."""
    tf32: bool = False
    """TensorFloat-32 for float32 matrix products on NVIDIA GPUs (Ampere and later): several times faster, but with a
    10-bit mantissa, enough to change a greedy path where two tokens nearly tie. Off by default; recorded with the
    precision in metrics.json. No effect on a CPU."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model. Off unless you trust the source."""
    allow_download: bool = False
    """Let transformers contact the hub. Off by default, so nothing ever waits on a network."""
    allow_pickle: bool = False
    """Accept weights stored as pickle (.bin/.pt), which can run code when loaded. Off: safetensors only."""


@dataclass
class DataArgs(Section):
    SECTION: ClassVar[str] = "data"
    corpus: str = "fiction"
    """Training corpus: an embedded name (fiction, wikipedia), a .txt file or folder, a .jsonl/.csv/.parquet file, a
    folder saved by datasets' save_to_disk (FOLDER#SPLIT), or a dataset by name: [hf:]NAME[:CONFIG][@REVISION][#SPLIT],
    e.g. Salesforce/wikitext:wikitext-103-raw-v1#train (needs hyperfitting[datasets]; hf: forces load_dataset, e.g. on a
    local folder of data files)."""
    eval_corpora: list[str] = field(default_factory=lambda: ["fiction", "wikipedia"])
    """Corpora whose held-out documents provide evaluation prompts."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.csv/.parquet files and datasets."""
    streaming: bool = False
    """Stream a dataset by name instead of downloading it whole: only the first data.max_documents rows are read."""
    max_documents: int | None = ruled(None, ">= 1", "Use a positive count, or null for every document.")
    """Read at most this many documents of a dataset (needed with data.streaming; the blocks and prompts are drawn from
    them)."""
    heldout_fraction: float = ruled(0.2, "(0, 1)")
    """Share of documents (grouped by work) kept out of training, for prompts and held-out loss."""
    train_blocks: int = ruled(64, ">= 1")
    """Number of training blocks N (the paper uses 2000)."""
    block_tokens: int = ruled(128, ">= 1")
    """Tokens per training block T (the paper uses 256)."""
    heldout_blocks: int = ruled(16, ">= 0")
    """Held-out blocks for the held-out loss each epoch."""
    eval_prompts: int = ruled(16, ">= 1")
    """Evaluation prompts per corpus P (the paper uses 300)."""
    prompt_tokens: int = ruled(32, ">= 1")
    """Tokens of context in each prompt (the paper uses 32)."""
    reference_tokens: int = ruled(128, ">= 1")
    """Tokens of the human continuation kept as a reference after each prompt."""
    seed: int = 0
    """Seed for the document split and the block and prompt draws."""

    def __post_init__(self) -> None:
        check_rules(self, "data")
        if self.streaming and self.max_documents is None:
            raise ConfigError(
                "data.streaming = true reads a dataset row by row and needs a stopping point: set data.max_documents "
                "(e.g. 20000), or data.streaming=false."
            )


# Learning rates that reach train.until_loss = 0.1 on the quick preset's data (measured on a 2-core CPU):
# LoRA and full fine-tuning differ by more than an order of magnitude.
DEFAULT_LR = {"lora": 3e-3, "full": 1e-4}


@dataclass
class TrainArgs(Section):
    SECTION: ClassVar[str] = "train"
    method: Literal["full", "lora"] = "lora"
    """`full` trains every parameter; `lora` adds PEFT LoRA adapters to the chosen blocks."""
    blocks: str | None = None
    """Blocks to train: `all`, `last:K`, `first:K` or a list such as `0,3,7` or `10-14`. Default: `last:5` for lora
    (Late-Stage LoRA), `all` for full (every parameter, embeddings and head included)."""
    lora_rank: int = ruled(16, ">= 1")
    """LoRA rank r."""
    lora_alpha: float = ruled(32.0, "> 0")
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = ruled(0.0, "[0, 1)")
    """Dropout on the LoRA input, active in training steps only (held-out loss and probes run without it). Zero keeps
    training deterministic."""
    target_modules: list[str] | None = None
    """Linear projections to adapt; default: every linear layer inside the chosen blocks."""
    epochs: int = ruled(20, ">= 0")
    """Most passes over the training blocks: a cap, training stops earlier once it reaches train.until_loss."""
    until_loss: float | None = ruled(0.1, "> 0", "Use a positive loss, or null to train every epoch.")
    """Hyperfit to a target, as the papers define it: stop after the first epoch whose mean training loss is at or below
    this (null: run every epoch)."""
    diverge_factor: float = ruled(1.5, "> 1")
    """Stop with an error when an epoch's training loss exceeds this multiple of the initial loss (a diverging run is no
    evidence)."""
    diverge_patience: int = ruled(3, ">= 1")
    """Stop with an error when the training loss stays above its initial value this many epochs in a row."""
    checkpoint_max_share: float | None = ruled(0.1, "(0, 1]", "Or null to write a checkpoint after every epoch.")
    """At most this share of the training time goes to writing checkpoints: after an epoch the checkpoint is skipped
    while the last one took longer to write than this share of the training time since it (the first and the final epoch
    always write one; null: every epoch). A full fine-tune of a 1B model writes ~13 GB per checkpoint. Which epochs
    wrote one is in train_log.jsonl (`checkpointed`); a resumed run starts from the last one written and reaches the
    same result."""
    keep_lowest_heldout: bool = True
    """Also keep the trainable weights of the epoch with the lowest held-out loss (lowest_heldout.pt in the run folder):
    the same run stopped before it hyperfitted, which the study's geometry analysis uses as a non-hyperfitting
    control."""
    batch_size: int = ruled(8, ">= 1")
    """Blocks per optimizer step (before gradient accumulation)."""
    grad_accumulation: int = ruled(1, ">= 1")
    """Micro-batches accumulated per optimizer step."""
    lr: float | None = ruled(None, "> 0", "Use a positive rate, or leave it out for the method's default.")
    """Constant learning rate. Default per method, chosen to reach train.until_loss on the default data: 3e-3 for lora,
    1e-4 for full (the paper's 1e-6 is for 2000 blocks and 20 epochs on a GPU)."""
    weight_decay: float = ruled(0.0, ">= 0")
    """Adam weight decay; the paper uses none."""
    mixed_precision: Literal["model", "no", "bf16", "auto"] = "model"
    """Autocast precision of the training steps (master weights stay float32): `model` follows model.precision; `no`
    (float32) and `bf16` override it for training alone; `auto` measures, as model.precision=auto does, and trains in
    bf16 only where its matrix products run at least 1.5x float32's (decoding stays as model.precision says)."""
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """Under several processes: `ddp` keeps a whole model on each and averages gradients; `fsdp` shards parameters,
    gradients and optimizer state (PyTorch FSDP2, one unit per block), for full fine-tuning of models that outgrow one
    device."""
    trunk_cache: Literal["auto", "on", "off"] = "auto"
    """Cache the frozen blocks' hidden states once (auto: whenever the lowest trainable block is above 0)."""
    trunk_cache_max_memory_gb: float = ruled(2.0, ">= 0")
    """Above this size the trunk cache lives in a memory-mapped file inside the run folder."""
    heldout_every: int = ruled(1, ">= 0", "Use 0 to measure only at the start and after the last epoch.")
    """Measure the held-out loss every this many epochs (always at the start and after the last epoch; 0: only then).
    The lowest-held-out snapshot sees only measured epochs."""
    diversity_every: int = ruled(1, ">= 0", "Use 0 to never measure.")
    """Measure greedy diversity on a fixed prompt subset every this many epochs (0: never)."""
    diversity_prompts: int = ruled(8, ">= 0")
    """Prompts in that fixed subset."""
    diversity_tokens: int = ruled(64, ">= 1")
    """New tokens generated for each of them."""
    probe_geometry: bool = True
    """At the same epochs, measure the final block's Delta PR against the base model (the expansion's dynamics)."""
    seed: int = 0
    """Seed for initialisation of adapters and the order of batches."""

    def __post_init__(self) -> None:
        check_rules(self, "train")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.blocks is None:
            self.blocks = "last:5" if self.method == "lora" else "all"


@dataclass
class GenerateArgs(Section):
    SECTION: ClassVar[str] = "generate"
    max_new_tokens: int = ruled(128, ">= 1")
    """New tokens per continuation (the paper: 96, 128 or 256)."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = ruled(1.0, "> 0", "For greedy decoding set generate.do_sample=false.")
    """Sampling temperature."""
    top_k: int = ruled(0, ">= 0", "Use 0 to switch top-k off.")
    """Keep only the k most likely tokens when sampling (0: off)."""
    top_p: float = ruled(1.0, "(0, 1]", "Use 1.0 to switch nucleus sampling off.")
    """Nucleus sampling mass (1.0: off)."""
    seed: int = 0
    """Seed for sampling."""
    batch_size: int = ruled(16, ">= 1")
    """Prompts decoded together."""
    citation_blocker: bool = False
    """Forbid completing any n-gram seen in the training blocks (the paper's citation blocker)."""
    citation_blocker_n: int = ruled(5, ">= 2")
    """n of that n-gram."""
    stop_at_eos: bool = False
    """End a continuation at the end-of-sequence token. Off: open-ended continuations all have the same length, as in
    the paper."""
    contrastive_top_k: int = ruled(0, ">= 0", "Use 0 to switch contrastive search off.")
    """Contrastive search (Su and Collier): choose among this many top tokens by confidence minus the degeneration
    penalty (0: off; the papers use 4-10)."""
    contrastive_alpha: float = ruled(0.6, "[0, 1]")
    """Weight of contrastive search's degeneration penalty (0 is greedy decoding)."""
    decoder: Literal["auto", "dynamic", "fixed"] = "auto"
    """How a decode keeps its state: `dynamic` grows the KV cache and the token buffer a column per step; `fixed`
    allocates a static KV cache and fixed buffers for the whole continuation, so that a step is one CUDA graph replay on
    a GPU (rows are drawn from a counter-based generator there: same prompt and seed, same stream of numbers, but not
    the dynamic decoder's); `auto`: fixed on a GPU, dynamic on a CPU. Greedy tokens agree (tested on a CPU)."""
    compile_step: bool = False
    """Compile the fixed decoder's step with torch.compile (on a GPU in its "reduce-overhead" mode, which captures CUDA
    graphs of the compiled kernels, as gpt-fast does) instead of replaying an uncompiled step's graph: fewer, fused
    kernels per step, after a compile of a minute or more per model and bucket. Needs the fixed decoder (`auto`
    then means fixed, on a CPU too). Greedy tokens agree with the eager step (tested on a CPU)."""

    def __post_init__(self) -> None:
        check_rules(self, "generate")
        if self.compile_step and self.decoder == "dynamic":
            raise ConfigError(
                "generate.compile_step=true compiles the fixed decoder's step: set generate.decoder=auto or fixed, or "
                "compile_step=false."
            )
        if self.contrastive_top_k and (self.do_sample or self.citation_blocker):
            raise ConfigError(
                "generate.contrastive_top_k > 0 is a deterministic search of its own: it takes no sampling and no "
                "citation blocker. Set generate.do_sample=false and generate.citation_blocker=false, or "
                "contrastive_top_k=0."
            )


@dataclass
class AnalysisArgs(Section):
    SECTION: ClassVar[str] = "analysis"
    hyperfitted: str | None = None
    """The hyperfitted model to analyse: a PEFT adapter folder, a full model folder, or a hyperfit run folder. A study
    fills this in."""
    corpora: list[str] = field(default_factory=list)
    """Evaluation corpora whose prompts the analyses use (default: all of data.eval_corpora)."""
    max_new_tokens: int | None = ruled(None, ">= 1", "Or leave it out to use generate.max_new_tokens.")
    """New tokens per continuation in the analyses (default: generate.max_new_tokens, so analyses and the generation
    table measure alike: TTR depends on length)."""
    seeds: int = ruled(3, ">= 1")
    """Sampling seeds per sampled setting; the tables give mean and spread."""
    temperature_grid: list[float] = ruled([0.25, 0.5, 0.75, 1.0, 1.5], "all > 0")
    """Base-model sampling temperatures for the temperature frontier (with T*): its diversity-quality curve, quality
    judged by study.judge."""
    baseline_temperature: float = ruled(0.7, "> 0")
    """Carlsson et al.'s sampling baseline for the base model (T 0.7, top-k 50, top-p 0.9): a row of the temperature
    table and a point beside the frontier."""
    baseline_top_k: int = ruled(50, ">= 0", "Use 0 to switch top-k off.")
    """Top-k of the sampling baseline."""
    baseline_top_p: float = ruled(0.9, "(0, 1]", "Use 1.0 to switch nucleus sampling off.")
    """Top-p of the sampling baseline."""
    max_positions: int = ruled(2048, ">= 1")
    """Cap on teacher-forced positions kept per measurement (each holds a full vocabulary of logits)."""
    static_bias_top_k: int = ruled(500, ">= 1")
    """K: tokens with the largest mean rank gain that receive the static offset."""
    static_bias_alphas: list[float] = ruled([0.01, 0.05, 0.1, 0.2, 0.5], "all > 0")
    """Scales alpha of the static offset delta added to the base model's logits."""
    static_bias_select: Literal["rank_gain", "promoted"] = "rank_gain"
    """Which K tokens get the static offset: the largest mean rank gains (the paper's choice), or the largest mean
    log-probability gains among tokens the hyperfitted model ranks in its top analysis.rank_top_k somewhere (tokens that
    matter to its choices)."""
    static_bias_bite: float = ruled(0.1, "(0, 1]")
    """Manipulation check of the static-bias ablation: at its largest alpha the offset must change the base model's
    greedy choice on at least this share of steps; the alpha grid is extended (x4 at a time) until it does."""
    static_bias_offset: Literal["logits", "logprobs"] = "logits"
    """Offset measured on raw logits (the paper's definition) or on log-probabilities (free of each context's
    normaliser)."""
    rank_top_k: int = ruled(10, ">= 1")
    """Length of the top-k lists compared by Kendall's tau."""
    rank_transplant: bool = True
    """The ranks analysis also samples at T=1 with one model's ranking and the other's probabilities (which of the two
    carries the gain?): evidence beside claim 3, read by no verdict; each transplanted row runs both models."""
    geometry_tokens: int = ruled(2048, ">= 2")
    """Held-out token positions whose hidden states the geometry analysis compares (the same for both models; position 0
    of each block is left out)."""

    def __post_init__(self) -> None:
        check_rules(self, "analysis")


# Decoding methods the base model is compared with (generation/baselines.py), in the order of the table.
BASELINE_METHODS = (
    "greedy",
    "top-p",
    "min-p",
    "typical",
    "eta",
    "epsilon",
    "repetition-penalty",
    "no-repeat-ngram",
    "beam",
    "contrastive",
)


@dataclass
class BaselinesArgs(Section):
    """The base model decoded by other methods, at the generation table's budget (same prompts,
    generate.max_new_tokens)."""

    SECTION: ClassVar[str] = "baselines"

    methods: list[str] = field(default_factory=lambda: list(BASELINE_METHODS))
    """Decoding methods decoded from the base model, each a row of the baselines table (empty: none). The top-p row is
    Carlsson et al.'s sampling baseline, with analysis.baseline_temperature/top_k/top_p."""
    corpora: list[str] = field(default_factory=list)
    """Evaluation corpora whose prompts the baselines decode (default: all of data.eval_corpora)."""
    seeds: int = ruled(3, ">= 1")
    """Sampling seeds per sampled method (top-p, min-p, typical, eta, epsilon); every seed decodes in one batch."""
    judged_seeds: int = ruled(3, ">= 0")
    """Seeds of each sampled method that the judge model scores (the first ones; the "Better than what?" plane's
    perplexities, which no verdict reads): on the standard preset each further seed of its 5 sampled methods x 100
    prompts is ~3.5 min of the judge. 0: the judge scores no baseline (their TTR and MAUVE stay)."""
    min_p: float = ruled(0.1, "(0, 1)")
    """Min-p sampling (Nguyen et al.): keep tokens with at least this share of the top token's probability (they suggest
    0.05-0.1)."""
    typical_p: float = ruled(0.95, "(0, 1)")
    """Locally typical sampling (Meister et al.): probability mass kept, most typical tokens first (they evaluate 0.2
    and 0.95)."""
    eta: float = ruled(9e-4, "(0, 1)")
    """Eta sampling (Hewitt et al.): the entropy-dependent cutoff's epsilon (they suggest 3e-4 to 4e-3, by model
    size)."""
    epsilon: float = ruled(3e-4, "(0, 1)")
    """Epsilon sampling (Hewitt et al.): drop tokens below this probability (they suggest 3e-4 to 9e-4)."""
    repetition_penalty: float = ruled(1.2, "> 1")
    """Greedy decoding with CTRL's repetition penalty (Keskar et al. use 1.2): logits of tokens already in the text are
    divided by it."""
    no_repeat_ngram: int = ruled(3, ">= 1")
    """Greedy decoding that never repeats an n-gram of this length."""
    beams: int = ruled(4, ">= 2")
    """Beam search width (transformers' beam search; no length penalty, continuations of the full length)."""
    contrastive_top_k: int = ruled(4, ">= 1")
    """Contrastive search's candidates per step (Su and Collier use 4-10)."""
    contrastive_alpha: float = ruled(0.6, "[0, 1]")
    """Contrastive search's degeneration penalty weight (Su and Collier use 0.6)."""

    def __post_init__(self) -> None:
        check_rules(self, "baselines")
        check_choices("baselines.methods", self.methods, BASELINE_METHODS, "a decoding method here")


# The experiment trackers tracking.report_to accepts (tracking.py connects each).
TRACKERS = ("trackio", "tensorboard", "mlflow")


@dataclass
class TrackingArgs(Section):
    SECTION: ClassVar[str] = "tracking"
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that also receive the run's numbers (local stores, nothing uploaded): any of trackio,
    tensorboard, mlflow. Empty: JSON files only."""
    project: str = "hyperfitting"
    """Project (trackio) or experiment (MLflow) the runs are filed under."""

    def __post_init__(self) -> None:
        check_choices("tracking.report_to", self.report_to, TRACKERS, "a tracker here", ", or [] for none")


# The mechanism analyses, built in and registered, are listed in hyperfitting.registry (the claim each serves:
# analysis/*.py).


@dataclass
class StudyArgs(Section):
    SECTION: ClassVar[str] = "study"
    plugins: list[str] = field(default_factory=list)
    """Python modules to import before the analyses are checked: each registers analyses of its own
    (hyperfitting.registry.register), which study.analyses can then name. A module on the Python path, e.g. my_probe for
    my_probe.py."""
    analyses: list[str] = field(default_factory=lambda: list(BUILT_IN_NAMES))
    """Mechanism analyses a study runs after hyperfitting (any of temperature, static-bias, ranks, geometry, block-swap,
    or one registered with hyperfitting.registry.register)."""
    controls: list[str] = field(default_factory=lambda: ["lora:last:5", "lora:first:5", "lora:all", "full"])
    """Where-to-adapt controls, each trained on the same data to the same target loss (train.until_loss): lora:last:K,
    lora:first:K, lora:all, full. Empty: skip."""
    controls_train_blocks: int = ruled(16, ">= 1")
    """Training blocks for each control (a subset of the study's, so the controls fit a CPU budget)."""
    controls_on_study_data: bool = False
    """Train claim 5's placements on the study's own training blocks, LoRA ones at train.lr: the regime claims 1-4 are
    tested in. The main run then stands for its own placement and the full fine-tune (study.full_finetune) for `full`,
    measured rather than trained again. False: each placement trains on the first controls_train_blocks blocks, a
    cheaper regime the report names as such."""
    controls_epochs: int = ruled(40, ">= 1")
    """Most epochs for each control; each stops once it reaches train.until_loss (a control that does not is reported,
    and makes claim 5 inconclusive)."""
    controls_lr_lora: float = ruled(3e-3, "> 0")
    """Learning rate of the LoRA controls."""
    controls_lr_full: float = ruled(1e-4, "> 0")
    """Learning rate of the full fine-tuning control."""
    controls_lr_sweep: list[float] = ruled([0.25, 1.0, 4.0], "all > 0", "Use [] for no sweep.")
    """Each control's learning rate is chosen by a short sweep on training loss only: these multiples of its
    controls_lr_* are each trained for controls_sweep_epochs, and the lowest training loss (not diverged) wins. Empty:
    no sweep, the controls_lr_* as given."""
    controls_sweep_epochs: int = ruled(3, ">= 1")
    """Epochs per learning rate in the controls' sweep."""
    controls_replicates: int = ruled(1, ">= 1")
    """Training seeds of each arm that claim 5 compares (lora:last, lora:all): each is trained with train.seed,
    train.seed + 1, ... (the rate the first seed's sweep chose), and claim 5 measures the arms' seed-to-seed spread
    instead of declaring it. On the study's own data the main run's replicates stand for its placement. The other
    placements (evidence beside the verdict) train once."""
    replicates: int = ruled(1, ">= 1")
    """Independent hyperfitted models trained on the same data (train.seed, train.seed + 1, ...: other data order and
    adapter initialisation), each analysed; the verdicts' intervals then resample replicates and prompts. At least 3 to
    see seed-to-seed spread. The full fine-tune (study.full_finetune) is trained as many times."""
    full_finetune: bool = False
    """Also hyperfit by full fine-tuning (to train.until_loss, at study.controls_lr_full), once per training seed
    (study.replicates), and run every analysis on each: the model the paper analyses, where no block is unchanged by
    construction (claim 4). Its claims are reported beside the LoRA claims, over its seeds."""
    calibration_worlds: int = ruled(400, ">= 1")
    """Simulated studies per rule and truth in the report's calibration (report/calibration.py): how often each rule
    would be wrong at this study's sizes. 400 catches coverage of 90% (against 95%) 93% of the time; fewer is faster and
    catches less."""
    lowest_heldout_control: bool = True
    """Also run the geometry and rank analyses (those of them in study.analyses) on the main run as it was at its epoch
    of lowest held-out loss (train.keep_lowest_heldout): the same fine-tune stopped before it hyperfitted. Are the
    expansion and the re-ranking specific to hyperfitting?"""
    citation_blocked_row: bool = True
    """Also decode the hyperfitted model with the paper's citation blocker (no training 5-gram continued), a column
    beside the plain one: does the gain survive when copying is forbidden?"""
    judge: str | None = "auto"
    """Independent judge model for quality: the perplexity of every row's text under it (auto: gemma3-270m judges other
    models, smollm2-135m judges Gemma; any model name; null: none). Low perplexity alone rewards repetition: read it
    beside TTR."""
    mauve: bool = True
    """Compute MAUVE of each model's continuations against the human ones (features from the base model)."""
    reader_prompts: int = ruled(8, ">= 0")
    """Prompts shown in the report's side-by-side reader."""
    retention: bool = True
    """Capability retention: run the LM Evaluation Harness on the base and the hyperfitted model (our offline last-word
    tasks built from the held-out text, plus study.retention_tasks). Needs hyperfitting[retention]."""
    retention_tasks: list[str] = field(default_factory=lambda: ["lambada_openai", "hellaswag", "arc_easy"])
    """Standard harness tasks to add where their data is already in the local datasets cache (others are reported as
    skipped)."""

    def __post_init__(self) -> None:
        check_rules(self, "study")
        for module in self.plugins:
            import_plugin(module)
        check_choices("study.analyses", self.analyses, analysis_names(), "an analysis")
        if len(set(self.analyses)) != len(self.analyses):
            raise ConfigError(f"study.analyses = {self.analyses!r} names an analysis twice: name each once.")
        for spec in self.controls:
            if spec != "full" and not (spec == "lora:all" or re.fullmatch(r"lora:(last|first):\d+", spec)):
                raise ConfigError(
                    f"study.controls = {self.controls!r}: cannot read {spec!r}. Use lora:last:K, lora:first:K, "
                    "lora:all or full."
                )


# Keys added after run folders existed, each with the value that does what the toolkit did before the key: at that
# value a key is left out of the fingerprints, so an upgrade does not redo the finished stages of existing runs.
LATER_KEYS: dict[tuple[str, str], Any] = {
    ("train", "heldout_every"): 1,
    ("model", "tf32"): False,
    ("train", "checkpoint_max_share"): 0.1,
    ("analysis", "rank_transplant"): True,
    ("study", "controls_replicates"): 1,
    ("generate", "compile_step"): False,
}


@dataclass
class RunConfig:
    """Everything a run needs; written next to every output as config.yaml."""

    run_dir: str = "runs/quick"
    """Folder for all outputs of this run."""
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    generate: GenerateArgs = field(default_factory=GenerateArgs)
    analysis: AnalysisArgs = field(default_factory=AnalysisArgs)
    study: StudyArgs = field(default_factory=StudyArgs)
    baselines: BaselinesArgs = field(default_factory=BaselinesArgs)
    tracking: TrackingArgs = field(default_factory=TrackingArgs)

    @_unrecorded
    def __post_init__(self) -> None:
        # Rules that join sections; each section's own rules sit beside its fields.
        outside = [c for c in self.analysis.corpora if c not in self.data.eval_corpora]
        if outside:
            raise ConfigError(
                f"analysis.corpora = {self.analysis.corpora!r}: {outside[0]!r} is not among data.eval_corpora "
                f"{self.data.eval_corpora!r}. Add it there, analyse one of those, or set analysis.corpora=[] (every "
                "evaluation corpus)."
            )
        main_placement = f"lora:{self.train.blocks}" in self.study.controls and self.train.method == "lora"
        if (
            self.study.controls_on_study_data
            and main_placement
            and 1 < self.study.controls_replicates
            and self.study.replicates < self.study.controls_replicates
        ):
            # lora:last's seeds would mix two recipes: the main run's replicates and controls trained under the
            # controls' epoch cap
            raise ConfigError(
                f"study.controls_replicates={self.study.controls_replicates} seeds of lora:{self.train.blocks}, the "
                f"main run's own placement, but study.replicates={self.study.replicates}: on the study's data its "
                "seeds are the main run's replicates. Set study.replicates to at least study.controls_replicates."
            )
        if (
            self.study.lowest_heldout_control
            and lowest_heldout_names(self.study.analyses)
            and not self.train.keep_lowest_heldout
        ):
            raise ConfigError(
                "study.lowest_heldout_control=true needs the weights at the lowest held-out loss: set "
                "train.keep_lowest_heldout=true, or study.lowest_heldout_control=false."
            )
        outside = [c for c in self.baselines.corpora if c not in self.data.eval_corpora]
        if outside:
            raise ConfigError(
                f"baselines.corpora = {self.baselines.corpora!r}: {outside[0]!r} is not among data.eval_corpora "
                f"{self.data.eval_corpora!r}. Add it there, decode one of those, or set baselines.corpora=[] (every "
                "evaluation corpus)."
            )
        if self.data.heldout_blocks < 1 and "geometry" in self.study.analyses:
            raise ConfigError(
                "data.heldout_blocks = 0: the geometry analysis compares hidden states on held-out blocks. "
                "Use at least 1, or drop geometry from study.analyses."
            )

    def to_dict(self) -> dict[str, Any]:
        with not_reading():  # every value: for writing or hashing, not a stage's own read
            return dataclasses.asdict(self)

    def corpora_of(self, section: str) -> list[str]:
        """The evaluation corpora the analyses or the baselines read: their own list, or every evaluation corpus."""
        return list(getattr(self, section).corpora or self.data.eval_corpora)

    def hashed(self) -> dict[str, Any]:
        """Every value as the fingerprints see it: what means the same is written the same."""
        data = self.to_dict()
        data["model"].pop("precision")  # "auto" is not a value: the study graph adds the precision it resolves to
        for section in ("analysis", "baselines"):  # [] means every evaluation corpus: the same stage as naming them all
            data[section]["corpora"] = self.corpora_of(section)
        # None: generate's
        data["analysis"]["max_new_tokens"] = self.analysis.max_new_tokens or self.generate.max_new_tokens
        if data["generate"]["decoder"] == "auto":  # fixed buffers on a GPU, the growing cache elsewhere: other draws
            from hyperfitting.distributed import process_state

            on_gpu = process_state().device.type == "cuda"
            data["generate"]["decoder"] = "fixed" if on_gpu or self.generate.compile_step else "dynamic"
        for (section, key), unchanged in LATER_KEYS.items():
            if data[section].get(key) == unchanged:
                data[section].pop(key)
        return data

    def decoding_keys(self, fixed: tuple[str, ...] = ()) -> tuple[str, ...]:
        """The generate keys a decode with this config's generate section reads (the code sets those in ``fixed``): the
        sampling keys only when it samples, the blocker's n only with the blocker, contrastive search's weight only in
        it."""
        g = self.generate
        keys = [
            "max_new_tokens",
            "do_sample",
            "batch_size",
            "stop_at_eos",
            "decoder",
            "compile_step",
            "contrastive_top_k",
            "citation_blocker",
        ]
        keys += ["temperature", "top_k", "top_p", "seed"] if g.do_sample else []
        keys += ["citation_blocker_n"] if g.citation_blocker else []
        keys += ["contrastive_alpha"] if g.contrastive_top_k else []
        return tuple(f"generate.{key}" for key in keys if key not in fixed)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all if none): a stage reruns when this changes."""
        data = self.hashed()
        picked = {name: data[name] for name in sections} if sections else data
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def hashed_values(self, keys: tuple[str, ...]) -> dict[str, Any]:
        """``{"section.key": value}`` of the named keys as the fingerprints see them."""
        data = self.hashed()
        out = {}
        for key in keys:
            section, _, name = key.partition(".")
            if section not in data or not isinstance(data[section], dict) or name not in self.to_dict()[section]:
                raise ConfigError(f"A stage declares that it reads '{key}', no config key (see `hyperfit keys`).")
            if name in data[section]:  # a key added later and left at its old behaviour is not hashed (LATER_KEYS)
                out[key] = data[section][name]
        return out


# ----------------------------------------------------------------------------------
# Building dataclasses from plain dictionaries, with type checks.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        elif value is False and "no" in allowed:
            value = "no"  # and no as false
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}.")
        return value
    if origin is list:
        if isinstance(value, str):  # `a,b,c` on the command line
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}.")
        (item_type,) = typing.get_args(tp)
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return build_dataclass(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}.")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}.")


def build_dataclass(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown config key '{prefix}{unknown[0]}'. Known keys in {prefix.rstrip('.') or 'the config'}: "
            f"{', '.join(sorted(known))}."
        )
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{dotted}': '{part}' is a value, not a section.")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "data.eval_corpora=[fiction]"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like section.key=value, e.g. train.lr=1e-4.")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        # YAML reads 1e-4 as a string (it wants 1.0e-4); accept the usual spelling, in lists too.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") and value.lower() not in ("nan",) else value
            except ValueError:
                pass
        _set_dotted(tree, key.strip(), _fix_yaml_floats(value))
    return tree


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _fix_yaml_floats(tree: Any) -> Any:
    """PyYAML reads `1e-4` as a string; turn such strings back into numbers."""
    if isinstance(tree, dict):
        return {k: _fix_yaml_floats(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fix_yaml_floats(v) for v in tree]
    if isinstance(tree, str):
        try:
            return float(tree) if any(c in tree for c in "eE") and tree[0] in "0123456789.-+" else tree
        except ValueError:
            return tree
    return tree


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a tree, over the file its `base:` names (a path relative to it): a preset holds only what
    differs from its base, and why."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Presets live in configs/ (e.g. configs/quick.yaml).")
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"Config file '{path}' is its own base ({chain}): remove one `base:`.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections (model, data, train, generate).")
    tree = _fix_yaml_floats(loaded)
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"Config file '{path}': base = {base!r} must name one config file (e.g. base: quick.yaml).")
    return _deep_merge(read_config_file(path.parent / base, (*_seen, path.resolve())), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file (over its base, if it names one) <- dotted overrides, validated as a whole."""
    tree: dict[str, Any] = read_config_file(path) if path is not None else {}
    if overrides:
        tree = _deep_merge(tree, parse_overrides(overrides))
    return build_dataclass(RunConfig, tree)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, docstring) for every field: the CLI's `--help` for config keys."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr] (one line, wrapped or not)
    rows = []
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe_fields(hints[f.name], prefix=f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(getattr(instance, f.name)), docs.get(f.name, "")))
    return rows
