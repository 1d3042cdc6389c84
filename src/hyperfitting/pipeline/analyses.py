"""The mechanism analyses (hyperfitting.registry) as stages of a run folder, sharing one pair of models and one set of
greedy paths."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hyperfitting.analysis.common import decode, load_pair
from hyperfitting.config import RunConfig, shared
from hyperfitting.data.splits import PreparedData
from hyperfitting.pipeline.graph import StageGraph
from hyperfitting.layout import analysis_stage_name
from hyperfitting.registry import get_analysis
from hyperfitting.rundir import is_main_process, read_json, write_json


class AnalysisContext:
    """Base and hyperfitted models, the analysis prompts and each model's greedy continuations (decoded once)."""

    def __init__(self, config: RunConfig, data: PreparedData, models=None, control: bool = False):
        self.config = config
        self.data = data
        self.control = (
            control  # the run before it hyperfitted: the analyses it feeds need only their comparison, not every row
        )
        self.base, self.tuned, self.tokenizer = models or load_pair(config)
        corpora = config.analysis.corpora or list(data.prompts)
        missing = [c for c in corpora if c not in data.prompts]
        if missing:
            from hyperfitting.errors import ConfigError

            raise ConfigError(
                f"analysis.corpora names {missing}, which are not among data.eval_corpora {list(data.prompts)}."
            )
        self.prompts = [p.prompt_ids for c in corpora for p in data.prompts[c]]

    @shared
    def base_greedy(self):
        return decode(self.base, self.tokenizer, self.prompts, self.config, desc="base greedy")

    @shared
    def heldout_static(self):
        """Per-token statistics and the fitted static+temperature model, from one teacher-forced pass over held-out
        text."""
        from hyperfitting.analysis.static_bias import heldout_static_models

        return heldout_static_models(self.base, self.tuned, self.data.heldout_blocks, self.config)

    @shared
    def tuned_greedy(self):
        return decode(self.tuned, self.tokenizer, self.prompts, self.config, desc="hyperfitted greedy")


def analysis_stage(
    graph: StageGraph, name: str, context: AnalysisContext | Callable[[], AnalysisContext], suffix: str = ""
) -> dict:
    """Run one analysis into stage `analysis-NAME{suffix}` of ``graph`` (`-rK` for replicate K, `-full` for full
    fine-tuning) unless done with the same inputs. ``context`` may be a function that makes it, called only if the stage
    runs."""
    analysis = get_analysis(name)

    def work(folder: Path) -> dict:
        results = analysis.run_on(context if isinstance(context, AnalysisContext) else context())
        write_json(folder / "results.json", results)
        if is_main_process():  # a plug-in's writer need not know about processes: only process 0 writes files
            analysis.write_to(results, folder)
        table = folder / "table.md"
        # only process 0 writes files: another process could read the table before it exists
        if is_main_process() and table.exists():
            print(table.read_text())
        return results

    return graph.run(analysis_stage_name(name, suffix), work, load=lambda folder: read_json(folder / "results.json"))
