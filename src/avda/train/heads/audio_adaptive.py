"""Audio-Adaptive activity recognition across domains (Zhang, Doughty, Shao, Snoek, CVPR 2022).

``avda train --head audio-adaptive`` runs the whole pipeline: the loop calls :meth:`prepare`,
which runs (or reloads, see :mod:`avda.train.audio_adaptive.pipeline`) stages 1-6a under
``RUN/stages/``, then the loop trains the audio-infused recognizers (stage 6b) and evaluates
the two streams fused (stage 7)::

    source audio ─► [1] audio classifier (frozen after) ──► audio embedding a, probabilities
    source audio ─► [2] per-class k-means + Elbow ─► clusters ─► [3] audio-balanced weights w
    target audio ─► [1] ─► [4] pseudo-absent labels (r least likely classes)
    per visual stream v (rgb, flow):
      visual v, audio ─► [5] audio-adaptive encoder E_v (eq. 1-4; frozen after)
      target ─► E_v ─► [6a] hard pseudo labels ŷ_v (by default one ŷ: every E_v's and
                        the audio classifier's product, refined by class centroids)
      E_v clip features, a ─► [6b] audio-infused recognizer R_v (eq. 7), loss eq. 8
    [7] p(y) ∝ prod_v softmax(R_v)      (``stream_fusion="product"``; the reference's
                                          calc_acc.py: mean_v softmax(R_v), ``"mean"``)

The head's logits are ``log_softmax(sum_v log_softmax(R_v))`` (with ``"mean"``: ``log mean_v
softmax(R_v)``), so the loop's softmax gives the stage-7 fusion; with ``centroid_weight`` w > 0
(off by default) ``w`` times the streams' summed cosines with the class centroids of the
stage-6a pseudo labels (:class:`NearestCentroids`) is added before the renormalisation. A
multi-label task (CharadesEgo's ``labels``) runs the authors' ``CharadesEgo/`` variant
(:mod:`avda.train.audio_adaptive.pipeline`, ``docs/methods.md``): binary cross-entropy,
per-class pseudo-absent labels (``absent_gamma``), no stage 6a (the recognizer learns from the
labelled target rows of ``labelled_target``), logits ``logit(mean_v sigmoid(R_v))``.
Defaults are the reference's (``EPIC-rgb-audio/`` and ``EPIC-flow-audio/`` ``train_*.py``,
``config.py``), except where ``docs/methods.md`` says otherwise: recognizer Adam 7e-4, weight
decay 1e-4, batch 8 + 8, a constant lr (the reference builds ``StepLR(3, 0.1)`` but never steps
it, so ``lr_steps`` is empty), 29 epochs (RGB) and 24 (flow, ``flow_epochs``); encoder Adam 1e-4
for 15 epochs (RGB; presets for the EPIC-55 sources D1 2e-4, D2 9e-5) and 1e-4 for 17 epochs
with gradients clipped to norm 1 (flow: ``flow_encoder_lr``, ``flow_encoder_epochs``,
``flow_encoder_grad_clip``, every source), and the flow recognizer keeps one class token per
clip (``flow_class_tokens``); audio classifier Adam 1e-2 for 4 epochs. The stream named
``flow_modality`` takes the flow settings, every other visual stream the RGB ones
(:meth:`AudioAdaptive.stream_settings`). The deviations forced by cached features (pooled
features in place of SlowFast ``layer3``/``layer4``, the MLP audio classifier) are listed in
``docs/methods.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from avda.errors import CacheError, ConfigError
from avda.train.audio_adaptive.audio_classifier import PooledAudioClassifier
from avda.train.audio_adaptive.encoder import AudioAdaptiveEncoder, EncoderOutput, group_clips
from avda.train.audio_adaptive.losses import multilabel_recognizer_loss, recognizer_loss
from avda.train.audio_adaptive.pipeline import (
    AUDIO_EMBEDDING_KEY,
    ENCODED_KEY,
    PSEUDO_LABEL_KEY,
    AudioAdaptiveStages,
)
from avda.train.audio_adaptive.recognizer import (
    SOURCE,
    TARGET,
    AudioInfusedRecognizer,
    RecognizerOutput,
)
from avda.train.heads import register
from avda.train.heads._base import (
    Batch,
    Head,
    HeadConfig,
    HeadOutput,
    ordered_modalities,
    shape_errors,
)
from avda.train.layers import per_domain
from avda.train.stages import TrainingContext

log = logging.getLogger(__name__)

SPATIAL_KEY = "spatial/{}"
# (N,) 1 on the labelled set's rows from a target domain (multi-label, semi-supervised)
LABELLED_TARGET_KEY = "_labelled_target"

# Stage-5 learning rates of the reference's config.py, by EPIC-55 source domain.
PRESETS = {
    "epic55-source-D1": {"encoder_lr": 2e-4},
    "epic55-source-D2": {"encoder_lr": 9e-5},
    "epic55-source-D3": {"encoder_lr": 1e-4},
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AudioAdaptiveConfig(HeadConfig):
    """Stage settings; ``epochs``, ``lr``, ``lr_steps``, ``batch_size`` are the recognizer's."""

    # the source domain of the paper's EPIC-55 schedules (sets the epochs)
    preset: Literal["epic55-source-D1", "epic55-source-D2", "epic55-source-D3"] | None = None
    tasks: tuple[str, ...] = ("verb",)
    audio_modality: str = "audio"  # the modality the audio classifier and clusters use
    visual_modalities: tuple[str, ...] = ()  # empty: every other modality, one stream each
    # stage 1: audio classifier
    audio_hidden_dim: int = 512  # stage 1: hidden units of the audio classifier
    audio_epochs: int = 4  # stage 1: audio classifier epochs
    audio_lr: float = 1e-2  # stage 1: audio classifier learning rate
    audio_batch_size: int = 16  # stage 1: audio classifier batch size
    # stage 2-3: clusters and audio-balanced weights
    cluster_max_k: int = 20  # stage 2: largest k of the per-class k-means (Elbow)
    cluster_knee: Literal["kneedle", "chord"] = "kneedle"  # stage 2: how the Elbow is found
    cluster_n_init: int = 10  # stage 2: k-means restarts
    balance_beta: float = 0.999  # stage 3: class-balanced weights by effective number (beta)
    # stage 4: pseudo-absent labels
    absent_classes: int = 3  # stage 4: pseudo-absent labels per target segment
    absent_weight: float = 0.01  # stage 4: weight of the pseudo-absent loss
    # stage 4, multi-label tasks: the (1 - alpha_k) * gamma fraction of target videos least
    # likely for class k are absent (the paper's gamma = 0.05; the authors' code has 0.55)
    absent_gamma: float = 0.05
    # stage 5: audio-adaptive encoder
    encoder_input: Literal["pooled", "spatial"] = "pooled"  # pooled features or spatial maps
    encoder_epochs: int = 15  # stage 5: audio-adaptive encoder epochs
    encoder_lr: float = 1e-4  # stage 5: encoder learning rate
    encoder_grad_clip: float = 0.0  # max gradient norm per part (psi, block, fc); 0 disables
    encoder_batch_size: int = 16  # stage 5: encoder batch size
    attention_dim: int = 256  # stage 5: transformer width
    attention_depth: int = 8  # stage 5: transformer blocks
    attention_heads: int = 8  # stage 5: attention heads
    attention_head_dim: int = 64  # stage 5: width per attention head
    attention_mlp_dim: int = 512  # stage 5: transformer MLP width
    attention_dropout: float = 0.15  # stage 5: transformer dropout
    attention_embedding_dropout: float = 0.1  # stage 5: dropout of the token embeddings
    encoder_bottleneck: int = 512  # stage 5: encoder output width
    encoder_dropout: float = 0.5  # stage 5: encoder dropout
    # stage 5: standardise the visual features with each domain's own BatchNorm statistics
    # before the gate, as SlowFast's BatchNorms (frozen, in training mode) treat the
    # reference's separate source and target calls (docs/methods.md: measured, it gains on
    # per-dimension visual shifts and loses some of its margin under label shift)
    domain_norm: bool = True
    # stage 5, with domain_norm: rectify the standardised features (SlowFast's layer3 ReLU);
    # off: they keep their values below the domain's mean (docs/methods.md: measured)
    domain_norm_relu: bool = False
    # stage 5 on: the clips per segment the encoders (visual clips, psi's audio tokens) and
    # the recognizers see: the K cached clips of each averaged in this many consecutive groups
    # when K is larger (the reference's 5 SlowFast clips; a 25-snippet EPIC-100 cache gives 5
    # clips of 5 snippets); 0: as cached. docs/methods.md, audio-adaptive: measured
    clips: int = 5
    # stage 6: audio-infused recognizer (trained by the loop)
    epochs: int = 29  # stage 6: recognizer epochs (the loop's length)
    batch_size: int = 8  # stage 6: recognizer batch size
    lr: float = 7e-4  # stage 6: recognizer learning rate
    # The reference builds StepLR(3, 0.1) but never calls scheduler.step(): a constant lr.
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    delegate_dim: int = 512  # stage 6: width of the audio delegate tokens
    recognizer_dim: int = 256  # stage 6: recognizer transformer width
    recognizer_depth: int = 3  # stage 6: recognizer transformer blocks
    recognizer_heads: int = 8  # stage 6: recognizer attention heads
    recognizer_head_dim: int = 64  # stage 6: width per recognizer head
    recognizer_mlp_dim: int = 512  # stage 6: recognizer MLP width
    recognizer_dropout: float = 0.15  # stage 6: recognizer dropout
    recognizer_embedding_dropout: float = 0.1  # stage 6: dropout of its token embeddings
    auxiliary_weight: float = 0.1  # stage 6: weight of the auxiliary audio terms
    audio_visual_weight: float = 0.2  # stage 6: weight of the audio-visual term in them
    # stage 6: weight of the pseudo-labelled target term, (CE_s + w CE_t) / 2 (the reference: 1)
    target_weight: float = 1.0
    # stage 6a: one hard pseudo label for every stream, the argmax of the product of every
    # stream's encoder probabilities and the audio classifier's ("product", late fusion of
    # log-probabilities; docs/methods.md: measured), of the streams' mean times the audio's
    # ("consensus", the default of 2026-12-04), or each stream's from its own encoder
    # ("stream", the reference's get_pseudo_labels.py)
    pseudo_labels: Literal["stream", "consensus", "product"] = "product"
    # stage 6a: the labels refined by class centroids in each visual stream's stage-5 features
    # (SHOT's, two rounds; "centroids", docs/methods.md: measured) or the argmax as it is
    # ("none", the reference)
    pseudo_label_refine: Literal["none", "centroids"] = "centroids"
    # stage 6a, centroids: weight of the fused log-probabilities beside the centroids' cosines
    pseudo_label_prior: float = 0.2
    # The flow stream (the reference's EPIC-flow-audio/): its own encoder lr, encoder length and
    # gradient clipping (stage 5) and recognizer length (stage 6b, at most ``epochs``, the
    # loop's length; its recognizer is left unchanged after ``flow_epochs``). Every other visual
    # stream uses encoder_lr, encoder_epochs, encoder_grad_clip and epochs.
    flow_modality: str = "flow"  # the flow stream's modality name
    flow_encoder_lr: float = 1e-4  # stage 5 for flow: encoder learning rate
    flow_encoder_epochs: int = 17  # stage 5 for flow: encoder epochs
    flow_encoder_grad_clip: float = 1.0  # stage 5 for flow: max gradient norm
    flow_epochs: int = 24  # stage 6b: flow recognizer epochs (<= epochs)
    # The reference's flow recognizer keeps one class token per clip (no mean over clips).
    flow_class_tokens: Literal["mean", "per-clip"] = "per-clip"
    # stage 7: the streams' recognizers fused by the product of their probabilities
    # ("product": the sum of their log-probabilities, as stage 6a fuses the encoders;
    # docs/methods.md: measured) or by their mean ("mean", the reference's calc_acc.py).
    # A multi-label task averages the streams' sigmoids either way.
    stream_fusion: Literal["mean", "product"] = "product"
    # stage 7: weight of a nearest-centroid classifier beside the recognizers (0: off, the
    # recognizers alone): each stream's clip-averaged stage-5 features, centred on the target
    # training set's mean, scored by cosine against the class centroids of the stage-6a
    # pseudo labels; the streams' cosines are summed and added, times this weight, to the
    # fused log-probabilities (docs/methods.md: measured). Single-label tasks only.
    centroid_weight: float = 0.0

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    # runs recorded before the consensus pseudo labels were trained on each stream's own,
    # before the cached clips were grouped into ``clips``, before ``domain_norm`` existed
    # (then without it), before the ReLU after it became optional, before the pseudo labels
    # were refined and before the recognizers were fused by their product
    introduced: ClassVar[Mapping[str, Any]] = {
        "pseudo_labels": "stream",
        "pseudo_label_refine": "none",
        "stream_fusion": "mean",
        "clips": 0,
        "domain_norm": False,
        "domain_norm_relu": True,
    }
    stage_fields: ClassVar[tuple[str, ...]] = (
        "audio_epochs",
        "encoder_epochs",
        "flow_encoder_epochs",
        "flow_epochs",
        "lr_steps",
    )


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """Stage-5 and stage-6b settings of one visual stream."""

    encoder_lr: float
    encoder_epochs: int
    encoder_grad_clip: float
    epochs: int  # recognizer epochs
    class_tokens: Literal["mean", "per-clip"] = "mean"  # the recognizer's


