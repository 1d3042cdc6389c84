"""The verdict rules on constructed evidence: each outcome must be reachable for the right reason, and only for it."""

import numpy as np
import pytest
import torch

from hyperfitting import stats
from hyperfitting.analysis.teacher_forcing import step_summary
from hyperfitting.analysis.ranks import null_choices, null_comparison
from hyperfitting.analysis.static_bias import fit_static_temperature, flip_rate, static_choice
from hyperfitting.claims import FAILS, HOLDS, INCONCLUSIVE, Check, decide, get_claim
from hyperfitting.claims.late_stage import claim_late_stage
from hyperfitting.claims.ranks import claim_ranks
from hyperfitting.claims.static_bias import claim_static_bias
from hyperfitting.claims.temperature import claim_temperature

TRAINED = {"initial_train_loss": 4.0, "final_train_loss": 0.06, "until_loss": 0.1}


def prompts(mean: float, sd: float, n: int, seed: int) -> list[float]:
    return list(np.random.default_rng(seed).normal(mean, sd, n))


def shifted(values: list[float], shift: float, seed: int, sd: float = 0.01) -> list[float]:
    """``values + shift`` with a small real spread per prompt: a constant shift computed in floats has none and never
    decides."""
    return [v + shift + e for v, e in zip(values, prompts(0.0, sd, len(values), seed))]


# ------------------------------------------------------------------------------ the decision rule


def test_a_clear_effect_holds_its_opposite_does_not_and_noise_is_inconclusive():
    rule = get_claim(1).rule  # above +0.05
    base = prompts(0.40, 0.15, 64, 0)
    # Differences with a real spread: a constant shift computed in floats has none and never decides.
    clear = stats.paired_difference([b + 0.25 + e for b, e in zip(base, prompts(0, 0.05, 64, 3))], base)
    opposite = stats.paired_difference([b - 0.10 + e for b, e in zip(base, prompts(0, 0.05, 64, 4))], base)
    noisy = stats.paired_difference(prompts(0.45, 0.2, 16, 1), prompts(0.40, 0.2, 16, 2))
    assert decide(rule, clear)[0] == HOLDS
    assert decide(rule, opposite)[0] == FAILS
    verdict, reason, needed = decide(rule, noisy)
    assert verdict == INCONCLUSIVE and needed is not None and str(needed) in reason


def test_the_sample_size_estimate_shrinks_as_the_variance_shrinks():
    base = prompts(0.40, 0.1, 12, 3)
    noise = np.random.default_rng(4).standard_normal(12)
    noise = (noise - noise.mean()) / noise.std()  # the same mean gap (+0.10) at every spread

    def needed(spread):
        return decide(
            get_claim(1).rule, stats.paired_difference([b + 0.10 + spread * e for b, e in zip(base, noise)], base)
        )

    (v_wide, _, n_wide), (v_mid, _, n_mid) = needed(0.30), needed(0.15)
    assert v_wide == v_mid == INCONCLUSIVE
    assert 12 < n_mid < n_wide
    assert needed(0.01)[0] == HOLDS  # little spread: 12 prompts decide it


def test_too_few_prompts_is_inconclusive_even_for_a_large_mean_gap():
    estimate = stats.paired_difference([0.9, 0.2], [0.3, 0.4])  # +0.2 on two prompts
    verdict, _, needed = decide(get_claim(1).rule, estimate)
    assert verdict == INCONCLUSIVE and needed > 2


def test_a_failed_manipulation_check_is_never_a_decision():
    base = prompts(0.40, 0.1, 64, 5)
    clear = stats.paired_difference(shifted(base, 0.3, 51), base)
    opposite = stats.paired_difference(shifted(base, -0.3, 52), base)
    failed = [Check("model hyperfitted", False, "loss 6.0 -> 9.8")]
    for estimate in (clear, opposite):
        verdict, reason, _ = decide(get_claim(1).rule, estimate, failed)
        assert verdict == INCONCLUSIVE and "model hyperfitted" in reason


def test_identical_units_give_an_exact_interval_and_one_replicate_is_the_prompt_bootstrap():
    flat = stats.mean([0.5] * 10)
    assert (flat.low, flat.high) == (0.5, 0.5) and not flat.decisive
    values = prompts(0.4, 0.1, 20, 6)
    assert stats.pooled([(values,)], stats.MEAN) == stats.mean(values)
    two = stats.pooled([(values,), (prompts(0.6, 0.1, 20, 7),)], stats.MEAN)
    assert two.low < 0.5 < two.high and two.replicates == 2
    # Replicates that disagree widen the interval beyond what either one's prompts give.
    assert two.high - two.low > stats.mean(values).high - stats.mean(values).low


