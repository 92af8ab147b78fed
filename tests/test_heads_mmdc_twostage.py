"""MMDC and TwoStageUC heads: hand-computed losses, normalised heads, ensembles, digits accuracy, API rows, I/O."""
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ssl_cluster_bench.api import cluster_features
from ssl_cluster_bench.heads.base import align_labels, majority_vote
from ssl_cluster_bench.heads.mmdc import MMDC, mmdc_loss, sample_targets
from ssl_cluster_bench.heads.twostage import NormalizedHeads, TwoStageUC, iic_loss
from ssl_cluster_bench.metrics import cluster_accuracy

FAST_MMDC = dict(n_heads=3, epochs=30, verbose=False)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def mmdc_vote(digits):
    return MMDC(10, ensemble="vote", random_state=1, **FAST_MMDC).fit(digits[0])


@pytest.fixture(scope="module")
def twostage(digits):
    return TwoStageUC(10, random_state=0, verbose=False).fit(digits[0])


# ---------------------------------------------------------------- losses by hand
def test_mmdc_loss_is_the_hungarian_matched_squared_distance():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    # identity match: |e0-t0|² + |e1-t1|² = 2 + 0.4; swapped: |e0-t1|² + |e1-t0|² = 0.8 + 0 -> swapped wins
    loss, assignment = mmdc_loss(e, t)
    assert loss.item() == pytest.approx(0.8 / 2)
    assert assignment.tolist() == [1, 0]
    loss.backward()
    # d/de0 of |e0 - t1|² / 2 = e0 - t1; e1 sits on its target
    assert torch.allclose(e.grad, torch.tensor([[0.4, -0.8], [0.0, 0.0]]))
    # leading (head) dimensions: the second head is matched on its own
    heads = torch.stack([e.detach(), torch.tensor([[0.6, 0.8], [0.0, 1.0]])])
    loss, assignment = mmdc_loss(heads, t)
    assert loss.tolist() == pytest.approx([0.4, 0.0])
    assert assignment.tolist() == [[1, 0], [1, 0]]
    with pytest.raises(ValueError, match="must agree"):
        mmdc_loss(torch.zeros(3, 2), t)


def test_sample_targets_are_unit_mixture_points():
    gen = torch.Generator().manual_seed(0)
    exact = sample_targets(1000, 4, sigma=0.0, generator=gen)
    assert set(exact.sum(dim=1).tolist()) == {1.0} and ((exact == 0) | (exact == 1)).all()
    counts = torch.bincount(exact.argmax(dim=1), minlength=4)
    assert counts.min() > 200 and counts.max() < 300  # balanced mixture: 250 expected per component
    noisy = sample_targets(500, 4, sigma=0.1, generator=gen)
    assert torch.allclose(noisy.norm(dim=1), torch.ones(500), atol=1e-6)
    assert (noisy.max(dim=1).values > 0.9).float().mean() > 0.95  # still near a one-hot mean


def test_iic_loss_on_a_hand_made_2x2_joint():
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    q = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    # P = mean_b p_b q_bᵀ, then symmetrised
    raw = [[(0.8 * 0.6 + 0.3 * 0.1) / 2, (0.8 * 0.4 + 0.3 * 0.9) / 2],
           [(0.2 * 0.6 + 0.7 * 0.1) / 2, (0.2 * 0.4 + 0.7 * 0.9) / 2]]
    joint = [[(raw[i][j] + raw[j][i]) / 2 for j in range(2)] for i in range(2)]
    row = [sum(joint[i]) for i in range(2)]
    col = [joint[0][j] + joint[1][j] for j in range(2)]
    mi = sum(joint[i][j] * (math.log(joint[i][j]) - math.log(row[i]) - math.log(col[j]))
             for i in range(2) for j in range(2))
    consistency = -(math.log(0.8 * 0.6 + 0.2 * 0.4) + math.log(0.3 * 0.1 + 0.7 * 0.9)) / 2
    total, got_mi, got_consistency = iic_loss(p, q, consistency_weight=0.5)
    assert got_mi.item() == pytest.approx(mi, rel=1e-5)
    assert got_consistency.item() == pytest.approx(consistency, rel=1e-5)
    assert total.item() == pytest.approx(-mi + 0.5 * consistency, rel=1e-5)
    # perfectly confident, agreeing, balanced views reach the maximum I = log k and zero inconsistency
    eye = torch.eye(2)
    total, got_mi, got_consistency = iic_loss(eye, eye)
    assert got_mi.item() == pytest.approx(math.log(2), rel=1e-5) and got_consistency.item() == pytest.approx(0.0)


