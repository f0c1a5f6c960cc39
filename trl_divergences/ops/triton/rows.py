"""The Triton row engine (the :class:`~trl_divergences.ops.chunked.RowEngine` protocol) and the two public ops.

* logits level: the whole [N, V] logits go through :func:`.kernels.fwd_kernel` (saving lse, lse_r, H and Σ dterm
  per row, 4 floats) and :func:`.kernels.bwd_kernel`; no [N, V] temporary besides the gradient itself.
* fused linear: a torch-side loop over token chunks (``chunked.ChunkedFusedLinear`` with this engine) — the
  projection of each chunk is one cuBLAS GEMM into a [rows, V] logits buffer of at most ``FUSED_CHUNK_ELEMENTS``
  elements per side, followed by the row kernels; the backward recomputes both projections chunk by chunk and forms
  grad h / grad W with two more GEMMs. The logits of a chunk exist in the weight dtype (as in the naive path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...numerics import MASKED_LOG_PROB, compute_dtype
from .. import chunked
from .kernels import bwd_kernel, fwd_kernel
from .terms import triton_term

if TYPE_CHECKING:
    from ...divergences import Divergence

#: largest vocabulary block one program loads at a time (a power of two)
BLOCK_V = 4096
#: [rows × V] logits elements per side and token chunk in the fused-linear path (256 MiB per fp32 side)
FUSED_CHUNK_ELEMENTS = 2**26

_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def _block(vocab: int) -> int:
    return min(BLOCK_V, triton.next_power_of_2(vocab))


def _rowwise(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class TritonRows:
    """Row engine running :mod:`.kernels`; ``saved`` is (lse, lse_r, H, Σ dterm), each [n]."""

    def forward(self, z: Tensor, zr: Tensor | None, tg: Tensor | None, div: Divergence, temperature: float):
        z = _rowwise(z)
        zr = None if zr is None else _rowwise(zr)
        n, vocab = z.shape
        dtype = compute_dtype(z.dtype)
        logp, ent, dv, lse, lser, sd = (torch.zeros(n, dtype=dtype, device=z.device) for _ in range(6))
        if n == 0:
            return logp if tg is not None else None, ent, dv if zr is not None else None, (lse, lser, ent, sd)
        terms = triton_term(div)
        block = _block(vocab)
        fwd_kernel[(n,)](
            z,
            z if zr is None else zr,
            z if tg is None else tg,
            logp,
            ent,
            dv,
            lse,
            lser,
            sd,
            z.stride(0),
            z.stride(0) if zr is None else zr.stride(0),
            vocab,
            1.0 / temperature,
            MASKED_LOG_PROB,
            div.log_floor,
            *terms.params,
            TERM=terms.term,
            DTERM=terms.dterm,
            HAS_REF=zr is not None,
            HAS_TG=tg is not None,
            ACC=_TL_DTYPES[dtype],
            BLOCK=block,
            num_warps=8 if block >= 2048 else 4,
        )
        return logp if tg is not None else None, ent, dv if zr is not None else None, (lse, lser, ent, sd)

    def backward(self, z, zr, tg, div, temperature, saved, grads, out_dtype):
        z = _rowwise(z)
        zr = None if zr is None else _rowwise(zr)
        n, vocab = z.shape
        dz = torch.empty((n, vocab), dtype=out_dtype, device=z.device)
        if n == 0:
            return dz
        dtype = compute_dtype(z.dtype)
        zeros = torch.zeros(n, dtype=dtype, device=z.device)
        g_logp, g_ent, g_div = (zeros if g is None else g.to(dtype).contiguous() for g in grads)
        lse, lser, ent, sd = saved
        terms = triton_term(div)
        block = _block(vocab)
        bwd_kernel[(n,)](
            z,
            z if zr is None else zr,
            z if tg is None else tg,
            dz,
            lse,
            lser,
            ent,
            sd,
            g_logp,
            g_ent,
            g_div,
            z.stride(0),
            z.stride(0) if zr is None else zr.stride(0),
            dz.stride(0),
            vocab,
            1.0 / temperature,
            MASKED_LOG_PROB,
            div.log_floor,
            *terms.params,
            DTERM=terms.dterm,
            HAS_REF=zr is not None,
            HAS_TG=tg is not None,
            ACC=_TL_DTYPES[dtype],
            BLOCK=block,
            num_warps=8 if block >= 2048 else 4,
        )
        return dz

    def forward_backward(self, z, zr, tg, div, temperature, grads, out_dtype):
        logp, ent, dv, saved = self.forward(z, zr, tg, div, temperature)
        return logp, ent, dv, self.backward(z, zr, tg, div, temperature, saved, grads, out_dtype)


TRITON_ROWS = TritonRows()


def logprob_entropy_divergence(
    z: Tensor, zr: Tensor | None, targets: Tensor | None, div: Divergence, temperature: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, div) per row of logits z [N, V] (zr [N, V] or None, targets [N] or None) -> three [N].

    Outputs for a None input are zeros. Differentiable w.r.t. ``z`` from all three outputs.
    """
    return chunked.ChunkedFromLogits.apply(z, zr, targets, div, temperature, max(z.shape[0], 1), TRITON_ROWS)


def fused_chunk_rows(n_rows: int, vocab: int) -> int:
    """Token rows per chunk of the fused-linear Triton path (``FUSED_CHUNK_ELEMENTS`` logits per side)."""
    return max(1, min(n_rows, FUSED_CHUNK_ELEMENTS // max(vocab, 1)))


def fused_linear_logprob_entropy_divergence(
    h: Tensor,
    w: Tensor,
    hr: Tensor | None,
    wr: Tensor | None,
    targets: Tensor | None,
    div: Divergence,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    chunk_rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, div) with logits = h [N, H] @ w [V, H]ᵀ (+ bias), by token chunks (see the module docstring).

    Differentiable w.r.t. ``h``, ``w`` and ``bias``; outputs for a None input are zeros.
    """
    rows = chunk_rows or fused_chunk_rows(h.shape[0], w.shape[0])
    return chunked.ChunkedFusedLinear.apply(h, w, bias, hr, wr, ref_bias, targets, div, temperature, rows, TRITON_ROWS)