def test_ratio_of_sums_resamples_prompts_whole():
    # 8 prompts of 100 steps: 4 with 50 overrides, 4 with none. Pooled 25%, with real prompt-to-prompt spread.
    estimate = stats.ratio_of_sums([50, 0] * 4, [100] * 8)
    assert estimate.value == pytest.approx(0.25)
    assert estimate.low < 0.15 and estimate.high > 0.35  # far wider than 800 independent steps would give
    assert estimate.units == 8


# ------------------------------------------------------------------------------ claims on constructed results


def temperature_results(tuned, at_t_star, base_greedy):
    return {
        "per_prompt": {
            "hyperfitted": [tuned],
            "base, T*": [at_t_star, at_t_star],
            "base, greedy": [base_greedy],
            "base, T* (decoded paths)": [at_t_star, at_t_star],
        },
        "sampling_temperature": 0.6,
        "t_star": {"teacher_forced": 0.6, "greedy_path": 0.62},
        "t_star_matched": {"teacher_forced": True, "greedy_path": True},
    }


@pytest.mark.usefixtures("no_seed_term")
def test_claim_1_holds_fails_and_needs_a_hyperfitted_model():
    base = prompts(0.30, 0.1, 48, 8)
    sampled = shifted(base, 0.1, 81)
    high = temperature_results(shifted(base, 0.4, 82), sampled, base)
    assert claim_temperature([high], [TRAINED]).verdict == HOLDS
    jitter = prompts(0.0, 0.02, 48, 80)
    # greedy hyperfitted no better than sampling at T*
    level = temperature_results([b + 0.1 + j for b, j in zip(base, jitter)], sampled, base)
    assert claim_temperature([level], [TRAINED]).verdict == FAILS
    diverged = {"initial_train_loss": 6.0, "final_train_loss": 9.8, "until_loss": 0.1}
    claim = claim_temperature([high], [diverged])
    assert claim.verdict == INCONCLUSIVE and "model hyperfitted" in claim.reason


def static_results(static_ttr, flip, base, tuned):
    return {
        "per_prompt": {"base, greedy": base, "hyperfitted": tuned, "alpha = 0.5": static_ttr},
        "bite": {
            "required": 0.1,
            "flip_rates": {"alpha = 0.5": flip},
            "biting": ["alpha = 0.5"] if flip >= 0.1 else [],
            "passed": flip >= 0.1,
            "top_k_alpha": 0.5,
            "top_k_flip_rate": flip,
            "extended": [],
        },
    }


@pytest.mark.usefixtures("no_seed_term")
def test_claim_2_an_ablation_that_changes_nothing_is_not_evidence():
    base = prompts(0.30, 0.1, 48, 9)
    tuned = shifted(base, 0.3, 91)
    # The reported case: the offset leaves base greedy output unchanged, so 0% of the gain is "recovered".
    unchanged = claim_static_bias([static_results(list(base), 0.0, base, tuned)], [TRAINED])
    assert unchanged.verdict == INCONCLUSIVE and "a static model changes base choices" in unchanged.reason
    biting = claim_static_bias([static_results(shifted(base, 0.01, 92), 0.3, base, tuned)], [TRAINED], [0.4])
    assert biting.verdict == HOLDS
    reproduces = claim_static_bias([static_results(shifted(base, 0.29, 93), 0.3, base, tuned)], [TRAINED], [0.4])
    assert reproduces.verdict == FAILS
    # Without the hyperfitted override rate (the ranks analysis not run on these replicates) degeneracy cannot be judged
    # by the flips: the claim is not decided, and says why.
    unjudged = claim_static_bias([static_results(shifted(base, 0.01, 92), 0.3, base, tuned)], [TRAINED])
    assert unjudged.verdict == INCONCLUSIVE and "cannot judge" in unjudged.reason


