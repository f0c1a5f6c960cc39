"""Block-and-tile fused-linear drivers (torch, the CPU path): logits = hidden @ weightᵀ (+ bias) for a block of
token rows at a time, then the row math on cache-sized vocabulary tiles of that block.

Per token block (``rows`` tokens; both sides' scaled logits of the block are kept, [rows, V] each, one GEMM per side
so each lm_head row is read once per block), with the block's rows split over threads (:func:`_in_threads`):

1. per vocabulary tile: an online log-sum-exp fold (running max m and Σ exp(z − m), rescaled when m grows);
2. per tile: lp = z − lse and lr = z_r − lse_r (in place), Σ π log π, Σ term and Σ dterm (the divergence's formulas,
   :mod:`..divergences`); then log π(y) by a gather;
3. gradient in the forward only: per tile, with T the temperature,

       dL/dz = a·dterm − π·(b·lp + c),   a = w_div/T,  b = w_ent/T,  c = (w_logp + w_ent·H + w_div·Σ dterm)/T,

   (the chain rule of :mod:`.chunked` through log-softmax, summed over the three outputs), written over the block's
   logits; then grad h = dz @ W and grad W += dzᵀ @ h (one GEMM each per block); the target's +w_logp/T enters as
   rows of W and h.

The recompute-in-backward driver keeps (lse, lse_r, H, Σ dterm) per row; its backward needs no full row at once,
so it loops over vocabulary chunks outermost (all tokens × a slice of the vocabulary, :func:`backward_chunk`),
re-projects each chunk and runs step 3 with the upstream gradients as weights: each lm_head row is read once and
its grad W row written once, instead of once per token block, and the GEMMs have all tokens as rows. GEMM count:
4 with the gradient in the forward (as many as autograd through full logits), 6 when recomputing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..numerics import compute_dtype

if TYPE_CHECKING:
    from ..divergences import Divergence

#: [rows × V] logits elements per side kept for one token block in the forward (128 MiB per fp32 side): at
#: V = 151,936 that is 220 rows, enough for the GEMMs to reuse each lm_head tile across many tokens
BLOCK_ELEMENTS = 2**25
#: [rows × width] elements of one vocabulary tile (2 MiB fp32): the tile and its temporaries stay in the L2/L3 cache
TILE_ELEMENTS = 2**19
#: narrowest vocabulary chunk of the recompute backward (its GEMMs stay wide; more tokens: row groups)
MIN_CHUNK_WIDTH = 1024
#: fewest rows a thread takes in a block's elementwise work
MIN_ROWS_PER_THREAD = 8


def block_rows(n_rows: int, vocab: int) -> int:
    """Token rows per block: ``BLOCK_ELEMENTS`` logits per side."""
    return max(1, min(n_rows, BLOCK_ELEMENTS // max(vocab, 1)))


def tile_width(rows: int, vocab: int) -> int:
    """Vocabulary entries per tile for blocks of ``rows`` tokens: ``TILE_ELEMENTS`` logits per tile."""
    return max(1, min(vocab, TILE_ELEMENTS // max(rows, 1)))


def backward_chunk(n_rows: int, vocab: int, elements: int) -> tuple[int, int]:
    """(rows, vocabulary width) of the recompute backward's chunks of about ``elements`` logits per side: all rows
    and ``elements / n_rows`` vocabulary entries, unless that is narrower than ``MIN_CHUNK_WIDTH`` (then fewer rows)."""
    width = min(vocab, max(elements // max(n_rows, 1), MIN_CHUNK_WIDTH))
    return max(1, min(n_rows, elements // width)), width


def _tiles(vocab: int, width: int) -> list[tuple[int, int]]:
    return [(v0, min(vocab, v0 + width)) for v0 in range(0, vocab, width)]


class _Side:
    """One projection: hidden [N, H] @ weight [V, H]ᵀ (+ bias [V]), times ``scale`` (1 / temperature)."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float) -> None:
        self.hidden, self.weight, self.bias, self.scale = hidden, weight, bias, scale

    def project(self, out: Tensor, rows: slice, v0: int, v1: int) -> Tensor:
        """Scaled logits of tokens ``rows`` and vocabulary entries [v0, v1) into ``out`` (the accumulation dtype;
        half-precision weights: the GEMM runs in their dtype, then widens)."""
        h, w = self.hidden[rows], self.weight[v0:v1]
        b = None if self.bias is None else self.bias[v0:v1]
        if w.dtype == out.dtype:
            if b is None:
                torch.mm(h, w.t(), out=out)
            else:
                torch.addmm(b, h, w.t(), out=out)
        else:
            out.copy_(torch.nn.functional.linear(h, w, b))
        if self.scale != 1.0:
            out.mul_(self.scale)
        return out


