"""Chunked torch path: log-prob of the target, entropy and any registered f-divergence, row chunk by row chunk.

Peak memory is O(chunk_rows · V) instead of O(N · V). The fused-linear ops on the torch path run on the
block-and-tile drivers of :mod:`.tiled`; the drivers below share one row engine (:class:`TorchRows` here for the
logits-level op, the Triton kernels in :mod:`.triton` for all three):

* recompute-in-backward (:func:`logprob_entropy_divergence`, :func:`fused_linear_logprob_entropy_divergence`):
  the forward keeps only per-row outputs; the backward recomputes each chunk's logits (from the logits tensor, or
  from hidden @ Wᵀ) and turns the per-row upstream gradients (g_logp, g_entropy, g_div) into dL/dz:

      ∂logp/∂z_v = 1[v = y] − π_v,   ∂H/∂z_v = −π_v (log π_v + H),   ∂D/∂z_v = dterm_v − π_v Σ_u dterm_u;

* gradient-in-forward (:func:`fused_linear_divergence_loss`): the caller gives the per-token weights of the loss
  Σ_t (w_logp·logp + w_ent·H + w_div·D), so dL/dz is formed while the chunk's logits are alive and grad h / grad W
  are accumulated in the forward (the backward only scales them). That saves recomputing both projections: as many
  GEMMs as the naive path, at O(chunk_rows · V) memory.

Accumulation is fp32 for half-precision inputs (float64 kept). In the fused-linear variants with half-precision
weights, the gradient GEMMs run in the weight dtype (fp32 accumulate inside the GEMM) and grad W is accumulated
across chunks in fp32. No gradient flows to the reference side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from ..numerics import compute_dtype
from . import tiled

if TYPE_CHECKING:
    from ..divergences import Divergence

#: default number of [rows × V] elements per chunk: 16 MiB per fp32 temporary, below glibc's largest mmap threshold
#: (32 MiB), so the chunk's temporaries are reused heap memory. Larger temporaries are fresh mmap pages on every
#: chunk, and the page faults cost more than thin GEMMs save (2 CPU cores, N = 2048, H = 512, V = 151,936,
#: gradient-in-forward forward KL: 27 rows per chunk 18.2 s / 620 MB, 55 rows 17.0 s / 894 MB, 128 rows
#: 23.6 s / 1481 MB; naive 25.4 s / 13.7 GB)
CHUNK_ELEMENTS = 2**22


def default_chunk_rows(n_rows: int, vocab: int) -> int:
    return max(1, min(n_rows, CHUNK_ELEMENTS // max(vocab, 1)))


class RowEngine(Protocol):
    """Row math of one chunk of logits z [n, V] (raw dtype; the engine casts to the accumulation dtype).

    ``forward`` returns (logp | None, entropy, div | None, saved); ``saved`` is whatever ``backward`` needs besides
    the logits (None: recompute). ``backward`` returns dL/dz [n, V] in ``out_dtype`` for per-row upstream gradients
    (None = no gradient from that output). ``forward_backward`` does both for known per-row loss weights
    (used by :class:`FusedLinearLossInForward`, the Triton path; :class:`TorchRows` leaves it out).
    """

    def forward(self, z: Tensor, zr: Tensor | None, tg: Tensor | None, div: Divergence, temperature: float): ...

    def backward(
        self,
        z: Tensor,
        zr: Tensor | None,
        tg: Tensor | None,
        div: Divergence,
        temperature: float,
        saved: Any,
        grads: tuple[Tensor | None, Tensor | None, Tensor | None],
        out_dtype: torch.dtype,
    ) -> Tensor: ...

    def forward_backward(
        self,
        z: Tensor,
        zr: Tensor | None,
        tg: Tensor | None,
        div: Divergence,
        temperature: float,
        grads: tuple[Tensor | None, Tensor | None, Tensor | None],
        out_dtype: torch.dtype,
    ) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]: ...


def _stats(z: Tensor, zr: Tensor | None, targets: Tensor | None, div: Divergence, temperature: float):
    """Row statistics of one chunk of raw logits z [n, V] (compute dtype): lp, p, π log π, lr, logp, entropy, div."""
    lp = torch.log_softmax(z / temperature, dim=-1)
    p = lp.exp()
    # π log π with 0 log 0 = 0: only −inf log-probs (masked logits) need the fill, so skip the copy without them
    plogp = p * (lp if lp.numel() == 0 or lp.min() > -math.inf else lp.masked_fill(p == 0, 0.0))
    entropy = -plogp.sum(-1)
    logp = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) if targets is not None else None
    lr = dv = None
    if zr is not None:
        lr = torch.log_softmax(zr / temperature, dim=-1)
        dv = div.rows(lp, lr)
    return lp, p, plogp, lr, logp, entropy, dv


def _dz_from_stats(stats, targets: Tensor | None, div: Divergence, temperature: float, grads) -> Tensor:
    """dL/dz [n, V] (compute dtype) from a chunk's :func:`_stats` and per-row upstream gradients."""
    lp, p, plogp, lr, _, entropy, _ = stats
    g_logp, g_ent, g_div = grads
    dz = torch.zeros_like(lp)
    if g_ent is not None:
        dz -= g_ent.unsqueeze(-1) * (plogp + p * entropy.unsqueeze(-1))
    if g_logp is not None and targets is not None:
        dz -= g_logp.unsqueeze(-1) * p
        dz.scatter_add_(-1, targets.unsqueeze(-1), g_logp.unsqueeze(-1))
    if g_div is not None and lr is not None:
        dz += g_div.unsqueeze(-1) * div.rows_grad(lp, lr)
    return dz.div_(temperature)


