"""The mechanism analyses as stages of a run folder, sharing one pair of models and one set of greedy paths."""

from __future__ import annotations

import time
from functools import cached_property

from hyperfitting.analysis.common import decode, load_pair
from hyperfitting.config import RunConfig
from hyperfitting.data.splits import PreparedData
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.rundir import is_main_process, read_json

ANALYSES = ("temperature", "static-bias", "ranks", "geometry")



class AnalysisContext:
    """Base and hyperfitted models, the analysis prompts and each model's greedy continuations (decoded once)."""

    def __init__(self, config: RunConfig, data: PreparedData, models=None):
        self.config = config
        self.data = data
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


def analysis_stage(graph: StageGraph, name: str, context: AnalysisContext, suffix: str = "") -> dict:
    """Run one analysis into stage `analysis-NAME{suffix}` of ``graph`` (`-rK` for replicate K, `-full` for full fine-tuning) unless done with the same inputs."""
    from hyperfitting.analysis.ranks import run_rank_analysis
    from hyperfitting.analysis.static_bias import run_static_bias_analysis
    from hyperfitting.analysis.temperature import run_temperature_analysis

    stage_name = f"analysis-{name}{suffix}"
    config = graph[stage_name].config
    stage = graph.stage(stage_name)
    if stage.done:
        return read_json(stage.dir / "results.json")
    graph.announce(stage_name)
    started = time.perf_counter()
    folder = stage.start()
    if name == "temperature":
        results = run_temperature_analysis(context.base, context.tuned, context.tokenizer, context.prompts,
                                           context.data.heldout_blocks, config, folder)
    elif name == "static-bias":
        results = run_static_bias_analysis(context.base, context.tuned, context.tokenizer, context.prompts,
                                           context.data.heldout_blocks, config, folder, context.base_greedy, context.tuned_greedy,
                                           context.heldout_static)
    elif name == "geometry":
        from hyperfitting.analysis.geometry import run_geometry_analysis

        results = run_geometry_analysis(context.base, context.tuned, context.data.heldout_blocks, config.analysis.geometry_tokens,
                                        folder, seed=config.data.seed)
    elif name == "ranks":
        results = run_rank_analysis(context.base, context.tuned, context.tokenizer, context.prompts, config, folder, context.tuned_greedy,
                                    context.data.heldout_blocks, context.heldout_static)
    else:
        raise ValueError(name)
    if is_main_process():  # only process 0 writes files: another process could read the table before it exists
        print((folder / "table.md").read_text())
    stage.finish(time.perf_counter() - started)
    return results
