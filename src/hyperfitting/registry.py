"""The analyses a study can run: one entry each, built in or registered by the user.

An entry says everything the rest of the toolkit needs to know about an analysis: its name (also
its stage folder, `analysis-NAME`), the claims it feeds, how to run it on an `AnalysisContext`,
how to write its outputs, its report section and figure, and its cost. The study graph, the
dry-run plan, the progress estimate, the report and metrics.json all read this table, so an
analysis of one's own is one file:

    from hyperfitting.registry import Analysis, register

    def run(context):                      # the base and hyperfitted models, prompts, greedy paths, data
        return {"prompts": len(context.prompts)}

    def write(results, folder):            # results.json is written for you; add a table.md, a figure
        (folder / "table.md").write_text(f"{results['prompts']} prompts\\n")

    register(Analysis("my-probe", "My probe", run=run, write=write))

and `study.plugins=[my_probe] study.analyses=[..., my-probe]` (the module is imported before the config is checked). The
built-in entries name their functions as "module:function" strings, resolved on first use, so that reading this table
(config validation does) imports no model code.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from hyperfitting.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from hyperfitting.config import RunConfig


class Context(Protocol):
    """What an analysis is given (pipeline/analyses.py: AnalysisContext builds it once per trained model)."""

    config: RunConfig
    data: Any  # PreparedData: training and held-out blocks, prompts per corpus
    base: Any
    tuned: Any
    tokenizer: Any
    prompts: list[list[int]]
    control: bool  # the run at its lowest held-out loss, not a hyperfitted model: only the comparison is needed
    base_greedy: Any
    tuned_greedy: Any
    heldout_static: Any


@dataclass(frozen=True)
class Analysis:
    """One analysis a study can run: what it is called, how it runs, how it is shown and what it costs."""

    name: str
    """Also the stage folder (`analysis-NAME`, `analysis-NAME-r1`, ...) and the key in metrics.json's `analyses`."""
    title: str
    """The report section's heading."""
    run: Callable[[Context], dict] | str
    """The analysis on one context: its results, JSON-ready; nothing written."""
    write: Callable[[dict, Path], None] | str | None = None
    """Writes table.md and figures into the stage folder (results.json is written by the stage either way)."""
    claims: tuple[str, ...] = ()
    """The claims whose verdicts read its results (hyperfitting/claims/), for the plan and the report."""
    figure: str | None = None
    """A figure inside the stage folder, shown under its table in the report."""
    weight: float = 60.0
    """Seconds it takes at the quick preset's size on a 2-core CPU: only the proportions matter (the progress
    estimate)."""
    scale: Callable[[RunConfig, bool], float] | str | None = None
    """Its cost relative to the quick preset under a config (and whether it is a later replicate); default: the tokens
    analysed."""
    lowest_heldout: bool = False
    """Also run on the main run at its lowest held-out loss (study.lowest_heldout_control): the non-hyperfitting
    control."""
    summary: str = ""
    """One line for `hyperfit analyze --help` and the plan."""
    reads: Callable[[RunConfig], tuple[str, ...]] | tuple[str, ...] | None = None
    """The config keys it reads beside the model and the data, or a function of the config that says them: a section
    by its name (`generate`) or one key (`analysis.seeds`). Its stages' fingerprints hash exactly these, so a change of
    any other key reuses them (tests/test_fingerprints.py holds the built-in entries to what they read). None: the
    generate and analysis sections whole."""
    libraries: tuple[str, ...] = ()
    """Distributions beside torch, transformers, peft and accelerate whose code computes its numbers: their versions
    are hashed into its stages' fingerprints."""

    def run_on(self, context: Context) -> dict:
        return _resolve(self.run)(context)

    def write_to(self, results: dict, folder: Path) -> None:
        if self.write is not None:
            _resolve(self.write)(results, folder)

    def read_keys(self, config: RunConfig) -> tuple[str, ...]:
        if self.reads is None:
            return ("generate", "analysis")
        return self.reads(config) if callable(self.reads) else self.reads

    def source_files(self) -> tuple[Path, ...]:
        """The files of a registered analysis's functions, hashed into its stages' fingerprints: editing a plug-in
        reruns its stages on --resume (the built-in analyses are covered by the package's version)."""
        import inspect
        from pathlib import Path

        files = {
            Path(inspect.getsourcefile(f))
            for f in (self.run, self.write, self.scale)
            if callable(f) and inspect.getsourcefile(f)
        }
        return tuple(sorted(files))

    def cost(self, config: RunConfig | None, later_replicate: bool = False) -> float:
        if config is None:
            return self.weight
        scale = _resolve(self.scale) if self.scale is not None else _analysed_tokens
        return self.weight * scale(config, later_replicate)


