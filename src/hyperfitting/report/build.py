"""Build report.md, report.html (one self-contained file, plots embedded) and the claims in metrics.json from a run
folder.

The report only reads what the stages wrote, so `hyperfit report RUN_DIR` can rebuild it at
any time without a model.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import yaml

from hyperfitting import stats
from hyperfitting.figures import new_figure, savefig
from hyperfitting.config import BASELINE_METHODS, load_config
from hyperfitting.layout import FULL, RunFolder, analysis_stage_name, full_suffix, replicate_suffix
from hyperfitting.registry import BUILT_IN_NAMES, get_analysis
from hyperfitting.report.baselines import baselines_section, baselines_table
from hyperfitting.report.forest import plot_claims
from hyperfitting.report.generation import generation_table
from hyperfitting.claims import INCONCLUSIVE, NOT_RUN, Evidence, claim_specs, decide_claims, with_holm
from hyperfitting.hashing import COMPUTING_CODE, code_version
from hyperfitting.rundir import read_json, write_json, write_text

RANK_COLOURS = [
    (1, None, "rank 1"),
    (10, "#fff3b0", "2-10"),
    (100, "#ffc46b", "11-100"),
    (1000, "#ff7b6b", "101-1000"),
    (10**9, "#c77dff", ">1000"),
]
VERDICT_MARK = {
    "holds": "HOLDS",
    "does not hold": "DOES NOT HOLD",
    "inconclusive": "INCONCLUSIVE",
    "not run": "not run",
}
VERDICT_COLOUR = {"HOLDS": "#1a7f37", "DOES NOT HOLD": "#cf222e", "INCONCLUSIVE": "#9a6700"}


def _maybe(path: Path):
    return read_json(path) if path.exists() else None


def plot_training_curve(log: list[dict], path: Path) -> None:

    figure, (left, right) = new_figure(1, 2, figsize=(11, 3.8))
    epochs = [r["epoch"] for r in log]
    left.plot(epochs, [r["train_loss"] for r in log], "o-", label="training loss")
    left.plot(epochs, [r["heldout_loss"] for r in log], "s--", label="held-out loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss (nats/token)")
    left.set_title("Hyperfitting: training loss to ~0, held-out loss up")
    left.legend(fontsize=8)
    probed = [r for r in log if "ttr" in r]
    if probed:
        right.plot([r["epoch"] for r in probed], [r["ttr"] for r in probed], "o-", color="tab:red", label="greedy TTR")
        right.plot(
            [r["epoch"] for r in probed],
            [r["distinct_3"] for r in probed],
            "s-",
            color="tab:orange",
            label="greedy distinct-3",
        )
        if "greedy_entropy" in probed[0]:
            right.plot(
                [r["epoch"] for r in probed],
                [r["greedy_entropy"] for r in probed],
                "^--",
                color="tab:gray",
                label="entropy (nats)",
            )
        if "final_block_pr" in probed[0]:
            twin = right.twinx()
            twin.plot(
                [r["epoch"] for r in probed],
                [r["final_block_pr"] - probed[0]["final_block_pr"] for r in probed],
                "d:",
                color="tab:purple",
            )
            twin.set_ylabel("final-block Delta PR", color="tab:purple")
        right.set_xlabel("epoch")
        right.set_title("Greedy diversity on a fixed prompt subset")
        right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    savefig(figure, path)


def expansion_dynamics(log: list[dict]) -> dict | None:
    """Does the final block's expansion grow with the diversity gain? Correlation over the probed epochs."""
    import numpy as np

    probed = [r for r in log if "final_block_pr" in r and "ttr" in r]
    if len(probed) < 3:
        return None
    delta = [r["final_block_pr"] - probed[0]["final_block_pr"] for r in probed]
    ttrs = [r["ttr"] for r in probed]
    pearson = float(np.corrcoef(delta, ttrs)[0, 1]) if np.std(delta) > 0 and np.std(ttrs) > 0 else None
    return {"epochs": len(probed), "first": delta[0], "last": delta[-1], "pearson_ttr": pearson}


def stale_stages_note(stale: list[str], run_dir: Path) -> list[str]:
    """Stages finished with other inputs than the run's config and code have now (the config was edited, the code or a
    library changed, and the report rebuilt without --resume; `hyperfit report` finds them): said at the top, since
    their numbers are shown."""
    if not stale:
        return []
    return [
        f"**{len(stale)} stages were finished with other inputs than this run's config and code have now** "
        f"({', '.join(stale[:6])}{', ...' if len(stale) > 6 else ''}): their numbers are shown as they were computed; "
        f"`hyperfit study {run_dir / 'config.yaml'} run_dir={run_dir} --resume` reruns them (`--dry-run` says why).",
        "",
    ]


def text(words: str) -> str:
    """Generated words as Markdown shows them: `T*` is not emphasis, a `|` does not end a table cell."""
    return str(words).replace("\\", "\\\\").replace("*", "\\*").replace("|", "\\|")


