"""How often is each verdict wrong? Every rule, run on simulated studies whose truth is known.

For each rule we build worlds at four truths: the effect exactly at the margin and on the wrong side of it (the
claim false), just past the margin on the claimed side and at the paper's size (the claim true). Each world is a
constructed set of results with this study's sizes (prompts, replicates, sampling seeds, steps, held-out blocks,
static models, frontier points) and spreads (the run's own where it has them, the quick studies' measured spreads
otherwise), with a training-seed shift of every trained model drawn in every world (one training run or several),
passed through the real claim function: the same estimator, interval and decision a study uses. Over many worlds
we count

- ``false_holds``: P(holds | claim false), the larger of the two false truths (goal: at most 2.5%);
- ``false_fails``: P(does not hold | claim true), the larger of just past the margin and the paper's size (at most
2.5%);
- ``coverage``: how often the 95% interval contains the true effect (goal: at least 95% at every truth);
- ``power``: P(holds | the paper's effect size).

Each goal is judged by a one-sided binomial test over the worlds (MISS_LEVEL): a rule misses a goal when the worlds
show it does, not when a point estimate strays by chance. A rule that misses at a study's sizes decides nothing in
that study (report/build.py: with_calibration).

A calibration that could not fail would be no check, so ``BROKEN_RULES`` holds a deliberately
wrong estimator (claim 3 with a binomial interval over steps, ignoring that steps are nested in
prompts); the calibration must flag it.

Where the paper gives no effect size for a rule (1b, 1c, claim 3's unexplained share), the
"paper" truth is an assumption, named in ``TRUTHS``.
"""

from __future__ import annotations

import math
import zlib
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Callable

import numpy as np

from hyperfitting import stats
from hyperfitting.claims import FAILS, HOLDS, Claim, claim_specs, make_claim, ranks, static_bias, temperature
from hyperfitting.claims.static_bias import world_static_bias
from hyperfitting.claims.temperature import world_like_for_like, world_temperature
from hyperfitting.claims.worlds import Design, Spreads, Truths, temperature_results  # noqa: F401 (Design, Spreads: the calibration API)

FALSE_HOLDS_GOAL = 0.025  # nominal: "holds" is a one-sided 2.5% test at the margin
FALSE_FAILS_GOAL = 0.025  # and "does not hold" one at 2.5% on the other side of it
COVERAGE_GOAL = (0.95, 0.97)  # at least nominal; above the range the interval is conservative (reported, not failed)
MISS_LEVEL = (
    0.01  # a rate misses its goal when a one-sided binomial test over the worlds rejects the goal at this level
)


# ------------------------------------------------------------------------------ rules broken on purpose, and stressed
#
# Each claim's own simulator is in its file (hyperfitting/claims/); these reuse them.


def broken_world_ranks(design, spreads, effect, rng):
    """The deliberately broken rule: claim 3's share with a binomial (Wald) interval over all steps, as if steps were
    independent."""
    results = ranks.rank_results(design, spreads, rng, effect)
    unexplained = sum(sum(r["per_prompt"]["unexplained_overrides"]) for r in results)
    steps = sum(sum(r["per_prompt"]["steps"]) for r in results)
    p = unexplained / steps
    half = stats.Z * math.sqrt(p * (1 - p) / steps)
    estimate = stats.Estimate(p, p - half, p + half, steps, "binomial over steps (BROKEN: ignores prompts)")
    return make_claim(3, estimate, [], "deliberately broken", seed_sd=(0.0, "broken: none")), effect


def broken_world_temperature(design, spreads, effect, rng):
    """The deliberately broken rule: claim 1 with the training seeds ignored, an interval over prompts of the
    replicate-averaged differences alone, as if the training seed added no variance (no measured spread between
    replicates, no declared one at one replicate)."""
    results = temperature_results(design, spreads, rng, effect, 0.0)
    hyperfitted = np.mean([r["per_prompt"]["hyperfitted"][0] for r in results], axis=0)
    at_t_star = np.mean([np.mean(r["per_prompt"]["base, T*"], axis=0) for r in results], axis=0)
    estimate = stats.paired_difference(hyperfitted, at_t_star)
    return make_claim(1, estimate, [], "deliberately broken", seed_sd=(0.0, "broken: none")), effect


