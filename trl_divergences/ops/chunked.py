"""Chunked torch path: log-prob of the target, entropy and any registered f-divergence, row chunk by row chunk.

Peak memory is O(chunk_rows · V) instead of O(N · V): the forward keeps only per-row outputs and the backward
recomputes each chunk's logits (from the logits tensor, or from hidden @ Wᵀ in the fused-linear variant) and turns
the per-row upstream gradients (g_logp, g_entropy, g_div) into dL/dz for that chunk:

    ∂logp/∂z_v = 1[v = y] − π_v,   ∂H/∂z_v = −π_v (log π_v + H),   ∂D/∂z_v = dterm_v − π_v Σ_u dterm_u.

Accumulation is fp32 for half-precision inputs (float64 kept). In the fused-linear variant with half-precision
weights, the backward GEMMs run in the weight dtype (fp32 accumulate inside the GEMM) and grad W is accumulated
across chunks in fp32. No gradient flows to the reference side.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..divergences.base import Divergence, compute_dtype

#: default number of [rows × V] elements per chunk (16 MiB per fp32 temporary)
CHUNK_ELEMENTS = 2**22


def default_chunk_rows(n_rows: int, vocab: int) -> int:
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(vocab, 1)))


def _stats(z: Tensor, zr: Tensor | None, targets: Tensor | None, div: Divergence, temperature: float):
    """Row statistics of one chunk of raw logits z [n, V] (compute dtype): lp, lr, logp, entropy, divergence."""
    lp = torch.log_softmax(z / temperature, dim=-1)
    p = lp.exp()
    plogp = p * lp.masked_fill(p == 0, 0.0)
    entropy = -plogp.sum(-1)
    logp = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) if targets is not None else None
    lr = dv = None
    if zr is not None:
        lr = torch.log_softmax(zr / temperature, dim=-1)
        dv = div.rows(lp, lr)
    return lp, p, plogp, lr, logp, entropy, dv


def _grad_logits(
    z: Tensor,
    zr: Tensor | None,
    targets: Tensor | None,
    div: Divergence,
    temperature: float,
    g_logp: Tensor | None,
    g_ent: Tensor | None,
    g_div: Tensor | None,
) -> Tensor:
    """dL/dz [n, V] for one chunk given per-row upstream gradients (None = no gradient from that output)."""
    lp, p, plogp, lr, _, entropy, _ = _stats(z, zr, None, div, temperature)
    dz = torch.zeros_like(lp)
    if g_ent is not None:
        dz -= g_ent.unsqueeze(-1) * (plogp + p * entropy.unsqueeze(-1))
    if g_logp is not None:
        dz -= g_logp.unsqueeze(-1) * p
        dz.scatter_add_(-1, targets.unsqueeze(-1), g_logp.unsqueeze(-1))
    if g_div is not None and lr is not None:
        dz += g_div.unsqueeze(-1) * div.rows_grad(lp, lr)
    return dz / temperature


def _upstream(grads: tuple[Tensor | None, ...], sl: slice, dtype: torch.dtype) -> list[Tensor | None]:
    return [None if g is None else g[sl].to(dtype) for g in grads]


class _ChunkedFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ref_logits, targets, div, temperature, chunk_rows):
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(logits.dtype)
        n = logits.shape[0]
        out = [torch.zeros(n, dtype=dtype, device=logits.device) for _ in range(3)]
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            zr = None if ref_logits is None else ref_logits[sl].to(dtype)
            tg = None if targets is None else targets[sl]
            _, _, _, _, logp, ent, dv = _stats(logits[sl].to(dtype), zr, tg, div, temperature)
            out[1][sl] = ent
            if logp is not None:
                out[0][sl] = logp
            if dv is not None:
                out[2][sl] = dv
        ctx.save_for_backward(logits, ref_logits, targets)
        ctx.div, ctx.temperature, ctx.chunk_rows = div, temperature, chunk_rows
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_div):
        logits, ref_logits, targets = ctx.saved_tensors
        dtype = compute_dtype(logits.dtype)
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            zr = None if ref_logits is None else ref_logits[sl].to(dtype)
            tg = None if targets is None else targets[sl]
            dz = _grad_logits(
                logits[sl].to(dtype), zr, tg, ctx.div, ctx.temperature, *_upstream((g_logp, g_ent, g_div), sl, dtype)
            )
            grad[sl] = dz.to(logits.dtype)
        return grad, None, None, None, None, None


def _project(h: Tensor, w: Tensor, b: Tensor | None, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.linear(h, w, b).to(dtype)


class _ChunkedFusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, div, temperature, chunk_rows):
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(weight.dtype)
        n = hidden.shape[0]
        out = [torch.zeros(n, dtype=dtype, device=hidden.device) for _ in range(3)]
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = _project(hidden[sl], weight, bias, dtype)
            zr = None if ref_hidden is None else _project(ref_hidden[sl], ref_weight, ref_bias, dtype)
            tg = None if targets is None else targets[sl]
            _, _, _, _, logp, ent, dv = _stats(z, zr, tg, div, temperature)
            out[1][sl] = ent
            if logp is not None:
                out[0][sl] = logp
            if dv is not None:
                out[2][sl] = dv
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets)
        ctx.div, ctx.temperature, ctx.chunk_rows = div, temperature, chunk_rows
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_div):
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets = ctx.saved_tensors
        dtype = compute_dtype(weight.dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device) if need_b and bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            h = hidden[sl]
            z = _project(h, weight, bias, dtype)
            zr = None if ref_hidden is None else _project(ref_hidden[sl], ref_weight, ref_bias, dtype)
            tg = None if targets is None else targets[sl]
            dz = _grad_logits(z, zr, tg, ctx.div, ctx.temperature, *_upstream((g_logp, g_ent, g_div), sl, dtype))
            dz_w = dz.to(weight.dtype)
            if grad_h is not None:
                grad_h[sl] = (dz_w @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (dz_w.T @ h.to(weight.dtype)).to(dtype)
            if grad_b is not None:
                grad_b += dz.sum(0)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None


def logprob_entropy_divergence(
    policy_logits: Tensor,
    ref_logits: Tensor | None,
    targets: Tensor | None,
    divergence: Divergence,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunked (logp, entropy, divergence) over flattened rows [N, V]; see the module docstring."""
    n, vocab = policy_logits.shape
    rows = chunk_rows or default_chunk_rows(n, vocab)
    return _ChunkedFromLogits.apply(policy_logits, ref_logits, targets, divergence, temperature, rows)


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
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Chunked fused-linear (logp, entropy, divergence) over flattened rows: hidden [N, H], weight [V, H]."""
    n = hidden.shape[0]
    rows = chunk_rows or default_chunk_rows(n, weight.shape[0])
    return _ChunkedFusedLinear.apply(
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, divergence, temperature, rows
    )
