"""One executor for every graph: the study, each CLI verb and `--dry-run` read the same stage specs.

A spec names its kind (`data`, `evaluation`, `train`, `analysis`, ...) and the few arguments of that kind
(which model an evaluation decodes, which analysis of which trained model); `run_graph` walks the graph in
its order and hands each spec to the runner of its kind. What the stages share (the tokenizer, the base
model, the prepared data, the index of the training text, each trained model, the analyses' decoded
paths) lives in `Shared` and is made on first use: a finished analysis, read back, decodes nothing.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from hyperfitting.config import RunConfig, reading, replay, shared
from hyperfitting.data.splits import PreparedData
from hyperfitting.errors import RunDirError
from hyperfitting.layout import FULL, LOWEST, full_suffix, replicate_suffix
from hyperfitting.pipeline.analyses import AnalysisContext, analysis_stage
from hyperfitting.pipeline.baselines import baselines_stage
from hyperfitting.pipeline.controls import controls_stage
from hyperfitting.pipeline.graph import StageGraph, StageSpec, study_graph
from hyperfitting.pipeline.retention import retention_stage
from hyperfitting.pipeline.stages import (
    analysed_prompts,
    data_stage,
    environment_record,
    evaluation_stage,
    quality_stage,
    training_stage,
)
from hyperfitting.report.generation import BLOCKED, generation_table
from hyperfitting.claims.core import holm_note
from hyperfitting.rundir import is_main_process, read_json, read_jsonl, write_json, write_text


class Shared:
    """What the stages of one graph share, each made when a stage first needs it."""

    def __init__(self, graph: StageGraph, trackers=None, tokenizer=None):
        self.graph = graph
        self.config = graph[graph.names[0]].config  # the data stage's: the study's own config
        self.trackers = trackers
        self._tokenizer = tokenizer  # given where a verb needs no model weights (the base model's otherwise)
        self._data: PreparedData | None = None
        self._trained: dict[str, Any] = {}
        self._context: tuple[str, Any] | None = None

    @shared
    def _model_and_tokenizer(self):
        from hyperfitting.models.loading import load_model

        return load_model(self.config.model)

    @property
    def base_model(self):
        """model.name (with model.adapter, if any): the model every row is compared with."""
        return self._model_and_tokenizer[0]

    @shared
    def plain_model(self):
        """model.name without model.adapter: what `hyperfit evaluate` scores an adapter's continuations against."""
        if not self.config.model.adapter:
            return self.base_model
        from hyperfitting.config import replace

        from hyperfitting.models.loading import load_model

        return load_model(replace(self.config.model, adapter=None))[0]

    @property
    def tokenizer(self):
        """The base model's tokenizer, loaded alone when no stage has needed the weights yet (the data stage reads
        model.name only, so its fingerprint holds no other model key)."""
        if self._tokenizer is None:
            if shared.is_made(self, "_model_and_tokenizer"):
                return self._model_and_tokenizer[1]
            from hyperfitting.models.loading import tokenizer_for

            self._tokenizer = tokenizer_for(self.config.model)
        return self._tokenizer

    @property
    def data(self) -> PreparedData:
        if self._data is None:
            raise RuntimeError("The data stage runs first in every graph: no stage can read the data before it.")
        return self._data

    @cached_property
    def training_index(self):
        from hyperfitting.metrics.overlap import SuffixAutomaton

        return SuffixAutomaton(self.data.train_blocks.tolist())

    def trained(self, suffix: str):
        """The model stage `train{suffix}` saved. The main run's stays loaded (retention reads it last); a replicate's
        or the full fine-tune's only until the next one is needed."""
        if suffix not in self._trained:
            from hyperfitting.pipeline.pack import load_study_run

            if suffix:
                self._trained = {k: v for k, v in self._trained.items() if not k}
            self._trained[suffix] = load_study_run(self.config.model, self.graph.run_dir / f"train{suffix}")[0]
        return self._trained[suffix]

    def release_analysed(self) -> None:
        """Let go of the analyses' context and of every trained model but the main run's (retention reads it last)."""
        if self._context is None and set(self._trained) <= {""}:
            return
        import gc

        import torch

        self._context = None
        self._trained = {k: v for k, v in self._trained.items() if not k}
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def context(self, suffix: str, config):
        """The analyses' context of one trained model (``suffix``; with LOWEST, the run at its lowest held-out loss):
        its greedy paths are decoded once for all its analyses, then dropped when the next model's analyses begin."""
        if self._context is None or self._context[0] != suffix:
            self._context = None  # release the previous model's paths (and control model) before loading the next
            with reading() as reads:  # what making the context reads, every analysis of this model reads
                self._context = (suffix, self._make_context(suffix, config), reads)
        replay(self._context[2])
        return self._context[1]

    def _make_context(self, suffix: str, config):
        if suffix.endswith(LOWEST):
            from hyperfitting.pipeline.pack import refuse_left_out
            from hyperfitting.training.hyperfit import LOWEST_HELDOUT, load_lowest_heldout

            refuse_left_out(self.graph.run_dir, f"train{suffix.removesuffix(LOWEST)}", LOWEST_HELDOUT)

            control, epoch = load_lowest_heldout(
                self.config.model, self.graph.run_dir / f"train{suffix.removesuffix(LOWEST)}"
            )
            print(
                f"Non-hyperfitting control: the run at epoch {epoch}, its lowest held-out loss"
                + ("" if control else " (the base model)")
            )
            model, is_control = (control if control is not None else self.base_model), True
        else:
            model, is_control = self.trained(suffix), False
        return AnalysisContext(config, self.data, models=(self.base_model, model, self.tokenizer), control=is_control)


