"""Coefficient / divergence schedules: FG-ExPO's accuracy-conditioned KL, PACED's forward-then-reverse KL, warm-up,
KDRL's linear annealing."""

from __future__ import annotations

import math

from ..checks import check_fraction, check_nonnegative, check_positive_int
from .base import SCHEDULES, Schedule


def _stage_length(method: str, steps: int | None, fraction: float | None, max_steps: int) -> float:
    """A stage length in steps, from an absolute ``steps`` or a ``fraction`` of max_steps."""
    if steps is not None:
        return float(steps)
    if max_steps <= 0:
        raise ValueError(f"{method}: a fraction of the run needs max_steps > 0; give the length in steps instead")
    return fraction * max_steps


def _check_length(method: str, steps: int | None, fraction: float | None, name: str) -> None:
    if steps is not None and fraction is not None:
        raise ValueError(f"{method}: give {name}_steps or {name}_fraction, not both")
    if steps is not None:
        check_positive_int(method, f"{name}_steps", steps)
    if fraction is not None:
        check_fraction(method, f"{name}_fraction", fraction)


@SCHEDULES.register_class("accuracy_conditioned")
class AccuracyConditioned(Schedule):
    """Accuracy-conditioned KL scaling, AKL ("FG-ExPO", 2026; [paper]): β_eff = β·ρ(ā), ρ(x) = (tanh(x) + 1)/2 ∈
    [0.5, 0.881] for x ∈ [0, 1], ā = mean correctness over all rollouts of the batch (all processes). The paper's β is
    0.02 (the trainer's ``beta``) with a k3 penalty in the loss (the default estimator)."""

    needs_accuracy = True

    def __call__(self, step: int, max_steps: int, accuracy: float | None = None) -> tuple[float, str | None]:
        if accuracy is None:
            raise ValueError("accuracy_conditioned needs the batch accuracy")
        return (math.tanh(accuracy) + 1.0) / 2.0, None


@SCHEDULES.register_class("forward_then_reverse")
class ForwardThenReverse(Schedule):
    """PACED's two-stage schedule ("PACED", 2026; [secondary]): forward KL(ρ‖π) (mode coverage) for the first
    stage, reverse KL(π‖ρ) (consolidation) after. The stage length is not published: ``switch_fraction`` of
    max_steps (default ½) or ``switch_steps``. The estimator is the configured one (it must exist for both)."""

    divergences = ("forward_kl", "reverse_kl")

    def __init__(self, *, switch_steps: int | None = None, switch_fraction: float | None = None) -> None:
        _check_length("forward_then_reverse", switch_steps, switch_fraction, "switch")
        self.switch_steps = switch_steps
        self.switch_fraction = 0.5 if switch_steps is None and switch_fraction is None else switch_fraction

    def __call__(self, step: int, max_steps: int, accuracy: float | None = None) -> tuple[float, str | None]:
        switch = _stage_length("forward_then_reverse", self.switch_steps, self.switch_fraction, max_steps)
        return 1.0, ("forward_kl" if step < switch else "reverse_kl")


@SCHEDULES.register_class("warmup")
class Warmup(Schedule):
    """Linear warm-up of the coefficient to β over ``warmup_steps`` w (or ``warmup_fraction`` of max_steps, default
    10%): multiplier (s + 1)/w at step s < w − 1 (β/w at the first step, β from step w − 1), then constant, or, with
    ``final_multiplier`` set, linear from β to final_multiplier·β at the last step."""

    def __init__(
        self,
        *,
        warmup_steps: int | None = None,
        warmup_fraction: float | None = None,
        final_multiplier: float | None = None,
    ) -> None:
        _check_length("warmup", warmup_steps, warmup_fraction, "warmup")
        self.warmup_steps = warmup_steps
        self.warmup_fraction = 0.1 if warmup_steps is None and warmup_fraction is None else warmup_fraction
        self.final_multiplier = (
            None if final_multiplier is None else check_nonnegative("warmup", "final_multiplier", final_multiplier)
        )

    def __call__(self, step: int, max_steps: int, accuracy: float | None = None) -> tuple[float, str | None]:
        warm = max(_stage_length("warmup", self.warmup_steps, self.warmup_fraction, max_steps), 1.0)
        if step + 1 < warm:
            return (step + 1) / warm, None
        if self.final_multiplier is None or max_steps <= warm:
            return 1.0, None
        progress = min(1.0, (step + 1 - warm) / (max_steps - warm))
        return 1.0 + (self.final_multiplier - 1.0) * progress, None


@SCHEDULES.register_class("linear_anneal")
class LinearAnneal(Schedule):
    """Linear annealing of the coefficient to a floor, KDRL-Annealing ("KDRL: Post-Training Reasoning LLMs via
    Unified Knowledge Distillation and Reinforcement Learning", Xu et al., 2025; [paper-2nd]):
    β_s = max(β₀ − δ·s, β_min) at step s.

    Written as a multiplier of the configured coefficient β₀: max(1 − (1 − f)·s/S, f), f = ``final_multiplier``
    (β_min = f·β₀), S = ``anneal_steps`` (or ``anneal_fraction`` of max_steps) the step at which the floor is reached
    (δ = (1 − f)·β₀/S). KDRL's β₀ = 5e-3, β_min = 1e-3, δ = 5e-5 are β₀ = 5e-3 with the defaults f = 0.2, S = 80.
    A function of the step only: a resumed run gets the same coefficients from the restored step."""

    def __init__(
        self,
        *,
        final_multiplier: float = 0.2,
        anneal_steps: int | None = None,
        anneal_fraction: float | None = None,
    ) -> None:
        self.final_multiplier = check_fraction("linear_anneal", "final_multiplier", final_multiplier, low_open=False)
        _check_length("linear_anneal", anneal_steps, anneal_fraction, "anneal")
        self.anneal_steps = 80 if anneal_steps is None and anneal_fraction is None else anneal_steps
        self.anneal_fraction = anneal_fraction

    def __call__(self, step: int, max_steps: int, accuracy: float | None = None) -> tuple[float, str | None]:
        length = _stage_length("linear_anneal", self.anneal_steps, self.anneal_fraction, max_steps)
        return max(1.0 - (1.0 - self.final_multiplier) * step / length, self.final_multiplier), None
