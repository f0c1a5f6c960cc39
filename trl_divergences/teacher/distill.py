"""A divergence to the teacher as a per-token penalty: KDRL (GRPO + β·D(π‖τ)) and exact on-policy distillation.

The per-token term is coef_s · m_i · D̂(π‖τ)_t, where D̂ is any registered divergence with the teacher τ in the
reference's place — estimated on the sampled token by any of its estimators (``div.sampled(log π, log τ)``) or
exactly over the vocabulary from the two models' final hidden states (the fused ops, never materializing logits) —
coef_s the coefficient in force at step s (a registered schedule may anneal it), and m_i = 1 − c_i with
``only_incorrect`` (KD only on incorrect responses), else 1. Directions as everywhere: ``reverse_kl`` = KL(π‖τ)
(mode-seeking), ``forward_kl`` = KL(τ‖π). Estimator trap (Liu et al., "Rethinking KL Regularization in RLHF",
2025): on-policy, k2 = ½(log π − log τ)² as a loss has the reverse-KL gradient; plain k3 as a loss has the
forward-KL one (an importance weight with its graph fixes that, see :mod:`trl_divergences.divergences.base`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checks import check_nonnegative
from ..curricula import SCHEDULES, Schedule
from ..divergences import FULL, Divergence, check_estimator, get_divergence
from ..ops import fused_linear_logprob_entropy_divergence
from .base import TeacherMethod, TeacherRequirements, register_teacher_method


class TeacherDivergence(TeacherMethod):
    """The shared per-token term coef_s · m_i · D̂(π‖τ)_t (see the module docstring); subclasses pin the defaults.

    ``outcome_weight`` w scales the outcome advantages of the policy-gradient term (1: GRPO's term kept, as KDRL;
    0: no reward, pure on-policy distillation). State: the coefficient and divergence in force (for checkpoints).
    """

    adds_penalty = True

    def __init__(
        self,
        *,
        coef: float,
        divergence: str,
        divergence_kwargs: dict[str, Any] | None,
        estimator: str,
        only_incorrect: bool,
        schedule: str | None,
        schedule_kwargs: dict[str, Any] | None,
        outcome_weight: float,
    ) -> None:
        name = self.name
        self.coef = check_nonnegative(name, "coef", coef)
        self.outcome_weight = check_nonnegative(name, "outcome_weight", outcome_weight)
        if not isinstance(only_incorrect, bool):
            raise ValueError(f"{name}: only_incorrect must be True or False, got {only_incorrect!r}")
        self.only_incorrect = only_incorrect
        self.divergence_kwargs = _kwargs(name, "divergence_kwargs", divergence_kwargs)
        self.divergence = get_divergence(divergence, **self.divergence_kwargs)
        if not self.divergence.needs_reference:
            raise ValueError(f"{name}: divergence {divergence!r} is not to a frozen model, so not to a teacher")
        self.estimator = estimator
        schedule_kwargs = _kwargs(name, "schedule_kwargs", schedule_kwargs)
        if schedule is None and schedule_kwargs:
            raise ValueError(f"{name}: schedule_kwargs given without a schedule: {schedule_kwargs!r}")
        self.schedule: Schedule | None = None if schedule is None else SCHEDULES.build(schedule, **schedule_kwargs)
        names = self.schedule.divergences if self.schedule is not None and self.schedule.divergences else ()
        if names and divergence not in names:
            raise ValueError(
                f"{name}: schedule {schedule!r} switches between {', '.join(names)}; divergence {divergence!r} "
                "conflicts with it"
            )
        self._divergences = {d: self.divergence if d == divergence else self._build(d) for d in (divergence, *names)}
        for div in self._divergences.values():
            check_estimator(div, self.estimator, field=f"{self.name}: estimator")
        self.coef_now, self.divergence_now = self.coef, self.divergence
        self.needs_accuracy = self.schedule is not None and self.schedule.needs_accuracy

    def _build(self, name: str) -> Divergence:
        return get_divergence(name, **self.divergence_kwargs)

    @property
    def requirements(self) -> TeacherRequirements:
        exact = self.estimator == FULL
        return TeacherRequirements(teacher_logps=not exact, teacher_hidden=exact)

    def step(self, step: int, max_steps: int, accuracy: float | None = None) -> None:
        """Set the coefficient (and divergence) in force for the generation batch of training step ``step``."""
        if self.schedule is None:
            return
        multiplier, name = self.schedule(step, max_steps, accuracy)
        self.coef_now = self.coef * multiplier
        if name is not None:
            self.divergence_now = self._divergences[name]

    def advantages(
        self,
        outcome_advantages: Tensor,
        *,
        old_logps: Tensor | None = None,
        teacher_logps: Tensor | None = None,
        reference_logps: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """w·A_i: the outcome advantages scaled by ``outcome_weight`` ([n] -> [n])."""
        return outcome_advantages if self.outcome_weight == 1.0 else outcome_advantages * self.outcome_weight

    def sampled(self, logps: Tensor, teacher_logps: Tensor, importance_weight: Tensor | None = None) -> Tensor:
        """[B, T] sampled-token estimate D̂(π‖τ)_t of the divergence in force (``logps`` with graph; the importance
        weight π/π_old enters as in :meth:`~trl_divergences.divergences.Divergence.sampled`)."""
        if self.estimator == FULL:
            raise ValueError(f"{self.name}: the 'full' estimator is computed from hidden states, see full()")
        return self.divergence_now.sampled(logps, teacher_logps, self.estimator, importance_weight=importance_weight)

    def full(
        self,
        hidden: Tensor,
        weight: Tensor,
        teacher_hidden: Tensor,
        teacher_weight: Tensor,
        temperature: float = 1.0,
        bias: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        impl: str = "auto",
    ) -> Tensor:
        """[...] exact D(π‖τ) over the vocabulary at every position, from the student's hidden states [..., H] and
        lm_head [V, H] and the teacher's [..., H_τ] and [V, H_τ] (H_τ may differ from H; the vocabulary may not),
        both sides at ``temperature``; differentiable w.r.t. the student's hidden states, weight and bias."""
        return fused_linear_logprob_entropy_divergence(
            hidden,
            weight,
            teacher_hidden,
            teacher_weight,
            None,
            divergence=self.divergence_now,
            temperature=temperature,
            bias=bias,
            ref_bias=teacher_bias,
            impl=impl,
        )[2]

    def response_weights(self, correct: Tensor | None, n: int) -> Tensor:
        """[n] coef_s · m_i: the coefficient in force, 0 on correct responses with ``only_incorrect``."""
        if not self.only_incorrect:
            return torch.full((n,), self.coef_now, dtype=torch.float64)
        if correct is None or correct.numel() != n:
            raise ValueError(f"{self.name}: only_incorrect needs the [{n}] correctness flags of the responses")
        return (~correct.bool()).double().cpu() * self.coef_now

    def penalty(self, per_token_divergence: Tensor, correct: Tensor | None = None) -> Tensor:
        """[B, T] coef_s · m_i · D̂_t from the per-token divergence [B, T] and the rows' correctness [B]."""
        weights = self.response_weights(correct, per_token_divergence.size(0))
        return per_token_divergence * weights.to(per_token_divergence).unsqueeze(-1)

    def state_dict(self) -> dict:
        return {"coef_now": self.coef_now, "divergence_now": self.divergence_now.name}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"coef_now", "divergence_now"} or state["divergence_now"] not in self._divergences:
            raise ValueError(
                f"{self.name}: state must hold coef_now and divergence_now (one of {', '.join(self._divergences)}), "
                f"got {state!r}"
            )
        self.coef_now = check_nonnegative(self.name, "coef_now", state["coef_now"])
        self.divergence_now = self._divergences[state["divergence_now"]]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(coef={self.coef!r}, divergence={self.divergence!r}, "
            f"estimator={self.estimator!r}, only_incorrect={self.only_incorrect!r}, schedule={self.schedule!r}, "
            f"outcome_weight={self.outcome_weight!r})"
        )


