"""A hand-made generation batch shared by the reweighting tests.

Two groups of four rollouts (ids 7 and 3, N = 8); this process holds rows 2..5 (``LOCAL``), one half of each group.
GRPO advantages by hand (unbiased std 0.5 in both groups):
group 7 rewards [1, 0, 0, 0]: mean 0.25 → A = [+1.5, −0.5, −0.5, −0.5];
group 3 rewards [1, 1, 1, 0]: mean 0.75 → A = [+0.5, +0.5, +0.5, −1.5].
"""

from __future__ import annotations

import torch

from trl_divergences.reweighting import Rollouts

GROUPS = [7, 7, 7, 7, 3, 3, 3, 3]
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
ADVANTAGES = [1.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, -1.5]
LENGTHS = [10, 20, 30, 40, 12, 14, 16, 50]
LOCAL = slice(2, 6)


def make_rollouts(
    rewards: list[float] = REWARDS,
    advantages: list[float] = ADVANTAGES,
    groups: list[int] = GROUPS,
    lengths: list[int] = LENGTHS,
    local: slice = LOCAL,
    **extra: torch.Tensor,
) -> Rollouts:
    """float64 Rollouts; correct = reward ≥ 1 (NaN: not correct)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    return Rollouts(
        rewards=r,
        advantages=torch.tensor(advantages, dtype=torch.float64),
        group_ids=torch.tensor(groups),
        correct=r >= 1.0,
        lengths=torch.tensor(lengths),
        local=local,
        **extra,
    )
