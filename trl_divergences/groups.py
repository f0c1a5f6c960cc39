"""Per-group statistics of a batch of rollouts (framework-agnostic).

A *group* is the set of rollouts of one prompt (GRPO's G completions); ``group_ids`` [N] gives each rollout's group
(any integers; rows of a group need not be contiguous). Every function returns one value per **row**, broadcast
from its group, so callers never reshape by the group size (verl groups by uid, TRL by position).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .numerics import compute_dtype

#: concatenates a 1-D tensor over processes (identity on one process); used by the "global" scopes
Gather = Callable[[Tensor], Tensor]
#: sums a tensor over processes (identity on one process)
ReduceSum = Callable[[Tensor], Tensor]


def _inverse(group_ids: Tensor) -> tuple[Tensor, int]:
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, uniq.numel()


def group_sum(values: Tensor, group_ids: Tensor) -> Tensor:
    """Σ of ``values`` [N] over each row's group, per row [N] (NaN entries count as 0)."""
    inverse, n = _inverse(group_ids)
    v = torch.nan_to_num(values.to(compute_dtype(values.dtype)), nan=0.0)
    sums = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, inverse, v)
    return sums[inverse]


def group_mean(values: Tensor, group_ids: Tensor, where: Tensor | None = None) -> Tensor:
    """Mean of ``values`` [N] over each row's group (restricted to rows with ``where`` [N] True), per row [N];
    NaN for a group with no such row."""
    keep = torch.ones_like(values, dtype=torch.bool) if where is None else where.bool()
    total = group_sum(torch.where(keep, values, torch.zeros_like(values)), group_ids)
    count = group_sum(keep.to(total.dtype), group_ids)
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.full_like(total, float("nan")))


def group_count(where: Tensor, group_ids: Tensor) -> Tensor:
    """Number of rows of each row's group with ``where`` [N] True, per row [N]."""
    return group_sum(where.float(), group_ids)


def beta_kernel(p: Tensor, alpha: float, beta: float) -> Tensor:
    """PACED's pass-rate weight w(p) = p^α (1 − p)^β ("PACED: Distillation at the Frontier of Student Competence",
    2026): 0 at the pass-rate extremes, peak at p = α/(α + β)."""
    return p.pow(alpha) * (1.0 - p).pow(beta)