def _resolve(target: Callable | str) -> Callable:
    if callable(target):
        return target
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


# The quick preset's shape, to which the weights belong.
_QUICK_ANALYSED = 16 * 96  # prompts x new tokens


def _analysed_tokens(config: RunConfig, later_replicate: bool = False) -> float:
    d, a, g = config.data, config.analysis, config.generate
    return (
        d.eval_prompts
        * len(a.corpora or d.eval_corpora)
        * (a.max_new_tokens or g.max_new_tokens)
        * max(1, a.seeds)
        / _QUICK_ANALYSED
    )


def _temperature_scale(config: RunConfig, later_replicate: bool = False) -> float:
    # The grid, T*, T=1, the baseline and greedy; later replicates reuse the base model's rows.
    return (
        _analysed_tokens(config) * (len(config.analysis.temperature_grid) + 5) / 7 * (0.4 if later_replicate else 1.0)
    )


def _geometry_scale(config: RunConfig, later_replicate: bool = False) -> float:
    return config.analysis.geometry_tokens / 1024


def analysis_paths(config: RunConfig) -> tuple[str, ...]:
    """The keys of the analyses' decodes (analysis/common.py: decode sets length, sampling and blocker itself): what
    the analyses of one model share (pipeline/analyses.py: AnalysisContext), made by whichever runs first."""
    fixed = (
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "citation_blocker",
        "citation_blocker_n",
    )
    return config.decoding_keys(fixed=fixed) + ("analysis.corpora", "analysis.max_new_tokens")


def _reading(*keys: str) -> Callable[[RunConfig], tuple[str, ...]]:
    """A built-in analysis reads its greedy paths' keys and these."""
    return lambda config: analysis_paths(config) + keys


# the static models fitted on held-out text, shared too
_STATIC = (
    "analysis.static_bias_offset",
    "analysis.max_positions",
)

