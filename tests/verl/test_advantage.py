"""``algorithm.adv_estimator=trl_divergences``: the reweightings a verl advantage estimator can reach, through
verl's ``compute_advantage``, against the core reweighting on verl's GRPO advantages and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trl_divergences import get_advantage_reweighting
from trl_divergences.reweighting import Rollouts

pytestmark = pytest.mark.verl

ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage  # noqa: E402

UIDS = np.array(["a", "a", "a", "b", "b", "b", "c", "c", "c"], dtype=object)
REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
LENGTHS = [3, 5, 2, 4, 5, 1, 5, 3, 4]


def batch():
    mask = torch.zeros(9, 5)
    token_rewards = torch.zeros(9, 5)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
        token_rewards[i, n - 1] = REWARDS[i]
    return DataProto.from_dict(
        tensors={"token_level_rewards": token_rewards, "response_mask": mask, "responses": torch.zeros(9, 5)},
        non_tensors={"uid": UIDS},
    )


def advantages(section: dict):
    config = OmegaConf.create({"gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": True, "trl_divergences": section})
    data = ray_trainer.compute_advantage(batch(), adv_estimator="trl_divergences", config=config)
    return data.batch["advantages"], data.batch["response_mask"]


def test_w_reinforce_hand_computed():
    adv, mask = advantages({"advantage_reweighting": "w_reinforce", "reweighting_kwargs": {"positive_weight": 0.2}})
    want = torch.where(REWARDS >= 1.0, 0.2, -1.0).unsqueeze(-1) * mask
    torch.testing.assert_close(adv, want)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("success_adaptive", {"base": 0.4, "slope": 2.0}), ("paced", {}), ("w_reinforce", {})]
)
def test_reachable_reweightings_match_the_core_on_grpo_advantages(name, kwargs):
    adv, mask = advantages({"advantage_reweighting": name, "reweighting_kwargs": kwargs})
    data = batch()
    grpo, _ = compute_grpo_outcome_advantage(data.batch["token_level_rewards"], mask, UIDS)
    per_rollout = grpo[:, 0]
    rw = get_advantage_reweighting(name, **kwargs)
    result = rw(
        Rollouts(
            rewards=REWARDS,
            advantages=per_rollout,
            group_ids=torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]),
            correct=REWARDS >= 1.0,
            lengths=mask.sum(-1),
            local=slice(0, 9),
            completion_mask=mask,
        )
    )
    torch.testing.assert_close(adv, result.advantages.unsqueeze(-1).to(adv.dtype) * mask)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"advantage_reweighting": "ace", "reweighting_kwargs": {"alpha": 0.5}}, "needs the rollouts' seq_log_ratio"),
        ({"advantage_reweighting": "resrl"}, "needs the rollouts' completion_mask, hidden"),
        ({"advantage_reweighting": "dads"}, "a per-rollout weight of the divergence penalty"),
        (
            {"advantage_reweighting": "w_reinforce", "reweighting_kwargs": {"mode": "psr"}},
            "dropping rollouts from the loss's token mean",
        ),
        ({"advantage_reweighting": "wreinforce"}, "unknown advantage reweighting 'wreinforce'; valid choices"),
        ({"advantage_reweighting": "paced", "reweighting_kwargs": {"alpa": 1}}, "got unknown argument(s) ['alpa']"),
        ({"advantage_reweighting": "paced", "weights": 1}, "got unknown key(s) ['weights']"),
        ({}, "needs algorithm.trl_divergences.advantage_reweighting"),
    ],
)
def test_unreachable_or_bad_sections_are_refused(section, message):
    with pytest.raises(ValueError) as err:
        advantages(section)
    assert message in str(err.value)