def rule_worlds() -> dict[str, tuple[Callable, Truths]]:
    """Every registered claim's simulator and truths (a claim without a simulator is uncalibrated: report/build.py)."""
    return {spec.key: (spec.simulate, spec.truths) for spec in claim_specs() if spec.simulate is not None}


BROKEN_RULES: dict[str, tuple[Callable, Truths]] = {
    "3, broken: binomial over steps": (broken_world_ranks, ranks.TRUTHS),
}
# The training seed ignored: broken at every size, now that one training run carries a declared seed spread.
BROKEN_WITH_REPLICATES: dict[str, tuple[Callable, Truths]] = {
    "1, broken: training seeds ignored": (broken_world_temperature, temperature.TRUTHS_1),
}
LOOPING_PROMPTS = 0.10


def _stressed(simulate: Callable, **changes) -> Callable:
    def world(design, spreads, effect, rng):
        return simulate(design, replace(spreads, **changes), effect, rng)

    return world


# The t-interval rules again, on skewed per-prompt differences (10% of prompts loop): the main table's worlds are
# normal, the noise the t interval assumes; these rows say how much that assumption carries at the study's size.
STRESSED_RULES: dict[str, tuple[Callable, Truths]] = {
    f"1, {LOOPING_PROMPTS:.0%} of prompts loop": (
        _stressed(world_temperature, loop_share=LOOPING_PROMPTS),
        temperature.TRUTHS_1,
    ),
    f"1c, {LOOPING_PROMPTS:.0%} of prompts loop": (
        _stressed(world_like_for_like, loop_share=LOOPING_PROMPTS),
        temperature.TRUTHS_1C,
    ),
    # Claim 2's main row has one best model and the rest far below; with the static models tied the best-of estimate is
    # biased upwards: fewer false holds, and the coverage of its interval is the figure to read.
    "2, static models tied": (
        lambda design, spreads, effect, rng: world_static_bias(design, spreads, effect, rng, tied=True),
        static_bias.TRUTHS,
    ),
}


def _covers(claim: Claim, truth: float) -> bool | None:
    e = claim.estimate
    if not e or not e.get("decisive", True):
        return None
    return e["low"] <= truth <= e["high"]


def _misses(count: int, worlds: int, goal: float, above: bool) -> bool:
    """Does a rate of ``count`` in ``worlds`` miss its goal: a one-sided binomial test rejects "the rate is at most (or,
    for coverage, at least) the goal" at MISS_LEVEL? Read with the worlds' own Monte-Carlo error, not against the
    point."""
    from scipy.stats import binomtest

    if worlds == 0:
        return False
    return binomtest(count, worlds, goal, alternative="greater" if above else "less").pvalue < MISS_LEVEL


