"""Teacher-guided RL (``teacher_method=...``; see :mod:`.base` for the contract and notation). Registered methods:

- ``kdrl``: GRPO + β·D(π‖τ) per token, any divergence and estimator (default k2 reverse KL, β = 2e-3), an optional
  coefficient schedule (``linear_anneal``: KDRL-Annealing) and KD only on incorrect responses (KDRL, 2025)
  — :mod:`.distill`;
- ``exact_opd``: coef·D(π‖τ) exact over the vocabulary from the two models' hidden states, without the outcome reward
  by default (VLA-OPD's reverse-KL objective, 2026, computed exactly) — :mod:`.distill`;
- ``g_opd`` / ``exopd``: the advantage A_t = λ(log τ − log ρ) − (log π_old − log ρ), λ = 1 / 1.25 (G-OPD, 2026)
  — :mod:`.opd`;
- ``trrd``: the PPO ratio (π/π_old)^α (π/τ)^(1−α), clipped (RLAD, 2026) — :mod:`.trrd`.
"""

from __future__ import annotations

from . import distill, opd, trrd  # noqa: F401  (registration)
from .base import (
    TEACHER_METHODS,
    TeacherMethod,
    TeacherRequirements,
    check_shared_tokenizer,
    get_teacher_method,
    list_teacher_methods,
    register_teacher_method,
)
from .distill import TeacherDivergence
from .opd import g_opd_advantages
from .trrd import trrd_anchor_logps, trrd_log_ratio

__all__ = [
    "TEACHER_METHODS",
    "TeacherDivergence",
    "TeacherMethod",
    "TeacherRequirements",
    "check_shared_tokenizer",
    "g_opd_advantages",
    "get_teacher_method",
    "list_teacher_methods",
    "register_teacher_method",
    "trrd_anchor_logps",
    "trrd_log_ratio",
]
