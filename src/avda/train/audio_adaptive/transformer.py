"""The pre-norm transformer encoder of the Audio-Adaptive reference code (``vit.py``).

It is lucidrains' ``vit-pytorch`` block the authors copied: per layer
``x = x + Attention(LayerNorm(x))`` then ``x = x + FeedForward(LayerNorm(x))``, with
multi-head attention of ``heads x head_dim`` inner width (no bias on the qkv projection, an
output projection with dropout) and a GELU MLP with dropout after both linear layers. There is
no dropout on the attention weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, *, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project_out = not (heads == 1 and head_dim == dim)
        self.to_out = (
            nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
            if project_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # (B, N, heads * head_dim) -> (B, N, heads, head_dim) -> (B, heads, N, head_dim)
        q, k, v = (t.reshape(B, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, heads, N, d) -> (B, N, heads * d)
        return self.to_out(out)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )


class TransformerEncoder(nn.Module):
    """``depth`` pre-norm layers over tokens ``(B, N, dim)``."""

    def __init__(
        self, dim: int, *, depth: int, heads: int, head_dim: int, mlp_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attention_norm": nn.LayerNorm(dim),
                    "attention": Attention(dim, heads=heads, head_dim=head_dim, dropout=dropout),
                    "mlp_norm": nn.LayerNorm(dim),
                    "mlp": FeedForward(dim, mlp_dim, dropout),
                }
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer["attention"](layer["attention_norm"](x))
            x = x + layer["mlp"](layer["mlp_norm"](x))
        return x


__all__ = ["Attention", "FeedForward", "TransformerEncoder"]