def _fold_lse(z: Tensor, m: Tensor, s: Tensor, scratch: Tensor) -> None:
    """Online log-sum-exp: fold tile z [n, w] into the running max m [n] and Σ exp(z − m) s [n], in place."""
    new = torch.maximum(m, z.amax(-1))
    base = new.masked_fill(new == -math.inf, 0.0)  # rows whose entries so far are all −inf
    e = torch.sub(z, base.unsqueeze(-1), out=scratch).exp_()
    s.mul_(torch.exp(m - base)).add_(e.sum(-1))
    m.copy_(new)


def _has_neg_inf(lp: Tensor) -> bool:
    return bool(lp.amin() == -math.inf)


def _plogp_sum(lp: Tensor, p_buf: Tensor, q_buf: Tensor) -> Tensor:
    """Σ π log π over a tile of log-probs (0 log 0 = 0)."""
    p = torch.exp(lp, out=p_buf)
    plogp = torch.mul(p, lp, out=q_buf)
    if _has_neg_inf(lp):
        plogp.masked_fill_(p == 0, 0.0)
    return plogp.sum(-1)


def _tile_dz(
    out: Tensor,
    lp: Tensor,
    dterm: Tensor | None,
    a: Tensor | None,
    b: Tensor | None,
    c: Tensor,
    p_buf: Tensor,
    q_buf: Tensor,
) -> Tensor:
    """out = a·dterm − π·(b·lp + c) for a tile (a, b, c per row [n], a / b None for 0); ``out`` may alias ``lp``."""
    p = torch.exp(lp, out=p_buf)
    if b is None:
        q = torch.mul(p, c.unsqueeze(-1), out=q_buf)
    else:
        q = torch.addcmul(c.unsqueeze(-1), lp, b.unsqueeze(-1), out=q_buf).mul_(p)
        if _has_neg_inf(lp):
            q.masked_fill_(p == 0, 0.0)
    if dterm is None or a is None:
        return torch.neg(q, out=out)
    return torch.mul(dterm, a.unsqueeze(-1), out=out).sub_(q)


def _coefficients(weights, entropy: Tensor, dterm_sum: Tensor | None, scale: float):
    """(a, b, c, target coefficient) of :func:`_tile_dz` for per-row weights (w_logp, w_ent, w_div), None for 0."""
    w_logp, w_ent, w_div = weights
    c = torch.zeros_like(entropy)
    if w_logp is not None:
        c += w_logp
    if w_ent is not None:
        c += w_ent * entropy
    if w_div is not None and dterm_sum is not None:
        c += w_div * dterm_sum
    a = None if w_div is None or dterm_sum is None else w_div * scale
    b = None if w_ent is None else w_ent * scale
    y_coef = None if w_logp is None else w_logp * scale
    return a, b, c * scale, y_coef