# ---------------------------------------------------------------- normalised FC head
def test_normalized_heads_are_cosines_over_temperature_without_bias():
    gen = torch.Generator().manual_seed(0)
    heads = NormalizedHeads(6, 3, n_heads=2, temperature=0.1, generator=gen)
    assert [name for name, _ in heads.named_parameters()] == ["weight"]  # no bias
    x = 50 * torch.randn(20, 6, generator=gen)
    logits = heads(x)
    assert logits.shape == (2, 20, 3)
    assert logits.abs().max().item() <= 10.0 + 1e-4
    # input scale and weight-column scale do not matter: both are L2-normalised
    assert torch.allclose(heads(x / 50), logits, atol=1e-4)
    with torch.no_grad():
        heads.weight.mul_(torch.tensor([3.0, 0.2, 7.0]))
    assert torch.allclose(heads(x), logits, atol=1e-4)
    # an input along a weight column reaches the bound 1/τ exactly
    column = heads.weight[1, :, 2].detach()
    assert heads(column[None])[1, 0, 2].item() == pytest.approx(10.0, rel=1e-5)


def test_twostage_keeps_the_lowest_loss_head(twostage, digits):
    assert twostage.best_head_ == int(np.argmin(twostage.head_losses_))
    assert twostage.head_losses_.shape == (5,) and np.unique(twostage.head_losses_).size == 5
    kept = twostage.heads_.weight[twostage.best_head_].detach()
    assert torch.equal(twostage.head_.weight[0].detach(), kept)
    np.testing.assert_array_equal(twostage.predict(digits[0]), twostage.labels_)


# ---------------------------------------------------------------- ensembles
def test_relabelled_runs_vote_as_one():
    reference = np.array([0, 0, 1, 1, 2, 2, 2])
    perm_a, perm_b = np.array([2, 0, 1]), np.array([1, 2, 0])
    runs = np.stack([reference, perm_a[reference], perm_b[reference]])
    voted, perms = majority_vote(runs, 3, reference=0)
    np.testing.assert_array_equal(voted, reference)
    # perms[r] maps run r's ids back onto the reference's ids
    for r in range(3):
        np.testing.assert_array_equal(perms[r][runs[r]], reference)
    np.testing.assert_array_equal(align_labels(reference, perm_a[reference], 3), np.argsort(perm_a))


def test_vote_outvotes_the_reference_and_breaks_ties_towards_it():
    reference = np.array([0, 0, 0, 1, 1, 1])
    other = np.array([1, 1, 1, 0, 0, 1])  # relabelled, and disagrees on the last sample
    voted, _ = majority_vote(np.stack([reference, other, other]), 2, reference=0)
    np.testing.assert_array_equal(voted, [0, 0, 0, 1, 1, 0])  # two runs against one
    voted, _ = majority_vote(np.stack([reference, other]), 2, reference=0)
    np.testing.assert_array_equal(voted, reference)  # one against one: the reference wins
    voted, _ = majority_vote(np.stack([reference, other]), 2, reference=1)
    np.testing.assert_array_equal(voted[-1], 1)  # ...and the tie goes to whichever run is the reference