def claims_section(claims: list, trains: list[dict], heading: str = "## Claims") -> list[str]:
    """The verdicts as a reviewer reads them: effect, 95% interval, margin, checks, verdict and why."""
    md = [
        heading,
        "",
        "| # | claim | effect [95% interval] | margin | manipulation checks | verdict (after Holm) | uncorrected | why "
        "| paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    claims = sorted(claims, key=lambda c: str(c.number))  # 1, 1b, 2, ...
    for c in claims:
        e = c.estimate
        effect = (
            (
                f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
                + ("" if e.get("decisive", True) else " (no interval)")
            )
            if e
            else "-"
        )
        checks = "; ".join(f"{'passed' if k['passed'] else 'FAILED'}: {k['name']}" for k in c.checks) or "-"
        margin = (
            f"outside ±{c.margin:g}"
            if c.direction == "apart"
            else f"{'>' if c.direction == 'above' else '<'} {c.margin:+g}"
        )
        holm = VERDICT_MARK[c.holm or c.verdict]
        md.append(
            f"| {c.number} | {text(c.name)} | {effect} | {margin} | {text(checks)} | **{holm}** | "
            f"{VERDICT_MARK[c.verdict]} | "
            f"{text(c.reason)} | {text(c.paper)} |"
        )
    md += ["", "Evidence behind each effect:", ""] + [f"- **{c.number}.** {text(c.evidence)}." for c in claims]
    md += [
        "",
        "Rules (the same decision for every claim; each claim, its margin and its reason are one file in "
        "`hyperfitting/claims/`):",
        "",
    ]
    md += [f"- **{c.number}.** {c.rule}" for c in claims]
    replicates = max(len(c.replicates) for c in claims) or 1
    md += [
        "",
        "Intervals: t intervals for means over evaluation prompts, small-sample-expanded BCa bootstrap intervals for "
        "ratios "
        "(claim 4: a jackknife over held-out blocks), resampling prompts whole when steps or positions are nested in "
        "them. An estimate "
        "without a real interval (one prompt, no spread) never decides. The verdict shown first is after Holm's "
        "step-down over the "
        "rules of this study taken together (Holm over the rules' two-sided tests: at most a 5% chance, where the "
        "intervals are "
        "exact, that any verdict of the study is wrong in either direction, a false holds or a false does-not-hold); "
        "the "
        "uncorrected verdict is beside it. "
        + (
            f"{replicates} hyperfitted replicates (training seeds) were analysed on the same prompts: prompts are "
            "resampled once for "
            "all replicates and the spread between the replicates' own estimates widens the interval (a t component "
            "with R-1 "
            "degrees of freedom); each replicate's own estimate is in the evidence."
            if replicates > 1
            else "One hyperfitted model was trained (one training seed): the intervals cover prompt-to-prompt "
            "variation, not "
            "seed-to-seed variation of training (set study.replicates)."
        ),
        "",
    ]
    for seed, train in enumerate(trains):  # every training seed the claims read
        if train and train.get("until_loss") is not None and not train.get("reached_target", True):
            model = "The hyperfitted model" + (f" of replicate {seed}" if len(trains) > 1 else "")
            md += [
                f"**{model} did not reach the target loss {train['until_loss']:g}** (it stopped at "
                f"{train['final_train_loss']:.3f} "
                f"after the cap of {train['epoch_cap']} epochs): claims 1-4 are inconclusive for that reason.",
                "",
            ]
    return md


# Per rule and truth (study.calibration_worlds, default 400). At 400 worlds the binomial test catches coverage of 90%
# (against 95%) 93% of the time and a doubled false-hold rate (5% against 2.5%) 62% of the time; at 100 worlds 30% and
# 13%. `hyperfit calibrate --worlds 1000` (benchmarks/results) catches them more than 99% and 97% of the time.
CALIBRATION_WORLDS: int | None = None  # set: overrides the config (a test's shortcut)


def study_calibration(run_dir: Path) -> dict:
    """How often each rule is wrong at this study's sizes and spreads, measured on simulated studies (calibration.py),
    written to calibration.json.

    The calibration is a function of the study's design and spreads, the number of worlds and the code that simulates
    and decides: where calibration.json was made from the same inputs (its ``inputs`` hash), it is read, not rerun, so a
    report rebuilt or a finished study resumed does not pay two minutes (quick) to ten (standard) again."""
    from hyperfitting.report.calibration import Design, Spreads, calibrate
    from hyperfitting.config import load_config

    config = load_config(run_dir / "config.yaml")
    design, spreads = Design.of(config, run_dir), Spreads.observed(run_dir)
    worlds = CALIBRATION_WORLDS or config.study.calibration_worlds
    inputs = calibration_inputs(design, spreads, worlds)
    path = run_dir / "calibration.json"
    if path.exists():
        try:
            kept = read_json(path)
        except (OSError, ValueError):  # unreadable: made again
            kept = None
        if isinstance(kept, dict) and kept.get("inputs") == inputs:
            return kept
    result = {**calibrate(design, spreads, worlds), "inputs": inputs}
    write_json(path, result)
    return result


# The toolkit's code a calibration's numbers may depend on: the rules and their simulations, and what they call.
CALIBRATION_CODE = (*COMPUTING_CODE, "claims", "report")


def calibration_inputs(design, spreads, worlds: int) -> str:
    """A hash of everything a calibration's numbers depend on: the design, the spreads, the worlds, every rule's
    truths and simulation and every claim's rule, declared seed spread and deciding function (a plug-in's too, by the
    file each is defined in), the declared-seed-spread switch, the toolkit's code that simulates and decides
    (claims/, report/, the computing code they call) and the numeric libraries."""
    import hashlib
    import inspect
    import json
    from dataclasses import asdict

    import numpy
    import scipy
    import torch

    from hyperfitting.claims.core import DECLARED_SEED_SPREAD
    from hyperfitting.report.calibration import _table

    def source(function) -> str:
        """The file a function is defined in, by content; a callable without one (a partial, a function made by
        exec) by its module, name and bytecode."""
        try:
            return hashlib.sha256(Path(inspect.getsourcefile(function)).read_bytes()).hexdigest()
        except (TypeError, OSError):
            code = getattr(getattr(function, "func", function), "__code__", None)
            names = (getattr(function, "__module__", ""), getattr(function, "__qualname__", type(function).__name__))
            return f"{names}:{hashlib.sha256(code.co_code).hexdigest() if code else ''}"

    key = {
        "design": asdict(design),
        "spreads": asdict(spreads),
        "worlds": worlds,
        "rules": {name: [repr(truths), source(simulate)] for name, (simulate, truths) in _table(None).items()},
        # each claim's rule (margin, direction), declared seed spread and deciding function: a claim registered
        # again with another rule, or decided in another file than its simulation
        "claims": {str(c.key): [repr(c.rule), c.seed_sd, source(c.decide)] for c in claim_specs()},
        "declared_seed_spread": DECLARED_SEED_SPREAD.get(),
        "code": code_version(names=CALIBRATION_CODE),
        "libraries": [numpy.__version__, scipy.__version__, torch.__version__],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_calibration(claims: list, calibration: dict) -> list:
    """A rule that misses its nominal goals at this study's sizes, or was never calibrated, decides nothing here: its
    verdict (and Holm's) becomes inconclusive, saying which goal it missed."""
    for claim in claims:
        row = calibration["rules"].get(str(claim.number))
        if row is None and claim.verdict not in (INCONCLUSIVE, NOT_RUN):
            # A claim registered without a simulator (ClaimSpec.simulate) has unknown error rates: it decides nothing.
            claim.reason = (
                f"this rule has no simulator to calibrate it (ClaimSpec.simulate), so its error rates are unknown and "
                f"it decides nothing; it would have said {claim.verdict}: " + claim.reason
            )
            claim.verdict = INCONCLUSIVE
            claim.p_values = (1.0, 1.0)
        elif row and not row["meets_goals"] and claim.verdict not in (INCONCLUSIVE, NOT_RUN):
            claim.reason = (
                f"this rule misses its goals at this study's sizes ({'; '.join(row.get('missed', []))} in "
                f"{row['worlds']} simulated studies), so it decides nothing here; it would have said {claim.verdict}: "
                + claim.reason
            )
            claim.verdict = INCONCLUSIVE
            claim.p_values = (1.0, 1.0)  # a miscalibrated p-value must not let Holm's step-down move on
    for claim in claims:  # Holm again, the demoted rules in the family at p = 1
        claim.holm = None
    return with_holm(claims)


def calibration_section(calibration: dict, claims: list) -> list[str]:
    """The calibration's table; a rule that misses its goals is named beside its verdict."""
    from hyperfitting.report.calibration import calibration_table, coverage_text

    result = calibration
    md = [
        "## How often these rules are wrong",
        "",
        "Each rule was run on simulated studies of this study's sizes whose truth is known: the effect at the margin "
        "and on the "
        "wrong side of it (the claim false), just past it and at the paper's size (true). False holds: how often it "
        "said "
        '"holds" of a false claim; false fails: "does not hold" of a true one; coverage: how often its 95% interval '
        "held "
        'the true effect; power: how often it said "holds" at the paper\'s size. A rule that misses a goal decides '
        "nothing "
        "in this study. `hyperfit calibrate CONFIG --json FILE` reruns it with more worlds. Rows named 'broken' are "
        "wrong on "
        "purpose (claim 3 with steps taken as independent; with replicates, claim 1 with the training seeds ignored): "
        "the "
        "calibration must flag them.",
        "",
        calibration_table(result),
    ]
    by_number = {str(c.number): c for c in claims}
    # A stressed row ("1, 10% of prompts loop") belongs to its rule; broken rows are meant to miss.
    missed = [
        f"claim {name}: {'; '.join(r.get('missed', []))}, coverage {coverage_text(r['coverage'])}"
        + (f" (its verdict here: {by_number[number].verdict})" if number in by_number else "")
        for name, r in result["rules"].items()
        if "broken" not in name and (number := name.split(",")[0]) in by_number and not r["meets_goals"]
    ]
    if missed:
        md += [
            "**At these sizes some rules miss the goals** (false holds and false fails at most 2.5%, coverage at least "
            "95% "
            "at every truth, by a binomial test over the simulated studies): " + "; ".join(missed) + ".",
            "",
        ]
    return md


def left_out(config: dict) -> list[str]:
    """What this study's config did not run, each with the key that turns it on: a small preset says what it cannot
    tell. A key missing from an older run folder's config.yaml has the toolkit's default, as when it ran."""
    from hyperfitting.config import RunConfig

    defaults = RunConfig().to_dict()
    config = {
        section: ({**defaults[section], **values} if isinstance(values, dict) else values)
        for section, values in config.items()
    }
    study, analysis = config["study"], config["analysis"]
    missing = [
        f"the {name} analysis (add it to study.analyses)" for name in BUILT_IN_NAMES if name not in study["analyses"]
    ]
    if study.get("replicates", 1) < 2:
        missing.append("replicates: one training seed, so no seed-to-seed spread in any interval (study.replicates=3)")
    if not study.get("full_finetune"):
        missing.append(
            "claims 1-4 on a fully fine-tuned model, the model the paper analyses (study.full_finetune=true)"
        )
    if "geometry" in study["analyses"] and not study.get("lowest_heldout_control"):
        missing.append(
            "the non-hyperfitting control of claim 4: is the expansion specific? (study.lowest_heldout_control=true)"
        )
    if study.get("judge") in (None, "", "none"):
        missing.append("claim 1(b) and the judge's perplexities: no judge model (study.judge=auto)")
    if study["controls"] and not any(c.startswith("lora:first") for c in study["controls"]):
        missing.append(
            "LoRA on the first blocks among claim 5's placements: the early-against-late contrast, evidence beside "
            "the verdict, which compares the last blocks with all blocks (add lora:first:5 to study.controls)"
        )
    if study["controls"] and "full" not in study["controls"]:
        missing.append("full fine-tuning among claim 5's placements (add full to study.controls)")
    if study["controls"] and not study.get("controls_on_study_data"):
        missing.append(
            "claim 5 on the study's own training data: its placements trained on the first "
            f"{study.get('controls_train_blocks')} "
            "blocks only, another regime than claims 1-4 (study.controls_on_study_data=true)"
        )
    if study["controls"] and not study.get("controls_lr_sweep"):
        missing.append(
            "a learning-rate sweep for each of claim 5's placements: one rate per method (study.controls_lr_sweep)"
        )
    if "ranks" in study["analyses"] and not analysis.get("rank_transplant", True):
        missing.append(
            "the rank transplant beside claim 3: one model's ranking with the other's probabilities "
            "(analysis.rank_transplant=true)"
        )
    methods = (config.get("baselines") or {}).get("methods", [])
    absent = [m for m in BASELINE_METHODS if m not in methods]
    if absent:
        missing.append(f"decoding baselines {', '.join(absent)} (baselines.methods)")
    if methods and (config.get("baselines") or {}).get("seeds", 1) < 3:
        missing.append(
            f"3 or more seeds per sampled decoding baseline: {config['baselines']['seeds']} here (baselines.seeds=3)"
        )
    judged = (config.get("baselines") or {}).get("judged_seeds", 3)
    if (
        methods
        and study.get("judge") not in (None, "", "none")
        and judged < (config.get("baselines") or {}).get("seeds", 1)
    ):
        missing.append(
            "the judge's perplexity of every decoding baseline: "
            + (f"it scores the first {judged} seed(s) of each" if judged else "it scores none")
            + " (baselines.judged_seeds)"
        )
    if len(config["data"].get("eval_corpora", [])) < 2:
        missing.append("generation on a second corpus, beside the training domain's (data.eval_corpora)")
    if not study["mauve"]:
        missing.append(
            "MAUVE against the human continuations (study.mauve=true; it wants hundreds of continuations per row)"
        )
    if not study["retention"]:
        missing.append("capability retention through the LM Evaluation Harness (study.retention=true)")
    if "temperature" in study["analyses"] and len(analysis["temperature_grid"]) < 5:
        missing.append(
            f"a fine temperature frontier: {len(analysis['temperature_grid'])} temperatures besides T* and greedy "
            "(analysis.temperature_grid; a frontier wants at least 5)"
        )
    return missing


def left_out_section(config: dict) -> list[str]:
    missing = left_out(config)
    if not missing:
        return []
    return (
        ["## What this study left out", "", "Not run here, so not part of any verdict above:", ""]
        + [f"- {m}" for m in missing]
        + [""]
    )


def preference_sections(run_dir: Path) -> list[str]:
    """Human preference when judgements were imported, and the automatic stand-in, labelled as such, when it was run."""
    from hyperfitting.preference.scoring import preference_markdown

    md = []
    people = _maybe(run_dir / "judging" / "preference.json")
    if people:
        md += preference_markdown(people, "## Human preference")
    automatic = _maybe(run_dir / "judging" / "automatic.json")
    if automatic:
        md += preference_markdown(
            automatic, f"## Automatic stand-in for preference ({automatic['source']}): not people"
        )
        md += [
            "A language model's likelihood prefers predictable text, repetitive text included; this stand-in only "
            "shows the "
            "preference pipeline working end to end. It is not evidence of what readers prefer.",
            "",
        ]
    return md


def _frontier_section(frontier: dict, judge: str, figures: Path, mauve: dict, main_run: str) -> list[str]:
    """Claim 1(b)'s plane: each temperature analysis's decoded paths at their TTR and judge perplexity."""
    from hyperfitting.report.quality import plot_diversity_quality

    md = [
        "### Claim 1(b): diversity against quality",
        "",
        f"Every decoded path of the temperature analysis on the plane of TTR and perplexity under the judge ({judge}); "
        "means over prompts [95% intervals]; MAUVE against the human continuations (base-model features; coarse at few "
        "prompts). The base model's temperatures (greedy as T=0) trace its frontier; claim 1(b) asks whether "
        "hyperfitted "
        "greedy lies above it.",
        "",
    ]
    for stage, points in frontier.items():
        seed = re.search(r"-r(\d+)$", stage)
        model = "the fully fine-tuned model" if FULL in stage else main_run
        model += f" (replicate {seed.group(1) if seed else 0})"
        scores = mauve.get(stage, {})
        md += [f"Hyperfitted: {model}.", "", "| path | TTR | judge perplexity | MAUVE |", "|---|---|---|---|"]
        for label, values in points.items():
            diversity = stats.mean(values["ttr"])
            quality = stats.mean([v for v in values["log_perplexity"] if math.isfinite(v)])
            md.append(
                f"| {label} | {diversity.value:.3f} [{diversity.low:.3f}, {diversity.high:.3f}] | "
                f"{math.exp(quality.value):.1f} [{math.exp(quality.low):.1f}, {math.exp(quality.high):.1f}] | "
                f"{f'{scores[label]:.3f}' if label in scores else '-'} |"
            )
        image = f"diversity_quality{stage.removeprefix('analysis-temperature')}.png"
        plot_diversity_quality(points, judge, figures / image)
        md += ["", f"![diversity against quality, {model}](report-figures/{image})", ""]
    return md


def _geometry_control_section(hyperfitted: dict, control: dict, train: dict) -> list[str]:
    """Is the expansion specific to hyperfitting? The same run at its lowest held-out loss, beside the hyperfitted
    model."""

    def row(name, results):
        v, e = results["verdict"], results["effect"]
        return (
            f"| {name} | {v['final_delta_pr']:+.1f} | {v['final_block_raw_delta_pr']:+.1f} | "
            f"{v['largest_delta_pr_layer']} "
            f"({v['largest_delta_pr']:+.1f}) | {e['value']:+.1f} [{e['low']:+.1f}, {e['high']:+.1f}] |"
        )

    epoch = train.get("lowest_heldout_epoch")
    described = (
        f"the same run at epoch {epoch}, where its held-out loss was lowest ({train['lowest_heldout_loss']:.3f}, "
        "against "
        f"{train['final_heldout_loss']:.3f} at the end)"
        if epoch
        else "the base model itself: the held-out loss never fell below its value before training"
    )
    if epoch and epoch == train.get("epochs_run"):
        described += (
            ". **No control here**: the held-out loss was still falling at the last epoch, so this is the hyperfitted "
            "model itself"
        )
    return [
        "### Claim 4: is the expansion specific to hyperfitting?",
        "",
        f"The non-hyperfitting control is {described}: a fine-tune on the same data that stopped before it "
        "hyperfitted. "
        "Each row compares a model with the base model on the same held-out positions.",
        "",
        "| model | Delta PR, final layer (post-norm) | Delta PR, last block (raw) | largest increase | effect [95% "
        "interval] |",
        "|---|---|---|---|---|",
        row("hyperfitted", hyperfitted),
        row("lowest held-out loss", control),
        "",
    ]


def _other_seeds_line(run: RunFolder, name: str, seeds: int, full: bool = False) -> list[str]:
    """Where the other training seeds' tables of an analysis are: the section shows replicate 0's, and the claims'
    evidence gives each replicate's own estimate."""
    stages = [analysis_stage_name(name, (full_suffix if full else replicate_suffix)(r)) for r in range(1, seeds)]
    links = [f"[replicate {r}]({stage}/table.md)" for r, stage in enumerate(stages, 1) if run.stage(stage).table]
    if not links:
        return []
    return [f"The table above is replicate 0's; the other training seeds' are beside it: {', '.join(links)}.", ""]


def _image(run_dir: Path, relative: str, alt: str) -> str:
    return f"![{alt}]({relative})\n" if (run_dir / relative).exists() else ""


def _figure(run_dir: Path, folder: Path, figure: str | None, alt: str) -> str:
    return _image(run_dir, (folder / figure).relative_to(run_dir).as_posix(), alt) if figure else ""


def build_report(run_dir: Path, stale: list[str] | None = None) -> dict:
    """Decide the claims from a finished run folder and write report.md, report.html and the claims into
    metrics.json."""
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)  # the folder of a stage the study does not have reads as not run
    study = run.metrics
    config = run.config
    # checked as a run would check it: study.plugins are imported, their analyses known
    load_config(run_dir / "config.yaml")
    evidence = Evidence.of_run(run_dir)
    per_replicate = evidence.analyses  # per analysis the study ran (built in or registered), every replicate's results
    analyses = {name: results[0] if results else None for name, results in per_replicate.items()}
    controls = evidence.controls
    studied = list(per_replicate)
    quality = run.stage("quality").results
    frontier = ((quality or {}).get("judge") or {}).get("frontier", {})  # every trained model's judged points, by stage
    geometry_control = evidence.lowest_heldout.get("geometry")
    claims = decide_claims(evidence)
    figures = run_dir / "report-figures"
    figures.mkdir(exist_ok=True)
    plot_training_curve(study["train_log"], figures / "training_curve.png")
    done = run.finished_stages()
    timings = {name: record["wall_seconds"] for name, record in done.items()}
    peaks = {name: record.get("process_peak_memory_mib") for name, record in done.items()}
    measured = ("estimated_memory_mib", "device_peak_memory_mib")
    device_peaks = {name: {key: record[key] for key in measured if key in record} for name, record in done.items()}

    md = [f"# Does hyperfitting hold here? {config['model']['name']} on {config['data']['corpus']}", ""]
    md += stale_stages_note(stale or [], run_dir)
    calibration = study_calibration(run_dir)
    claims = with_calibration(claims, calibration)
    plot_claims(claims, figures / "claims.png")
    md += [
        _image(
            run_dir,
            "report-figures/claims.png",
            "every claim: effect and 95% interval against its margin, coloured by its verdict after Holm",
        ),
        "",
    ]
    md += claims_section(claims, study.get("replicates") or [study["train"]])
    md += calibration_section(calibration, claims)
    md += left_out_section(config)
    # Claims 1-4 again on the fully fine-tuned model, where the study trained one (study.full_finetune).
    full_claims = (
        with_calibration(decide_claims(Evidence.of_run(run_dir, full_finetune=True), full_finetune=True), calibration)
        if study.get("full_finetune")
        else []
    )
    if full_claims:
        full = study["full_finetune"]
        plot_claims(full_claims, figures / "claims-full.png", "Claims 1-4 on the fully fine-tuned model")
        seeds = study.get("full_finetune_replicates") or [full]
        md += claims_section(full_claims, seeds, "## Claims 1-4 on the fully fine-tuned model")
        md += [_image(run_dir, "report-figures/claims-full.png", "claims 1-4 on the fully fine-tuned model"), ""]
        md += [
            f"Full fine-tuning of every parameter ({full['trainable_parameters']:,}), loss "
            + "; ".join(
                f"{r['initial_train_loss']:.3f} -> {r['final_train_loss']:.3f} in {r['epochs_run']} epochs"
                for r in seeds
            )
            + (f" ({len(seeds)} training seeds)" if len(seeds) > 1 else "")
            + "; the same data, prompts and rules as above.",
            "",
        ]

    train = study["train"]
    md += [
        "## Hyperfitting",
        "",
        f"{train['method']} on blocks {train['blocks'][0]}-{train['blocks'][-1]} ({train['trainable_parameters']:,} of "
        f"{train['total_parameters']:,} parameters trainable); training loss {train['initial_train_loss']:.3f} -> "
        f"{train['final_train_loss']:.3f} in {train.get('epochs_run', '?')} epochs and {train['train_seconds']:.0f} s "
        "(trunk cache built in "
        f"{train['trunk_cache_seconds']:.0f} s)"
        + (
            f"; target loss {train['until_loss']:g} "
            f"{'reached' if train.get('reached_target') else 'NOT reached (epoch cap hit first)'}"
            if train.get("until_loss") is not None
            else ""
        )
        + ".",
        "",
        _image(run_dir, "report-figures/training_curve.png", "training curve"),
        "",
    ]
    dynamics = expansion_dynamics(study["train_log"])
    if dynamics:
        md += [
            f"Dynamics: over {dynamics['epochs']} probed epochs, the final block's Delta PR went "
            f"{dynamics['first']:+.1f} -> "
            f"{dynamics['last']:+.1f}; "
            + (
                f"its Pearson correlation with the greedy TTR is {dynamics['pearson_ttr']:+.2f} (over "
                f"{dynamics['epochs']} epochs of one run: a description, not a test)."
                if dynamics["pearson_ttr"] is not None
                else "no correlation with the greedy TTR is defined: one of the two did not vary."
            ),
            "",
        ]
    generation = generation_table(study["metrics"])
    md += ["## Base and hyperfitted generation beside the human text", "", generation, ""]
    if quality:
        md += ["### Quality", ""]
        if quality["mauve"]:
            md += [
                f"MAUVE against the human continuations (features: the base model's final state; {quality['samples']} "
                "samples per side, so coarse):",
                "",
                "| corpus | base | hyperfitted |",
                "|---|---|---|",
            ]
            md += [
                f"| {corpus} | {row['base']:.3f} | {row['hyperfitted']:.3f} |"
                for corpus, row in quality["mauve"].items()
            ]
        else:
            md += ["MAUVE: not run (study.mauve=true computes it; it wants hundreds of continuations per row)."]
        md.append("")
        judge = quality.get("judge")
        if judge:
            names = list(next(iter(judge["corpora"].values())))
            md += [
                f"Perplexity of each row's text under an independent judge, {judge['model']} (geometric mean over "
                "prompts "
                "[95% interval]). Repetitive text is easy to predict, so a low perplexity alone is no mark of quality: "
                "read "
                "it beside the TTR.",
                "",
                "| corpus | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for corpus, rows in judge["corpora"].items():
                md.append(
                    f"| {corpus} | "
                    + " | ".join(
                        f"{rows[n]['perplexity']:.1f} [{rows[n]['low']:.1f}, {rows[n]['high']:.1f}]" for n in names
                    )
                    + " |"
                )
            md.append("")
    baselines = run.stage("baselines").results
    if baselines:
        md += baselines_section(run_dir, baselines, study["metrics"], quality, figures)
    md += preference_sections(run_dir)
    retention = run.stage("retention").results
    if retention:
        from hyperfitting.report.retention import retention_markdown

        md += retention_markdown(retention)
    for name in studied:  # each analysis's section: its table and figure, the fully fine-tuned model's beside them
        entry, outputs = get_analysis(name), run.analysis(name)
        if analyses[name] and outputs.table is not None:
            md += [f"## {entry.title}", "", outputs.table, _figure(run_dir, outputs.dir, entry.figure, entry.title), ""]
            md += _other_seeds_line(run, name, len(per_replicate[name]))
        if name == "temperature" and frontier:
            main_run = f"the main run ({train['method']} on blocks {train['blocks'][0]}-{train['blocks'][-1]})"
            md += _frontier_section(
                frontier, quality["judge"]["model"], figures, quality.get("frontier_mauve", {}), main_run
            )
        if name == "geometry" and geometry_control and analyses["geometry"]:
            md += _geometry_control_section(analyses["geometry"], geometry_control, study["train"])
        full = run.analysis(name, suffix=FULL)
        if full.table is not None:
            md += [
                f"### {entry.title}: the fully fine-tuned model",
                "",
                full.table,
                _figure(run_dir, full.dir, entry.figure, f"{entry.title}, full fine-tuning"),
                "",
            ]
            md += _other_seeds_line(run, name, len(study.get("full_finetune_replicates") or [None]), full=True)
    if controls:
        md += ["## Claim 5: where to adapt", "", run.stage("controls").table or "", ""]
    md += [
        "## Reproduce",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
        "",
        "| stage | wall time (s) | process peak memory so far (MiB) | estimated decode / teacher-forcing memory beyond "
        "the weights (MiB) "
        "| device peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {k} | {v:.0f} | {peaks[k] if peaks[k] is not None else '-'} | "
        f"{device_peaks[k].get('estimated_memory_mib', '-')} "
        f"| {device_peaks[k].get('device_peak_memory_mib', '-')} |"
        for k, v in timings.items()
    ]
    steps = (quality or {}).get("step_seconds", {})
    # the quality stage's parts
    md += [f"| &nbsp;&nbsp;quality: {step} | {seconds:.0f} | | | |" for step, seconds in steps.items()]
    env = study["environment"]
    precision = study.get("precision")
    if precision:
        md += [
            "",
            f"Precision: training {precision['training']}, decoding {precision['decoding']} (bf16 means autocast over "
            "float32 "
            f"weights; model.precision={precision['setting']}: {precision['reason']}); everything the analyses measure "
            "ran in float32.",
        ]
    provenance = {k: env[k] for k in ("command", "date", "commit") if env.get(k)}
    if provenance:
        md += [
            "",
            f"Run by `{provenance.get('command', '-')}` on {provenance.get('date', '-')}, hyperfitting commit "
            f"{provenance.get('commit') or 'not recorded (not a git checkout)'}.",
        ]
    md += [
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in provenance)
        + f". Data fingerprint {study['data'].get('fingerprint', '-')}.",
        "Determinism: the same config and seed reproduce every number on the same machine (CPU); across machines, "
        "process or "
        "thread counts, floating-point reduction order can change the last digits and, through greedy ties, a few "
        "tokens.",
        "",
    ]
    markdown_text = "\n".join(md)
    write_text(run_dir / "report.md", markdown_text)
    reader = quality["reader"] if quality else []
    write_text(run_dir / "report.html", render_html(markdown_text, run_dir, reader))

    # The saved adapter's (or model's) card gains what the study found about it.
    saved = next(
        (run_dir / "train" / name for name in ("adapter", "model") if (run_dir / "train" / name).is_dir()), None
    )
    if saved is not None:
        from hyperfitting.report.model_card import write_model_card

        write_model_card(
            saved,
            config,
            study["train"],
            study["data"],
            generation,
            [c.__dict__ for c in sorted(claims, key=lambda c: str(c.number))],
        )
    study["claims"] = [c.__dict__ for c in claims]
    # Where each stage's time went, by its progress bars (the quality stage times its parts itself, more finely).
    study["stage_profile"] = {
        name: {
            "seconds": round(seconds, 1),
            "process_peak_memory_mib": peaks[name],
            **device_peaks.get(name, {}),
            **({"step_seconds": done[name]["step_seconds"]} if done[name].get("step_seconds") else {}),
        }
        for name, seconds in timings.items()
    }
    if steps and "quality" in study["stage_profile"]:
        study["stage_profile"]["quality"]["step_seconds"] = steps
    study["claims_full_finetune"] = [c.__dict__ for c in full_claims]
    study["analyses"] = analyses
    study["controls"] = controls
    study["quality"] = quality
    study["baselines"] = baselines
    study["retention"] = retention
    study["stage_seconds"] = timings
    study["stage_peak_memory_mib"] = peaks
    study["expansion_dynamics"] = dynamics
    write_json(run_dir / "metrics.json", study)
    return study


def render_html(markdown_text: str, run_dir: Path, reader: list[dict]) -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"])
    for mark, colour in VERDICT_COLOUR.items():  # verdicts in colour, no emoji (fonts for them are often missing)
        body = body.replace(f"<strong>{mark}</strong>", f'<strong style="color:{colour}">{mark}</strong>')
    # Embed every image so the file opens offline, alone.
    for path in sorted(run_dir.glob("**/*.png")):
        relative = path.relative_to(run_dir).as_posix()
        if f'src="{relative}"' in body:
            encoded = base64.b64encode(path.read_bytes()).decode()
            body = body.replace(f'src="{relative}"', f'src="data:image/png;base64,{encoded}"')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hyperfitting report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }}