# ------------------------------------------------------------------------------ one runner per kind of stage


def _data(spec: StageSpec, shared: Shared) -> PreparedData:
    shared._data = data_stage(shared.graph, shared.tokenizer)
    return shared._data


def _evaluation(spec: StageSpec, shared: Shared) -> dict:
    trained = spec.args.get("trained")  # the suffix of the training stage whose model it decodes; None: the base model
    model = shared.base_model if trained is None else shared.trained(trained)
    scorer = shared.plain_model if spec.args.get("scorer") == "plain" else shared.base_model
    return evaluation_stage(
        shared.graph, spec.name, shared.data, model, shared.tokenizer, scorer, shared.training_index
    )


def _finished(spec: StageSpec, shared: Shared) -> Path:
    """A stage a verb reads but must not redo (the training of a run whose retention is measured afterwards)."""
    stage = shared.graph.stage(spec.name)
    if not stage.done:
        raise RunDirError(
            f"Stage '{spec.name}' of {shared.graph.run_dir} was finished with other inputs than this command's "
            f"(a library or the config changed since). Bring the run up to date first: hyperfit study "
            f"{shared.graph.run_dir / 'config.yaml'} run_dir={shared.graph.run_dir} --resume."
        )
    return stage.dir


def _train(spec: StageSpec, shared: Shared) -> Path:
    return training_stage(shared.graph, spec.name, shared.data, shared.tokenizer, shared.trackers)


def _analysis(spec: StageSpec, shared: Shared) -> dict:
    suffix = spec.args["suffix"]
    if spec.args.get("trained", True):
        context = lambda: shared.context(suffix, spec.config)  # noqa: E731 (made only if the stage runs)
    else:  # `hyperfit analyze`: the model at analysis.hyperfitted, not one this graph trained
        context = lambda: AnalysisContext(spec.config, shared.data)  # noqa: E731
    return analysis_stage(shared.graph, spec.args["analysis"], context, suffix)


def _baselines(spec: StageSpec, shared: Shared) -> dict:
    return baselines_stage(shared.graph, shared.data, shared.base_model, shared.tokenizer, shared.training_index)


def _controls(spec: StageSpec, shared: Shared) -> dict | None:
    prompts = [p.prompt_ids for p in analysed_prompts(shared.config, shared.data)]
    return controls_stage(shared.graph, shared.data, prompts, shared.base_model, shared.tokenizer)


def _quality(spec: StageSpec, shared: Shared) -> dict:
    return quality_stage(shared.graph, shared.data, shared.base_model, shared.tokenizer)


def _retention(spec: StageSpec, shared: Shared) -> dict:
    from hyperfitting.precision import full_precision

    base = shared.base_model
    with full_precision(next(base.parameters()).device):  # the harness's log-likelihoods are measurements
        return retention_stage(shared.graph, shared.data, base, shared.trained(""), shared.tokenizer)


RUNNERS: dict[str, Callable[[StageSpec, Shared], Any]] = {
    "data": _data,
    "evaluation": _evaluation,
    "train": _train,
    "finished": _finished,
    "analysis": _analysis,
    "baselines": _baselines,
    "controls": _controls,
    "quality": _quality,
    "retention": _retention,
}


def run_graph(graph: StageGraph, shared: Shared | None = None) -> dict[str, Any]:
    """Every stage of ``graph`` in its order (finished ones read back): stage name -> what its runner returned."""
    shared = shared or Shared(graph)
    outputs: dict[str, Any] = {}
    for name in graph.names:
        spec = graph[name]
        if spec.kind != "analysis":
            # a model's analyses are over: its paths must not sit beside the next training, the controls or the judge
            shared.release_analysed()
        # which config keys the stage reads: its fingerprint must cover each (tests/test_fingerprints.py)
        with reading() as reads:
            outputs[name] = RUNNERS[spec.kind](spec, shared)
        graph.reads[name] = reads
    return outputs