class NearestCentroids(nn.Module):
    """A nearest-centroid classifier on one stream's clip-averaged stage-5 features: features
    are centred on the target training set's mean and compared by cosine with the class
    centroids of the stage-6a pseudo labels (the mean of the class's unit vectors, as stage
    6a's refinement, SHOT's, builds them). A class without a pseudo-labelled segment has no
    centroid and scores 0. Buffers, so the fitted classifier is saved with the checkpoint."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("centroids", torch.zeros(num_classes, channels))

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """``features`` ``(N, C)`` of the target training segments, ``labels`` ``(N,)``."""
        features = features.to(self.mean.device, torch.float64)
        mean = features.mean(dim=0)
        unit = nn.functional.normalize(features - mean, dim=1)
        counts = nn.functional.one_hot(labels.long(), len(self.centroids)).to(unit)
        self.mean.copy_(mean)
        self.centroids.copy_(nn.functional.normalize(counts.T @ unit, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Cosines ``(B, classes)`` of ``features`` ``(B, C)`` with the class centroids."""
        unit = nn.functional.normalize(features.float() - self.mean, dim=1)
        return unit @ self.centroids.T


def _freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def _each_domain_apart(
    recognizer: AudioInfusedRecognizer,
    features: torch.Tensor,
    audio: torch.Tensor,
    is_target: torch.Tensor,
) -> RecognizerOutput:
    """The recognizer on a batch of both domains' rows in one call per domain, so that its
    BatchNorms see each domain's batch apart (``CharadesEgo/train_recognizer.py`` calls it on
    the source batch and on the labelled target batch separately); the outputs in row order.
    A domain with a single row in the batch (the loop draws both domains' rows together) is
    normalised with the running statistics: a batch statistic of one row does not exist."""
    if bool(is_target.all()) or not bool(is_target.any()):
        return recognizer(features, audio, TARGET if bool(is_target.any()) else SOURCE)
    rows = [torch.nonzero(~is_target).flatten(), torch.nonzero(is_target).flatten()]
    parts = []
    for r, domain in zip(rows, (SOURCE, TARGET), strict=True):
        norms = [m for m in recognizer.modules() if isinstance(m, nn.BatchNorm1d) and m.training]
        for m in norms if len(r) == 1 else ():
            m.eval()
        try:
            parts.append(recognizer(features[r], audio[r], domain))
        finally:
            for m in norms:
                m.train()
    back = torch.argsort(torch.cat(rows))  # concatenated order -> the batch's row order
    return RecognizerOutput(
        **{
            f.name: torch.cat([getattr(p, f.name) for p in parts])[back]
            for f in dataclasses.fields(RecognizerOutput)
        }
    )


