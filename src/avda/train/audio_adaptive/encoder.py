"""Stage 4 of Audio-Adaptive: the audio-adaptive encoder E (Zhang et al. sec. 3.1, Fig. 2).

Reference (``train_audio_adaptive_encoder.py``, ``vit.py``): the frozen VGGSound ``layer3`` map
of the segment's audio goes through a ViT psi (1x1 conv 256 -> 256 tokens, a cls token, **no
positional embedding**, depth 8, 8 heads of 64, MLP 512, dropout 0.15, embedding dropout 0.1);
the cls state gives, through LayerNorm + Linear heads, channel-attention logits for SlowFast's
``layer3`` maps (slow 1280, fast 128 channels). The maps are multiplied by ``sigmoid(logits)``
at every position, then SlowFast ``layer4`` (trainable), average pooling, dropout 0.5 and
``fc(2304 -> C)``. Trained: psi, ``layer4``, ``fc``; one random clip per segment, batch 16 source
+ 16 target, Adam 1e-4, weight decay 1e-4, 15 epochs, loss of eq. (4).

avda's encoder, on cached features::

    audio tokens (B, T, C_a) --psi--> logits (B, C_v) --sigmoid--> gate
    visual (B, K, C_v[, *S]) --[domain_norm: BatchNorm, each domain's own statistics
                                 (+ ReLU with domain_norm_relu)]--
        x gate (per channel, every clip and position)
        --residual bottleneck (x + W2 relu(W1 x), per position; stands in for layer4)-->
        pooled:  (B, K, C_v)                         = clip features
        spatial: mean over S -> classifier input, max over S -> clip features (the reference
                 max-pools layer4 maps for the recognizer, average-pools for its classifier)
    clip features --dropout 0.5--> fc --> clip logits (B, K, C)

- ``spatial=False`` (pooled mode): visual inputs are cached pooled clip features (e.g. the
  2304-d SlowFast vector per clip); audio tokens are the cached audio clip vectors.
- ``spatial=True`` (faithful mode): visual inputs are cached ``layer3``-like maps
  ``(K, C, *S)`` from ``spatial/<modality>``, gated where the reference gates them; audio
  tokens are the positions of ``spatial/audio`` when cached.
With ``domain_norm`` the cached features are first standardised with each domain's own batch
statistics, as SlowFast's BatchNorms up to ``layer3`` treat the reference's separate source and
target calls (frozen, but in training mode); at evaluation each domain's running statistics
(chosen by ``domain``). They are not rectified (``domain_norm_relu=False``): a ReLU after the
standardisation would zero every value below the domain's channel mean, half of what a pooled
feature says (docs/methods.md, audio-adaptive: measured); ``domain_norm_relu=True`` keeps the
ReLU of SlowFast's ``layer3`` (runs recorded before the option have it). The bottleneck's
last layer starts at zero, so the block starts as the identity on the gated features.
SlowFast's own ``layer4`` cannot run here (stage 2 never imports the extraction backbones).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from avda.train.audio_adaptive.transformer import TransformerEncoder
from avda.train.layers import DomainSpecificBatchNorm


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """Audio input as tokens: ``(B, K, C)`` as is, maps ``(B, K, C, *S)`` -> ``(B, K*|S|, C)``."""
    if x.dim() == 3:
        return x
    moved = x.movedim(2, -1)  # (B, K, C, *S) -> (B, K, *S, C)
    return moved.reshape(x.shape[0], -1, x.shape[2])  # -> (B, K * prod(S), C)


class AudioChannelAttention(nn.Module):
    """psi: audio tokens ``(B, T, C_a)`` -> channel-attention logits ``(B, C_v)``."""

    def __init__(
        self,
        audio_channels: int,
        visual_channels: int,
        *,
        dim: int = 256,
        depth: int = 8,
        heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 512,
        dropout: float = 0.15,
        embedding_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.to_tokens = nn.Linear(audio_channels, dim)  # the reference's 1x1 conv
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(embedding_dropout)
        self.transformer = TransformerEncoder(
            dim, depth=depth, heads=heads, head_dim=head_dim, mlp_dim=mlp_dim, dropout=dropout
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, visual_channels))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        tokens = self.to_tokens(audio)  # (B, T, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.dropout(torch.cat([cls, tokens], dim=1))  # no positional embedding
        return self.head(self.transformer(x, queries=1)[:, 0])  # the cls state only


class ResidualBottleneck(nn.Module):
    """``x + W2 relu(W1 x)`` on the last axis, ``W2 = 0`` at init (identity at the start)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.reduce(x)))