@register_teacher_method("kdrl")
class KDRL(TeacherDivergence):
    """KDRL: GRPO plus a divergence to the teacher ("KDRL: Post-Training Reasoning LLMs via Unified
    Knowledge Distillation and Reinforcement Learning", Xu et al., 2025; [paper-2nd]: no official code).
    J = J_GRPO − β·D^{k2}(π‖τ) (Eq. 8), on the same rollouts, the KD term in the reference-KL slot: per-token loss
    −GRPO_t + β·m_i·½(log π − log τ)², token-mean.

    Args:
        coef: β, 2e-3 (the paper's constant; KDRL-Annealing: 5e-3 with ``schedule="linear_anneal"``, whose
            defaults give max(5e-3 − 5e-5·s, 1e-3)).
        divergence, divergence_kwargs: any registered divergence to the teacher (default ``reverse_kl`` = KL(π‖τ)).
        estimator: ``k2`` (the paper's default, "mse" in verl's names; k3 compared, ≈1.4 points worse; a top-k
            approximation of the full KL reported unstable), any estimator of the divergence, or ``full`` (exact
            over the vocabulary).
        only_incorrect: KDRL-Masking, m_i = 1 − c_i (KD only on incorrect responses; default off).
        schedule, schedule_kwargs: a registered coefficient schedule of β (e.g. ``linear_anneal``), or None.
    """

    def __init__(
        self,
        *,
        coef: float = 2e-3,
        divergence: str = "reverse_kl",
        divergence_kwargs: dict[str, Any] | None = None,
        estimator: str = "k2",
        only_incorrect: bool = False,
        schedule: str | None = None,
        schedule_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            coef=coef,
            divergence=divergence,
            divergence_kwargs=divergence_kwargs,
            estimator=estimator,
            only_incorrect=only_incorrect,
            schedule=schedule,
            schedule_kwargs=schedule_kwargs,
            outcome_weight=1.0,
        )


