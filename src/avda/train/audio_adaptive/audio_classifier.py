"""Stage 1 of Audio-Adaptive: the audio activity classifier, trained on labelled source audio.

Reference (``train_audio_only.py``): the VGGSound ResNet-18 (``H.pth.tar``) is frozen up to
``layer3``; a new ``layer4`` + average pool + ``fc(512 -> C)`` (``AudioAttGenModule``) is trained
with cross-entropy, Adam lr 1e-2, weight decay 1e-4, batch 16, 4 epochs. The input is the
10-s, 16-kHz, tiled segment waveform -> scipy spectrogram (257 x 1004) -> log -> per-example
z-score (``avda.extract.audio.window`` + ``vggsound_spectrogram`` compute exactly this), with
uniform noise in [-0.05, 0.05] and 9 consecutive zeroed frequency rows at training time.

Two paths:

- :class:`SpectrogramAudioClassifier` + :func:`train_spectrogram_audio_classifier`: the faithful
  one, on spectrograms (or on cached ``layer3`` maps). It takes the backbone as an argument (stage
  2 never imports ``avda.extract``: build it with ``avda.extract.backbones.create``).
  Note: the reference *means* to start ``layer4`` from the VGGSound weights, but its
  ``load_state_dict(checkpoint['model_state_dict'], strict=False)`` matches no key (they are
  prefixed ``audnet.``), so its ``layer4`` trains from a random init; ``layer4_init="random"``
  (default) reproduces that, ``"pretrained"`` copies the backbone's ``layer4``.
- :class:`PooledAudioClassifier`: the path for cached pooled audio features ``(B, K, D)`` (the
  512-d VGGSound embedding per clip): clips averaged, then ``Linear(D -> hidden) + BatchNorm +
  ReLU`` standing in for ``layer4`` + pool (the BatchNorm is layer4's: without it Adam 1e-2 on
  features of a large mean diverges in the first epoch and every unit dies, docs/methods.md),
  then ``fc``. Its hidden vector is the audio embedding the
  recognizer (stage 6) consumes, as the reference feeds it the classifier's pooled 512-d vector.
"""

from __future__ import annotations

import copy
import logging
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avda.errors import ConfigError
from avda.train.optim import make_optimizer

log = logging.getLogger(__name__)

NOISE_AMPLITUDE = 0.05
MASKED_ROWS = 9


