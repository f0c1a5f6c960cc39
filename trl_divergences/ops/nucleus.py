"""Nucleus statistics over a large vocabulary, row chunk by row chunk: SIREN's top-p entropy (differentiable), the
probability mass above the target token, and Lp-Reg's min-p proxy log-probability.

With p = softmax(z / T) over the full vocabulary (T the temperature) and y the target token of a row:

* top-p entropy (SIREN, selective entropy regularization: "Rethinking Entropy Regularization in Large Reasoning
  Models", arXiv 2509.25133, official ``efficient_top_p_sampling``): with p_(1) ≥ … ≥ p_(K) the K = min(top_k, V)
  largest probabilities and C_j = Σ_{i ≤ j} p_(i), j* = the first j with C_j ≥ top_p (searchsorted, left side;
  K + 1 when never reached); the nucleus N is the ranks before j*, so the entry that crosses top_p is excluded (the
  nucleus is empty when the top-1 probability already reaches top_p, and all K entries when their mass never does).
  With q = softmax(z_N / T) (p restricted to N and renormalized),

      H^p = −Σ_{v∈N} q_v log q_v,      ∂H^p/∂z_v = −q_v (log q_v + H^p) / T for v ∈ N, 0 elsewhere

  (membership itself is not differentiated; an empty or one-entry nucleus gives H^p = 0 with zero gradient);
* mass above the target: Σ_{v : p_v > p_y} p_v (compared through their logits: the exact order of p);
* min-p proxy log-probability (Lp-Reg, Low-probability Regularization, arXiv 2510.03222, official
  ``apply_min_p``): the filter uses the untempered logits, keep v iff z_v ≥ max_u z_u + log(min_p) (⇔
  softmax(z)_v ≥ min_p · max_u softmax(z)_u); π_proxy = softmax over the kept entries of z / T, and
  proxy_logp = log π_proxy(y) = z_y / T − logsumexp_kept(z / T) when y is kept, else ``MASKED_LOG_PROB``.

Only the top-p entropy carries a gradient; the other two are detached. The forward keeps per-row outputs only and
the backward recomputes each chunk's logits (from the logits tensor, or from hidden @ Wᵀ + b like
:class:`.chunked.ChunkedFusedLinear`), so memory is O(chunk_rows · V) and the fused variant never holds the [N, V]
logits. Accumulation is fp32 for half-precision inputs (float64 kept). −inf logits (masked vocabulary entries)
have zero probability and no gradient; every row needs at least one finite logit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..numerics import MASKED_LOG_PROB, compute_dtype
from .chunked import _GradAccumulator, _project, default_chunk_rows


class NucleusStats(NamedTuple):
    """Per-position nucleus statistics, each [...] in the accumulation dtype, or None when not requested."""

    topp_entropy: Tensor | None
    mass_above: Tensor | None
    proxy_logp: Tensor | None


class _Spec(NamedTuple):
    top_p: float | None
    top_k: int
    min_p: float | None
    temperature: float


def _check_unit_interval(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _spec(top_p: float | None, top_k: int, min_p: float | None, temperature: float, chunk_rows: int | None) -> _Spec:
    from . import _check_temperature  # ops/__init__ imports this module: a module-level import would be circular

    if isinstance(top_k, bool) or not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if chunk_rows is not None and (
        isinstance(chunk_rows, bool) or not (isinstance(chunk_rows, int) and chunk_rows >= 1)
    ):
        raise ValueError(f"chunk_rows must be None or an int >= 1, got {chunk_rows!r}")
    return _Spec(
        _check_unit_interval("top_p", top_p),
        top_k,
        _check_unit_interval("min_p", min_p),
        _check_temperature(temperature),
    )


def _nucleus(s: Tensor, p: Tensor, spec: _Spec) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Nucleus of one chunk of tempered logits s [n, V] with p = softmax(s) (compute dtype).

    Returns (top-K indices [n, K], q [n, K], q log q [n, K], H^p [n]), q and q log q being 0 outside the nucleus.
    """
    vals, idx = torch.topk(s, min(spec.top_k, s.shape[-1]), dim=-1)
    cum = p.gather(-1, idx).cumsum(-1)
    cut = torch.searchsorted(cum, cum.new_full((s.shape[0], 1), spec.top_p))
    # an empty nucleus gives exactly what the nucleus {top-1} gives (H^p = 0, zero gradient), and keeps q finite
    inside = torch.arange(vals.shape[-1], device=s.device) < cut.clamp_(min=1)
    lq = vals - torch.logsumexp(vals.masked_fill(~inside, -math.inf), dim=-1, keepdim=True)
    q = torch.where(inside, lq.exp(), 0.0)
    qlogq = q * lq.masked_fill(q == 0, 0.0)
    return idx, q, qlogq, -qlogq.sum(-1)