@dataclasses.dataclass
class EncoderOutput:
    logits: torch.Tensor  # (B, K, C) per clip
    features: torch.Tensor  # (B, K, C_v) per clip, what the recognizer consumes
    gate: torch.Tensor  # (B, C_v) sigmoid channel attention


class AudioAdaptiveEncoder(nn.Module):
    """Audio-conditioned channel attention on visual clip features, then a classifier."""

    def __init__(
        self,
        visual_channels: int,
        audio_channels: int,
        num_classes: int,
        *,
        spatial: bool = False,
        attention_dim: int = 256,
        depth: int = 8,
        heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 512,
        dropout: float = 0.15,
        embedding_dropout: float = 0.1,
        bottleneck: int = 512,
        classifier_dropout: float = 0.5,
        domain_norm: bool = False,
        domain_norm_relu: bool = False,
    ) -> None:
        super().__init__()
        self.spatial = spatial
        self.visual_channels = visual_channels
        self.attention = AudioChannelAttention(
            audio_channels,
            visual_channels,
            dim=attention_dim,
            depth=depth,
            heads=heads,
            head_dim=head_dim,
            mlp_dim=mlp_dim,
            dropout=dropout,
            embedding_dropout=embedding_dropout,
        )
        # the BatchNorms of SlowFast up to layer3, which normalise each domain's clips apart:
        # the reference runs them (frozen, under no_grad, but in training mode) on the source
        # batch and on the target batch in separate calls, each with its own batch
        # statistics; with domain_norm_relu the ReLU keeps the gated features non-negative,
        # as layer3's are (a Sequential either way: the same state-dict keys)
        rectify = [nn.ReLU()] if domain_norm_relu else []
        self.norm = (
            nn.Sequential(DomainSpecificBatchNorm(visual_channels), *rectify)
            if domain_norm
            else nn.Identity()
        )
        self.block = ResidualBottleneck(visual_channels, bottleneck)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(visual_channels, num_classes)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> EncoderOutput:
        gate = torch.sigmoid(self.attention(as_tokens(audio)))  # (B, C_v)
        if self.spatial:
            extra = visual.dim() - 3  # spatial axes after (B, K, C)
            gate_shape = (gate.shape[0], 1, -1, *([1] * extra))  # (B, C) -> (B, 1, C, 1...)
            visual = self.norm(visual.movedim(2, -1)).movedim(-1, 2)  # over channels
            gated = visual * gate.reshape(gate_shape)
            moved = self.block(gated.movedim(2, -1))  # (B, K, *S, C) per position
            positions = tuple(range(2, 2 + extra))
            pooled = moved.mean(dim=positions)  # (B, K, C): the classifier's average pool
            features = moved.amax(dim=positions)  # (B, K, C): the recognizer's max pool
        else:
            pooled = features = self.block(self.norm(visual) * gate[:, None, :])  # (B, K, C)
        return EncoderOutput(
            logits=self.classifier(self.dropout(pooled)), features=features, gate=gate
        )

    @torch.no_grad()
    def predict(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)``: softmax per clip, averaged over clips (test mode)."""
        return self(visual, audio).logits.softmax(dim=-1).mean(dim=1)


def group_clips(x: torch.Tensor, clips: int) -> torch.Tensor:
    """``(B, K, ...)`` -> ``(B, clips, ...)``: the mean of ``clips`` consecutive groups of the K
    cached clips, of sizes differing by at most one (group ``i`` holds clips
    ``floor(i K / clips)`` to ``floor((i + 1) K / clips) - 1``); as is when ``clips <= 0`` or
    ``K <= clips``."""
    count = x.shape[1]
    if clips <= 0 or count <= clips:
        return x
    if count % clips == 0:  # groups of one size: one reshape
        return x.reshape(x.shape[0], clips, count // clips, *x.shape[2:]).mean(dim=2)
    bounds = [i * count // clips for i in range(clips + 1)]
    groups = [x[:, a:b].mean(dim=1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.stack(groups, dim=1)


def one_clip_per_segment(visual: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random clip of each segment, kept as ``(B, 1, ...)`` (the reference trains on one clip)."""
    choice = torch.randint(0, visual.shape[1], (visual.shape[0],), generator=generator)
    rows = torch.arange(visual.shape[0])
    return visual[rows.to(visual.device), choice.to(visual.device)].unsqueeze(1)


__all__ = [
    "AudioAdaptiveEncoder",
    "AudioChannelAttention",
    "EncoderOutput",
    "ResidualBottleneck",
    "as_tokens",
    "group_clips",
    "one_clip_per_segment",
]
