"""MM-SADA: Multi-Modal Self-Supervised Adversarial Domain Adaptation (Munro & Damen, CVPR 2020).

The heads of the authors' TF code (``jonmun/MM-SADA-code``, ``src/models/model.py``) on cached
per-modality clip features (I3D: 5 clips x 1024 per modality)::

    training: one random clip per modality and segment (RGB and Flow positions independent)
    x_m (B, D_m) -> Linear(D_m -> 1024) -> ReLU = f_m (B, 1024)    stand-in for the I3D top
      f_m -> Dropout(0.5) -> Linear(1024 -> C) -> logits_m ;  logits = sum_m logits_m    (eq. 1)
      f_m --GRL(lambda)--> Linear(1024 -> 100) -> ReLU -> Linear(100 -> 2)   D^m       (eq. 2)
      [f_1 ; f_2 ; ...] -> Linear(M*1024 -> 100) -> ReLU -> Linear(100 -> 2)  C        (eq. 3)
    test: all K clips, softmax of the fused logits averaged over the clips (5-clip test);
          a modality with one clip (a segment-long audio window) is added to every clip's
          logits, other clip counts are aligned by position in the segment

    per domain batch: first half corresponding (label 1); second half with the non-first
    modalities rotated by one segment within the half (label 0, same domain)
    stage 1 (pretrain_epochs):  L = 1.0 L_y + 5.0 L_c                              lr 0.01
    stage 2 (the rest):         L = 0.2 L_y + 1.0 sum_m L_d^m + 1.0 L_c            lr 0.001
    L_y on corresponding source samples only; L_c on source and target; lambda =
    0.2 * (2 / (1 + exp(-10 p2)) - 1), p2 the progress within stage 2          (eq. 4)
    L_y += stream_weight * mean_m L_y(logits_m), stream_weight = 1   (avda's; 0: the code's)

The weights are the code's (the paper states the 1:5 ratio as lambda_c = 5): stage 1 trains
classification and self-supervision on source and target, stage 2 restarts the GRL ramp and
adds the discriminators, which stay untouched during stage 1 (no gradient reaches them), so
they start stage 2 freshly initialised as in the code. Optimiser: momentum SGD (0.9), weight
decay 1e-7, batch 64 source + 64 target. The paper reports the mean target top-1 over the
last 9 checkpoints: ``keep_last_predictions = 9`` writes each of the last 9 epochs'
predictions and :func:`avda.evaluate.checkpoints.checkpoint_accuracy` averages them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from avda.errors import ConfigError
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    Head,
    HeadConfig,
    HeadOutput,
    align_clips,
    ordered_modalities,
)
from avda.train.layers import feature_embedding, grl_ramp, reverse_gradient, set_norm_domain
from avda.train.losses import (
    classification_loss,
    correspondence_loss,
    domain_adversarial_loss,
    stream_loss,
)

log = logging.getLogger(__name__)

# The code's 3000 + 6000 steps of 64 source clips, in epochs of each EPIC-55 source domain
# (D1: 1543, D2: 2495, D3: 3897 training segments -> 25, 39, 61 steps per epoch).
PRESETS = {
    "D1": {"pretrain_epochs": 120, "epochs": 360, "lr_steps": [120], "reference_segments": 1543},
    "D2": {"pretrain_epochs": 77, "epochs": 231, "lr_steps": [77], "reference_segments": 2495},
    "D3": {"pretrain_epochs": 49, "epochs": 147, "lr_steps": [49], "reference_segments": 3897},
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MmSadaConfig(HeadConfig):
    preset: Literal["D1", "D2", "D3"] | None = None  # source domain: sets the epochs below
    # optimisation (src/train/train.py and the README's corrections of the paper)
    epochs: int = 231  # D2 source; see PRESETS
    pretrain_epochs: int = 77  # stage 1 (3000 steps on D2)
    reference_segments: int = 2495  # D2: the schedule is 9000 steps at any data size
    batch_size: int = 64
    target_batch_size: int = 64
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.01  # stage 1; stage 2 is lr * lr_gamma = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-7
    lr_steps: tuple[int, ...] = (77,)
    lr_gamma: float = 0.1
    keep_last_predictions: int = 9
    # Inputs scaled to an RMS norm of 8 per clip (one number per modality, signs kept): the
    # code's SGD lr 0.01 with momentum 0.9 diverges on cached features of larger norm (1024-d
    # features of norm ~30: every unit dead in epoch 1); see docs/methods.md. 0: as cached.
    feature_scale: float = 8.0
    # The stand-in for I3D's top is Linear -> BatchNorm -> ReLU, the BatchNorm normalising each
    # domain with its own statistics, as the authors' towers (one per domain) do in training;
    # evaluation uses the evaluated domain's running averages (docs/methods.md). False:
    # Linear -> ReLU.
    domain_norm: bool = True
    # architecture
    embedding_dim: int = 1024  # the I3D feature size the heads act on
    dropout: float = 0.5  # dropout before the classifiers
    discriminator_hidden: int = 100  # hidden units of the domain discriminators
    correspondence_hidden: int = 100  # hidden units of the correspondence classifier
    init_std: float = 0.1  # truncated normal (2 sigma) of the discriminator/correspondence layers
    # losses
    grl_weight: float = 0.2  # lambda_in
    grl_gamma: float = 10.0  # steepness of the ramp 2 / (1 + exp(-gamma p)) - 1
    pretrain_classification_weight: float = 1.0  # stage 1: weight of classification
    pretrain_correspondence_weight: float = 5.0  # stage 1: weight of correspondence
    classification_weight: float = 0.2  # stage 2: weight of classification
    correspondence_weight: float = 1.0  # stage 2: weight of correspondence
    adversarial_weight: float = 1.0  # stage 2: weight of the domain losses
    # each modality's own classification loss (mean over modalities, on the same corresponding
    # source samples), added to the fused one at this fraction of the stage's classification
    # weight (as adabn's); 0: the fused loss alone, as the authors' code (docs/methods.md,
    # mm-sada: measured on six shift families)
    stream_weight: float = 1.0

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    # runs recorded before these options existed were trained without them
    introduced: ClassVar[Mapping[str, Any]] = {"domain_norm": False, "stream_weight": 0.0}
    stage_fields: ClassVar[tuple[str, ...]] = ("pretrain_epochs", "lr_steps")


def _truncated(layer: nn.Linear, std: float) -> nn.Linear:
    nn.init.trunc_normal_(layer.weight, 0.0, std, -2 * std, 2 * std)
    nn.init.zeros_(layer.bias)
    return layer


def _two_layer(fan_in: int, hidden: int, std: float) -> nn.Sequential:
    return nn.Sequential(
        _truncated(nn.Linear(fan_in, hidden), std), nn.ReLU(), _truncated(nn.Linear(hidden, 2), std)
    )


def correspondence_pairs(features: dict[str, torch.Tensor], order: list[str]):
    """MM-SADA's within-domain sampling: ``(pairs, labels)`` for a batch of one domain.

    The first ``B - B // 2`` samples keep their modalities together (label 1); in the last
    ``B // 2`` the modalities after ``order[0]`` are rotated by one sample within that half, so
    they come from another segment of the same domain (label 0). A negative half of one sample
    takes them from sample 0.
    """
    B = next(iter(features.values())).shape[0]
    negatives = B // 2
    positives = B - negatives
    index = torch.arange(B, device=next(iter(features.values())).device)
    if negatives >= 2:
        index[positives:] = torch.roll(index[positives:], shifts=-1)
    elif negatives == 1:
        index[positives:] = 0
    parts = [features[order[0]]] + [features[m][index] for m in order[1:]]
    labels = torch.cat(
        [
            torch.ones(positives, dtype=torch.long, device=index.device),
            torch.zeros(negatives, dtype=torch.long, device=index.device),
        ]
    )
    return torch.cat(parts, dim=1), labels


@register("mm-sada")
class MmSada(Head):
    Config = MmSadaConfig
    target_use = "always"

    def __init__(self, config: MmSadaConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.modalities = ordered_modalities(inputs)
        if len(self.modalities) < 2:
            raise ConfigError(
                f"mm-sada needs at least two modalities (its self-supervision tells whether they "
                f"correspond), got {self.modalities}; select more with --set "
                "modalities=[rgb,flow], or use dann with discriminator=per-modality"
            )
        if config.epochs < 2:
            raise ConfigError(
                f"mm-sada trains in two stages (stage 1, then the adversarial stage 2): it needs "
                f"--epochs 2 or more, got {config.epochs}"
            )
        if not 0 < config.pretrain_epochs < config.epochs:
            raise ConfigError(
                f"mm-sada: pretrain_epochs ({config.pretrain_epochs}) must be between 0 and "
                f"epochs ({config.epochs}): stage 1 is followed by the adversarial stage 2"
            )
        if config.pretrain_epochs not in config.lr_steps:
            log.warning(
                "mm-sada: lr_steps %s do not include pretrain_epochs=%d; the authors lower the "
                "lr 10x when stage 2 starts",
                list(config.lr_steps),
                config.pretrain_epochs,
            )
        dim, std = config.embedding_dim, config.init_std
        self.embeddings = nn.ModuleDict(
            {m: feature_embedding(inputs[m][1], dim, config.domain_norm) for m in self.modalities}
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifiers = nn.ModuleDict(
            {
                m: nn.ModuleDict({t.name: nn.Linear(dim, t.num_classes) for t in tasks})
                for m in self.modalities
            }
        )
        self.discriminators = nn.ModuleDict(
            {m: _two_layer(dim, config.discriminator_hidden, std) for m in self.modalities}
        )
        self.correspondence = _two_layer(
            dim * len(self.modalities), config.correspondence_hidden, std
        )

    def embed(self, inputs: Batch, domain: str | None = None) -> dict[str, torch.Tensor]:
        """``(B, D_m)`` features: one random clip per modality in training, else ``(B, K, D_m)``;
        ``domain`` selects the statistics of ``domain_norm`` (None: as set)."""
        if domain is not None:
            set_norm_domain(self, domain)
        if not self.training:
            return {m: self.embeddings[m](inputs[m]) for m in self.modalities}
        chosen = {}
        for m in self.modalities:
            x = inputs[m]  # (B, K, D)
            clip = torch.randint(0, x.shape[1], (x.shape[0],), device=x.device)
            chosen[m] = self.embeddings[m](x[torch.arange(x.shape[0], device=x.device), clip])
        return chosen

    def modality_logits(
        self, features: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Each modality's logits per task (dropout applied once per modality)."""
        dropped = {m: self.dropout(features[m]) for m in self.modalities}
        return {
            m: {t.name: self.classifiers[m][t.name](dropped[m]) for t in self.tasks}
            for m in self.modalities
        }

    def fused_logits(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum of the modalities' logits: ``(B, C)`` from ``(B, D)`` training clips, ``(B, K, C)``
        per test clip from ``(B, K_m, D)``, every modality aligned to the largest ``K`` first
        (:func:`align_clips`: a segment-long audio window is broadcast to every visual clip).
        """
        return self._fuse(self.modality_logits(features))

    def _fuse(self, per_modality: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        fused = {}
        for t in self.tasks:
            logits = [per_modality[m][t.name] for m in self.modalities]
            if logits[0].dim() == 3:  # (B, K_m, C): test clips, K may differ by modality
                count = max(x.shape[1] for x in logits)
                logits = [align_clips(x, count) for x in logits]
            fused[t.name] = torch.stack(logits).sum(0)
        return fused

    def forward(self, inputs: Batch) -> HeadOutput:
        features = self.embed(inputs)
        logits = self.fused_logits(features)
        if not self.training:  # (B, K, C): average the clips' probabilities (5-clip test)
            logits = {
                t.name: _mean_probability_logits(logits[t.name], t.multi_label) for t in self.tasks
            }
            features = {m: f.mean(dim=1) for m, f in features.items()}
        embedding = torch.cat([features[m] for m in self.modalities], dim=1)
        return HeadOutput(logits=logits, features=embedding, extras={"modality": features})

    def stage(self, progress: float) -> tuple[int, float]:
        """(1 or 2, progress within stage 2) at overall training progress ``p``."""
        split = self.config.pretrain_epochs / self.config.epochs
        if progress < split:
            return 1, 0.0
        return 2, (progress - split) / (1.0 - split)

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        config = self.config
        stage, stage_progress = self.stage(progress)
        source_features = self.embed(source, "source")
        target_features = self.embed(target, "target")
        pairs = [
            correspondence_pairs(f, self.modalities) for f in (source_features, target_features)
        ]
        joint = torch.cat([p[0] for p in pairs])
        corresponds = torch.cat([p[1] for p in pairs])
        correspondence = correspondence_loss(self.correspondence(joint), corresponds)
        keep = pairs[0][1].bool()  # classify corresponding source samples only
        kept = {m: f[keep] for m, f in source_features.items()}
        per_modality = self.modality_logits(kept)
        logits = self._fuse(per_modality)
        labels = {t: y[keep] for t, y in source_labels.items()}
        classification = classification_loss(logits, labels, self.tasks)
        parts = {"classification": classification}
        if config.stream_weight:
            streams = stream_loss(per_modality.values(), labels, self.tasks)
            parts["streams"] = streams
            classification = classification + config.stream_weight * streams
        if stage == 1:
            loss = (
                config.pretrain_classification_weight * classification
                + config.pretrain_correspondence_weight * correspondence
            )
            return {
                "loss": loss,
                **parts,
                "correspondence": correspondence,
                "stage": torch.tensor(1.0),
            }
        scale = config.grl_weight * grl_ramp(stage_progress, config.grl_gamma)
        adversarial = sum(
            domain_adversarial_loss(
                self.discriminators[m](reverse_gradient(source_features[m], scale)),
                self.discriminators[m](reverse_gradient(target_features[m], scale)),
            )
            for m in self.modalities
        )
        loss = (
            config.classification_weight * classification
            + config.adversarial_weight * adversarial
            + config.correspondence_weight * correspondence
        )
        return {
            "loss": loss,
            **parts,
            "correspondence": correspondence,
            "adversarial": adversarial,
            "grl_lambda": torch.tensor(scale),
            "stage": torch.tensor(2.0),
        }


def _mean_probability_logits(clip_logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Logits whose softmax (sigmoid) is the mean over clips of the clips' softmax (sigmoid)."""
    if multi_label:
        mean = clip_logits.sigmoid().mean(dim=1).clamp(1e-7, 1 - 1e-7)
        return torch.log(mean) - torch.log1p(-mean)
    return torch.logsumexp(clip_logits.log_softmax(dim=-1), dim=1) - np.log(clip_logits.shape[1])


__all__ = ["MmSada", "MmSadaConfig", "correspondence_pairs"]
