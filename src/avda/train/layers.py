"""Building blocks shared by the heads."""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
from torch import nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward (Ganin & Lempitsky)."""
    return _GradientReversal.apply(x, float(scale))


def grl_ramp(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule ``2 / (1 + exp(-gamma * p)) - 1`` for training progress ``p`` in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def mlp(sizes: list[int], *, dropout: float = 0.0, final_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them: ``mlp([1024, 512, 8])``."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        last = index == len(sizes) - 2
        if not last or final_activation:
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def dann_annealing(progress: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """DANN's learning-rate factor ``1 / (1 + alpha * p) ** beta`` (Ganin et al. 2016).

    The learning rate is ``lr * dann_annealing(p)`` with ``p`` the training progress in [0, 1]:
    0.01 falls to 0.0017 at the end with the paper's ``alpha = 10``, ``beta = 0.75``.
    """
    return (1.0 + alpha * progress) ** -beta


def relation_subsets(num_frames: int, scale: int, max_relations: int = 3) -> list[tuple[int, ...]]:
    """The fixed frame combinations TRN-M uses at one scale (TA3N's ``RelationModuleMultiScale``).

    All ``C = num_frames choose scale`` ordered combinations, of which ``k = min(max_relations,
    C)`` are kept, at positions ``ceil(i * C / k)`` for ``i < k``; the largest scale keeps only
    the first combination (all frames). For 5 frames: {(0,1,2,3,4)}, {(0,1,2,3), (0,1,3,4),
    (1,2,3,4)}, {(0,1,2), (0,2,4), (1,2,4)}, {(0,1), (1,2), (2,3)}.
    """
    combinations = list(itertools.combinations(range(num_frames), scale))
    if scale == num_frames:
        return combinations[:1]
    count = min(max_relations, len(combinations))
    return [combinations[math.ceil(i * len(combinations) / count)] for i in range(count)]


class MultiScaleTemporalRelation(nn.Module):
    """TRN-M: multi-scale temporal relations over ``F`` ordered frame features (Zhou et al. 2018).

    ::

        x (B, F, D) --scale s in F..2--> for each fixed subset of s frames:
            concat (B, s*D) -> ReLU -> Linear(s*D -> H) -> ReLU ; summed over the subsets
        -> (B, F-1, H): one relation feature per scale, largest scale first

    The subsets are deterministic (:func:`relation_subsets`), as in the TA3N code, so training
    and evaluation see the same relations.
    """

    def __init__(self, num_frames: int, feature_dim: int, bottleneck: int = 256) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.scales = list(range(num_frames, 1, -1))
        self.subsets = [relation_subsets(num_frames, s) for s in self.scales]
        self.fusions = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(s * feature_dim, bottleneck), nn.ReLU())
            for s in self.scales
        )
        self.output_dim = bottleneck
        for scale, subsets in enumerate(self.subsets):  # not in the state dict
            self.register_buffer(f"_subsets_{scale}", torch.tensor(subsets), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, D = x.shape
        per_scale = []
        for scale, fusion in enumerate(self.fusions):
            index = getattr(self, f"_subsets_{scale}")  # (n, s) frame indices
            n, s = index.shape
            # all n subsets of the scale in one matmul: (B, n, s*D) -> (B, n, H) -> sum
            frames = x.index_select(1, index.flatten()).reshape(B, n, s * D)
            per_scale.append(fusion(frames).sum(dim=1))
        return torch.stack(per_scale, dim=1)  # (B, F-1, H)


class DomainBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a second set of statistics for the target domain (AdaBN, Li et al. 2016).

    Training normalises with batch statistics and tracks the source running averages as usual.
    In evaluation mode the layer normalises with ``target_mean``/``target_var`` when
    ``domain == "target"`` (filled by :meth:`set_target_statistics`), else with the source
    running averages. The affine parameters are shared by both domains.
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.register_buffer("target_mean", torch.zeros(num_features))
        self.register_buffer("target_var", torch.ones(num_features))
        self.domain = "source"

    def set_target_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.target_mean.copy_(mean)
        self.target_var.copy_(var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.domain == "source":
            return super().forward(x)
        return torch.nn.functional.batch_norm(
            x, self.target_mean, self.target_var, self.weight, self.bias, False, 0.0, self.eps
        )


class DomainSpecificBatchNorm(nn.Module):
    """BatchNorm whose statistics are the current domain's, with one affine for both domains.

    What a backbone's BatchNorm does when each domain's batches pass through it apart (MM-SADA
    trains I3D with one tower per domain): training normalises each domain's batch with its own
    statistics and tracks one pair of running averages per domain; evaluation normalises with
    the running averages of ``domain`` (set by the head, ``"source"`` or ``"target"``). Inputs
    ``(..., C)``: every leading position counts as a sample.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.norms = nn.ModuleDict(
            {
                domain: nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
                for domain in ("source", "target")
            }
        )
        self.domain = "source"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (..., C) -> (N, C)
        return (self.norms[self.domain](flat) * self.weight + self.bias).reshape(x.shape)


def set_norm_domain(module: nn.Module, domain: str) -> None:
    """Point every :class:`DomainSpecificBatchNorm` in ``module`` at ``domain``."""
    for layer in module.modules():
        if isinstance(layer, DomainSpecificBatchNorm):
            layer.domain = domain


def per_domain(module: nn.Module, is_target: torch.Tensor, compute, *args):
    """``compute(*args)`` on a batch whose rows ``is_target`` (``(B,)`` bool) are of the target
    domain, each row through its domain's :class:`DomainSpecificBatchNorm` statistics: one pass
    when every row is of one domain (or ``module`` has no such norm), else one pass per domain,
    rows picked from each. The result is a tensor or a dataclass of tensors with rows first."""
    has_norm = any(isinstance(m, DomainSpecificBatchNorm) for m in module.modules())
    if not has_norm or bool(is_target.all()) or not bool(is_target.any()):
        set_norm_domain(module, "target" if bool(is_target.any()) else "source")
        return compute(*args)
    set_norm_domain(module, "source")
    source = compute(*args)
    set_norm_domain(module, "target")
    target = compute(*args)

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mask = is_target.to(b.device).reshape(-1, *([1] * (b.dim() - 1)))
        return torch.where(mask, b, a)

    if dataclasses.is_dataclass(source):
        return dataclasses.replace(
            source,
            **{f.name: pick(getattr(source, f.name), getattr(target, f.name))
               for f in dataclasses.fields(source)},
        )  # fmt: skip
    return pick(source, target)


def feature_embedding(fan_in: int, dim: int, domain_norm: bool = False) -> nn.Sequential:
    """A trainable ``Linear(fan_in -> dim) -> ReLU`` standing in for a fine-tuned backbone top.

    Methods that train their backbone end to end (MM-SADA, RNA-Net) put their losses on the
    backbone's output; on cached features this layer's output takes that role. With
    ``fan_in == dim`` it starts as the identity (weights ``I``, bias 0), so training starts from
    the cached (non-negative, post-ReLU pooled) features as fine-tuning starts from the
    pre-trained backbone. ``domain_norm``: ``Linear -> DomainSpecificBatchNorm -> ReLU``, the
    conv-BN-ReLU unit of I3D's top with each domain's batch statistics.
    """
    linear = nn.Linear(fan_in, dim)
    if fan_in == dim:
        with torch.no_grad():
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
    if domain_norm:
        return nn.Sequential(linear, DomainSpecificBatchNorm(dim), nn.ReLU())
    return nn.Sequential(linear, nn.ReLU())
