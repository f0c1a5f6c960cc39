"""The divergence from policy *logits* to a reference carried as *hidden states*: D(π‖ρ) per row with
log ρ = log_softmax(ref_hidden @ ref_weightᵀ (+ ref_bias)), the reference logits formed one row chunk at a time in
the forward and again in the backward (never [N, V] of them; verl's logits-processor hook, where the policy's logits
already exist but the reference's must not).

Rows may be a subset of the logits' rows (``rows``: the positions that are completion tokens), so the reference
hidden states are stored for those tokens only. No temperature is applied: pass tempered policy logits and scale the
reference hidden states by 1/T (logits are linear in them). Accumulation as in :mod:`.chunked` (fp32 for half
precision, float64 kept); no gradient flows to the reference side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..numerics import compute_dtype
from .chunked import TORCH_ROWS, default_chunk_rows

if TYPE_CHECKING:
    from ..divergences import Divergence


class DivergenceFromRefHidden(torch.autograd.Function):
    """D [M] for logits rows ``rows`` [M] against reference rows ``ref_hidden`` [M, H] × ``ref_weight`` [V, H]."""

    @staticmethod
    def forward(ctx, logits, rows, ref_hidden, ref_weight, ref_bias, div, chunk_rows):
        ctx.set_materialize_grads(False)
        m = rows.shape[0]
        out = torch.zeros(m, dtype=compute_dtype(logits.dtype), device=logits.device)
        for start in range(0, m, chunk_rows):
            sl = slice(start, start + chunk_rows)
            zr = torch.nn.functional.linear(ref_hidden[sl], ref_weight, ref_bias)
            out[sl] = TORCH_ROWS.forward(logits[rows[sl]], zr, None, div, 1.0)[2]
        ctx.save_for_backward(logits, rows, ref_hidden, ref_weight, ref_bias)
        ctx.div, ctx.chunk_rows = div, chunk_rows
        return out

    @staticmethod
    def backward(ctx, g_div):
        if g_div is None:
            return (None,) * 7
        logits, rows, ref_hidden, ref_weight, ref_bias = ctx.saved_tensors
        grad = torch.zeros_like(logits)
        for start in range(0, rows.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            zr = torch.nn.functional.linear(ref_hidden[sl], ref_weight, ref_bias)
            grads = (None, None, g_div[sl].to(compute_dtype(logits.dtype)))
            dz = TORCH_ROWS.backward(logits[rows[sl]], zr, None, ctx.div, 1.0, None, grads, logits.dtype)
            grad.index_add_(0, rows[sl], dz)
        return grad, None, None, None, None, None, None


def divergence_from_ref_hidden(
    policy_logits: Tensor,
    ref_hidden: Tensor,
    ref_weight: Tensor,
    divergence: Divergence,
    rows: Tensor | None = None,
    ref_bias: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """Per-row D(π‖ρ) [M] from policy logits [N, V] and reference hidden states [M, H] (see the module docstring).

    Args:
        policy_logits: [N, V], differentiable (gradients flow to it only).
        ref_hidden: [M, H_ref] reference final hidden states of the rows ``rows`` (all N rows when None).
        ref_weight: [V, H_ref] frozen reference lm_head (ref_bias: [V] or None).
        divergence: a built :class:`~trl_divergences.divergences.Divergence`.
        rows: [M] int64 row indices into ``policy_logits``, or None for every row (then M = N).
    """
    n, vocab = policy_logits.shape
    if rows is None:
        rows = torch.arange(n, device=policy_logits.device)
    if ref_hidden.dim() != 2 or ref_hidden.shape[0] != rows.shape[0]:
        raise ValueError(
            f"ref_hidden must be [{rows.shape[0]}, H] (one row per selected row), got {tuple(ref_hidden.shape)}"
        )
    if ref_weight.shape != (vocab, ref_hidden.shape[1]):
        raise ValueError(f"ref_weight must be [V={vocab}, H={ref_hidden.shape[1]}], got {tuple(ref_weight.shape)}")
    rows = rows.to(device=policy_logits.device, dtype=torch.long)
    chunk = chunk_rows or default_chunk_rows(rows.shape[0], vocab)
    return DivergenceFromRefHidden.apply(policy_logits, rows, ref_hidden, ref_weight, ref_bias, divergence, chunk)
