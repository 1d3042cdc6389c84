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
from pathlib import Path

from hyperfitting.config import RunConfig, replace
from hyperfitting.pipeline.analyses import AnalysisContext
from hyperfitting.pipeline.graph import StageGraph, StageSpec, _analysis_keys, _values, data_spec, model_files
from hyperfitting.pipeline.stages import data_stage
from hyperfitting.registry import get_analysis
from hyperfitting.report.validation import validation_markdown
from hyperfitting.claims import FAILS, HOLDS, Evidence, decide_claims, get_claim
from hyperfitting.claims.core import DECLARED_SEED_SPREAD
from hyperfitting.rundir import read_json, write_json, write_text

# case -> (the analyses it needs, {claim: (forbidden verdicts, why)}): only what the mechanism settles by construction.
TRUTHS: dict[str, tuple[tuple[str, ...], dict]] = {
    "static-bias": (
        ("static-bias", "ranks"),
        {
            2: ((HOLDS,), "the change is a fixed offset per token: a static reweighting explains all of it"),
            3: ((HOLDS,), "a fixed offset per token is context-free"),
        },
    ),
    "affine": (
        ("static-bias", "ranks"),
        {
            2: ((HOLDS,), "a fixed scale and offset per token is a static reweighting of each token's logit"),
            3: ((HOLDS,), "a fixed scale and offset per token is context-free"),
        },
    ),
    "temperature": (
        ("temperature", "static-bias", "ranks"),
        {
            1: ((HOLDS,), "the change is a temperature"),
            "1c": ((HOLDS,), "sampling the planted model at T=1 is sampling the base model at the planted temperature"),
            2: ((HOLDS,), "a temperature is a static reweighting"),
            3: ((HOLDS,), "a temperature is context-free (and changes no greedy choice)"),
        },
    ),
    "repetition-penalty": (
        ("static-bias", "ranks"),
        {
            3: ((FAILS,), "a repetition penalty re-ranks by what the context holds: context-dependent by construction"),
        },
    ),
    "final-expansion": (
        ("geometry",),
        {
            4: ((FAILS,), "the final block's states are the only ones that change, and their dimension rises"),
        },
    ),
    "middle-expansion": (
        ("geometry",),
        {
            4: (
                (HOLDS,),
                "the dimension rises in the middle block only; the final block's states are the base model's",
            ),
        },
    ),
}


# Not a plant: one training recipe, trained with two seeds (the study's replicates), set against itself as claim 5's two
# arms. Their share of each other's gain is 1 by construction, above the margin 0.8: "does not hold" would be wrong.
A_A = "a-a"
A_A_TRUTH = {
    5: (
        (FAILS,),
        "both arms are one recipe trained with two seeds (the study's replicates): each reaches the other's "
        "whole gain by construction",
    )
}
CASES = (*TRUTHS, A_A)


def judge_a_a(study_dir: Path) -> list[dict]:
    """Claim 5 on the study's own replicates, each ordered pair of neighbours (0 against 1, 1 against 2, ...) as
    (last blocks, all blocks): the real claim function, with each arm's declared seed spread, on an A/A comparison."""
    from hyperfitting.claims.late_stage import claim_late_stage
    from hyperfitting.layout import RunFolder

    run = RunFolder(study_dir)
    arms = []
    for k in range(64):
        temperature, train = run.analysis("temperature", k).results, run.train(k).json("summary.json")
        if not (temperature and train):
            break
        per_prompt = temperature["per_prompt"]
        arms.append(
            {
                "replicate": k,
                "base": per_prompt["base, greedy"][0],
                "tuned": per_prompt["hyperfitted"][0],
                "train": train,
            }
        )
    mechanism = (
        f"the study's recipe ({arms[0]['train']['method']} on blocks {arms[0]['train']['blocks'][0]}-"
        f"{arms[0]['train']['blocks'][-1]}) trained with {len(arms)} seeds (its replicates), each as claim 5's "
        "last-blocks "
        "arm against the next as its all-blocks arm"
        if arms
        else f"needs the study folder {study_dir} with two or more replicates (study.replicates): run the study first"
    )
    if len(arms) < 2:
        return [
            {
                "case": A_A,
                "mechanism": mechanism,
                "claim": 5,
                "name": get_claim(5).name,
                "verdict": "not run",
                "holm": "not run",
                "estimate": None,
                "reason": mechanism,
                "forbidden": [FAILS],
                "truth": A_A_TRUTH[5][1],
                "agrees": True,
                "tested": False,
            }
        ]

    def arm(a):
        t = a["train"]
        return {
            "initial_train_loss": t["initial_train_loss"],
            "final_train_loss": t["final_train_loss"],
            "epochs": t["epochs_run"],
            "trainable_parameters": t["trainable_parameters"],
            "per_prompt_ttr": a["tuned"],
            "seed": a["replicate"],
        }

    def row(claim, reason: str) -> dict:
        return {
            "case": A_A,
            "mechanism": mechanism,
            "claim": 5,
            "name": claim.name,
            "verdict": claim.verdict,
            "holm": claim.verdict,
            "estimate": claim.estimate,
            "reason": f"{reason}: " + claim.reason,
            "forbidden": [FAILS],
            "truth": A_A_TRUTH[5][1],
            "agrees": claim.verdict != FAILS,
            "tested": not any(not k["passed"] for k in claim.checks),
        }

    rows = []
    for first, second in zip(arms, arms[1:] + arms[:1] if len(arms) > 2 else arms[1:]):
        claim = claim_late_stage(
            {
                "until_loss": first["train"].get("until_loss"),
                "base": {"per_prompt_ttr": first["base"]},
                "methods": {"lora:last": arm(first), "lora:all": arm(second)},
            }
        )
        rows.append(row(claim, f"replicate {first['replicate']} against replicate {second['replicate']}"))
    if len(arms) >= 4:  # several seeds per arm (study.controls_replicates' rule): the even replicates against the odd
        half = len(arms) // 2
        last, every = [arm(a) for a in arms[0::2][:half]], [arm(a) for a in arms[1::2][:half]]
        claim = claim_late_stage(
            {
                "until_loss": arms[0]["train"].get("until_loss"),
                "base": {"per_prompt_ttr": arms[0]["base"]},
                "methods": {"lora:last": last[0], "lora:all": every[0]},
                "replicates": {"lora:last": last, "lora:all": every},
            }
        )
        seeds = lambda side: ", ".join(str(a["seed"]) for a in side)  # noqa: E731
        rows.append(row(claim, f"replicates {seeds(last)} against replicates {seeds(every)}, seeds per arm"))
    return rows


