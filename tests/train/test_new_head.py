"""A new head is one module: registered in a test, it trains through the loop, is evaluated, and
its trained embedding is rebuilt for the report, with no shared file edited
(docs/architecture.md, "Adding a head")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tests.conftest import make_feature_cache
from torch import nn

from avda import runs
from avda.train import heads
from avda.train.embedding import head_embedding
from avda.train.heads._base import Head, HeadConfig, HeadOutput
from avda.train.loop import train


@dataclasses.dataclass(frozen=True, kw_only=True)
class CentroidConfig(HeadConfig):
    epochs: int = 3
    batch_size: int = 16
    pull: float = 0.5  # weight of the source-target mean-embedding distance


class Centroid(Head):
    """Linear embedding + classifier; pulls the batch means of source and target together."""

    Config = CentroidConfig
    target_use = "always"

    def __init__(self, config, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        width = sum(d for _, d in inputs.values())
        self.embed = nn.Linear(width, 8)
        self.classify = nn.ModuleDict({t.name: nn.Linear(8, t.num_classes) for t in tasks})
        self.prepared = False

    def prepare(self, context):
        self.prepared = len(context.train_set) > 0

    def forward(self, inputs):
        x = torch.cat([inputs[m].mean(dim=1) for m in sorted(inputs)], dim=1)
        features = torch.relu(self.embed(x))
        return HeadOutput({t: c(features) for t, c in self.classify.items()}, features)

    def training_step(self, source, source_labels, target, progress):
        out = self(source)
        classification = self.classification(out, source_labels)
        pull = (out.features.mean(0) - self(target).features.mean(0)).pow(2).sum()
        loss = classification + self.config.pull * pull
        return {"loss": loss, "classification": classification, "pull": pull}


@pytest.fixture
def registered():
    heads.register("centroid-test")(Centroid)
    try:
        yield "centroid-test"
    finally:
        heads.HEADS.unregister("centroid-test")


def test_a_head_in_one_module_trains_evaluates_and_embeds(registered, tmp_path):
    cache = make_feature_cache(tmp_path / "c.zarr", shift=0.5).path
    result = train(
        cache=cache, head=registered, source=["source"], target=["target"],
        out=tmp_path / "run", progress=False,
    )  # fmt: skip
    assert runs.is_complete(result.run)
    assert 0.0 <= result.metrics["target_test/verb/top1"] <= 100.0
    records = runs.read_metrics(result.run)
    assert len(records) == 3 and "train/pull" in records[-1]
    embedding = head_embedding(result.run, 20)
    assert embedding.after.shape == (20, 8) and embedding.is_target.sum() == 10
    assert Centroid.needs_target(CentroidConfig())  # target_use = "always"


def test_the_contract_is_enforced():
    class NoStep(Head):
        def forward(self, inputs):
            raise AssertionError

    with pytest.raises(TypeError, match="training_step"):
        NoStep(HeadConfig(), inputs={"rgb": (1, 4)}, tasks=[])
    for name in heads.names():  # every registered head declares its target use
        cls = heads.HEADS.get(name)
        assert cls.target_use in ("never", "always", "config"), name
        config = cls.Config.from_dict({})
        assert isinstance(cls.needs_target(config), bool)
    assert np.array([heads.HEADS.get(n).staged for n in heads.names()]).sum() == 1
