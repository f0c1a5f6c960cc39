"""Row kernels: one program per token row, streaming the vocabulary in blocks of ``BLOCK`` logits.

Forward (:func:`fwd_kernel`), for x = z / T and, with a reference, xr = zr / T:

* pass 1 — online log-sum-exp of both rows (running max m, running Σ exp(x − m), rescaled when m grows), and the
  target logit: lse, lse_r, logp = x_y − lse;
* pass 2 — with lp = x − lse and lr = xr − lse_r (masked entries, log-prob ≤ ``masked_lp``, replaced by
  ``log_floor`` for the divergence terms, as in :mod:`...divergences.base`): H = −Σ π lp, D = Σ TERM(lp, lr) and
  S = Σ DTERM(lp, lr) over entries with lp > masked_lp.
  Two passes make the value exact for *every* f-divergence (JS needs both normalizers inside its log).

Backward (:func:`bwd_kernel`) writes dL/dz for per-row upstream gradients (g_logp, g_ent, g_div) from the saved
lse, lse_r, H and S:  (g_logp (1[v = y] − π_v) − g_ent π_v (lp_v + H) + g_div (dterm_v − π_v S)) / T.

TERM / DTERM are ``@triton.jit`` functions passed as ``tl.constexpr`` arguments (see :mod:`.terms`); the
divergence's scalar parameters arrive as c0, c1, c2. ``ACC`` is the accumulation dtype (fp32, fp64 for fp64
inputs); -inf logits (masked vocabulary entries) contribute nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

_M_INIT = tl.constexpr(-1e30)  # finite start of the running max, so exp(m_old − m_new) never sees −inf − −inf


@triton.jit
def _row_lse(row_ptr, V, inv_t, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """log Σ_v exp(z_v / T) of one row, online over vocabulary blocks."""
    offs = tl.arange(0, BLOCK)
    m = tl.max(tl.full([BLOCK], _M_INIT, ACC), axis=0)
    s = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
    for start in range(0, V, BLOCK):
        cols = start + offs
        x = tl.load(row_ptr + cols, mask=cols < V, other=-float("inf")).to(ACC) * inv_t
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    return m + tl.log(s)


@triton.jit
def fwd_kernel(
    z_ptr,
    zr_ptr,
    tg_ptr,
    logp_ptr,
    ent_ptr,
    div_ptr,
    lse_ptr,
    lser_ptr,
    sd_ptr,
    stride_z,
    stride_zr,
    V,
    inv_t,
    masked_lp,
    log_floor,
    c0,
    c1,
    c2,
    TERM: tl.constexpr,
    DTERM: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_TG: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    lse = _row_lse(z_row, V, inv_t, ACC, BLOCK)
    tl.store(lse_ptr + row, lse)
    if HAS_TG:
        y = tl.load(tg_ptr + row)
        tl.store(logp_ptr + row, tl.load(z_row + y).to(ACC) * inv_t - lse)
    if HAS_REF:
        zr_row = zr_ptr + row * stride_zr
        lser = _row_lse(zr_row, V, inv_t, ACC, BLOCK)
        tl.store(lser_ptr + row, lser)
    offs = tl.arange(0, BLOCK)
    ent_acc = tl.zeros([BLOCK], ACC)
    div_acc = tl.zeros([BLOCK], ACC)
    sd_acc = tl.zeros([BLOCK], ACC)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        lp = tl.load(z_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_t - lse
        p = tl.exp(lp)
        ent_acc += tl.where(p > 0, p * lp, 0.0)
        if HAS_REF:
            lr = tl.load(zr_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_t - lser
            lpf = tl.where(lp <= masked_lp, log_floor, lp)
            lrf = tl.where(lr <= masked_lp, log_floor, lr)
            div_acc += tl.where(mask, TERM(lpf, lrf, c0, c1, c2), 0.0)
            sd_acc += tl.where(mask & (lp > masked_lp), DTERM(lpf, lrf, c0, c1, c2), 0.0)
    tl.store(ent_ptr + row, -tl.sum(ent_acc, axis=0))
    if HAS_REF:
        tl.store(div_ptr + row, tl.sum(div_acc, axis=0))
        tl.store(sd_ptr + row, tl.sum(sd_acc, axis=0))


@triton.jit
def bwd_kernel(
    z_ptr,
    zr_ptr,
    tg_ptr,
    dz_ptr,
    lse_ptr,
    lser_ptr,
    ent_ptr,
    sd_ptr,
    g_logp_ptr,
    g_ent_ptr,
    g_div_ptr,
    stride_z,
    stride_zr,
    stride_dz,
    V,
    inv_t,
    masked_lp,
    log_floor,
    c0,
    c1,
    c2,
    DTERM: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_TG: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    dz_row = dz_ptr + row * stride_dz
    lse = tl.load(lse_ptr + row)
    h = tl.load(ent_ptr + row)
    g_ent = tl.load(g_ent_ptr + row).to(ACC)
    if HAS_TG:
        y = tl.load(tg_ptr + row)
        g_logp = tl.load(g_logp_ptr + row).to(ACC)
    if HAS_REF:
        zr_row = zr_ptr + row * stride_zr
        lser = tl.load(lser_ptr + row)
        s_d = tl.load(sd_ptr + row)
        g_div = tl.load(g_div_ptr + row).to(ACC)
    offs = tl.arange(0, BLOCK)
    for start in range(0, V, BLOCK):
        cols = start + offs
        mask = cols < V
        lp = tl.load(z_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_t - lse
        p = tl.exp(lp)
        dz = -g_ent * tl.where(p > 0, p * (lp + h), 0.0)
        if HAS_TG:
            dz += g_logp * (tl.where(cols == y, 1.0, 0.0) - p)
        if HAS_REF:
            lr = tl.load(zr_row + cols, mask=mask, other=-float("inf")).to(ACC) * inv_t - lser
            lrf = tl.where(lr <= masked_lp, log_floor, lr)
            d = tl.where(lp > masked_lp, DTERM(tl.where(lp <= masked_lp, log_floor, lp), lrf, c0, c1, c2), 0.0)
            dz += g_div * (d - p * s_d)
        tl.store(dz_row + cols, (dz * inv_t).to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def terms_kernel(
    lp_ptr, lr_ptr, t_ptr, d_ptr, n, c0, c1, c2, TERM: tl.constexpr, DTERM: tl.constexpr, BLOCK: tl.constexpr
):
    """Elementwise TERM / DTERM of flat lp, lr (for the term-vs-torch consistency test)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    lp = tl.load(lp_ptr + offs, mask=mask, other=0.0)
    lr = tl.load(lr_ptr + offs, mask=mask, other=0.0)
    tl.store(t_ptr + offs, TERM(lp, lr, c0, c1, c2), mask=mask)
    tl.store(d_ptr + offs, DTERM(lp, lr, c0, c1, c2), mask=mask)
