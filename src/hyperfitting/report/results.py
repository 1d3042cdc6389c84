"""RESULTS.md from finished run folders: what each study found, with the command, date and commit that produced it.

`hyperfit results RUN_DIR... --out RESULTS.md` writes it. Every number comes from the folders' own metrics.json,
config.yaml and calibration.json, so the document is regenerated, never edited by hand: a table that no run folder
backs any more cannot stay in it. Those few files are all it reads: `--keep results` copies them into
results/NAME, a folder small enough to commit, from which the document is written again once the run folder (its
models and generations, gigabytes) is gone.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from hyperfitting.metrics.registry import METRICS
from hyperfitting.rundir import read_json

# The generation metrics a results table shows (the report has them all).
SHOWN_METRICS = ("ttr", "distinct_3", "seq_rep_3", "diversity", "base_perplexity", "train_overlap_share_over_10")


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _effect(claim: dict) -> str:
    e = claim.get("estimate")
    if not e:
        return "-"
    return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]" + (
        "" if e.get("decisive", True) else " (no interval)"
    )


def claims_table(claims: list[dict]) -> list[str]:
    lines = [
        "| claim | effect [95% interval] | verdict (after Holm) | uncorrected | the paper | why |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        lines.append(
            f"| {c['number']}. {c['name']} | {_effect(c)} | **{c.get('holm') or c['verdict']}** | {c['verdict']} | "
            f"{c.get('paper', '-')} | {c['reason']} |"
        )
    return lines


def generation_table(metrics: dict, corpus: str) -> list[str]:
    """Base, hyperfitted (and with the citation blocker) and the human text on one corpus, the metrics that matter
    most."""
    columns = {"base": metrics["base"].get(corpus, {}), "hyperfitted": metrics["hyperfitted"].get(corpus, {})}
    if "hyperfitted, citation blocker" in metrics:
        columns["hyperfitted, citation blocker"] = metrics["hyperfitted, citation blocker"].get(corpus, {})
    columns["human"] = metrics["base"].get(f"{corpus}:human", {})
    shown = [m for m in SHOWN_METRICS if any(m in column for column in columns.values())]
    lines = ["| metric | better | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name in shown:
        better = {True: "higher", False: "lower", None: "-"}[METRICS[name].higher_is_better] if name in METRICS else "-"
        lines.append(
            f"| {name} | {better} | " + " | ".join(_cell(column.get(name)) for column in columns.values()) + " |"
        )
    return lines


def stage_minutes(study: dict) -> float:
    """The stages' own time: a study resumed from finished stages has a short last invocation, not a short study."""
    profile = study.get("stage_profile") or {}
    return (
        sum(row["seconds"] for row in profile.values()) / 60
        if profile
        else study.get("wall_seconds", float("nan")) / 60
    )