def test_claim_2_replicates_whose_static_models_differ_are_not_decided():
    """Each replicate's offset bites under another name (found by the shrunk standard preset): there is no one static
    model to resample across replicates, so the claim says so instead of failing."""
    base = prompts(0.30, 0.1, 48, 9)
    tuned = shifted(base, 0.3, 91)
    first = static_results(shifted(base, 0.01, 92), 0.3, base, tuned)
    second = static_results(shifted(base, 0.01, 94), 0.3, base, tuned)
    second["per_prompt"]["alpha = 2"] = second["per_prompt"].pop("alpha = 0.5")
    second["bite"] = {**second["bite"], "biting": ["alpha = 2"], "flip_rates": {"alpha = 2": 0.3}}
    claim = claim_static_bias([first, second], [TRAINED, TRAINED], [0.4, 0.4])
    assert claim.verdict == INCONCLUSIVE and "in every replicate" in claim.evidence


def test_claim_2_a_static_model_that_wrecks_its_own_text_is_degenerate_whatever_its_flips():
    # The review's case: a static model whose text collapses (TTR 0.03) "holds" claim 2 at -1.58 if it is the only one.
    base = prompts(0.30, 0.1, 48, 9)
    tuned = shifted(base, 0.3, 91)
    # flips within 2x overrides
    wrecked = claim_static_bias([static_results([0.03] * 48, 0.3, base, tuned)], [TRAINED], [0.4])
    assert (
        wrecked.verdict == INCONCLUSIVE
        and "non-degenerate" in wrecked.reason
        and "own greedy text has TTR 0.030" in wrecked.reason
    )


