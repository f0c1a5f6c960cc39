"""Outcome-based advantages: W-REINFORCE / PSR / NSR (fixed advantages from correctness) and GUI-Libra's
success-adaptive scaling of negative advantages."""

from __future__ import annotations

import torch

from ..checks import check_choice, check_fraction, check_nonnegative
from ..groups import group_mean
from ..numerics import compute_dtype
from .base import AdvantageReweighting, Reweighted, Rollouts, register_advantage_reweighting


@register_advantage_reweighting("w_reinforce")
class WReinforce(AdvantageReweighting):
    """W-REINFORCE: A = +λ for a correct rollout, −1 for an incorrect one — no group mean, no std, no baseline
    ("The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning", Zhu et al., NeurIPS 2025; official
    code ``TianHongZXY/RLVR-Decomposed``, ``compute_psr_nsr_outcome_advantage``).

    The framework's advantages are replaced. ``mode``:

    - ``"weighted"`` (W-REINFORCE, λ·L_PSR + L_NSR): every rollout kept, A ∈ {+λ, −1}, λ = ``positive_weight``;
    - ``"psr"`` (positive sample reinforcement): only correct rollouts kept (``keep``), A = +1;
    - ``"nsr"`` (negative sample reinforcement): only incorrect rollouts kept, A = −1.

    Dropped rollouts leave the token mean, as the official code subsets the batch. λ = 0 in weighted mode is not
    ``"nsr"``: the correct rollouts stay in the token mean's denominator with A = 0. Correctness is the framework's
    threshold on the reward (the official code asserts binary scores). Unscored rollouts (NaN reward) count as
    incorrect with advantage 0. The official runs also kept verl's 0.001 entropy bonus; that is not part of this
    reweighting.

    Args:
        positive_weight: λ ≥ 0, the advantage of a correct rollout in weighted mode (0.1, the README's value).
        mode: ``"weighted"``, ``"psr"`` or ``"nsr"``.
    """

    def __init__(self, *, positive_weight: float = 0.1, mode: str = "weighted") -> None:
        self.positive_weight = check_nonnegative("w_reinforce", "positive_weight", positive_weight)
        self.mode = check_choice("w_reinforce", "mode", mode, ("weighted", "psr", "nsr"))
        self.drops_rollouts = self.mode != "weighted"

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        adv = rollouts.advantages
        scored = ~torch.isnan(rollouts.rewards)
        correct = rollouts.correct.bool() & scored
        by_mode = {"weighted": (self.positive_weight, -1.0), "psr": (1.0, 0.0), "nsr": (0.0, -1.0)}
        positive, negative = by_mode[self.mode]  # (A of a correct, A of an incorrect rollout); dropped rows: 0
        values = torch.full_like(adv, negative)
        values[correct] = positive
        values[~scored] = 0.0
        keep = {"weighted": None, "psr": correct, "nsr": ~correct}[self.mode]
        n = max(correct.numel(), 1)
        metrics = {
            "correct_fraction": float(correct.sum()) / n,
            "kept_fraction": 1.0 if keep is None else float(keep.sum()) / n,
        }
        return Reweighted(
            advantages=values[rollouts.local],
            keep=None if keep is None else keep[rollouts.local],
            metrics=metrics,
        )


@register_advantage_reweighting("success_adaptive")
class SuccessAdaptive(AdvantageReweighting):
    """GUI-Libra success-adaptive scaling: A_i ← A_i·clamp(b + c·R̄_g, 0, 1) for A_i < 0, R̄_g the mean reward of
    the rollout's group ("GUI-Libra: Training Native GUI Agents to Reason and Act with Action-aware Supervision and
    Partially Verifiable RL", 2026, arXiv 2602.22190; code read from the fork ``seooyxx/GUI-Libra``, estimator
    ``grpo_weighted_positive_negative``).

    Negative gradients from groups that rarely succeed are the least reliable under partial verifiability, so they
    are down-weighted: with b = 0.5, c = 1.5 the weight rises from 0.5 (no success) to 1 at R̄_g ≥ 1/3. Positive
    advantages are unchanged. The official estimator applies it to its own std-normalized GRPO advantages; here it
    scales the framework's. Unscored rollouts (NaN reward) count as reward 0 in R̄_g and get advantage 0.

    Args:
        base: b ∈ [0, 1] (0.5).
        slope: c ≥ 0 (1.5).
    """

    def __init__(self, *, base: float = 0.5, slope: float = 1.5) -> None:
        self.base = check_fraction("success_adaptive", "base", base, low_open=False)
        self.slope = check_nonnegative("success_adaptive", "slope", slope)

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        adv = rollouts.advantages
        dtype = compute_dtype(adv.dtype)
        scored = ~torch.isnan(rollouts.rewards)
        mean_reward = group_mean(torch.nan_to_num(rollouts.rewards.to(dtype), nan=0.0), rollouts.group_ids)
        scale = (self.base + self.slope * mean_reward).clamp(0.0, 1.0)
        negative = (adv < 0) & scored
        out = torch.where(negative, adv.to(dtype) * scale, adv.to(dtype))
        out = torch.where(scored, out, torch.zeros_like(out))
        count = int(negative.sum())
        metrics = {
            "negative_fraction": count / max(adv.numel(), 1),
            "mean_negative_scale": float(scale[negative].mean()) if count else 1.0,
        }
        return Reweighted(advantages=out[rollouts.local].to(adv.dtype), metrics=metrics)
