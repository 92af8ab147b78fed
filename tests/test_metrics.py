import numpy as np
import pytest
from sklearn import metrics as skm

from ssl_cluster_bench.metrics import (adjusted_mutual_info, cluster_accuracy, evaluate, match_clusters,
                                       top_k_accuracy)


def _brute_force_acc(y_true, y_pred):
    """Best one-to-one mapping by trying every permutation (tiny cases only)."""
    import itertools

    classes, clusters = np.unique(y_true), np.unique(y_pred)
    best = 0
    for perm in itertools.permutations(classes, len(clusters)) if len(clusters) <= len(classes) else []:
        mapping = dict(zip(clusters, perm))
        best = max(best, sum(mapping[p] == t for t, p in zip(y_true, y_pred)))
    return best / len(y_true)


def test_acc_matches_permutation_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_cls = rng.integers(2, 6)
        k = rng.integers(1, n_cls + 1)
        y_true = rng.integers(0, n_cls, 40)
        y_pred = rng.integers(0, k, 40)
        assert cluster_accuracy(y_true, y_pred) == pytest.approx(_brute_force_acc(y_true, y_pred))


def test_acc_permutation_invariant_and_noncontiguous_labels():
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([7, 7, -3, -3, 100, 100, 7])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(6 / 7)
    assert cluster_accuracy(y_true * 10 + 5, y_pred) == pytest.approx(6 / 7)


def test_overclustering_hand_worked():
    # classes: A=0 (6 samples), B=1 (4 samples); clusters 0..3
    # cluster 0: 4×A ; cluster 1: 2×A + 1×B ; cluster 2: 3×B ; cluster 3: 0×A... (only B below)
    y_true = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    # Hungarian gives A->cluster 0 (4), B->cluster 2 (3); the remaining cluster 1 goes to its majority A (2).
    m = match_clusters(y_true, y_pred)
    assert m.mapping == {0: 0, 1: 0, 2: 1}
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(9 / 10)


def test_overclustering_every_class_gets_a_cluster_first():
    # Cluster 2 has majority class 0, but class 1 must first receive one cluster by Hungarian: the best
    # for class 1 is cluster 2 (2 samples) rather than leaving class 1 with nothing.
    y_true = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    m = match_clusters(y_true, y_pred)
    assert m.mapping[2] == 1
    # correct: cluster0 3 (class0) + cluster1 2 (class0) + cluster2 2 (class1) = 7
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(7 / 9)
    # a pure majority vote would give 7/9 too but map cluster 2 -> 0 (3 vs... ties) — check the rule, not luck:
    y_pred2 = np.array([0, 0, 0, 1, 1, 2, 2, 2, 1])
    # Hungarian: class0->cluster0 (3) ; class1->cluster 1 or 2 (1 each); remaining cluster -> majority class0.
    assert cluster_accuracy(y_true, y_pred2) == pytest.approx((3 + 2 + 1) / 9)


def test_single_cluster_and_single_sample():
    assert cluster_accuracy([0, 1, 1, 2], [5, 5, 5, 5]) == pytest.approx(0.5)
    r = evaluate([3], [9])
    assert r["acc"] == 1.0 and r["nmi"] == pytest.approx(skm.normalized_mutual_info_score([3], [9]))


@pytest.mark.parametrize("n,k,c", [(50, 3, 3), (500, 10, 10), (2000, 15, 10), (300, 40, 5), (1000, 1, 7),
                                   (1000, 7, 1), (400, 400, 20)])
def test_against_sklearn_random(n, k, c):
    rng = np.random.default_rng(n + k + c)
    y_true = rng.integers(0, c, n) * 3 + 1
    y_pred = np.where(rng.random(n) < 0.5, y_true % k, rng.integers(0, k, n)) * 2 - 5
    r = evaluate(y_true, y_pred)
    assert r["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y_true, y_pred), abs=1e-12)
    assert r["ari"] == pytest.approx(skm.adjusted_rand_score(y_true, y_pred), abs=1e-12)
    assert r["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y_true, y_pred), abs=1e-9)
    assert 0.0 <= r["acc"] <= 1.0


def test_ami_adversarial_cases_equal_sklearn():
    rng = np.random.default_rng(1)
    cases = [
        (np.arange(100) % 2, np.arange(100) % 2),  # perfect
        (np.zeros(50, int), np.zeros(50, int)),  # both trivial
        (np.arange(60), np.arange(60)),  # all singletons
        (rng.integers(0, 3, 5000), rng.integers(0, 200, 5000)),  # many small clusters
        (np.repeat(np.arange(10), [1000, 1, 1, 1, 1, 1, 1, 1, 1, 1]), rng.integers(0, 10, 1009)),  # skewed
    ]
    for y_true, y_pred in cases:
        assert adjusted_mutual_info(y_true, y_pred) == pytest.approx(
            skm.adjusted_mutual_info_score(y_true, y_pred), abs=1e-9)


def test_top5_under_matching():
    y_true = np.array([0, 1, 2, 3, 4, 5])
    probs = np.eye(6)[[0, 1, 2, 3, 4, 0]] * 0.5 + 0.01 * np.arange(6)[None, ::-1]
    pred = probs.argmax(1)
    m = match_clusters(y_true, pred)
    # the last sample's class 5 maps to no cluster (cluster 5 is never predicted), so it is never top-5 correct
    assert top_k_accuracy(y_true, probs, m, k=5) == pytest.approx(5 / 6)
    r = evaluate(y_true, pred, probs)
    assert r["top5"] == pytest.approx(5 / 6) and r["acc"] == pytest.approx(5 / 6)
    # top-1 equals ACC
    assert top_k_accuracy(y_true, probs, m, k=1) == pytest.approx(r["acc"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="different lengths"):
        evaluate([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        cluster_accuracy([], [])
    with pytest.raises(ValueError, match="1-D"):
        cluster_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))


def test_large_scale_is_fast():
    import time

    rng = np.random.default_rng(0)
    n, k = 200_000, 1000
    y_true = rng.integers(0, k, n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    t = time.perf_counter()
    acc = cluster_accuracy(y_true, y_pred)
    assert time.perf_counter() - t < 5.0
    assert 0.59 < acc < 0.62
