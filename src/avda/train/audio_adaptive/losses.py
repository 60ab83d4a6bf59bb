"""Audio-Adaptive losses and loss weights (Zhang et al., CVPR 2022), as the authors' code has them.

- Eq. (1) absent-activity loss ``l_A = -sum_{q in Q} log(1 - p_q)`` on target segments, with
  ``1e-7`` inside the log and the batch mean (``train_audio_adaptive_encoder.py``).
- Eq. (2)-(3) class-balanced and audio-balanced weights from the effective number of samples
  ``(1 - beta) / (1 - beta^n)`` (Cui et al. 2019), normalised as in
  ``dataloader_audio_adaptive_encoder.py``: class weights sum to the number of classes, and
  inside class c the cluster weights are ``w_ck = e(n_ck) / sum_k e(n_ck) * K_c * w_c`` with
  ``K_c`` the number of clusters of c.
- Eq. (4) encoder loss ``mean_b w_b CE_b + 0.01 * mean_b l_A``.
- Eq. (8) recognizer loss as the code has it:
  ``(CE(p_s, y) + CE(p_t, y_pseudo)) / 2 + 0.1 * (CE(h_s, y) + 0.2 * CE(h'_s, y))`` where the
  audio (h) and audio-visual (h', one per clip) terms use source segments only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avda.errors import ConfigError

ABSENT_EPSILON = 1e-7


def effective_number_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """``(1 - beta) / (1 - beta ** n)`` per count (Cui et al. 2019, eq. 2); 0 where ``n = 0``."""
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"beta must be in [0, 1), got {beta}")
    counts = np.asarray(counts, dtype=np.float64)
    out = np.zeros_like(counts)
    present = counts > 0
    out[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    return out


def class_balanced_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """Effective-number class weights normalised to sum to the number of classes present.

    The reference normalises to sum 8 (all EPIC classes have source samples); a class without
    source samples gets weight 0 here instead of the reference's division by zero.
    """
    raw = effective_number_weights(counts, beta)
    present = int(np.sum(np.asarray(counts) > 0))
    if present == 0:
        raise ConfigError("class-balanced weights need at least one class with samples")
    return raw / raw.sum() * present


def audio_balanced_weights(
    labels: np.ndarray, clusters: np.ndarray, num_classes: int, beta: float
) -> tuple[np.ndarray, dict[int, dict[int, float]]]:
    """Per-sample weights of eq. (3) and the table ``{class: {cluster: weight}}``.

    ``labels`` and ``clusters`` (per-class cluster ids, >= 0) are per source segment.
    """
    labels = np.asarray(labels, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    if labels.shape != clusters.shape:
        raise ConfigError(
            f"labels {labels.shape} and clusters {clusters.shape} must have one entry per segment"
        )
    if len(clusters) and clusters.min() < 0:
        missing = int(np.sum(clusters < 0))
        raise ConfigError(
            f"{missing} source segments have no audio cluster (-1); re-run the clustering "
            "(`avda cluster`) on the same source domains"
        )
    class_counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    class_weights = class_balanced_weights(class_counts, beta)
    table: dict[int, dict[int, float]] = {}
    weights = np.zeros(len(labels), dtype=np.float64)
    for class_id in np.flatnonzero(class_counts):
        members = labels == class_id
        ids, counts = np.unique(clusters[members], return_counts=True)
        raw = effective_number_weights(counts, beta)
        per_cluster = raw / raw.sum() * len(ids) * class_weights[class_id]
        table[int(class_id)] = {int(k): float(w) for k, w in zip(ids, per_cluster, strict=True)}
        lookup = dict(zip(ids.tolist(), per_cluster.tolist(), strict=True))
        weights[members] = [lookup[int(k)] for k in clusters[members]]
    return weights, table


def audio_balanced_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Eq. (3): ``mean_b w_b * CE(logits_b, y_b)``."""
    return (F.cross_entropy(logits, labels, reduction="none") * weights).mean()


def absent_activity_loss(logits: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """Eq. (1): ``mean_b sum_c a_bc * -log(1 - softmax(logits)_bc + 1e-7)``; ``absent``: multi-hot
    ``(B, C)`` pseudo-absent classes."""
    probabilities = logits.softmax(dim=-1)
    return (-(absent * torch.log(1.0 - probabilities + ABSENT_EPSILON)).sum(dim=-1)).mean()


def encoder_loss(
    source_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    target_logits: torch.Tensor,
    absent: torch.Tensor,
    absent_weight: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Eq. (4) as in the code: audio-balanced CE on source + ``absent_weight`` x l_A on target."""
    balanced = audio_balanced_loss(source_logits, labels, weights)
    absent_term = absent_activity_loss(target_logits, absent)
    return {
        "loss": balanced + absent_weight * absent_term,
        "audio_balanced": balanced,
        "absent_activity": absent_term,
    }


def recognizer_loss(
    source_logits: torch.Tensor,
    labels: torch.Tensor,
    target_logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    audio_logits: torch.Tensor,
    audio_visual_logits: torch.Tensor,
    *,
    auxiliary_weight: float = 0.1,
    audio_visual_weight: float = 0.2,
    target_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Eq. (8) as in ``train_recognizer.py``; ``audio_visual_logits`` is ``(B, K, C)``.

    ``target_weight`` scales the pseudo-labelled target term (the reference's 1: ``(CE_s +
    CE_t) / 2``); 0 switches the adaptation on target segments off.
    """
    source = F.cross_entropy(source_logits, labels)
    target = F.cross_entropy(target_logits, pseudo_labels)
    audio = F.cross_entropy(audio_logits, labels)
    B, K, C = audio_visual_logits.shape
    per_clip = labels[:, None].expand(B, K).reshape(B * K)  # (B,) -> (B * K,)
    flat = audio_visual_logits.reshape(B * K, C)  # (B, K, C) -> (B * K, C)
    audio_visual = F.cross_entropy(flat, per_clip)
    loss = (source + target_weight * target) / 2 + auxiliary_weight * (
        audio + audio_visual_weight * audio_visual
    )
    return {
        "loss": loss,
        "source": source,
        "target_pseudo": target,
        "audio": audio,
        "audio_visual": audio_visual,
    }


__all__ = [
    "absent_activity_loss",
    "audio_balanced_loss",
    "audio_balanced_weights",
    "class_balanced_weights",
    "effective_number_weights",
    "encoder_loss",
    "recognizer_loss",
]
