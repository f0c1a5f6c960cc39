"""Pass-rate curricula: FG-ExPO's Gaussian curriculum and PACED's Beta kernel as sampling weights."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_fraction, check_nonnegative, check_positive
from ..groups import beta_kernel
from .base import CURRICULA, PassRateCurriculum


@CURRICULA.register_class("gaussian")
class GaussianCurriculum(PassRateCurriculum):
    """Gaussian curriculum sampling, GCS ("FG-ExPO: Frontier-Guided Exploration-Prioritized Policy Optimization via
    Adaptive KL and Gaussian Curriculum", 2026; [paper], no official code): w_q = exp(−(p̃_q − μ)² / (2σ²)), μ = 0.5,
    σ = 0.35, over the EMA pass rate p̃ (α = 0.9, initial 0.5); P(q) = w_q / Σ w, recomputed for every chunk. Prompts
    are drawn without replacement within a generation batch (the paper does not say).
    """

    def __init__(self, *, mean: float = 0.5, std: float = 0.35, ema: float = 0.9, initial: float = 0.5) -> None:
        super().__init__(ema=ema, initial=initial)
        self.mean = check_fraction("gaussian", "mean", mean, low_open=False)
        self.std = check_positive("gaussian", "std", std)

    def weight_of(self, pass_rates: Tensor) -> Tensor:
        return (-((pass_rates - self.mean) ** 2) / (2.0 * self.std**2)).exp()


@CURRICULA.register_class("paced")
class PacedCurriculum(PassRateCurriculum):
    """PACED's Beta kernel w(p) = p^α (1 − p)^β ("PACED: Distillation at the Frontier of Student Competence", 2026;
    [secondary]) used as *sampling* weights over the EMA pass rate — an option: the paper uses it as a loss weight
    (``advantage_reweighting="paced"``). α = β = 1. Ours: the EMA table (α_ema = 0.9, initial 0.5, shared with
    ``gaussian``) and ``min_weight`` = 0.01 × the kernel's maximum, so that a prompt whose estimate reaches 0 or 1 can
    still be drawn and its estimate can recover.
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        min_weight: float = 0.01,
        ema: float = 0.9,
        initial: float = 0.5,
    ) -> None:
        super().__init__(ema=ema, initial=initial)
        self.alpha = check_nonnegative("paced", "alpha", alpha)
        self.beta = check_nonnegative("paced", "beta", beta)
        self.min_weight = check_fraction("paced", "min_weight", min_weight, low_open=False)

    def weight_of(self, pass_rates: Tensor) -> Tensor:
        return floored_beta_kernel(pass_rates, self.alpha, self.beta, self.min_weight)


def floored_beta_kernel(p: Tensor, alpha: float, beta: float, min_weight: float) -> Tensor:
    """:func:`~trl_divergences.groups.beta_kernel` floored at ``min_weight`` × its maximum over [0, 1]."""
    peak = torch.tensor(alpha / (alpha + beta) if alpha + beta > 0 else 0.5, dtype=p.dtype)
    return beta_kernel(p, alpha, beta).clamp(min=min_weight * beta_kernel(peak, alpha, beta).item())
