"""The statistical review's cases, each on constructed inputs: the rule must not decide for the wrong reason, and a true
effect must still hold (a fix cannot be a rule that never decides). Then the calibration: every rule's error rates,
measured on simulated studies, and a deliberately broken rule that the calibration must flag."""

import math

import numpy as np
import pytest
import torch

from hyperfitting import stats
from hyperfitting.analysis.teacher_forcing import step_summary
from hyperfitting.analysis.ranks import copied_steps, null_choices, null_comparison
from hyperfitting.analysis.static_bias import fit_over_vocabulary, fit_static_temperature, static_choice
from hyperfitting.claims import FAILS, HOLDS, INCONCLUSIVE, Check, decide, get_claim, make_claim, with_holm
from hyperfitting.claims.frontier import frontier_gap
from hyperfitting.claims.late_stage import claim_late_stage
from hyperfitting.claims.ranks import claim_ranks
from hyperfitting.claims.static_bias import claim_static_bias
from hyperfitting.claims.temperature import claim_temperature, claim_temperature_like_for_like
from hyperfitting.report.calibration import (
    BROKEN_RULES,
    BROKEN_WITH_REPLICATES,
    LOOPING_PROMPTS,
    STRESSED_RULES,
    Design,
    Spreads,
    calibrate,
    calibrate_rule,
    calibration_table,
    rule_worlds,
)

TRAINED = {"initial_train_loss": 4.0, "final_train_loss": 0.06, "until_loss": 0.1}


def normal(mean, sd, n, seed):
    return np.random.default_rng(seed).normal(mean, sd, n)


def temperature(tuned, at_t_star, base, t_star=(0.6, 0.62), matched=(True, True), tuned_t1=None, at_paths=None):
    per_prompt = {
        "hyperfitted": [list(tuned)],
        "base, T*": [list(at_t_star)],
        "base, greedy": [list(base)],
        "base, T* (decoded paths)": [list(at_t_star if at_paths is None else at_paths)],
    }
    if tuned_t1 is not None:
        per_prompt["hyperfitted, T=1"] = [list(tuned_t1)]
    return {
        "per_prompt": per_prompt,
        "sampling_temperature": t_star[0],
        "t_star": dict(zip(("teacher_forced", "greedy_path"), t_star)),
        "t_star_matched": dict(zip(("teacher_forced", "greedy_path"), matched)),
    }


# ------------------------------------------------------------------------------ 1. replicates


@pytest.mark.usefixtures("no_seed_term")
def test_the_same_replicate_three_times_gives_the_interval_of_one():
    base = normal(0.3, 0.15, 16, 0)
    tuned = base + 0.097 + normal(0, 0.18, 16, 1)
    one = stats.pooled([(tuned, base)], stats.MEAN_DIFFERENCE)
    three = stats.pooled([(tuned, base)] * 3, stats.MEAN_DIFFERENCE)
    assert (three.low, three.high) == pytest.approx((one.low, one.high))
    result = temperature(tuned, base, base - 0.3)
    assert claim_temperature([result] * 3, [TRAINED] * 3).verdict == claim_temperature([result], [TRAINED]).verdict


def test_three_seeds_that_disagree_give_about_a_t_interval_over_seeds():
    base = normal(0.4, 0.1, 300, 2)
    replicates = [(base + effect + normal(0, 0.01, 300, 3 + i), base) for i, effect in enumerate((0.07, 0.10, 0.13))]
    pooled = stats.pooled(replicates, stats.MEAN_DIFFERENCE)
    # The review's t interval over the three seeds is [+0.026, +0.174]; a percentile over 3 seeds cannot reach beyond
    # them.
    assert pooled.low == pytest.approx(0.026, abs=0.004) and pooled.high == pytest.approx(0.174, abs=0.004)
    assert decide(get_claim(1).rule, pooled)[0] == INCONCLUSIVE
    # The opposite case: seeds that agree, on a large effect, still hold.
    agree = [(base + 0.30 + normal(0, 0.01, 300, 9 + i), base) for i in range(3)]
    assert decide(get_claim(1).rule, stats.pooled(agree, stats.MEAN_DIFFERENCE))[0] == HOLDS


def test_pooling_geometry_replicates_keeps_each_replicates_block_noise():
    estimates = [stats.Estimate(v, v - 15, v + 15, 16, "jackknife") for v in (9.0, 9.2, 9.4)]
    pooled = stats.mean_of_estimates(estimates)
    assert pooled.low < 0 < pooled.high and decide(get_claim(4).rule, pooled)[0] == INCONCLUSIVE
    narrow = [stats.Estimate(v, v - 1, v + 1, 16, "jackknife") for v in (9.0, 9.2, 9.4)]
    assert decide(get_claim(4).rule, stats.mean_of_estimates(narrow))[0] == HOLDS


# ------------------------------------------------------------------------------ 2. zero-width intervals


def test_a_single_prompt_or_no_spread_never_decides():
    single = stats.paired_difference([0.9], [0.3])
    assert not single.decisive and decide(get_claim(1).rule, single)[0] == INCONCLUSIVE
    no_spread = stats.paired_difference([0.9] * 8, [0.3] * 8)
    assert not no_spread.decisive and decide(get_claim(1).rule, no_spread)[0] == INCONCLUSIVE
    two_blocks = stats.jackknife_over_clusters(np.array([0, 0, 1, 1]), lambda rows: 5.0)
    assert decide(get_claim(4).rule, two_blocks)[0] == INCONCLUSIVE
    # Opposite: the same large gap with spread on 8 prompts decides.
    spread = stats.paired_difference(0.9 + normal(0, 0.02, 8, 4), [0.3] * 8)
    assert decide(get_claim(1).rule, spread)[0] == HOLDS


def test_a_constant_difference_computed_in_floats_never_decides():
    # x + 0.3 - x is not exactly 0.3 in floats: a spread of ~1e-17 is rounding, not evidence.
    x = normal(0.35, 0.09, 16, 30)
    rounded = stats.paired_difference(x + 0.3, x)
    assert not rounded.decisive and decide(get_claim(1).rule, rounded)[0] == INCONCLUSIVE
    loo = stats.jackknife_interval(5.0, 5.0 + np.array([1e-15, -1e-15, 0.0, 2e-15]))
    assert not loo.decisive
    assert stats.paired_difference(x + 0.3 + normal(0, 1e-4, 16, 31), x).decisive  # a small real spread still counts


