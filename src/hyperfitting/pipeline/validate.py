"""`hyperfit validate`: the study's own analyses and verdict rules on planted truths.

Each planted model (models/planted.py) stands where the hyperfitted model would: the real data stage
prepares the study's prompts and held-out text, the real analyses run on (base, planted), and the real
claim functions (hyperfitting/claims/, with Holm's correction) decide. Every case forbids the verdicts its
mechanism contradicts; a verdict that its truth forbids is a failure of the rules, reported as such.

The manipulation check "model hyperfitted" asks whether training reached the target loss; a planted
model was not trained, so the check is replaced by the planted mechanism's description (recorded in
the check), and the geometry's "localisation forced by training" check is not raised for a plant whose
location is the point of the test. Every other check (gains, static models that bite, degeneracy, the
entropy match) runs as in a study.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from hyperfitting.config import RunConfig
from hyperfitting.pipeline.analyses import AnalysisContext
from hyperfitting.pipeline.graph import StageGraph, StageSpec, _analysis_values, data_spec, model_files
from hyperfitting.pipeline.stages import data_stage
from hyperfitting.registry import get_analysis
from hyperfitting.report.validation import validation_markdown
from hyperfitting.claims import FAILS, HOLDS, Evidence, decide_claims, get_claim
from hyperfitting.claims.core import DECLARED_SEED_SPREAD
from hyperfitting.rundir import read_json, write_json, write_text

# case -> (the analyses it needs, {claim: (forbidden verdicts, why)}): only what the mechanism settles by construction.
TRUTHS: dict[str, tuple[tuple[str, ...], dict]] = {
    "static-bias": (("static-bias", "ranks"), {
        2: ((HOLDS,), "the change is a fixed offset per token: a static reweighting explains all of it"),
        3: ((HOLDS,), "a fixed offset per token is context-free"),
    }),
    "affine": (("static-bias", "ranks"), {
        2: ((HOLDS,), "a fixed scale and offset per token is a static reweighting of each token's logit"),
        3: ((HOLDS,), "a fixed scale and offset per token is context-free"),
    }),
    "temperature": (("temperature", "static-bias", "ranks"), {
        1: ((HOLDS,), "the change is a temperature"),
        "1c": ((HOLDS,), "sampling the planted model at T=1 is sampling the base model at the planted temperature"),
        2: ((HOLDS,), "a temperature is a static reweighting"),
        3: ((HOLDS,), "a temperature is context-free (and changes no greedy choice)"),
    }),
    "repetition-penalty": (("static-bias", "ranks"), {
        3: ((FAILS,), "a repetition penalty re-ranks by what the context holds: context-dependent by construction"),
    }),
    "final-expansion": (("geometry",), {
        4: ((FAILS,), "the final block's states are the only ones that change, and their dimension rises"),
    }),
    "middle-expansion": (("geometry",), {
        4: ((HOLDS,), "the dimension rises in the middle block only; the final block's states are the base model's"),
    }),
}


def validation_graph(config: RunConfig, run_dir: Path, cases: list[str]) -> StageGraph:
    """The data stage, then one stage per planted case (its analyses' results), each fingerprinted by the analysis
    settings, the model and the source of the planted mechanisms and of the analyses it runs."""
    import hyperfitting.analysis as analysis_code
    import hyperfitting.models.planted as planted

    specs = [data_spec(config)]
    for case in cases:
        analyses = TRUTHS[case][0]
        # The code that makes the plant and measures it: a change to either reruns the case.
        files = model_files(config.model.name) + (Path(planted.__file__), Path(analysis_code.__file__).parent) + tuple(
            path for name in analyses for path in get_analysis(name).source_files())
        specs.append(StageSpec(f"validate-{case}", f"the planted {case}: {', '.join(analyses)}", config, sections=("model", "generate"),
                               parents=("data",), files=files, values={**_analysis_values(config), "case": case}, kind="validate"))
    return StageGraph(run_dir, specs)


def run_validation(config: RunConfig, run_dir: Path, cases: list[str] | None = None) -> dict:
    """Every planted case through the real analyses and verdicts; writes validation.json, validation.md and .html."""
    from hyperfitting.analysis.common import analysis_tokens
    from hyperfitting.models.loading import load_model
    from hyperfitting.models.planted import loop_habits, plant
    from hyperfitting.pipeline.stages import environment_record
    from hyperfitting.report.build import render_html

    cases = cases or list(TRUTHS)
    unknown = [c for c in cases if c not in TRUTHS]
    if unknown:
        from hyperfitting.errors import ConfigError

        raise ConfigError(f"Unknown planted case(s) {unknown}; choose from {', '.join(TRUTHS)}.")
    graph = validation_graph(config, run_dir, cases)
    base, tokenizer = load_model(config.model)
    data = data_stage(graph, tokenizer)
    fit_blocks = data.train_blocks[:16]  # the plants are set on training text, never on the held-out text measured
    habits = None
    rows = []
    for case in cases:
        analyses, truths = TRUTHS[case]

        def work(folder: Path, case=case, analyses=analyses) -> dict:
            nonlocal habits
            if case in ("static-bias", "affine") and habits is None:
                habits = loop_habits(base, fit_blocks, config.data.prompt_tokens, analysis_tokens(config))
            planted = plant(base, case, fit_blocks, habits=habits if case in ("static-bias", "affine") else None)
            # control=True: the rank analysis compares with its null and leaves out the rank transplant (not a verdict)
            context = AnalysisContext(config, data, models=(base, planted, tokenizer), control=True)
            results = {"planting": vars(planted.planted), "analyses": {}}
            for name in analyses:
                started = time.perf_counter()
                results["analyses"][name] = get_analysis(name).run_on(context)
                results.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
            write_json(folder / "results.json", results)
            return results

        results = graph.run(f"validate-{case}", work, load=lambda folder: read_json(folder / "results.json"))
        rows.extend(judge_case(case, results, truths))
    seconds = {case: sum(read_json(run_dir / f"validate-{case}" / "results.json").get("seconds", {}).values()) for case in cases}
    summary = {"environment": environment_record(), "seconds": seconds, "cases": cases, "rows": rows,
               "contradictions": sum(not r["agrees"] for r in rows),
               "decided": sum(r["verdict"] in (HOLDS, FAILS) for r in rows), "untested": sum(not r["tested"] for r in rows),
               "config": config.run_dir,
               "prompts": sum(len(v) for v in data.prompts.values())}
    write_json(run_dir / "validation.json", summary)
    text = validation_markdown(summary)
    write_text(run_dir / "validation.md", text)
    write_text(run_dir / "validation.html", render_html(text, run_dir, []))
    return summary


def judge_case(case: str, results: dict, truths: dict) -> list[dict]:
    """The real claims on one planted case's results, each set beside what its truth forbids."""
    planting = results["planting"]
    trains = [{"planted": planting["case"], "mechanism": planting["mechanism"]}]
    analyses = {name: [r] for name, r in results["analyses"].items()}
    # A planted model was made, not trained: no training seed's spread belongs in its intervals.
    token = DECLARED_SEED_SPREAD.set(False)
    try:
        claims = {str(c.number): c for c in decide_claims(Evidence(analyses, trains))}
    finally:
        DECLARED_SEED_SPREAD.reset(token)
    rows = []
    for number, (forbidden, why) in truths.items():
        claim = claims[str(number)]
        agrees = claim.verdict not in forbidden and claim.holm not in forbidden
        # A verdict a manipulation check kept from deciding did not test the rule: the table says so.
        tested = not any(not k["passed"] for k in claim.checks) and claim.verdict != "not run"
        rows.append({"case": case, "mechanism": planting["mechanism"], "claim": number, "name": get_claim(number).name,
                     "verdict": claim.verdict, "holm": claim.holm, "estimate": claim.estimate, "reason": claim.reason,
                     "forbidden": list(forbidden), "truth": why, "agrees": agrees, "tested": tested})
    temperature = results["analyses"].get("temperature")
    if case == "temperature" and temperature:
        planted_t = planting["parameters"]["temperature"]
        found = temperature["t_star"]
        close = {way: abs(t - planted_t) <= 0.02 * planted_t for way, t in found.items()}
        rows.append({"case": case, "mechanism": planting["mechanism"], "claim": "T*", "name": "the entropy-matched T* recovers the planted temperature",
                     "verdict": ", ".join(f"{way.replace('_', '-')} {t:.3f}" for way, t in found.items()), "holm": None, "estimate": None,
                     "reason": "", "forbidden": ["further than 2% from the planted temperature"], "truth": f"planted T = {planted_t:g}",
                     "agrees": all(close.values()), "tested": True})
    return rows


def validation_config(config: RunConfig) -> RunConfig:
    """The validation's own folder beside the study's: `RUN_DIR-validate`."""
    return replace(config, run_dir=str(config.run_dir).rstrip("/") + "-validate")
