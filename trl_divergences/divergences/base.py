"""The f-divergence machinery shared by every divergence.

An f-divergence between the policy π and the reference ρ is D_f(π‖ρ) = Σ_v ρ_v f(π_v / ρ_v) with f convex and
f(1) = 0. Each divergence here defines one elementwise *perspective term* in log space,

    term(lp, lr) = ρ f(π/ρ)          with lp = log π_v, lr = log ρ_v,

and its partial derivative ``dterm(lp, lr) = ∂term/∂lp = π f'(π/ρ)``. Everything else is derived once, here:

* exact value over the vocabulary: D = Σ_v term(lp_v, lr_v) (log-softmax of both sides, fp32 or wider);
* gradient w.r.t. the policy logits z: ∂D/∂z_v = dterm_v − π_v Σ_u dterm_u (chain rule through log-softmax);
* importance-weighted estimate from a token y ~ π with r = ρ(y)/π(y): k1 = term(0, log r) = r f(1/r), unbiased
  since E_π[r f(1/r)] = Σ ρ f(π/ρ);
* the control-variate form k3 = k1 + f'(1)(r − 1) (E_π[r − 1] = 0; it makes the estimate's slope vanish at r = 1,
  which lowers its variance near π = ρ; for reverse KL this is Schulman's k3 = r − 1 − log r);
* k3+ (straight-through, as verl's ``low_var_kl+``): value k3, gradient (f'(u) − f'(1))∇log π(y) with u = 1/r,
  whose expectation under π is the exact gradient ∇D_f (Σ_v f'(π_v/ρ_v) ∇π_v). For reverse KL this is k2's gradient.
* importance weighting w = π/π_old (TRL's ``use_bias_correction_kl``): value estimators (k1, k3) are multiplied by
  w *with* its graph, so E_{π_old}[w·k] = E_π[k] = D_f for every θ and the expected gradient is exactly ∇D_f — even
  on-policy, where w = 1 in value but ∇w = ∇log π (this turns TRL's k3, whose plain gradient is the forward-KL
  gradient, into the reverse-KL gradient); gradient-shaped estimators (k2, k3+) by w detached, which keeps their
  expected gradient ∇D_f off-policy.

Zero-mass convention: masked entries — log-probabilities at or below ``MASKED_LOG_PROB`` (−1e4: logits of −inf,
``finfo.min`` or −1e9; no real model's log-prob gets there) — are replaced by ``log_floor`` (default −50, a mass of
≈2e−22) before the term is evaluated, and get no gradient; every other log-probability, however small, is used
exactly (so values and gradients stay exact for sharp or collapsed distributions, e.g. forward KL still pulls up a
token whose policy log-prob fell to −60). A vocabulary entry masked on both sides (padding) therefore contributes
exactly 0. Where only one side is masked, divergences that are infinite there (reverse KL and χ² for ρ = 0, forward
KL for π = 0) contribute a large, finite value instead of inf/NaN: e.g. reverse KL adds π_v·(log π_v + 50).
Exponentials (χ², α outside (0, 1)) are additionally capped at e^80 per entry so they stay finite in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..numerics import DEFAULT_LOG_FLOOR, EXP_CAP, MASKED_LOG_PROB, compute_dtype, floor_masked
from ..registry import DIVERGENCES

_BASE_ESTIMATORS = ("k1", "k3", "k3+")


class Divergence:
    """Base class: subclasses set ``name``, ``f_prime_at_1`` and implement ``term`` / ``dterm``.

    Direction convention: ``D(π‖ρ)`` with π the policy, ρ the reference; see each subclass's docstring.
    """

    name: str = ""
    #: f'(1) of the generator the term is written with (sets the k1 -> k3 control variate).
    f_prime_at_1: float = 0.0
    #: extra sampled estimators a subclass supports beyond k1/k3/k3+ (e.g. reverse KL's k2).
    extra_estimators: tuple[str, ...] = ()
    #: estimators whose gradient (not value) is the designed quantity: importance weights enter them detached
    gradient_shaped: tuple[str, ...] = ("k2", "k3+")
    #: the divergence is to a frozen reference model (False for Lp-Reg, whose "reference" is the policy's proxy)
    needs_reference: bool = True
    #: a trainer may offer the exact full-vocabulary estimator against the reference model
    supports_full: bool = True
    #: the divergence selects tokens and replaces the policy-gradient term on them (:meth:`select`,
    #: :meth:`selected_token_loss`) instead of adding a penalty to every token
    replaces_policy_gradient: bool = False
    #: κ of the min-p proxy of π_old the divergence is measured against (None: it is measured against ρ)
    proxy_min_p: float | None = None

    def __init__(self, *, log_floor: float = DEFAULT_LOG_FLOOR) -> None:
        if not (isinstance(log_floor, (int, float)) and math.isfinite(log_floor) and log_floor < 0):
            raise ValueError(f"log_floor must be a finite negative number, got {log_floor!r}")
        self.log_floor = float(log_floor)

    # ---- per-divergence elementwise math (overridden) -------------------------------------------------------
    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        """ρ f(π/ρ) elementwise, from log π and log ρ (already floored)."""
        raise NotImplementedError

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        """∂term/∂lp = π f'(π/ρ) elementwise."""
        raise NotImplementedError

    # ---- derived, shared ------------------------------------------------------------------------------------
    @property
    def estimators(self) -> tuple[str, ...]:
        """Names accepted by :meth:`sampled` (``full`` is :meth:`full`)."""
        return _BASE_ESTIMATORS + self.extra_estimators

    def kwargs(self) -> dict:
        """Constructor kwargs that reproduce this instance (used to pass divergences across processes/kernels)."""
        return {"log_floor": self.log_floor}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items())
        return f"{type(self).__name__}({args})"

    def floored(self, lp: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """Masked entries (log-prob ≤ ``MASKED_LOG_PROB``, e.g. −inf) -> ``log_floor``; other values kept exact."""
        return floor_masked(lp, self.log_floor), floor_masked(lr, self.log_floor)

    def rows(self, lp: Tensor, lr: Tensor) -> Tensor:
        """Σ_v term over the last dimension, from normalized log-probs [..., V] -> [...]."""
        lpf, lrf = self.floored(lp, lr)
        return self.term(lpf, lrf).sum(-1)

    def rows_grad(self, lp: Tensor, lr: Tensor) -> Tensor:
        """∂D/∂z for normalized log-probs [..., V] of logits z: dterm − π Σ dterm (zero on masked entries)."""
        d = self.dterm_masked(lp, lr)
        return d - lp.exp() * d.sum(-1, keepdim=True)

    def dterm_masked(self, lp: Tensor, lr: Tensor, floored: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """dterm on the floored log-probs (``floored``: :meth:`floored`'s result if already computed), 0 on masked
        policy entries: the per-entry part of :meth:`rows_grad`."""
        lpf, lrf = self.floored(lp, lr) if floored is None else floored
        d = self.dterm(lpf, lrf)
        return d if lpf is lp else d.masked_fill(lp <= MASKED_LOG_PROB, 0.0)

    def full(self, policy_logits: Tensor, ref_logits: Tensor, temperature: float = 1.0) -> Tensor:
        """Exact divergence over the vocabulary at every position.

        Args:
            policy_logits: [..., V] logits of π (any float dtype; accumulated in fp32, float64 kept).
            ref_logits: [..., V] logits of ρ (no gradient flows to them).
            temperature: both sides are divided by it before the softmax (TRL's convention).
        Returns:
            [...] divergence in nats, in the accumulation dtype; differentiable w.r.t. ``policy_logits``.
        """
        from ..ops import logprob_entropy_divergence

        return logprob_entropy_divergence(policy_logits, ref_logits, None, divergence=self, temperature=temperature)[2]

    def sampled(
        self, logp: Tensor, ref_logp: Tensor, estimator: str = "k3", importance_weight: Tensor | None = None
    ) -> Tensor:
        """Per-token estimate from log-probs of tokens sampled from π (``logp`` differentiable, ``ref_logp`` not).

        ``k1``: r f(1/r), unbiased, higher variance. ``k3``: k1 + f'(1)(r − 1), unbiased, lower variance near π = ρ.
        ``k3+``: value k3, gradient (f'(1/r) − f'(1))∇log π(y), unbiased for ∇D on-policy.
        ``importance_weight``: π/π_old per token (or broadcastable), with its graph; see the module docstring for
        how it enters each estimator (with it, every estimator's expected gradient is ∇D_f).
        """
        if estimator not in self.estimators:
            raise ValueError(
                f"estimator {estimator!r} is not supported by divergence {self.name!r}; "
                f"supported: {', '.join(self.estimators)} (and 'full' for the exact value)"
            )
        dtype = compute_dtype(logp.dtype)
        lp = logp.to(dtype)
        lr = ref_logp.to(dtype).detach()
        value = self._sampled(lp, lr, estimator)
        if importance_weight is None:
            return value
        weight = importance_weight.to(dtype)
        return value * (weight.detach() if estimator in self.gradient_shaped else weight)

    def _sampled(self, lp: Tensor, lr: Tensor, estimator: str) -> Tensor:
        zero = torch.zeros_like(lp)
        lpf, lrf = self.floored(lp, lr)
        log_r = (lrf - lpf).clamp(min=-EXP_CAP, max=EXP_CAP)
        k1 = self.term(zero, log_r)
        if estimator == "k1":
            return k1
        k3 = k1 + self.f_prime_at_1 * torch.expm1(log_r)
        if estimator == "k3":
            return k3
        # k3+: straight-through. f'(u) at the sampled token is dterm(0, log r) = 1·f'(1/r).
        slope = (self.dterm(zero, log_r) - self.f_prime_at_1).detach()
        return k3.detach() + slope * (lpf - lpf.detach())  # floored: a masked log-prob (−inf) gets no gradient

    def reference_sampled(self, logp: Tensor, ref_logp: Tensor) -> Tensor:
        """Per-token generator-form estimate on tokens sampled from the *reference* (DPH-RL, "The Choice of
        Divergence", 2025): f_c(u) = f(u) − f'(1)(u − 1), u = π(y)/ρ(y), y ~ ρ, with f(u) = ``term(log u, 0)``.

        E_ρ[f_c(u)] = Σ_v ρ_v f(π_v/ρ_v) = D_f(π‖ρ) (the control variate has mean zero under ρ), f_c ≥ 0, and since
        ρ does not depend on θ, ∇E_ρ[f_c] = ∇D_f exactly: summed over ρ's teacher-forced prefixes this is the exact
        per-token divergence and its gradient. Identities with DPH-RL's generators: forward_kl gives u − 1 − log u;
        js (β = ½) gives ½·(u log u − (u + 1) log((u + 1)/2)) (DPH-RL's "JS generator" is 2× ours); alpha(a) is
        DPH-RL's α-generator with their α = 1 − a. ``logp`` is differentiable, ``ref_logp`` is detached; log u is
        clamped to ±|log_floor|.
        """
        dtype = compute_dtype(logp.dtype)
        lr = ref_logp.to(dtype).detach()
        log_u = (logp.to(dtype) - lr).clamp(min=self.log_floor, max=-self.log_floor)
        return self.term(log_u, torch.zeros_like(log_u)) - self.f_prime_at_1 * torch.expm1(log_u)


DIVERGENCES.base = Divergence

#: the estimator name of the exact value over the vocabulary (:meth:`Divergence.full`)
FULL = "full"


def check_estimator(div: Divergence, estimator: str, field: str = "divergence_estimator") -> None:
    """``estimator`` (the value of ``field``, for the message) must be one of ``div``'s sampled estimators, or
    ``full`` where the divergence has an exact form."""
    valid = (*div.estimators, FULL) if div.supports_full else div.estimators
    if estimator not in valid:
        raise ValueError(
            f"{field} {estimator!r} is not supported by divergence {div.name!r}; valid: {', '.join(valid)}"
        )


def get_divergence(name: str | Divergence, **kwargs) -> Divergence:
    """Build a registered divergence by name; ``ValueError`` names the valid names / kwargs."""
    return DIVERGENCES.resolve(name, **kwargs)


def list_divergences() -> list[str]:
    """Names of all registered divergences."""
    return DIVERGENCES.names()


def register_divergence(name: str) -> Callable[[type[Divergence]], type[Divergence]]:
    """Class decorator registering a :class:`Divergence` subclass under ``name``."""
    return DIVERGENCES.register_class(name)
