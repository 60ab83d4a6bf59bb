"""DANN: domain-adversarial training with a gradient reversal layer (Ganin et al., JMLR 2016).

::

    source, target features -> FusionClassifier -> h (B, F) --> classifiers -> L_y (source only)
                                                   |
                                                   +-> GRL(lambda_p) -> D: F->100->2 -> L_d

    L = L_y + L_d                                             (the saddle-point objective)
    the GRL multiplies the gradient reaching h by -lambda_p, the discriminator gets the full
    gradient; lambda_p = 0.2 * (2 / (1 + exp(-10 p)) - 1)          (the paper's schedule)
    lr_p = 0.01 / (1 + 10 p)^0.75, momentum SGD (0.9)               (the paper's annealing)

with ``p`` the training progress in [0, 1]. ``discriminator="joint"`` puts one discriminator on
the fused embedding; "per-modality" one per modality (late fusion only), the adversarial
losses averaged.

Defaults and why (measured; ``docs/methods.md``, section ``dann``): the paper's momentum SGD
with per-step lr annealing (Adam rescales every update to the lr, so once the source is fitted
the reversed gradient alone drives the encoder at full speed whatever ``lambda`` is), and the
paper's ``lambda`` = 1.0. The schedule is the recipe's number of optimiser steps at any data
size (``HeadConfig.for_data``). One discriminator per modality (``discriminator=
"per-modality"``, MM-SADA's eq. 2) is the default: on a per-dimension affine shift of RGB and
flow the joint discriminator aligned the concatenated embedding with the target's classes
permuted (target top-1 0.475 against source-only 0.66, mean of 2 seeds; per-modality 0.736).
The earlier default of 0.2 left the adversarial term without
effect (target accuracy equal with ``adversarial_weight=0`` and with the reversal's sign
flipped), at 5x less than the MM-SADA setting it cited, which scales classification by 0.2 too.
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
from avda.train.losses import domain_adversarial_loss, domain_confusion_loss


@dataclasses.dataclass(frozen=True, kw_only=True)
class DannConfig(FusionConfig):
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 0.01  # learning rate mu_0
    momentum: float = 0.9
    lr_schedule: Literal["step", "dann"] = "dann"  # the default: Ganin et al.'s annealing
    # one discriminator per modality (MM-SADA's eq. 2), measured more robust than the joint one
    discriminator: Literal["joint", "per-modality"] = "per-modality"
    discriminator_hidden: int = 100  # hidden units of the domain discriminator
    discriminator_dropout: float = 0.5  # dropout in the domain discriminator
    grl_weight: float = 1.0  # lambda_p's maximum, the paper's (see the module docstring)
    # inputs scaled to an RMS norm of 8 per clip (one number per modality): the paper's SGD
    # 0.01 with momentum is scale-sensitive (docs/methods.md, dann); 0: as cached
    feature_scale: float = 8.0
    grl_gamma: float = 10.0  # steepness of the ramp 2 / (1 + exp(-gamma p)) - 1
    adversarial_weight: float = 1.0  # weight of the domain loss L_d
    # "reversal": DANN's minimax through the GRL; "confusion": the discriminator learns on
    # detached features and the encoder minimises lambda_p * domain confusion (no saturation)
    adversarial_loss: Literal["reversal", "confusion"] = "reversal"


@register("dann")
class Dann(Head):
    Config = DannConfig
    target_use = "always"

    def __init__(self, config: DannConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.net = FusionClassifier(inputs, tasks, config)
        if config.discriminator == "per-modality":
            if config.fusion != "late":
                raise ConfigError(
                    "dann: discriminator=per-modality needs fusion=late; with fusion=mid "
                    "set discriminator=joint (per-modality is the default)"
                )
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

    def domain_features(self, output: HeadOutput) -> dict[str, torch.Tensor]:
        """What each discriminator sees: the fused embedding, or each modality's hidden."""
        if "joint" in self.discriminators:
            return {"joint": output.features}
        return dict(output.extras["hidden"])

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        config = self.config
        scale = config.grl_weight * grl_ramp(progress, config.grl_gamma)
        source_out, target_out = self(source), self(target)
        classification = self.classification(source_out, source_labels)
        source_features = self.domain_features(source_out)
        target_features = self.domain_features(target_out)
        parts = {}
        if config.adversarial_loss == "reversal":
            adversarial = torch.stack(
                [
                    domain_adversarial_loss(
                        self.discriminators[k](reverse_gradient(source_features[k], scale)),
                        self.discriminators[k](reverse_gradient(target_features[k], scale)),
                    )
                    for k in self.discriminators
                ]
            ).mean()
        else:
            discrimination, confusion = [], []
            for k, discriminator in self.discriminators.items():
                discrimination.append(
                    domain_adversarial_loss(
                        discriminator(source_features[k].detach()),
                        discriminator(target_features[k].detach()),
                    )
                )
                frozen = {n: p.detach() for n, p in discriminator.named_parameters()}
                joint = torch.cat([source_features[k], target_features[k]])
                confusion.append(
                    domain_confusion_loss(
                        torch.func.functional_call(discriminator, frozen, (joint,))
                    )
                )
            parts["confusion"] = torch.stack(confusion).mean()
            adversarial = torch.stack(discrimination).mean() + scale * parts["confusion"]
        loss = classification + config.adversarial_weight * adversarial
        return {
            "loss": loss,
            "classification": classification,
            "adversarial": adversarial,
            **parts,
            "grl_lambda": torch.tensor(scale),
        }
