"""DANN: domain-adversarial training with a gradient reversal layer (Ganin & Lempitsky 2015).

::

    source, target features -> FusionClassifier -> h (B, F) --> classifiers -> L_y (source only)
                                                   |
                                                   +-> GRL(lambda_p) -> D: F->hidden->2 -> L_d

    L = L_y + L_d, and the GRL multiplies the gradient reaching h by -lambda_p, with
    lambda_p = weight * (2 / (1 + exp(-gamma p)) - 1), p the training progress (eq. 14).

``discriminator="joint"`` puts one discriminator on the fused embedding; "per-modality" one
per modality (late fusion only), the adversarial losses averaged.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from avda.errors import ConfigError
from avda.train.heads import register
from avda.train.heads._base import Batch, FusionClassifier, FusionConfig, Head, HeadOutput
from avda.train.layers import grl_ramp, mlp, reverse_gradient
from avda.train.losses import domain_adversarial_loss


@dataclasses.dataclass(frozen=True, kw_only=True)
class DannConfig(FusionConfig):
    discriminator: Literal["joint", "per-modality"] = "joint"
    discriminator_hidden: int = 100
    discriminator_dropout: float = 0.5
    grl_weight: float = 1.0
    grl_gamma: float = 10.0
    adversarial_weight: float = 1.0


@register("dann")
class Dann(Head):
    Config = DannConfig
    uses_target = True

    def __init__(self, config: DannConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.net = FusionClassifier(inputs, tasks, config)
        if config.discriminator == "per-modality":
            if config.fusion != "late":
                raise ConfigError("dann: discriminator=per-modality needs fusion=late")
            size = config.hidden_dim
            names = sorted(inputs)
        else:
            size = self.net.embedding_dim
            names = ["joint"]
        self.discriminators = nn.ModuleDict(
            {
                n: mlp([size, config.discriminator_hidden, 2], dropout=config.discriminator_dropout)
                for n in names
            }
        )

    def forward(self, inputs: Batch) -> HeadOutput:
        return self.net(inputs)

    def domain_logits(self, output: HeadOutput, scale: float) -> dict[str, torch.Tensor]:
        if "joint" in self.discriminators:
            return {"joint": self.discriminators["joint"](reverse_gradient(output.features, scale))}
        hidden = output.extras["hidden"]
        return {m: d(reverse_gradient(hidden[m], scale)) for m, d in self.discriminators.items()}

    def training_step(self, source: Batch, source_labels: Batch, target: Batch | None, progress: float):
        config = self.config
        scale = config.grl_weight * grl_ramp(progress, config.grl_gamma)
        source_out, target_out = self(source), self(target)
        classification = self.classification(source_out, source_labels)
        source_domain = self.domain_logits(source_out, scale)
        target_domain = self.domain_logits(target_out, scale)
        adversarial = torch.stack(
            [domain_adversarial_loss(source_domain[k], target_domain[k]) for k in source_domain]
        ).mean()
        loss = classification + config.adversarial_weight * adversarial
        return {
            "loss": loss,
            "classification": classification,
            "adversarial": adversarial,
            "grl_lambda": torch.tensor(scale),
        }
