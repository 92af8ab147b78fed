"""Heads: clustering heads trained on cached (frozen) features.

Entry points:
    SCAN(n_clusters, ...).fit(features, augmented=None) -> .labels_, .probs_, .predict(X), .predict_proba(X)
    mine_neighbors(features, n_neighbors=20) -> (n, K) cosine nearest neighbours, self excluded
    neighbor_purity(neighbors, labels) -> fraction of neighbours sharing the anchor's label (diagnostic)
    scan_loss(anchor_logits, neighbor_logits, entropy_weight) -> (total, consistency, entropy)
    MMDC(n_clusters, ...).fit(features)        Gaussian-mixture target points, per-batch Hungarian matching
    TwoStageUC(n_clusters, ...).fit(features)  normalised-FC heads, IIC mutual information between views
"""
from .base import HeadEstimator, align_labels, majority_vote, vote_aligned
from .mmdc import MMDC, mmdc_loss, sample_targets
from .neighbors import mine_neighbors, neighbor_purity
from .scan import SCAN, DegenerateClusteringWarning, MultiHead, scan_loss
from .selflabel import (augment_features, balanced_class_weights, confident_targets, mix_with_neighbors,
                        self_label_loss)
from .twostage import NormalizedHeads, TwoStageUC, iic_loss

__all__ = [
    "HeadEstimator",
    "MMDC",
    "NormalizedHeads",
    "SCAN",
    "TwoStageUC",
    "align_labels",
    "iic_loss",
    "majority_vote",
    "mmdc_loss",
    "sample_targets",
    "vote_aligned",
    "DegenerateClusteringWarning",
    "MultiHead",
    "augment_features",
    "balanced_class_weights",
    "confident_targets",
    "mix_with_neighbors",
    "mine_neighbors",
    "neighbor_purity",
    "scan_loss",
    "self_label_loss",
]
