"""CIA / M3EM: gating and consensus against hand-computed values, both modes, losses, training."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
import zarr
from tests.conftest import make_feature_cache

from avda import runs
from avda.errors import CacheError, ConfigError
from avda.train import heads
from avda.train.data import Task
from avda.train.embedding import head_embedding
from avda.train.heads.cia import (
    CiaConfig,
    MutualComplementarity,
    SpatialConsensus,
    align_snippets,
    correlation_map,
)
from avda.train.loop import train
from avda.train.losses import domain_adversarial_loss
from avda.train.setup import RunSetup

torch.set_num_threads(1)

TASKS = [Task("verb", 4)]
SMALL = {"consensus_dim": 8, "reduction": 4, "discriminator_hidden": 6}


def _head(inputs, **overrides):
    return heads.create("cia", inputs=inputs, tasks=TASKS, overrides={**SMALL, **overrides})


# ------------------------------------------------------------------------------ eq. 1-4
def test_gates_by_hand():
    smr = MutualComplementarity({"rgb": 4, "audio": 4}, reduction=2)
    for gate in [*smr.self_gates.values(), *smr.cross_gates.values()]:
        for layer in gate:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
    x = torch.randn(2, 3, 4, 5, 5)
    audio = torch.randn(2, 3, 4)
    out = smr({"rgb": x, "audio": audio}, {"rgb": x.mean(dim=(-2, -1)), "audio": audio})
    # zero weights: sigmoid(0) = 0.5 for both gates -> [0.5 F ; 0.5 F] (eq. 2-4)
    torch.testing.assert_close(out["rgb"], torch.cat([0.5 * x, 0.5 * x], dim=2))
    torch.testing.assert_close(out["audio"], torch.cat([0.5 * audio, 0.5 * audio], dim=2))
    # The cross gate of rgb reads the audio summary only.
    gate = smr.cross_gates["rgb"]
    torch.nn.init.constant_(gate[2].bias, 1.0)  # hidden is relu(0) = 0: t_c = sigmoid(1)
    out = smr({"rgb": x, "audio": audio}, {"rgb": x.mean(dim=(-2, -1)), "audio": audio})
    torch.testing.assert_close(out["rgb"][:, :, 4:], x / (1 + math.exp(-1.0)))
    assert gate[0].in_features == 4 and gate[0].out_features == 2  # bottleneck c / r


def test_align_snippets():
    x = torch.arange(8.0).reshape(1, 4, 2)
    torch.testing.assert_close(align_snippets(x, 2), torch.tensor([[[1.0, 2.0], [5.0, 6.0]]]))
    assert align_snippets(x, 4) is x


# ------------------------------------------------------------------------------ eq. 5
def test_correlation_by_hand():
    a = torch.tensor([[1.0, 0.0]]).T[None]  # (1, 2, 1): channels on axis 1
    b = torch.tensor([[1.0, 1.0]]).T[None]
    assert float(correlation_map(a, b)) == pytest.approx(1 / math.sqrt(2))
    c = torch.tensor([[1.0, 2.0, 3.0]]).T[None]
    d = torch.tensor([[3.0, 2.0, 1.0]]).T[None]
    assert float(correlation_map(c, d)) == pytest.approx(10 / 14)  # cosine, as eq. 5 prints
    assert float(correlation_map(c, d, "pearson")) == pytest.approx(-1.0)


def _identity_consensus(channels: dict[str, int], **kwargs) -> SpatialConsensus:
    consensus = SpatialConsensus(channels, dim=4, correlation="cosine", **kwargs)
    for projection in consensus.projections.values():  # H = F (first 4 channels)
        torch.nn.init.eye_(projection.weight)
        torch.nn.init.zeros_(projection.bias)
    return consensus


def test_consensus_weights_by_hand():
    consensus = _identity_consensus({"rgb": 4, "flow": 4}, scales=0)
    x = torch.rand(2, 3, 4, 3, 3) + 0.1
    frames, map_ = consensus({"rgb": x, "flow": x}, spatial=True)
    torch.testing.assert_close(map_, torch.ones(2, 3, 3, 3))  # identical modalities: C = 1
    torch.testing.assert_close(frames["rgb"], 2 * x.mean(dim=(-2, -1)))  # (1 + C) weights
    orthogonal = torch.zeros_like(x)
    orthogonal[:, :, 0] = 1.0
    other = torch.zeros_like(x)
    other[:, :, 1] = 1.0
    frames, map_ = consensus({"rgb": orthogonal, "flow": other}, spatial=True)
    torch.testing.assert_close(map_, torch.zeros(2, 3, 3, 3))  # C = 0: plain average
    torch.testing.assert_close(frames["rgb"], orthogonal.mean(dim=(-2, -1)))


def test_multi_scale_consensus_by_hand():
    # 2x2 maps, scales 0 and 1. rgb = flow except at cell (0, 0), where they are orthogonal:
    # scale 0: C^0 = [[0, 1], [1, 1]]; scale 1 (1x1 average): cos(mean rgb, mean flow), upsampled.
    consensus = _identity_consensus({"rgb": 2, "flow": 2}, scales=1)
    consensus.projections["rgb"] = torch.nn.Identity()
    consensus.projections["flow"] = torch.nn.Identity()
    rgb = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).expand(2, 2, 2).clone()  # (C, H, W)
    flow = rgb.clone()
    rgb[:, 0, 0] = torch.tensor([1.0, 0.0])
    flow[:, 0, 0] = torch.tensor([0.0, 1.0])
    _, map_ = consensus({"rgb": rgb[None, None], "flow": flow[None, None]}, spatial=True)
    mean_rgb = rgb.mean(dim=(1, 2))
    mean_flow = flow.mean(dim=(1, 2))
    coarse = float(F.cosine_similarity(mean_rgb, mean_flow, dim=0))
    expected = (torch.tensor([[0.0, 1.0], [1.0, 1.0]]) + coarse) / 2
    torch.testing.assert_close(map_[0, 0], expected)


def test_audio_never_joins_the_consensus_but_gates_the_visual_modalities():
    """M3EM sec. 2.2: the consensus correlates F_rR with F_rF only; audio (a vector, supp. sec.
    1) refines and is refined by the others through the gates (sec. 2.1), not re-weighted."""
    torch.manual_seed(0)
    inputs = {"rgb": (2, 4), "flow": (2, 4), "audio": (2, 4)}
    head = _head(inputs, dropout=0.0, spatial="on", domain_norm=False)
    assert head.consensus.pairs == [("flow", "rgb")]
    assert sorted(head.consensus.projections) == ["flow", "rgb"]  # no audio projection
    batch = {m: torch.rand(3, 2, 4) for m in inputs}
    batch |= {f"spatial/{m}": torch.rand(3, 2, 4, 3, 3) for m in ("rgb", "flow")}
    other = {**batch, "audio": 5 * torch.rand(3, 2, 4)}
    out = head(batch)
    # C is eq. 5 on the gated RGB and flow maps alone
    features = {m: batch[f"spatial/{m}"] for m in ("rgb", "flow")} | {"audio": batch["audio"]}
    summaries = {m: x.mean(dim=(-2, -1)) if x.dim() == 5 else x for m, x in features.items()}
    refined = head.interaction(features, summaries)
    frames, consensus = head.consensus({m: refined[m] for m in ("rgb", "flow")}, True)
    torch.testing.assert_close(out.extras["consensus"], consensus)
    torch.testing.assert_close(out.extras["frames"]["rgb"], frames["rgb"])
    torch.testing.assert_close(out.extras["frames"]["audio"], refined["audio"])  # not re-weighted
    # Audio gates the visual modalities: another audio changes rgb's cross-gated features.
    assert not torch.allclose(head(other).extras["frames"]["rgb"], out.extras["frames"]["rgb"])
    # With the visual cross gates made constant, audio has no other way into rgb, flow or C.
    for m in ("rgb", "flow"):
        torch.nn.init.zeros_(head.interaction.cross_gates[m][0].weight)
    out, changed = head(batch), head(other)
    torch.testing.assert_close(changed.extras["consensus"], out.extras["consensus"])
    torch.testing.assert_close(changed.extras["frames"]["rgb"], out.extras["frames"]["rgb"])
    assert not torch.allclose(changed.extras["frames"]["audio"], out.extras["frames"]["audio"])


def test_audio_must_be_a_vector_modality():
    with pytest.raises(ConfigError, match="audio must be in vector_modalities.*RGB and flow only"):
        _head({"rgb": (2, 4), "flow": (2, 4), "audio": (2, 4)}, vector_modalities=[])


def test_one_visual_modality_has_no_consensus(caplog):
    torch.manual_seed(0)
    inputs = {"rgb": (3, 4), "audio": (1, 4)}
    with caplog.at_level("WARNING", logger="avda.train.heads.cia"):
        head = _head(inputs, dropout=0.0, domain_norm=False)
    assert "one visual modality (rgb): no consensus" in caplog.text
    assert head.consensus.pairs == [] and len(head.consensus.projections) == 0
    batch = {"rgb": torch.rand(2, 3, 4), "audio": torch.rand(2, 1, 4)}
    out = head(batch)
    torch.testing.assert_close(out.extras["consensus"], torch.zeros(2, 3))  # C = 0
    refined = head.interaction(batch, batch)
    torch.testing.assert_close(out.extras["frames"]["rgb"], refined["rgb"])  # plain average
    maps = {**batch, "spatial/rgb": torch.rand(2, 3, 4, 2, 2)}
    out = head(maps)
    torch.testing.assert_close(out.extras["consensus"], torch.zeros(2, 3, 2, 2))


def test_pooled_mode_reweights_snippets():
    consensus = _identity_consensus({"rgb": 4, "flow": 4}, scales=0)
    rgb = torch.eye(4)[None]  # 4 snippets, snippet k along channel k
    flow = rgb.clone()
    flow[0, 3] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # the last snippet disagrees
    frames, map_ = consensus({"rgb": rgb, "flow": flow}, spatial=False)
    torch.testing.assert_close(map_, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(frames["rgb"], (1 + map_[:, :, None]) * rgb)


# ------------------------------------------------------------------------------ head
def test_forward_modes_and_every_parameter_learns():
    torch.manual_seed(0)
    inputs = {"rgb": (3, 8), "flow": (3, 8), "audio": (3, 8)}
    head = _head(inputs, dropout=0.0)
    pooled = {m: torch.rand(4, 3, 8) for m in inputs}
    out = head(pooled)
    assert out.logits["verb"].shape == (4, 4) and out.features.shape == (4, 48)
    assert out.extras["consensus"].shape == (4, 3)  # pooled mode: one weight per snippet
    spatial = {
        **pooled,
        "spatial/rgb": torch.rand(4, 3, 8, 3, 3),
        "spatial/flow": torch.rand(4, 3, 8, 3, 3),
    }
    out = head(spatial)
    assert out.extras["consensus"].shape == (4, 3, 3, 3)
    assert out.extras["frames"]["rgb"].shape == (4, 3, 16)
    labels = {"verb": torch.tensor([0, 1, 2, 3])}
    for batch in (pooled, spatial):
        head.zero_grad()
        losses = head.training_step(batch, labels, batch, progress=0.5)
        losses["loss"].backward()
        missing = [n for n, p in head.named_parameters() if p.grad is None]
        assert not missing, missing


def test_loss_is_the_weighted_sum_eq6():
    torch.manual_seed(0)
    inputs = {"rgb": (2, 6), "audio": (1, 6)}
    head = _head(inputs, dropout=0.0, video_adversarial_weight=2.0, frame_adversarial_weight=0.25)
    source = {m: torch.rand(5, *inputs[m]) for m in inputs}
    target = {m: torch.rand(5, *inputs[m]) for m in inputs}
    labels = {"verb": torch.tensor([0, 1, 2, 3, 0])}
    losses = head.training_step(source, labels, target, progress=1.0)
    expected = losses["classification"] + 2.0 * losses["video_adversarial"]
    expected = expected + 0.25 * losses["frame_adversarial"]
    torch.testing.assert_close(losses["loss"], expected)
    s, t = head(source), head(target)
    video = [
        domain_adversarial_loss(
            head.video_discriminators[m](s.extras["videos"][m]),
            head.video_discriminators[m](t.extras["videos"][m]),
        )
        for m in ("audio", "rgb")
    ]
    torch.testing.assert_close(losses["video_adversarial"], torch.stack(video).mean())


def test_gradient_reversal_on_the_features():
    torch.manual_seed(0)
    inputs = {"rgb": (2, 6), "audio": (1, 6)}
    head = _head(inputs, dropout=0.0, classification_weight=0.0, frame_adversarial_weight=0.0)
    source = {m: torch.rand(5, *inputs[m]) for m in inputs}
    target = {m: torch.rand(5, *inputs[m]) for m in inputs}
    labels = {"verb": torch.zeros(5, dtype=torch.long)}
    head.training_step(source, labels, target, progress=1.0)["loss"].backward()
    discriminator_grad = head.video_discriminators["rgb"][0].weight.grad.clone()
    gate_grad = head.interaction.self_gates["rgb"][0].weight.grad.clone()
    head.zero_grad()
    # Same loss without reversal: the discriminator's gradient is unchanged, the features' flips.
    s, t = head(source), head(target)
    plain = torch.stack(
        [
            domain_adversarial_loss(
                head.video_discriminators[m](s.extras["videos"][m]),
                head.video_discriminators[m](t.extras["videos"][m]),
            )
            for m in ("audio", "rgb")
        ]
    ).mean()
    plain.backward()
    scale = 2.0 / (1.0 + math.exp(-10.0)) - 1.0
    torch.testing.assert_close(head.video_discriminators["rgb"][0].weight.grad, discriminator_grad)
    torch.testing.assert_close(
        head.interaction.self_gates["rgb"][0].weight.grad * -scale, gate_grad, rtol=1e-4, atol=1e-7
    )


def test_trn_aggregation_on_tsn_snippets():
    torch.manual_seed(0)
    inputs = {"rgb": (7, 8), "audio": (7, 8)}
    head = _head(inputs, temporal="trn", relation_dim=6, dropout=0.0)
    assert head.snippets == {"rgb": [0, 2, 3, 4, 6], "audio": [0, 2, 3, 4, 6]}  # TSN, 5 of 7
    batch = {m: torch.rand(3, 7, 8) for m in inputs}
    out = head(batch)
    assert out.extras["frames"]["rgb"].shape == (3, 5, 16)
    assert out.extras["videos"]["rgb"].shape == (3, 6)  # TRN-M relations summed over scales
    expected = head.relations["rgb"](out.extras["frames"]["rgb"]).sum(dim=1)
    torch.testing.assert_close(out.extras["videos"]["rgb"], expected)
    losses = head.training_step(batch, {"verb": torch.tensor([0, 1, 2])}, batch, progress=0.3)
    losses["loss"].backward()
    assert all(p.grad is not None for p in head.parameters())
    assert heads.HEADS.get("cia").input_clips(CiaConfig(), 25) == [2, 7, 12, 17, 22]
    assert heads.HEADS.get("cia").input_clips(CiaConfig(), 5) is None
    with pytest.raises(ConfigError, match="num_segments must be >= 2"):
        _head(inputs, temporal="trn", num_segments=1)


def test_config_presets_and_errors():
    assert CiaConfig.from_dict({"preset": "ucf-hmdb"}).lr == 3e-3
    epic_trn = CiaConfig.from_dict({"preset": "epic-trn", "lr": 1e-2})
    assert epic_trn.optimizer == "sgd" and epic_trn.lr == 1e-2  # explicit keys win
    defaults = CiaConfig()
    assert (defaults.lr, defaults.reduction, defaults.scales) == (1e-4, 16, 3)
    assert (
        defaults.classification_weight,
        defaults.video_adversarial_weight,
        defaults.frame_adversarial_weight,
    ) == (1.0, 1.0, 0.5)
    with pytest.raises(ConfigError, match="unknown CiaConfig preset 'epik'; did you mean 'epic'"):
        CiaConfig.from_dict({"preset": "epik"})
    with pytest.raises(ConfigError, match="two or more modalities"):
        _head({"rgb": (2, 4)})
    with pytest.raises(ConfigError, match="two or more modalities"):
        _head({"audio": (2, 4), "rgb": (2, 4)}, vector_modalities=["audio", "rgb"])


# ------------------------------------------------------------------------------ training
def _add_spatial_maps(path, modalities, size=3):
    """spatial/<m> (N, K, C, H, W) maps whose spatial average is the pooled feature."""
    group = zarr.open_group(str(path), mode="r+")
    spatial = group.require_group("spatial")
    for m in modalities:
        pooled = group["features"][m][:].astype(np.float32)
        pattern = np.linspace(0.5, 1.5, size * size).reshape(size, size)
        maps = pooled[..., None, None] * pattern
        array = spatial.create_array(m, shape=maps.shape, dtype="float16")
        array[:] = maps.astype(np.float16)


@pytest.fixture(scope="module")
def three_modality_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cia") / "c.zarr"
    make_feature_cache(path, shift=1.0, per_class=8, modalities=("rgb", "flow", "audio"), D=8, K=3)
    return path


def _train(cache, out, **overrides):
    return train(
        cache=cache, head="cia", source=["source"], target=["target"], out=out, seed=0,
        overrides={**SMALL, "epochs": 8, "batch_size": 8, "lr": 3e-3, **overrides},
        progress=False,
    )  # fmt: skip


def test_auto_without_maps_warns_and_records_spatial_off(three_modality_cache, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="avda.train.heads.cia"):
        result = _train(three_modality_cache, tmp_path / "pooled")
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name.endswith(".cia")]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()  # one line
    assert "no spatial maps for rgb, flow, so spatial=auto runs as spatial=off" in caplog.text
    assert runs.read_config(tmp_path / "pooled")["head_config"]["spatial"] == "off"
    assert result.metrics["source_test/verb/top1"] > 0.5
    # Choosing the pooled mode explicitly: no warning, the same run.
    caplog.clear()
    with caplog.at_level("WARNING", logger="avda.train.heads.cia"):
        _train(three_modality_cache, tmp_path / "off", spatial="off")
    assert not [r for r in caplog.records if r.name.endswith(".cia")]
    pooled = runs.read_predictions(tmp_path / "pooled", "target_test")["scores"]["verb"]
    off = runs.read_predictions(tmp_path / "off", "target_test")["scores"]["verb"]
    np.testing.assert_allclose(pooled, off)
    # spatial=on without maps: refused before anything is written
    with pytest.raises(CacheError, match="no spatial maps for 'rgb'.*--set spatial=off"):
        _train(three_modality_cache, tmp_path / "on", spatial="on")
    assert not (tmp_path / "on").exists()


def test_spatial_setting_decides_the_mode_of_a_batch():
    torch.manual_seed(0)
    inputs = {"rgb": (2, 4), "flow": (2, 4)}
    pooled = {m: torch.rand(3, 2, 4) for m in inputs}
    maps = pooled | {f"spatial/{m}": torch.rand(3, 2, 4, 2, 2) for m in inputs}
    assert _head(inputs, spatial="off")(maps).extras["consensus"].shape == (3, 2)  # maps ignored
    assert _head(inputs, spatial="on")(maps).extras["consensus"].shape == (3, 2, 2, 2)
    with pytest.raises(CacheError, match="spatial='on' but the batch has no spatial/rgb maps"):
        _head(inputs, spatial="on")(pooled)


def test_trains_in_spatial_mode(three_modality_cache, tmp_path, caplog):
    import shutil

    cache = tmp_path / "c.zarr"
    shutil.copytree(three_modality_cache, cache)
    _add_spatial_maps(cache, ["rgb", "flow"])
    with caplog.at_level("INFO", logger="avda.train.heads.cia"):
        result = _train(cache, tmp_path / "spatial")
    assert "spatial consensus" in caplog.text
    assert not [r for r in caplog.records if r.name.endswith(".cia") and r.levelname == "WARNING"]
    assert runs.read_config(tmp_path / "spatial")["head_config"]["spatial"] == "on"
    assert result.metrics["source_test/verb/top1"] > 0.5
    trn = _train(cache, tmp_path / "trn", temporal="trn", num_segments=2, relation_dim=8)
    assert "target_test/verb/top1" in trn.metrics  # maps cut to the TSN snippets [0, 2] of 3
    _train(cache, tmp_path / "off", spatial="off")
    spatial_scores = runs.read_predictions(tmp_path / "spatial", "target_test")["scores"]["verb"]
    pooled_scores = runs.read_predictions(tmp_path / "off", "target_test")["scores"]["verb"]
    assert not np.allclose(spatial_scores, pooled_scores)  # the maps were used


def test_backbone_stand_in_normalises_each_domain_over_the_channels():
    """domain_norm: Linear -> BatchNorm -> ReLU over the channels of vectors and of maps, the
    BatchNorm with each domain's own statistics in training and at evaluation."""
    generator = torch.Generator().manual_seed(0)
    inputs = {"rgb": (3, 4), "flow": (3, 4), "audio": (3, 4)}
    head = _head(inputs, dropout=0.0, spatial="on")
    assert set(head.backbone) == {"rgb", "flow", "audio"}

    def batch(shift: float, size: int = 16):
        maps = {
            f"spatial/{m}": torch.rand(size, 3, 4, 2, 2, generator=generator) + shift
            for m in ("rgb", "flow")
        }
        vectors = {m: maps[f"spatial/{m}"].mean(dim=(-2, -1)) for m in ("rgb", "flow")}
        return {**maps, **vectors, "audio": torch.rand(size, 3, 4, generator=generator) + shift}

    seen = {}
    handle = head.backbone["rgb"][1].register_forward_hook(
        lambda module, args, output: seen.__setitem__(module.domain, output.detach())
    )
    labels = {"verb": torch.randint(0, 4, (16,), generator=generator)}
    head.train()
    for _ in range(40):
        head.training_step(batch(0.0), labels, batch(5.0), 0.5)
    for domain in ("source", "target"):  # (B, K, H, W, C): each domain centred by its own batch
        assert seen[domain].shape[-1] == 4 and seen[domain].dim() == 5
        assert seen[domain].flatten(0, -2).mean(0).abs().max() < 1e-5
    head.eval()
    means = {}
    for statistics in ("source", "target"):
        head.before_evaluation(types.SimpleNamespace(name=f"{statistics}_test"), None)
        with torch.no_grad():
            head(batch(5.0))
        means[statistics] = seen[statistics].flatten(0, -2).mean(0).abs().max()
    assert means["target"] < 0.5 < 2.0 < means["source"], means
    handle.remove()
    assert _head(inputs, domain_norm=False).backbone is None


def test_a_run_recorded_before_domain_norm_is_rebuilt_without_it(three_modality_cache, tmp_path):
    """A run whose config.yaml predates ``domain_norm`` was trained without the stand-in: its
    head is rebuilt as trained (``HeadConfig.introduced``), so its checkpoint still loads."""
    run = tmp_path / "old"
    trained = _train(three_modality_cache, run, spatial="off", domain_norm=False)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["head_config"]["domain_norm"]
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    setup = RunSetup.from_run(run)
    assert setup.config.domain_norm is False
    embedding = head_embedding(run, max_points=64)
    assert np.isfinite(embedding.after).all() and len(embedding.after) > 0
    assert trained.metrics["target_test/verb/top1"] >= 0.0
    # a run recorded with the field keeps its value
    assert heads.config_class("cia").from_stored({"domain_norm": True}).domain_norm is True