class PooledAudioClassifier(nn.Module):
    """Cached audio features ``(B, K, D)`` -> (logits ``(B, C)``, embedding ``(B, hidden)``)."""

    def __init__(
        self, audio_dim: int, num_classes: int, *, hidden_dim: int = 512, dropout: float = 0.0
    ) -> None:
        super().__init__()
        # layer4's BatchNorm: the stage's Adam 1e-2 then trains on features of any scale and mean
        self.embed = nn.Sequential(
            nn.Linear(audio_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, num_classes)
        self.embedding_dim = hidden_dim

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(audio.mean(dim=1))  # (B, K, D) -> (B, D) -> (B, hidden)
        return self.fc(self.dropout(embedding)), embedding


def _init_like_reference(module: nn.Module) -> None:
    """``AudioAttGenModule``'s init: Kaiming-normal (fan_out) convs, BN weight ~ N(1, 0.02)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(layer.weight, mean=1.0, std=0.02)
            nn.init.constant_(layer.bias, 0.0)
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()


class SpectrogramAudioClassifier(nn.Module):
    """Frozen ResNet-18 stem..layer3 of ``backbone`` + a new ``layer4`` + pool + ``fc``.

    ::

        spectrogram (B, 1, F, T) -> [frozen conv1 .. layer3] -> (B, 256, F/16, T/16)
            -> layer4 -> avgpool -> embedding (B, 512) -> fc -> logits (B, C)
    """

    STEM = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        layer4_init: Literal["random", "pretrained"] = "random",
    ) -> None:
        super().__init__()
        missing = [n for n in (*self.STEM, "layer4") if not hasattr(backbone, n)]
        if missing:
            raise ConfigError(
                f"the audio backbone lacks {missing}: pass the VGGSound ResNet-18, e.g. "
                "avda.extract.backbones.create('audio_resnet18', modality='audio', weights=...)"
            )
        if layer4_init not in ("random", "pretrained"):
            raise ConfigError(f"layer4_init must be 'random' or 'pretrained', got {layer4_init!r}")
        self.stem = nn.Sequential(*(copy.deepcopy(getattr(backbone, n)) for n in self.STEM))
        for parameter in self.stem.parameters():
            parameter.requires_grad_(False)
        self.layer4 = copy.deepcopy(backbone.layer4)
        for parameter in self.layer4.parameters():
            parameter.requires_grad_(True)
        if layer4_init == "random":
            _init_like_reference(self.layer4)
        width = self.layer4[-1].bn2.num_features if hasattr(self.layer4[-1], "bn2") else 512
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        self.embedding_dim = width

    def train(self, mode: bool = True) -> SpectrogramAudioClassifier:
        super().train(mode)
        self.stem.eval()  # frozen: BatchNorm keeps the VGGSound statistics
        return self

    def layer3(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """The frozen ``layer3`` map ``(B, 256, F', T')`` of a ``(B, 1, F, T)`` spectrogram."""
        with torch.no_grad():
            return self.stem(spectrogram)

    def forward_layer3(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from ``layer3`` maps (e.g. cached ``(B, 256, 17, 63)``)."""
        embedding = torch.flatten(self.pool(self.layer4(maps)), 1)  # (B, 512, 1, 1) -> (B, 512)
        return self.fc(embedding), embedding

    def forward(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_layer3(self.layer3(spectrogram))


def augment_spectrogram(
    spectrogram: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reference training augmentation of z-scored spectrograms ``(B, [1,] F, T)``.

    Adds uniform noise in [-0.05, 0.05] and zeroes 9 consecutive frequency rows starting at a
    random row in ``[0, F - 1 - 9)`` per example (the reference draws the start below
    ``256 - 9`` for F = 257).
    """
    noise = torch.rand(spectrogram.shape, generator=generator, dtype=spectrogram.dtype)
    out = spectrogram + (noise.to(spectrogram.device) * 2 - 1) * NOISE_AMPLITUDE
    F_axis = out.shape[-2]
    starts = torch.randint(
        0, max(1, F_axis - 1 - MASKED_ROWS), (out.shape[0],), generator=generator
    )
    rows = torch.arange(F_axis)
    mask = (rows[None, :] >= starts[:, None]) & (rows[None, :] < starts[:, None] + MASKED_ROWS)
    shape = (out.shape[0],) + (1,) * (out.dim() - 3) + (F_axis, 1)  # broadcast over [1,] and T
    return out.masked_fill(mask.reshape(shape).to(out.device), 0.0)  # (B, F) -> (B, [1,] F, 1)


def train_spectrogram_audio_classifier(
    backbone: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    input_kind: Literal["spectrogram", "layer3"] = "spectrogram",
    epochs: int = 4,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    layer4_init: Literal["random", "pretrained"] = "random",
    augment: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> SpectrogramAudioClassifier:
    """Train a new ``layer4`` + ``fc`` on top of the frozen ``backbone`` (reference stage 1).

    ``inputs`` are z-scored spectrograms ``(N, [1,] F, T)`` (augmented as the reference does
    when ``augment``) or cached ``layer3`` maps ``(N, 256, F', T')`` with ``input_kind="layer3"``
    (no augmentation: it acts on spectrograms). Batches that would hold a single example are
    dropped (BatchNorm needs two), as the reference's ``drop_last=True`` drops short batches.
    """
    if input_kind not in ("spectrogram", "layer3"):
        raise ConfigError(f"input_kind must be 'spectrogram' or 'layer3', got {input_kind!r}")
    if len(inputs) != len(labels):
        raise ConfigError(f"{len(inputs)} inputs but {len(labels)} labels; give one label each")
    if input_kind == "spectrogram" and inputs.dim() == 3:
        inputs = inputs.unsqueeze(1)  # (N, F, T) -> (N, 1, F, T)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SpectrogramAudioClassifier(backbone, num_classes, layer4_init=layer4_init)
    model.to(device)
    optimizer = make_optimizer("adam", model.parameters(), lr=lr, weight_decay=weight_decay)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue
            batch = inputs[index]
            if input_kind == "spectrogram" and augment:
                batch = augment_spectrogram(batch, generator)
            batch = batch.to(device)
            if input_kind == "spectrogram":
                logits, _ = model(batch)
            else:
                logits, _ = model.forward_layer3(batch)
            loss = F.cross_entropy(logits, labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
        log.info("audio classifier epoch %d: loss %.4f", epoch, total / max(steps, 1))
    model.eval()
    return model


def pseudo_absent_labels(probabilities: np.ndarray | torch.Tensor, lowest: int = 3) -> np.ndarray:
    """Multi-hot ``(N, C)`` marking the ``lowest`` least probable classes of each row.

    Zhang et al. sec. 3.1: the classes the audio classifier finds least likely are taken as
    absent (r = 3 of 8 in the paper). Ties go to the lower class index (stable sort).
    """
    probabilities = np.asarray(
        probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities
    )
    if probabilities.ndim != 2:
        raise ConfigError(f"probabilities must be (N, C), got shape {probabilities.shape}")
    if not 0 < lowest < probabilities.shape[1]:
        raise ConfigError(
            f"absent_classes must be between 1 and C - 1 = {probabilities.shape[1] - 1}, "
            f"got {lowest}"
        )
    order = np.argsort(probabilities, axis=1, kind="stable")[:, :lowest]
    absent = np.zeros(probabilities.shape, dtype=np.float32)
    np.put_along_axis(absent, order, 1.0, axis=1)
    return absent


def video_mean_probabilities(
    probabilities: np.ndarray, videos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(V, C)`` the mean of ``probabilities`` ``(N, C)`` over the rows of each of the V
    distinct ``videos`` ``(N,)`` (in the order of their first row), and ``(N,)`` each row's
    video index. ``CharadesEgo/get_audio_pred_on_train.py`` l. 129-139: a video's sigmoid
    probabilities averaged over its windows."""
    videos = np.asarray(videos)
    if videos.shape != (len(probabilities),):
        raise ConfigError(f"videos {videos.shape} must name the video of each of the rows")
    _, first, inverse = np.unique(videos, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # videos in the order of their first row
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    index = rank[inverse.ravel()]
    sums = np.zeros((len(order), probabilities.shape[1]), dtype=np.float64)
    np.add.at(sums, index, np.asarray(probabilities, dtype=np.float64))
    return sums / np.bincount(index, minlength=len(order))[:, None], index


def multilabel_pseudo_absent_labels(
    probabilities: np.ndarray | torch.Tensor,
    frequencies: np.ndarray,
    gamma: float = 0.05,
    videos: np.ndarray | None = None,
) -> np.ndarray:
    """Multi-hot ``(N, C)`` pseudo-absent labels for multi-label classes (CharadesEgo).

    Zhang et al. sec. 3.1: "assuming the (1 - alpha_k) gamma percent videos with the lowest
    probabilities do not contain class k", alpha_k the fraction of labelled source videos with
    class k. As ``CharadesEgo/get_unlikely_cls_per_video.py``: per class k (a column of the
    audio classifier's sigmoid probabilities ``(N, C)`` over the N unlabelled target segments)
    the ``int((1 - alpha_k) * N * gamma)`` segments of lowest probability are marked absent;
    ties go to the earlier segment (stable sort). ``gamma`` in (0, 1].

    ``videos`` ``(N,)``, each row's video: the rule ranks videos, as the authors' code does
    (``get_unlikely_cls_per_video.py`` l. 26-49 on the per-video means of
    ``get_audio_pred_on_train.py`` l. 129-149): each video's probabilities are averaged over
    its rows (:func:`video_mean_probabilities`), N is the number of videos, the
    ``int((1 - alpha_k) * N * gamma)`` videos of lowest mean are absent for class k (ties to
    the video whose first row comes first), and every row takes its video's absent classes.
    Videos of one row each give the rows' own ranking.
    """
    probabilities = np.asarray(
        probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities
    )
    frequencies = np.asarray(frequencies, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ConfigError(f"probabilities must be (N, C), got shape {probabilities.shape}")
    if frequencies.shape != (probabilities.shape[1],):
        raise ConfigError(
            f"class frequencies {frequencies.shape} must have one entry per class "
            f"({probabilities.shape[1]})"
        )
    if np.any((frequencies < 0) | (frequencies > 1)):
        raise ConfigError("class frequencies must be fractions in [0, 1]")
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"absent_gamma must be in (0, 1], got {gamma}")
    if videos is not None:
        means, index = video_mean_probabilities(probabilities, videos)
        return multilabel_pseudo_absent_labels(means, frequencies, gamma)[index]
    count = len(probabilities)
    absent = np.zeros(probabilities.shape, dtype=np.float32)
    for class_id in range(probabilities.shape[1]):
        lowest = int((1.0 - frequencies[class_id]) * count * gamma)
        order = np.argsort(probabilities[:, class_id], kind="stable")[:lowest]
        absent[order, class_id] = 1.0
    return absent


__all__ = [
    "PooledAudioClassifier",
    "SpectrogramAudioClassifier",
    "augment_spectrogram",
    "multilabel_pseudo_absent_labels",
    "pseudo_absent_labels",
    "train_spectrogram_audio_classifier",
    "video_mean_probabilities",
]
