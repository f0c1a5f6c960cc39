"""Reference-sample rehearsal (DPH-RL, "The Choice of Divergence", 2025): store correct base-model samples of the
prompts the base model already solves, run RL on the others, and add a mass-covering divergence on the stored
samples each step — no reference model in memory. See ``README.md`` in this folder."""

from .loss import REHEARSAL_DIVERGENCES, RehearsalLoss, build_rehearsal_loss

__all__ = ["REHEARSAL_DIVERGENCES", "RehearsalLoss", "build_rehearsal_loss"]
