"""Tests for ssl_cluster_bench.heads: neighbour mining, SCAN loss, SCAN estimator, self-labeling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs

import ssl_cluster_bench.heads.common as common_module
from ssl_cluster_bench.heads import (
    SCAN,
    DegenerateClusteringWarning,
    balanced_class_weights,
    confident_targets,
    mine_neighbors,
    neighbor_purity,
    scan_loss,
    self_label_loss,
)
from ssl_cluster_bench.metrics import cluster_accuracy

FAST = dict(n_heads=3, epochs=20, batch_size=64, verbose=False, device="cpu")


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=4, n_features=8, cluster_std=1.0, random_state=3)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data.astype(np.float32), data.target


# ----------------------------------------------------------------------------- scan_loss
def test_scan_loss_matches_hand_computation():
    ln3 = math.log(3.0)
    # softmax rows: anchors (3/4, 1/4) and (1/2, 1/2); neighbours (1/4, 3/4) and (3/4, 1/4)
    anchors = torch.tensor([[ln3, 0.0], [0.0, 0.0]])
    neighbors = torch.tensor([[0.0, ln3], [ln3, 0.0]])
    total, consistency, entropy = scan_loss(anchors, neighbors, entropy_weight=2.0)
    dot1 = 3 / 4 * 1 / 4 + 1 / 4 * 3 / 4  # 3/8
    dot2 = 1 / 2 * 3 / 4 + 1 / 2 * 1 / 4  # 1/2
    expected_consistency = -(math.log(dot1) + math.log(dot2)) / 2
    mean_p = (5 / 8, 3 / 8)
    expected_entropy = -(mean_p[0] * math.log(mean_p[0]) + mean_p[1] * math.log(mean_p[1]))
    assert consistency.item() == pytest.approx(expected_consistency, abs=1e-6)
    assert entropy.item() == pytest.approx(expected_entropy, abs=1e-6)
    assert total.item() == pytest.approx(expected_consistency - 2.0 * expected_entropy, abs=1e-6)


def test_scan_loss_keeps_head_dimension_and_is_finite_without_overlap():
    ln3 = math.log(3.0)
    good = torch.tensor([[ln3, 0.0], [0.0, 0.0]])
    stacked_a = torch.stack([good, torch.tensor([[100.0, -100.0], [-100.0, 100.0]])])
    stacked_n = torch.stack([torch.tensor([[0.0, ln3], [ln3, 0.0]]),
                             torch.tensor([[-100.0, 100.0], [100.0, -100.0]])])
    total, consistency, entropy = scan_loss(stacked_a, stacked_n, entropy_weight=0.0)
    assert total.shape == consistency.shape == entropy.shape == (2,)
    # Head 1: neighbours disagree completely; the clamp keeps the loss at -log(eps) instead of inf.
    assert torch.isfinite(total).all()
    assert consistency[1].item() == pytest.approx(-math.log(1e-8), rel=1e-3)
    assert entropy[1].item() == pytest.approx(math.log(2.0), abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        scan_loss(torch.zeros(3, 2), torch.zeros(2, 2))


# ----------------------------------------------------------------------------- neighbours
def _brute_force_knn(X: np.ndarray, k: int) -> np.ndarray:
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = Z @ Z.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def test_mine_neighbors_matches_brute_force_and_excludes_self():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 12)).astype(np.float32)
    got = mine_neighbors(X, n_neighbors=7, batch_size=32, gpu=False, verbose=False)
    assert got.shape == (150, 7) and got.dtype == np.int64
    assert not np.any(got == np.arange(150)[:, None])
    np.testing.assert_array_equal(got, _brute_force_knn(X.astype(np.float64), 7))
    # Batching does not change the answer.
    np.testing.assert_array_equal(got, mine_neighbors(X, 7, batch_size=1000, gpu=False, verbose=False))


def test_mine_neighbors_drops_self_among_duplicates():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 5)).astype(np.float32)
    X = np.concatenate([np.repeat(base[:1], 6, axis=0), base[1:]])  # rows 0..5 identical
    got = mine_neighbors(X, n_neighbors=4, batch_size=4, gpu=False, verbose=False)
    assert not np.any(got == np.arange(X.shape[0])[:, None])
    for i in range(6):
        assert set(got[i]) <= set(range(6)) - {i}
        assert len(set(got[i])) == 4


def test_mine_neighbors_validates_k():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="n_neighbors=10 must be smaller"):
        mine_neighbors(X, n_neighbors=10, verbose=False)
    with pytest.raises(ValueError, match="n_neighbors must be a positive integer"):
        mine_neighbors(X, n_neighbors=0, verbose=False)
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mine_neighbors(X, n_neighbors=2, verbose=False)


def test_neighbor_purity_hand_case():
    neighbors = np.array([[1, 2], [0, 2], [0, 1]])
    labels = np.array([0, 0, 1])
    # agreeing pairs: (0,1) and (1,0) out of 6
    assert neighbor_purity(neighbors, labels) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="outside"):
        neighbor_purity(np.array([[3], [0], [1]]), labels)


# ----------------------------------------------------------------------------- self-labeling pieces
def test_confident_mask_and_balanced_weights():
    probs = torch.tensor([
        [0.995, 0.005, 0.000],
        [0.500, 0.500, 0.000],
        [0.001, 0.998, 0.001],
        [0.992, 0.004, 0.004],
        [0.990, 0.010, 0.000],  # exactly at the threshold: not confident
    ])
    mask, targets = confident_targets(probs, confidence=0.99)
    assert mask.tolist() == [True, False, True, True, False]
    assert targets[mask].tolist() == [0, 1, 0]
    weights = balanced_class_weights(targets[mask], n_clusters=3)
    # n = 3 confident, m = 2 clusters present, counts (2, 1, 0): w = n / (m * count)
    np.testing.assert_allclose(weights.numpy(), [3 / 4, 3 / 2, 0.0])
    # Each present cluster gets the same total weight.
    assert weights[0] * 2 == pytest.approx(weights[1] * 1)


def test_self_label_loss_is_class_weighted_cross_entropy():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [0.0, math.log(4.0)]])
    targets = torch.tensor([0, 0, 1])
    weights = torch.tensor([0.75, 1.5])
    nll = [-math.log(3 / 4), -math.log(1 / 2), -math.log(4 / 5)]
    expected = (0.75 * nll[0] + 0.75 * nll[1] + 1.5 * nll[2]) / (0.75 + 0.75 + 1.5)
    assert self_label_loss(logits, targets, weights).item() == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- estimator
def test_fit_recovers_blobs_and_is_seeded(blobs):
    X, y = blobs
    a = SCAN(4, random_state=1, **FAST).fit(X)
    b = SCAN(4, random_state=1, **FAST).fit(X)
    c = SCAN(4, random_state=2, **FAST).fit(X)
    assert cluster_accuracy(y, a.labels_) > 0.97
    np.testing.assert_array_equal(a.probs_, b.probs_)
    np.testing.assert_array_equal(a.head_losses_, b.head_losses_)
    assert not np.array_equal(a.probs_, c.probs_)
    assert a.probs_.shape == (X.shape[0], 4)
    np.testing.assert_allclose(a.probs_.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    assert a.neighbors_.shape == (X.shape[0], 20)
    assert not a.degenerate_ and a.cluster_sizes_.sum() == X.shape[0]


def test_head_losses_are_full_set_scan_losses(blobs):
    X, _ = blobs
    est = SCAN(4, random_state=0, **FAST).fit(X)
    for h in range(3):
        p = torch.from_numpy(est.predict_proba(X, head=h)).double()
        nb = est.neighbors_
        similarity = (p[:, None, :] * p[torch.from_numpy(nb)]).sum(-1)
        consistency = -torch.log(similarity.clamp_min(1e-8)).mean()
        mean_p = p.mean(0)
        entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-8))).sum()
        assert est.head_losses_[h] == pytest.approx((consistency - 5.0 * entropy).item(), abs=1e-4)


def test_lowest_loss_head_is_chosen_without_labels(blobs, monkeypatch):
    X, y = blobs
    original = SCAN._train

    def train_then_break_head_0(self, heads, ctx):
        original(self, heads, ctx)
        with torch.no_grad():
            # Head 0 now sends every sample to cluster 0: a collapsed, high-loss head.
            for w in heads.weights:
                w[0].zero_()
            for b in heads.biases:
                b[0].zero_()
            heads.biases[-1][0, 0, 0] = 10.0

    monkeypatch.setattr(SCAN, "_train", train_then_break_head_0)
    est = SCAN(4, random_state=0, **FAST).fit(X)
    assert est.best_head_ != 0
    assert est.head_losses_[0] == est.head_losses_.max()
    assert est.best_head_ == int(np.argmin(est.head_losses_))
    assert np.unique(est.predict(X, head=0)).size == 1
    assert cluster_accuracy(y, est.labels_) > 0.97
    # Labels passed as y are ignored: same fit with wrong labels, same choice and same numbers.
    shuffled = np.random.default_rng(0).permutation(y)
    again = SCAN(4, random_state=0, **FAST).fit(X, y=shuffled)
    assert again.best_head_ == est.best_head_
    np.testing.assert_array_equal(again.probs_, est.probs_)


def test_self_labeling_runs_and_records_history(blobs):
    X, y = blobs
    longer = {**FAST, "epochs": 60}
    est = SCAN(4, random_state=0, self_label=True, self_label_epochs=8, **longer).fit(X)
    assert 1 <= len(est.n_confident_) <= 8
    assert est.n_confident_[0] > X.shape[0] // 2
    assert est.n_confident_[-1] >= est.n_confident_[0]
    assert cluster_accuracy(y, est.labels_) > 0.97
    # Self-labeling changes the prediction head but not the stored SCAN heads.
    plain = SCAN(4, random_state=0, **longer).fit(X)
    np.testing.assert_array_equal(est.predict_proba(X, head=est.best_head_),
                                  plain.predict_proba(X, head=plain.best_head_))
    assert not np.array_equal(est.probs_, plain.probs_)
    # Nothing confident: a warning, and the SCAN head is kept unchanged.
    with pytest.warns(RuntimeWarning, match="no sample with confidence"):
        none = SCAN(4, random_state=0, self_label=True, confidence=1 - 1e-9, **FAST).fit(X)
    assert none.n_confident_ == [0]
    np.testing.assert_array_equal(none.probs_, none.predict_proba(X, head=none.best_head_))


def test_augmented_views_and_memmap_input(blobs, tmp_path, monkeypatch):
    X, y = blobs
    rng = np.random.default_rng(0)
    views = np.stack([X + rng.normal(scale=0.1, size=X.shape).astype(np.float32) for _ in range(3)])
    est = SCAN(4, random_state=0, self_label=True, self_label_epochs=3, **FAST).fit(X, augmented=views)
    assert cluster_accuracy(y, est.labels_) > 0.97
    # Memory-mapped inputs read batch by batch (as for ImageNet-sized caches) give the same numbers.
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mm[:] = X
    vm = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=views.shape)
    vm[:] = views
    monkeypatch.setattr(common_module, "RESIDENT_BYTES", 0)
    streamed = SCAN(4, random_state=0, self_label=True, self_label_epochs=3, **FAST).fit(mm, augmented=vm)
    np.testing.assert_allclose(streamed.probs_, est.probs_, atol=1e-5)


def test_bad_inputs_raise(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="n_clusters must be an integer >= 2"):
        SCAN(1, **FAST).fit(X)
    with pytest.raises(ValueError, match="n_neighbors=20 must be smaller"):
        SCAN(2, **FAST).fit(X[:20])
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf.*row 5"):
        SCAN(4, **FAST).fit(bad)
    bad[5, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        SCAN(4, **FAST).fit(bad)
    with pytest.raises(ValueError, match="augmented must have shape"):
        SCAN(4, **FAST).fit(X, augmented=np.zeros((2, X.shape[0] - 1, X.shape[1])))
    with pytest.raises(ValueError, match="augment='views' needs"):
        SCAN(4, augment="views", **FAST).fit(X)
    with pytest.raises(ValueError, match="head must be 'linear' or 'mlp'"):
        SCAN(4, head="conv", **FAST).fit(X)
    with pytest.raises(ValueError, match="confidence must be in"):
        SCAN(4, confidence=1.0, **FAST).fit(X)
    with pytest.raises(ValueError, match="2-D"):
        SCAN(4, **FAST).fit(X[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        SCAN(4, **FAST).predict(X)
    est = SCAN(4, **FAST).fit(X)
    with pytest.raises(ValueError, match="fitted on dim 8"):
        est.predict(X[:, :5])
    with pytest.raises(ValueError, match="head must be None or an integer"):
        est.predict(X, head=3)


def test_degenerate_collapse_is_flagged():
    X = np.ones((60, 4), dtype=np.float32)
    with pytest.warns(DegenerateClusteringWarning, match="degenerate"):
        est = SCAN(3, entropy_weight=0.0, n_neighbors=5, **FAST).fit(X)
    assert est.degenerate_
    assert (est.cluster_sizes_ > 0).sum() == 1 and est.cluster_sizes_.sum() == 60


def test_mlp_head_fits_blobs(blobs):
    X, y = blobs
    est = SCAN(4, head="mlp", hidden_dim=32, random_state=0, **FAST).fit(X)
    assert cluster_accuracy(y, est.labels_) > 0.97


# ----------------------------------------------------------------------------- quality bar
def test_digits_quality_bar(digits):
    """SCAN on raw digits pixels beats k-means by > 5 points; self-labeling does not lose accuracy.

    Self-labeling is allowed 0.005 of slack: on these features a classifier refit on the confident samples
    is worse than the SCAN head (see SCAN.self_label_lr), so its expected effect is ≈ −0.002, not a gain.
    """
    X, y = digits
    kmeans, scan, selflabel = [], [], []
    for seed in range(5):
        km = KMeans(n_clusters=10, n_init=10, random_state=seed).fit(X)
        kmeans.append(cluster_accuracy(y, km.labels_))
        est = SCAN(10, self_label=True, random_state=seed, device="cpu", verbose=False).fit(X)
        assert not est.degenerate_
        # The SCAN step's chosen head, before self-labeling (same run: same seed, same numbers).
        scan.append(cluster_accuracy(y, est.predict(X, head=est.best_head_)))
        selflabel.append(cluster_accuracy(y, est.labels_))
    kmeans, scan, selflabel = map(np.mean, (kmeans, scan, selflabel))
    assert 0.72 < kmeans < 0.82
    assert 0.82 <= scan < 0.97
    assert scan >= kmeans + 0.05
    assert selflabel >= scan - 0.005
