"""AdaBN: adaptive batch normalisation (Li, Wang, Shi, Hou, Liu; Pattern Recognition 2018).

Train an ordinary network with BatchNorm on labelled source data; to apply it to the target,
replace the statistics of every BN layer by the target domain's, computed over all unlabelled
target samples (Algorithm 1), and keep all weights::

    late:  x_m (B,K,D_m) -mean_K-> BN_m -> Linear(D_m -> H) -> ReLU -> Dropout -> cls_m
           logits = sum_m cls_m(h_m)
    mid:   concat_m mean_K(x_m) -> BN -> Linear(sum D_m -> H) -> ReLU -> Dropout -> cls

    BN_m(u) = (u - mu_d) / sqrt(sigma_d^2 + eps),   d = source | target
    mu_t, sigma_t^2: mean and variance of u over all target training segments          (Alg. 1)

``normalize="inputs"`` (the default) puts the BatchNorm on each modality's clip-averaged
features: on cached features the backbone's own BatchNorms are out of reach, and its last one
(I3D's, TSN's before their pooling) is what this layer stands in for. ``normalize="hidden"``
puts it after the Linear, with an affine (``Linear -> BN -> ReLU``: the network before the
eighth stop). With late fusion each modality's logits also get their own classification loss
(``stream_weight``; docs/methods.md, adabn: why)::

    L = L_y(sum_m cls_m) + stream_weight * mean_m L_y(cls_m)

Training is source-only; before each evaluation the loop calls
:meth:`AdaBN.before_evaluation`, which re-estimates ``mu_t, sigma_t`` layer by layer over the
unlabelled target training set (exact full-set moments, not running averages). Target
evaluation sets are then normalised with target statistics, source sets with the source
running averages from training. Without target training segments the evaluation set's own
statistics are used (the paper's transductive variant).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from avda.train.data import FeatureSet
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    FusionConfig,
    Head,
    HeadOutput,
    evaluation_domain,
)
from avda.train.layers import DomainBatchNorm1d
from avda.train.losses import stream_loss

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaBNConfig(FusionConfig):
    # "target-train": statistics of the unlabelled target training set; "evaluation-set": of
    # each target evaluation set itself (transductive, Algorithm 1 run on the test data);
    # "source": the source running averages everywhere, i.e. no adaptation (the ablation: a
    # source-only network with BN)
    statistics: Literal["target-train", "evaluation-set", "source"] = "target-train"
    statistics_batch_size: int = 1024  # segments per batch when BN statistics are re-estimated
    # where the BatchNorm sits: "inputs": on each modality's clip-averaged features, without an
    # affine (the backbone's last normalisation, out of reach on cached features); "hidden":
    # after the Linear, with an affine (the network before the eighth stop)
    normalize: Literal["inputs", "hidden"] = "inputs"
    # late fusion: weight of each modality's own classification loss (mean over modalities),
    # added to the fused one; 0: the fused loss alone
    stream_weight: float = 1.0
    # runs recorded before these options were trained with the hidden BN and the fused loss
    introduced: ClassVar[Mapping[str, Any]] = {"normalize": "hidden", "stream_weight": 0.0}


def _encoder(fan_in: int, hidden: int, dropout: float, normalize: str) -> nn.Sequential:
    if normalize == "inputs":
        return nn.Sequential(
            DomainBatchNorm1d(fan_in, affine=False),
            nn.Linear(fan_in, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
    return nn.Sequential(
        nn.Linear(fan_in, hidden), DomainBatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout)
    )


@register("adabn")
class AdaBN(Head):
    Config = AdaBNConfig
    target_use = "never"  # the target is used only for BN statistics, at evaluation
    adapts_at_evaluation = True

    def __init__(self, config: AdaBNConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.modalities = sorted(inputs)
        self._said_no_target = False
        hidden = config.hidden_dim
        if config.fusion == "late":
            self.encoders = nn.ModuleDict(
                {
                    m: _encoder(inputs[m][1], hidden, config.dropout, config.normalize)
                    for m in self.modalities
                }
            )
            self.classifiers = nn.ModuleDict(
                {
                    m: nn.ModuleDict({t.name: nn.Linear(hidden, t.num_classes) for t in tasks})
                    for m in self.modalities
                }
            )
        else:
            total = sum(inputs[m][1] for m in self.modalities)
            self.encoders = nn.ModuleDict(
                {"fused": _encoder(total, hidden, config.dropout, config.normalize)}
            )
            self.classifiers = nn.ModuleDict(
                {"fused": nn.ModuleDict({t.name: nn.Linear(hidden, t.num_classes) for t in tasks})}
            )

    def norms(self) -> list[DomainBatchNorm1d]:
        return [m for m in self.modules() if isinstance(m, DomainBatchNorm1d)]

    def forward(self, inputs: Batch) -> HeadOutput:
        pooled = {m: inputs[m].mean(dim=1) for m in self.modalities}  # (B, K, D) -> (B, D)
        if self.config.fusion == "late":
            hidden = {m: self.encoders[m](pooled[m]) for m in self.modalities}
        else:
            fused = torch.cat([pooled[m] for m in self.modalities], dim=1)
            hidden = {"fused": self.encoders["fused"](fused)}
        streams = {
            k: {t.name: self.classifiers[k][t.name](hidden[k]) for t in self.tasks} for k in hidden
        }
        logits = {
            t.name: torch.stack([streams[k][t.name] for k in streams]).sum(0) for t in self.tasks
        }
        features = torch.cat([hidden[k] for k in sorted(hidden)], dim=1)
        return HeadOutput(
            logits=logits, features=features, extras={"hidden": hidden, "streams": streams}
        )

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        output = self(source)
        loss = self.classification(output, source_labels)
        parts = {"classification": loss}
        streams = output.extras["streams"]
        if self.config.stream_weight and len(streams) > 1:
            stream = stream_loss(streams.values(), source_labels, self.tasks)
            parts["streams"] = stream
            loss = loss + self.config.stream_weight * stream
        return {"loss": loss, **parts}

    def before_evaluation(self, feature_set: FeatureSet, adaptation_set: FeatureSet | None) -> None:
        is_target = evaluation_domain(feature_set) == "target"
        if not is_target or self.config.statistics == "source":
            self.set_domain("source")
            return
        statistics_set = adaptation_set
        if (
            self.config.statistics == "evaluation-set"
            or not statistics_set
            or not len(statistics_set)
        ):
            if self.config.statistics == "target-train" and not self._said_no_target:
                self._said_no_target = True  # once per run, not at every evaluation
                log.warning(
                    "adabn: no unlabelled target training segments; normalising each target "
                    "evaluation set (%s first) with its own statistics",
                    feature_set.name,
                )
            statistics_set = feature_set
        self.estimate_target_statistics(statistics_set)
        self.set_domain("target")

    def set_domain(self, domain: str) -> None:
        for norm in self.norms():
            norm.domain = domain

    @torch.no_grad()
    def estimate_target_statistics(self, feature_set: FeatureSet) -> None:
        """AdaBN's Algorithm 1: per BN layer (in forward order), the exact mean and variance of
        its input over ``feature_set``, with the layers before it already on target statistics.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        for norm in self.norms():
            total = torch.zeros(norm.num_features, dtype=torch.float64, device=device)
            squares = torch.zeros_like(total)
            count = 0

            def capture(module, args, total=total, squares=squares):
                (u,) = args
                total.add_(u.double().sum(dim=0))
                squares.add_(u.double().pow(2).sum(dim=0))

            handle = norm.register_forward_pre_hook(capture)
            try:
                for index in feature_set.batches(self.config.statistics_batch_size, shuffle=False):
                    inputs, _ = feature_set.batch(index, device)
                    self(inputs)
                    count += len(index)
            finally:
                handle.remove()
            mean = total / max(count, 1)
            var = (squares / max(count, 1) - mean.pow(2)).clamp_min(0.0)
            norm.set_target_statistics(mean.float(), var.float())
            norm.domain = "target"
        self.train(was_training)


__all__ = ["AdaBN", "AdaBNConfig"]