def overview_table(studies: list[tuple[str, dict]]) -> list[str]:
    """Each claim's verdict in every study, side by side (after Holm, the uncorrected one in parentheses where
    it differs): the first question a reader asks of several models is whether they agree."""
    columns = []
    for name, study in studies:
        columns.append((name, {c["number"]: c for c in study.get("claims", [])}))
        if study.get("claims_full_finetune"):
            columns.append((f"{name}, full fine-tune", {c["number"]: c for c in study["claims_full_finetune"]}))
    names = {}
    for _, claims in columns:
        for number, claim in claims.items():
            names.setdefault(number, claim["name"])
    lines = ["| claim | " + " | ".join(f"`{name}`" for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for number, name in names.items():
        cells = []
        for _, claims in columns:
            claim = claims.get(number)
            if claim is None:
                cells.append("-")
                continue
            after = claim.get("holm") or claim["verdict"]
            cells.append(after + (f" ({claim['verdict']} uncorrected)" if after != claim["verdict"] else ""))
        lines.append(f"| {number}. {name} | " + " | ".join(cells) + " |")
    return lines


def run_section(run_dir: Path) -> list[str]:
    """One study: its provenance, training, generation table, verdicts and the rules' measured error rates."""
    study = read_json(run_dir / "metrics.json")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    env = study.get("environment", {})
    train = study["train"]
    corpora = [c for c in study["metrics"]["base"] if ":" not in c]
    lines = [
        f"## {config['model']['name']} on {config['data']['corpus']}: `{run_dir.name}`",
        "",
        f"`{env.get('command', 'command not recorded')}`, {env.get('date', 'date not recorded')}, hyperfitting commit "
        f"{env.get('commit') or 'not recorded'}; its stages took {stage_minutes(study):.1f} min on "
        f"{env.get('device', '?')} ({env.get('threads', '?')} threads, {env.get('processes', 1)} process(es)), "
        "precision "
        f"{(study.get('precision') or {}).get('label', 'fp32')}.",
        "",
        f"Training: {train['method']} on blocks {train['blocks'][0]}-{train['blocks'][-1]} "
        f"({train['trainable_parameters']:,} trainable parameters), loss {train['initial_train_loss']:.3f} -> "
        f"{train['final_train_loss']:.3f} in {train['epochs_run']} epochs"
        + (
            f" (target {train['until_loss']:g}: {'reached' if train.get('reached_target') else 'not reached'})"
            if train.get("until_loss")
            else ""
        )
        + f"; {len(study.get('replicates') or [train])} training seed(s).",
        "",
    ]
    for corpus in corpora:
        lines += [f"Greedy continuations, {corpus}:", "", *generation_table(study["metrics"], corpus), ""]
    lines += [
        "Claims of Li et al. (the rules: README, *How a verdict is reached*):",
        "",
        *claims_table(study.get("claims", [])),
        "",
    ]
    if study.get("claims_full_finetune"):
        lines += [
            "The same claims on the fully fine-tuned model:",
            "",
            *claims_table(study["claims_full_finetune"]),
            "",
        ]
    calibration = run_dir / "calibration.json"
    if calibration.exists():
        from hyperfitting.report.calibration import calibration_table

        lines += [
            "How often these rules are wrong at this study's sizes:",
            "",
            calibration_table(read_json(calibration)).strip(),
            "",
        ]
    return lines


def validation_section(run_dir: Path) -> list[str]:
    """A `hyperfit validate` folder: the verdicts on planted truths, as its own validation.md gives them."""
    from hyperfitting.report.validation import validation_markdown

    summary = read_json(run_dir / "validation.json")
    return validation_markdown(summary, f"## Planted truths: `{run_dir.name}`").splitlines() + [""]


# What results_document reads of a run folder: a study's summary, or a `hyperfit validate` folder's.
SUMMARY_FILES = ("metrics.json", "config.yaml", "calibration.json", "validation.json")


def keep_summaries(run_dirs: list[Path], keep: Path) -> list[Path]:
    """Copy each run folder's SUMMARY_FILES into keep/NAME (replacing an earlier copy whole) and return those folders.

    A folder already inside ``keep`` is its own copy. Two run folders of one name would share a copy: refused."""
    from hyperfitting.rundir import write_text

    names = [Path(d).name for d in run_dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"Two run folders named {', '.join(twice)}: their summaries would share {keep / twice[0]}.")
    kept = []
    for run_dir in map(Path, run_dirs):
        target = keep / run_dir.name
        kept.append(target)
        if target.resolve() == run_dir.resolve():
            continue
        for name in SUMMARY_FILES:
            if (run_dir / name).exists():
                write_text(target / name, (run_dir / name).read_text(encoding="utf-8"))
            else:  # e.g. a calibration.json of an earlier copy that this folder no longer has
                (target / name).unlink(missing_ok=True)
    return kept


def results_document(run_dirs: list[Path], command: str) -> str:
    missing = [
        str(d)
        for d in run_dirs
        if not (Path(d) / "metrics.json").exists() and not (Path(d) / "validation.json").exists()
    ]
    if missing:
        raise FileNotFoundError(
            f"no metrics.json or validation.json in {', '.join(missing)}: finish the study first "
            "(hyperfit study CONFIG --resume, or hyperfit validate CONFIG --resume)"
        )
    lines = [
        "# Results",
        "",
        f"Written by `{command}` from the run folders below; each section names the command, date and commit that "
        "produced "
        "it. Regenerate it rather than editing it: a number here that no run folder backs is stale.",
        "",
    ]
    finished = [Path(d) for d in run_dirs if (Path(d) / "metrics.json").exists()]
    if finished:
        models = [yaml.safe_load((d / "config.yaml").read_text())["model"]["name"] for d in finished]
        lines += [
            "## The verdicts side by side",
            "",
            "Each study's verdict on each claim, after Holm's correction over the study's rules (the uncorrected one "
            "in parentheses where it differs); the sections below give the intervals, the reasons and the rules' error "
            "rates. Studies: " + "; ".join(f"`{d.name}` ({model})" for d, model in zip(finished, models)) + ".",
            "",
            *overview_table([(d.name, read_json(d / "metrics.json")) for d in finished]),
            "",
        ]
    for run_dir in run_dirs:
        lines += (
            validation_section(Path(run_dir))
            if (Path(run_dir) / "validation.json").exists()
            else run_section(Path(run_dir))
        )
    return "\n".join(lines).rstrip() + "\n"
