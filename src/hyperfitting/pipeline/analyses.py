"""The mechanism analyses as stages of a run folder, sharing one pair of models and one set of greedy paths."""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

from hyperfitting.analysis.common import decode, load_pair
from hyperfitting.config import ANALYSES, RunConfig
from hyperfitting.data.splits import PreparedData
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.rundir import is_main_process, read_json


class AnalysisContext:
    """Base and hyperfitted models, the analysis prompts and each model's greedy continuations (decoded once)."""

    def __init__(self, config: RunConfig, data: PreparedData, models=None, control: bool = False):
        self.config = config
        self.data = data
        self.control = control  # the run before it hyperfitted: the analyses it feeds need only their comparison, not every row
        self.base, self.tuned, self.tokenizer = models or load_pair(config)
        corpora = config.analysis.corpora or list(data.prompts)
        missing = [c for c in corpora if c not in data.prompts]
        if missing:
            from hyperfitting.errors import ConfigError

            raise ConfigError(f"analysis.corpora names {missing}, which are not among data.eval_corpora {list(data.prompts)}.")
        self.prompts = [p.prompt_ids for c in corpora for p in data.prompts[c]]

    @cached_property
    def base_greedy(self):
        return decode(self.base, self.tokenizer, self.prompts, self.config, desc="base greedy")

    @cached_property
    def heldout_static(self):
        """Per-token statistics and the fitted static+temperature model, from one teacher-forced pass over held-out text."""
        from hyperfitting.analysis.static_bias import heldout_static_models

        return heldout_static_models(self.base, self.tuned, self.data.heldout_blocks, self.config)

    @cached_property
    def tuned_greedy(self):
        return decode(self.tuned, self.tokenizer, self.prompts, self.config, desc="hyperfitted greedy")


def run_analysis(name: str, context: AnalysisContext) -> dict:
    """One analysis on the context's models and prompts: its results, nothing written."""
    from hyperfitting.analysis.block_swap import block_swap_analysis
    from hyperfitting.analysis.geometry import geometry_analysis
    from hyperfitting.analysis.ranks import rank_analysis
    from hyperfitting.analysis.static_bias import static_bias_analysis
    from hyperfitting.analysis.temperature import temperature_analysis

    config, heldout = context.config, context.data.heldout_blocks
    if name == "temperature":
        return temperature_analysis(context.base, context.tuned, context.tokenizer, context.prompts, heldout, config)
    if name == "static-bias":
        return static_bias_analysis(context.base, context.tuned, context.tokenizer, context.prompts, heldout, config,
                                    context.base_greedy, context.tuned_greedy, context.heldout_static)
    if name == "ranks":
        return rank_analysis(context.base, context.tuned, context.tokenizer, context.prompts, config, context.tuned_greedy,
                             heldout, context.heldout_static, training_blocks=context.data.train_blocks, transplant=not context.control)
    if name == "geometry":
        return geometry_analysis(context.base, context.tuned, heldout, config.analysis.geometry_tokens, seed=config.data.seed)
    if name == "block-swap":
        return block_swap_analysis(context.base, context.tuned, context.tokenizer, context.prompts, config, context.base_greedy, context.tuned_greedy)
    raise ValueError(f"unknown analysis {name!r}; known: {', '.join(ANALYSES)}")


def write_analysis(name: str, results: dict, folder: Path) -> None:
    """results.json, table.md and the figure of one analysis."""
    from hyperfitting.analysis.block_swap import write_block_swap_analysis
    from hyperfitting.analysis.geometry import write_geometry_analysis
    from hyperfitting.analysis.ranks import write_rank_analysis
    from hyperfitting.analysis.static_bias import write_static_bias_analysis
    from hyperfitting.analysis.temperature import write_temperature_analysis

    writers = {"temperature": write_temperature_analysis, "static-bias": write_static_bias_analysis,
               "ranks": write_rank_analysis, "geometry": write_geometry_analysis, "block-swap": write_block_swap_analysis}
    writers[name](results, folder)


def analysis_stage(graph: StageGraph, name: str, context: AnalysisContext, suffix: str = "") -> dict:
    """Run one analysis into stage `analysis-NAME{suffix}` of ``graph`` (`-rK` for replicate K, `-full` for full fine-tuning) unless done with the same inputs."""
    stage_name = f"analysis-{name}{suffix}"
    stage = graph.stage(stage_name)
    if stage.done:
        return read_json(stage.dir / "results.json")
    graph.announce(stage_name)
    started = time.perf_counter()
    folder = stage.start()
    results = run_analysis(name, context)
    write_analysis(name, results, folder)
    if is_main_process():  # only process 0 writes files: another process could read the table before it exists
        print((folder / "table.md").read_text())
    stage.finish(time.perf_counter() - started)
    return results
