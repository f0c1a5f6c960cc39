"""G-OPD / ExOPD: on-policy distillation as dense KL-constrained RL, the teacher log-ratio as a per-token advantage
("Learning beyond Teacher: Generalized On-Policy Distillation with Reward Extrapolation", Yang et al., 2026;
official code ``RUCBM/G-OPD``, ``dp_actor.py``; [code]).

J = E_{y∼π}[λ·log(τ(y)/ρ(y)) − KL(π‖ρ)], optimum π* ∝ τ^λ ρ^(1−λ): λ = 1 standard OPD (the reference cancels),
0 < λ < 1 interpolates between teacher and reference, λ > 1 extrapolates (ExOPD, λ = 1.25 in the released scripts).
The official code's per-token advantage replaces GRPO's (the outcome reward is only logged): no group baseline, no
whitening, no return-to-go — each token's advantage is its own immediate reward, under the usual clipped surrogate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_nonnegative
from ..numerics import compute_dtype
from .base import TeacherMethod, TeacherRequirements, register_teacher_method


def g_opd_advantages(
    old_logps: Tensor, teacher_logps: Tensor, reference_logps: Tensor | None = None, lam: float = 1.0
) -> Tensor:
    """Per-token G-OPD advantage A_t = λ(log τ_t − log ρ_t) − (log π_old,t − log ρ_t) (all [n, T], detached).

    As the official code: λ == 1 gives A_t = log τ_t − log π_old,t without ρ (``reference_logps`` unused); otherwise
    A_t = −[(log π_old − log ρ) − λ(log τ − log ρ)], and ``reference_logps`` is required — where the official code
    silently falls back to standard OPD when ρ is not loaded, this raises.
    """
    if lam != 1.0 and reference_logps is None:
        raise ValueError(
            f"G-OPD with lam={lam!r} != 1 needs the reference ρ's log-probs (the official code silently falls back to "
            "standard OPD without them)"
        )
    dtype = compute_dtype(old_logps.dtype, teacher_logps.dtype)
    old, teacher = old_logps.detach().to(dtype), teacher_logps.detach().to(dtype)
    if lam == 1.0:
        return teacher - old
    ref = reference_logps.detach().to(dtype)
    return -((old - ref) - lam * (teacher - ref))


@register_teacher_method("g_opd")
class GOPD(TeacherMethod):
    """G-OPD: the policy-gradient advantages become A_t = λ(log τ − log ρ) − (log π_old − log ρ) per token (see the
    module docstring). ρ is the adapter's reference model (the student's initial weights, the official default) or,
    given as the adapter's ``teacher_reference_model``, a separate model: the official "reward correction" sets ρ to
    the teacher's pre-RL base (``+actor_rollout_ref.model.base_model_path``).

    Args:
        lam: λ > 0, the reward-extrapolation factor: 1.0 (standard OPD, the official default; ρ not needed).
        outcome_weight: w ≥ 0, A_t + w·A_i mixes in the outcome advantage (ours; 0 = the official code, which
            overwrites GRPO's advantages).
    """

    replaces_advantages = True

    def __init__(self, *, lam: float = 1.0, outcome_weight: float = 0.0) -> None:
        if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam > 0):
            raise ValueError(f"{self.name}: lam must be a positive finite number, got {lam!r}")
        self.lam = float(lam)
        self.outcome_weight = check_nonnegative(self.name, "outcome_weight", outcome_weight)

    @property
    def requirements(self) -> TeacherRequirements:
        return TeacherRequirements(teacher_logps=True, reference_logps=self.lam != 1.0, old_logps=True)

    def advantages(
        self,
        outcome_advantages: Tensor,
        *,
        old_logps: Tensor | None = None,
        teacher_logps: Tensor | None = None,
        reference_logps: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """[n, T] A_t + w·A_i, 0 where ``mask`` is false (padding log-probs may be anything, even −inf)."""
        if old_logps is None or teacher_logps is None:
            raise ValueError(
                f"{self.name} needs the rollout policy's and the teacher's log-probs of the sampled tokens"
            )
        if tuple(teacher_logps.shape) != tuple(old_logps.shape):
            raise ValueError(f"teacher log-probs {tuple(teacher_logps.shape)} != old {tuple(old_logps.shape)}")
        advantages = g_opd_advantages(old_logps, teacher_logps, reference_logps, self.lam)
        if self.outcome_weight:
            advantages = advantages + self.outcome_weight * outcome_advantages.to(advantages).unsqueeze(-1)
        if mask is not None:
            advantages = torch.where(mask.bool(), advantages, torch.zeros_like(advantages))
        return advantages

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam!r}, outcome_weight={self.outcome_weight!r})"


@register_teacher_method("exopd")
class ExOPD(GOPD):
    """ExOPD: G-OPD with reward extrapolation, λ = 1.25 (the official ExOPD scripts, single- and multi-teacher);
    needs the reference ρ. Arguments as :class:`GOPD`."""

    def __init__(self, *, lam: float = 1.25, outcome_weight: float = 0.0) -> None:
        super().__init__(lam=lam, outcome_weight=outcome_weight)