@contextmanager
def _one_torch_thread():
    """Claim 4's worlds run thousands of 12-wide matrix products: threads only spin on them (ten times slower with two
    threads beside another job on two cores, measured), so the calibration runs on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TRUTH_LABELS = ("at the margin", "wrong side", "just past", "paper size")


def calibrate_rule(
    name: str, design: Design, spreads: Spreads, worlds: int = 200, seed: int = 0, table: dict | None = None
) -> dict:
    """Error rates of one rule over ``worlds`` simulated studies at each truth (seeded: the same numbers every run).

    Truths: at the margin and on its wrong side (the claim false: false holds), just past the margin on the claimed
    side and at the paper's size (the claim true: false fails). Every rate is judged against its nominal goal by a
    binomial test over the worlds (MISS_LEVEL), and coverage truth by truth."""
    with _one_torch_thread():
        counted = {label: _worlds_at(name, label, design, spreads, worlds, seed, table) for label in TRUTH_LABELS}
    return _rule_result(counted, worlds, _table(table)[name][1])


def _table(table: dict | None) -> dict:
    return table or {**rule_worlds(), **BROKEN_RULES, **BROKEN_WITH_REPLICATES, **STRESSED_RULES}


def _effect(truths: Truths, label: str) -> float:
    return {
        "at the margin": truths.margin,
        "wrong side": truths.wrong_side,
        "just past": truths.margin + (truths.margin - truths.wrong_side),
        "paper size": truths.paper,
    }[label]


def _worlds_at(
    name: str, label: str, design: Design, spreads: Spreads, worlds: int, seed: int, table: dict | None = None
) -> tuple[dict, list[bool], float]:
    """One rule at one truth over ``worlds`` worlds: (verdict counts, coverage of each interval, the true effect). Its
    random numbers depend on the rule, the truth and the seed alone, so the truths can run in any order or process."""
    simulate, truths = _table(table)[name]
    index = {"at the margin": 0, "wrong side": 1, "paper size": 2, "just past": 3}[label]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
    counts = {HOLDS: 0, FAILS: 0, "inconclusive": 0}
    truth, mine = None, []
    for _ in range(worlds):
        claim, truth = simulate(design, spreads, _effect(truths, label), rng)
        counts[claim.verdict if claim.verdict in counts else "inconclusive"] += 1
        if (c := _covers(claim, truth)) is not None:
            mine.append(c)
    return counts, mine, float(truth)


def _rule_result(counted: dict[str, tuple[dict, list[bool], float]], worlds: int, truths: Truths) -> dict:
    """A rule's error rates from its worlds at the four truths, each goal judged by its binomial test."""
    by_truth, covered, missed = {}, [], []
    for label in ("at the margin", "wrong side", "just past", "paper size"):
        counts, mine, truth = counted[label]
        covered += mine
        by_truth[label] = {
            "effect": truth,
            **{k: v / worlds for k, v in counts.items()},
            "coverage": float(np.mean(mine)) if mine else float("nan"),
            "intervals": len(mine),
        }
        if label in ("at the margin", "wrong side") and _misses(counts[HOLDS], worlds, FALSE_HOLDS_GOAL, above=True):
            missed.append(f"false holds {counts[HOLDS] / worlds:.1%} {label}")
        if label in ("just past", "paper size") and _misses(counts[FAILS], worlds, FALSE_FAILS_GOAL, above=True):
            missed.append(f"false fails {counts[FAILS] / worlds:.1%} {label}")
        if mine and _misses(int(sum(mine)), len(mine), COVERAGE_GOAL[0], above=False):
            missed.append(f"coverage {np.mean(mine):.1%} {label}")
    false_holds = max(by_truth["at the margin"][HOLDS], by_truth["wrong side"][HOLDS])
    coverage = float(np.mean(covered)) if covered else float("nan")
    result = {
        "false_holds": false_holds,
        "false_fails": max(by_truth["just past"][FAILS], by_truth["paper size"][FAILS]),
        "coverage": coverage,
        "power": by_truth["paper size"][HOLDS],
        "worlds": worlds,
        "paper_size": truths.paper_source,
        "by_truth": by_truth,
    }
    result["under_covers_at"] = [
        label for label in by_truth if any(m.startswith("coverage") and m.endswith(label) for m in missed)
    ]
    result["missed"] = missed
    result["conservative"] = bool(math.isfinite(coverage) and coverage > COVERAGE_GOAL[1])
    result["meets_goals"] = not missed
    return result


def _worlds_in_worker(task: tuple) -> tuple[dict, list[bool], float]:
    with _one_torch_thread():
        return _worlds_at(*task)


def calibration_processes(worlds: int, tasks: int) -> int:
    """Worker processes for the calibration: one per core the study uses (torch's threads), when there is enough work
    to pay for starting them (forked, so every registered claim comes along); one where fork does not exist or a
    process group is running."""
    import multiprocessing
    import torch

    if worlds < 50 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return 1  # a fork beside the process group's threads can catch one of their locks held: its worker would hang
    return max(1, min(torch.get_num_threads(), tasks))


