"""What every head offers, and the fusion classifier most heads build on.

A head is an ``nn.Module`` built from a frozen config (``HeadConfig`` subclass), the input
shapes ``{modality: (K, D)}`` and the tasks. The contract (:class:`Head`) the loop, the staged
heads' stages and the report's embedding rely on:

- ``forward(inputs) -> HeadOutput`` (logits per task, the fused embedding) and
  ``training_step(source, source_labels, target, progress) -> {"loss": total, name: part...}``
  (``progress`` in [0, 1] drives schedules such as the GRL ramp): abstract, every head has both;
- ``target_use``: ``"never"``, ``"always"`` or ``"config"`` (the config's ``uses_target()``
  decides: RNA's DG or UDA settings); :meth:`Head.needs_target` answers for a config;
- ``staged``: ``prepare`` trains earlier stages (Audio-Adaptive), so a finished run's head can
  only be rebuilt with its stage files;
- ``adapts_at_evaluation``: ``before_evaluation`` uses the unlabelled target training set
  (AdaBN re-estimates BN statistics), so whoever predicts loads that set.

Hooks with no-op defaults:

- ``prepare(context)``: before training (and before a rebuilt head predicts): attach inputs
  (CIA's spatial maps), run or reload earlier stages (Audio-Adaptive);
- ``resolve_config(config, store, modalities, target_segments=)``: the config with the
  choices the cache and the run's data decide made explicit, before the loop records it in
  the run (CIA: ``spatial``; RNA: ``setting``);
- ``input_clips(config, num_clips)``: the cached clips the head reads, so the loop loads only
  those (TA3N: snippets 2, 7, 12, 17, 22 of 25);
- ``before_evaluation(feature_set, adaptation_set)``: called before each evaluation set is
  predicted, with the unlabelled target training set when ``adapts_at_evaluation``.

Modalities may have different numbers of clips K (one VGGSound audio window next to 5 I3D
clips): a head either pools each modality over its own clips, aligns them by position in the
segment (:func:`align_clips`), or refuses the layout in ``__init__``/``prepare`` with an avda
error. The loop runs :meth:`Head.check_evaluation` on one small batch of every evaluation set
before training, and :func:`shape_errors` turns a shape error that still escapes into a one-line
:class:`CacheError` naming the head and the inputs' shapes.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import nn

from avda.config import Config
from avda.errors import AvdaError, CacheError, ConfigError
from avda.train.data import FeatureSet, Task, batch_count, evaluation_domain
from avda.train.layers import mlp, set_norm_domain
from avda.train.losses import classification_loss
from avda.train.presets import with_preset

if TYPE_CHECKING:
    from avda.train.stages import TrainingContext

Batch = dict[str, torch.Tensor]

# The order multi-modal heads concatenate or pair modalities in (TA3N's "ALL" features are
# RGB, Flow, Audio); other modality names follow, sorted.
MODALITY_ORDER = ("rgb", "flow", "audio")


def ordered_modalities(names) -> list[str]:
    """``names`` in the canonical order: rgb, flow, audio first, any others after, sorted."""
    known = [m for m in MODALITY_ORDER if m in names]
    return known + sorted(m for m in names if m not in MODALITY_ORDER)


def align_clips(x: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, K', C)`` clip features resampled to ``(B, count, C)`` by position in the segment.

    Every recipe spreads a modality's clips evenly over the segment, so clip ``k`` of ``count``
    is matched with the clips of ``x`` that overlap it in time (adaptive average pooling): one
    clip (a segment-long audio window) is broadcast to every position, ``count`` clips are
    returned as they are, more clips are averaged, fewer repeated.
    """
    if x.shape[1] == count:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, count, *x.shape[2:])
    pooled = F.adaptive_avg_pool1d(x.transpose(1, 2), count)  # (B, C, K') -> (B, C, count)
    return pooled.transpose(1, 2)  # -> (B, count, C)


_SHAPE_WORDS = (
    "size",
    "shape",
    "dimension",
    "mat1 and mat2",
    "stack expects",
    "must match",
    "out of bounds",
    "out of range",
)


def is_shape_error(error: BaseException) -> bool:
    """Whether ``error`` is PyTorch's complaint about tensor shapes (not an avda error or OOM)."""
    if isinstance(error, AvdaError | torch.OutOfMemoryError):
        return False
    if not isinstance(error, RuntimeError | IndexError | ValueError):
        return False
    message = str(error).lower()
    return "out of memory" not in message and any(word in message for word in _SHAPE_WORDS)


