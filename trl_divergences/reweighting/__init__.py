"""Advantage reweighting (see :mod:`.base` for the contract). Registered methods:

- ``ace``: confidence-aware scaling of negative advantages (ACE, 2026) — :mod:`.ace`;
- ``resrl``: per-token negative weights from the hidden-state residual off the positives' subspace (ResRL, 2026)
  — :mod:`.resrl`;
- ``w_reinforce``: fixed advantages +λ / −1 and the PSR / NSR modes ("The Surprising Effectiveness of Negative
  Reinforcement", 2025) — :mod:`.outcome`;
- ``success_adaptive``: negative advantages scaled by the group's success (GUI-Libra, 2026) — :mod:`.outcome`;
- ``dads``: difficulty-adaptive weight of the divergence penalty, with optional STCR length penalty (APO, 2025)
  — :mod:`.difficulty`;
- ``paced``: pass-rate weight p^α (1 − p)^β of the advantages (PACED, 2026) — :mod:`.difficulty`.
"""

from __future__ import annotations

from . import ace, difficulty, outcome, resrl  # noqa: F401  (registration)
from .base import (
    ADVANTAGE_REWEIGHTINGS,
    AdvantageReweighting,
    Reweighted,
    Rollouts,
    get_advantage_reweighting,
    list_advantage_reweightings,
    register_advantage_reweighting,
)

__all__ = [
    "ADVANTAGE_REWEIGHTINGS",
    "AdvantageReweighting",
    "Reweighted",
    "Rollouts",
    "get_advantage_reweighting",
    "list_advantage_reweightings",
    "register_advantage_reweighting",
]