# Built in, in the order a study runs them. Weights: seconds each took alone in the quick preset on a 2-core CPU
# (fp32, commit be240e1; git history of BENCHMARKS.md).
BUILT_IN = (
    Analysis(
        "temperature",
        "Claim 1: temperature control",
        "hyperfitting.analysis.temperature:run",
        "hyperfitting.analysis.temperature:write_temperature_analysis",
        claims=("1", "1b", "1c"),
        figure="frontier.png",
        weight=103,
        scale=_temperature_scale,
        reads=_reading(
            "analysis.seeds",
            "analysis.temperature_grid",
            "analysis.baseline_temperature",
            "analysis.baseline_top_k",
            "analysis.baseline_top_p",
            "analysis.max_positions",
        ),
        summary="is it just temperature? entropy-matched sampling control and frontier",
    ),
    Analysis(
        "static-bias",
        "Claim 2: static-bias ablation",
        "hyperfitting.analysis.static_bias:run",
        "hyperfitting.analysis.static_bias:write_static_bias_analysis",
        claims=("2",),
        figure="static_bias.png",
        weight=50,
        reads=_reading(
            *_STATIC,
            "analysis.static_bias_top_k",
            "analysis.static_bias_alphas",
            "analysis.static_bias_select",
            "analysis.static_bias_bite",
            "analysis.rank_top_k",
        ),
        summary="is it a fixed reweighting of the vocabulary? z + alpha * delta",
    ),
    Analysis(
        "ranks",
        "Claim 3: rank reordering",
        "hyperfitting.analysis.ranks:run",
        "hyperfitting.analysis.ranks:write_rank_analysis",
        claims=("3",),
        figure="ranks.png",
        weight=80,
        lowest_heldout=True,
        reads=_reading(
            *_STATIC, "analysis.seeds", "analysis.rank_top_k", "analysis.rank_transplant", "generate.citation_blocker_n"
        ),
        summary="overrides, deep-tail tokens, context dependence, rank transplant",
    ),
    Analysis(
        "geometry",
        "Claim 4: layer-wise geometry",
        "hyperfitting.analysis.geometry:run",
        "hyperfitting.analysis.geometry:write_geometry_analysis",
        claims=("4",),
        figure="geometry.png",
        weight=38,
        scale=_geometry_scale,
        lowest_heldout=True,
        reads=lambda config: ("analysis.geometry_tokens",),
        summary="layer-wise dimension, cosine, L2, CKA, weight change: the Terminal Expansion",
        libraries=("scikit-dimension",),  # TwoNN
    ),
    Analysis(
        "block-swap",
        "Claim 4, causal test: the final block swapped",
        "hyperfitting.analysis.block_swap:run",
        "hyperfitting.analysis.block_swap:write_block_swap_analysis",
        claims=("4",),
        figure="block_swap.png",
        weight=60,
        reads=_reading(),
        summary="the final block swapped between the models: does it carry the effect?",
    ),
)
BUILT_IN_NAMES = tuple(a.name for a in BUILT_IN)

_ANALYSES: dict[str, Analysis] = {a.name: a for a in BUILT_IN}


def register(analysis: Analysis, replace: bool = False) -> Analysis:
    """Add an analysis a study can name in study.analyses (and `hyperfit analyze` can run)."""
    if analysis.name in _ANALYSES and not replace:
        raise ConfigError(
            f"An analysis named {analysis.name!r} is already registered; choose another name or pass replace=True."
        )
    if not analysis.name or not all(c.isalnum() or c == "-" for c in analysis.name):
        raise ConfigError(f"Analysis name {analysis.name!r}: use letters, digits and '-' (it names a folder).")
    if re.search(r"-(r\d+|full|lowest-heldout)$", analysis.name):
        raise ConfigError(
            f"Analysis name {analysis.name!r} ends like a replicate's, the full fine-tune's or the control's stage "
            "(-rK, -full, -lowest-heldout), whose folders it would share: choose another name."
        )
    _ANALYSES[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    if name in BUILT_IN_NAMES:
        raise ConfigError(f"{name!r} is built in and cannot be removed; leave it out of study.analyses instead.")
    _ANALYSES.pop(name, None)


def import_plugin(module: str) -> None:
    """Import a module that registers analyses (study.plugins): from the Python path, or the current folder."""
    import sys

    if "" not in sys.path and "." not in sys.path:
        sys.path.append(".")  # `hyperfit` is a script: the folder it is run from is not on its path by default
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"study.plugins names {module!r}, which cannot be imported ({error}). Give a module on the Python path "
            "(my_probe for ./my_probe.py, run from its folder) or install the package that holds it."
        ) from error


def analysis_names() -> tuple[str, ...]:
    return tuple(_ANALYSES)


def get_analysis(name: str) -> Analysis:
    try:
        return _ANALYSES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown analysis {name!r}; known: {', '.join(_ANALYSES)} (hyperfitting.registry.register adds one)."
        ) from None


def lowest_heldout_names(names) -> tuple[str, ...]:
    """Of ``names``, the analyses that also run on the lowest-held-out-loss control."""
    return tuple(n for n in names if n in _ANALYSES and _ANALYSES[n].lowest_heldout)
