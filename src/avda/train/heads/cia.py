"""CIA / M3EM: "Interact before Align" (Yang, Huang, Sugano, Sato, CVPR 2022) and its EPIC-100
UDA 2021 report M3EM (arXiv 2106.10026). No public code exists: this follows the report's
equations and the CVPR supplementary; every choice the papers leave open is listed in
``docs/methods.md`` (section ``cia``).

Each modality is enhanced by the others before the domains are aligned::

    per modality m, per snippet k: F_m (c[, H, W])        rgb, flow: maps or vectors; audio: vector
      f_m = GAP(F_m)                                         (B, K, c)
      self gate   t_s = sigmoid(W2 relu(W1 f_m))             eq. 1, bottleneck c/r (r = 16)
      cross gate  t_c = sigmoid(W2' relu(W1' [f_n]_{n!=m}))  eq. 3
      F_r,m = [F_m * t_s ; F_m * t_c]                        eq. 2-4 (2c channels)
    consensus of the visual modalities only (eq. 5; RGB and flow, never audio):
      H_m = P_m F_r,m (1x1 conv to d); for scales s = 0..k pool H by 2^s, cosine of the
      rgb/flow pair at each position, upsample, sum:  C = sum_s C^s / (k + 1)   in [-1, 1]
      rgb, flow: f_m = mean_positions (1 + C) * F_r,m      (weighted average + residual)
      audio:     f_m = F_r,m        (gated by and gating the others in eq. 1-4, not in eq. 5)
    frame features f_m,k --GRL--> D_fd^m                     frame-level discriminators
    video v_m = mean_k f_m,k --GRL--> D_vd^m                  video-level discriminators
    logits = mean_m classifier_m(v_m)                         late fusion (supp. Table 3, "◊")
    L = lambda_y L_y + lambda_vd mean_m L_vd + lambda_fd mean_m L_fd      eq. 6 (1, 1, 0.5)

Audio is a vector (1024-d in the paper, supp. sec. 1): it takes part in the gating (its own
self gate, a cross gate from the visual summaries, and its summary feeds their cross gates,
M3EM sec. 2.1) and has its own classifier and discriminators, but the consensus correlates
``F_rR`` with ``F_rF`` only (M3EM sec. 2.2, eq. 5); ``audio`` must be in ``vector_modalities``.
With one visual modality there is no pair to correlate: C = 0, plain average pooling (the "Avg"
row of supp. Table 2), with a warning.

``spatial``: ``"on"`` positions are the H x W cells of each snippet's ``spatial/<modality>`` map
(RGB/flow 1024 x 7 x 7 in the paper; refused when the cache has none). ``"off"`` (avda's pooled
mode, a deviation): positions are the K snippets of the segment, the consensus re-weights
snippets in time instead of cells in space; the gating is identical in both modes (a pooled
snippet vector is the map's global average). ``"auto"`` (default) is resolved from the cache
before training (:meth:`Cia.resolve_config`) to ``"on"`` or, with a one-line warning, ``"off"``,
and the run's config.json records the resolved value.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avda.errors import CacheError, ConfigError
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    Head,
    HeadConfig,
    HeadOutput,
    align_clips,
    ordered_modalities,
)
from avda.train.heads.ta3n import snippet_indices
from avda.train.layers import (
    MultiScaleTemporalRelation,
    feature_embedding,
    grl_ramp,
    mlp,
    reverse_gradient,
    set_norm_domain,
)
from avda.train.losses import domain_adversarial_loss
from avda.train.stages import TrainingContext

log = logging.getLogger(__name__)

SPATIAL_KEY = "spatial/{}"

# The supplementary's optimiser settings per benchmark.
# reference_segments: the source training set the epochs are for (UCF101 train list: 1438;
# EPIC-55 D2: 2495), so the schedule makes the same optimiser steps on any data size.
PRESETS = {
    "ucf-hmdb": {"optimizer": "adam", "lr": 3e-3, "reference_segments": 1438},
    "epic": {"optimizer": "adam", "lr": 1e-4, "reference_segments": 2495},
    "epic-trn": {"optimizer": "sgd", "lr": 3e-3, "temporal": "trn", "reference_segments": 2495},
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CiaConfig(HeadConfig):
    # the paper's settings: ucf-hmdb, epic or epic-trn (PRESETS)
    preset: Literal["ucf-hmdb", "epic", "epic-trn"] | None = None
    lr: float = 1e-4  # the "epic" preset; "ucf-hmdb": Adam 3e-3
    reference_segments: int = 2495  # EPIC-55 D2 (see PRESETS)
    reduction: int = 16  # gating bottleneck r
    scales: int = 3  # k: consensus at 2^0 .. 2^k downsampling
    consensus_dim: int = 256  # channels of the 1x1 projection H_m
    # similarity of the consensus correlation maps
    correlation: Literal["cosine", "pearson"] = "cosine"
    # "on": consensus over the H x W cells of cached spatial maps (the paper); "off": over the K
    # snippets of pooled features (avda's pooled mode); "auto": "on" when the cache has the maps,
    # else "off" with a warning, resolved before training and recorded in the run's config.json
    spatial: Literal["auto", "on", "off"] = "auto"
    # modalities without spatial maps (audio: a 1024-d vector in the paper); gated, never in the
    # consensus
    vector_modalities: tuple[str, ...] = ("audio",)
    num_segments: int = 5  # snippets used of K cached (TSN test indices, e.g. 5 of 25)
    temporal: Literal["mean", "trn"] = "mean"  # "trn": TA3N's TRN-M over the snippets
    relation_dim: int = 256  # TRN-M bottleneck
    # how modality features are fused before the classifier
    fusion: Literal["average", "concat"] = "average"
    dropout: float = 0.5  # dropout before the classifier
    classification_weight: float = 1.0  # lambda_y
    video_adversarial_weight: float = 1.0  # lambda_vd
    frame_adversarial_weight: float = 0.5  # lambda_fd
    discriminator_hidden: int = 100  # hidden units of the domain discriminators
    grl_weight: float = 1.0  # maximum of the gradient reversal ramp lambda_p
    grl_gamma: float = 10.0  # steepness of the ramp 2 / (1 + exp(-gamma p)) - 1
    # A trainable stand-in for the fine-tuned I3D top before the interaction module, per
    # modality: Linear (identity at the start) -> BatchNorm -> ReLU over the channels, the
    # BatchNorm normalising each domain with its own statistics (source and target pass the
    # backbone apart in training); evaluation uses the evaluated domain's running averages.
    # False: the cached features enter the gating as they are (docs/methods.md).
    domain_norm: bool = True

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    # runs recorded before domain_norm existed were trained without it
    introduced: ClassVar[Mapping[str, Any]] = {"domain_norm": False}


def _gate(fan_in: int, channels: int, reduction: int) -> nn.Sequential:
    hidden = max(1, channels // reduction)
    return nn.Sequential(
        nn.Linear(fan_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid()
    )


# ``(B, K', C)`` resampled to ``(B, count, C)`` by position in the segment (adaptive averaging;
# one clip broadcast): other modalities' snippet summaries and latents are aligned with it.
align_snippets = align_clips


def _expand_channels(gate: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, K, C)`` gate shaped to broadcast over the spatial axes of ``like`` (B, K, C, *S)."""
    return gate.reshape(*gate.shape, *([1] * (like.dim() - 3)))  # (B, K, C) -> (B, K, C, 1...)