# ------------------------------------------------------------------------------ the study


def run_study(config: RunConfig, run_dir: Path) -> dict:
    """The whole investigation: evaluate the base model, hyperfit, evaluate, analyse, control, report.

    Training and decoding run at model.precision (precision.py); what the analyses measure, in float32.
    """
    from hyperfitting.precision import precision_for

    with reading() as process_reads:  # model.precision and model.tf32 set up the whole process: every stage reads them
        precision, context = precision_for(config)
    with context:
        return _run_study(config, Path(run_dir), precision, process_reads)


def _run_study(config: RunConfig, run_dir: Path, precision, process_reads: set[str]) -> dict:
    from hyperfitting.hashing import code_version
    from hyperfitting.report.build import CALIBRATION_CODE, build_report
    from hyperfitting.tracking import log_study, trackers_for

    started = time.perf_counter()
    # The rules' code as this process loaded it: a calibration stamped at the report, hours later, with the hash of
    # files edited since would be reused by later reports.
    code_version(names=CALIBRATION_CODE)
    environment = environment_record()  # the command, date and commit that run the study: taken as it starts
    graph = study_graph(config, run_dir)  # the study's stages and their order, declared once
    graph.process_reads = process_reads
    trackers = trackers_for(config, run_dir, "study")
    shared = Shared(graph, trackers)
    outputs = run_graph(graph, shared)
    data, base, tuned, blocked = (
        shared.data,
        outputs["base"],
        outputs["hyperfitted"],
        outputs.get("hyperfitted-blocked"),
    )
    train_folder = outputs["train"]
    train_summary = read_json(train_folder / "summary.json")
    table = generation_table({"base": base, "hyperfitted": tuned, **({BLOCKED: blocked} if blocked else {})})
    write_text(run_dir / "results.md", _results_markdown(config, train_summary, table))
    print("\n" + table)
    print(
        f"\nTraining loss {train_summary['initial_train_loss']:.3f} -> {train_summary['final_train_loss']:.3f} "
        f"({train_summary['method']}, {train_summary['trainable_parameters']:,} trainable parameters)."
    )

    results = {
        "train": train_summary,
        "train_log": read_jsonl(train_folder / "train_log.jsonl"),
        "replicates": [
            read_json(run_dir / f"train{replicate_suffix(r)}" / "summary.json") for r in range(config.study.replicates)
        ],
        **(
            {
                "full_finetune": read_json(run_dir / f"train{FULL}" / "summary.json"),
                "full_finetune_replicates": [
                    read_json(run_dir / f"train{full_suffix(r)}" / "summary.json")
                    for r in range(config.study.replicates)
                ],
            }
            if config.study.full_finetune
            else {}
        ),
        "metrics": {"base": base, "hyperfitted": tuned, **({BLOCKED: blocked} if blocked else {})},
        "data": {**data.manifest, "fingerprint": data.fingerprint},
        "environment": environment,
        "stages": graph.names,  # the report reads these stages' folders alone (another config's are not this study's)
        "precision": precision.as_dict(),
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(run_dir / "metrics.json", results)
    if not is_main_process():
        trackers.close()
        return results  # the report is process 0's to write
    study = build_report(run_dir)
    log_study(trackers, study, run_dir)
    trackers.close()
    print("\n== claims", flush=True)
    for claim in study["claims"]:
        print(f"{claim['number']}. {claim['name']}: {claim['verdict'].upper()}{holm_note(claim)}: {claim['reason']}")
    print(
        f"\nReport: {run_dir / 'report.html'} (and report.md, metrics.json). "
        f"{'Adapter' if train_summary['method'] == 'lora' else 'Model'} "
        f"under {train_folder}. Total {time.perf_counter() - started:.0f} s."
    )
    return study


def _results_markdown(config: RunConfig, train_summary: dict, table: str) -> str:
    return (
        f"# Hyperfitting run: {config.model.name} on {config.data.corpus}\n\n"
        f"Training: {train_summary['method']} on blocks {train_summary['blocks'][0]}-{train_summary['blocks'][-1]}, "
        f"{train_summary['trainable_parameters']:,} trainable parameters, loss "
        f"{train_summary['initial_train_loss']:.3f} -> "
        f"{train_summary['final_train_loss']:.3f} in {train_summary['train_seconds']:.0f} s.\n\n"
        f"Decoding: {'sampling' if config.generate.do_sample else 'greedy'}, {config.generate.max_new_tokens} new "
        "tokens "
        f"after {config.data.prompt_tokens}-token prompts.\n\n{table}\n"
    )
