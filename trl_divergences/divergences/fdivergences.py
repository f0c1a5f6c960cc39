"""The registered f-divergences. π = policy, ρ = reference, d = log π − log ρ, values in nats.

Each class gives the generator f of D_f(π‖ρ) = Σ ρ f(π/ρ) as the perspective term ρ f(π/ρ) in log space and its
derivative π f'(π/ρ); estimators, exact values and gradients are derived in :mod:`.base`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..numerics import DEFAULT_LOG_FLOOR, EXP_CAP
from .base import Divergence, register_divergence


@register_divergence("reverse_kl")
class ReverseKL(Divergence):
    """Reverse KL, KL(π‖ρ) = Σ π log(π/ρ) — the usual RLHF penalty (mode-seeking). f(u) = u log u.

    Sampled on y ~ π (r = ρ/π): k1 = −log r; k2 = ½(log r)²; k3 = r − 1 − log r (Schulman's low-variance
    estimator, TRL's and GRPO's default); k3+ = value k3 with k2's gradient (verl's ``low_var_kl+``).
    Gradients as plain per-token losses (on-policy, no importance weight): E[∇k1] = 0; E[∇k2] = ∇KL(π‖ρ) exactly;
    E[∇k3] = ∇KL(ρ‖π), the *forward*-KL gradient ("Rethinking KL Regularization in RLHF", Liu et al., 2025). With
    TRL's ``use_bias_correction_kl`` (default on) k3 is multiplied by π/π_old with its graph, and then
    E[∇(w·k3)] = E[log(π/ρ)∇log π] = ∇KL(π‖ρ): the reverse-KL gradient (see ``importance_weight`` in :mod:`.base`).
    """

    f_prime_at_1 = 1.0
    extra_estimators = ("k2",)

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        return lp.exp() * (lp - lr)

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        return lp.exp() * (lp - lr + 1.0)

    def _sampled(self, lp: Tensor, lr: Tensor, estimator: str) -> Tensor:
        if estimator == "k2":
            lpf, lrf = self.floored(lp, lr)
            return 0.5 * (lrf - lpf) ** 2
        return super()._sampled(lp, lr, estimator)


@register_divergence("forward_kl")
class ForwardKL(Divergence):
    """Forward KL, KL(ρ‖π) = Σ ρ log(ρ/π) — mass-covering (DPH-RL, "The Choice of Divergence", 2025). f(u) = −log u.

    Sampled on y ~ π (r = ρ/π): k1 = r log r (unbiased; heavy-tailed when ρ ≫ π); k3 = r log r − r + 1 (adds the
    zero-mean control variate −(r − 1)); k3+ = value k3, gradient (1 − r)∇log π — unbiased for ∇KL(ρ‖π).
    Infinite where π = 0 < ρ: the zero-mass convention of :mod:`.base` makes it finite there.
    """

    f_prime_at_1 = -1.0

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        return lr.exp() * (lr - lp)

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        return -lr.exp()


@register_divergence("js")
class JensenShannon(Divergence):
    """Generalized Jensen–Shannon, JS_β = β·KL(ρ‖M) + (1 − β)·KL(π‖M), M = β·ρ + (1 − β)·π, 0 < β < 1.

    β = 0.5 is the symmetric JS divergence (bounded by log 2). Endpoints: JS_β/β → KL(ρ‖π) (forward) as β → 0 and
    JS_β/(1 − β) → KL(π‖ρ) (reverse) as β → 1 (the value itself vanishes at both ends — use ``forward_kl`` /
    ``reverse_kl`` there). TRL's and Liger's generalized JSD use the same β convention (β weights the reference).
    Generator f(u) = β log(1/m) + (1 − β) u log(u/m), m = β + (1 − β)u; f'(1) = 0.
    Sampled on y ~ π (r = ρ/π, m = βr + 1 − β): k1 = k3 = β r log(r/m) − (1 − β) log m (bounded in r ≥ 0 below,
    grows like β r log r); k3+ = value k3, gradient (1 − β) log(u/m̃)∇log π with u = 1/r — unbiased for ∇JS_β.
    """

    f_prime_at_1 = 0.0

    def __init__(self, *, beta: float = 0.5, log_floor: float = DEFAULT_LOG_FLOOR) -> None:
        super().__init__(log_floor=log_floor)
        if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
            raise ValueError(
                f"js: beta must be in the open interval (0, 1), got {beta!r} "
                "(use forward_kl for the beta -> 0 limit and reverse_kl for beta -> 1)"
            )
        self.beta = float(beta)

    def kwargs(self) -> dict:
        return {"beta": self.beta, **super().kwargs()}

    def _log_m(self, lp: Tensor, lr: Tensor) -> Tensor:
        return torch.logaddexp(lr + math.log(self.beta), lp + math.log1p(-self.beta))

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        lm = self._log_m(lp, lr)
        return self.beta * lr.exp() * (lr - lm) + (1.0 - self.beta) * lp.exp() * (lp - lm)

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        return (1.0 - self.beta) * lp.exp() * (lp - self._log_m(lp, lr))


@register_divergence("tv")
class TotalVariation(Divergence):
    """Total variation distance, TV = ½ Σ |π − ρ| ∈ [0, 1]. f(u) = ½|u − 1| (symmetric).

    Sampled on y ~ π: k1 = k3 = ½|r − 1| (unbiased; f is not differentiable at 1, so no control variate helps).
    Gradient uses the subgradient 0 where π_v = ρ_v.
    """

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        return 0.5 * (lp.exp() - lr.exp()).abs()

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        p = lp.exp()
        return 0.5 * p * torch.sign(p - lr.exp())


@register_divergence("chi2")
class ChiSquared(Divergence):
    """Pearson χ² with the reference as base, χ²(π‖ρ) = Σ (π − ρ)²/ρ (as in the occupancy-χ² regularization
    literature). f(u) = (u − 1)², f'(1) = 0.

    Sampled on y ~ π: k1 = k3 = 1/r − 2 + r (unbiased; variance grows like E_π[r^-2], i.e. it explodes where the
    policy puts mass the reference lacks). Infinite where ρ = 0 < π: with the zero-mass convention the log-ratio
    is at most −log_floor and the exponent is capped at 80, so values stay finite (and huge: a clear signal).
    """

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        d = lp - lr
        near = lr.exp() * torch.expm1(d.clamp(max=30.0)) ** 2
        far = (2.0 * lp - lr).clamp(max=EXP_CAP).exp() - 2.0 * lp.exp() + lr.exp()
        return torch.where(d < 30.0, near, far)

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        return 2.0 * ((2.0 * lp - lr).clamp(max=EXP_CAP).exp() - lp.exp())


@register_divergence("hellinger")
class Hellinger(Divergence):
    """Squared Hellinger distance, H² = 1 − Σ √(πρ) ∈ [0, 1] (symmetric). f(u) = 1 − √u, f'(1) = −½.

    Sampled on y ~ π: k1 = r − √r; k3 = 1 − √r + ½(r − 1) = ½(√r − 1)² ≥ 0 (both unbiased; r is bounded below,
    √r tames the tail, so the variance is finite whenever E_π[r²] is).
    """

    f_prime_at_1 = -0.5

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        return lr.exp() - (0.5 * (lp + lr)).exp()

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        return -0.5 * (0.5 * (lp + lr)).exp()


@register_divergence("alpha")
class AlphaDivergence(Divergence):
    """Amari α-divergence, D_α = (1 − Σ π^α ρ^(1−α)) / (α(1 − α)), f(u) = (1 − u^α)/(α(1 − α)).

    D_α → KL(π‖ρ) (reverse) as α → 1 and KL(ρ‖π) (forward) as α → 0; α = ½ gives 4× squared Hellinger.
    α = 0 and α = 1 are evaluated as those limits exactly (within 1e-6). Note DPH-RL's α is our 1 − α.
    Sampled on y ~ π: k1 = (r − r^(1−α))/(α(1 − α)); k3 = k1 − (r − 1)/(1 − α) (unbiased; r^(1−α) has finite
    variance when 0 < α < 1).
    """

    def __init__(self, *, alpha: float = 0.5, log_floor: float = DEFAULT_LOG_FLOOR) -> None:
        super().__init__(log_floor=log_floor)
        if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
            raise ValueError(f"alpha: alpha must be a finite real number, got {alpha!r}")
        self.alpha = float(alpha)
        self._limit: Divergence | None = None
        if abs(self.alpha - 1.0) < 1e-6:
            self._limit = ReverseKL(log_floor=log_floor)
        elif abs(self.alpha) < 1e-6:
            self._limit = ForwardKL(log_floor=log_floor)
        self.f_prime_at_1 = self._limit.f_prime_at_1 if self._limit else -1.0 / (1.0 - self.alpha)

    def kwargs(self) -> dict:
        return {"alpha": self.alpha, **super().kwargs()}

    def term(self, lp: Tensor, lr: Tensor) -> Tensor:
        if self._limit is not None:
            return self._limit.term(lp, lr)
        a = self.alpha
        # ρ (1 − u^α) = −ρ expm1(α d): accurate near π = ρ; far from it ρ − π^α ρ^(1−α), whose exponent is capped
        # (it only exceeds 0 for α outside (0, 1)) like dterm's, so the term saturates at a huge value, not at ρ e^80.
        ad = a * (lp - lr)
        near = -lr.exp() * torch.expm1(ad.clamp(max=30.0))
        far = lr.exp() - (a * lp + (1.0 - a) * lr).clamp(max=EXP_CAP).exp()
        return torch.where(ad < 30.0, near, far) / (a * (1.0 - a))

    def dterm(self, lp: Tensor, lr: Tensor) -> Tensor:
        if self._limit is not None:
            return self._limit.dterm(lp, lr)
        a = self.alpha
        return -(a * lp + (1.0 - a) * lr).clamp(max=EXP_CAP).exp() / (1.0 - a)