@register("audio-adaptive")
class AudioAdaptive(Head):
    """Frozen stage-1 audio classifier and stage-5 encoders feeding trainable recognizers."""

    Config = AudioAdaptiveConfig
    target_use = "always"
    staged = True  # stages 1-6a run in prepare (stage files)
    stored_submodules = ("audio_classifier", "encoders")  # RUN/stages/*.pt

    def __init__(self, config: AudioAdaptiveConfig, *, inputs, tasks):
        super().__init__(config, inputs=inputs, tasks=tasks)
        if len(tasks) != 1:
            names = [t.name for t in tasks]
            raise ConfigError(
                f"audio-adaptive trains one task (one single-label task, or one multi-label "
                f"task such as CharadesEgo's labels), got {names}; "
                "pass --set tasks=[verb] (or [noun], or [labels])"
            )
        self.task = tasks[0]
        self.multi_label = self.task.multi_label
        if not 0.0 < config.absent_gamma <= 1.0:
            raise ConfigError(f"absent_gamma must be in (0, 1], got {config.absent_gamma}")
        if not 0.0 <= config.pseudo_label_prior < float("inf"):
            raise ConfigError(
                f"pseudo_label_prior must be a finite number >= 0, got {config.pseudo_label_prior}"
                " (0: the centroids alone; 0.2: the default)"
            )
        if not 0.0 <= config.centroid_weight < float("inf"):
            raise ConfigError(
                f"centroid_weight must be a finite number >= 0, got {config.centroid_weight}"
                " (0: the recognizers alone)"
            )
        if config.centroid_weight > 0 and self.multi_label:
            raise ConfigError(
                f"centroid_weight={config.centroid_weight} needs the single-label pseudo labels "
                f"of stage 6a, which a multi-label task ({self.task.name!r}) does not have; "
                "set --set centroid_weight=0"
            )
        audio = config.audio_modality
        if audio not in inputs:
            raise ConfigError(
                f"audio-adaptive needs the {audio!r} modality, the inputs have {sorted(inputs)}; "
                "extract audio features or set audio_modality"
            )
        others = [m for m in inputs if m != audio]
        visual = list(config.visual_modalities) or ordered_modalities(others)
        unknown = [m for m in visual if m not in inputs or m == audio]
        if not visual or unknown:
            raise ConfigError(
                f"audio-adaptive needs visual modalities besides {audio!r}: got {visual} "
                f"from inputs {sorted(inputs)}"
            )
        if config.flow_modality in visual and not 1 <= config.flow_epochs <= config.epochs:
            raise ConfigError(
                f"audio-adaptive: flow_epochs={config.flow_epochs} (the flow recognizer's "
                f"epochs) must be between 1 and epochs={config.epochs} (the length of stage "
                f"6b); set --set epochs={max(config.flow_epochs, 1)} or a smaller flow_epochs"
            )
        classes = self.task.num_classes
        if not self.multi_label and config.absent_classes >= classes:
            default = AudioAdaptiveConfig.__dataclass_fields__["absent_classes"].default
            if config.absent_classes != default or classes < 2:
                raise ConfigError(
                    f"absent_classes={config.absent_classes} must be below the number of "
                    f"classes ({classes}); set --set absent_classes=N with 1 <= N < {classes}"
                )
            # The paper's 3 (of 8 EPIC classes) cannot apply: mark all classes but one absent.
            log.warning(
                "audio-adaptive: %d classes, so absent_classes=%d (the default %d needs more)",
                *(classes, classes - 1, default),
            )
            config = config.replace(absent_classes=classes - 1)
            self.config = config
        self.visual_modalities = visual
        self.visual_channels = {v: inputs[v][1] for v in visual}
        self.audio_channels = inputs[audio][1]
        self.spatial_audio = False
        self.audio_classifier = PooledAudioClassifier(
            inputs[audio][1], self.task.num_classes, hidden_dim=config.audio_hidden_dim
        )
        self.encoders = nn.ModuleDict({v: self.make_encoder(v) for v in visual})
        self.recognizers = nn.ModuleDict({v: self.make_recognizer(v) for v in visual})
        # stage 7's nearest-centroid classifier (fitted in prepare, stored with the checkpoint)
        self.centroids = (
            nn.ModuleDict({v: NearestCentroids(classes, self.visual_channels[v]) for v in visual})
            if config.centroid_weight > 0
            else None
        )
        _freeze(self.audio_classifier)
        _freeze(self.encoders)

    # ------------------------------------------------------------------ building
    def stream_settings(self, visual: str) -> StreamSettings:
        """The flow settings for the ``flow_modality`` stream, the RGB ones for the others."""
        config = self.config
        if visual == config.flow_modality:
            return StreamSettings(
                encoder_lr=config.flow_encoder_lr,
                encoder_epochs=config.flow_encoder_epochs,
                encoder_grad_clip=config.flow_encoder_grad_clip,
                epochs=config.flow_epochs,
                class_tokens=config.flow_class_tokens,
            )
        return StreamSettings(
            encoder_lr=config.encoder_lr,
            encoder_epochs=config.encoder_epochs,
            encoder_grad_clip=config.encoder_grad_clip,
            epochs=config.epochs,
        )

    def make_encoder(self, visual: str) -> AudioAdaptiveEncoder:
        config = self.config
        return AudioAdaptiveEncoder(
            self.visual_channels[visual],
            self.audio_channels,
            self.task.num_classes,
            spatial=config.encoder_input == "spatial",
            attention_dim=config.attention_dim,
            depth=config.attention_depth,
            heads=config.attention_heads,
            head_dim=config.attention_head_dim,
            mlp_dim=config.attention_mlp_dim,
            dropout=config.attention_dropout,
            embedding_dropout=config.attention_embedding_dropout,
            bottleneck=config.encoder_bottleneck,
            classifier_dropout=config.encoder_dropout,
            domain_norm=config.domain_norm,
            domain_norm_relu=config.domain_norm_relu,
        )

    def make_recognizer(self, visual: str) -> AudioInfusedRecognizer:
        config = self.config
        return AudioInfusedRecognizer(
            self.visual_channels[visual],
            config.audio_hidden_dim,
            self.task.num_classes,
            delegate_dim=config.delegate_dim,
            dim=config.recognizer_dim,
            depth=config.recognizer_depth,
            heads=config.recognizer_heads,
            head_dim=config.recognizer_head_dim,
            mlp_dim=config.recognizer_mlp_dim,
            dropout=config.recognizer_dropout,
            embedding_dropout=config.recognizer_embedding_dropout,
            class_tokens=self.stream_settings(visual).class_tokens,
        )

    def visual_key(self, visual: str) -> str:
        return SPATIAL_KEY.format(visual) if self.config.encoder_input == "spatial" else visual

    def audio_token_key(self) -> str:
        audio = self.config.audio_modality
        return SPATIAL_KEY.format(audio) if self.spatial_audio else audio

    def encoder_inputs(
        self, visual_clips: torch.Tensor, audio_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage-5 encoder's inputs from the cached ones: each grouped into ``clips``
        clips (:func:`~avda.train.audio_adaptive.encoder.group_clips`)."""
        clips = self.config.clips
        return group_clips(visual_clips, clips), group_clips(audio_tokens, clips)

    def groups_clips(self, inputs: Batch, visual: str) -> bool:
        """Whether :meth:`encoder_inputs` changes stream ``visual``'s inputs in ``inputs``."""
        clips = self.config.clips
        keys = (self.visual_key(visual), self.audio_token_key())
        return clips > 0 and any(inputs[k].shape[1] > clips for k in keys)

    def attach_inputs(self, context: TrainingContext) -> None:
        """Faithful mode: load ``spatial/<visual>`` (and ``spatial/<audio>`` if cached) maps
        into every feature set, and size the encoders and recognizers by their channels."""
        if self.config.encoder_input != "spatial":
            return
        store = context.store
        audio = self.config.audio_modality
        for visual in self.visual_modalities:
            if not store.has_spatial(visual):
                raise CacheError(
                    f"audio-adaptive: encoder_input='spatial' but {store.path} has no spatial "
                    f"maps for {visual!r} (spatial/{visual}); extract them with `avda extract` "
                    "and a recipe with spatial=true, or use --set encoder_input=pooled"
                )
            maps = store.spatial(visual)
            if maps.ndim < 4:
                raise CacheError(
                    f"{store.path} spatial/{visual} has shape {maps.shape}; expected "
                    "(N, K, C, *S) maps"
                )
            self.visual_channels[visual] = int(maps.shape[2])
        self.spatial_audio = store.has_spatial(audio)
        wanted = [*self.visual_modalities, *([audio] if self.spatial_audio else [])]
        for feature_set in context.all_sets():
            for modality in wanted:
                key = SPATIAL_KEY.format(modality)
                if key not in feature_set.inputs:
                    maps = store.load_spatial(modality, feature_set.rows, dtype=None)
                    feature_set.inputs[key] = torch.from_numpy(maps)  # float16: per batch
        if self.spatial_audio:
            self.audio_channels = int(store.spatial(audio).shape[2])
        device = next(self.recognizers.parameters()).device
        self.encoders = nn.ModuleDict({v: self.make_encoder(v) for v in self.visual_modalities})
        self.recognizers = nn.ModuleDict(
            {v: self.make_recognizer(v) for v in self.visual_modalities}
        )
        self.encoders.to(device)
        self.recognizers.to(device)
        _freeze(self.encoders)
        log.info(
            "audio-adaptive: faithful (spatial) encoder on %s maps, channels %s",
            wanted,
            self.visual_channels,
        )

    def prepare(self, context: TrainingContext) -> None:
        """Stages 1-6a (resumable, stored in ``RUN/stages``); pseudo labels join the target set.

        One small batch of every evaluation set goes through the whole head (audio classifier,
        encoders, recognizers) first, so a layout the head cannot run on fails before stage 1.
        Then the frozen outputs (stage-1 audio embeddings, stage-5 clip features) of every
        segment of every set are computed once, stored, and attached to the sets: stage 6b and
        evaluation read them instead of running the frozen modules on every batch.
        """
        self.attach_inputs(context)
        self.check_evaluation(
            context.eval_sets or {"source_train": context.train_set}, context.device
        )
        shapes = {k: tuple(x.shape[1:]) for k, x in context.train_set.inputs.items()}
        with shape_errors(self.name, shapes, "train its stages 1-6a"):
            stages = AudioAdaptiveStages(self, context)
            stages.run()
            if self.multi_label:  # which labelled rows are target: the recognizer's two terms
                context.train_set.inputs[LABELLED_TARGET_KEY] = torch.from_numpy(
                    ~stages.source_mask
                )
            stages.attach_frozen_outputs(
                context.all_sets(), training=[context.train_set.name, context.target_set.name]
            )
            if self.centroids is not None:  # stage 7's classifier, from stage 6a's labels
                for visual, centroids in self.centroids.items():  # the stored clip features
                    clips = context.target_set.inputs[ENCODED_KEY.format(visual)]
                    labels = torch.from_numpy(stages.pseudo_labels(visual))
                    centroids.fit(clips.float().mean(dim=1), labels)

    def train(self, mode: bool = True) -> AudioAdaptive:
        super().train(mode)
        self.audio_classifier.eval()  # frozen stages stay deterministic (no dropout, fixed BN)
        self.encoders.eval()
        return self

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def _frozen(
        self, inputs: Batch, visual: str, is_target: torch.Tensor | None = None
    ) -> EncoderOutput:
        """The frozen stage-5 encoder of stream ``visual`` on a batch. ``is_target``: the rows
        of the target domain (``(B,)`` bool), normalised with its statistics (``domain_norm``);
        None: the domain ``before_evaluation`` set."""
        encoder = self.encoders[visual]
        args = self.encoder_inputs(inputs[self.visual_key(visual)], inputs[self.audio_token_key()])
        if is_target is None:
            return encoder(*args)
        return per_domain(encoder, is_target, encoder, *args)

    def _features(
        self, inputs: Batch, visual: str, is_target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stage-5 clip features ``(B, K, C_v)``: stored ones when the batch carries them."""
        stored = inputs.get(ENCODED_KEY.format(visual))
        return stored if stored is not None else self._frozen(inputs, visual, is_target).features

    @torch.no_grad()
    def _audio_embedding(self, inputs: Batch) -> torch.Tensor:
        """Stage-1 audio embedding ``(B, A)``: the stored one when the batch carries it."""
        stored = inputs.get(AUDIO_EMBEDDING_KEY)
        if stored is not None:
            return stored
        return self.audio_classifier(inputs[self.config.audio_modality])[1]

    def forward(self, inputs: Batch) -> HeadOutput:
        audio = self._audio_embedding(inputs)
        streams, tokens, cosines = {}, [], 0.0
        for visual in self.visual_modalities:
            features = self._features(inputs, visual)
            output = self.recognizers[visual](features, audio, TARGET)
            streams[visual] = output.logits
            tokens.append(output.token)
            if self.centroids is not None:
                cosines = cosines + self.centroids[visual](features.float().mean(dim=1))
        stacked = torch.stack(list(streams.values()))  # (streams, B, C)
        if self.multi_label:  # the loop's sigmoid gives the average of the streams' sigmoids
            if len(streams) == 1:
                logits = stacked[0]
            else:
                fused = stacked.sigmoid().mean(dim=0)
                eps = torch.finfo(fused.dtype).eps
                logits = torch.logit(fused.clamp(eps, 1 - eps))
        elif self.config.stream_fusion == "product":  # stage 7: normalised product
            logits = stacked.log_softmax(dim=-1).sum(dim=0).log_softmax(dim=-1)
        else:
            fused = stacked.softmax(dim=-1).mean(dim=0)  # stage 7: average of stream softmaxes
            logits = torch.log(fused.clamp_min(torch.finfo(fused.dtype).tiny))
        if self.centroids is not None:  # stage 7 with the nearest-centroid scores
            logits = (logits + self.config.centroid_weight * cosines).log_softmax(dim=-1)
        return HeadOutput(
            logits={self.task.name: logits},
            features=torch.cat(tokens, dim=1),
            extras={"streams": streams},
        )

    def epoch_of(self, progress: float) -> int:
        """The loop's epoch (1-based) at ``progress``: the loop passes ``((epoch - 1) *
        steps_per_epoch + step) / (epochs * steps_per_epoch)``."""
        return min(self.config.epochs, int(progress * self.config.epochs + 1e-6) + 1)

    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ) -> dict[str, torch.Tensor]:
        if target is None:
            raise ConfigError("audio-adaptive needs unlabelled target batches")
        config = self.config
        labels = source_labels[self.task.name]
        epoch = self.epoch_of(progress)
        # A stream past its recognizer epochs (flow: 24 of 29) takes no part: its parameters
        # get no gradient, so Adam leaves them (and BatchNorm its statistics) unchanged.
        streams = [v for v in self.visual_modalities if epoch <= self.stream_settings(v).epochs]
        if not streams:  # only streams that have finished: an epoch that changes nothing
            return {"loss": torch.zeros((), device=labels.device, requires_grad=True)}
        if self.multi_label:
            return self._multilabel_step(source, labels, streams)
        source_audio = self._audio_embedding(source)
        target_audio = self._audio_embedding(target)
        in_source = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        in_target = torch.ones(target_audio.shape[0], dtype=torch.bool, device=labels.device)
        total = torch.zeros((), device=labels.device)
        record: dict[str, torch.Tensor] = {}
        for visual in streams:
            stored = target.get(PSEUDO_LABEL_KEY.format(visual))
            # Without stored labels (the head used outside the loop) apply the stage-6a rule.
            pseudo = (
                stored
                if stored is not None
                else self._frozen(target, visual, in_target)
                .logits.softmax(dim=-1)
                .mean(dim=1)
                .argmax(dim=-1)
            )
            recognizer = self.recognizers[visual]
            source_features = self._features(source, visual, in_source)
            source_out = recognizer(source_features, source_audio, SOURCE)
            target_out = recognizer(self._features(target, visual, in_target), target_audio, TARGET)
            parts = recognizer_loss(
                source_out.logits,
                labels,
                target_out.logits,
                pseudo,
                source_out.audio_logits,
                source_out.audio_visual_logits,
                auxiliary_weight=config.auxiliary_weight,
                audio_visual_weight=config.audio_visual_weight,
                target_weight=config.target_weight,
            )
            total = total + parts["loss"]
            for name, value in parts.items():
                record[f"{visual}/{name}"] = value.detach()
        return {"loss": total, **record}

    def _multilabel_step(
        self, source: Batch, labels: torch.Tensor, streams: list[str]
    ) -> dict[str, torch.Tensor]:
        """``CharadesEgo/train_recognizer.py``: BCE on the source rows and on the labelled
        target rows of the labelled batch (each with its domain embedding), the auxiliary
        audio terms on the source rows; the unlabelled target batch is not used (no pseudo
        labels in the reference's CharadesEgo code)."""
        config = self.config
        flag = source.get(LABELLED_TARGET_KEY)
        is_target = (
            flag.bool()
            if flag is not None
            else torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        )
        audio = self._audio_embedding(source)
        total = torch.zeros((), device=labels.device)
        record: dict[str, torch.Tensor] = {}
        for visual in streams:
            features = self._features(source, visual, is_target)
            out = _each_domain_apart(self.recognizers[visual], features, audio, is_target)
            parts = multilabel_recognizer_loss(
                out.logits,
                labels,
                is_target,
                out.audio_logits,
                out.audio_visual_logits,
                auxiliary_weight=config.auxiliary_weight,
                audio_visual_weight=config.audio_visual_weight,
                target_weight=config.target_weight,
            )
            total = total + parts["loss"]
            for name, value in parts.items():
                record[f"{visual}/{name}"] = value.detach()
        return {"loss": total, **record}