class MutualComplementarity(nn.Module):
    """Eq. 1-4 (SMR / mutual complementarity): self and cross channel gating, concatenated."""

    def __init__(self, channels: dict[str, int], reduction: int) -> None:
        super().__init__()
        self.modalities = sorted(channels)
        self.self_gates = nn.ModuleDict(
            {m: _gate(channels[m], channels[m], reduction) for m in self.modalities}
        )
        self.cross_gates = nn.ModuleDict(
            {
                m: _gate(
                    sum(channels[n] for n in self.modalities if n != m), channels[m], reduction
                )
                for m in self.modalities
            }
        )

    def forward(
        self, features: dict[str, torch.Tensor], summaries: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``features[m]`` (B, K, C[, *S]), ``summaries[m]`` = GAP (B, K, C) -> (B, K, 2C[, *S])."""
        out = {}
        for m in self.modalities:
            count = summaries[m].shape[1]
            others = torch.cat(
                [align_snippets(summaries[n], count) for n in self.modalities if n != m], dim=-1
            )
            self_gate = self.self_gates[m](summaries[m])  # t_s (B, K, C)
            cross_gate = self.cross_gates[m](others)  # t_c (B, K, C)
            x = features[m]
            out[m] = torch.cat(
                [x * _expand_channels(self_gate, x), x * _expand_channels(cross_gate, x)], dim=2
            )
        return out


def correlation_map(a: torch.Tensor, b: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Eq. 5 at every position: ``a . b / (|a| |b|)`` over axis 1 (``"pearson"`` centres first)."""
    if kind == "pearson":
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1, eps=1e-8)


