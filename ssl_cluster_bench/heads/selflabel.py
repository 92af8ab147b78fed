"""Self-labeling pieces of SCAN (step 3): confident pseudo-labels, class-balanced weights, feature augmentation.

Entry points:
    confident_targets(probs, confidence) -> (mask, targets): samples whose top probability exceeds the
        threshold and their argmax cluster
    balanced_class_weights(targets, n_clusters) -> (k,) weights inversely proportional to cluster frequency
    self_label_loss(logits, targets, class_weights) -> class-balanced cross-entropy
    augment_features(x, noise_std, drop_prob, generator) -> feature-space augmentation of standardised rows
    mix_with_neighbors(x, x_neighbor, generator) -> random points between samples and their mined neighbours

The training loop that uses them lives in :class:`ssl_cluster_bench.heads.SCAN` (``self_label=True``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment_features", "balanced_class_weights", "confident_targets", "mix_with_neighbors",
           "self_label_loss"]


def confident_targets(probs, confidence: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of samples with ``max(probs) > confidence`` and the argmax cluster of every sample.

    ``probs`` is an (n, k) tensor or array of soft assignments. Returns ``(mask (n,) bool, targets (n,) int64)``
    as tensors on the device of ``probs``; ``targets`` is filled for every row, use it under ``mask``.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D (n_samples, n_clusters) array, got shape {tuple(probs.shape)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    top, targets = probs.max(dim=1)
    return top > confidence, targets.long()


def balanced_class_weights(targets, n_clusters: int) -> torch.Tensor:
    """Cross-entropy weights inversely proportional to each cluster's share of ``targets``.

    ``w_c = n / (m · count_c)`` for the m clusters present among the n targets, 0 for absent clusters, so a
    batch drawn with the same frequencies has mean weight 1 and every present cluster contributes equally:
    large clusters cannot swallow small ones during self-labeling. Returns float32 (n_clusters,).
    """
    targets = torch.as_tensor(targets).long()
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= n_clusters):
        raise ValueError(f"targets must lie in 0..{n_clusters - 1}")
    counts = torch.bincount(targets, minlength=n_clusters).float()
    present = counts > 0
    weights = torch.zeros(n_clusters, dtype=torch.float32, device=targets.device)
    if present.any():
        weights[present] = targets.numel() / (present.sum() * counts[present])
    return weights


def self_label_loss(logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy, normalised by the summed weight of the batch's targets."""
    return F.cross_entropy(logits, targets, weight=class_weights)


def augment_features(x: torch.Tensor, noise_std: float, drop_prob: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Feature-space augmentation for rows that were standardised to unit variance per dimension.

    Adds Gaussian noise of ``noise_std`` (i.e. that fraction of each dimension's own spread, since the rows
    are standardised) and zeroes each dimension with probability ``drop_prob`` (inverted-dropout scaling keeps
    the expectation). Image augmentations cannot be applied to cached features; these two perturbations are
    their closest cheap analogue: small moves that stay near the sample and must not change its cluster,
    which is the invariance the consistency and self-labeling losses rely on.
    """
    if noise_std < 0 or not 0.0 <= drop_prob < 1.0:
        raise ValueError(f"need noise_std >= 0 and 0 <= drop_prob < 1, got {noise_std!r}, {drop_prob!r}")
    out = x
    if noise_std > 0:
        out = out + noise_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if drop_prob > 0:
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= drop_prob
        out = out * keep.to(x.dtype) / (1.0 - drop_prob)
    return out


def mix_with_neighbors(x: torch.Tensor, x_neighbor: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + a · (x_neighbor − x)`` with ``a ~ U(0, 1)`` drawn per row: a point between a sample and one of its
    mined neighbours.

    Used as the self-labeling view of a confident sample when no cached image augmentations exist: SCAN's
    premise is that a sample and its nearest neighbours share a class, so the segment between them is a
    plausible, data-driven variation of the sample (unlike isotropic noise, it follows the feature manifold)
    and extends each confident pseudo-label a little towards the cluster's less confident border.
    """
    if x.shape != x_neighbor.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_neighbor {tuple(x_neighbor.shape)} must have the same shape")
    a = torch.rand(x.shape[0], 1, generator=generator, device=x.device, dtype=x.dtype)
    return x + a * (x_neighbor - x)