@register_teacher_method("exact_opd")
class ExactOPD(TeacherDivergence):
    """On-policy distillation with the divergence to the teacher exact over the full vocabulary (ours): per token
    coef·m_i·D(π‖τ)_t, D(π‖τ) = Σ_v τ_v f(π_v/τ_v) for the chosen f-divergence, from the student's and the teacher's
    final hidden states tile by tile (no [tokens × V] logits). With ``reverse_kl`` this is VLA-OPD's
    objective ("VLA-OPD", Zhong et al., 2026; [abstract]: reverse KL to a frozen expert on the student's rollouts,
    no environment reward) computed exactly instead of from the sampled token; ``forward_kl``, ``js`` … give the
    other directions.

    Args:
        coef: coefficient of the term, 1.0.
        divergence, divergence_kwargs: the divergence to the teacher (default ``reverse_kl`` = KL(π‖τ)).
        outcome_weight: w ≥ 0 scaling the outcome advantages of the policy-gradient term: 0 (default, no reward:
            pure distillation), 1 (GRPO's term kept: exact KDRL).
        only_incorrect: the term only on incorrect responses (KDRL-Masking's rule; default off).
        schedule, schedule_kwargs: a registered coefficient schedule, or None.
    """

    def __init__(
        self,
        *,
        coef: float = 1.0,
        divergence: str = "reverse_kl",
        divergence_kwargs: dict[str, Any] | None = None,
        outcome_weight: float = 0.0,
        only_incorrect: bool = False,
        schedule: str | None = None,
        schedule_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            coef=coef,
            divergence=divergence,
            divergence_kwargs=divergence_kwargs,
            estimator=FULL,
            only_incorrect=only_incorrect,
            schedule=schedule,
            schedule_kwargs=schedule_kwargs,
            outcome_weight=outcome_weight,
        )


def _kwargs(method: str, name: str, value: dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{method}: {name} must be a dict, got {type(value).__name__}")
    return dict(value)