# ------------------------------------------------------------------------------ 3. small-sample coverage; Holm


def test_the_paired_mean_interval_covers_at_sixteen_prompts():
    rng = np.random.default_rng(5)
    covered = []
    for _ in range(300):
        a, b = rng.normal(0.5, 0.15, 16), rng.normal(0.4, 0.15, 16)
        e = stats.paired_difference(a, b)
        covered.append(e.low <= 0.1 <= e.high)
    assert 0.93 <= np.mean(covered) <= 0.975  # BCa covered about 91% here


@pytest.mark.usefixtures("no_seed_term")
def test_holm_demotes_a_borderline_hold_among_several_rules_and_keeps_a_clear_one():
    base = normal(0.3, 0.1, 16, 6)
    clear = make_claim(1, stats.paired_difference(base + 0.4 + normal(0, 0.05, 16, 7), base), [], "")
    border = [make_claim(number, stats.Estimate(0.11, 0.051, 0.169, 16, "t"), [], "") for number in ("1b", "1c")]
    with_holm([clear, *border])
    assert clear.verdict == clear.holm == HOLDS
    assert all(c.verdict == HOLDS and c.holm == INCONCLUSIVE for c in border if c.direction == "above")


@pytest.mark.usefixtures("no_seed_term")
def test_holm_also_guards_does_not_hold_and_its_family_is_what_the_study_ran():
    base = normal(0.3, 0.1, 16, 6)
    clear = make_claim(1, stats.paired_difference(base + 0.4 + normal(0, 0.05, 16, 7), base), [], "")
    # A borderline "does not hold" (the interval just below claim 1b's margin) is a directional decision too.
    border_fail = make_claim("1b", stats.Estimate(-0.01, -0.069, 0.049, 16, "t", df=15), [], "")
    assert border_fail.verdict == FAILS
    failed_check = make_claim(3, stats.Estimate(0.3, 0.2, 0.4, 16, "t", df=15), [Check("gain", False, "no gain")], "")
    with_holm([clear, border_fail, failed_check])
    assert border_fail.holm == INCONCLUSIVE and clear.holm == HOLDS
    # Alone, the same "does not hold" stands: the rule's own level. With a rule whose check failed beside it, it does
    # not (the family is the rules run, not those the data let decide).
    alone = make_claim("1b", stats.Estimate(-0.01, -0.069, 0.049, 16, "t", df=15), [], "")
    assert with_holm([alone])[0].holm == FAILS
    beside = make_claim("1b", stats.Estimate(-0.01, -0.069, 0.049, 16, "t", df=15), [], "")
    with_holm(
        [beside, make_claim(3, stats.Estimate(0.3, 0.2, 0.4, 16, "t", df=15), [Check("gain", False, "no gain")], "")]
    )
    assert beside.holm == INCONCLUSIVE
    # A clear "does not hold" survives.
    clear_fail = make_claim("1b", stats.paired_difference(base - 0.3 + normal(0, 0.05, 16, 8), base), [], "")
    assert with_holm([clear_fail, clear])[0].holm == FAILS


# ------------------------------------------------------------------------------ 4. claim 4: one footing, the rival
# inside


def test_a_trained_final_norm_gain_alone_does_not_move_claim_4():
    from hyperfitting.analysis.geometry import footing

    rng = np.random.default_rng(8)
    names = ["embeddings", "block 0", "block 1", "block 2"]
    base = {n: rng.normal(0, 1, (640, 12)) * np.linspace(0.2, 2, 12) for n in names}
    tuned = {n: base[n] + rng.normal(0, 0.05, (640, 12)) for n in names}
    clusters = np.repeat(np.arange(10), 64)
    before = footing(base, tuned, clusters)
    # a trained gain of the final norm: transformers' hidden_states[-1] would change a lot
    gain = np.linspace(0.1, 5, 12)
    with_norm = footing(
        {**base, "final norm": base["block 2"]}, {**tuned, "final norm": tuned["block 2"] * gain}, clusters
    )
    assert with_norm["effects"]["normalised"]["value"] == pytest.approx(before["effects"]["normalised"]["value"])
    assert with_norm["final"] == "block 2"


@pytest.fixture()
def geometry_alone(monkeypatch, no_seed_term):
    """Claim 4's statistic apart from the training seed: no seed shift in its worlds, no seed term in the rule."""
    from hyperfitting.claims import geometry

    monkeypatch.setattr(geometry, "WORLD_SEED_SD", 0.0)


@pytest.mark.usefixtures("geometry_alone")
def test_claim_4_with_equal_rivals_is_not_biased_against_the_final_layer():
    from hyperfitting.claims.geometry import world_geometry

    # 30 rivals that all expand alike, the final block far more.
    design, rng = Design(blocks=16, positions_per_block=64), np.random.default_rng(9)
    leads = [world_geometry(design, Spreads(), 3.0, rng)[0].verdict for _ in range(15)]
    # the final block truly leads: it holds, never "does not hold"
    assert leads.count(HOLDS) >= 13 and FAILS not in leads


def test_claim_4_at_one_training_run_decides_nothing():
    from hyperfitting.claims.geometry import world_geometry

    claim = world_geometry(Design(blocks=16, positions_per_block=64), Spreads(), 3.0, np.random.default_rng(9))[0]
    assert claim.verdict == INCONCLUSIVE and "seed-to-seed spread measured" in claim.reason


# ------------------------------------------------------------------------------ 5. claim 2: the best static model


def static(per_prompt, flip_rates):
    names = [n for n in per_prompt if n.startswith("alpha")]
    return {
        "per_prompt": per_prompt,
        "bite": {
            "required": 0.1,
            "flip_rates": flip_rates,
            "biting": names,
            "passed": True,
            "top_k_alpha": 0.5,
            "top_k_flip_rate": 0.3,
        },
    }