class _Grads:
    """grad h [N, H], grad W [V, H], grad b [V] of the policy side, accumulated in the accumulation dtype."""

    def __init__(self, side: _Side, needs: tuple[bool, bool, bool]) -> None:
        dtype = compute_dtype(side.weight.dtype)
        w = side.weight
        self.side = side
        self.h = torch.zeros(side.hidden.shape, dtype=dtype, device=w.device) if needs[0] else None
        self.w = torch.zeros(w.shape, dtype=dtype, device=w.device) if needs[1] else None
        self.b = torch.zeros(w.shape[0], dtype=dtype, device=w.device) if needs[2] and side.bias is not None else None

    def add_tile(self, rows: slice, v0: int, v1: int, dz: Tensor) -> None:
        """Accumulate the tile dL/dz [n, v1 − v0] of tokens ``rows``."""
        w = self.side.weight
        g = dz if dz.dtype == w.dtype else dz.to(w.dtype)
        if self.h is not None:
            if g.dtype == self.h.dtype:
                self.h[rows].addmm_(g, w[v0:v1])
            else:
                self.h[rows] += g @ w[v0:v1]
        if self.w is not None:
            h = self.side.hidden[rows].to(w.dtype)
            if g.dtype == self.w.dtype:
                self.w[v0:v1].addmm_(g.t(), h)
            else:
                self.w[v0:v1] += g.t() @ h
        if self.b is not None:
            self.b[v0:v1] += dz.sum(0, dtype=self.b.dtype)

    def add_targets(self, rows: slice, targets: Tensor, coef: Tensor) -> None:
        """Accumulate dL/dz[t, y_t] += coef_t for tokens ``rows`` (the one-hot part of ∂log π(y)/∂z)."""
        side = self.side
        if self.h is not None:
            self.h[rows] += coef.unsqueeze(-1) * side.weight[targets].to(self.h.dtype)
        if self.w is not None:
            self.w.index_add_(0, targets, coef.unsqueeze(-1) * side.hidden[rows].to(self.w.dtype))
        if self.b is not None:
            self.b.index_add_(0, targets, coef.to(self.b.dtype))

    def result(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(grad h, grad W, grad b) in the inputs' dtypes."""
        side = self.side
        pairs = ((self.h, side.hidden), (self.w, side.weight), (self.b, side.bias))
        return tuple(None if g is None else g.to(like.dtype) for g, like in pairs)


def _in_threads(n: int, fn: Callable[[slice], None]) -> None:
    """fn(rows) over up to ``torch.get_num_threads()`` contiguous ranges of ``n`` rows, each range in its own thread
    with one intra-op thread: the elementwise work of a block needs no synchronisation between its rows, so this
    replaces one OpenMP barrier per torch op (costly on small tiles, ruinous on a shared machine) by one per block."""
    threads = torch.get_num_threads()
    k = max(1, min(threads, n // MIN_ROWS_PER_THREAD))
    if k == 1:
        fn(slice(0, n))
        return

    grad_mode = torch.is_grad_enabled()  # thread-local: the workers take the caller's

    def task(rows: slice) -> None:
        torch.set_num_threads(1)
        with torch.set_grad_enabled(grad_mode):
            fn(rows)

    try:
        with ThreadPoolExecutor(k) as pool:
            for job in [pool.submit(task, slice(i * n // k, (i + 1) * n // k)) for i in range(k)]:
                job.result()
    finally:
        torch.set_num_threads(threads)


class _Blocks:
    """The token-block loop shared by both drivers: per block, both projections in one GEMM each into [rows, V]
    buffers, the row math of the module docstring tile by tile (rows split over threads), then the gradient GEMMs."""

    def __init__(self, pol: _Side, ref: _Side | None, targets: Tensor | None, div: Divergence, rows: int) -> None:
        self.pol, self.ref, self.targets, self.div = pol, ref, targets, div
        weight = pol.weight
        self.dtype = compute_dtype(weight.dtype)
        self.n, self.vocab = pol.hidden.shape[0], weight.shape[0]
        self.rows = max(1, min(rows, self.n))
        self.tiles = _tiles(self.vocab, tile_width(self.rows, self.vocab))
        self.z = torch.empty((self.rows, self.vocab), dtype=self.dtype, device=weight.device)
        self.zr = None if ref is None else torch.empty_like(self.z)

    def blocks(self):
        """Yield (global rows, z, zr) per block, with both sides' scaled logits projected into the buffers."""
        for start in range(0, self.n, self.rows):
            sl = slice(start, min(start + self.rows, self.n))
            n = sl.stop - sl.start
            z = self.pol.project(self.z[:n], sl, 0, self.vocab)
            zr = None if self.ref is None else self.ref.project(self.zr[:n], sl, 0, self.vocab)
            yield sl, z, zr

    def scratch(self, n: int) -> tuple[Tensor, Tensor]:
        width = self.tiles[0][1] - self.tiles[0][0]
        return tuple(torch.empty((n, width), dtype=self.dtype, device=self.z.device) for _ in range(2))

    def lse(self, z: Tensor, p_buf: Tensor) -> Tensor:
        m = torch.full(z.shape[:1], -math.inf, dtype=self.dtype, device=z.device)
        s = torch.zeros_like(m)
        for v0, v1 in self.tiles:
            _fold_lse(z[:, v0:v1], m, s, p_buf[:, : v1 - v0])
        return m + s.log()

    def dz(self, z: Tensor, dterm: Tensor | None, coefs, bufs) -> None:
        """z (log-probs) <- dL/dz tile by tile, from the divergence's dterm kept in ``dterm`` (None: no reference)."""
        a, b, c, _ = coefs
        for v0, v1 in self.tiles:
            lp = z[:, v0:v1]
            d = None if a is None else dterm[:, v0:v1]
            _tile_dz(lp, lp, d, a, b, c, bufs[0][:, : v1 - v0], bufs[1][:, : v1 - v0])


class _Forward(_Blocks):
    """Steps 1–2 of the module docstring for every token block, optionally followed by step 3 (``weights``)."""

    def __init__(self, pol: _Side, ref: _Side | None, targets: Tensor | None, div: Divergence, rows: int) -> None:
        super().__init__(pol, ref, targets, div, rows)

        def zeros() -> Tensor:
            return torch.zeros(self.n, dtype=self.dtype, device=pol.weight.device)

        self.logp, self.entropy, self.div_value = zeros(), zeros(), zeros()
        self.lse_pol, self.lse_ref, self.dterm_sum = zeros(), zeros(), zeros()

    def run(self, weights: tuple[Tensor | None, ...] | None = None, grads: _Grads | None = None) -> None:
        for sl, z, zr in self.blocks():
            block_weights = None
            if weights is not None:
                block_weights = tuple(None if w is None else w[sl].to(self.dtype) for w in weights)
            _in_threads(sl.stop - sl.start, partial(self._rows, sl, z, zr, block_weights))
            if grads is not None:
                grads.add_tile(sl, 0, self.vocab, z)
                y_coef = (
                    None if weights is None or weights[0] is None else weights[0][sl].to(self.dtype) * self.pol.scale
                )
                if y_coef is not None and self.targets is not None:
                    grads.add_targets(sl, self.targets[sl], y_coef)

    def _rows(self, sl: slice, z: Tensor, zr: Tensor | None, weights, r: slice) -> None:
        g = slice(sl.start + r.start, sl.start + r.stop)
        z, zr = z[r], None if zr is None else zr[r]
        bufs = self.scratch(r.stop - r.start)
        lse = self.lse_pol[g] = self.lse(z, bufs[0])
        if zr is not None:
            lse_ref = self.lse_ref[g] = self.lse(zr, bufs[0])
        keep_dterm = weights is not None and weights[2] is not None
        plogp = torch.zeros_like(lse)
        div_value, dterm_sum = torch.zeros_like(plogp), torch.zeros_like(plogp)
        for v0, v1 in self.tiles:
            p_buf, q_buf = bufs[0][:, : v1 - v0], bufs[1][:, : v1 - v0]
            lp = z[:, v0:v1].sub_(lse.unsqueeze(-1))
            plogp += _plogp_sum(lp, p_buf, q_buf)
            if zr is not None:
                lr = zr[:, v0:v1].sub_(lse_ref.unsqueeze(-1))
                floored = self.div.floored(lp, lr)
                div_value += self.div.term(*floored).sum(-1)
                d = self.div.dterm_masked(lp, lr, floored)
                dterm_sum += d.sum(-1)
                if keep_dterm:
                    lr.copy_(d)
        self.entropy[g] = entropy = -plogp
        if zr is not None:
            self.div_value[g], self.dterm_sum[g] = div_value, dterm_sum
        if self.targets is not None:
            self.logp[g] = z.gather(1, self.targets[g].unsqueeze(-1)).squeeze(-1)
        if weights is not None:
            row_weights = tuple(None if w is None else w[r] for w in weights)
            coefs = _coefficients(row_weights, entropy, dterm_sum if zr is not None else None, self.pol.scale)
            self.dz(z, zr, coefs, bufs)


def _sides(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, temperature: float):
    scale = 1.0 / temperature
    pol = _Side(hidden, weight, bias, scale)
    ref = None if ref_hidden is None else _Side(ref_hidden.detach(), ref_weight.detach(), _detach(ref_bias), scale)
    return pol, ref


def _detach(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


class TiledFusedLinear(torch.autograd.Function):
    """(logp, entropy, div) from hidden [N, H] @ weight [V, H]ᵀ, vocabulary-tiled; recompute in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, div, temperature, rows):
        ctx.set_materialize_grads(False)
        pol, ref = _sides(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, temperature)
        fwd = _Forward(pol, ref, targets, div, rows)
        fwd.run()
        ctx.save_for_backward(
            hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, fwd.lse_pol, fwd.lse_ref, fwd.entropy,
            fwd.dterm_sum,
        )  # fmt: skip
        ctx.div, ctx.temperature, ctx.rows = div, temperature, fwd.rows
        return fwd.logp, fwd.entropy, fwd.div_value

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_div):
        hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, lse, lse_ref, entropy, dterm_sum = (
            ctx.saved_tensors
        )
        pol, ref = _sides(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, ctx.temperature)
        grads = _Grads(pol, ctx.needs_input_grad[:3])
        dtype, (n, vocab) = compute_dtype(weight.dtype), (hidden.shape[0], weight.shape[0])
        upstream = tuple(None if g is None else g.to(dtype) for g in (g_logp, g_ent, g_div))
        upstream = (None if targets is None else upstream[0], upstream[1], None if ref is None else upstream[2])
        coefs = _coefficients(upstream, entropy, None if ref is None else dterm_sum, pol.scale)
        rows, width = backward_chunk(n, vocab, ctx.rows * vocab)
        buf = torch.empty(rows * width, dtype=dtype, device=weight.device)
        buf_ref = None if ref is None else torch.empty_like(buf)
        # tiles of whole chunk rows where they fit (contiguous memory), else of one row
        tile_rows_n = max(1, TILE_ELEMENTS // width)
        tiles = _tiles(width, tile_width(tile_rows_n, width))

        def chunk_rows(g: slice, zc: Tensor, zrc: Tensor | None, r: slice) -> None:
            """dL/dz over rows r of the chunk (global rows g.start + r), tile by tile, in place of the logits."""
            bufs = [torch.empty((tile_rows_n, tiles[0][1]), dtype=dtype, device=zc.device) for _ in range(2)]
            for i in range(r.start, r.stop, tile_rows_n):
                rr = slice(i, min(i + tile_rows_n, r.stop))
                gr = slice(g.start + rr.start, g.start + rr.stop)
                a, b, c, _ = (None if x is None else x[gr] for x in coefs)
                n_r = rr.stop - rr.start
                for t0, t1 in tiles:
                    if t0 >= zc.shape[1]:
                        break
                    lp, d = zc[rr, t0:t1].sub_(lse[gr].unsqueeze(-1)), None
                    if zrc is not None:
                        lr = zrc[rr, t0:t1].sub_(lse_ref[gr].unsqueeze(-1))
                        d = None if a is None else ctx.div.dterm_masked(lp, lr)
                    w = lp.shape[1]
                    _tile_dz(lp, lp, d, a, b, c, bufs[0][:n_r, :w], bufs[1][:n_r, :w])

        with torch.no_grad():  # vocabulary chunks outermost: each lm_head row is read, and its grad written, once
            for start in range(0, n, rows):
                g = slice(start, min(start + rows, n))
                for v0, v1 in _tiles(vocab, width):
                    shape = (g.stop - g.start, v1 - v0)  # contiguous views of the buffers for the GEMMs' outputs
                    zc = pol.project(buf[: shape[0] * shape[1]].view(shape), g, v0, v1)
                    zrc = None if ref is None else ref.project(buf_ref[: shape[0] * shape[1]].view(shape), g, v0, v1)
                    _in_threads(g.stop - g.start, partial(chunk_rows, g, zc, zrc))
                    grads.add_tile(g, v0, v1, zc)
            if upstream[0] is not None:
                grads.add_targets(slice(0, n), targets, upstream[0] * pol.scale)
        return *grads.result(), None, None, None, None, None, None, None


class TiledLossInForward(torch.autograd.Function):
    """Scalar Σ_t (w_logp·logp + w_ent·H + w_div·D) with grad h / W / b computed in the forward (vocabulary-tiled).

    Returns (loss, logp, entropy, div); only ``loss`` is differentiable. The backward hands over the gradients
    computed in the forward (scaled in place by the upstream scalar), so it runs once per forward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, weights, div, temperature, rows):
        pol, ref = _sides(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, temperature)
        fwd = _Forward(pol, ref, targets, div, rows)
        grads = _Grads(pol, ctx.needs_input_grad[:3])
        fwd.run(weights, grads)
        outs = (fwd.logp, fwd.entropy, fwd.div_value)
        loss = sum((w.to(o.dtype) * o).sum() for w, o in zip(weights, outs) if w is not None)
        loss = torch.as_tensor(loss, dtype=fwd.dtype, device=hidden.device)
        ctx.grads = grads.result()
        ctx.mark_non_differentiable(*outs)
        return loss, *outs

    @staticmethod
    def backward(ctx, g_loss, *_):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_linear_divergence_loss: backward ran twice; its gradients are computed in the forward and "
                "handed over once (call the op again, or use fused_linear_logprob_entropy_divergence)"
            )
        grads, ctx.grads = ctx.grads, None  # no second reference: autograd can take the tensors without a copy
        grads = tuple(None if g is None else g.mul_(g_loss.to(g.dtype)) for g in grads)
        return *grads, None, None, None, None, None, None, None, None
