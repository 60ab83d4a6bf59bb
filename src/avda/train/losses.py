"""Losses shared by several heads, named as in the papers."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from avda.errors import ConfigError
from avda.train.data import Task


def classification_loss(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], tasks: list[Task]
) -> torch.Tensor:
    """Mean over tasks of cross-entropy (single-label) or binary cross-entropy (multi-label)."""
    total = []
    for task in tasks:
        if task.multi_label:
            total.append(F.binary_cross_entropy_with_logits(logits[task.name], labels[task.name]))
        else:
            total.append(F.cross_entropy(logits[task.name], labels[task.name]))
    return torch.stack(total).mean()


def stream_loss(
    streams: Iterable[dict[str, torch.Tensor]], labels: dict[str, torch.Tensor], tasks: list[Task]
) -> torch.Tensor:
    """Mean over late-fusion streams (modalities) of each stream's own
    :func:`classification_loss` (adabn's and mm-sada's ``stream_weight`` term)."""
    return torch.stack([classification_loss(s, labels, tasks) for s in streams]).mean()


def domain_adversarial_loss(
    source_logits: torch.Tensor, target_logits: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of a domain classifier: source = 0, target = 1 (DANN, Ganin et al.).

    Logits of any leading shape ``(..., 2)`` are flattened, so frame- and video-level
    discriminators share this loss.
    """
    source = source_logits.reshape(-1, 2)
    target = target_logits.reshape(-1, 2)
    logits = torch.cat([source, target])
    labels = torch.cat(
        [
            torch.zeros(len(source), dtype=torch.long, device=logits.device),
            torch.ones(len(target), dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits, labels)


def entropy(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Per-sample entropy (natural log) of the predicted distribution, shape ``(B,)``.

    Single-label: ``H(softmax(z)) = -sum_c p_c log p_c``. Multi-label: the sum over classes of
    the binary entropies of ``sigmoid(z_c)`` (each class an independent Bernoulli).
    """
    if multi_label:
        probs = logits.sigmoid()
        binary = -(probs * F.logsigmoid(logits) + (1 - probs) * F.logsigmoid(-logits))
        return binary.sum(dim=1)
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def domain_attention(domain_logits: torch.Tensor) -> torch.Tensor:
    """TA3N's transferable attention ``w = 1 - H(softmax(d))`` per row of ``(..., 2)`` logits.

    ``H`` uses the natural log, so ``w`` lies in ``[1 - ln 2, 1]``: features the domain
    discriminator separates confidently get more weight. TA3N applies ``(1 + w) * feature``.
    """
    flat = domain_logits.reshape(-1, 2)
    return (1.0 - entropy(flat)).reshape(domain_logits.shape[:-1])


def attentive_entropy(
    logits: torch.Tensor, domain_logits: torch.Tensor, multi_label: bool = False
) -> torch.Tensor:
    """TA3N's attentive entropy (Chen et al. 2019): ``mean_j (1 + H(d_j)) H(y_j)``.

    ``logits`` ``(B, C)`` are class predictions and ``domain_logits`` ``(B, 2)`` the video-level
    discriminator's, for the same (source and target) samples. Nothing is detached, as in the
    authors' ``loss.attentive_entropy``.
    """
    weights = 1.0 + entropy(domain_logits)
    return (weights * entropy(logits, multi_label)).mean()


def gaussian_bandwidth_exponents(
    lowest: float = -8.0, highest: float = 8.0, step: float = 0.5
) -> tuple[float, ...]:
    """Base-2 exponents of DAN's kernels: ``2^-8 gamma .. 2^8 gamma`` in steps of ``2^0.5``."""
    if step <= 0 or highest < lowest:
        raise ConfigError(
            f"MMD bandwidth exponents need step > 0 and highest >= lowest, got lowest={lowest}, "
            f"highest={highest}, step={step}"
        )
    count = int(round((highest - lowest) / step)) + 1
    return tuple(lowest + step * i for i in range(count))


def multi_kernel_mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    exponents: tuple[float, ...],
    bandwidth: float | None = None,
) -> torch.Tensor:
    """Squared multi-kernel MMD between two samples (DAN, Long et al. 2015).

    ``k(x, y) = mean_u exp(-||x - y||^2 / (2^e_u gamma))`` with ``gamma`` the mean squared
    distance between distinct points of the joint batch (detached, DAN's bandwidth heuristic)
    and equal kernel weights ``beta_u = 1 / m``; ``bandwidth`` > 0 fixes ``gamma`` instead
    (MM-SADA's MMD baseline: 9.7). The biased quadratic-time estimate
    ``mean K_ss + mean K_tt - 2 mean K_st`` is returned (>= 0 for a characteristic kernel).
    """
    joint = torch.cat([source, target])
    squared = joint.pow(2).sum(dim=1)
    # (n+m, n+m) squared Euclidean distances; the expanded form has a gradient at zero distance.
    distances = (squared[:, None] + squared[None, :] - 2 * joint @ joint.T).clamp_min(0.0)
    count = len(joint)
    if bandwidth:
        gamma = torch.tensor(float(bandwidth), dtype=distances.dtype, device=distances.device)
    else:
        gamma = distances.detach().sum() / max(count * count - count, 1)
        gamma = gamma.clamp_min(1e-12)
    kernel = sum(torch.exp(-distances / (gamma * 2.0**e)) for e in exponents) / len(exponents)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def relative_norm_alignment(
    features_a: torch.Tensor, features_b: torch.Tensor, radius: float = 1.0
) -> torch.Tensor:
    """RNA (Planamente et al. 2022): ``(E[||f_a||_2] / E[||f_b||_2] - radius)^2``.

    The ratio of the batch means of the per-sample L2 norms, not the mean of per-sample ratios.
    """
    ratio = features_a.norm(p=2, dim=1).mean() / features_b.norm(p=2, dim=1).mean()
    return (ratio - radius) ** 2


def information_maximisation(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Information maximisation on unlabelled data: ``E[H(p)] - H(E[p])``.

    Confident (low entropy) per-sample predictions that are diverse over the batch (high
    entropy of the mean prediction). For multi-label tasks each class is a Bernoulli.
    """
    if multi_label:
        mean = logits.sigmoid().mean(dim=0).clamp(1e-6, 1 - 1e-6)
        diversity = -(mean * mean.log() + (1 - mean) * (1 - mean).log()).sum()
    else:
        mean = logits.softmax(dim=1).mean(dim=0)
        diversity = -(mean * mean.clamp_min(1e-12).log()).sum()
    return entropy(logits, multi_label).mean() - diversity


def correspondence_loss(logits: torch.Tensor, corresponds: torch.Tensor) -> torch.Tensor:
    """MM-SADA's self-supervised correspondence loss ``L_c`` (Munro & Damen 2020, eq. 3).

    Cross-entropy of a binary classifier told whether the modalities of a sample come from
    the same segment (label 1) or from different segments (label 0).
    """
    return F.cross_entropy(logits, corresponds.long())


def domain_confusion_loss(domain_logits: torch.Tensor) -> torch.Tensor:
    """Domain confusion (Tzeng et al., ICCV 2015): cross-entropy to the uniform distribution.

    ``-mean_i sum_d (1/2) log q_d(x_i)`` over logits ``(..., 2)``: minimal when the
    discriminator cannot tell the domains apart. Unlike the reversed (minimax) cross-entropy,
    its gradient does not vanish when the discriminator is confident (ADDA, Tzeng et al. 2017,
    sec. 3.2), so it keeps aligning strongly shifted domains.
    """
    return -domain_logits.reshape(-1, 2).log_softmax(dim=1).mean(dim=1).mean()
