"""TRRD: the PPO ratio anchored to a teacher / old-policy mixture (RLAD, "Reinforcement-aware Knowledge
Distillation for LLM Reasoning", Zhang et al., 2026; [paper-2nd]: no official code, equations from two
reimplementations).

r_t = (π_t/π_old,t)^α · (π_t/τ_t)^(1−α) (Eq. 3), in log space with the teacher log-ratio clamped (Eq. 5, App. B):

    log r_t = α(log π_t − log π_old,t) + (1 − α)·clamp(log π_t − log τ_t, −c, c),

clipped as GRPO's ratio (ε = 0.2) under the outcome advantage A_i; no separate distillation term. α = 1 is GRPO,
α = 0 a teacher-anchored update. Without the clamp, log r_t = log π_t − [α log π_old,t + (1 − α) log τ_t]: an
*anchor* log-prob in log π_old's place, so an adapter's own clipped policy-gradient code computes TRRD unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_fraction, check_positive
from ..numerics import compute_dtype
from .base import TeacherMethod, TeacherRequirements, register_teacher_method


def trrd_log_ratio(
    logps: Tensor, old_logps: Tensor, teacher_logps: Tensor, alpha: float = 0.5, clamp: float | None = None
) -> Tensor:
    """log r_t = α(log π − log π_old) + (1 − α)·clamp(log π − log τ, −c, c) ([B, T]; ``logps`` with graph, the
    others detached; ``clamp`` None: no clamp). Where the clamp binds, that term is constant (no gradient)."""
    dtype = compute_dtype(logps.dtype, old_logps.dtype, teacher_logps.dtype)
    lp = logps.to(dtype)
    old, teacher = old_logps.detach().to(dtype), teacher_logps.detach().to(dtype)
    teacher_term = lp - teacher
    if clamp is not None:
        teacher_term = teacher_term.clamp(-clamp, clamp)
    return alpha * (lp - old) + (1.0 - alpha) * teacher_term


def trrd_anchor_logps(old_logps: Tensor, teacher_logps: Tensor, alpha: float = 0.5) -> Tensor:
    """The anchor α log π_old + (1 − α) log τ ([B, T], detached): log π − anchor is the unclamped TRRD log-ratio."""
    dtype = compute_dtype(old_logps.dtype, teacher_logps.dtype)
    return alpha * old_logps.detach().to(dtype) + (1.0 - alpha) * teacher_logps.detach().to(dtype)


@register_teacher_method("trrd")
class TRRD(TeacherMethod):
    """TRRD (see the module docstring): the policy-gradient term keeps the outcome advantages and the adapter's clip
    (ε, ε_high); its ratio becomes exp(log r_t).

    :meth:`effective_old_logps` is what an adapter puts in log π_old's place: log π − log r_t, with graph, so that the
    adapter's ``log π − log π_old`` *is* log r_t in value and gradient; without the clamp it is the constant anchor
    (:func:`trrd_anchor_logps`), computable once per generation batch. log π_old is the framework's (on-policy: log π
    detached), so no rollout-time policy pass is needed.

    Args:
        alpha: α ∈ [0, 1], 0.5 (the paper's; reported insensitive).
        log_ratio_clamp: c > 0 of the teacher log-ratio clamp, 1.0 (a reimplementation's default: the paper's value
            was not recovered), or None (no clamp).
    """

    anchors_ratio = True

    def __init__(self, *, alpha: float = 0.5, log_ratio_clamp: float | None = 1.0) -> None:
        self.alpha = check_fraction("trrd", "alpha", alpha, low_open=False)
        self.log_ratio_clamp = (
            None if log_ratio_clamp is None else check_positive("trrd", "log_ratio_clamp", log_ratio_clamp)
        )

    @property
    def requirements(self) -> TeacherRequirements:
        return TeacherRequirements(teacher_logps=True)

    def log_ratio(self, logps: Tensor, old_logps: Tensor, teacher_logps: Tensor) -> Tensor:
        """[B, T] log r_t (:func:`trrd_log_ratio` with this method's α and c)."""
        return trrd_log_ratio(logps, old_logps, teacher_logps, self.alpha, self.log_ratio_clamp)

    def effective_old_logps(self, logps: Tensor, old_logps: Tensor, teacher_logps: Tensor) -> Tensor:
        """[B, T] log π − log r_t: the anchor an adapter uses instead of log π_old (with graph when clamped)."""
        if self.log_ratio_clamp is None:
            return trrd_anchor_logps(old_logps, teacher_logps, self.alpha)
        log_ratio = self.log_ratio(logps, old_logps, teacher_logps)
        return logps.to(log_ratio.dtype) - log_ratio

    def initial_log_ratio(self, old_logps: Tensor, teacher_logps: Tensor) -> Tensor:
        """[B, T] log r_t at θ = θ_old, (1 − α)·clamp(log π_old − log τ, −c, c): where the update starts."""
        return self.log_ratio(old_logps.detach(), old_logps, teacher_logps)

    def clamped(self, logps: Tensor, teacher_logps: Tensor) -> Tensor:
        """[B, T] bool: the teacher log-ratio clamp binds (always False without a clamp)."""
        if self.log_ratio_clamp is None:
            return torch.zeros_like(logps, dtype=torch.bool)
        return (logps.detach() - teacher_logps.detach()).abs() > self.log_ratio_clamp

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha!r}, log_ratio_clamp={self.log_ratio_clamp!r})"