def _chunk_stats(z_raw: Tensor, targets: Tensor | None, spec: _Spec) -> NucleusStats:
    """The requested statistics [n] of one chunk of raw logits z [n, V]."""
    z = z_raw.to(compute_dtype(z_raw.dtype))
    s = z / spec.temperature
    p = torch.softmax(s, dim=-1)
    entropy = None if spec.top_p is None else _nucleus(s, p, spec)[3]
    mass = proxy = None
    if targets is not None:
        y = targets.unsqueeze(-1)
        s_y = s.gather(-1, y)
        mass = torch.where(s > s_y, p, 0.0).sum(-1)
        if spec.min_p is not None:
            keep = z >= z.amax(-1, keepdim=True) + math.log(spec.min_p)
            logp = (s_y - torch.logsumexp(s.masked_fill(~keep, -math.inf), dim=-1, keepdim=True)).squeeze(-1)
            proxy = torch.where(keep.gather(-1, y).squeeze(-1), logp, MASKED_LOG_PROB)
    return NucleusStats(entropy, mass, proxy)


def _chunk_entropy_grad(z_raw: Tensor, g: Tensor, spec: _Spec, out_dtype: torch.dtype) -> Tensor:
    """dL/dz [n, V] of one chunk of raw logits for the upstream gradient g [n] of H^p (compute dtype)."""
    s = z_raw.to(compute_dtype(z_raw.dtype)) / spec.temperature
    idx, q, qlogq, entropy = _nucleus(s, torch.softmax(s, dim=-1), spec)
    dz = (qlogq + q * entropy.unsqueeze(-1)).mul_(g.unsqueeze(-1) / -spec.temperature)
    return torch.zeros_like(s).scatter_(-1, idx, dz).to(out_dtype)


def _outputs(n: int, targets: Tensor | None, spec: _Spec, dtype: torch.dtype, device: torch.device) -> NucleusStats:
    def buf(wanted: bool) -> Tensor | None:
        return torch.empty(n, dtype=dtype, device=device) if wanted else None

    has_targets = targets is not None
    return NucleusStats(buf(spec.top_p is not None), buf(has_targets), buf(has_targets and spec.min_p is not None))


def _store(out: NucleusStats, sl: slice, chunk: NucleusStats) -> None:
    for o, c in zip(out, chunk):
        if o is not None:
            o[sl] = c


def _finish(ctx, out: NucleusStats) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    detached = [o for o in out[1:] if o is not None]
    if detached:
        ctx.mark_non_differentiable(*detached)
    return tuple(out)


class NucleusFromLogits(torch.autograd.Function):
    """:class:`NucleusStats` of logits [N, V], chunk by chunk; the backward recomputes each chunk's nucleus."""

    @staticmethod
    def forward(ctx, logits, targets, spec, chunk_rows):
        ctx.set_materialize_grads(False)
        n = logits.shape[0]
        out = _outputs(n, targets, spec, compute_dtype(logits.dtype), logits.device)
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            _store(out, sl, _chunk_stats(logits[sl], None if targets is None else targets[sl], spec))
        ctx.save_for_backward(logits)
        ctx.spec, ctx.chunk_rows = spec, chunk_rows
        return _finish(ctx, out)

    @staticmethod
    def backward(ctx, g_entropy, *_):
        if g_entropy is None:
            return None, None, None, None
        (logits,) = ctx.saved_tensors
        g_entropy = g_entropy.to(compute_dtype(logits.dtype))
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            grad[sl] = _chunk_entropy_grad(logits[sl], g_entropy[sl], ctx.spec, logits.dtype)
        return grad, None, None, None


