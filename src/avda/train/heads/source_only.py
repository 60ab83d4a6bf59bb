"""Source-only: train on labelled source features, apply to the target as is.

The lower bound every adaptation method is compared with (MM-SADA, TA3N, RNA-Net tables).
Late fusion sums per-modality logits (MM-SADA's and RNA-Net's baseline); mid fusion
concatenates the clip-averaged features before one classifier (TBN's concat fusion).
"""

from __future__ import annotations

import dataclasses

from avda.train.heads import register
from avda.train.heads._base import Batch, FusionClassifier, FusionConfig, Head, HeadOutput


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceOnlyConfig(FusionConfig):
    pass


@register("source-only")
class SourceOnly(Head):
    Config = SourceOnlyConfig
    target_use = "never"

    def __init__(self, config: SourceOnlyConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.net = FusionClassifier(inputs, tasks, config)

    def forward(self, inputs: Batch) -> HeadOutput:
        return self.net(inputs)

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        loss = self.classification(self(source), source_labels)
        return {"loss": loss, "classification": loss}