def test_mmdc_lowest_loss_head_and_vote(mmdc_vote, digits):
    X, y = digits
    m = mmdc_vote
    assert m.best_head_ == int(np.argmin(m.head_losses_))
    np.testing.assert_array_equal(m.alignments_[m.best_head_], np.arange(10))
    assert sorted(map(sorted, m.alignments_.tolist())) == [list(range(10))] * 3  # permutations
    np.testing.assert_array_equal(m.predict(X), m.labels_)
    assert m.probs_.shape == (X.shape[0], 10) and np.allclose(m.probs_.sum(axis=1), 1.0, atol=1e-5)
    # the lowest-loss answer is the best head's nearest mean, i.e. the argmax of its embedding
    with torch.no_grad():
        rows = (torch.from_numpy(X) - torch.from_numpy(m.mean_)) / torch.from_numpy(m.scale_)
        best = m.heads_(rows)[m.best_head_].argmax(dim=1).numpy()
    m.set_params(ensemble="lowest_loss")
    try:
        np.testing.assert_array_equal(m.predict(X), best)
    finally:
        m.set_params(ensemble="vote")
    assert cluster_accuracy(y, m.labels_) > 0.7  # measured 0.78


# ---------------------------------------------------------------- accuracy on digits (chance ~0.1)
def test_mmdc_lowest_loss_and_refine_beat_chance(digits):
    X, y = digits
    plain = MMDC(10, random_state=2, **FAST_MMDC).fit(X)
    refined = MMDC(10, random_state=2, refine=True, **FAST_MMDC).fit(X)
    # same seed, same heads: refinement only moves the centres
    np.testing.assert_array_equal(plain.head_losses_, refined.head_losses_)
    assert not np.allclose(refined.centers_, np.eye(10))
    assert cluster_accuracy(y, plain.labels_) > 0.7  # measured 0.78
    assert cluster_accuracy(y, refined.labels_) > 0.7  # measured 0.79
    assert not plain.degenerate_ and plain.cluster_sizes_.min() > 50


def test_twostage_beats_chance(twostage, digits):
    assert cluster_accuracy(digits[1], twostage.labels_) > 0.7  # measured 0.81
    assert not twostage.degenerate_ and twostage.cluster_sizes_.min() > 50


def test_twostage_with_cached_views(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    views = (X[None] + rng.normal(0, 1.0, size=(2, *X.shape))).astype(np.float32)
    m = TwoStageUC(10, n_heads=3, epochs=30, random_state=0, verbose=False).fit(X, augmented=views)
    assert cluster_accuracy(y, m.labels_) > 0.65  # measured 0.77
    with pytest.raises(ValueError, match="augmented must have shape"):
        TwoStageUC(10, verbose=False).fit(X, augmented=views[:, :100])
    with pytest.raises(ValueError, match="augment='views' needs"):
        MMDC(10, augment="views", verbose=False).fit(X)


def test_cluster_features_rows_for_new_methods(digits):
    X, y = digits
    df = cluster_features(X[:600], y[:600], seeds=[0], overcluster=(1.0,), methods=("mmdc", "twostage"),
                          progress=False)
    assert df.method.tolist() == ["mmdc", "twostage"]
    # measured 0.71 (mmdc) and 0.68 (twostage) on these 600 samples
    assert (df.acc > 0.55).all() and (df.top5 >= df.acc).all()
    assert (df.backend == "torch").all()


# ---------------------------------------------------------------- errors and persistence
@pytest.mark.parametrize("est", [MMDC, TwoStageUC])
def test_bad_inputs(est):
    X = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 2"):
        est(1, verbose=False).fit(X)
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf values \\(first in row 7\\)"):
        est(3, verbose=False).fit(bad)
    with pytest.raises(ValueError, match="exceeds the number of samples"):
        est(50, verbose=False).fit(X)
    with pytest.raises(ValueError, match="temperature must be"):
        est(3, temperature=0.0, verbose=False).fit(X)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        est(3, verbose=False).predict(X)


def test_bad_head_specific_parameters():
    X = np.zeros((40, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="ensemble must be"):
        MMDC(3, ensemble="mean", verbose=False).fit(X)
    with pytest.raises(ValueError, match="sigma must be"):
        MMDC(3, sigma=-1.0, verbose=False).fit(X)
    with pytest.raises(ValueError, match=r"temperature must be in \(0, 1\]"):
        TwoStageUC(3, temperature=2.0, verbose=False).fit(X)