class TorchRows:
    """The torch row engine (see :class:`RowEngine`): log-softmax of the chunk, formulas of :mod:`.divergences`."""

    def forward(self, z, zr, tg, div, temperature):
        dtype = compute_dtype(z.dtype)
        zr = None if zr is None else zr.to(dtype)
        *_, logp, ent, dv = _stats(z.to(dtype), zr, tg, div, temperature)
        return logp, ent, dv, None

    def backward(self, z, zr, tg, div, temperature, saved, grads, out_dtype):
        dtype = compute_dtype(z.dtype)
        zr = None if zr is None else zr.to(dtype)
        stats = _stats(z.to(dtype), zr, None, div, temperature)
        return _dz_from_stats(stats, tg, div, temperature, grads).to(out_dtype)


TORCH_ROWS = TorchRows()


def _upstream(grads: tuple[Tensor | None, ...], sl: slice, dtype: torch.dtype) -> tuple[Tensor | None, ...]:
    return tuple(None if g is None else g[sl].to(dtype) for g in grads)


def _store(out: list[Tensor], sl: slice, logp: Tensor | None, ent: Tensor, dv: Tensor | None) -> None:
    out[1][sl] = ent
    if logp is not None:
        out[0][sl] = logp
    if dv is not None:
        out[2][sl] = dv


