"""RNA-Net: Relative Norm Alignment (Planamente, Plizzari, Alberti, Caputo; WACV 2022).

Audio-visual domain generalisation by balancing the mean feature norms of the modalities::

    x_m (B, K, D_m) -mean_K-> Linear(D_m -> 1024) -> ReLU = f_m (B, 1024)   stand-in for F^m
      f_m -> Dropout(0.5) -> Linear(1024 -> C) -> logits_m ;  logits = sum_m logits_m
      L_RNA = mean over pairs (a, b) of (E[||f_b||_2] / E[||f_a||_2] - 1)^2

    auto (default): uda when the run has unlabelled target training segments, else dg
    dg  (multi-source, no target):  L = L_C + lambda L_RNA^s
    uda (unlabelled target):        L = L_C + lambda (L_RNA^s + L_RNA^t)        (supp. eq. 2)
    uda-hybrid (avda's extension, not RNA-Net):
                                    L = L_C + lambda (L_RNA^s + L_RNA^t)
                                        + w_adv sum_m L_d^m + w_im L_IM^t

``L_RNA`` is the ratio of the batch means of the per-sample L2 norms (not a mean of
per-sample ratios), radius 1, on the pre-classifier features of each modality; ``L_RNA^t`` is
the same loss on the features of an unlabelled target batch (supp. sec. 7, Fig. 4), ``L_C``
the cross-entropy on the labelled source batch only. Pairs follow the order rgb, flow, audio,
the later modality in the numerator: audio / rgb is the paper's ``E[h(X^a)] / E[h(X^v)]``,
flow / rgb the authors' EPIC code; with three modalities the three pairs are averaged (our
choice: the papers do not say). ``uda-hybrid`` adds per-modality GRL domain discriminators
(``L_d^m``, DANN's) and information maximisation on the target predictions
(``L_IM = E[H(p)] - H(E[p])``) with weights of our choosing, after the later IJCV 2024 method;
it is not the WACV paper's UDA objective. Values the available texts do not give (lambda,
optimiser, the hybrid's weights) are marked in ``docs/methods.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Literal

import torch
from torch import nn

from avda.errors import ConfigError
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    ClipSampling,
    Head,
    HeadConfig,
    HeadOutput,
    ordered_modalities,
)
from avda.train.layers import feature_embedding, grl_ramp, mlp, reverse_gradient
from avda.train.losses import (
    domain_adversarial_loss,
    information_maximisation,
    relative_norm_alignment,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RnaConfig(ClipSampling, HeadConfig):
    # "dg": L_C + lambda L_RNA^s; "uda": supp. eq. 2, L_C + lambda (L_RNA^s + L_RNA^t);
    # "uda-hybrid": "uda" + DANN discriminators + information maximisation (avda's extension);
    # "auto": "uda" when the run has unlabelled target training segments, else "dg" (made
    # explicit before training and recorded in the run's config)
    setting: Literal["auto", "dg", "uda", "uda-hybrid"] = "auto"
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-7
    lr_steps: tuple[int, ...] = (20,)
    reference_segments: int = 2495  # EPIC-55 D2: the schedule's steps at any data size
    # inputs scaled to an RMS norm of 8 per clip (one number per modality), as dann and
    # mm-sada: the SGD recipe (lr 0.01, momentum 0.9) is scale-sensitive and cached features
    # come at any scale (docs/methods.md, rna); 0: as cached
    feature_scale: float = 8.0
    embedding_dim: int = 1024  # the I3D / BN-Inception feature size RNA acts on
    dropout: float = 0.5  # dropout before the classifiers
    rna_weight: float = 1.0  # lambda
    radius: float = 1.0  # target ratio of the feature norms (RNA's R)
    # setting="uda-hybrid" only (avda's extension, weights not from a paper)
    adversarial_weight: float = 1.0  # uda-hybrid: weight of the domain losses
    discriminator_hidden: int = 100  # uda-hybrid: discriminator hidden units
    grl_weight: float = 0.2  # uda-hybrid: maximum of the GRL ramp
    grl_gamma: float = 10.0  # uda-hybrid: steepness of the GRL ramp
    information_weight: float = 1.0  # uda-hybrid: information maximisation weight

    def uses_target(self) -> bool:
        """The uda settings train on unlabelled target batches; DG never sees the target
        (``auto`` is resolved by :meth:`Rna.resolve_config` before training)."""
        return self.setting not in ("dg", "auto")

    def setting_for(self, has_target: bool) -> str:
        """The setting a run uses: ``auto`` is ``uda`` with unlabelled target data, else ``dg``."""
        if self.setting != "auto":
            return self.setting
        return "uda" if has_target else "dg"


def rna_loss(features: dict[str, torch.Tensor], order: list[str], radius: float) -> torch.Tensor:
    """``L_RNA`` averaged over the modality pairs ``(a, b)``, ``a`` before ``b`` in ``order``."""
    terms = [
        relative_norm_alignment(features[b], features[a], radius)
        for a, b in itertools.combinations(order, 2)
    ]
    return torch.stack(terms).mean()


@register("rna")
class Rna(Head):
    Config = RnaConfig
    target_use = "config"  # the uda settings need the target, dg never sees it

    @classmethod
    def resolve_config(
        cls, config: RnaConfig, store: Any, modalities: list[str], *, target_segments: int = 0
    ) -> RnaConfig:
        """``setting="auto"`` made ``"uda"`` (supp. eq. 2) when the run has unlabelled target
        training segments, else ``"dg"``; the loop records the result in the run's config."""
        if config.setting != "auto":
            return config
        setting = config.setting_for(target_segments > 0)
        log.info(
            "rna: setting=auto is %r (%d unlabelled target training segments); pass --set "
            "setting=dg to leave the target unseen",
            setting,
            target_segments,
        )
        return dataclasses.replace(config, setting=setting)

    def __init__(self, config: RnaConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.modalities = ordered_modalities(inputs)
        if len(self.modalities) < 2:
            raise ConfigError(
                f"rna needs at least two modalities (it aligns the ratio of their feature "
                f"norms), got {self.modalities}; select more with --set modalities=[rgb,audio]"
            )
        dim = config.embedding_dim
        self.embeddings = nn.ModuleDict(
            {m: feature_embedding(inputs[m][1], dim) for m in self.modalities}
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifiers = nn.ModuleDict(
            {
                m: nn.ModuleDict({t.name: nn.Linear(dim, t.num_classes) for t in tasks})
                for m in self.modalities
            }
        )
        if config.setting == "uda-hybrid":
            self.discriminators = nn.ModuleDict(
                {
                    m: mlp([dim, config.discriminator_hidden, 2], dropout=config.dropout)
                    for m in self.modalities
                }
            )

    def encode(self, inputs: Batch) -> dict[str, torch.Tensor]:
        """Per-modality pre-classifier features ``f_m`` (B, 1024), the ones ``L_RNA`` acts on."""
        return {m: self.embeddings[m](inputs[m].mean(dim=1)) for m in self.modalities}

    def forward(self, inputs: Batch) -> HeadOutput:
        features = self.encode(inputs)
        logits = {
            t.name: torch.stack(
                [self.classifiers[m][t.name](self.dropout(features[m])) for m in self.modalities]
            ).sum(0)
            for t in self.tasks
        }
        embedding = torch.cat([features[m] for m in self.modalities], dim=1)
        return HeadOutput(logits=logits, features=embedding, extras={"modality": features})

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ) -> dict[str, torch.Tensor]:
        config = self.config
        source_out = self(source)
        classification = self.classification(source_out, source_labels)
        alignment = rna_loss(source_out.extras["modality"], self.modalities, config.radius)
        # resolved before a run (resolve_config); a head used directly decides here
        setting = config.setting_for(target is not None)
        if setting == "dg":
            loss = classification + config.rna_weight * alignment
            return {"loss": loss, "classification": classification, "rna": alignment}
        if target is None:
            raise ConfigError(
                f"rna with setting={config.setting!r} needs unlabelled target batches"
            )
        if setting == "uda":  # supp. eq. 2: L_C + lambda (L_RNA^s + L_RNA^t)
            target_alignment = rna_loss(self.encode(target), self.modalities, config.radius)
            loss = classification + config.rna_weight * (alignment + target_alignment)
            return {
                "loss": loss,
                "classification": classification,
                "rna": alignment,
                "rna_target": target_alignment,
            }
        return self.hybrid_step(source_out, classification, alignment, target, progress)

    def hybrid_step(
        self,
        source_out: HeadOutput,
        classification: torch.Tensor,
        alignment: torch.Tensor,
        target: Batch,
        progress: float,
    ) -> dict[str, torch.Tensor]:
        """``setting="uda-hybrid"``: eq. 2 plus DANN discriminators and information
        maximisation on the target (avda's extension after the IJCV 2024 method)."""
        config = self.config
        target_out = self(target)
        target_alignment = rna_loss(target_out.extras["modality"], self.modalities, config.radius)
        scale = config.grl_weight * grl_ramp(progress, config.grl_gamma)
        adversarial = sum(
            domain_adversarial_loss(
                self.discriminators[m](reverse_gradient(source_out.extras["modality"][m], scale)),
                self.discriminators[m](reverse_gradient(target_out.extras["modality"][m], scale)),
            )
            for m in self.modalities
        )
        information = torch.stack(
            [information_maximisation(target_out.logits[t.name], t.multi_label) for t in self.tasks]
        ).mean()
        loss = (
            classification
            + config.rna_weight * (alignment + target_alignment)
            + config.adversarial_weight * adversarial
            + config.information_weight * information
        )
        return {
            "loss": loss,
            "classification": classification,
            "rna": alignment,
            "rna_target": target_alignment,
            "adversarial": adversarial,
            "information": information,
            "grl_lambda": torch.tensor(scale),
        }


__all__ = ["Rna", "RnaConfig", "rna_loss"]
