"""Clustering metrics: ACC (Hungarian / many-to-one), NMI, AMI, ARI, Fowlkes-Mallows, homogeneity,
completeness and top-5 ACC; label-free: silhouette, Calinski-Harabasz, Davies-Bouldin.

Entry points:
    cluster_accuracy(y_true, y_pred) -> float
    match_clusters(y_true, y_pred, n_clusters=None) -> ClusterMatching
    evaluate(y_true, y_pred, probs=None) -> dict with keys acc, nmi, ami, ari, fmi, homogeneity, completeness
        (+ top5 when probs given)
    evaluate_with_noise(y_true, y_pred, probs=None) -> the same, plus noise_fraction and acc/nmi/ami/ari_clustered
        when y_pred marks noise with -1 (hdbscan)
    silhouette(features, labels), label_free(features, labels) -> {"calinski_harabasz", "davies_bouldin"}

Everything is computed from one confusion matrix built with ``np.bincount``; there is no Python loop over
samples or over cluster/class pairs, so n = 1.28M, k = 1000 takes well under a second for ACC.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln
from sklearn import metrics as skm

__all__ = [
    "ClusterMatching",
    "adjusted_mutual_info",
    "cluster_accuracy",
    "confusion_matrix",
    "evaluate",
    "evaluate_with_noise",
    "label_free",
    "match_clusters",
    "match_confusion",
    "nmi_from_confusion",
    "silhouette",
    "top_k_accuracy",
]

#: rows on which the silhouette of a large dataset is computed (its cost grows with the square of the rows)
SILHOUETTE_SAMPLE = 10000


def _as_labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty: at least one sample is needed to score a clustering")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must hold integer labels; found non-integer or non-finite values")
        y = y.astype(np.int64)
    return y


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = _as_labels(y_true, "y_true")
    y_pred = _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred have different lengths ({y_true.shape[0]} vs {y_pred.shape[0]})"
        )
    return y_true, y_pred


def _dense_ids(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ids)``: the sorted distinct labels and each sample's index into them (as ``np.unique``).

    ``np.unique`` sorts all n labels (0.25 s at n = 1.28M); non-negative integer labels with a moderate
    maximum take a bincount + lookup path instead, which gives the same result in a few milliseconds.
    """
    if y.dtype.kind in "iu" and y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo >= 0 and hi < max(1 << 20, 4 * y.size):
            present = np.bincount(y, minlength=hi + 1) > 0
            lookup = np.cumsum(present, dtype=np.int64) - 1
            return np.flatnonzero(present).astype(y.dtype), lookup[y]
    return np.unique(y, return_inverse=True)


