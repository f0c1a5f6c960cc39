"""Triton twins of each registered divergence's elementwise ``term`` / ``dterm`` (see :mod:`...divergences.base`).

Every jit function has the signature ``fn(lp, lr, c0, c1, c2)``: log π and log ρ (already floored at the
divergence's ``log_floor``) and three scalar parameters computed on the host from the divergence instance
(β, log β, … — see each ``@register_triton_term``). The kernels receive the two jit functions as ``tl.constexpr``
arguments, so a new divergence needs a new pair of functions here and no new kernel. ``tests/ops/test_triton.py``
checks every pair elementwise against the torch ``term`` / ``dterm`` so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import triton
import triton.language as tl

from ... import numerics

if TYPE_CHECKING:
    from ...divergences import Divergence


EXP_CAP = tl.constexpr(numerics.EXP_CAP)


@dataclass(frozen=True)
class TritonTerm:
    """The jit pair of one divergence instance and its scalar parameters (c0, c1, c2)."""

    term: Any
    dterm: Any
    params: tuple[float, float, float]


_Resolver = Callable[["Divergence"], TritonTerm]
_TRITON_TERMS: dict[str, _Resolver] = {}


def register_triton_term(
    name: str,
) -> Callable[[_Resolver], _Resolver]:
    """Decorator: register ``resolve(div) -> TritonTerm`` for the divergence registered as ``name``."""

    def decorator(resolve: _Resolver) -> _Resolver:
        if name in _TRITON_TERMS:
            raise ValueError(f"triton term for divergence {name!r} is already registered")
        _TRITON_TERMS[name] = resolve
        return resolve

    return decorator


def has_triton_term(div: Divergence) -> bool:
    """Whether the Triton kernels can evaluate ``div`` (a jit term pair is registered for its name)."""
    return div.name in _TRITON_TERMS


def triton_term(div: Divergence) -> TritonTerm:
    """The jit term pair and parameters of ``div``; ``NotImplementedError`` when none is registered."""
    if not has_triton_term(div):
        raise NotImplementedError(
            f"divergence {div.name!r} has no Triton term (register one in trl_divergences/ops/triton/terms.py); "
            "use impl='chunked'"
        )
    return _TRITON_TERMS[div.name](div)


# ---- shared helpers -------------------------------------------------------------------------------------------
@triton.jit
def _expm1(x):
    """exp(x) − 1, accurate near 0 (degree-6 Taylor polynomial for |x| < 0.1)."""
    poly = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x * (1.0 / 720.0))))))
    return tl.where(tl.abs(x) < 0.1, poly, tl.exp(x) - 1.0)


# ---- reverse KL: ρ f(π/ρ) = π (lp − lr) --------------------------------------------------------------------------
@triton.jit
def _reverse_kl_term(lp, lr, c0, c1, c2):
    return tl.exp(lp) * (lp - lr)


@triton.jit
def _reverse_kl_dterm(lp, lr, c0, c1, c2):
    return tl.exp(lp) * (lp - lr + 1.0)


@register_triton_term("reverse_kl")
def _reverse_kl(div: Divergence) -> TritonTerm:
    return TritonTerm(_reverse_kl_term, _reverse_kl_dterm, (0.0, 0.0, 0.0))


# ---- forward KL: ρ (lr − lp) -------------------------------------------------------------------------------------
@triton.jit
def _forward_kl_term(lp, lr, c0, c1, c2):
    return tl.exp(lr) * (lr - lp)


@triton.jit
def _forward_kl_dterm(lp, lr, c0, c1, c2):
    return -tl.exp(lr)


@register_triton_term("forward_kl")
def _forward_kl(div: Divergence) -> TritonTerm:
    return TritonTerm(_forward_kl_term, _forward_kl_dterm, (0.0, 0.0, 0.0))


# ---- JS_β: c0 = β, c1 = log β, c2 = log(1 − β); log m = logaddexp(lr + log β, lp + log(1 − β)) ------------------
@triton.jit
def _js_log_m(lp, lr, c1, c2):
    a = lr + c1
    b = lp + c2
    hi = tl.maximum(a, b)
    return hi + tl.log(1.0 + tl.exp(tl.minimum(a, b) - hi))


@triton.jit
def _js_term(lp, lr, c0, c1, c2):
    lm = _js_log_m(lp, lr, c1, c2)
    return c0 * tl.exp(lr) * (lr - lm) + (1.0 - c0) * tl.exp(lp) * (lp - lm)


@triton.jit
def _js_dterm(lp, lr, c0, c1, c2):
    return (1.0 - c0) * tl.exp(lp) * (lp - _js_log_m(lp, lr, c1, c2))


@register_triton_term("js")
def _js(div: Divergence) -> TritonTerm:
    beta = div.beta
    return TritonTerm(_js_term, _js_dterm, (beta, math.log(beta), math.log1p(-beta)))


# ---- total variation: ½|π − ρ| -----------------------------------------------------------------------------------
@triton.jit
def _tv_term(lp, lr, c0, c1, c2):
    return 0.5 * tl.abs(tl.exp(lp) - tl.exp(lr))


@triton.jit
def _tv_dterm(lp, lr, c0, c1, c2):
    p = tl.exp(lp)
    r = tl.exp(lr)
    return tl.where(p > r, 0.5 * p, tl.where(p < r, -0.5 * p, 0.0))


@register_triton_term("tv")
def _tv(div: Divergence) -> TritonTerm:
    return TritonTerm(_tv_term, _tv_dterm, (0.0, 0.0, 0.0))


# ---- Pearson χ²: ρ (π/ρ − 1)², with the same near/far split and exponent cap as the torch term ---------------------
@triton.jit
def _chi2_term(lp, lr, c0, c1, c2):
    d = lp - lr
    e = _expm1(tl.minimum(d, 30.0))
    near = tl.exp(lr) * e * e
    far = tl.exp(tl.minimum(2.0 * lp - lr, EXP_CAP)) - 2.0 * tl.exp(lp) + tl.exp(lr)
    return tl.where(d < 30.0, near, far)


@triton.jit
def _chi2_dterm(lp, lr, c0, c1, c2):
    return 2.0 * (tl.exp(tl.minimum(2.0 * lp - lr, EXP_CAP)) - tl.exp(lp))


@register_triton_term("chi2")
def _chi2(div: Divergence) -> TritonTerm:
    return TritonTerm(_chi2_term, _chi2_dterm, (0.0, 0.0, 0.0))


# ---- squared Hellinger: ρ − √(πρ) ---------------------------------------------------------------------------------
@triton.jit
def _hellinger_term(lp, lr, c0, c1, c2):
    return tl.exp(lr) - tl.exp(0.5 * (lp + lr))


@triton.jit
def _hellinger_dterm(lp, lr, c0, c1, c2):
    return -0.5 * tl.exp(0.5 * (lp + lr))


@register_triton_term("hellinger")
def _hellinger(div: Divergence) -> TritonTerm:
    return TritonTerm(_hellinger_term, _hellinger_dterm, (0.0, 0.0, 0.0))


# ---- Amari α: c0 = α, c1 = 1/(α(1 − α)), c2 = 1/(1 − α); the α → 0 / 1 limits reuse the KL pairs -------------------
@triton.jit
def _alpha_term(lp, lr, c0, c1, c2):
    ad = c0 * (lp - lr)
    near = -tl.exp(lr) * _expm1(tl.minimum(ad, 30.0))
    far = tl.exp(lr) - tl.exp(tl.minimum(c0 * lp + (1.0 - c0) * lr, EXP_CAP))
    return tl.where(ad < 30.0, near, far) * c1


@triton.jit
def _alpha_dterm(lp, lr, c0, c1, c2):
    return -tl.exp(tl.minimum(c0 * lp + (1.0 - c0) * lr, EXP_CAP)) * c2


@register_triton_term("alpha")
def _alpha(div: Divergence) -> TritonTerm:
    limit = div._limit
    if limit is not None:
        return triton_term(limit)
    a = div.alpha
    return TritonTerm(_alpha_term, _alpha_dterm, (a, 1.0 / (a * (1.0 - a)), 1.0 / (1.0 - a)))