@pytest.mark.usefixtures("no_seed_term")
def test_a_degenerate_static_model_is_excluded_and_named():
    base = normal(0.3, 0.1, 48, 10)
    tuned = base + 0.3 + normal(0, 0.05, 48, 11)
    garbage = np.full(48, 0.02)  # the reported case: TTR 0.02, share -1.38
    one = static({"base, greedy": base, "hyperfitted": tuned, "alpha = 0.5": garbage}, {"alpha = 0.5": 0.95})
    claim = claim_static_bias([one], [TRAINED], [0.4])
    assert claim.verdict == INCONCLUSIVE and "non-degenerate" in claim.reason
    # Opposite: a sane static model that recovers little beside it still decides.
    sane = base + 0.03 + normal(0, 0.05, 48, 12)
    two = static(
        {"base, greedy": base, "hyperfitted": tuned, "alpha = 0.5": garbage, "alpha = 0.1": sane},
        {"alpha = 0.5": 0.95, "alpha = 0.1": 0.3},
    )
    claim = claim_static_bias([two], [TRAINED], [0.4])
    assert claim.verdict == HOLDS and "excluded as degenerate: alpha = 0.5" in claim.evidence


def test_an_excluded_static_model_that_recovers_the_gain_keeps_claim_2_from_holding():
    # The review's case: the model that flips many base choices is also the one that reproduces 90% of the gain.
    # Excluding it would leave only a weak model and say "holds" (+0.019 [-0.027, +0.063]) for the wrong reason.
    base = normal(0.3, 0.1, 48, 20)
    tuned = base + 0.3 + normal(0, 0.05, 48, 21)
    strong, weak = base + 0.27 + normal(0, 0.05, 48, 22), base + 0.015 + normal(0, 0.05, 48, 23)
    results = static(
        {"base, greedy": base, "hyperfitted": tuned, "alpha = 1": strong, "alpha = 0.1": weak},
        {"alpha = 1": 0.85, "alpha = 0.1": 0.3},
    )
    claim = claim_static_bias([results], [TRAINED], [0.4])
    assert claim.verdict == INCONCLUSIVE and "no excluded static model recovers the gain" in claim.reason
    assert claim.estimate["value"] < 0.1  # the estimate itself is still the best usable model's


def six_tied_static_models(seed: int, prompts: int, share: float):
    """Claim 2 on a world where six static models each recover ``share`` of a 0.3 TTR gain."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.3, 0.1, prompts)
    tuned = base + 0.3 + rng.normal(0, 0.1, prompts)
    per_prompt = {"base, greedy": base, "hyperfitted": tuned}
    per_prompt.update({f"alpha = {i}": base + share * 0.3 + rng.normal(0, 0.1, prompts) for i in range(6)})
    return claim_static_bias([static(per_prompt, {f"alpha = {i}": 0.3 for i in range(6)})], [TRAINED], [0.4])


def test_the_best_of_six_static_models_is_chosen_inside_each_resample():
    covered = [six_tied_static_models(100 + world, 64, 0.35).estimate["high"] >= 0.35 for world in range(60)]
    # Claim 2 holds when the interval lies below 0.5, so what must not fail is the interval's upper end: chosen once on
    # the same prompts, the review saw the truth covered 82% of the time. Chosen in every resample, the maximum of six
    # tied models is biased upwards (two-sided coverage ~68% here): conservative for "holds", and said in the closing
    # note.
    assert np.mean(covered) >= 0.95


# ------------------------------------------------------------------------------ 6. claim 3: a gain to explain


def ranks_results(unexplained, reverted_ttr=None):
    """Rank results with these unexplained overrides per prompt; ``reverted_ttr``: the reverted paths' TTR per prompt
    (claim 3's causal check), by default at base level (the overrides carry the whole gain) for the base of normal(...,
    14)."""
    reverted = list(normal(0.3, 0.1, 16, 14) if reverted_ttr is None else reverted_ttr)
    return {
        "per_prompt": {
            "unexplained_overrides": unexplained,
            "overrides": [40] * len(unexplained),
            "steps": [96] * len(unexplained),
            "copied": [0] * len(unexplained),
        },
        "copied_spans": {"share_of_steps": 0.0, "n": 5},
        "null": {"scale": 1.2, "overrides_reproduced": 0.5, "deep_tail_reproduced": 0.2},
        "share_of_overrides_from_rank_over_10": 0.1,
        "reverted": {"per_prompt_ttr": reverted, "share_of_steps_reverted": 0.2},
    }


def test_claim_3_needs_the_diversity_gain_it_explains():
    results = ranks_results(list(np.random.default_rng(13).integers(15, 30, 16)))
    base = normal(0.3, 0.1, 16, 14)
    fell = claim_ranks([results], [TRAINED], [(base - 0.1 + normal(0, 0.02, 16, 15), base)])
    assert fell.verdict == INCONCLUSIVE and "raised greedy TTR" in fell.reason
    rose = claim_ranks([results], [TRAINED], [(base + 0.2 + normal(0, 0.02, 16, 16), base)])
    assert rose.verdict == HOLDS


def test_claim_3_holds_only_if_reverting_the_unexplained_overrides_costs_the_gain():
    # The causal check: frequent unexplained overrides that, reverted to the null's choice, leave greedy TTR where it
    # was do not carry the diversity gain; reverted paths back at base TTR do.
    results = ranks_results(list(np.random.default_rng(13).integers(15, 30, 16)))
    base = normal(0.3, 0.1, 16, 14)
    tuned = base + 0.2 + normal(0, 0.02, 16, 16)
    carried = claim_ranks(
        [
            {
                **results,
                "reverted": {"per_prompt_ttr": list(base + normal(0, 0.02, 16, 17)), "share_of_steps_reverted": 0.2},
            }
        ],
        [TRAINED],
        [(tuned, base)],
    )
    assert carried.verdict == HOLDS and "causal check" in carried.evidence
    idle = claim_ranks(
        [
            {
                **results,
                "reverted": {"per_prompt_ttr": list(tuned + normal(0, 0.02, 16, 18)), "share_of_steps_reverted": 0.2},
            }
        ],
        [TRAINED],
        [(tuned, base)],
    )
    assert idle.verdict == INCONCLUSIVE and "do not carry it" in idle.reason
    # Reverting costs a little (keeps 90% of the gain, clearly below 1): not "most of the gain", so still no "holds".
    some = claim_ranks(
        [
            {
                **results,
                "reverted": {
                    "per_prompt_ttr": list(base + 0.18 + normal(0, 0.02, 16, 19)),
                    "share_of_steps_reverted": 0.2,
                },
            }
        ],
        [TRAINED],
        [(tuned, base)],
    )
    assert some.verdict == INCONCLUSIVE
    # Results without the reverted paths (written before the check): no "holds" either.
    without = {k: v for k, v in results.items() if k != "reverted"}
    assert claim_ranks([without], [TRAINED], [(tuned, base)]).verdict == INCONCLUSIVE
    # Holm reads both tests: the larger of "frequent" and "they carry it".
    assert carried.p_values[0] >= max(1e-12, carried.p_values[0]) and carried.p_values is not None


def test_reverting_changes_only_the_unexplained_overrides():
    from hyperfitting.generation.processors import RevertUnexplained

    # base top-1: token 1
    base_logits = torch.tensor([[0.0, 5.0, 1.0, 0.0], [0.0, 5.0, 1.0, 0.0], [0.0, 5.0, 1.0, 0.0]])
    revert = RevertUnexplained(None, lambda logits: torch.full((len(logits),), 2))  # the null always picks token 2
    revert.logits = lambda input_ids: base_logits
    # own pick 2 = the null's: kept
    scores = torch.tensor(
        [
            [0.0, 0.0, 0.0, 9.0],  # own pick 3: neither base top-1 nor null -> reverted to 2
            [0.0, 9.0, 0.0, 0.0],  # own pick 1 = base top-1: kept
            [0.0, 0.0, 9.0, 0.0],
        ]
    )
    out = revert(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    assert out.argmax(-1).tolist() == [2, 1, 2] and torch.equal(out[1:], scores[1:])
    assert (revert.reverted, revert.steps) == (1, 3)


def tail_compressed(seed, contexts=1024, vocabulary=2000):
    """The review's static model: base / 0.4 + a fixed bias, its ranking below the top 50 of each context compressed."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(contexts, vocabulary, generator=g) * 2
    tuned = base / 0.4 + torch.randn(vocabulary, generator=torch.Generator().manual_seed(99)) * 3
    cut = tuned.topk(50, dim=-1).values[:, -1:]
    return base, torch.where(tuned < cut, cut + (tuned - cut) * 0.1, tuned)


