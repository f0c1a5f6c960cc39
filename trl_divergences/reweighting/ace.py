"""ACE: confidence-aware scaling of the negative advantages ("Overconfident Errors Need Stronger Correction:
Asymmetric Confidence Penalties for Reinforcement Learning", Xu et al., 2026, arXiv 2602.21420)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_nonnegative
from ..numerics import compute_dtype
from .base import AdvantageReweighting, Reweighted, Rollouts, register_advantage_reweighting


@register_advantage_reweighting("ace")
class ACE(AdvantageReweighting):
    """ACE: A_i ← A_i·(1 + α·softplus(c_i)) for A_i < 0, c_i = Σ_t (log π_old − log ρ)(y_{i,t}); ``alpha`` has no
    published default (suggested sweep 0.1–1.0).

    Only wrong rollouts (negative advantage) are scaled, and the more the policy has grown their probability over the
    reference (c_i ≫ 0: an overconfident error) the harder they are pushed down; softplus keeps the scale ≥ 1 and
    smooth (the paper's ablation prefers it to ReLU). c_i is detached (computed at rollout time from π_old).

    [secondary] No official code: the abstract and summaries give the softplus of the sequence log-ratio on negative
    advantages. Ours, not the paper's: the placement of α (inside 1 + ·), c_i from π_old rather than π_θ, the
    options ``length_normalize`` (c_i / |y_i|, default off: the theorem needs the summed log-ratio) and ``c_clip``
    (upper bound on c_i before softplus, default none; a summed ratio over thousands of tokens reaches tens).

    Args:
        alpha: α ≥ 0, strength of the confidence penalty (required).
        length_normalize: divide c_i by the completion length.
        c_clip: optional upper bound on c_i (≥ 0).
    """

    requires = frozenset({"seq_log_ratio"})
    needs_reference = True

    def __init__(self, *, alpha: float, length_normalize: bool = False, c_clip: float | None = None) -> None:
        self.alpha = check_nonnegative("ace", "alpha", alpha)
        if not isinstance(length_normalize, bool):
            raise ValueError(f"ace: length_normalize must be a bool, got {length_normalize!r}")
        self.length_normalize = length_normalize
        self.c_clip = None if c_clip is None else check_nonnegative("ace", "c_clip", c_clip)

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        if rollouts.seq_log_ratio is None:
            raise ValueError("ace needs Rollouts.seq_log_ratio (Σ_t log π_old − log ρ per rollout)")
        adv = rollouts.advantages
        dtype = compute_dtype(adv.dtype)
        scored = ~torch.isnan(rollouts.rewards)
        c = rollouts.seq_log_ratio.to(dtype)
        if self.length_normalize:
            c = c / rollouts.lengths.to(dtype).clamp(min=1.0)
        if self.c_clip is not None:
            c = c.clamp(max=self.c_clip)
        modulated = (adv < 0) & scored
        multiplier = torch.where(modulated, 1.0 + self.alpha * F.softplus(c), torch.ones_like(c))
        out = torch.where(scored, adv.to(dtype) * multiplier, torch.zeros_like(c))
        count = int(modulated.sum())
        metrics = {
            "modulated_fraction": count / max(adv.numel(), 1),
            "mean_multiplier": float(multiplier[modulated].mean()) if count else 1.0,
            "mean_confidence_shift": float(c[modulated].mean()) if count else 0.0,
        }
        return Reweighted(advantages=out[rollouts.local].to(adv.dtype), metrics=metrics)
