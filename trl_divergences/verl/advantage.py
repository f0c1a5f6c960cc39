"""Advantage reweightings as a registered verl advantage estimator, through the objective layer.

``algorithm.adv_estimator=trl_divergences`` computes verl's advantages with a base estimator (``grpo`` by default)
and rewrites them with :meth:`trl_divergences.objective.Objective.rollout_step`; the method and its kwargs sit under
``+algorithm.trl_divergences`` (verl's ``algorithm`` section is a plain DictConfig, so extra keys reach the
estimator)::

    algorithm.adv_estimator=trl_divergences
    +algorithm.trl_divergences.advantage_reweighting=w_reinforce
    +algorithm.trl_divergences.reweighting_kwargs.positive_weight=0.1
    +algorithm.trl_divergences.base_estimator=grpo            # default
    +algorithm.trl_divergences.correct_reward_threshold=1.0   # default

verl hands a registered estimator only the token-level rewards, the response mask, the uids and the algorithm
config (no log-probs, no hidden states, no per-step state, no way to drop rollouts from the loss's token mean or to
log metrics), so only reweightings that need nothing more are reachable here; the others are refused when the
estimator first sees the config, naming what is missing.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..objective import Objective, RolloutInputs

ESTIMATOR = "trl_divergences"
#: the algorithm sub-section holding our keys
SECTION = "trl_divergences"
SECTION_KEYS = ("advantage_reweighting", "reweighting_kwargs", "base_estimator", "correct_reward_threshold")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> Python ones (hashable JSON-like for the cache key)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


def section_of(algorithm: Any) -> dict:
    """Our keys of verl's ``algorithm`` config, validated (unknown keys raise naming the valid ones)."""
    section = _plain(algorithm.get(SECTION) if algorithm is not None else None) or {}
    if not isinstance(section, dict):
        raise ValueError(f"algorithm.{SECTION} must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(SECTION_KEYS))
    if unknown:
        raise ValueError(f"algorithm.{SECTION} got unknown key(s) {unknown}; valid: {', '.join(SECTION_KEYS)}")
    return section


@lru_cache(maxsize=8)
def _objective(reweighting: str | None, kwargs: tuple, threshold: float) -> Objective:
    objective = Objective(
        advantage_reweighting=reweighting, reweighting_kwargs=dict(kwargs), correct_reward_threshold=threshold
    )
    rw = objective.reweighting
    if rw is None:
        raise ValueError(f"algorithm.adv_estimator={ESTIMATOR} needs algorithm.{SECTION}.advantage_reweighting")
    missing = [
        reason
        for reason, needed in (
            (f"the rollouts' {', '.join(sorted(rw.requires))}", bool(rw.requires)),
            ("the reference model's log-probs", rw.needs_reference),
            ("a per-rollout weight of the divergence penalty", rw.reweights_divergence),
            ("dropping rollouts from the loss's token mean", rw.drops_rollouts),
        )
        if needed
    ]
    if missing:
        raise ValueError(
            f"advantage_reweighting {rw!r} needs {' and '.join(missing)}, which verl 0.9.1 does not give a "
            "registered advantage estimator; it is TRL only for now"
        )
    return objective


def objective_from(algorithm: Any) -> tuple[Objective, str]:
    """The (cached) objective and base estimator name of verl's ``algorithm`` config."""
    section = section_of(algorithm)
    kwargs = section.get("reweighting_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"reweighting_kwargs must be a dict, got {type(kwargs).__name__}")
    objective = _objective(
        section.get("advantage_reweighting"),
        tuple(sorted(kwargs.items())),
        float(section.get("correct_reward_threshold", 1.0)),
    )
    base = section.get("base_estimator", "grpo")
    if base == ESTIMATOR:
        raise ValueError(f"algorithm.{SECTION}.base_estimator cannot be {ESTIMATOR!r} itself")
    return objective, base


def group_ids(index: np.ndarray) -> Tensor:
    """verl's per-rollout uids -> int64 group ids (first appearance order)."""
    _, inverse = np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long)


def compute_reweighted_advantage(
    token_level_rewards: Tensor, response_mask: Tensor, config: Any = None, index: np.ndarray | None = None, **kwargs
) -> tuple[Tensor, Tensor]:
    """Base-estimator advantages rewritten by the configured reweighting: (advantages [bs, T], returns [bs, T])."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn

    objective, base = objective_from(config)
    if index is None:
        raise ValueError(f"algorithm.adv_estimator={ESTIMATOR} needs the rollouts' uids (groups)")
    if base == "grpo":
        norm = config.get("norm_adv_by_std_in_grpo", True) if config is not None else True
        advantages, _ = compute_grpo_outcome_advantage(
            token_level_rewards, response_mask, index, norm_adv_by_std_in_grpo=norm
        )
    else:
        advantages, _ = get_adv_estimator_fn(base)(
            token_level_rewards=token_level_rewards, response_mask=response_mask, config=config, index=index, **kwargs
        )
    out = objective.rollout_step(
        rollout_inputs(token_level_rewards, advantages, response_mask, index), step=0, max_steps=0, training=True
    )
    rewritten = token_advantages(out.advantages, response_mask, advantages.dtype)
    return rewritten, rewritten


def rollout_inputs(
    token_level_rewards: Tensor, advantages: Tensor, response_mask: Tensor, index: np.ndarray, **optional: Any
) -> RolloutInputs:
    """verl's padded per-token rewards and advantages [bs, T] of one (single-process) batch as the objective's
    rollout inputs: total reward and mean advantage per rollout, groups from the uids; ``optional``: the other
    :class:`~trl_divergences.objective.RolloutInputs` fields."""
    mask = response_mask.to(advantages.dtype)
    return RolloutInputs(
        rewards=token_level_rewards.sum(-1),
        advantages=(advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1.0),
        group_ids=group_ids(index),
        local=slice(0, token_level_rewards.shape[0]),
        completion_mask=response_mask,
        **optional,
    )


def token_advantages(advantages: Tensor, response_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The objective's advantages ([bs] or [bs, T]) as verl's per-token ones, zero off the response."""
    advantages = advantages.to(dtype)
    return (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages) * response_mask.to(dtype)


def install() -> None:
    """Register :func:`compute_reweighted_advantage` as ``algorithm.adv_estimator=trl_divergences`` (idempotent:
    verl's registry raises on a different function under the same name)."""
    from verl.trainer.ppo import core_algos

    if core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR) is not compute_reweighted_advantage:
        core_algos.register_adv_est(ESTIMATOR)(compute_reweighted_advantage)
