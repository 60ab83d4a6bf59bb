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

The multi-label variant (CharadesEgo; the authors' ``CharadesEgo/train_encoder.py``,
``dataloader_encoder.py``, ``train_recognizer.py``) replaces every softmax cross-entropy by a
binary cross-entropy on sigmoids:

- encoder: ``BCE_w(source) + BCE(labelled target) + 0.01 * l_A`` where ``BCE_w`` weights each
  source segment by its audio-balanced weight normalised over the batch (``w / sum(w) * B``)
  and ``l_A = mean_b sum_c a_bc * -log(1 - sigmoid_bc + 1e-7) / sum_c (a_bc + 1)`` (the
  code's denominator: the number of absent classes *plus C*);
- a segment's weight is the mean, over its present classes, of its audio-cluster weight in
  each (:func:`multilabel_audio_balanced_weights`);
- recognizer: ``(BCE(source) + BCE(labelled target)) / 2 + 0.1 * (BCE(h_s) + 0.2 * BCE(h'_s))``.
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


# ------------------------------------------------------------------------------ multi-label
def class_frequencies(labels: np.ndarray) -> np.ndarray:
    """alpha_k: the fraction of segments ``(N, C)`` multi-hot that contain class k
    (``get_per_class_frequency.py``: over the labelled source training videos)."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or len(labels) == 0:
        raise ConfigError(f"class frequencies need (N, C) multi-hot labels, got {labels.shape}")
    return (labels > 0).mean(axis=0)


def multilabel_audio_balanced_weights(
    labels: np.ndarray, clusters: np.ndarray, beta: float
) -> tuple[np.ndarray, dict[int, dict[int, float]]]:
    """Per-segment weights for multi-hot ``labels`` ``(N, C)`` and ``clusters`` ``(N, C)`` (the
    segment's audio cluster within each of its present classes, -1 where absent).

    As ``CharadesEgo/dataloader_encoder.py``: class weights by the effective number of each
    class's segments, normalised to sum to the number of classes present; inside class c the
    cluster weights ``w_ck = e(n_ck) / sum_k e(n_ck) * K_c * w_c``; a segment's weight is the
    mean of ``w_{c, k_c}`` over its present classes c. A segment with no class gets 0 (the
    reference reads only videos with actions; its mean over no class would be 0 / 0).
    """
    labels = np.asarray(labels) > 0
    clusters = np.asarray(clusters, dtype=np.int64)
    if labels.shape != clusters.shape or labels.ndim != 2:
        raise ConfigError(
            f"multi-hot labels {labels.shape} and clusters {clusters.shape} must both be (N, C)"
        )
    if np.any(clusters[labels] < 0):
        missing = int(np.sum(clusters[labels] < 0))
        raise ConfigError(f"{missing} (segment, present class) pairs have no audio cluster (-1)")
    class_weights = class_balanced_weights(labels.sum(axis=0), beta)
    table: dict[int, dict[int, float]] = {}
    per_pair = np.zeros(labels.shape, dtype=np.float64)  # w_{c, k} of each (segment, class)
    for class_id in np.flatnonzero(labels.any(axis=0)):
        members = labels[:, class_id]
        ids, counts = np.unique(clusters[members, class_id], return_counts=True)
        raw = effective_number_weights(counts, beta)
        per_cluster = raw / raw.sum() * len(ids) * class_weights[class_id]
        table[int(class_id)] = {int(k): float(w) for k, w in zip(ids, per_cluster, strict=True)}
        lookup = dict(zip(ids.tolist(), per_cluster.tolist(), strict=True))
        per_pair[members, class_id] = [lookup[int(k)] for k in clusters[members, class_id]]
    present = labels.sum(axis=1)
    weights = np.divide(per_pair.sum(axis=1), present, out=np.zeros(len(labels)), where=present > 0)
    return weights, table


def multilabel_balanced_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``BCE-with-logits(logits, labels, weight=w / sum(w) * B)``, the mean over ``B x C``
    (``train_encoder.py``: the weights are normalised over the batch); 0 if all weights are 0."""
    total = weights.sum()
    if not total > 0:
        return logits.sum() * 0.0
    normalised = weights / total * weights.shape[0]
    return F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), weight=normalised[:, None].to(logits.dtype)
    )


def multilabel_absent_loss(logits: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_c a_bc * -log(1 - sigmoid(logits)_bc + 1e-7) / sum_c (a_bc + 1)`` as
    ``CharadesEgo/train_encoder.py`` has it (the denominator is the number of pseudo-absent
    classes plus C)."""
    probabilities = logits.sigmoid()
    absent = absent.to(probabilities.dtype)
    summed = (-torch.log(1.0 - probabilities + ABSENT_EPSILON) * absent).sum(dim=-1)
    return (summed / (absent + 1.0).sum(dim=-1)).mean()


def multilabel_encoder_loss(
    source_logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    target_logits: torch.Tensor,
    absent: torch.Tensor,
    absent_weight: float = 0.01,
    labelled_logits: torch.Tensor | None = None,
    labelled_labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``BCE_w(source) + BCE(labelled target) + absent_weight * l_A`` (the labelled target term
    only when a labelled target batch is given: the semi-supervised CharadesEgo setting)."""
    balanced = multilabel_balanced_loss(source_logits, labels, weights)
    absent_term = multilabel_absent_loss(target_logits, absent)
    loss = balanced + absent_weight * absent_term
    out = {"audio_balanced": balanced, "absent_activity": absent_term}
    if labelled_logits is not None and labelled_labels is not None and len(labelled_logits):
        labelled = F.binary_cross_entropy_with_logits(
            labelled_logits, labelled_labels.to(labelled_logits.dtype)
        )
        loss = loss + labelled
        out["labelled_target"] = labelled
    return {"loss": loss, **out}


def multilabel_recognizer_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_target: torch.Tensor,
    audio_logits: torch.Tensor,
    audio_visual_logits: torch.Tensor,
    *,
    auxiliary_weight: float = 0.1,
    audio_visual_weight: float = 0.2,
    target_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``CharadesEgo/train_recognizer.py``'s loss on one labelled batch whose rows are source
    (``is_target`` False) or labelled target segments: ``(BCE(source) + w BCE(target)) / 2 +
    auxiliary_weight * (BCE(h_s) + audio_visual_weight * BCE(h'_s))``, the auxiliary audio
    terms on the source rows only. The reference draws a source batch and a labelled target
    batch at every step; avda's loop draws one batch of both, so a batch with rows of one kind
    only uses that kind's term alone (not halved)."""
    labels = labels.to(logits.dtype)
    is_target = is_target.bool()
    source, target = ~is_target, is_target
    zero = logits.sum() * 0.0
    source_term = (
        F.binary_cross_entropy_with_logits(logits[source], labels[source]) if source.any() else zero
    )
    target_term = (
        F.binary_cross_entropy_with_logits(logits[target], labels[target]) if target.any() else zero
    )
    if source.any() and target.any():
        classification = (source_term + target_weight * target_term) / 2
    else:
        classification = source_term if source.any() else target_weight * target_term
    if source.any():
        audio = F.binary_cross_entropy_with_logits(audio_logits[source], labels[source])
        B, K, C = audio_visual_logits[source].shape
        per_clip = labels[source][:, None, :].expand(B, K, C)  # (B, C) -> (B, K, C)
        audio_visual = F.binary_cross_entropy_with_logits(audio_visual_logits[source], per_clip)
    else:
        audio = audio_visual = zero
    loss = classification + auxiliary_weight * (audio + audio_visual_weight * audio_visual)
    return {
        "loss": loss,
        "source": source_term,
        "labelled_target": target_term,
        "audio": audio,
        "audio_visual": audio_visual,
    }


__all__ = [
    "absent_activity_loss",
    "audio_balanced_loss",
    "audio_balanced_weights",
    "class_balanced_weights",
    "class_frequencies",
    "effective_number_weights",
    "encoder_loss",
    "multilabel_absent_loss",
    "multilabel_audio_balanced_weights",
    "multilabel_balanced_loss",
    "multilabel_encoder_loss",
    "multilabel_recognizer_loss",
    "recognizer_loss",
]
