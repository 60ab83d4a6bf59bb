"""MMD: multi-kernel maximum mean discrepancy between source and target embeddings.

DAN (Long, Cao, Wang, Jordan; ICML 2015) on cached features::

    source, target features -> FusionClassifier -> h (B, F) --> classifiers -> L_y (source only)
                                                    |
                                                    +-> MK-MMD^2(h_source, h_target)

    L = L_y + lambda * (MK-MMD^2(h) + MK-MMD^2(logits))          (DAN's objective)
    MK-MMD^2 = || E_s[phi(h)] - E_t[phi(h)] ||^2_{H_k}
    k = sum_u beta_u k_u,  k_u(x, y) = exp(-||x - y||^2 / gamma_u)   (multi-kernel family)
    gamma_u = 2^e gamma, e in {-8, -7.5, ..., 8} (33 kernels), gamma = mean squared pairwise
    distance of the batch, beta_u = 1 / 33

The embedding is the fused feature of :class:`FusionClassifier` (concatenated per-modality
hidden features in late fusion). Deviations from DAN (see ``docs/methods.md``): equal kernel
weights instead of the quadratic program that picks ``beta``, the quadratic-time biased
estimate instead of the linear-time unbiased one, and two adapted layers (the embedding and the
logits, ``adapt_logits``) instead of fc6-fc8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch

from avda.errors import ConfigError
from avda.train.heads import register
from avda.train.heads._base import Batch, FusionClassifier, FusionConfig, Head, HeadOutput
from avda.train.losses import gaussian_bandwidth_exponents, multi_kernel_mmd


@dataclasses.dataclass(frozen=True, kw_only=True)
class MmdConfig(FusionConfig):
    mmd_weight: float = 1.0  # lambda
    lowest_exponent: float = -8.0  # bandwidths 2^lowest .. 2^highest times gamma
    highest_exponent: float = 8.0  # largest bandwidth exponent
    exponent_step: float = 0.5  # multiplicative step 2^0.5
    # "joint": one MMD on the fused embedding (DAN); "per-modality": one MMD per modality's
    # hidden features, summed (MM-SADA's MMD baseline; needs fusion=late)
    embedding: Literal["joint", "per-modality"] = "joint"
    # 0: gamma = the batch's mean squared distance (DAN's heuristic); > 0: gamma fixed (MM-SADA's
    # baseline: 9.7, with exponents -8 .. 8 in steps of 2^0.5)
    bandwidth: float = 0.0
    # DAN adapts fc6-fc8, the classifier's output included: one MK-MMD on the logits (every
    # task's, concatenated) added to the embedding's; False: the embedding only
    adapt_logits: bool = True

    # runs recorded before adapt_logits existed adapted the embedding only
    introduced: ClassVar[Mapping[str, Any]] = {"adapt_logits": False}


@register("mmd")
class Mmd(Head):
    Config = MmdConfig
    target_use = "always"

    def __init__(self, config: MmdConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.net = FusionClassifier(inputs, tasks, config)
        self.exponents = gaussian_bandwidth_exponents(
            config.lowest_exponent, config.highest_exponent, config.exponent_step
        )
        if config.embedding == "per-modality" and config.fusion != "late":
            raise ConfigError(
                "mmd: embedding=per-modality needs fusion=late (one hidden feature per "
                "modality); set fusion=late or embedding=joint"
            )
        if config.bandwidth < 0:
            raise ConfigError(
                f"mmd: bandwidth must be >= 0 (0: batch heuristic), got {config.bandwidth}"
            )

    def forward(self, inputs: Batch) -> HeadOutput:
        return self.net(inputs)

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        source_out, target_out = self(source), self(target)
        classification = self.classification(source_out, source_labels)
        bandwidth = self.config.bandwidth or None
        if self.config.embedding == "per-modality":
            source_hidden, target_hidden = source_out.extras["hidden"], target_out.extras["hidden"]
            discrepancy = sum(
                multi_kernel_mmd(source_hidden[m], target_hidden[m], self.exponents, bandwidth)
                for m in sorted(source_hidden)
            )
        else:
            discrepancy = multi_kernel_mmd(
                source_out.features, target_out.features, self.exponents, bandwidth
            )
        if self.config.adapt_logits:
            names = sorted(source_out.logits)
            discrepancy = discrepancy + multi_kernel_mmd(
                torch.cat([source_out.logits[t] for t in names], dim=1),
                torch.cat([target_out.logits[t] for t in names], dim=1),
                self.exponents,
                bandwidth,
            )
        loss = classification + self.config.mmd_weight * discrepancy
        return {"loss": loss, "classification": classification, "mmd": discrepancy}


__all__ = ["Mmd", "MmdConfig"]