def describe_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``rgb (K=5, D=1024), audio (K=1, D=512)``; maps as ``spatial/rgb (5, 1024, 7, 7)``."""
    parts = []
    for key in ordered_modalities(shapes):
        shape = tuple(shapes[key])
        if key.startswith("_"):  # pseudo labels and other per-row tensors the loop batches
            continue
        if len(shape) == 2:
            parts.append(f"{key} (K={shape[0]}, D={shape[1]})")
        else:
            parts.append(f"{key} {shape}")
    return ", ".join(parts)


@contextmanager
def shape_errors(head: str, shapes: Mapping[str, tuple[int, ...]], doing: str) -> Iterator[None]:
    """Re-raise a PyTorch shape error inside the block as one line naming the head and shapes."""
    try:
        yield
    except Exception as error:
        if "Expected more than 1 value per channel when training" in str(error):
            raise ConfigError(
                f"{head} normalises with BatchNorm, which cannot train on a batch of one "
                "segment: use batch sizes of 2 or more (--set batch_size=N "
                "--set target_batch_size=N) and sets of 2 or more segments"
            ) from error
        if not is_shape_error(error):
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CacheError(
            f"{head} cannot {doing} with the cache's inputs {describe_shapes(shapes)}: "
            f"{type(error).__name__}: {first_line}; select modalities it supports with "
            "--set modalities=[...] or use another head, and report this as a bug "
            "(AVDA_DEBUG=1 shows the traceback)"
        ) from error


log = logging.getLogger(__name__)


# Integer fields counted in items that must be at least one (layer sizes, batch sizes, ...).
_POSITIVE_INT_SUFFIXES = ("_dim", "_hidden", "_heads", "_depth", "batch_size", "_bottleneck")
_POSITIVE_INT_NAMES = ("epochs", "eval_every", "lr_steps", "num_segments", "scales", "reduction")
# Batch sizes of stages that always train a BatchNorm (audio-adaptive's audio classifier and
# encoder), which cannot normalise one example.
_BATCH_NORM_BATCH_SIZES = ("audio_batch_size", "encoder_batch_size")
# Integer fields where 0 means "none" or "same as" (target_batch_size 0: batch_size).
_NON_NEGATIVE_INT_NAMES = (
    "target_batch_size",
    "keep_last_predictions",
    "reference_segments",
    "clips",
)


def _counted(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def range_problem(name: str, value: Any) -> str | None:
    """What a head config field ``name`` expects when ``value`` is out of its range, else None.

    The rules go by the field's name, so every head (and a new one) gets them: floats are
    finite (loss weights too: they may be negative, to invert a term); ``*dropout`` in
    [0, 1); ``lr`` and ``*_lr`` > 0; ``momentum`` in [0, 1]; ``lr_gamma`` > 0;
    ``weight_decay``, ``*grad_clip``, ``feature_scale`` >= 0; ``epochs``, lr steps,
    batch and layer sizes >= 1; other ``*_epochs`` and counts where 0 means none >= 0.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "a finite number"
    if isinstance(value, int) and not isinstance(value, float):
        if name in _BATCH_NORM_BATCH_SIZES:
            return "an integer >= 2 (a BatchNorm trains on it)" if value < 2 else None
        if name == "target_batch_size" or name in _NON_NEGATIVE_INT_NAMES:
            return "an integer >= 0" if value < 0 else None
        if name in _POSITIVE_INT_NAMES or name.endswith(_POSITIVE_INT_SUFFIXES):
            return "an integer >= 1" if value < 1 else None
        if name.endswith("_epochs") or name.startswith(("cluster_", "absent_")):
            return "an integer >= 0" if value < 0 else None
        return None
    if name.endswith("dropout"):
        return "a probability in [0, 1)" if not 0 <= value < 1 else None
    if name == "labelled_target":
        return "a fraction in [0, 1)" if not 0 <= value < 1 else None
    if name == "lr" or name.endswith("_lr") or name == "lr_gamma":
        return "a number > 0" if value <= 0 else None
    if name == "momentum":
        return "a number in [0, 1]" if not 0 <= value <= 1 else None
    if name.endswith(("weight_decay", "grad_clip")) or name == "feature_scale":
        return "a number >= 0" if value < 0 else None
    # Loss weights (``*_weight``) may be negative: an inverted term is a diagnostic
    # (tests/train/test_adaptation_terms.py); they only need to be finite.
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadConfig(Config):
    """Fields every head has: which inputs, and how to optimise (defaults per head).

    ``epochs`` is the length of the head's whole schedule. Setting it (``--epochs N``,
    ``--set epochs=N``, a sweep's ``epochs``) scales every field of :attr:`stage_fields` that is
    not set explicitly by ``N / default epochs`` (rounded, at least 1): a staged head keeps its
    proportions (MM-SADA's stage 1, the Audio-Adaptive encoder stages, lr steps). A ``preset``
    sets the defaults that are scaled.

    A paper's schedule is an amount of optimisation, not a number of epochs of its dataset.
    ``reference_segments`` is the size of the training set the default epochs were set for (the
    paper's source training set; 0: epochs are literal). With ``schedule="steps"`` (the default
    while no epoch count is set explicitly) a run on N segments trains
    ``epochs * ceil(reference_segments / batch_size) / ceil(N / batch_size)`` epochs (batches
    counted as :func:`~avda.train.data.batch_count` makes them), with its
    stages, lr steps and evaluation interval scaled alike (:meth:`for_data`): the recipe's number
    of optimiser steps on a few hundred segments as on EPIC-100, and exactly the paper's epochs
    on the paper's dataset.
    """

    # Fields counted in epochs of this head's schedule (stage lengths and lr steps).
    stage_fields: ClassVar[tuple[str, ...]] = ("lr_steps",)
    # Named settings of a paper (``preset``), applied under the explicit values.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    # Fields added with a default that changed what the head computes, and the value that
    # reproduces a run recorded before them (read by :meth:`from_stored`).
    introduced: ClassVar[Mapping[str, Any]] = {}

    modalities: tuple[str, ...] = ()  # empty: every modality in the cache
    tasks: tuple[str, ...] = ()  # empty: every labelled task (verb, noun, labels)
    epochs: int = 30  # length of the whole schedule (stages and lr_steps scale with it)
    batch_size: int = 64  # labelled source segments per optimiser step
    target_batch_size: int = 0  # 0: same as batch_size
    optimizer: Literal["adam", "sgd"] = "adam"  # the optimiser
    lr: float = 1e-3  # learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD with Nesterov momentum
    weight_decay: float = 1e-4  # L2 penalty of the optimiser
    lr_steps: tuple[int, ...] = ()  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1  # lr factor at each of lr_steps
    # "step": lr * lr_gamma at each of lr_steps (epochs); "dann": lr / (1 + 10 p)^0.75 every step
    # (Ganin et al. 2016), p the training progress; "dann-ta3n": the same formula as the
    # original TA3N code applies it (avda.train.loop.ta3n_dann_factor: the first step at lr,
    # then the previous step's progress, counted from 1 / epochs)
    lr_schedule: Literal["step", "dann", "dann-ta3n"] = "step"
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    # "bf16": the training forward runs under torch.autocast in bfloat16 (weights, gradients
    # and the optimiser stay float32); 1.7x faster for TA3N on a CPU with AVX512-BF16, and on
    # GPUs. Evaluation always runs in float32.
    precision: Literal["fp32", "bf16"] = "fp32"
    standardize: bool = False  # z-score features with source-train statistics
    # > 0: scale each modality by one number so that the source-train clips' RMS L2 norm is
    # this (after standardize); 0 keeps the cached scale. See avda.train.setup.input_statistics.
    feature_scale: float = 0.0
    eval_every: int = 1  # evaluate (and checkpoint) every N epochs
    # also write the evaluation predictions of each of the last N evaluations to
    # RUN/epochs/<epoch>/predictions/ (MM-SADA reports the mean over its last 9 checkpoints)
    keep_last_predictions: int = 0
    # the training-set size the default schedule is for (0: epochs are literal); see the class
    reference_segments: int = 0
    # "steps": epochs derived from the data size (reference_segments); "epochs": as given.
    # Setting epochs or a stage field explicitly makes it "epochs".
    schedule: Literal["steps", "epochs"] = "steps"
    # fraction of the target training segments whose labels enter the classification loss
    # (semi-supervised adaptation, the CharadesEgo protocol of Choi et al.: 0.5); 0: none
    labelled_target: float = 0.0
    # which target training segments are labelled: "random", a permutation with a fixed seed;
    # "first", the first ones in the cache's (the manifest's) order among those with a label,
    # as the Audio-Adaptive authors' CharadesEgo code takes the first half of the
    # first-person training list
    labelled_target_pick: Literal["random", "first"] = "random"

    def __post_init__(self) -> None:
        """Every number in its range (:func:`range_problem`): a bad ``--set``, sweep entry or
        preset is refused here, in one line, before any data is loaded."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            for item in value if isinstance(value, tuple) else (value,):
                problem = range_problem(field.name, item)
                if problem:
                    raise ConfigError(
                        f"{type(self).__name__}.{field.name}: expected {problem}, got {item!r}"
                    )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> Self:
        values = dict(values or {})
        preset = {"preset": values["preset"]} if values.get("preset") is not None else {}
        base = with_preset(cls.__name__, cls.presets, preset)
        merged = {**base, **values}
        if "epochs" in values:
            merged.update(cls._scaled_stages(values["epochs"], base, values))
        if "schedule" not in values and any(k in values for k in ("epochs", *cls.stage_fields)):
            merged["schedule"] = "epochs"
        return super().from_dict(merged)

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> Self:
        """The config a run recorded (``config.yaml``'s ``head_config``): a field of
        :attr:`introduced` that the record lacks takes the value the head had before it, so
        a run trained then is rebuilt as it was trained."""
        return cls.from_dict({**cls.introduced, **values})

    def recipe_steps(self) -> int:
        """Optimiser steps of the default schedule on its reference set (0: no reference)."""
        if self.reference_segments <= 0:
            return 0
        preset = getattr(self, "preset", None)
        default = type(self).from_dict({"preset": preset} if preset else {})
        return default.epochs * batch_count(default.reference_segments, default.batch_size)

    def for_data(self, segments: int, head: str = "head", min_evaluations: int = 1) -> Self:
        """This config for a run on ``segments`` labelled training segments: with
        ``schedule="steps"`` the epochs (and stages, lr steps, evaluation interval) that make
        the recipe's number of optimiser steps, returned with ``schedule="epochs"``; else itself
        (with a warning when the run makes far fewer steps than the recipe).
        ``min_evaluations``: a protocol's table averages that many checkpoints (evaluations at
        the end of an epoch): derived epochs are raised to give them (a large set's recipe can
        be fewer epochs)."""
        steps_here = max(1, batch_count(segments, self.batch_size))
        recipe = self.recipe_steps()
        if self.schedule == "epochs" or recipe <= 0 or segments <= 0:
            if recipe and self.epochs * steps_here < recipe / 4:
                log.warning(
                    "%s: %s (%s of %d), its recipe makes %d; expect it to stop before it "
                    "converges (leave --epochs unset to train the recipe's amount)",
                    head,
                    _counted(self.epochs * steps_here, "optimiser step"),
                    _counted(self.epochs, "epoch"),
                    *(steps_here, recipe),
                )
            return self
        steps_there = batch_count(self.reference_segments, self.batch_size)
        recipe = self.epochs * steps_there  # this config's recipe (a protocol's, a preset's)
        epochs = max(1, round(self.epochs * steps_there / steps_here))
        eval_every = (
            max(1, round(self.eval_every * epochs / self.epochs))
            if epochs > self.epochs
            else self.eval_every
        )
        needed = (min_evaluations - 1) * eval_every + 1
        raised = epochs < needed
        if raised:
            log.info(
                "%s: the recipe's %d optimiser steps are %d epoch(s) of %d on %d segments; "
                "%d epochs, as its protocol's table averages the last %d checkpoints",
                *(head, recipe, epochs, steps_here, segments, needed, min_evaluations),
            )
            epochs = needed
        if epochs == self.epochs:
            return self.replace(schedule="epochs")
        values = self.to_dict()
        scaled = type(self)._scaled_stages(epochs, values, {})
        # raised: the line above says what it trains
        (log.debug if raised else log.info)(
            "%s: the recipe's %d optimiser steps (%d epochs of %d on %d segments) are %d epochs "
            "of %d on %d segments (--epochs N sets epochs)",
            *(head, recipe, self.epochs, steps_there, self.reference_segments),
            *(epochs, steps_here, segments),
        )
        return type(self).from_dict(
            {**values, **scaled, "epochs": epochs, "eval_every": eval_every, "schedule": "epochs"}
        )

    @classmethod
    def _scaled_stages(
        cls, epochs: Any, base: Mapping[str, Any], explicit: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The :attr:`stage_fields` not in ``explicit``, scaled to ``epochs`` total epochs."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        default_epochs = base.get("epochs", defaults["epochs"])
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            return {}  # from_dict reports the bad value
        ratio = epochs / default_epochs
        scaled: dict[str, Any] = {}
        for name in cls.stage_fields:
            if name in explicit:
                continue
            value = base.get(name, defaults[name])
            if isinstance(value, (tuple, list)):  # lr steps: those still inside the schedule
                steps = sorted({max(1, round(v * ratio)) for v in value})
                scaled[name] = tuple(v for v in steps if v < epochs)
            elif isinstance(value, int) and value > 0:
                scaled[name] = max(1, round(value * ratio))
        return scaled


@dataclasses.dataclass
class HeadOutput:
    logits: dict[str, torch.Tensor]
    features: torch.Tensor  # (B, F) the embedding the domain losses act on
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Head(nn.Module, abc.ABC):
    """Base class of all heads (the contract: module docstring)."""

    Config: type[HeadConfig] = HeadConfig
    name: str = "head"  # the registry name, set by ``heads.register``
    # Whether training draws unlabelled target batches: "never", "always", or "config" (the
    # config's ``uses_target()`` decides).
    target_use: ClassVar[Literal["never", "always", "config"]] = "never"
    staged: ClassVar[bool] = False  # ``prepare`` trains earlier stages (stage files)
    adapts_at_evaluation: ClassVar[bool] = False  # ``before_evaluation`` uses the target
    # Frozen submodules whose state the run stores elsewhere (a staged head's stage files,
    # which ``prepare`` loads): the loop's checkpoints before the last epoch leave them out;
    # the last epoch's checkpoint holds the whole head.
    stored_submodules: tuple[str, ...] = ()

    def __init__(
        self, config: HeadConfig, *, inputs: dict[str, tuple[int, int]], tasks: list[Task]
    ):
        super().__init__()
        self.config = config
        self.input_shapes = dict(inputs)
        self.tasks = list(tasks)

    def classification(self, output: HeadOutput, labels: Batch) -> torch.Tensor:
        return classification_loss(output.logits, labels, self.tasks)

    @abc.abstractmethod
    def forward(self, inputs: Batch) -> HeadOutput:
        """Logits per task and the fused embedding of a batch ``{modality: (B, K, D)}``."""

    @abc.abstractmethod
    def training_step(
        self, source: Batch, source_labels: Batch, target: Batch | None, progress: float
    ) -> dict[str, torch.Tensor]:
        """``{"loss": total, part: value, ...}`` of one step; ``target`` is None unless
        :meth:`needs_target`; ``progress`` in [0, 1] is the fraction of the schedule done."""

    @classmethod
    def needs_target(cls, config: HeadConfig) -> bool:
        """Whether training with ``config`` needs unlabelled target batches (``target_use``)."""
        if cls.target_use == "config":
            return bool(config.uses_target())
        return cls.target_use == "always"

    def prepare(self, context: TrainingContext) -> None:
        """Before training (and before a rebuilt head predicts): attach inputs, run or reload
        earlier stages. No-op by default."""

    @classmethod
    def resolve_config(
        cls, config: HeadConfig, store: Any, modalities: list[str], *, target_segments: int = 0
    ) -> HeadConfig:
        """``config`` with the choices that depend on the cache ``store`` or the run's data
        (``target_segments``: unlabelled target training segments) made explicit (CIA's
        ``spatial="auto"``, RNA's ``setting="auto"``); the loop records the result in the run's
        config."""
        return config

    @classmethod
    def input_clips(cls, config: HeadConfig, num_clips: int) -> list[int] | None:
        """Indices of the cached clips the head reads (``None``: all ``num_clips``)."""
        return None

    def before_evaluation(self, feature_set: FeatureSet, adaptation_set: FeatureSet | None) -> None:
        """Prepare to predict ``feature_set`` (``adaptation_set``: the target training set):
        every :class:`~avda.train.layers.DomainSpecificBatchNorm` of the head takes the
        statistics of the set's domain."""
        set_norm_domain(self, evaluation_domain(feature_set))

    @torch.no_grad()
    def check_evaluation(
        self, sets: Mapping[str, FeatureSet], device: str | torch.device, rows: int = 2
    ) -> None:
        """Predict the first ``rows`` segments of every set, so that a head that cannot run on
        the cache's layout fails in seconds, before training, with a one-line :class:`CacheError`.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # training draws the same numbers
                for set_name, feature_set in sets.items():
                    if not len(feature_set):
                        continue
                    shapes = {k: tuple(x.shape[1:]) for k, x in feature_set.inputs.items()}
                    index = torch.arange(min(rows, len(feature_set)))
                    with shape_errors(self.name, shapes, f"predict {set_name}"):
                        inputs, _ = feature_set.batch(index, device)
                        output = self(inputs)
                    for task in self.tasks:
                        logits = output.logits.get(task.name)
                        expected = (len(index), task.num_classes)
                        if logits is None or tuple(logits.shape) != expected:
                            got = None if logits is None else tuple(logits.shape)
                            raise CacheError(
                                f"{self.name} predicts {task.name} scores of shape {got} on "
                                f"{set_name}, expected {expected}, with the cache's inputs "
                                f"{describe_shapes(shapes)}; select other modalities with "
                                "--set modalities=[...] or use another head, and report this "
                                "as a bug"
                            )
        finally:
            self.train(was_training)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipSampling:
    """How a head that pools a modality's K clips sees them (MM-SADA's sampling, for its
    baselines and the ``unified`` protocol). The loop applies both (:mod:`avda.train.loop`)."""

    # "all": every cached clip of a segment at every step (the head averages them); "random":
    # one random clip per modality and segment at every step (MM-SADA's training sampling)
    training_clips: Literal["all", "random"] = "all"
    # "mean-features": the head averages the clips' features; "mean-scores": the head predicts
    # each clip alone and the clips' probabilities are averaged (MM-SADA's 5-clip test)
    test_clips: Literal["mean-features", "mean-scores"] = "mean-features"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FusionConfig(ClipSampling, HeadConfig):
    # avda's baselines: 30 epochs of batch 64 on EPIC-55 D2 (2495 segments, MM-SADA's default
    # source domain) = 1170 optimiser steps at any data size
    reference_segments: int = 2495
    # "late": per-modality MLPs and summed logits; "mid": one MLP on the concatenated features
    fusion: Literal["late", "mid"] = "late"
    hidden_dim: int = 512  # units of the hidden layer (per modality with late fusion)
    dropout: float = 0.5  # dropout before the classifiers


class FusionClassifier(nn.Module):
    """Clip-averaged features -> per-modality MLP -> classifiers, fused late or mid.

    late:  x_m (B,K,D_m) -mean_K-> fc_m -> h_m (B,H) -> cls_m -> logits_m ; logits = sum_m logits_m
    mid:   concat_m mean_K(x_m) (B, sum D_m) -> fc -> h (B,H) -> cls -> logits
    The embedding is concat_m h_m (late) or h (mid).
    """

    def __init__(self, inputs: dict[str, tuple[int, int]], tasks: list[Task], config: FusionConfig):
        super().__init__()
        self.fusion = config.fusion
        self.modalities = sorted(inputs)
        hidden = config.hidden_dim
        if self.fusion == "late":
            self.encoders = nn.ModuleDict(
                {
                    m: mlp([inputs[m][1], hidden], dropout=config.dropout, final_activation=True)
                    for m in self.modalities
                }
            )
            self.classifiers = nn.ModuleDict(
                {
                    m: nn.ModuleDict({t.name: nn.Linear(hidden, t.num_classes) for t in tasks})
                    for m in self.modalities
                }
            )
            self.embedding_dim = hidden * len(self.modalities)
        else:
            total = sum(inputs[m][1] for m in self.modalities)
            self.encoder = mlp([total, hidden], dropout=config.dropout, final_activation=True)
            self.classifier = nn.ModuleDict(
                {t.name: nn.Linear(hidden, t.num_classes) for t in tasks}
            )
            self.embedding_dim = hidden

    def encode(self, inputs: Batch) -> dict[str, torch.Tensor]:
        """Per-modality hidden features ``(B, H)`` (late) or ``{"fused": (B, H)}`` (mid)."""
        pooled = {m: inputs[m].mean(dim=1) for m in self.modalities}  # (B, K, D) -> (B, D)
        if self.fusion == "late":
            return {m: self.encoders[m](pooled[m]) for m in self.modalities}
        return {"fused": self.encoder(torch.cat([pooled[m] for m in self.modalities], dim=1))}

    def classify(self, hidden: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.fusion == "late":
            names = next(iter(self.classifiers.values())).keys()
            return {
                t: torch.stack([self.classifiers[m][t](hidden[m]) for m in self.modalities]).sum(0)
                for t in names
            }
        return {t: layer(hidden["fused"]) for t, layer in self.classifier.items()}

    def forward(self, inputs: Batch) -> HeadOutput:
        hidden = self.encode(inputs)
        features = torch.cat([hidden[k] for k in sorted(hidden)], dim=1)
        return HeadOutput(
            logits=self.classify(hidden), features=features, extras={"hidden": hidden}
        )
