"""Geometry estimators on synthetic data of known dimension, and hooks that leave no trace."""

import numpy as np
import pytest
import torch

from hyperfitting.analysis.geometry import (
    hidden_states_at,
    linear_cka,
    participation_ratio,
    pca_dimension,
    two_nn_dimension,
    weight_change_per_block,
)
from tests.conftest import make_tiny_model


def subspace_points(n=2000, d=5, ambient=40, seed=0):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(ambient, d)))
    return rng.normal(size=(n, d)) @ basis.T  # isotropic inside a d-dimensional subspace


def test_participation_ratio_of_an_isotropic_subspace_is_its_dimension():
    assert participation_ratio(subspace_points(d=5)) == pytest.approx(5.0, rel=0.05)
    assert participation_ratio(subspace_points(d=12)) == pytest.approx(12.0, rel=0.05)


def test_participation_ratio_is_one_for_a_line():
    line = np.outer(np.linspace(-1, 1, 100), np.ones(8))
    assert participation_ratio(line) == pytest.approx(1.0)


def test_standardising_tames_an_outlier_dimension():
    x = np.random.default_rng(1).normal(size=(1000, 10))
    x[:, 0] *= 1000  # a massive activation
    assert participation_ratio(x) == pytest.approx(1.0, abs=0.01)
    assert participation_ratio(x, standardise=True) == pytest.approx(10.0, rel=0.05)


def test_removing_massive_dimensions_reveals_the_expansion_they_hide():
    from hyperfitting.analysis.geometry import massive_dimensions, trimmed_participation_ratio

    rng = np.random.default_rng(2)
    base = rng.normal(size=(1000, 12)) * np.r_[np.ones(2), np.full(10, 0.05)]  # 2 strong directions, 10 faint ones
    base[:, 5] += 500.0  # one massive activation, constant across tokens like a position-0 attention sink
    base[:, 5] *= 1 + 0.2 * rng.normal(size=1000)
    tuned = base.copy()
    tuned[:, 6:] *= 20  # the faint directions grow: an expansion
    assert massive_dimensions(base).tolist() == [5]
    # Raw, the massive direction hides it (both PR ~1); with it left out, the expansion shows.
    assert participation_ratio(base) == pytest.approx(1.0, abs=0.01) and participation_ratio(tuned) == pytest.approx(
        1.0, abs=0.05
    )
    assert trimmed_participation_ratio(tuned, [5]) - trimmed_participation_ratio(base, [5]) > 3


def test_pca_dimension():
    x = subspace_points(d=5)
    assert pca_dimension(x, 0.999) == 5
    assert 4 <= pca_dimension(x, 0.90) <= 5


def test_two_nn_on_a_curved_manifold_and_with_duplicates():
    rng = np.random.default_rng(2)
    angles = rng.uniform(0, 2 * np.pi, size=(1500, 2))
    torus = np.stack([np.cos(angles[:, 0]), np.sin(angles[:, 0]), np.cos(angles[:, 1]), np.sin(angles[:, 1])], axis=1)
    embedded = torus @ np.linalg.qr(rng.normal(size=(20, 4)))[0].T
    assert two_nn_dimension(embedded) == pytest.approx(2.0, abs=0.3)
    repeated = np.concatenate([embedded, embedded[:500]])  # repetitive text repeats hidden states
    assert two_nn_dimension(repeated) == pytest.approx(two_nn_dimension(embedded), abs=1e-9)


def test_cka_is_one_with_itself_and_invariant_to_rotation():
    x = np.random.default_rng(3).normal(size=(300, 16))
    rotation, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, x @ rotation * 3.0) == pytest.approx(1.0)
    assert linear_cka(x, np.random.default_rng(5).normal(size=(300, 16))) < 0.2


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_capture_leaves_the_model_unchanged(architecture):
    model = make_tiny_model(architecture)
    ids = torch.randint(2, 90, (3, 12), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits
    sample = np.array([0, 5, 13, 35])
    states = hidden_states_at(model, ids, sample, batch_size=2)
    assert list(states)[:2] == ["embeddings", "block 0"] and len(states) == 5  # embeddings, 3 blocks, final norm
    assert all(v.shape == (4, 32) for v in states.values())
    assert all(not m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(input_ids=ids).logits, before)
    # the captured final-norm state is what the model's own post-norm hidden state says
    reference = (
        model(input_ids=ids, output_hidden_states=True).hidden_states[-1].reshape(-1, 32)[torch.from_numpy(sample)]
    )
    torch.testing.assert_close(torch.from_numpy(states["final norm"]), reference)


def test_weight_change_is_zero_for_the_same_model_and_local_to_the_changed_block():
    base, tuned = make_tiny_model("llama"), make_tiny_model("llama")
    assert weight_change_per_block(base, tuned) == [0.0, 0.0, 0.0]
    with torch.no_grad():
        tuned.model.layers[2].mlp.down_proj.weight.mul_(2.0)
    changes = weight_change_per_block(base, tuned)
    assert changes[:2] == [0.0, 0.0] and changes[2] > 0


def test_the_verdicts_participation_ratio_is_split_half_and_not_shrunk_by_the_sample():
    # 256 dimensions, 150 of them carrying the variance, over 1,024 positions in 16 blocks: the plain sample PR comes
    # out near PR / (1 + PR / n), 13% low here, and shrinks a larger PR more (the review's case reversed which of two
    # layers expanded most); the split-half estimate tr(S_A) tr(S_B) / tr(S_A S_B) over alternate blocks does not.
    from hyperfitting.analysis.geometry import _leave_one_out_prs, participation_ratio

    spectrum = np.r_[np.ones(150), np.full(106, 1e-3)]
    truth = spectrum.sum() ** 2 / (spectrum**2).sum()
    rng = np.random.default_rng(0)
    states = rng.standard_normal((1024, 256)) * np.sqrt(spectrum)
    clusters = np.repeat(np.arange(16), 64)
    plain = participation_ratio(states)
    split, left_out = _leave_one_out_prs(states, clusters, np.arange(16), np.array([], dtype=int))
    assert plain < 0.9 * truth
    assert abs(split["normalised"] - truth) < 0.05 * truth, (split["normalised"], truth)
    assert len(left_out["normalised"]) == 16 and np.all(np.abs(left_out["normalised"] - truth) < 0.1 * truth)
