"""Naive reference (test oracle): materialize full fp32 logits, log-softmax, and apply the formulas directly.

Memory O(N·V); never used in training code paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..divergences.base import Divergence, compute_dtype


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