class NucleusFusedLinear(torch.autograd.Function):
    """:class:`NucleusStats` of logits hidden [N, H] @ weight [V, H]ᵀ (+ bias [V]), chunk by chunk; the backward
    recomputes each chunk's projection and chains dH^p/dz to hidden, weight and bias."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, spec, chunk_rows):
        ctx.set_materialize_grads(False)
        n = hidden.shape[0]
        out = _outputs(n, targets, spec, compute_dtype(weight.dtype), hidden.device)
        for start in range(0, n, chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = _project(hidden[sl], weight, bias)
            _store(out, sl, _chunk_stats(z, None if targets is None else targets[sl], spec))
        ctx.save_for_backward(hidden, weight, bias)
        ctx.spec, ctx.chunk_rows = spec, chunk_rows
        return _finish(ctx, out)

    @staticmethod
    def backward(ctx, g_entropy, *_):
        if g_entropy is None:
            return None, None, None, None, None, None
        hidden, weight, bias = ctx.saved_tensors
        g_entropy = g_entropy.to(compute_dtype(weight.dtype))
        acc = _GradAccumulator(hidden, weight, bias, ctx.needs_input_grad[:3])
        with torch.no_grad():
            for start in range(0, hidden.shape[0], ctx.chunk_rows):
                sl = slice(start, start + ctx.chunk_rows)
                z = _project(hidden[sl], weight, bias)
                acc.add(sl, _chunk_entropy_grad(z, g_entropy[sl], ctx.spec, weight.dtype))
        return *acc.result(), None, None, None


def _unflatten(out: NucleusStats, lead: tuple[int, ...]) -> NucleusStats:
    return NucleusStats(*(None if o is None else o.reshape(lead) for o in out))


def nucleus_stats(
    logits: Tensor,
    targets: Tensor | None = None,
    *,
    top_p: float | None = None,
    top_k: int = 10000,
    min_p: float | None = None,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> NucleusStats:
    """Per-position ``(topp_entropy, mass_above, proxy_logp)`` from logits, chunk by chunk (see the module docstring).

    * ``topp_entropy`` H^p (iff ``top_p`` is given): SIREN's top-p entropy (arXiv 2509.25133), the entropy of
      p = softmax(z / T) restricted to its nucleus — the ranks (among the top ``top_k``) before the first one whose
      cumulative probability reaches ``top_p`` — and renormalized. Differentiable w.r.t. the logits:
      ∂H^p/∂z_v = −q_v (log q_v + H^p) / T on the nucleus, 0 elsewhere. The official code adds 1e-12 inside the log
      and the normalizer; this is computed exactly (log-softmax of the nucleus logits).
    * ``mass_above`` (iff ``targets`` is given): Σ_{v : p_v > p_y} p_v, detached.
    * ``proxy_logp`` (iff ``min_p`` and ``targets`` are given): log-probability of the target under Lp-Reg's min-p
      proxy (arXiv 2510.03222): keep v iff z_v ≥ max_u z_u + log(min_p) (untempered logits), renormalize
      softmax(z / T) over the kept entries; ``MASKED_LOG_PROB`` (−1e4) for a filtered-out target (the official code
      fills filtered logits with −1e4 before the temperature, which gives ≈ −1e4 / T − logsumexp instead). Detached.

    Args:
        logits: [..., V] (fp32/bf16/fp16/fp64); −inf entries are masked (zero probability, no gradient).
        targets: [...] int64 token ids, or None.
        top_p: nucleus threshold in (0, 1], or None (no entropy). top_k: the nucleus is searched among the
            min(top_k, V) most probable entries (int ≥ 1). min_p: proxy threshold in (0, 1], or None.
        temperature: > 0; divides the logits (the min-p filter excepted).
        chunk_rows: rows per chunk (None: a [rows × V] budget of ``chunked.CHUNK_ELEMENTS``).
    Returns:
        :class:`NucleusStats` of [...] tensors in the accumulation dtype (fp32, fp64 for fp64 logits), None for
        those not requested.
    """
    from . import _check_targets  # ops/__init__ imports this module: a module-level import would be circular

    spec = _spec(top_p, top_k, min_p, temperature, chunk_rows)
    lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
    _check_targets(targets, lead)
    z = logits.reshape(-1, vocab)
    tg = None if targets is None else targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(z.shape[0], vocab)
    return _unflatten(NucleusStats(*NucleusFromLogits.apply(z, tg, spec, rows)), lead)


def fused_linear_nucleus_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor | None = None,
    *,
    bias: Tensor | None = None,
    top_p: float | None = None,
    top_k: int = 10000,
    min_p: float | None = None,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
) -> NucleusStats:
    """:func:`nucleus_stats` of logits = hidden @ weightᵀ (+ bias), built chunk by chunk and never in full.

    Args:
        hidden: [..., H] final hidden states; weight: [V, H] lm_head; bias: [V] or None. The top-p entropy's
            gradient flows to hidden, weight and bias (grad W and grad b accumulated in fp32 for half precision).
        Other arguments as :func:`nucleus_stats`.
    Returns:
        :class:`NucleusStats` of [...] tensors (accumulation dtype of the weight), None for those not requested.
    """
    from . import _check_fused_shapes  # ops/__init__ imports this module: a module-level import would be circular

    spec = _spec(top_p, top_k, min_p, temperature, chunk_rows)
    _check_fused_shapes(hidden, weight, None, None, targets)
    lead = tuple(hidden.shape[:-1])
    h = hidden.reshape(-1, hidden.shape[-1])
    tg = None if targets is None else targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(h.shape[0], weight.shape[0])
    return _unflatten(NucleusStats(*NucleusFusedLinear.apply(h, weight, bias, tg, spec, rows)), lead)
