"""Difficulty-aware reweightings from a prompt's pass rate in its group: APO's DADS (+ STCR) and PACED."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_choice, check_nonnegative, check_positive
from ..groups import beta_kernel, group_count, group_mean
from ..numerics import compute_dtype
from .base import AdvantageReweighting, Reweighted, Rollouts, register_advantage_reweighting


def _pass_rate(rollouts: Rollouts, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(scored, correct, p), each [N]: p is the fraction of correct rollouts in each row's group; unscored (NaN
    reward) rollouts count as incorrect."""
    scored = ~torch.isnan(rollouts.rewards)
    correct = rollouts.correct.bool() & scored
    return scored, correct, group_mean(correct.to(dtype), rollouts.group_ids)


@register_advantage_reweighting("dads")
class DADS(AdvantageReweighting):
    """APO's Difficulty-Adaptive Divergence Shaping: the divergence penalty of a positive-advantage rollout is
    weighted by 1 − exp(−s·(1 − d)), d = 1 − group accuracy, for 0 < d < 1 (1 otherwise and for the other rollouts)
    ("APO: Enhancing Reasoning Ability of MLLMs via Asymmetric Policy Optimization", 2025, arXiv 2506.21655; official
    code ``Indolent-Kawhi/View-R1``, ``ppo_actor.py::calculate_kl_weight``).

    With s = e: d = 0.125 → 0.93, 0.5 → 0.74, 0.875 → 0.29, so correct answers to hard prompts are held less to the
    reference. The weight multiplies each rollout's token-mean divergence (official: k3 KL as a loss, coefficient
    1e-3, both the trainer's settings). Advantages are unchanged unless ``stcr``.

    STCR (Suboptimal Trajectory Complexity Regularization, ``stcr=True``): for an incorrect rollout in a group with
    ≥ 1 correct one, Δ = |y_i| − mean length of the group's correct rollouts, and A_i ← A_i·(2 − b^(−Δ)) when Δ > 0,
    b = ``stcr_base`` (1.00001: Δ = 1000 tokens → × 1.010). Unscored rollouts (NaN reward) count as incorrect with
    advantage 0.

    Args:
        scale: s > 0 (e).
        stcr: also apply STCR to the advantages (False).
        stcr_base: b > 1 (1.00001).
    """

    reweights_divergence = True

    def __init__(self, *, scale: float = math.e, stcr: bool = False, stcr_base: float = 1.00001) -> None:
        self.scale = check_positive("dads", "scale", scale)
        if not isinstance(stcr, bool):
            raise ValueError(f"dads: stcr must be a bool, got {stcr!r}")
        self.stcr = stcr
        if not (check_positive("dads", "stcr_base", stcr_base) > 1.0):
            raise ValueError(f"dads: stcr_base must be a finite number > 1, got {stcr_base!r}")
        self.stcr_base = float(stcr_base)

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        adv = rollouts.advantages
        dtype = compute_dtype(adv.dtype)
        scored, correct, accuracy = _pass_rate(rollouts, dtype)
        difficulty = 1.0 - accuracy
        shaped = (adv > 0) & scored & (difficulty > 0) & (difficulty < 1)
        weight = torch.where(shaped, 1.0 - torch.exp(-self.scale * (1.0 - difficulty)), torch.ones_like(accuracy))
        out = adv.to(dtype)
        metrics = {"mean_divergence_weight": float(weight.mean()), "shaped_fraction": float(shaped.to(dtype).mean())}
        if self.stcr:
            lengths = rollouts.lengths.to(dtype)
            excess = lengths - group_mean(lengths, rollouts.group_ids, where=correct)
            penalized = ~correct & (group_count(correct, rollouts.group_ids) > 0) & (excess > 0)
            factor = torch.where(penalized, 2.0 - self.stcr_base ** (-excess), torch.ones_like(excess))
            out = out * factor
            metrics["stcr_penalized_fraction"] = float(penalized.to(dtype).mean())
            metrics["stcr_mean_multiplier"] = float(factor[penalized].mean()) if penalized.any() else 1.0
        out = torch.where(scored, out, torch.zeros_like(out))
        local = rollouts.local
        return Reweighted(
            advantages=out[local].to(adv.dtype),
            divergence_weight=weight[local].to(adv.dtype),
            metrics=metrics,
        )


@register_advantage_reweighting("paced")
class PACED(AdvantageReweighting):
    """PACED: advantages × w = p^α (1 − p)^β, p the prompt's pass rate in its group (α = β = 1: w = p(1 − p))
    ("PACED: Distillation at the Frontier of Student Competence", 2026, arXiv 2603.11178).

    Prompts the policy always or never solves get weight 0; the weight peaks at p = α/(α + β), the frontier of
    competence.

    [secondary] No official code; the paper uses w as a per-problem loss weight of a distillation loss. Ours, not
    the paper's: applying it to the policy-gradient advantages, p from the current group (not a pass-rate history),
    and ``normalize="mean"`` (default), which divides by the mean weight over all N rollouts of the batch so that
    the loss keeps its scale (p(1 − p) ≤ 0.25 would otherwise shrink it ≥ 4×); if that mean is 0 the weights stay 0.
    ``normalize="none"`` uses the raw weights. Unscored rollouts (NaN reward) count as incorrect with advantage 0.

    Args:
        alpha: α ≥ 0 (1).
        beta: β ≥ 0 (1).
        normalize: ``"mean"`` or ``"none"``.
    """

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, normalize: str = "mean") -> None:
        self.alpha = check_nonnegative("paced", "alpha", alpha)
        self.beta = check_nonnegative("paced", "beta", beta)
        self.normalize = check_choice("paced", "normalize", normalize, ("mean", "none"))

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        adv = rollouts.advantages
        dtype = compute_dtype(adv.dtype)
        scored, _, p = _pass_rate(rollouts, dtype)
        raw = beta_kernel(p, self.alpha, self.beta)
        weight = raw
        if self.normalize == "mean":
            mean = raw.mean()
            weight = raw / mean if mean > 0 else torch.zeros_like(raw)
        out = torch.where(scored, adv.to(dtype) * weight, torch.zeros_like(weight))
        metrics = {"mean_raw_weight": float(raw.mean()), "zero_weight_fraction": float((raw == 0).to(dtype).mean())}
        return Reweighted(advantages=out[rollouts.local].to(adv.dtype), metrics=metrics)