th {{ background: #f2f2f2; }}
img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }}
.reader {{ table-layout: fixed; width: 100%; }}
.reader td {{ font-size: 0.92em; overflow-wrap: anywhere; }}
.legend span {{ padding: 1px 6px; margin-right: 6px; border: 1px solid #ddd; }}
</style></head><body>
{body}
{render_reader(reader)}
</body></html>
"""


def _colour(rank: int) -> str | None:
    for limit, colour, _ in RANK_COLOURS:
        if rank <= limit:
            return colour
    return None


def _coloured(tokens: list[str], ranks: list[int]) -> str:
    parts = []
    for token, rank in zip(tokens, ranks):
        text = html.escape(token).replace("\n", "<br>")
        colour = _colour(rank)
        parts.append(f'<span style="background:{colour}" title="base rank {rank}">{text}</span>' if colour else text)
    return "".join(parts)


def render_reader(reader: list[dict]) -> str:
    if not reader:
        return ""
    legend = " ".join(f'<span style="background:{c or "#fff"}">{label}</span>' for _, c, label in RANK_COLOURS)
    rows = []
    for item in reader:
        rows.append(
            f"<tr><td><b>{html.escape(item['prompt'])}</b></td><td>{html.escape(item['human'])}</td>"
            f"<td>{_coloured(item['base_tokens'], item['base_ranks'])}</td>"
            f"<td>{_coloured(item['hyperfitted_tokens'], item['hyperfitted_ranks'])}</td></tr>"
        )
    return (
        "<h2>Reader: generations side by side</h2><p class='legend'>Each generated token is coloured by its rank "
        "under the "
        f"base model (hover for the number): {legend}</p><table class='reader'><tr><th>prompt</th><th>human "
        "continuation</th>"
        f"<th>base (greedy)</th><th>hyperfitted (greedy)</th></tr>{''.join(rows)}</table>"
    )


def compare_runs(run_dirs: list[Path]) -> str:
    """One table over several finished runs: model, corpus, method, loss, diversity gains and claim verdicts."""
    studies = [read_json(Path(run_dir) / "metrics.json") for run_dir in run_dirs]
    # Every registered claim, and any a run decided that is not registered here (a plug-in's): 1, 1b, 1c, 2, ...
    numbers = sorted(
        {spec.key for spec in claim_specs()} | {str(c["number"]) for study in studies for c in study.get("claims", [])}
    )
    lines = [
        "| run | model | corpus | method | final loss | TTR base -> hyperfitted | "
        + " | ".join(f"claim {i}" for i in numbers)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(numbers),
    ]
    for run_dir, study in zip(run_dirs, studies):
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        corpus = config["data"]["corpus"]
        base, tuned = study["metrics"]["base"].get(corpus, {}), study["metrics"]["hyperfitted"].get(corpus, {})
        by_number = {str(c["number"]): c["verdict"] for c in study.get("claims", [])}
        verdicts = [by_number.get(number, "-") for number in numbers]
        lines.append(
            f"| {run_dir} | {config['model']['name']} | {corpus} | {study['train']['method']} | "
            f"{study['train']['final_train_loss']:.3f} | "
            f"{base.get('ttr', float('nan')):.3f} -> {tuned.get('ttr', float('nan')):.3f} | "
            + " | ".join(verdicts)
            + " |"
        )
    # Each run's decoding-methods table, where it has one: hyperfitted greedy among the methods, run by run.
    for run_dir in run_dirs:
        baselines = _maybe(Path(run_dir) / "baselines" / "results.json")
        if not baselines:
            continue
        study = read_json(Path(run_dir) / "metrics.json")
        quality = _maybe(Path(run_dir) / "quality" / "results.json") or {}
        planes = (quality.get("judge") or {}).get("baselines", {})
        for corpus in dict.fromkeys(c for row in baselines.values() for c in row["corpora"]):
            lines += [
                "",
                f"{run_dir}: decoding methods on {corpus}",
                "",
                baselines_table(
                    corpus,
                    baselines,
                    study["metrics"],
                    planes.get(corpus),
                    quality.get("baselines_mauve", {}).get(corpus),
                ),
            ]
    return "\n".join(lines) + "\n"
