"""SELF's greedy-correct filter ("The Reasoning Boundary Paradox: How Reinforcement Learning Constrains Language
Models", 2025; official code ``mail-research/SELF-llm-interference``, ``RayMaxPPOTrainer.fit``)."""

from __future__ import annotations

from ..checks import check_nonnegative
from .base import CURRICULA, Curriculum


@CURRICULA.register_class("self")
class SelfCurriculum(Curriculum):
    """Before each step's rollouts, greedy-decode one answer per prompt with the *current* policy and drop the
    prompts it answers correctly; GRPO runs on the rest (prompts nobody solves stay). Prompts are kept whole: every
    one of a prompt's G rollouts goes, or none.

    The official code shrinks the batch (then pads it to the world size by repeating samples) and skips a step with
    nothing left. Ours keeps GRPO's group structure and a fixed batch size: dropped slots are refilled with prompts
    drawn uniformly from the training set (seeded by seed, step and process: reproducible, and processes do not
    draw the same candidates) whose greedy answer is also wrong — up to ``refill_rounds`` rounds of one candidate
    batch each — and slots still empty after that repeat the chosen (kept and refilled) prompts in order. A batch
    with nothing chosen trains on nothing (zero advantages). ``refill_rounds=0`` gives the official sample
    repetition.
    """

    kind = "filter"

    def __init__(self, *, refill_rounds: int = 2) -> None:
        if not (isinstance(refill_rounds, int) and not isinstance(refill_rounds, bool)):
            raise ValueError(f"self: refill_rounds must be a non-negative integer, got {refill_rounds!r}")
        self.refill_rounds = int(check_nonnegative("self", "refill_rounds", refill_rounds))

    @staticmethod
    def plan(kept: list[int], refills: list[int], n_slots: int) -> list[int] | None:
        """The batch's prompts (``n_slots`` of them): the kept ones, then refills (greedy-wrong candidates), then those
        chosen ones repeated in order; None when nothing is kept or found (the step trains on nothing)."""
        chosen = (kept + refills)[:n_slots]
        if not chosen:
            return None
        base = list(chosen)
        while len(chosen) < n_slots:
            chosen.append(base[(len(chosen) - len(base)) % len(base)])
        return chosen
