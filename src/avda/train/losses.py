"""Losses shared by several heads, named as in the papers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def domain_adversarial_loss(
    source_logits: torch.Tensor, target_logits: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of a domain classifier: source = 0, target = 1 (DANN, eq. 9 of Ganin et al.).

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
