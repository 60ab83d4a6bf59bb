"""The pre-norm transformer encoder of the Audio-Adaptive reference code (``vit.py``).

It is lucidrains' ``vit-pytorch`` block the authors copied: per layer
``x = x + Attention(LayerNorm(x))`` then ``x = x + FeedForward(LayerNorm(x))``, with
multi-head attention of ``heads x head_dim`` inner width (no bias on the qkv projection, an
output projection with dropout) and a GELU MLP with dropout after both linear layers. There is
no dropout on the attention weights.

Both users read one token of the output (the class token), so ``forward(x, queries=n)`` returns
only the first ``n`` tokens and computes the last layer for those rows alone: its keys and
values still come from every token, its queries, attention output and MLP from the ``n`` rows
(about 2/3 of the last layer's work saved). The values are the full computation's up to float
rounding. In training, each dropout of that layer draws its mask for the full ``(B, N, ...)``
shape, as the full layer does, and keeps the rows it needs, so the random stream and the masks
of the kept rows are the same; on devices whose dropout kernel draws otherwise (CUDA's fused
dropout) a training forward with dropout runs the full last layer instead.
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

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """``(B, N, dim)`` -> ``(B, N, dim)``; with ``queries=n`` only the first ``n`` rows
        ``(B, n, dim)`` (keys and values from all ``N`` tokens)."""
        if queries is not None:
            return self._first_rows(x, queries)
        B, N, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # (B, N, heads * head_dim) -> (B, N, heads, head_dim) -> (B, heads, N, head_dim)
        q, k, v = (t.reshape(B, N, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, heads, N, d) -> (B, N, heads * d)
        return self.to_out(out)

    def _first_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, N, dim = x.shape
        inner = self.to_qkv.out_features // 3
        weight = self.to_qkv.weight
        q = F.linear(x[:, :n], weight[:inner])  # (B, n, inner): the queries of the kept rows
        k, v = F.linear(x, weight[inner:]).chunk(2, dim=-1)  # (B, N, inner) each
        q = q.reshape(B, n, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(B, N, self.heads, -1).transpose(1, 2) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, n, -1)
        if isinstance(self.to_out, nn.Identity):
            return out
        linear, dropout = self.to_out
        return dropout_rows(dropout, linear(out), N)


def dropout_rows(dropout: nn.Dropout, rows: torch.Tensor, tokens: int) -> torch.Tensor:
    """``dropout`` of ``rows`` ``(B, n, ...)``, the first ``n`` of ``tokens`` rows, with the mask
    the full ``(B, tokens, ...)`` input would get (CPU dropout: a Bernoulli draw of the input's
    shape, divided by the keep probability, times the input)."""
    p = dropout.p
    if not dropout.training or p == 0:
        return rows
    if p == 1:
        return rows * 0
    shape = (rows.shape[0], tokens, *rows.shape[2:])
    noise = torch.empty(shape, dtype=rows.dtype, device=rows.device).bernoulli_(1 - p)
    return rows * noise.div_(1 - p)[:, : rows.shape[1]]


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def first_rows(self, rows: torch.Tensor, tokens: int) -> torch.Tensor:
        """The MLP of ``rows`` ``(B, n, dim)``, the first ``n`` of ``tokens`` rows, with their
        dropout masks of the full input (:func:`dropout_rows`)."""
        up, activation, dropout, down, dropout_out = self
        hidden = dropout_rows(dropout, activation(up(rows)), tokens)
        return dropout_rows(dropout_out, down(hidden), tokens)


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

    def forward(self, x: torch.Tensor, *, queries: int | None = None) -> torch.Tensor:
        """``(B, N, dim)`` -> ``(B, N, dim)``, or with ``queries=n`` the first ``n`` tokens
        ``(B, n, dim)``, the last layer computed for those rows only (module docstring)."""
        layers = list(self.layers)
        if queries is None or not self._rows_match_full(x):
            for layer in layers:
                x = x + layer["attention"](layer["attention_norm"](x))
                x = x + layer["mlp"](layer["mlp_norm"](x))
            return x if queries is None else x[:, :queries]
        *body, last = layers
        for layer in body:
            x = x + layer["attention"](layer["attention_norm"](x))
            x = x + layer["mlp"](layer["mlp_norm"](x))
        tokens = x.shape[1]
        rows = x[:, :queries] + last["attention"](last["attention_norm"](x), queries)
        return rows + last["mlp"].first_rows(last["mlp_norm"](rows), tokens)

    def _rows_match_full(self, x: torch.Tensor) -> bool:
        """Whether the last layer on the kept rows alone draws the full layer's dropout masks:
        always without dropout; in training, on the CPU (whose dropout draws the input's shape)."""
        if not self.training or x.device.type == "cpu":
            return True
        return not any(isinstance(m, nn.Dropout) and m.p > 0 for m in self.layers[-1].modules())


__all__ = ["Attention", "FeedForward", "TransformerEncoder", "dropout_rows"]