def confusion_matrix(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``C[i, j]`` of samples in cluster ``clusters[i]`` with class ``classes[j]``.

    Labels may be any integers (not necessarily 0..k-1). Returns ``(C, clusters, classes)``.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    classes, t = _dense_ids(y_true)
    clusters, p = _dense_ids(y_pred)
    n_t, n_p = classes.size, clusters.size
    counts = np.bincount(p.astype(np.int64) * n_t + t, minlength=n_p * n_t)
    return counts.reshape(n_p, n_t), clusters, classes


@dataclass(frozen=True)
class ClusterMatching:
    """Cluster -> class assignment.

    ``clusters[i]`` is mapped to ``classes[class_index[i]]``; ``mapping`` is that as a dict.
    With at most as many clusters as classes the matching is one-to-one (Hungarian). With more clusters than
    classes, every class first gets one cluster by Hungarian and each remaining cluster goes to its majority
    class.
    """

    clusters: np.ndarray
    classes: np.ndarray
    class_index: np.ndarray
    confusion: np.ndarray

    @property
    def mapping(self) -> dict:
        return {int(c): int(self.classes[j]) for c, j in zip(self.clusters, self.class_index)}

    @property
    def n_correct(self) -> int:
        return int(self.confusion[np.arange(self.clusters.size), self.class_index].sum())

    def map(self, y_pred, unknown: int = -1) -> np.ndarray:
        """Class label of each predicted cluster id; ids never seen at matching time get ``unknown``."""
        y_pred = np.asarray(y_pred)
        pos = np.searchsorted(self.clusters, y_pred)
        pos = np.clip(pos, 0, self.clusters.size - 1)
        known = self.clusters[pos] == y_pred
        return np.where(known, self.classes[self.class_index[pos]], unknown)


def match_confusion(confusion: np.ndarray) -> np.ndarray:
    """The class index of each cluster (row of ``confusion``, clusters x classes): Hungarian one-to-one, and when
    there are more clusters than classes, the clusters left over go to their majority class."""
    n_clusters, n_classes = confusion.shape
    if n_clusters <= n_classes:
        rows, cols = linear_sum_assignment(confusion, maximize=True)
        class_index = np.empty(n_clusters, dtype=np.int64)
        class_index[rows] = cols
        return class_index
    # Overclustering: one cluster per class by Hungarian, the rest by majority vote.
    class_index = confusion.argmax(axis=1).astype(np.int64)
    cls, clu = linear_sum_assignment(confusion.T, maximize=True)
    class_index[clu] = cls
    return class_index


def match_clusters(y_true, y_pred) -> ClusterMatching:
    """Match predicted clusters to classes on the confusion matrix (see :class:`ClusterMatching`)."""
    confusion, clusters, classes = confusion_matrix(y_true, y_pred)
    return ClusterMatching(clusters, classes, match_confusion(confusion), confusion)


def cluster_accuracy(y_true, y_pred) -> float:
    """Clustering accuracy under the best cluster -> class matching (many-to-one when overclustering)."""
    m = match_clusters(y_true, y_pred)
    return m.n_correct / float(np.asarray(y_true).shape[0])


def top_k_accuracy(y_true, probs, matching: ClusterMatching, k: int = 5) -> float:
    """Fraction of samples whose class is among the classes of their ``k`` most probable clusters.

    ``probs`` is (n, n_clusters) with column j the probability of cluster id j; the cluster -> class
    matching is the one used for ACC, so top-1 of this equals ACC when argmax(probs) is the prediction.
    """
    y_true = _as_labels(y_true, "y_true")
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(f"probs must have shape (n_samples={y_true.shape[0]}, n_clusters), got {probs.shape}")
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else np.broadcast_to(
        np.arange(probs.shape[1]), probs.shape
    )
    # Columns never predicted as argmax have no matched class: they can never count as correct.
    mapped = matching.map(top, unknown=np.iinfo(np.int64).min)
    return float(np.mean(np.any(mapped == y_true[:, None], axis=1)))


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def _expected_mutual_info(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """Expected mutual information of two labelings with marginals ``a`` and ``b`` (hypergeometric model).

    Same quantity as scikit-learn's ``expected_mutual_information``, computed faster: the inner sum depends
    only on the pair of marginal values, so equal cluster/class sizes are grouped, and for each pair the sum
    runs over a window around the mode of the (log-concave) hypergeometric law that is widened until the
    terms at its edges are below 1e-18 of the peak, which leaves the result equal to full summation to
    floating-point precision.
    """
    ua, ma = np.unique(a[a > 0], return_counts=True)
    ub, mb = np.unique(b[b > 0], return_counts=True)
    A, B = np.meshgrid(ua.astype(np.float64), ub.astype(np.float64), indexing="ij")
    W = (ma[:, None] * mb[None, :]).astype(np.float64).ravel()
    A, B = A.ravel(), B.ravel()
    N = float(n)
    lo = np.maximum(1.0, A + B - N)
    hi = np.minimum(A, B)
    mode = np.clip(np.floor((A + 1) * (B + 1) / (N + 2)), lo, hi)
    gl_n = gammaln(N + 1)
    # log of a! b! (N-a)! (N-b)! / N!, shared by every term of a pair
    const = gammaln(A + 1) + gammaln(B + 1) + gammaln(N - A + 1) + gammaln(N - B + 1) - gl_n
    total = 0.0
    pending = np.arange(A.size)
    half = 16
    while pending.size:
        widen = []
        for start in range(0, pending.size, max(1, 2_000_000 // (2 * half + 1))):
            idx = pending[start:start + max(1, 2_000_000 // (2 * half + 1))]
            offs = np.arange(-half, half + 1, dtype=np.float64)
            nij = mode[idx, None] + offs[None, :]
            valid = (nij >= lo[idx, None]) & (nij <= hi[idx, None])
            nv = np.where(valid, nij, 1.0)
            a_, b_ = A[idx, None], B[idx, None]
            logp = (const[idx, None] - gammaln(nv + 1) - gammaln(a_ - nv + 1) - gammaln(b_ - nv + 1)
                    - gammaln(N - a_ - b_ + nv + 1))
            p = np.where(valid, np.exp(logp), 0.0)
            term = p * (nv / N) * (np.log(N * nv) - np.log(a_ * b_))
            # The window is wide enough when both edges are outside the support or negligible.
            edge_lo = (mode[idx] - half < lo[idx]) | (p[:, 0] < 1e-18 * p.max(axis=1))
            edge_hi = (mode[idx] + half > hi[idx]) | (p[:, -1] < 1e-18 * p.max(axis=1))
            ok = edge_lo & edge_hi
            total += float((term[ok].sum(axis=1) * W[idx][ok]).sum())
            widen.append(idx[~ok])
        pending = np.concatenate(widen) if widen else np.empty(0, dtype=np.int64)
        half *= 4
    return total


def adjusted_mutual_info(y_true, y_pred) -> float:
    """AMI with arithmetic normalisation (scikit-learn's default), with a faster exact expected-MI term."""
    return _ami_from_confusion(confusion_matrix(y_true, y_pred)[0])


def _ami_from_confusion(confusion: np.ndarray) -> float:
    n = int(confusion.sum())
    a, b = confusion.sum(axis=1), confusion.sum(axis=0)
    if (a.size == b.size == 1) or (a.size == b.size == n):
        return 1.0  # identical trivial labelings, as scikit-learn defines it
    nz = confusion[confusion > 0].astype(np.float64)
    outer = np.outer(a, b)[confusion > 0].astype(np.float64)
    mi = float(np.sum(nz / n * (np.log(nz) + np.log(n) - np.log(outer))))
    mi = max(mi, 0.0)
    h_pred, h_true = _entropy(a, n), _entropy(b, n)
    emi = _expected_mutual_info(a, b, n)
    normalizer = (h_true + h_pred) / 2.0
    denominator = normalizer - emi
    eps = np.finfo(np.float64).eps
    denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
    return float((mi - emi) / denominator)


def nmi_from_confusion(confusion: np.ndarray) -> float:
    """scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean) from the confusion matrix.

    The MI itself is scikit-learn's ``mutual_info_score`` on the table; only the table is shared, instead of
    scikit-learn rebuilding it from the labels (three times per call).
    """
    n_clusters, n_classes = confusion.shape
    if n_clusters == n_classes == 1:
        return 1.0  # both labelings put everything together: a perfect match, as scikit-learn defines it
    mi = skm.mutual_info_score(None, None, contingency=confusion.T)
    if mi == 0:
        return 0.0
    n = int(confusion.sum())
    h_true, h_pred = _entropy(confusion.sum(axis=0), n), _entropy(confusion.sum(axis=1), n)
    return float(mi / ((h_true + h_pred) / 2.0))


def _ari_from_confusion(confusion: np.ndarray) -> float:
    """scikit-learn's ``adjusted_rand_score`` (same pair-confusion formula) from the confusion matrix.

    scikit-learn takes labels only and rebuilds a sparse table from them (0.5 s at n = 1.28M); the pair
    counts follow from the table in exact integer arithmetic (Python ints cannot overflow).
    """
    n = int(confusion.sum())
    sum_squares = int((confusion.astype(np.int64) ** 2).sum())
    cluster_squares = int((confusion.sum(axis=1).astype(np.int64) ** 2).sum())
    class_squares = int((confusion.sum(axis=0).astype(np.int64) ** 2).sum())
    tp = sum_squares - n
    fp = cluster_squares - sum_squares  # pairs in one cluster but of two classes (scikit-learn's C[0, 1])
    fn = class_squares - sum_squares  # pairs of one class split over two clusters (C[1, 0])
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _pair_counts(confusion: np.ndarray) -> tuple[int, int, int]:
    """(pairs together in both, pairs of one cluster, pairs of one class), in exact integer arithmetic."""
    n = int(confusion.sum())
    tk = int((confusion.astype(np.int64) ** 2).sum()) - n
    pk = int((confusion.sum(axis=1).astype(np.int64) ** 2).sum()) - n
    qk = int((confusion.sum(axis=0).astype(np.int64) ** 2).sum()) - n
    return tk, pk, qk


def _fmi_from_confusion(confusion: np.ndarray) -> float:
    """scikit-learn's ``fowlkes_mallows_score``: TP / sqrt((TP + FP)(TP + FN)) over pairs, from the table."""
    tk, pk, qk = _pair_counts(confusion)
    return float(np.sqrt(tk / pk) * np.sqrt(tk / qk)) if tk != 0 else 0.0


def _homogeneity_completeness(confusion: np.ndarray) -> tuple[float, float]:
    """scikit-learn's ``homogeneity_completeness_v_measure`` (first two): MI / H(classes), MI / H(clusters)."""
    n = int(confusion.sum())
    h_true, h_pred = _entropy(confusion.sum(axis=0), n), _entropy(confusion.sum(axis=1), n)
    mi = skm.mutual_info_score(None, None, contingency=confusion.T)
    return (float(mi / h_true) if h_true else 1.0), (float(mi / h_pred) if h_pred else 1.0)


def evaluate(y_true, y_pred, probs=None) -> dict:
    """All clustering metrics for one labeling.

    Returns ``{"acc", "nmi", "ami", "ari"}`` and ``"top5"`` when ``probs`` (n × n_clusters soft assignments,
    column j = cluster id j) is given. NMI/AMI use arithmetic normalisation (scikit-learn's default); all
    four equal scikit-learn's values (to rounding) and come from one confusion matrix.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    matching = match_clusters(y_true, y_pred)
    confusion = matching.confusion
    out = {
        "acc": matching.n_correct / float(y_true.shape[0]),
        "nmi": nmi_from_confusion(confusion),
        "ami": _ami_from_confusion(confusion),
        "ari": _ari_from_confusion(confusion),
        "fmi": _fmi_from_confusion(confusion),
    }
    out["homogeneity"], out["completeness"] = _homogeneity_completeness(confusion)
    if probs is not None:
        out["top5"] = top_k_accuracy(y_true, probs, matching, k=5)
    return out


def evaluate_with_noise(y_true, y_pred, probs=None) -> dict:
    """:func:`evaluate` for a labeling that may mark noise points with -1 (hdbscan, as Lowe et al. score it).

    The plain metrics count the noise as one more cluster (no point is dropped, so a method cannot gain by
    leaving the hard points out); ``acc/nmi/ami/ari_clustered`` score only the points put in a cluster, and
    ``noise_fraction`` says how many were not. Without noise the ``*_clustered`` keys are absent.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    noise = y_pred < 0
    out = evaluate(y_true, y_pred, probs)
    out["noise_fraction"] = float(noise.mean())
    if noise.any() and not noise.all():
        kept = evaluate(y_true[~noise], y_pred[~noise])
        out.update({f"{m}_clustered": kept[m] for m in ("acc", "nmi", "ami", "ari")})
    elif noise.all():
        out.update({f"{m}_clustered": float("nan") for m in ("acc", "nmi", "ami", "ari")})
    return out


def label_free(features, labels) -> dict:
    """scikit-learn's Calinski-Harabasz (higher is better) and Davies-Bouldin (lower is better) indices of a
    labeling on ``features``, over every row (each is one pass over the data, O(n·dim)). NaN when the labels use
    fewer than 2 clusters or every row is its own cluster."""
    labels = np.asarray(labels)
    if not 2 <= np.unique(labels).size <= labels.shape[0] - 1:
        return {"calinski_harabasz": float("nan"), "davies_bouldin": float("nan")}
    x = np.asarray(features, dtype=np.float32)  # no float64 copy of a large reduced space
    return {"calinski_harabasz": float(skm.calinski_harabasz_score(x, labels)),
            "davies_bouldin": float(skm.davies_bouldin_score(x, labels))}


def silhouette(features, labels, sample_size: int | None = SILHOUETTE_SAMPLE, random_state: int = 0) -> float:
    """Label-free quality of a clustering: scikit-learn's mean silhouette coefficient (Euclidean) on ``features``.

    With more than ``sample_size`` rows, the same seeded random subset of ``sample_size`` rows is scored for
    every clustering of the data (None: all rows). NaN when the labels use fewer than 2 clusters or every row is
    its own cluster (the coefficient is undefined there).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    rows = np.arange(n)
    if sample_size is not None and n > sample_size:
        rows = np.sort(np.random.default_rng(random_state).choice(n, int(sample_size), replace=False))
    sub = labels[rows]
    if not 2 <= np.unique(sub).size <= rows.size - 1:
        return float("nan")
    return float(skm.silhouette_score(np.asarray(features[rows], dtype=np.float32), sub))