def test_the_null_is_fitted_on_the_top_of_the_ranking_so_a_compressed_tail_cannot_hide_a_static_model():
    heldout_base, heldout_tuned = tail_compressed(1)
    over_vocabulary = fit_over_vocabulary(heldout_base, heldout_tuned)
    assert over_vocabulary["scale"] < 1.0  # the tail sets the temperature: the review's 0.80 instead of 2.5
    fitted = fit_static_temperature(heldout_base, heldout_tuned)
    assert fitted["fitted_on"].startswith("the top") and fitted["scale"] == pytest.approx(2.5, rel=1e-3)
    base, tuned = tail_compressed(2)  # new contexts, the same static map
    chosen = tuned.argmax(-1)
    assert float((static_choice(base, over_vocabulary) == chosen).float().mean()) < 0.5
    prompt_of_step = torch.arange(1024) // 64
    comparison = null_comparison(
        step_summary(base, chosen, null_choices(fitted)),
        chosen,
        prompt_of_step,
        fitted,
        16,
        torch.zeros(1024, dtype=torch.bool),
    )
    assert sum(comparison["per_prompt"]["overrides"]) > 0.3 * 1024
    base_ttr = normal(0.3, 0.1, 16, 3)
    claim = claim_ranks(
        [
            {
                **comparison,
                "share_of_overrides_from_rank_over_10": 0.1,
                "reverted": {"per_prompt_ttr": list(base_ttr), "share_of_steps_reverted": 0.2},
            }
        ],
        [TRAINED],
        [(base_ttr + 0.2, base_ttr)],
    )
    assert claim.verdict != HOLDS and claim.estimate["value"] < 0.05


def test_steps_that_recite_training_text_are_left_out_of_claim_3():
    training = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    prompts, continuation = [[1, 5, 6]], type("C", (), {"token_ids": [7, 8, 9, 3, 4]})()
    # The prompt counts as context: 9 completes the training 5-gram 5 6 7 8 9; 7 and 8 only shorter ones; 3 and 4 are
    # new.
    copied = copied_steps(prompts, [continuation], training, 5)
    assert copied.tolist() == [False, False, True, False, False]
    copied = copied_steps(prompts, [continuation], training, 3)
    assert copied.tolist() == [True, True, True, False, False]
    # Every override is inside a copied span: counted apart, none of them is re-ranking.
    chosen = torch.tensor([7, 8, 9, 3, 4])
    path = {
        "top1": torch.tensor([0, 0, 0, 3, 4]),
        "null": torch.tensor([0, 0, 0, 3, 4]),
        "chosen_rank": torch.tensor([40, 40, 40, 1, 1]),
    }
    comparison = null_comparison(path, chosen, torch.zeros(5, dtype=torch.long), {"scale": 1.0}, 1, copied, 3)
    assert comparison["per_prompt"] == {"steps": [2], "overrides": [0], "unexplained_overrides": [0], "copied": [3]}
    assert comparison["copied_spans"] == {"share_of_steps": pytest.approx(0.6), "n": 3}
    unexcluded = null_comparison(path, chosen, torch.zeros(5, dtype=torch.long), {"scale": 1.0}, 1)
    assert unexcluded["per_prompt"]["unexplained_overrides"] == [3] and unexcluded["copied_spans"] is None


