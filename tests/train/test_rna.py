"""RNA-Net's settings: ``uda`` is exactly the supplementary's eq. 2, ``L_C + lambda (L_RNA^s +
L_RNA^t)``, checked against a hand computation of L_RNA on a small batch; the target term is
the target batch's; the DANN + information-maximisation hybrid runs only as ``uda-hybrid``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_feature_cache

from avda import runs
from avda.errors import ConfigError
from avda.train import heads
from avda.train.data import Task
from avda.train.heads.rna import RnaConfig
from avda.train.loop import train

torch.set_num_threads(1)

TASKS = [Task("verb", 3)]
D = 4  # embedding_dim == D: the embedding starts as the identity (weights I, bias 0)


def _head(setting: str, **overrides) -> torch.nn.Module:
    options = {"setting": setting, "embedding_dim": D, "dropout": 0.0, **overrides}
    inputs = {"rgb": (2, D), "audio": (2, D)}
    return heads.create("rna", inputs=inputs, tasks=TASKS, overrides=options)


def _batch(scale_rgb: float, scale_audio: float, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "rgb": scale_rgb * torch.rand(3, 2, D, generator=generator),
        "audio": scale_audio * torch.rand(3, 2, D, generator=generator),
    }


def _rna_by_hand(batch: dict[str, torch.Tensor]) -> float:
    """``(E[||f^a||_2] / E[||f^v||_2] - 1)^2`` on the identity embedding's features: ``f_m`` is
    the clip average of the (non-negative) inputs, norms per sample, means over the batch."""

    def mean_norm(x: torch.Tensor) -> float:
        rows = x.mean(dim=1).tolist()  # (B, K, D) -> B vectors
        return sum(math.sqrt(sum(v * v for v in row)) for row in rows) / len(rows)

    return (mean_norm(batch["audio"]) / mean_norm(batch["rgb"]) - 1.0) ** 2


LABELS = {"verb": torch.tensor([0, 1, 2])}


def _value(x: torch.Tensor) -> float:
    return float(x.detach())


def test_uda_is_supplementary_eq2_exactly():
    torch.manual_seed(0)
    head = _head("uda", rna_weight=0.5)
    source, target = _batch(1.0, 3.0, seed=1), _batch(2.0, 0.5, seed=2)
    losses = head.training_step(source, LABELS, target, progress=0.5)
    assert set(losses) == {"loss", "classification", "rna", "rna_target"}
    # L_RNA^s and L_RNA^t by hand, on the source and on the target batch respectively
    assert _value(losses["rna"]) == pytest.approx(_rna_by_hand(source), rel=1e-5)
    assert _value(losses["rna_target"]) == pytest.approx(_rna_by_hand(target), rel=1e-5)
    # L_C: cross-entropy of the summed per-modality logits, source labels only
    logits = sum(
        head.classifiers[m]["verb"](source[m].mean(dim=1)) for m in ("rgb", "audio")
    )  # identity embedding on non-negative inputs
    classification = F.cross_entropy(logits, LABELS["verb"])
    torch.testing.assert_close(losses["classification"], classification)
    expected = _value(classification) + 0.5 * (_rna_by_hand(source) + _rna_by_hand(target))
    assert _value(losses["loss"]) == pytest.approx(expected, rel=1e-5)


def test_uda_target_term_is_the_target_batch_and_trains_on_it():
    torch.manual_seed(0)
    head = _head("uda")
    source = _batch(1.0, 1.0, seed=1)
    balanced, unbalanced = _batch(1.0, 1.0, seed=3), _batch(1.0, 4.0, seed=3)
    low = head.training_step(source, LABELS, balanced, progress=0.0)
    high = head.training_step(source, LABELS, unbalanced, progress=0.0)
    torch.testing.assert_close(low["rna"], high["rna"])  # the source term ignores the target
    difference = _value(high["loss"] - low["loss"])
    assert difference == pytest.approx(_rna_by_hand(unbalanced) - _rna_by_hand(balanced), rel=1e-5)
    assert difference > 1.0  # audio norms 4x the visual ones: (~4 - 1)^2 vs ~0
    # The target's L_RNA back-propagates into the feature extractors through the target inputs.
    target = {m: x.clone().requires_grad_() for m, x in unbalanced.items()}
    head.training_step(source, LABELS, target, progress=0.0)["loss"].backward()
    assert all(float(x.grad.abs().sum()) > 0 for x in target.values())
    with pytest.raises(ConfigError, match="needs unlabelled target batches"):
        head.training_step(source, LABELS, None, progress=0.0)


def test_dg_ignores_the_target():
    torch.manual_seed(0)
    head = _head("dg")
    source = _batch(1.0, 2.0, seed=1)
    target = {m: x.requires_grad_() for m, x in _batch(1.0, 4.0, seed=2).items()}
    losses = head.training_step(source, LABELS, target, progress=0.5)
    assert set(losses) == {"loss", "classification", "rna"}
    expected = _value(losses["classification"]) + _rna_by_hand(source)
    assert _value(losses["loss"]) == pytest.approx(expected, rel=1e-5)
    losses["loss"].backward()
    assert all(x.grad is None for x in target.values())


def test_the_hybrid_is_only_active_under_its_own_name():
    rna = heads.HEADS.get("rna")
    settings = {s: RnaConfig.from_dict({"setting": s}) for s in ("dg", "uda", "uda-hybrid")}
    assert [rna.needs_target(c) for c in settings.values()] == [False, True, True]
    torch.manual_seed(0)
    dg, uda, hybrid = _head("dg"), _head("uda"), _head("uda-hybrid")
    names = {n for n, _ in uda.named_parameters()}
    assert names == {n for n, _ in dg.named_parameters()}  # no discriminator in uda
    assert not any("discriminators" in n for n in names)
    assert any(n.startswith("discriminators.") for n, _ in hybrid.named_parameters())
    source, target = _batch(1.0, 2.0, seed=1), _batch(1.0, 3.0, seed=2)
    losses = hybrid.training_step(source, LABELS, target, progress=1.0)
    assert {"adversarial", "information", "grl_lambda"} <= set(losses)
    config = hybrid.config
    expected = (
        losses["classification"]
        + config.rna_weight * (losses["rna"] + losses["rna_target"])
        + config.adversarial_weight * losses["adversarial"]
        + config.information_weight * losses["information"]
    )
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    assert all(p.grad is not None for p in hybrid.parameters())
    # The hybrid's weights change nothing in "uda".
    torch.manual_seed(0)
    reweighted = _head("uda", adversarial_weight=100.0, information_weight=100.0)
    torch.manual_seed(0)
    plain = _head("uda")
    torch.testing.assert_close(
        reweighted.training_step(source, LABELS, target, progress=1.0)["loss"],
        plain.training_step(source, LABELS, target, progress=1.0)["loss"],
    )
    with pytest.raises(ConfigError, match="setting"):
        RnaConfig.from_dict({"setting": "hybrid"})


@pytest.mark.parametrize("options", [{"setting": "uda"}, {}], ids=["uda", "default"])
def test_uda_through_the_loop_records_the_setting(tmp_path, options):
    """Set explicitly, or at the default (``auto``) with a target: the run records "uda"
    (the resolved setting) and trains eq. 2's target term, without the hybrid's."""
    make_feature_cache(tmp_path / "c.zarr", per_class=4, K=2, D=8)
    train(
        cache=tmp_path / "c.zarr",
        head="rna",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        progress=False,
        overrides={**options, "epochs": 1, "batch_size": 8, "embedding_dim": 8},
    )
    config = runs.read_config(tmp_path / "run")["head_config"]
    assert config["setting"] == "uda"
    records = runs.read_metrics(tmp_path / "run")
    assert "train/rna_target" in records[0] and "train/adversarial" not in records[0]


def test_auto_is_eq_2_when_the_run_has_unlabelled_target_data_else_dg():
    rna = heads.HEADS.get("rna")
    auto = RnaConfig.from_dict({})
    assert auto.setting == "auto" and not rna.needs_target(auto)
    assert rna.resolve_config(auto, None, ["rgb", "audio"], target_segments=0).setting == "dg"
    resolved = rna.resolve_config(auto, None, ["rgb", "audio"], target_segments=5)
    assert resolved.setting == "uda" and rna.needs_target(resolved)
    explicit = RnaConfig.from_dict({"setting": "dg"})  # an explicit choice is kept
    assert rna.resolve_config(explicit, None, ["rgb", "audio"], target_segments=5) == explicit
    # A head used directly (no run) decides per step: eq. 2 with a target batch, dg without.
    torch.manual_seed(0)
    head = _head("auto")
    source, target = _batch(1.0, 2.0, seed=1), _batch(1.0, 3.0, seed=2)
    assert "rna_target" in head.training_step(source, LABELS, target, progress=0.5)
    assert "rna_target" not in head.training_step(source, LABELS, None, progress=0.5)
