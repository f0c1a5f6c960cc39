"""trl-divergences: swap the regularizer of a GRPO/PPO run (TRL or verl) with one flag."""

from __future__ import annotations

from typing import Any

from . import ops
from .divergences import Divergence, get_divergence, list_divergences, register_divergence

__version__ = "0.1.0"

__all__ = [
    "DivergenceGRPOConfig",
    "DivergenceGRPOTrainer",
    "Divergence",
    "get_divergence",
    "list_divergences",
    "ops",
    "register_divergence",
]


def __getattr__(name: str) -> Any:
    # TRL is an optional extra and slow to import: load the TRL adapter only when asked for.
    if name in ("DivergenceGRPOConfig", "DivergenceGRPOTrainer"):
        from . import trl as _trl

        return getattr(_trl, name)
    raise AttributeError(f"module 'trl_divergences' has no attribute {name!r}")