def test_claim_3_is_not_decided_without_copied_spans_left_out_and_shows_the_control_beside_it():
    results = ranks_results(list(np.random.default_rng(13).integers(15, 30, 16)))
    base = normal(0.3, 0.1, 16, 14)
    gains = [(base + 0.2 + normal(0, 0.02, 16, 16), base)]
    unknown = claim_ranks([{**results, "copied_spans": None}], [TRAINED], gains)
    assert unknown.verdict == INCONCLUSIVE and "copied training spans" in unknown.reason
    control = ranks_results([1] * 16)
    claim = claim_ranks([results], [{**TRAINED, "lowest_heldout_epoch": 3}], gains, control)
    assert claim.verdict == HOLDS and "non-hyperfitting control (the same run at epoch 3" in claim.evidence


# ------------------------------------------------------------------------------ 7. claim 5: both arms, relative margin


def controls(base, last, every, first_diverged=False):
    row = lambda ttr: {
        "per_prompt_ttr": list(ttr),
        "initial_train_loss": 4.0,
        "final_train_loss": 0.05,
        "epochs": 9,
        "trainable_parameters": 1000,
        "diverged": False,
    }
    methods = {"lora:last": row(last), "lora:all": row(every)}
    if first_diverged:
        methods["lora:first"] = {
            "diverged": True,
            "initial_train_loss": 4.0,
            "final_train_loss": 9.0,
            "epochs": 3,
            "trainable_parameters": 1,
        }
    return {"until_loss": 0.1, "base": {"per_prompt_ttr": list(base)}, "methods": methods}


@pytest.mark.usefixtures("no_seed_term")
def test_claim_5_cannot_hold_vacuously_and_an_unrelated_control_cannot_block_it():
    base = normal(0.3, 0.1, 64, 17)
    same = claim_late_stage(controls(base, base + normal(0, 0.01, 64, 18), base + normal(0, 0.01, 64, 19)))
    assert same.verdict == INCONCLUSIVE and "raised greedy TTR over base" in same.reason  # both arms equal to base
    matched = controls(
        base, base + 0.3 + normal(0, 0.03, 64, 20), base + 0.3 + normal(0, 0.03, 64, 21), first_diverged=True
    )
    assert claim_late_stage(matched).verdict == HOLDS  # a diverged lora:first is evidence beside it, not a gate
    short = claim_late_stage(
        controls(base, base + 0.15 + normal(0, 0.03, 64, 22), base + 0.3 + normal(0, 0.03, 64, 23))
    )
    assert short.verdict == FAILS  # half of all-blocks' gain: beyond a margin relative to the gain


# ------------------------------------------------------------------------------ 8-10. claim 1, its frontier, minor


@pytest.mark.usefixtures("no_seed_term")
def test_claim_1_is_decided_at_both_entropy_matched_temperatures_and_only_where_they_agree():
    base = normal(0.3, 0.1, 48, 24)
    tuned, sampled = base + 0.4 + normal(0, 0.03, 48, 25), base + 0.1 + normal(0, 0.03, 48, 26)
    both = claim_temperature([temperature(tuned, sampled, base)], [TRAINED])
    assert both.verdict == HOLDS and "at both T*" in both.reason
    # T* far apart is no reason to refuse: what matters is whether the verdict differs between them.
    apart = claim_temperature([temperature(tuned, sampled, base, t_star=(0.6, 0.9))], [TRAINED])
    assert apart.verdict == HOLDS
    # Sampled at the hotter T*, the base model reaches the hyperfitted diversity: the two disagree, nothing is decided.
    hotter = claim_temperature([temperature(tuned, sampled, base, at_paths=tuned + normal(0, 0.03, 48, 27))], [TRAINED])
    assert (
        hotter.verdict == INCONCLUSIVE
        and "disagree" in hotter.reason
        and "decoded paths, does not hold" in hotter.reason
    )
    assert hotter.p_values[0] > 0.4  # Holm reads the intersection-union test: the larger p-value of "holds"
    # The quick study's case: at the lower T* the interval lies wholly below the margin, and the hotter T* makes the
    # base more diverse still: "does not hold" at both, where the old 15% gate said inconclusive.
    level = base + 0.1 + normal(0, 0.03, 48, 28)
    fails = claim_temperature(
        [temperature(level, sampled, base, t_star=(0.644, 0.765), at_paths=sampled + 0.05)], [TRAINED]
    )
    assert fails.verdict == FAILS and with_holm([fails])[0].holm == FAILS
    missing = temperature(tuned, sampled, base)
    del missing["t_star_matched"]
    assert claim_temperature([missing], [TRAINED]).verdict == INCONCLUSIVE  # a missing record is not a passed check


def test_the_like_for_like_rule_compares_hyperfitted_and_base_both_sampled():
    base = normal(0.3, 0.1, 64, 27)
    tuned, sampled = base + 0.4 + normal(0, 0.03, 64, 28), base + 0.1 + normal(0, 0.03, 64, 29)
    one_distribution = claim_temperature_like_for_like(
        [temperature(tuned, sampled, base, tuned_t1=sampled + normal(0, 0.03, 64, 30))], [TRAINED]
    )
    assert one_distribution.verdict == FAILS  # within +-0.05 of each other: a temperature could explain it
    different = claim_temperature_like_for_like(
        [temperature(tuned, sampled, base, tuned_t1=sampled + 0.2 + normal(0, 0.03, 64, 31))], [TRAINED]
    )
    assert different.verdict == HOLDS


def test_the_frontier_is_its_upper_envelope_so_a_noisy_point_cannot_lower_it():
    # Base points (log-perplexity, TTR): (1, 0.2), (2, 0.5), (2.5, 0.3: dominated), (3, 0.6). At 2.5 the envelope is
    # 0.55.
    columns = [c for q, t in ((1, 0.2), (2, 0.5), (2.5, 0.3), (3, 0.6)) for c in (np.full(4, t), np.full(4, q))]
    # a line through every point said +0.15
    assert frontier_gap(np.full(4, 0.45), np.full(4, 2.5), *columns) == pytest.approx(-0.10)


def test_compare_runs_has_a_column_per_claim(tmp_path):
    import yaml

    from hyperfitting.report.build import compare_runs
    from hyperfitting.rundir import write_json

    write_json(
        tmp_path / "metrics.json",
        {
            "metrics": {"base": {}, "hyperfitted": {}},
            "train": {"method": "lora", "final_train_loss": 0.1},
            "claims": [{"number": n, "verdict": HOLDS} for n in (1, 2, 3, 4, 5, "1b", "1c")],
        },
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "m"}, "data": {"corpus": "fiction"}}))
    header = compare_runs([tmp_path]).splitlines()[0]
    assert all(f"claim {n}" in header for n in ("1", "1b", "1c", "2", "3", "4", "5"))