class SpatialConsensus(nn.Module):
    """Eq. 5 (CMC / spatial consensus): a multi-scale correlation map of the visual modalities
    (``channels``: RGB and flow in the paper; never audio) that re-weights their positions (with
    a residual, ``1 + C``). Pairs are averaged when there are more than two; with one modality
    there is no pair, C = 0 and the positions are plainly averaged."""

    def __init__(
        self, channels: dict[str, int], *, dim: int, scales: int, correlation: str
    ) -> None:
        super().__init__()
        self.modalities = sorted(channels)
        self.scales = scales
        self.correlation = correlation
        self.pairs = list(itertools.combinations(self.modalities, 2))
        self.projections = nn.ModuleDict(
            {m: nn.Linear(channels[m], dim) for m in self.modalities} if self.pairs else {}
        )

    def consensus_spatial(self, latent: dict[str, torch.Tensor], size: tuple[int, int]):
        """``latent[m]``: (B*K, d, H, W) maps -> C (B*K, H, W)."""
        total = 0.0
        for s in range(self.scales + 1):
            scaled_size = (math.ceil(size[0] / 2**s), math.ceil(size[1] / 2**s))
            scaled = {m: F.adaptive_avg_pool2d(x, scaled_size) for m, x in latent.items()}
            mean = torch.stack(
                [correlation_map(scaled[a], scaled[b], self.correlation) for a, b in self.pairs]
            ).mean(0)  # (B*K, h_s, w_s)
            upsampled = F.interpolate(
                mean[:, None], size=size, mode="bilinear", align_corners=False
            )
            total = total + upsampled[:, 0]
        return total / (self.scales + 1)

    def consensus_temporal(self, latent: dict[str, torch.Tensor]) -> torch.Tensor:
        """``latent[m]``: (B, d, K) over snippets -> C (B, K)."""
        count = next(iter(latent.values())).shape[-1]
        total = 0.0
        for s in range(self.scales + 1):
            scaled_count = math.ceil(count / 2**s)
            scaled = {m: F.adaptive_avg_pool1d(x, scaled_count) for m, x in latent.items()}
            mean = torch.stack(
                [correlation_map(scaled[a], scaled[b], self.correlation) for a, b in self.pairs]
            ).mean(0)  # (B, K_s)
            upsampled = F.interpolate(mean[:, None], size=count, mode="linear", align_corners=False)
            total = total + upsampled[:, 0]
        return total / (self.scales + 1)

    def forward(
        self, refined: dict[str, torch.Tensor], spatial: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Frame features ``(B, K, 2C)`` of the visual modalities and the consensus map C
        (``(B, K, H, W)`` spatial, ``(B, K)`` pooled)."""
        first = refined[self.modalities[0]]
        B, count = first.shape[:2]
        if spatial:
            size = tuple(first.shape[-2:])
            for m in self.modalities:
                if tuple(refined[m].shape[-2:]) != size or refined[m].shape[1] != count:
                    raise ConfigError(
                        f"cia: spatial maps of {m} are {tuple(refined[m].shape[1:])}, of "
                        f"{self.modalities[0]} {tuple(first.shape[1:])}; the consensus needs "
                        "the same snippets and map size"
                    )
            if self.pairs:
                latent = {
                    m: self.projections[m](refined[m].movedim(2, -1))  # (B, K, H, W, d)
                    .movedim(-1, 2)
                    .flatten(0, 1)  # (B*K, d, H, W)
                    for m in self.modalities
                }
                consensus = self.consensus_spatial(latent, size).reshape(B, count, *size)
            else:
                consensus = first.new_zeros(B, count, *size)
            weights = 1.0 + consensus[:, :, None]  # (B, K, 1, H, W)
            frames = {m: (weights * refined[m]).mean(dim=(-2, -1)) for m in self.modalities}
            return frames, consensus
        if self.pairs:
            latent = {
                m: self.projections[m](align_snippets(refined[m], count)).transpose(1, 2)
                for m in self.modalities
            }  # (B, K, d) -> (B, d, K)
            consensus = self.consensus_temporal(latent)  # (B, K)
        else:
            consensus = first.new_zeros(B, count)
        weights = 1.0 + consensus[:, :, None]  # (B, K, 1), aligned to each modality's K
        frames = {
            m: align_snippets(weights, refined[m].shape[1]) * refined[m] for m in self.modalities
        }
        return frames, consensus


def _load_maps(store, modality: str, rows, clips: list[int] | None, block: int = 256):
    """Spatial maps of ``rows`` keeping ``clips``, read block by block to bound memory, in the
    cache's float16 (a batch reads them as float32: :meth:`FeatureSet.batch`)."""
    parts = []
    for start in range(0, len(rows), block):
        maps = store.load_spatial(modality, rows[start : start + block], dtype=None)
        parts.append(maps if clips is None else maps[:, clips])
    if parts:
        return np.concatenate(parts)
    array = store.spatial(modality)
    shape = (0, len(clips) if clips else array.shape[1], *array.shape[2:])
    return np.zeros(shape, dtype=array.dtype)


@register("cia")
class Cia(Head):
    Config = CiaConfig
    target_use = "always"

    def __init__(self, config: CiaConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        self.modalities = ordered_modalities(inputs)
        vectors = {m for m in config.vector_modalities if m in inputs}
        if len(self.modalities) < 2 or len(vectors) == len(self.modalities):
            raise ConfigError(
                f"cia needs two or more modalities, at least one of them visual (not in "
                f"vector_modalities {list(config.vector_modalities)}); got {self.modalities}"
            )
        if "audio" in self.modalities and "audio" not in vectors:
            raise ConfigError(
                "cia: audio must be in vector_modalities: it is gated with the others but never "
                "joins the consensus, which correlates RGB and flow only (M3EM sec. 2.2, eq. 5); "
                f"got vector_modalities={list(config.vector_modalities)}"
            )
        self.visual_modalities = [m for m in self.modalities if m not in vectors]
        if len(self.visual_modalities) < 2:
            log.warning(
                "cia: one visual modality (%s): no consensus without a second one to correlate "
                "(the paper's is RGB x flow), so C = 0 and its positions are plainly averaged "
                "(supp. Table 2 'Avg'); add flow for the consensus",
                self.visual_modalities[0],
            )
        if config.num_segments < (2 if config.temporal == "trn" else 1):
            raise ConfigError(
                f"cia: num_segments must be >= 2 with temporal='trn' (>= 1 otherwise), "
                f"got {config.num_segments}"
            )
        # The loop loads only input_clips(); a head built on all K cached clips selects itself.
        self.snippets = {m: type(self).input_clips(config, inputs[m][0]) for m in self.modalities}
        frames = {
            m: len(self.snippets[m]) if self.snippets[m] else inputs[m][0] for m in self.modalities
        }
        self.vector_modalities = vectors
        channels = {m: inputs[m][1] for m in self.modalities}
        self.backbone = (
            nn.ModuleDict({m: feature_embedding(c, c, True) for m, c in channels.items()})
            if config.domain_norm
            else None
        )
        refined = {m: 2 * c for m, c in channels.items()}
        self.interaction = MutualComplementarity(channels, config.reduction)
        self.consensus = SpatialConsensus(
            {m: refined[m] for m in self.visual_modalities},
            dim=config.consensus_dim,
            scales=config.scales,
            correlation=config.correlation,
        )
        self._warned_pooled = False
        self.dropout = nn.Dropout(config.dropout)
        if config.temporal == "trn":
            self.relations = nn.ModuleDict(
                {
                    m: MultiScaleTemporalRelation(frames[m], refined[m], config.relation_dim)
                    for m in self.modalities
                }
            )
            video_dims = {m: config.relation_dim for m in self.modalities}
        else:
            video_dims = dict(refined)
        if config.fusion == "average":
            self.classifiers = nn.ModuleDict(
                {
                    m: nn.ModuleDict(
                        {t.name: nn.Linear(video_dims[m], t.num_classes) for t in tasks}
                    )
                    for m in self.modalities
                }
            )
        else:
            total = sum(video_dims.values())
            self.classifiers = nn.ModuleDict(
                {"concat": nn.ModuleDict({t.name: nn.Linear(total, t.num_classes) for t in tasks})}
            )
        hidden = config.discriminator_hidden
        self.frame_discriminators = nn.ModuleDict(
            {m: mlp([refined[m], hidden, 2], dropout=config.dropout) for m in self.modalities}
        )
        self.video_discriminators = nn.ModuleDict(
            {m: mlp([video_dims[m], hidden, 2], dropout=config.dropout) for m in self.modalities}
        )
        self.spatial_channels = channels

    # ------------------------------------------------------------------ data
    @classmethod
    def input_clips(cls, config: CiaConfig, num_clips: int) -> list[int] | None:
        """TSN's ``num_segments`` snippets of the K cached (all when K <= num_segments, unless
        TRN-M needs exactly ``num_segments`` frames)."""
        if config.temporal == "mean" and num_clips <= config.num_segments:
            return None
        indices = snippet_indices(num_clips, config.num_segments)
        return None if indices == list(range(num_clips)) else indices

    @classmethod
    def resolve_config(
        cls, config: CiaConfig, store: Any, modalities: list[str], *, target_segments: int = 0
    ) -> CiaConfig:
        """``spatial="auto"`` made ``"on"`` when ``store`` has every visual modality's maps,
        else ``"off"`` with a one-line warning (the loop records the result in config.json);
        ``"on"`` without the maps is refused."""
        if config.spatial == "off":
            return config
        visual = [m for m in ordered_modalities(modalities) if m not in config.vector_modalities]
        missing = [m for m in visual if not store.has_spatial(m)]
        if not missing:
            return dataclasses.replace(config, spatial="on")
        if config.spatial == "on":
            raise CacheError(
                f"cia: spatial='on' but {store.path} has no spatial maps for {missing[0]!r} "
                f"(spatial/{missing[0]}); extract them with `avda extract --recipe cia`, or "
                "use --set spatial=off (consensus over the snippets of pooled features)"
            )
        log.warning(
            "cia: %s has no spatial maps for %s, so spatial=auto runs as spatial=off (recorded "
            "in the run's config): the consensus re-weights the K snippets in time, not the "
            "H x W cells of each snippet as in the paper; cache maps with `avda extract "
            "--recipe cia`, or pass --set spatial=off to choose this mode",
            store.path,
            ", ".join(missing),
        )
        return dataclasses.replace(config, spatial="off")

    def prepare(self, context: TrainingContext) -> None:
        """Attach ``spatial/<modality>`` maps (``spatial="on"``) to every feature set."""
        store = context.store
        self.config = config = type(self).resolve_config(self.config, store, self.modalities)
        if config.spatial == "off":
            log.info("cia: consensus over snippets (spatial=off, pooled features)")
            return
        visual = self.visual_modalities
        for m in visual:
            shape = store.spatial(m).shape
            if len(shape) != 5 or shape[2] != self.spatial_channels[m]:
                raise CacheError(
                    f"cia: {store.path} spatial/{m} has shape {tuple(shape)}; expected "
                    f"(N, K, {self.spatial_channels[m]}, H, W) to match the pooled features"
                )
        for feature_set in context.all_sets():
            for m in visual:
                key = SPATIAL_KEY.format(m)
                if key not in feature_set.inputs:
                    clips = type(self).input_clips(config, store.spatial(m).shape[1])
                    feature_set.inputs[key] = torch.from_numpy(
                        _load_maps(store, m, feature_set.rows, clips)
                    )
        log.info("cia: spatial consensus on the %s maps of %s", visual, store.path)

    def uses_maps(self, inputs: Batch) -> bool:
        """Whether this batch runs the spatial consensus (``config.spatial``; ``"auto"``, for a
        head used outside the loop: whether the batch has the maps, warning once if not)."""
        keys = [SPATIAL_KEY.format(m) for m in self.visual_modalities]
        spatial = self.config.spatial
        if spatial == "on":
            absent = [k for k in keys if k not in inputs]
            if absent:
                raise CacheError(
                    f"cia: spatial='on' but the batch has no {absent[0]} maps; load them with "
                    "prepare() or use spatial='off'"
                )
            return True
        if spatial == "off":
            return False
        present = all(k in inputs for k in keys)
        if not present and not self._warned_pooled:
            log.warning(
                "cia: spatial=auto and no %s maps in the batch: consensus over snippets "
                "(spatial=off), not over space as in the paper",
                ", ".join(keys),
            )
            self._warned_pooled = True
        return present

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: Batch) -> HeadOutput:
        visual = self.visual_modalities
        spatial = self.uses_maps(inputs)
        features, summaries = {}, {}
        for m in self.modalities:
            key = SPATIAL_KEY.format(m) if spatial and m in visual else m
            x = inputs[key]  # (B, K, C, H, W) maps or (B, K, C) vectors
            if self.snippets[m] is not None:
                x = x[:, self.snippets[m]]  # (B, K, ...) -> (B, num_segments, ...)
            if self.backbone is not None:  # over the channels: (B, K, C[, H, W])
                x = self.backbone[m](x.movedim(2, -1)).movedim(-1, 2)
            features[m] = x
            summaries[m] = x.mean(dim=(-2, -1)) if x.dim() == 5 else x  # GAP -> (B, K, C)
        refined = self.interaction(features, summaries)  # eq. 1-4, every modality
        frames, consensus = self.consensus({m: refined[m] for m in visual}, spatial)  # eq. 5
        for m in self.modalities:
            if m in self.vector_modalities:
                frames[m] = refined[m]  # audio: gated, not re-weighted
        if self.config.temporal == "trn":  # TRN-M relations summed over scales -> (B, R)
            videos = {m: self.relations[m](frames[m]).sum(dim=1) for m in self.modalities}
        else:
            videos = {m: frames[m].mean(dim=1) for m in self.modalities}  # (B, K, 2C) -> (B, 2C)
        logits = self.classify(videos)
        return HeadOutput(
            logits=logits,
            features=torch.cat([videos[m] for m in self.modalities], dim=1),
            extras={"frames": frames, "videos": videos, "consensus": consensus},
        )

    def classify(self, videos: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "concat" in self.classifiers:
            joint = self.dropout(torch.cat([videos[m] for m in self.modalities], dim=1))
            return {t: layer(joint) for t, layer in self.classifiers["concat"].items()}
        return {
            task.name: torch.stack(
                [self.classifiers[m][task.name](self.dropout(videos[m])) for m in self.modalities]
            ).mean(dim=0)
            for task in self.tasks
        }

    def adversarial_losses(
        self, source: HeadOutput, target: HeadOutput, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over modalities of the video- and frame-level domain losses (GRL inside)."""
        video, frame = [], []
        for m in self.modalities:
            discriminate_video = self.video_discriminators[m]
            video.append(
                domain_adversarial_loss(
                    discriminate_video(reverse_gradient(source.extras["videos"][m], scale)),
                    discriminate_video(reverse_gradient(target.extras["videos"][m], scale)),
                )
            )
            discriminate_frame = self.frame_discriminators[m]
            frame.append(
                domain_adversarial_loss(
                    discriminate_frame(reverse_gradient(source.extras["frames"][m], scale)),
                    discriminate_frame(reverse_gradient(target.extras["frames"][m], scale)),
                )
            )
        return torch.stack(video).mean(), torch.stack(frame).mean()

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ) -> dict[str, torch.Tensor]:
        if target is None:
            raise ConfigError("cia needs unlabelled target batches")
        config = self.config
        scale = config.grl_weight * grl_ramp(progress, config.grl_gamma)
        set_norm_domain(self, "source")
        source_out = self(source)
        set_norm_domain(self, "target")
        target_out = self(target)
        classification = self.classification(source_out, source_labels)
        video, frame = self.adversarial_losses(source_out, target_out, scale)
        loss = (
            config.classification_weight * classification
            + config.video_adversarial_weight * video
            + config.frame_adversarial_weight * frame
        )
        return {
            "loss": loss,
            "classification": classification,
            "video_adversarial": video,
            "frame_adversarial": frame,
            "grl_lambda": torch.tensor(scale),
        }
