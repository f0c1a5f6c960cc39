"""trl-divergences: swap the regularizer of a GRPO/PPO run (TRL or verl) with one flag."""

from __future__ import annotations

from typing import Any

from . import ops  # noqa: E402  (after the divergences: ops resolves their names)
from .analysis import (
    effective_rank,
    parameter_snapshot,
    top1_energy,
    trajectory_top1_energy,
    update_statistics,
    updated_fraction,
)
from .curricula import get_curriculum, get_schedule, list_curricula, list_schedules
from .divergences import Divergence, get_divergence, list_divergences, register_divergence
from .masks import get_token_mask, list_token_masks, register_token_mask
from .reweighting import get_advantage_reweighting, list_advantage_reweightings, register_advantage_reweighting
from .teacher import get_teacher_method, list_teacher_methods, register_teacher_method

__version__ = "0.1.0"

__all__ = [
    "DivergenceGRPOConfig",
    "DivergenceGRPOTrainer",
    "Divergence",
    "UpdateRankCallback",
    "UpdateSparsityCallback",
    "effective_rank",
    "get_advantage_reweighting",
    "get_curriculum",
    "get_divergence",
    "get_schedule",
    "get_teacher_method",
    "get_token_mask",
    "list_advantage_reweightings",
    "list_curricula",
    "list_divergences",
    "list_schedules",
    "list_teacher_methods",
    "list_token_masks",
    "ops",
    "parameter_snapshot",
    "register_advantage_reweighting",
    "register_divergence",
    "register_teacher_method",
    "register_token_mask",
    "top1_energy",
    "trajectory_top1_energy",
    "update_statistics",
    "updated_fraction",
]


def __getattr__(name: str) -> Any:
    # TRL is an optional extra and slow to import: load the TRL adapter only when asked for.
    if name in ("DivergenceGRPOConfig", "DivergenceGRPOTrainer", "UpdateRankCallback", "UpdateSparsityCallback"):
        from . import trl as _trl

        return getattr(_trl, name)
    raise AttributeError(f"module 'trl_divergences' has no attribute {name!r}")