# ------------------------------------------------------------------------------ calibration


QUICK = Design(
    prompts=16, replicates=1, seeds=1, steps=96, blocks=16, positions_per_block=64, static_models=2, frontier_points=4
)


# The rules with a declared seed spread (1, 1b, 3, 5); 2 and 1c have none measured yet and sit at or below the goals
# at one training run (the report then says so and, where the calibration flags them, decides nothing); 4's worlds
# have no seed term yet.
@pytest.mark.parametrize("rule", ["1", "1b", "3", "5"])
def test_every_rule_keeps_its_false_holds_and_coverage_at_the_quick_size(rule):
    # Every world draws a training-seed shift, one run or several: the real rules, with their declared seed spreads,
    # must meet the nominal goals (false holds and fails at most 2.5%, coverage at least 95%, by a binomial test).
    result = calibrate_rule(rule, QUICK, Spreads(), worlds=100, seed=1)
    assert result["meets_goals"], result
    assert result["false_holds"] <= 0.025 + 0.03 and result["false_fails"] <= 0.025 + 0.03, result
    assert result["coverage"] >= 0.91, result


def test_claim_1c_without_its_measured_seed_spread_decides_nothing_at_one_training_run(monkeypatch):
    # 1c (hyperfitted sampled at T=1 against base at T*) with its declared seed SD (0.0038, three seeds of the quick
    # preset) meets the goals; without it, in worlds where each training run shifts the hyperfitted model by the
    # hyperfitted TTR's spread, its one-run interval under-covers the recipe and the calibration flags it.
    from dataclasses import replace

    from hyperfitting.claims import core

    assert calibrate_rule("1c", QUICK, Spreads(), worlds=100, seed=1)["meets_goals"]
    monkeypatch.setitem(core._CLAIMS, "1c", replace(get_claim("1c"), seed_sd=None))
    result = calibrate_rule("1c", QUICK, Spreads(), worlds=100, seed=1)
    assert not result["meets_goals"] and any(m.startswith("coverage") for m in result["missed"]), result


def test_a_rule_without_the_seed_spread_misses_the_goals_and_decides_nothing(monkeypatch):
    # Claim 1 at one training run without its declared seed spread covers the recipe's effect too rarely: the
    # calibration says so, and the report then makes its verdict inconclusive (report/build.py: with_calibration).
    from dataclasses import replace

    from hyperfitting.claims import core
    from hyperfitting.report.build import with_calibration

    monkeypatch.setitem(core._CLAIMS, "1", replace(get_claim(1), seed_sd=None))
    result = calibrate_rule("1", QUICK, Spreads(seed_sd=0.08), worlds=100, seed=1)
    assert not result["meets_goals"] and any(m.startswith("coverage") for m in result["missed"]), result
    base = normal(0.3, 0.1, 48, 24)
    claim = claim_temperature([temperature(base + 0.4 + normal(0, 0.03, 48, 25), base + 0.1, base)], [TRAINED])
    assert claim.verdict == HOLDS
    (claim,) = with_calibration([claim], {"rules": {"1": result}})
    assert (
        claim.verdict == claim.holm == INCONCLUSIVE
        and "misses its goals" in claim.reason
        and "would have said holds" in claim.reason
    )


def test_claim_4_covers_at_the_models_depth_and_with_replicates_carries_the_seed(monkeypatch):
    from hyperfitting.claims import geometry
    from hyperfitting.claims.core import DECLARED_SEED_SPREAD

    # 30 rival layers, as SmolLM2-135M has: the smallest of the differences to each rival, its interval's lower end the
    # smallest of theirs and its upper end at Bonferroni's level, covers where a jackknife of the maximum did not (77%).
    # The statistic alone: no seed term in the worlds or the rule.
    monkeypatch.setattr(geometry, "WORLD_SEED_SD", 0.0)
    token = DECLARED_SEED_SPREAD.set(False)
    try:
        one_run = calibrate_rule(
            "4", Design(blocks=16, positions_per_block=32, rivals=30), Spreads(), worlds=40, seed=1
        )
    finally:
        DECLARED_SEED_SPREAD.reset(token)
    # 65% at 32 positions a block
    assert one_run["meets_goals"] and one_run["coverage"] >= 0.93 and one_run["power"] >= 0.5, one_run
    # Each training run's final block lands elsewhere: with three runs the spread between them is measured and carried.
    monkeypatch.setattr(geometry, "WORLD_SEED_SD", 1.0)
    result = calibrate_rule(
        "4", Design(blocks=16, positions_per_block=32, rivals=30, replicates=3), Spreads(), worlds=40, seed=1
    )
    assert result["meets_goals"] and result["false_holds"] <= 0.05, result
    # Coverage is judged truth by truth, by a one-sided binomial test of "at least 95%" at 1%.
    from scipy.stats import binomtest

    assert result["under_covers_at"] == [
        t
        for t, row in result["by_truth"].items()
        if row["intervals"]
        and binomtest(round(row["coverage"] * row["intervals"]), row["intervals"], 0.95, alternative="less").pvalue
        < 0.01
    ]


def test_the_calibration_flags_a_deliberately_broken_rule():
    (name,) = BROKEN_RULES
    result = calibrate_rule(name, QUICK, Spreads(), worlds=100, seed=1)
    assert result["false_holds"] > 0.1 and result["coverage"] < 0.8 and not result["meets_goals"]
    table = calibration_table(
        {"design": QUICK.__dict__, "spreads": Spreads().__dict__, "worlds": 100, "rules": {name: result}}
    )
    assert "**no**" in table


