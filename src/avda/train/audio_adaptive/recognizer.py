"""Stage 6 of Audio-Adaptive: the audio-infused recognizer R (Zhang et al. sec. 3.2, Fig. 3).

As the reference code builds it (``train_recognizer.py`` ``Recognizer`` + ``activity_sound_vit.py``
``ViTCls``)::

    audio embedding a (B, A) --audio_fc: Linear(A,512) BN ReLU Linear(512,C)--> h (B, C)
    g = softmax(h) @ D                      D (C, 512): learnable class delegate vectors
    clip features v (B, K, V) --visual_fc: Linear(V,64) LN ReLU--> (B, K, 64)
    [g ; visual_fc(v_k)] --audio_visual_fc: Linear(576,512) BN ReLU Linear(512,C)--> h'_k
    z_cls = mean_k softmax(h'_k) @ D        (B, 512): the audio-adaptive class token
    tokens = [Linear(512,256)(z_cls) ; Linear(V,256)(v_k) + E^d]   E^d: domain embedding
    --dropout 0.1, depth 3 x pre-norm transformer (8 heads of 64, MLP 512, dropout 0.15)-->
    token 0 --LayerNorm, Linear(256, C)--> logits p*

Paper eq. (7) (the paper states D = 512 and two layers; the code has 256 and three, which we
follow). ``class_tokens="per-clip"`` is the flow stream's recognizer (``EPIC-flow-audio/
train_recognizer.py`` omits the mean over clips): one class token ``softmax(h'_k) @ D`` per
clip ahead of the visual tokens, and the output is read from the first clip's (token 0).
The domain embedding ``E^d`` has one row per domain: index 0 source, 1 target; the
reference evaluates target segments with the target row, and so does avda at inference.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from avda.train.audio_adaptive.transformer import TransformerEncoder

SOURCE, TARGET = 0, 1


@dataclasses.dataclass
class RecognizerOutput:
    logits: torch.Tensor  # (B, C)  p*
    audio_logits: torch.Tensor  # (B, C)  h
    audio_visual_logits: torch.Tensor  # (B, K, C)  h'
    token: torch.Tensor  # (B, dim) output state of the class token


class AudioInfusedRecognizer(nn.Module):
    def __init__(
        self,
        visual_dim: int,
        audio_dim: int,
        num_classes: int,
        *,
        delegate_dim: int = 512,
        visual_hidden: int = 64,
        fc_hidden: int = 512,
        dim: int = 256,
        depth: int = 3,
        heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 512,
        dropout: float = 0.15,
        embedding_dropout: float = 0.1,
        class_tokens: Literal["mean", "per-clip"] = "mean",
    ) -> None:
        super().__init__()
        if class_tokens not in ("mean", "per-clip"):
            raise ValueError(f"class_tokens must be 'mean' or 'per-clip', got {class_tokens!r}")
        self.class_tokens = class_tokens
        self.delegates = nn.Parameter(torch.randn(num_classes, delegate_dim))
        self.audio_fc = nn.Sequential(
            nn.Linear(audio_dim, fc_hidden),
            nn.BatchNorm1d(fc_hidden),
            nn.ReLU(),
            nn.Linear(fc_hidden, num_classes),
        )
        self.visual_fc = nn.Sequential(
            nn.Linear(visual_dim, visual_hidden), nn.LayerNorm(visual_hidden), nn.ReLU()
        )
        self.audio_visual_fc = nn.Sequential(
            nn.Linear(delegate_dim + visual_hidden, fc_hidden),
            nn.BatchNorm1d(fc_hidden),
            nn.ReLU(),
            nn.Linear(fc_hidden, num_classes),
        )
        self.audio_token = nn.Linear(delegate_dim, dim)
        self.visual_token = nn.Linear(visual_dim, dim)
        self.domain_embedding = nn.Parameter(torch.randn(2, dim))
        self.dropout = nn.Dropout(embedding_dropout)
        self.transformer = TransformerEncoder(
            dim, depth=depth, heads=heads, head_dim=head_dim, mlp_dim=mlp_dim, dropout=dropout
        )
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(
        self, visual: torch.Tensor, audio: torch.Tensor, domain: int | torch.Tensor
    ) -> RecognizerOutput:
        """``visual`` (B, K, V) clip features, ``audio`` (B, A), ``domain`` SOURCE or TARGET
        (or a ``(B,)`` long tensor of them: a batch of source and labelled target rows)."""
        B, K, _ = visual.shape
        audio_logits = self.audio_fc(audio)  # h (B, C)
        initial = audio_logits.softmax(dim=-1) @ self.delegates  # g (B, 512)
        small = self.visual_fc(visual)  # (B, K, 64)
        pairs = torch.cat([initial[:, None, :].expand(B, K, -1), small], dim=-1)  # (B, K, 576)
        flat = self.audio_visual_fc(pairs.reshape(B * K, -1))  # (B * K, 576) -> (B * K, C)
        audio_visual_logits = flat.reshape(B, K, -1)  # h' (B, K, C)
        per_clip = audio_visual_logits.softmax(dim=-1) @ self.delegates  # (B, K, 512)
        if self.class_tokens == "mean":
            per_clip = per_clip.mean(dim=1, keepdim=True)  # z_cls (B, 1, 512)
        embedding = self.domain_embedding[domain]  # (dim,), or (B, dim) for a per-row domain
        if isinstance(domain, torch.Tensor) and domain.dim() == 1:
            embedding = embedding[:, None, :]  # (B, dim) -> (B, 1, dim)
        visual_tokens = self.visual_token(visual) + embedding  # (B, K, dim)
        tokens = torch.cat([self.audio_token(per_clip), visual_tokens], dim=1)
        state = self.transformer(self.dropout(tokens), queries=1)[:, 0]  # token 0 (B, dim)
        return RecognizerOutput(
            logits=self.head(state),
            audio_logits=audio_logits,
            audio_visual_logits=audio_visual_logits,
            token=state,
        )


__all__ = ["SOURCE", "TARGET", "AudioInfusedRecognizer", "RecognizerOutput"]