class ChunkedFromLogits(torch.autograd.Function):
    """(logp, entropy, div) from logits [N, V], chunk by chunk with ``engine``; recompute in backward."""

    @staticmethod
    def forward(ctx, logits, ref_logits, targets, div, temperature, chunk_rows, engine):
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(logits.dtype)
        n = logits.shape[0]
        out = [torch.zeros(n, dtype=dtype, device=logits.device) for _ in range(3)]
        ctx.saved_stats = []
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            zr = None if ref_logits is None else ref_logits[sl]
            tg = None if targets is None else targets[sl]
            logp, ent, dv, saved = engine.forward(logits[sl], zr, tg, div, temperature)
            _store(out, sl, logp, ent, dv)
            ctx.saved_stats.append(saved)
        ctx.save_for_backward(logits, ref_logits, targets)
        ctx.div, ctx.temperature, ctx.chunk_rows, ctx.engine = div, temperature, chunk_rows, engine
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_div):
        logits, ref_logits, targets = ctx.saved_tensors
        dtype = compute_dtype(logits.dtype)
        grad = torch.empty_like(logits)
        for i, start in enumerate(range(0, logits.shape[0], ctx.chunk_rows)):
            sl = slice(start, start + ctx.chunk_rows)
            zr = None if ref_logits is None else ref_logits[sl]
            tg = None if targets is None else targets[sl]
            grads = _upstream((g_logp, g_ent, g_div), sl, dtype)
            grad[sl] = ctx.engine.backward(
                logits[sl], zr, tg, ctx.div, ctx.temperature, ctx.saved_stats[i], grads, logits.dtype
            )
        return grad, None, None, None, None, None, None


def _project(h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return torch.nn.functional.linear(h, w, b)


class _GradAccumulator:
    """grad h [N, H] (hidden dtype), grad W [V, H] and grad b [V] (fp32 / fp64) from chunks of dL/dz."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, bool, bool]) -> None:
        dtype = compute_dtype(weight.dtype)
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.grad_h = torch.empty_like(hidden) if needs[0] else None
        self.grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs[1] else None
        self.grad_b = None
        if needs[2] and bias is not None:
            self.grad_b = torch.zeros(weight.shape[0], dtype=dtype, device=weight.device)

    def add(self, sl: slice, dz: Tensor) -> None:
        """Accumulate one chunk's dL/dz [n, V] (weight dtype) for rows ``sl``."""
        if self.grad_h is not None:
            self.grad_h[sl] = (dz @ self.weight).to(self.hidden.dtype)
        if self.grad_w is not None:
            h = self.hidden[sl].to(dz.dtype)
            if dz.dtype == self.grad_w.dtype:
                self.grad_w.addmm_(dz.T, h)
            else:
                self.grad_w += dz.T @ h
        if self.grad_b is not None:
            self.grad_b += dz.sum(0, dtype=self.grad_b.dtype)

    def result(self, scale: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(grad h, grad W, grad b) in the inputs' dtypes, optionally times a scalar upstream gradient."""
        out = []
        for g, like in ((self.grad_h, self.hidden), (self.grad_w, self.weight), (self.grad_b, self.bias)):
            if g is not None:
                g = g if scale is None else g * scale.to(g.dtype)
                g = g.to(like.dtype)
            out.append(g)
        return out[0], out[1], out[2]


class ChunkedFusedLinear(torch.autograd.Function):
    """(logp, entropy, div) from hidden [N, H] @ weight [V, H]ᵀ, chunk by chunk with ``engine``; recompute in
    backward (both projections are recomputed per chunk)."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, div, temperature, chunk_rows, engine
    ):
        ctx.set_materialize_grads(False)
        dtype = compute_dtype(weight.dtype)
        n = hidden.shape[0]
        out = [torch.zeros(n, dtype=dtype, device=hidden.device) for _ in range(3)]
        ctx.saved_stats = []
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = _project(hidden[sl], weight, bias)
            zr = None if ref_hidden is None else _project(ref_hidden[sl], ref_weight, ref_bias)
            tg = None if targets is None else targets[sl]
            logp, ent, dv, saved = engine.forward(z, zr, tg, div, temperature)
            _store(out, sl, logp, ent, dv)
            ctx.saved_stats.append(saved)
        ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets)
        ctx.div, ctx.temperature, ctx.chunk_rows, ctx.engine = div, temperature, chunk_rows, engine
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_div):
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets = ctx.saved_tensors
        dtype = compute_dtype(weight.dtype)
        acc = _GradAccumulator(hidden, weight, bias, ctx.needs_input_grad[:3])
        with torch.no_grad():
            for i, start in enumerate(range(0, hidden.shape[0], ctx.chunk_rows)):
                sl = slice(start, start + ctx.chunk_rows)
                z = _project(hidden[sl], weight, bias)
                zr = None if ref_hidden is None else _project(ref_hidden[sl], ref_weight, ref_bias)
                tg = None if targets is None else targets[sl]
                grads = _upstream((g_logp, g_ent, g_div), sl, dtype)
                dz = ctx.engine.backward(z, zr, tg, ctx.div, ctx.temperature, ctx.saved_stats[i], grads, weight.dtype)
                acc.add(sl, dz)
        return *acc.result(), None, None, None, None, None, None, None, None


class FusedLinearLossInForward(torch.autograd.Function):
    """Scalar Σ_t (w_logp·logp + w_ent·H + w_div·D) with grad h / W / b computed in the forward, chunk by chunk.

    Returns (loss, logp, entropy, div); only ``loss`` is differentiable (the per-token outputs are for logging).
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        ref_hidden,
        ref_weight,
        ref_bias,
        targets,
        weights,
        div,
        temperature,
        chunk_rows,
        engine,
    ):
        dtype = compute_dtype(weight.dtype)
        n = hidden.shape[0]
        out = [torch.zeros(n, dtype=dtype, device=hidden.device) for _ in range(3)]
        acc = _GradAccumulator(hidden, weight, bias, ctx.needs_input_grad[:3])
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = _project(hidden[sl], weight, bias)
            zr = None if ref_hidden is None else _project(ref_hidden[sl], ref_weight, ref_bias)
            tg = None if targets is None else targets[sl]
            logp, ent, dv, dz = engine.forward_backward(
                z, zr, tg, div, temperature, _upstream(weights, sl, dtype), weight.dtype
            )
            _store(out, sl, logp, ent, dv)
            acc.add(sl, dz)
        loss = sum((w.to(dtype) * o).sum() for w, o in zip(weights, out) if w is not None)
        loss = torch.as_tensor(loss, dtype=dtype, device=hidden.device)
        ctx.grads = acc.result()
        ctx.mark_non_differentiable(*out)
        return loss, out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_loss, *_):
        grad_h, grad_w, grad_b = (None if g is None else g * g_loss.to(g.dtype) for g in ctx.grads)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None, None


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
    return ChunkedFromLogits.apply(policy_logits, ref_logits, targets, divergence, temperature, rows, TORCH_ROWS)


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
    rows = chunk_rows or tiled.block_rows(hidden.shape[0], weight.shape[0])
    return tiled.TiledFusedLinear.apply(
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, divergence, temperature, rows
    )