def test_the_calibration_flags_a_rule_that_ignores_the_training_seeds_and_passes_the_real_one():
    # Three replicates crossed with 16 prompts, seeds that matter (sd 0.06): taking the replicate-averaged differences
    # as if the seed added nothing covers ~83% and says "holds" of a false claim ~11% of the time; the real rule does
    # not.
    design, spreads = Design(prompts=16, replicates=3), Spreads(seed_sd=0.06)
    (broken,) = BROKEN_WITH_REPLICATES
    wrong = calibrate_rule(broken, design, spreads, worlds=200, seed=1)
    assert not wrong["meets_goals"] and wrong["false_holds"] > 0.05 and wrong["coverage"] < 0.9
    right = calibrate_rule("1", design, spreads, worlds=200, seed=1)
    assert right["meets_goals"] and right["false_holds"] <= 0.05 and 0.93 <= right["coverage"] <= 0.98
    # With one replicate the real rule carries a declared seed spread and the broken one none: it is run at every size.
    assert (
        broken in calibrate(QUICK, spreads, worlds=2)["rules"]
        and broken in calibrate(design, spreads, worlds=2)["rules"]
    )


def test_the_calibration_gives_the_same_numbers_in_worker_processes_as_in_one():
    # Each (rule, truth) seeds its own random numbers: split over two forked workers, every count and coverage is the
    # one process's to the last bit, and each rule's row is what calibrate_rule gives alone. In a fresh interpreter, as
    # a study or `hyperfit calibrate` forks them: a pytest-xdist worker's process (its messaging threads, the SIGTERM
    # handler earlier tests installed) once left a forked worker waiting on a lock for ever.
    import json
    import subprocess
    import sys

    from tests.test_reliability import _environment

    script = """if True:
        import json
        from hyperfitting.report.calibration import Design, Spreads, calibrate, calibrate_rule
        design, spreads = Design(prompts=16, replicates=3), Spreads(seed_sd=0.06)
        runs = {n: calibrate(design, spreads, worlds=6, rules=["1", "3", "4", "5"], broken=False, processes=n)
                for n in (1, 2)}
        print(json.dumps({**runs, "alone": calibrate_rule("3", design, spreads, worlds=6)}))
    """
    done = subprocess.run(
        [sys.executable, "-c", script], env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["1"] == out["2"] and set(out["1"]["rules"]) == {"1", "3", "4", "5"}
    assert out["1"]["rules"]["3"] == out["alone"]


def test_skewed_prompts_are_a_row_of_their_own_and_move_the_error_rates():
    # 10% of prompts loop: the per-prompt differences are skewed, not the normal noise a t interval assumes.
    stressed = f"1, {LOOPING_PROMPTS:.0%} of prompts loop"
    assert stressed in STRESSED_RULES
    loops = calibrate_rule(stressed, QUICK, Spreads(), worlds=100, seed=1)
    plain = calibrate_rule("1", QUICK, Spreads(), worlds=100, seed=1)
    assert loops["by_truth"] != plain["by_truth"] and loops["false_holds"] <= 0.08  # measured 4.0% at 200 worlds


def test_hyperfit_calibrate_writes_every_rules_error_rates(tmp_path):
    import json

    from click.testing import CliRunner

    from hyperfitting.cli import cli

    out = tmp_path / "calibration.json"
    result = CliRunner().invoke(
        cli, ["calibrate", "configs/quick.yaml", f"run_dir={tmp_path / 'none'}", "--json", str(out), "--worlds", "10"]
    )
    assert result.exit_code == 0, result.output
    rules = json.loads(out.read_text())["rules"]
    assert set(rule_worlds()) <= set(rules)
    assert all({"false_holds", "false_fails", "coverage", "power"} <= set(r) for r in rules.values())
    assert "| rule | false holds |" in result.output


def test_holm_over_one_rule_is_the_rule_itself_in_either_direction():
    # A single two-sided (1c) or asymmetric-interval claim that holds keeps "holds" when it is the only test.
    apart = make_claim("1c", stats.Estimate(0.11, 0.055, 0.165, 64, "t", df=63), [], "")
    skewed = make_claim(5, stats.Estimate(1.0, 0.81, 3.0, 64, "BCa", df=63), [], "")
    for claim in (apart, skewed):
        assert claim.verdict == HOLDS and with_holm([claim])[0].holm == HOLDS, claim.number


@pytest.mark.usefixtures("geometry_alone")
def test_claim_4_with_a_final_layer_tied_to_its_rivals_does_not_hold_falsely():
    from hyperfitting.claims.geometry import world_geometry

    design, rng = Design(blocks=16, positions_per_block=64), np.random.default_rng(31)
    tied = [world_geometry(design, Spreads(), 1.3, rng)[0].verdict for _ in range(20)]
    assert HOLDS not in tied


def test_claim_2_with_six_tied_static_models_below_the_margin_does_not_fail_falsely():
    verdicts = [six_tied_static_models(300 + world, 16, 0.45).verdict for world in range(40)]
    # the claim is true (0.45 < 0.5): the max alone said "does not hold" in 8% of worlds
    assert verdicts.count(FAILS) <= 1


# ------------------------------------------------------------------------------ verdicts about the recipe


def test_a_one_run_interval_carries_the_declared_seed_spread_and_says_so():
    base = normal(0.3, 0.1, 200, 40)
    tuned, sampled = base + 0.38 + normal(0, 0.01, 200, 41), base + 0.3 + normal(0, 0.01, 200, 42)
    claim = claim_temperature([temperature(tuned, sampled, base)], [TRAINED])
    # Over prompts alone +0.080 [+0.078, +0.082] would hold; a training run's effect varies by SD 0.039 around the
    # recipe's.
    assert claim.verdict == INCONCLUSIVE and claim.estimate["high"] - claim.estimate["low"] > 0.15, claim.estimate
    assert "declared seed-to-seed SD of 0.039" in claim.evidence and "standard preset" in claim.evidence
    assert "no number of prompts decides it at one training run" in claim.reason and claim.units_needed is None
    # Three replicates measure their own spread: the declared one is not added.
    three = claim_temperature([temperature(tuned + d, sampled, base) for d in (0.0, 0.003, -0.003)], [TRAINED] * 3)
    assert "declared" not in three.estimate["method"] and three.verdict == HOLDS


def test_claim_5_carries_each_arms_seed_spread_to_the_share():
    base = normal(0.3, 0.1, 300, 43)
    last, every = base + 0.25 + normal(0, 0.01, 300, 44), base + 0.25 + normal(0, 0.01, 300, 45)
    row = {"initial_train_loss": 4.0, "final_train_loss": 0.05, "epochs": 10, "trainable_parameters": 1000}
    claim = claim_late_stage(
        {
            "until_loss": 0.1,
            "base": {"per_prompt_ttr": list(base)},
            "methods": {
                "lora:last": {**row, "per_prompt_ttr": list(last)},
                "lora:all": {**row, "per_prompt_ttr": list(every)},
            },
        }
    )
    # share 1.0; each arm one run with TTR seed SD 0.047 at a gain of 0.25: the share's SD is about 0.047 * sqrt(2) /
    # 0.25 = 0.27
    assert (
        claim.verdict == INCONCLUSIVE
        and claim.estimate["low"] < 0.6
        and "each arm's TTR seed SD 0.047" in claim.evidence
    )


def test_claim_5_with_seeds_per_arm_measures_their_spread_instead_of_declaring_it():
    base = normal(0.3, 0.1, 300, 43)
    row = {"initial_train_loss": 4.0, "final_train_loss": 0.05, "epochs": 10, "trainable_parameters": 1000}

    def seeds_of(shifts, seed):  # one arm's training runs: the recipe's gain, shifted per seed, plus prompt noise
        return [
            {**row, "seed": k, "per_prompt_ttr": list(base + 0.25 + d + normal(0, 0.01, 300, seed + k))}
            for k, d in enumerate(shifts)
        ]

    def claim(last_shifts, all_shifts, order=(0, 1, 2)):
        last, every = seeds_of(last_shifts, 50), seeds_of(all_shifts, 60)
        every = [every[k] for k in order]
        return claim_late_stage(
            {
                "until_loss": 0.1,
                "base": {"per_prompt_ttr": list(base)},
                "methods": {"lora:last": last[0], "lora:all": every[0]},
                "replicates": {"lora:last": last, "lora:all": every},
            }
        )

    # Three seeds per arm that agree: the share (about 1) is decided, with no declared seed term.
    agree = claim([0.0, 0.001, -0.001], [0.0, 0.001, -0.001])
    assert "3 seeds per arm" in agree.estimate["method"] and "declared" not in agree.estimate["method"]
    assert agree.verdict == HOLDS and "3 training seeds per arm" in agree.evidence
    # Seeds that disagree as much as the declared SD says (0.047 in TTR): the measured spread spans the margin.
    spread = claim([0.05, -0.05, 0.0], [-0.04, 0.05, 0.0])
    assert spread.verdict == INCONCLUSIVE and spread.estimate["high"] - spread.estimate["low"] > 0.5
    # No seed of one arm is paired with one of the other: set side by side in another order, the same interval.
    reordered = claim([0.05, -0.05, 0.0], [-0.04, 0.05, 0.0], order=(2, 0, 1)).estimate
    assert [reordered[k] for k in ("value", "low", "high")] == pytest.approx(
        [spread.estimate[k] for k in ("value", "low", "high")], rel=1e-12
    )
    # A seed of an arm that did not reach the target loss fails the manipulation check.
    last, every = seeds_of([0.0, 0.0], 50), seeds_of([0.0, 0.0], 60)
    every[1] = {**every[1], "final_train_loss": 2.0}
    unfinished = claim_late_stage(
        {
            "until_loss": 0.1,
            "base": {"per_prompt_ttr": list(base)},
            "methods": {"lora:last": last[0], "lora:all": every[0]},
            "replicates": {"lora:last": last, "lora:all": every},
        }
    )
    assert unfinished.verdict == INCONCLUSIVE and "lora:all hyperfitted (seed 1)" in unfinished.reason


def test_prompts_needed_reads_the_interval_on_its_own_scale_and_side():
    # A t interval at 16 prompts: reading its width as z would inflate the sample size by (t/z)^2 = 1.18.
    estimate = stats.Estimate(0.03, -0.02, 0.08, 16, "t", df=15)
    se = 0.05 / stats.t_quantile(15)
    assert stats.units_needed(estimate, 0.05) == math.ceil(se**2 * 16 / (0.02 / (stats.Z + stats.Z_POWER)) ** 2)
    # Asymmetric: the half that faces the margin sets it.
    lopsided = stats.Estimate(0.03, -0.2, 0.08, 16, "bca")
    assert stats.units_needed(lopsided, 0.05) < stats.units_needed(stats.Estimate(0.03, -0.02, 0.2, 16, "bca"), 0.05)
    # Equivalence (an "apart" rule inside its margins) gets a number too.
    inside = make_claim("1c", stats.Estimate(0.01, -0.06, 0.08, 16, "t", df=15), [], "", seed_sd=(0.0, "off"))
    assert inside.verdict == INCONCLUSIVE and "would decide it" in inside.reason
    # A seed term that alone spans the distance: no number of prompts.
    seeded = stats.Estimate(0.03, -0.07, 0.13, 16, "t", df=15, seed_se=0.04)
    assert stats.units_needed(seeded, 0.05) is None


def test_a_claim_without_a_simulator_decides_nothing():
    # The calibration runs every registered claim's simulator; one registered without a simulator has unknown error
    # rates, so the report keeps it from deciding instead of showing it uncalibrated as if it were checked.
    from hyperfitting.claims import ClaimSpec, Rule, register_claim, unregister_claim
    from hyperfitting.report.build import with_calibration

    register_claim(
        ClaimSpec("uncalibrated", "No simulator", "-", Rule("an effect", "above", 0.0, "any"), lambda evidence: None)
    )
    try:
        assert "uncalibrated" not in rule_worlds()
        claim = make_claim("uncalibrated", stats.Estimate(1.0, 0.5, 1.5, 16, "t"), [], "")
        assert claim.verdict == HOLDS
        (claim,) = with_calibration([claim], {"rules": {}})
    finally:
        unregister_claim("uncalibrated")
    assert claim.verdict == claim.holm == INCONCLUSIVE and "no simulator" in claim.reason
