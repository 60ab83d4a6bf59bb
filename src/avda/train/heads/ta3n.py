"""TA3N: Temporal Attentive Adversarial Adaptation Network (Chen et al., ICCV 2019).

The EPIC-KITCHENS-100 UDA baseline configuration of the authors' code
(``jonmun/EPIC-KITCHENS-100_UDA_TA3N``: ``baseline_type=video``, ``frame_aggregation=trn-m``,
``add_fc=1``, ``fc_dim=512``, ``share_params=Y``, ``use_attn=TransAttn``), on cached features::

    x_m (B, 25, D_m) --snippets [2, 7, 12, 17, 22]--> concat rgb, flow, audio (B, 5, sum D_m)
      -> Linear(sum D_m -> 512) -> ReLU -> Dropout(0.5) = frame features f (B, 5, 512)
           f --GRL(beta_2)--> Linear(512->512) -> ReLU -> Linear(512->2)        frame domain
      -> TRN-M: scales 5..2, fixed relation subsets -> r (B, 4, 256)
           r_s --GRL(beta_0)--> Linear(256->256) -> ReLU -> Linear(256->2)     relation domain d_s
           r_s <- (1 + w_s) r_s,  w_s = 1 - H(softmax(d_s))                     domain attention
      -> sum over scales -> Dropout(0.5) = video feature v (B, 256)
           v --GRL(beta_1)--> Linear(256->256) -> ReLU -> Linear(256->2)       video domain d_v
           v -> Linear(256 -> C_task) per task (verb 97, noun 300)              logits

    L = L_y + (L_d^relation + L_d^video + L_d^frame) + gamma * L_ae
    L_y   = mean over tasks of CE (0.5 (CE_verb + CE_noun)), source only
    L_d   = CE of each discriminator, source = 0, target = 1, weight 1
    L_ae  = mean over tasks of mean_j (1 + H(d_v,j)) H(y_j), source and target
    beta  = (0.75, 0.75, 0.5) * (2 / (1 + exp(-1 * p')) - 1), p' = p + 1 / epochs
    gamma = 0.003

    use_target=false (the authors' --use_target none, the protocols' source-only): L = L_y,
    trained on source batches alone (the loop draws no target batch)

    frame_aggregation="avgpool" (the authors' --frame_aggregation avgpool, the paper's
    TemPooling): v = Dropout(0.5)(mean over the frames of f) (B, 512), no TRN-M and no relation
    discriminators; with domain_attention the frames are weighted (1 + w_f) by the frame
    discriminator's attention before the mean. Their models.py fills the relation slot of its
    domain predictions with the video discriminator's, which --place_adv Y Y Y adds again:
    L_d = 2 L_d^video + L_d^frame, as there.

The ICCV 2019 paper was not available to us, so its equation numbers could not be checked;
the terms keep its names (L_y, L_d, L_ae, domain attention). Every number above is the
authors' EPIC-100 code (see ``docs/methods.md``, section ``ta3n``): the GRL only scales the
gradient reaching the features (discriminators get full-strength gradients); nothing is
detached, so the classification loss also trains the relation discriminators through the
attention; ``p'`` is the authors' progress, which starts at ``1 / epochs`` because
their epochs count from 1. Weights and biases of the shared, frame, video and classifier
layers start at ``N(0, 0.001)`` and 0; TRN-M and relation discriminators use PyTorch's
defaults. :func:`convert_authors_state_dict` loads the authors' ``checkpoint.pth.tar``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from avda.errors import CheckpointError, ConfigError
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    Head,
    HeadConfig,
    HeadOutput,
    evaluation_domain,
    ordered_modalities,
)
from avda.train.layers import MultiScaleTemporalRelation, grl_ramp, reverse_gradient
from avda.train.losses import attentive_entropy, domain_adversarial_loss, domain_attention

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ta3nConfig(HeadConfig):
    # optimisation: script_test_ta3n.sh of the EPIC-100 repository
    epochs: int = 30
    batch_size: int = 128
    reference_segments: int = 16115  # EPIC-100 source_train: 30 x 126 = 3780 optimiser steps
    target_batch_size: int = 207  # 128 * 26115 / 16115 (target/source training segments)
    optimizer: Literal["adam", "sgd"] = "sgd"
    lr: float = 3e-3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    # The authors divide lr by 10 at the start of (1-based) epochs 10 and 20, i.e. after 9 and
    # 19 finished epochs, which is what avda's lr_steps count.
    lr_steps: tuple[int, ...] = (9, 19)
    lr_gamma: float = 0.1
    grad_clip: float = 20.0
    # architecture
    num_segments: int = 5  # snippets used of the K cached (TSN test indices: 2,7,12,17,22 of 25)
    # the video feature: "trn-m" (TA3N's relations) or "avgpool" (the mean of the frames: the
    # authors' --frame_aggregation avgpool, the paper's TemPooling baselines)
    frame_aggregation: Literal["trn-m", "avgpool"] = "trn-m"
    shared_dim: int = 512  # fc_dim (min(fc_dim, input dim) as in the code)
    relation_dim: int = 256  # TRN-M bottleneck
    frame_dropout: float = 0.5  # dropout_i
    video_dropout: float = 0.5  # dropout_v
    domain_attention: bool = True  # use_attn=TransAttn
    init_std: float = 0.001  # std of the normal init of the classifier layers
    # losses
    beta: tuple[float, ...] = (0.75, 0.75, 0.5)  # GRL scale: relation, video, frame
    beta_warmup: bool = True  # --dann_warmup: beta * (2 / (1 + exp(-gamma p')) - 1)
    beta_ramp_gamma: float = 1.0  # the EPIC-100 code's -1.0 * p (the original repo: 10)
    # levels (relation, video, frame) whose beta is the authors' negative --beta: the ramp
    # 2 / (1 + exp(-beta_ramp_gamma p)) - 1 at each epoch's first step, kept for the epoch
    ramped_beta: tuple[str, ...] = ()
    attentive_entropy_weight: float = 0.003  # gamma
    # False: the authors' --use_target none (their baseline): main.py computes neither the
    # domain classifiers' losses nor the attentive entropy, so the discriminators get no
    # gradient from a domain loss and none counts toward grad_clip's norm. The forward is
    # unchanged: with domain_attention the attention still reads the relation discriminators.
    # The loop then draws no target batch (main.py loads and forwards them for nothing).
    use_target: bool = True
    # runs recorded before use_bn existed were trained without it
    introduced: ClassVar[Mapping[str, Any]] = {"use_bn": "none"}
    # use_bn: "AdaBN" (the authors' --use_bn AdaBN) puts a BatchNorm1d per domain (bn_shared_S
    # / bn_shared_T, each with its own statistics and affine) between the shared layer and its
    # ReLU, as their domainAlign; evaluation normalises a target set with the target's, a
    # source set with the source's. "none": the EPIC-100 script's setting (protocol
    # ta3n-epic100). AdaBN is the default because without it the discriminators' reversed
    # gradients on the concatenated feature collapse the target on shifted sets (docs/methods.md).
    use_bn: Literal["none", "AdaBN"] = "AdaBN"

    def uses_target(self) -> bool:
        """Whether training reads target batches: not with ``use_target=false``."""
        return self.use_target

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [level for level in self.ramped_beta if level not in BETA_LEVELS]
        if unknown:
            raise ConfigError(
                f"Ta3nConfig.ramped_beta: expected levels of {', '.join(BETA_LEVELS)} "
                f"(comma-separated), got {', '.join(map(str, unknown))}"
            )
        if not self.use_target and self.use_bn != "none":
            raise ConfigError(
                f"Ta3nConfig: use_target=false trains without target, so use_bn={self.use_bn} "
                "has no target statistics (the authors' main.py turns it off); add "
                "--set use_bn=none"
            )


BETA_LEVELS = ("relation", "video", "frame")  # the order of beta


def snippet_indices(num_clips: int, num_segments: int) -> list[int]:
    """TSN's test-mode snippet choice (``TSNDataSet._get_test_indices``), 0-based.

    The centre of each of ``num_segments`` equal parts: ``int(t / 2 + t * i)``, ``t = K / n``;
    25 snippets give [2, 7, 12, 17, 22]. Fewer snippets than segments repeat the last one.
    """
    if num_clips >= num_segments:
        tick = num_clips / num_segments
        return [int(tick / 2.0 + tick * i) for i in range(num_segments)]
    return list(range(num_clips)) + [num_clips - 1] * (num_segments - num_clips)


def _normal_init(layer: nn.Linear, std: float) -> nn.Linear:
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


def _discriminator(size: int, std: float | None) -> nn.Sequential:
    first, second = nn.Linear(size, size), nn.Linear(size, 2)
    if std is not None:
        _normal_init(first, std)
        _normal_init(second, std)
    return nn.Sequential(first, nn.ReLU(), second)


@register("ta3n")
class Ta3n(Head):
    Config = Ta3nConfig
    target_use = "config"  # use_target=false trains on source batches alone

    def __init__(self, config: Ta3nConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        relations = config.frame_aggregation == "trn-m"
        if config.num_segments < (2 if relations else 1):
            raise ConfigError(
                f"ta3n: num_segments must be >= 2 for TRN-M relations, got {config.num_segments}"
                if relations
                else f"ta3n: num_segments must be >= 1, got {config.num_segments}"
            )
        if len(config.beta) != 3:
            raise ConfigError(
                f"ta3n: beta needs 3 values (relation, video, frame), got {list(config.beta)}"
            )
        self.modalities = ordered_modalities(inputs)
        clips = {inputs[m][0] for m in self.modalities}
        if len(clips) != 1:
            raise ConfigError(
                "ta3n concatenates the modalities snippet by snippet, so every modality needs "
                f"the same number of clips; got { ({m: inputs[m][0] for m in self.modalities}) }; "
                "give it each modality's Ta3n.input_clips snippets, as avda train does (a "
                "modality with fewer clips repeats its last)"
            )
        num_clips = clips.pop()
        # The loop loads the selected snippets already (input_clips); a head built on all K
        # cached snippets selects them itself.
        self.snippets = (
            None
            if num_clips == config.num_segments
            else snippet_indices(num_clips, config.num_segments)
        )
        feature_dim = sum(inputs[m][1] for m in self.modalities)
        shared = min(config.shared_dim, feature_dim)
        std = config.init_std
        self.shared = _normal_init(nn.Linear(feature_dim, shared), std)
        # AdaBN (use_bn): one BatchNorm per domain; the domain of an evaluation set is set by
        # before_evaluation.
        self.shared_norms = (
            nn.ModuleDict({"source": nn.BatchNorm1d(shared), "target": nn.BatchNorm1d(shared)})
            if config.use_bn != "none"
            else None
        )
        self.evaluation_domain = "target"
        self.frame_dropout = nn.Dropout(config.frame_dropout)
        self.frame_discriminator = _discriminator(shared, std)
        # TemPooling (avgpool): the video feature is the mean of the shared frame features
        self.relation = (
            MultiScaleTemporalRelation(config.num_segments, shared, config.relation_dim)
            if relations
            else None
        )
        self.relation_discriminators = nn.ModuleList(
            _discriminator(config.relation_dim, None)
            for _ in (self.relation.scales if self.relation is not None else ())
        )
        video_dim = config.relation_dim if relations else shared
        self.video_dropout = nn.Dropout(config.video_dropout)
        self.video_discriminator = _discriminator(video_dim, std)
        self.classifiers = nn.ModuleDict(
            {t.name: _normal_init(nn.Linear(video_dim, t.num_classes), std) for t in tasks}
        )

    @classmethod
    def input_clips(cls, config: Ta3nConfig, num_clips: int) -> list[int] | None:
        indices = snippet_indices(num_clips, config.num_segments)
        return None if indices == list(range(num_clips)) else indices

    def beta(self, progress: float) -> tuple[float, float, float]:
        """GRL scales (relation, video, frame) at training progress ``p`` in [0, 1)."""
        config = self.config
        epochs = max(config.epochs, 1)
        beta = list(config.beta)
        if config.ramped_beta:  # the authors' negative --beta: the ramp at the epoch's start
            epoch = math.floor(progress * epochs + 1e-9) + 1  # 1-based
            at_epoch_start = grl_ramp(epoch / epochs, config.beta_ramp_gamma)
            for level in config.ramped_beta:
                beta[BETA_LEVELS.index(level)] = at_epoch_start
        if not config.beta_warmup:
            return tuple(beta)  # type: ignore[return-value]
        authors_progress = progress + 1.0 / epochs
        ramp = grl_ramp(authors_progress, config.beta_ramp_gamma)
        return tuple(b * ramp for b in beta)  # type: ignore[return-value]

    def normalise(self, u: torch.Tensor, source_size: int | None) -> torch.Tensor:
        """AdaBN of the shared layer's output ``u`` (B, F, S): the first ``source_size``
        samples with the source BN, the rest with the target's (``None``: all with the BN of
        the evaluation domain)."""
        if self.shared_norms is None:
            return u
        B, F, S = u.shape
        if source_size is None:
            return self.shared_norms[self.evaluation_domain](u.reshape(B * F, S)).reshape(B, F, S)
        source = self.shared_norms["source"](u[:source_size].reshape(-1, S))
        target = self.shared_norms["target"](u[source_size:].reshape(-1, S))
        return torch.cat([source, target]).reshape(B, F, S)

    def before_evaluation(self, feature_set, adaptation_set) -> None:
        self.evaluation_domain = evaluation_domain(feature_set)

    def run(
        self, inputs: Batch, beta: tuple[float, float, float], source_size: int | None = None
    ) -> HeadOutput:
        x = torch.cat([inputs[m] for m in self.modalities], dim=-1)  # (B, K, sum D_m)
        if self.snippets is not None:
            x = x[:, self.snippets]  # (B, K, D) -> (B, num_segments, D)
        shared = self.normalise(self.shared(x), source_size)  # (B, F, S)
        frames = self.frame_dropout(torch.relu(shared))  # (B, F, S)
        frame_domain = self.frame_discriminator(reverse_gradient(frames, beta[2]))  # (B, F, 2)
        extras = {"frame_domain": frame_domain}
        if self.relation is None:  # avgpool (aggregate_frames): attention from the frames'
            attention = domain_attention(frame_domain)  # (B, F)
            if self.config.domain_attention:
                frames = (1.0 + attention).unsqueeze(-1) * frames
            video = self.video_dropout(frames.mean(dim=1))  # (B, S)
        else:
            relations = self.relation(frames)  # (B, F-1, R)
            relation_domain = torch.stack(
                [
                    discriminator(reverse_gradient(relations[:, scale], beta[0]))
                    for scale, discriminator in enumerate(self.relation_discriminators)
                ],
                dim=1,
            )  # (B, F-1, 2)
            extras["relation_domain"] = relation_domain
            attention = domain_attention(relation_domain)  # (B, F-1)
            if self.config.domain_attention:
                relations = (1.0 + attention).unsqueeze(-1) * relations
            video = self.video_dropout(relations.sum(dim=1))  # (B, R)
        video_domain = self.video_discriminator(reverse_gradient(video, beta[1]))  # (B, 2)
        logits = {name: layer(video) for name, layer in self.classifiers.items()}
        extras.update(video_domain=video_domain, attention=attention)
        return HeadOutput(logits=logits, features=video, extras=extras)

    def forward(self, inputs: Batch) -> HeadOutput:
        return self.run(inputs, (0.0, 0.0, 0.0))

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ):
        config = self.config
        beta = self.beta(progress)
        if not config.use_target:  # main.py with --use_target none: the classification alone
            # of the source rows (every layer is per-sample without AdaBN, which use_target
            # false refuses: a target batch beside them would change none of their outputs)
            classification = self.classification(self.run(source, beta), source_labels)
            return {"loss": classification, "classification": classification}
        # One forward over source and target together: every layer is per-sample (AdaBN's
        # norms see each domain's rows apart), so this equals the authors' two passes, with
        # larger, faster matmuls.
        size = len(next(iter(source.values())))
        joint = self.run(
            {m: torch.cat([source[m], target[m]]) for m in self.modalities}, beta, size
        )
        source_out, target_out = _split_output(joint, size)
        classification = self.classification(source_out, source_labels)
        adversarial = {
            level: domain_adversarial_loss(source_out.extras[key], target_out.extras[key])
            for level, key in (
                ("relation", "relation_domain"),
                ("video", "video_domain"),
                ("frame", "frame_domain"),
            )
            if key in source_out.extras
        }
        video_domain = torch.cat(
            [source_out.extras["video_domain"], target_out.extras["video_domain"]]
        )
        entropy_terms = [
            attentive_entropy(
                torch.cat([source_out.logits[t.name], target_out.logits[t.name]]),
                video_domain,
                t.multi_label,
            )
            for t in self.tasks
        ]
        entropy = torch.stack(entropy_terms).mean()
        total_adversarial = sum(adversarial.values())
        if self.relation is None:  # models.py's relation slot holds the video prediction,
            total_adversarial = total_adversarial + adversarial["video"]  # --place_adv Y Y Y
        # main.py adds the attentive entropy only when the attention is on (use_attn != none)
        entropy_weight = config.attentive_entropy_weight if config.domain_attention else 0.0
        loss = classification + total_adversarial + entropy_weight * entropy
        return {
            "loss": loss,
            "classification": classification,
            **{f"adversarial_{level}": value for level, value in adversarial.items()},
            "attentive_entropy": entropy,
            "beta_relation": torch.tensor(beta[0]),
        }


def _split_output(output: HeadOutput, size: int) -> tuple[HeadOutput, HeadOutput]:
    """The first ``size`` samples of a joint forward and the rest."""

    def part(keep: slice) -> HeadOutput:
        return HeadOutput(
            logits={k: v[keep] for k, v in output.logits.items()},
            features=output.features[keep],
            extras={k: v[keep] for k, v in output.extras.items()},
        )

    return part(slice(None, size)), part(slice(size, None))


def authors_key_map(
    num_segments: int,
    tasks: list[str],
    use_bn: bool = False,
    original: bool = False,
    relations: bool = True,
) -> dict[str, str]:
    """Parameter names of the authors' ``VideoModel`` -> this head's, for the modules TA3N uses
    (``use_bn``: with AdaBN's ``bn_shared_S/T`` and their running statistics; ``original``:
    ``cmhungsteve/TA3N``'s single classifier ``fc_classifier_video_source`` for the one task,
    instead of the EPIC-100 code's ``fc_classifier_video_<task>_source``; ``relations=False``:
    ``frame_aggregation avgpool``, without the TRN-M and relation discriminators).

    The authors' model also holds modules the EPIC-100 configuration never uses
    (``fc_feature_source``, ``fc_feature_video_source(_2)``, frame-level classifiers,
    ``bn_trn_S/T``, ``bn_source_*``); they have no counterpart here.
    """
    pairs = {
        "fc_feature_shared_source": "shared",
        "fc_feature_domain": "frame_discriminator.0",
        "fc_classifier_domain": "frame_discriminator.2",
        "fc_feature_domain_video": "video_discriminator.0",
        "fc_classifier_domain_video": "video_discriminator.2",
    }
    for scale in range(num_segments - 1 if relations else 0):
        pairs[f"TRN.fc_fusion_scales.{scale}.1"] = f"relation.fusions.{scale}.1"
        pairs[f"relation_domain_classifier_all.{scale}.0"] = f"relation_discriminators.{scale}.0"
        pairs[f"relation_domain_classifier_all.{scale}.2"] = f"relation_discriminators.{scale}.2"
    if original:
        if len(tasks) != 1:
            raise CheckpointError(
                f"the original TA3N has one classifier; this head has tasks {tasks}: build it "
                "with one task (--set tasks=verb)"
            )
        pairs["fc_classifier_video_source"] = f"classifiers.{tasks[0]}"
    else:
        for task in tasks:
            pairs[f"fc_classifier_video_{task}_source"] = f"classifiers.{task}"
    keys = {
        f"{theirs}.{kind}": f"{ours}.{kind}"
        for theirs, ours in pairs.items()
        for kind in ("weight", "bias")
    }
    if use_bn:
        for theirs, ours in (("bn_shared_S", "source"), ("bn_shared_T", "target")):
            for kind in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                keys[f"{theirs}.{kind}"] = f"shared_norms.{ours}.{kind}"
    return keys


def convert_authors_state_dict(
    state_dict: Mapping[str, torch.Tensor], head: Ta3n
) -> dict[str, torch.Tensor]:
    """This head's ``state_dict`` from the authors' (``checkpoint['state_dict']``, ``module.``
    prefix optional), of either repository (the original's single classifier is recognised by
    its name); every mapped key must exist with this head's shape.
    """
    ours = head.state_dict()
    plain = {key.removeprefix("module."): value for key, value in state_dict.items()}
    mapping = authors_key_map(
        head.config.num_segments,
        [t.name for t in head.tasks],
        head.shared_norms is not None,
        original="fc_classifier_video_source.weight" in plain,
        relations=head.relation is not None,
    )
    converted = {}
    for theirs, name in mapping.items():
        if theirs not in plain:
            raise CheckpointError(
                f"the TA3N checkpoint has no {theirs!r} (needed for {name!r}); is it a TA3N "
                "checkpoint with add_fc=1 and the head's frame_aggregation (EPIC-100: "
                "verb/noun classifiers; the original: one), trained with the head's use_bn?"
            )
        if tuple(plain[theirs].shape) != tuple(ours[name].shape):
            raise CheckpointError(
                f"TA3N checkpoint {theirs!r} has shape {tuple(plain[theirs].shape)}, the head's "
                f"{name!r} has {tuple(ours[name].shape)}: build the head with the checkpoint's "
                "modalities, tasks and num_segments"
            )
        converted[name] = plain[theirs]
    missing = sorted(set(ours) - set(converted))
    if missing:
        raise CheckpointError(f"internal: TA3N key map misses {missing}")
    unused = sorted(set(plain) - set(mapping))
    if unused:
        log.info("TA3N checkpoint: %d tensors of unused modules ignored", len(unused))
    return converted


__all__ = [
    "BETA_LEVELS",
    "Ta3n",
    "Ta3nConfig",
    "authors_key_map",
    "convert_authors_state_dict",
    "snippet_indices",
]