def validation_graph(config: RunConfig, run_dir: Path, cases: list[str]) -> StageGraph:
    """The data stage, then one stage per planted case (its analyses' results), each fingerprinted by the analysis
    settings, the model and the source of the planted mechanisms and of the analyses it runs."""
    import hyperfitting.analysis as analysis_code
    import hyperfitting.models.planted as planted

    specs = [data_spec(config)]
    for case in cases:
        analyses = TRUTHS[case][0]
        # The code that makes the plant and measures it: a change to either reruns the case.
        files = (
            model_files(config.model.name)
            + (Path(planted.__file__), Path(analysis_code.__file__).parent)
            + tuple(path for name in analyses for path in get_analysis(name).source_files())
        )
        specs.append(
            StageSpec(
                f"validate-{case}",
                f"the planted {case}: {', '.join(analyses)}",
                config,
                sections=("model", "generate"),
                parents=("data",),
                files=files,
                values={**_values(config, _analysis_keys(config)), "case": case},
                kind="validate",
            )
        )
    return StageGraph(run_dir, specs)


def run_validation(config: RunConfig, run_dir: Path, cases: list[str] | None = None) -> dict:
    """Every planted case through the real analyses and verdicts; writes validation.json, validation.md and .html."""
    from hyperfitting.analysis.common import analysis_tokens
    from hyperfitting.models.loading import load_model
    from hyperfitting.models.planted import loop_habits, plant
    from hyperfitting.pipeline.stages import environment_record
    from hyperfitting.report.build import render_html

    cases = cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        from hyperfitting.errors import ConfigError

        raise ConfigError(f"Unknown planted case(s) {unknown}; choose from {', '.join(CASES)}.")
    planted_cases = [c for c in cases if c in TRUTHS]
    environment = environment_record()  # the command, date and commit that run it: taken as it starts
    graph = validation_graph(config, run_dir, planted_cases)
    base, tokenizer = load_model(config.model)
    data = data_stage(graph, tokenizer)
    fit_blocks = data.train_blocks[:16]  # the plants are set on training text, never on the held-out text measured
    habits = None
    rows = []
    for case in planted_cases:
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
    if A_A in cases:
        rows.extend(judge_a_a(study_folder(run_dir)))
    seconds = {
        case: sum(read_json(run_dir / f"validate-{case}" / "results.json").get("seconds", {}).values())
        for case in planted_cases
    }
    summary = {
        "environment": environment,
        "seconds": seconds,
        "cases": cases,
        "rows": rows,
        "contradictions": sum(not r["agrees"] for r in rows),
        "decided": sum(r["verdict"] in (HOLDS, FAILS) for r in rows),
        "untested": sum(not r["tested"] for r in rows),
        "config": config.run_dir,
        "prompts": sum(len(v) for v in data.prompts.values()),
    }
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
        rows.append(
            {
                "case": case,
                "mechanism": planting["mechanism"],
                "claim": number,
                "name": get_claim(number).name,
                "verdict": claim.verdict,
                "holm": claim.holm,
                "estimate": claim.estimate,
                "reason": claim.reason,
                "forbidden": list(forbidden),
                "truth": why,
                "agrees": agrees,
                "tested": tested,
            }
        )
    temperature = results["analyses"].get("temperature")
    if case == "temperature" and temperature:
        planted_t = planting["parameters"]["temperature"]
        found = temperature["t_star"]
        close = {way: abs(t - planted_t) <= 0.02 * planted_t for way, t in found.items()}
        rows.append(
            {
                "case": case,
                "mechanism": planting["mechanism"],
                "claim": "T*",
                "name": "the entropy-matched T* recovers the planted temperature",
                "verdict": ", ".join(f"{way.replace('_', '-')} {t:.3f}" for way, t in found.items()),
                "holm": None,
                "estimate": None,
                "reason": "",
                "forbidden": ["further than 2% from the planted temperature"],
                "truth": f"planted T = {planted_t:g}",
                "agrees": all(close.values()),
                "tested": True,
            }
        )
    return rows


VALIDATE_SUFFIX = "-validate"


def validation_config(config: RunConfig) -> RunConfig:
    """The validation's own folder beside the study's: `RUN_DIR-validate`."""
    return replace(config, run_dir=str(config.run_dir).rstrip("/") + VALIDATE_SUFFIX)


def study_folder(validation_dir: Path) -> Path:
    """The study folder a validation folder stands beside (its replicates are the A/A case's arms)."""
    return validation_dir.with_name(validation_dir.name.removesuffix(VALIDATE_SUFFIX))
