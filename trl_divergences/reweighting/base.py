"""Advantage reweighting: per-rollout (or per-token) transforms of the advantages of one generation batch, computed
once at rollout time, before the loss.

A reweighting sees the whole generation batch as :class:`Rollouts` — per-rollout vectors over *all* processes
(process-major order, so group statistics are exact wherever a group's rows live) plus, for methods that need
them, per-token tensors of this process's rows — and returns this process's rows as :class:`Reweighted`: new
advantages ([n] or [n, T]), an optional per-rollout weight of the divergence penalty (APO's DADS), and an optional
per-rollout keep flag (W-REINFORCE's PSR/NSR modes drop the other samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..registry import Method, Registry

ADVANTAGE_REWEIGHTINGS: Registry[AdvantageReweighting] = Registry("advantage reweighting")

#: optional Rollouts fields a reweighting can require
ROLLOUT_FIELDS = ("seq_log_ratio", "completion_mask", "hidden")


@dataclass
class Rollouts:
    """One generation batch. Per-rollout vectors are [N] over all processes; per-token tensors are this process's
    rows ``local`` (a slice of range(N)).

    Attributes:
        rewards: [N] total reward of each rollout (the framework's weighted sum of reward functions; NaN = unscored).
        advantages: [N] the framework's advantages (TRL / verl GRPO: group-normalized).
        group_ids: [N] int, rollouts of one prompt share an id.
        correct: [N] bool, reward ≥ the correctness threshold.
        lengths: [N] completion lengths in tokens.
        local: this process's rows.
        seq_log_ratio: [N] Σ_t (log π_old − log ρ)(y_t) over each completion, detached (ACE).
        completion_mask: [n, T] valid completion tokens of the local rows.
        hidden: [n, T, H] penultimate-layer hidden states of the local rows, detached (ResRL): HF
            ``hidden_states[-2]``, the residual stream entering the last decoder layer (not the final-normed state),
            at the positions that predict each completion token (the logits' shift).
    """

    rewards: Tensor
    advantages: Tensor
    group_ids: Tensor
    correct: Tensor
    lengths: Tensor
    local: slice
    seq_log_ratio: Tensor | None = None
    completion_mask: Tensor | None = None
    hidden: Tensor | None = None


@dataclass
class Reweighted:
    """This process's rows after reweighting.

    Attributes:
        advantages: [n] or [n, T] new advantages.
        divergence_weight: [n] per-rollout multiplier of the divergence penalty, or None (all 1).
        keep: [n] bool rollouts kept in the loss (dropped rows leave the token mean), or None (all kept).
        metrics: scalars to log under ``reweighting/<name>/<key>`` (already global: computed from [N] vectors).
    """

    advantages: Tensor
    divergence_weight: Tensor | None = None
    keep: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class AdvantageReweighting(Method):
    """Base class; subclasses set ``requires`` (entries of :data:`ROLLOUT_FIELDS`) and implement :meth:`__call__`.

    ``needs_reference``: the method reads ρ's log-probs (an adapter must compute them even when the divergence
    coefficient is 0). ``whole_groups_per_process``: per-token group statistics need every row of a group on the
    same process (an adapter checks its batch layout allows it). ``reweights_divergence`` / ``drops_rollouts``: the
    outputs ``divergence_weight`` / ``keep`` may be set.
    """

    method_kind = "advantage reweighting"
    requires: frozenset[str] = frozenset()
    needs_reference: bool = False
    whole_groups_per_process: bool = False
    #: returns a ``divergence_weight`` (the penalty differs per rollout: TRL's inline k3 cannot apply it)
    reweights_divergence: bool = False
    #: returns ``keep`` flags (rollouts leave the loss: needs a token-count loss normalizer)
    drops_rollouts: bool = False

    def __call__(self, rollouts: Rollouts) -> Reweighted:
        raise NotImplementedError


def register_advantage_reweighting(name: str) -> Callable[[type[AdvantageReweighting]], type[AdvantageReweighting]]:
    """Class decorator registering a :class:`AdvantageReweighting` subclass under ``name``."""
    return ADVANTAGE_REWEIGHTINGS.register_class(name)


def get_advantage_reweighting(name: str, **kwargs) -> AdvantageReweighting:
    """Build a registered advantage reweighting; ``ValueError`` names the valid names / kwargs."""
    return ADVANTAGE_REWEIGHTINGS.build(name, **kwargs)


def list_advantage_reweightings() -> list[str]:
    """Names of all registered advantage reweightings."""
    return ADVANTAGE_REWEIGHTINGS.names()