def calibrate(
    design: Design,
    spreads: Spreads,
    worlds: int = 200,
    seed: int = 0,
    rules: list[str] | None = None,
    broken: bool = True,
    progress: bool = False,
    processes: int | None = None,
) -> dict:
    """Every rule's error rates at this design (and the deliberately broken rule, which must be flagged).

    The (rule, truth) pairs are independent (each seeds its own random numbers), so they run in ``processes`` worker
    processes (default: calibration_processes) and give the same numbers as in one."""
    from hyperfitting.progress import progress_bar

    names = list(rules or rule_worlds())
    names += list(STRESSED_RULES) if not rules else []
    names += (list(BROKEN_RULES) + list(BROKEN_WITH_REPLICATES)) if broken else []
    out = {
        "design": asdict(design),
        "spreads": asdict(spreads),
        "worlds": worlds,
        "seed": seed,
        "goals": {
            "false_holds_at_most": FALSE_HOLDS_GOAL,
            "false_fails_at_most": FALSE_FAILS_GOAL,
            "coverage_between": list(COVERAGE_GOAL),
            "judged_by": f"one-sided binomial test at {MISS_LEVEL:g}",
        },
        "rules": {},
    }
    tasks = [(name, label, design, spreads, worlds, seed) for name in names for label in TRUTH_LABELS]
    processes = processes or calibration_processes(worlds, len(tasks))
    bar = progress_bar(total=len(tasks), desc="calibrating rules x truths", disable=not progress)
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            counted = []
            for result in pool.imap(_worlds_in_worker, tasks):  # in the tasks' order
                counted.append(result)
                bar.update()
    else:
        counted = []
        with _one_torch_thread():
            for task in tasks:
                counted.append(_worlds_at(*task))
                bar.update()
    bar.close()
    table, by_task = _table(None), {task[:2]: result for task, result in zip(tasks, counted)}
    for name in names:
        mine = {label: by_task[name, label] for label in TRUTH_LABELS}
        out["rules"][name] = _rule_result(mine, worlds, table[name][1])
    return out


def coverage_text(coverage: float) -> str:
    return f"{coverage:.1%}" if math.isfinite(coverage) else "n/a (no interval at these sizes)"


def calibration_table(calibration: dict, preset: str = "this study") -> str:
    """One row per rule: false holds, false fails, coverage, power, and whether the goals are met."""
    d = calibration["design"]
    lines = [
        f"Calibration at {preset}'s sizes ({d['prompts']} prompts, {d['replicates']} replicate(s), {d['seeds']} "
        "sampling seed(s), "
        f"{d['blocks']} held-out blocks, {d.get('static_models', '?')} static models, {d.get('rivals', '?')} rival "
        "layers), "
        f"{calibration['worlds']} simulated studies per truth; spreads: {calibration['spreads']['source']}; "
        f"every world draws a training-seed shift of each trained model (SD {calibration['spreads']['seed_sd']:g}, or "
        "the "
        f"claim's declared one, each world's true SD drawn from what {calibration['spreads'].get('seed_sd_df', 2):g} "
        "degrees of "
        "freedom allow). Goals, nominal: false holds (at the margin and on its wrong side) and false fails (just past "
        f"it and at the paper's size) at most {FALSE_HOLDS_GOAL:.1%}, coverage at least {COVERAGE_GOAL[0]:.0%} at "
        "every truth, "
        f"each judged by a one-sided binomial test over the worlds at {MISS_LEVEL:g}. Rows named "
        "'... of prompts loop' rerun a rule on skewed per-prompt differences; rows named 'broken' are wrong on purpose "
        "and must miss the goals.",
        "",
        "| rule | false holds | false fails | coverage | power at the paper's size | meets the goals |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in calibration["rules"].items():
        coverage = coverage_text(r["coverage"]) + (" (conservative)" if r.get("conservative") else "")
        verdict = "yes" if r["meets_goals"] else "**no**: " + "; ".join(r.get("missed", []))
        lines.append(
            f"| {name} | {r['false_holds']:.1%} | {r['false_fails']:.1%} | {coverage} | {r['power']:.1%} | {verdict} |"
        )
    return "\n".join(lines) + "\n"