def constructed_path(static: bool, steps: int = 640, vocabulary: int = 2000, seed: int = 0):
    """Base logits and a 'hyperfitted' model: base / 0.4 + a fixed bias (static), or a context-dependent reordering."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(steps, vocabulary, generator=g) * 2
    if static:
        tuned = base / 0.4 + torch.randn(vocabulary, generator=g) * 3
    else:
        tuned = base + torch.randn(steps, vocabulary, generator=g) * 3  # a different re-ranking in every context
    return base, tuned


# The static model is explained exactly: no prompt has an unexplained override, so the share has no spread and no
# interval; it must not hold, and an estimate without an interval decides nothing.
@pytest.mark.parametrize("static, expected", [(True, INCONCLUSIVE), (False, HOLDS)])
def test_claim_3_a_static_model_with_temperature_must_not_pass(static, expected):
    heldout_base, heldout_tuned = constructed_path(static, seed=1)
    fitted = fit_static_temperature(heldout_base, heldout_tuned)
    base, tuned = constructed_path(static, seed=2) if not static else (None, None)
    if static:  # the same static map on new contexts
        g = torch.Generator().manual_seed(1)
        torch.randn(640, 2000, generator=g)
        bias = torch.randn(2000, generator=g) * 3
        base = torch.randn(640, 2000, generator=torch.Generator().manual_seed(2)) * 2
        tuned = base / 0.4 + bias
        assert fitted["scale"] == pytest.approx(2.5, rel=1e-3)
    chosen = tuned.argmax(-1)
    prompt_of_step = torch.arange(640) // 40  # 16 prompts of 40 steps
    comparison = null_comparison(
        step_summary(base, chosen, null_choices(fitted)),
        chosen,
        prompt_of_step,
        fitted,
        16,
        torch.zeros(640, dtype=torch.bool),
    )
    base_ttr = prompts(0.3, 0.1, 16, 3)
    # The causal check passes (reverted paths at base TTR): the verdict turns on the null comparison alone.
    results = {
        **comparison,
        "share_of_overrides_from_rank_over_10": 0.1,
        "reverted": {"per_prompt_ttr": list(base_ttr), "share_of_steps_reverted": 0.2},
    }
    claim = claim_ranks([results], [TRAINED], [(shifted(base_ttr, 0.2, 31), base_ttr)])
    assert sum(comparison["per_prompt"]["overrides"]) > 0.3 * 640  # both models override base top-1 often...
    assert claim.verdict == expected  # ...but only the context-dependent one beyond what the static null explains
    if static:
        assert "no real interval" in claim.reason and claim.estimate["value"] == 0


def test_the_fitted_null_reproduces_a_static_model_exactly():
    base, tuned = constructed_path(static=True)
    fitted = fit_static_temperature(base, tuned)
    assert torch.equal(static_choice(base, fitted), tuned.argmax(-1))


def test_flip_rate_sees_an_offset_that_only_pushes_tokens_down():
    base, _ = constructed_path(static=False)
    down = torch.zeros(base.shape[1])
    never_top = torch.ones(base.shape[1], dtype=torch.bool)
    never_top[base.argmax(-1)] = False
    tail = torch.nonzero(never_top).squeeze(1)[:500]
    down[tail] = -4.6  # the reported case: deep-tail gainers with a negative offset
    assert flip_rate(base, down, 0.5) == 0.0
    up = torch.zeros(base.shape[1])
    up[tail] = 20.0
    assert flip_rate(base, up, 0.5) > 0.5


@pytest.mark.usefixtures("no_seed_term")
def test_claim_5_controls_that_never_hyperfitted_decide_nothing():
    last, every, base = prompts(0.45, 0.1, 32, 10), prompts(0.30, 0.1, 32, 11), prompts(0.15, 0.02, 32, 12)

    def controls(final_loss):
        row = lambda ttrs: {
            "per_prompt_ttr": ttrs,
            "final_train_loss": final_loss,
            "initial_train_loss": 4.0,
            "epochs": 8,
            "trainable_parameters": 1000,
            "diverged": False,
        }
        return {
            "until_loss": 0.1,
            "base": {"per_prompt_ttr": base},
            "methods": {"lora:last": row(last), "lora:all": row(every)},
        }

    assert claim_late_stage(controls(0.05)).verdict == HOLDS
    short = claim_late_stage(controls(2.01))
    assert short.verdict == INCONCLUSIVE and "hyperfitted" in short.reason
    # A control that diverged (as lora:all did at lr 1e-2: 4.09 -> 8.08) has no continuations and decides nothing.
    diverged = controls(0.05)
    diverged["methods"]["lora:all"] = {
        "spec": "lora:all",
        "diverged": True,
        "initial_train_loss": 4.09,
        "final_train_loss": 8.08,
        "epochs": 4,
        "trainable_parameters": None,
    }
    claim = claim_late_stage(diverged)
    assert claim.verdict == INCONCLUSIVE and "lora:all hyperfitted" in claim.reason and "diverged" in claim.reason


def test_the_geometry_interval_leaves_blocks_out_and_holds_the_estimate():
    from hyperfitting.analysis.geometry import participation_ratio

    rng = np.random.default_rng(0)
    base = rng.standard_normal((320, 24)) * np.linspace(0.2, 3, 24)
    expanded = rng.standard_normal((320, 24))  # isotropic: a far higher participation ratio
    blocks = np.repeat(np.arange(10), 32)
    effect = stats.jackknife_over_clusters(
        blocks, lambda rows: participation_ratio(expanded[rows]) - participation_ratio(base[rows])
    )
    assert effect.low <= effect.value <= effect.high and effect.low > 0 and effect.units == 10
    same = stats.jackknife_over_clusters(
        blocks, lambda rows: participation_ratio(base[rows]) - participation_ratio(base[rows])
    )
    assert (same.low, same.high) == (0.0, 0.0)


def test_replicates_that_disagree_make_a_decided_claim_inconclusive():
    base = prompts(0.30, 0.1, 48, 12)
    sampled = shifted(base, 0.1, 121)
    clear = temperature_results(shifted(base, 0.4, 122), sampled, base)  # gap +0.30
    assert claim_temperature([clear], [TRAINED]).verdict == HOLDS
    # A second seed whose gap is -0.05: the prompts of either replicate are decisive, the pair is not.
    other = temperature_results(shifted(base, 0.05, 123), sampled, base)
    pooled = claim_temperature([clear, other], [TRAINED, TRAINED])
    assert pooled.verdict == INCONCLUSIVE and pooled.estimate["replicates"] == 2
    assert pooled.replicates == pytest.approx([0.30, -0.05], abs=0.01) and "seed-to-seed" in pooled.evidence
    # One replicate that did not hyperfit is enough to refuse a decision.
    short = {"initial_train_loss": 4.0, "final_train_loss": 0.9, "until_loss": 0.1}
    assert claim_temperature([clear, clear], [TRAINED, short]).verdict == INCONCLUSIVE


# ------------------------------------------------------------------------------ claim 1(b): the diversity-quality
# frontier


def frontier_points(tuned_ttr: float, tuned_quality: float, n: int = 64, seed: int = 7) -> dict:
    """A base model whose TTR rises linearly with judge log-perplexity (0.3 at 1.0 to 0.6 at 3.0), per prompt with
    noise, and a hyperfitted model at (tuned_ttr, tuned_quality)."""
    rng = np.random.default_rng(seed)

    def point(ttr, quality):
        return {"ttr": list(ttr + rng.normal(0, 0.05, n)), "log_perplexity": list(quality + rng.normal(0, 0.2, n))}

    points = {"base, greedy": point(0.30, 1.0), "base, T=0.500": point(0.45, 2.0), "base, T=1.000": point(0.60, 3.0)}
    return {**points, "hyperfitted": point(tuned_ttr, tuned_quality), "human": point(0.7, 3.5)}


def test_the_frontier_gap_interpolates_between_neighbouring_temperatures():
    from hyperfitting.claims.frontier import frontier_gap

    frontier = ([0.3], [1.0], [0.6], [3.0])  # (TTR, log-perplexity) of two base points
    assert frontier_gap([0.5], [2.0], *frontier) == pytest.approx(0.05)  # the frontier is 0.45 half-way
    # order of the points does not matter
    assert frontier_gap([0.45], [1.5], *frontier[2:], *frontier[:2]) == pytest.approx(0.075)


@pytest.mark.usefixtures("no_seed_term")
@pytest.mark.parametrize("tuned, expected", [((0.70, 2.0), HOLDS), ((0.45, 2.0), FAILS), ((0.47, 2.0), None)])
def test_claim_1b_above_on_or_near_the_frontier(tuned, expected):
    from hyperfitting.claims.frontier import claim_frontier

    claim = claim_frontier(frontier_points(*tuned), [TRAINED])
    if expected is None:  # 0.02 above the frontier against a margin of 0.05: not decided at 64 prompts either way
        assert claim.verdict in (INCONCLUSIVE, FAILS) and claim.estimate["low"] < 0.05
    else:
        assert claim.verdict == expected, claim.reason
    assert claim.number == "1b" and "frontier" in claim.evidence and "human text" in claim.evidence


def test_claim_1b_outside_the_frontier_or_without_a_judge_decides_nothing():
    from hyperfitting.claims import NOT_RUN
    from hyperfitting.claims.frontier import claim_frontier

    beyond = claim_frontier(frontier_points(0.9, 5.0), [TRAINED])  # less predictable than the hottest base sampling
    assert beyond.verdict == INCONCLUSIVE and "within the frontier" in beyond.reason
    assert claim_frontier(None, [TRAINED]).verdict == NOT_RUN
    untrained = claim_frontier(frontier_points(0.7, 2.0), [{**TRAINED, "final_train_loss": 2.0}])
    assert untrained.verdict == INCONCLUSIVE and "model hyperfitted" in untrained.reason


@pytest.mark.usefixtures("no_seed_term")
def test_claim_1b_on_too_few_prompts_is_inconclusive_and_says_how_many_would_decide():
    from hyperfitting.claims.frontier import claim_frontier

    points = frontier_points(0.60, 2.0, n=64, seed=11)  # +0.15 above the frontier, but ...
    few = {label: {m: v[:6] for m, v in values.items()} for label, values in points.items()}  # ... on 6 prompts
    noisy = {
        label: {
            "ttr": [t + e for t, e in zip(values["ttr"], (0.14, -0.14, 0.12, -0.12, 0.1, -0.1))],
            "log_perplexity": values["log_perplexity"],
        }
        if label == "hyperfitted"
        else values
        for label, values in few.items()
    }
    claim = claim_frontier(noisy, [TRAINED])
    assert claim.verdict == INCONCLUSIVE and "would decide it" in claim.reason and claim.units_needed > 6, claim.reason


@pytest.mark.usefixtures("no_seed_term")
def test_claim_2_a_static_model_that_reproduces_the_hyperfitted_text_exactly_does_not_hold():
    # The planted static offset: the fitted static model is the planted one, its text the "hyperfitted" text, its share
    # exactly 1 on every resample. No spread is then certainty, not a missing interval.
    base = prompts(0.30, 0.1, 48, 9)
    tuned = shifted(base, 0.3, 91)
    claim = claim_static_bias([static_results(list(tuned), 0.3, base, tuned)], [TRAINED], [0.4])
    assert (
        claim.verdict == FAILS
        and claim.estimate["value"] == 1.0
        and "reproduces the hyperfitted TTR" in claim.estimate["method"]
    )
