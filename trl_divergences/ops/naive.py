"""Naive reference (test oracle): materialize full fp32 logits, log-softmax, and apply the formulas directly.

Memory O(N·V); never used in training code paths.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..numerics import MASKED_LOG_PROB, compute_dtype

if TYPE_CHECKING:
    from ..divergences import Divergence


def logprob_entropy_divergence(
    policy_logits: Tensor,
    ref_logits: Tensor | None,
    targets: Tensor | None,
    divergence: Divergence,
    temperature: float = 1.0,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """(log π(target), H(π), D(π‖ρ)) per row of [..., V] logits, by autograd through plain torch ops."""
    dtype = compute_dtype(policy_logits.dtype)
    lp = torch.log_softmax(policy_logits.to(dtype) / temperature, dim=-1)
    p = lp.exp()
    entropy = -(p * lp.masked_fill(p == 0, 0.0)).sum(-1)
    logp = None if targets is None else lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    div = None
    if ref_logits is not None:
        lr = torch.log_softmax(ref_logits.detach().to(dtype) / temperature, dim=-1)
        div = divergence.rows(lp, lr)
    return logp, entropy, div


def fused_linear_logprob_entropy_divergence(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor | None,
    ref_weight: Tensor | None,
    targets: Tensor | None,
    divergence: Divergence,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """Same as :func:`logprob_entropy_divergence` with logits = hidden @ weightᵀ (+ bias) built in full."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    ref_logits = None
    if ref_hidden is not None:
        ref_logits = torch.nn.functional.linear(ref_hidden, ref_weight, ref_bias)
    return logprob_entropy_divergence(logits, ref_logits, targets, divergence, temperature)


def nucleus_stats(
    logits: Tensor,
    targets: Tensor | None,
    top_p: float | None,
    top_k: int,
    min_p: float | None,
    temperature: float = 1.0,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(top-p entropy, mass above the target, min-p proxy log-prob) per row of [..., V] logits, from the full
    probabilities and a full sort (autograd for the entropy's gradient); see :func:`trl_divergences.ops.nucleus_stats`.
    """
    z = logits.to(compute_dtype(logits.dtype))
    p = torch.softmax(z / temperature, dim=-1)
    entropy = mass = proxy = None
    if top_p is not None:
        p_sorted, _ = torch.sort(p, dim=-1, descending=True)
        first_reaching = (p_sorted[..., :top_k].cumsum(-1) < top_p).sum(-1, keepdim=True)  # 0-based j*
        # nucleus = ranks before j*; an empty one has the same H (0) and gradient (0) as {top-1}, without 0 / 0
        nucleus = torch.arange(p.shape[-1], device=p.device) < first_reaching.clamp(min=1)
        kept = p_sorted * nucleus
        q = kept / kept.sum(-1, keepdim=True)
        entropy = -(q * torch.log(q.masked_fill(q == 0, 1.0))).sum(-1)
    if targets is not None:
        y = targets.unsqueeze(-1)
        pd = p.detach()
        mass = (pd * (pd > pd.gather(-1, y))).sum(-1)
        if min_p is not None:
            p_untempered = torch.softmax(z.detach(), dim=-1)
            keep = p_untempered >= min_p * p_untempered.amax(-1, keepdim=True)
            lp = torch.log_softmax((z.detach() / temperature).masked_fill(~keep, -math.inf), dim=-1)
            proxy = torch.where(keep.gather(-1, y), lp.gather(-1, y), MASKED_LOG_PROB).squeeze(-1)
    return entropy, mass, proxy
