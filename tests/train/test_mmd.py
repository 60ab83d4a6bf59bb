"""The mmd head's objective: ``L_y + lambda MK-MMD^2`` on the embedding and, with
``adapt_logits`` (DAN's fc8), also on the logits; checked against the loss function applied by
hand to the head's own outputs."""

from __future__ import annotations

import torch

from avda.train import heads
from avda.train.data import Task
from avda.train.losses import gaussian_bandwidth_exponents, multi_kernel_mmd

torch.set_num_threads(1)

TASKS = [Task("verb", 3), Task("noun", 4)]
INPUTS = {"rgb": (2, 6), "audio": (2, 5)}


def _batch(seed: int, shift: float = 0.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(8, k, d, generator=generator) + shift for m, (k, d) in INPUTS.items()}


def test_the_logits_term_is_the_mmd_of_the_concatenated_logits():
    source, target = _batch(0), _batch(1, shift=2.0)
    labels = {"verb": torch.randint(0, 3, (8,)), "noun": torch.randint(0, 4, (8,))}
    exponents = gaussian_bandwidth_exponents(-8.0, 8.0, 0.5)
    found = {}
    for adapt_logits in (False, True):
        torch.manual_seed(0)
        head = heads.create(
            "mmd",
            inputs=INPUTS,
            tasks=TASKS,
            overrides={"adapt_logits": adapt_logits, "dropout": 0.0, "hidden_dim": 7},
        )
        losses = head.training_step(source, labels, target, progress=0.5)
        s, t = head(source), head(target)
        expected = multi_kernel_mmd(s.features, t.features, exponents)
        if adapt_logits:
            logits = [torch.cat([o.logits["noun"], o.logits["verb"]], dim=1) for o in (s, t)]
            expected = expected + multi_kernel_mmd(*logits, exponents)
        torch.testing.assert_close(losses["mmd"], expected)
        torch.testing.assert_close(losses["loss"], losses["classification"] + expected)
        found[adapt_logits] = losses["mmd"].item()
        # the logits term reaches the classifiers through the target batch too
        head.zero_grad()
        losses["mmd"].backward()
        grads = [p.grad for n, p in head.named_parameters() if "classifiers" in n]
        assert all(g is not None for g in grads) == adapt_logits
    assert found[True] > found[False] > 0


def test_the_logits_are_adapted_by_default_and_older_runs_are_rebuilt_without():
    mmd = heads.config_class("mmd")
    assert mmd.from_dict({}).adapt_logits
    # a run recorded before the field existed adapted the embedding only
    assert not mmd.from_stored({"mmd_weight": 1.0}).adapt_logits
    assert mmd.from_stored({"adapt_logits": True}).adapt_logits
