"""avda.train.optim: its optimisers step as PyTorch's reference (for-loop) implementation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avda.train.data import Task
from avda.train.heads.source_only import SourceOnly, SourceOnlyConfig
from avda.train.loop import _make_optimizer
from avda.train.optim import fusable, make_optimizer


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 5))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 25) -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randn(16, 12, generator=generator)
        y = torch.randint(0, 5, (16,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("kind", "settings", "reference"),
    [
        ("adam", {"lr": 1e-2, "weight_decay": 1e-4}, torch.optim.Adam),
        (
            "sgd",
            {"lr": 5e-2, "weight_decay": 1e-4, "momentum": 0.9, "nesterov": True},
            torch.optim.SGD,
        ),
    ],
)
def test_optimiser_follows_the_reference_implementation(kind, settings, reference):
    ours, theirs, untouched = _model(0), _model(0), _model(0)
    optimizer = make_optimizer(kind, ours.parameters(), **settings)
    assert bool(optimizer.defaults["fused"]) == (kind == "adam")
    _train(ours, optimizer)
    _train(theirs, reference(theirs.parameters(), foreach=False, **settings))
    for mine, ref, start in zip(
        ours.parameters(), theirs.parameters(), untouched.parameters(), strict=True
    ):
        assert not torch.equal(ref, start)  # the steps moved the weights
        torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-6)


def test_parameters_the_fused_kernels_cannot_take_get_the_default_implementation():
    meta = nn.Parameter(torch.empty(3, device="meta"))
    assert not fusable([meta])
    assert not fusable([])
    assert fusable([nn.Parameter(torch.zeros(3))])
    assert not make_optimizer("adam", [meta], lr=1e-3).defaults["fused"]
    with pytest.raises(ValueError, match="'adam' or 'sgd'"):
        make_optimizer("rmsprop", [nn.Parameter(torch.zeros(3))], lr=1e-3)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_the_loop_builds_its_optimiser_here(kind):
    config = SourceOnlyConfig(optimizer=kind)
    head = SourceOnly(config, inputs={"rgb": (5, 16)}, tasks=[Task("verb", 4)])
    optimizer, _ = _make_optimizer(head, config)
    assert type(optimizer) is {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[kind]
    assert bool(optimizer.defaults["fused"]) == (kind == "adam")
    assert optimizer.defaults["lr"] == config.lr


@pytest.mark.parametrize(
    ("kind", "settings"),
    [("adam", {}), ("sgd", {"momentum": 0.9, "nesterov": True})],
)
def test_a_parameter_whose_first_gradient_comes_later_steps(kind, settings):
    """MM-SADA's discriminators get no gradient in stage 1 and join in stage 2 (PyTorch's fused
    SGD raised a TypeError there)."""
    early, late = nn.Linear(4, 2), nn.Linear(4, 2)
    optimizer = make_optimizer(kind, [*early.parameters(), *late.parameters()], lr=0.1, **settings)
    x = torch.randn(8, 4)
    for step in range(4):
        loss = early(x).square().mean() + (late(x).square().mean() if step >= 2 else 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        before = late.weight.detach().clone()
        optimizer.step()
        assert torch.equal(late.weight, before) == (step < 2)