def fused_linear_divergence_loss(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor | None,
    ref_weight: Tensor | None,
    targets: Tensor | None,
    weights_logp: Tensor | None,
    weights_entropy: Tensor | None,
    weights_div: Tensor | None,
    divergence: Divergence,
    temperature: float = 1.0,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    chunk_rows: int | None = None,
    engine: RowEngine | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradient-in-forward loss over flattened rows (hidden [N, H], weight [V, H], per-row weights [N] or None).

    Returns (loss [], logp [N], entropy [N], div [N]). ``engine`` None: the vocabulary-tiled torch driver
    (:class:`.tiled.TiledLossInForward`, ``chunk_rows`` tokens per block); a row engine (Triton): whole-row chunks
    (:class:`FusedLinearLossInForward`).
    """
    weights = tuple(None if w is None else w.detach() for w in (weights_logp, weights_entropy, weights_div))
    if engine is None:
        rows = chunk_rows or tiled.block_rows(hidden.shape[0], weight.shape[0])
        return tiled.TiledLossInForward.apply(
            hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, weights, divergence, temperature, rows
        )
    rows = chunk_rows or default_chunk_rows(hidden.shape[0], weight.shape[0])
    return FusedLinearLossInForward.apply(
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, weights, divergence, temperature, rows, engine
    )
