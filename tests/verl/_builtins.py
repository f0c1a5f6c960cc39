"""Outputs of verl's built-in KL types, policy losses (through ``ppo_loss``) and advantage estimators on fixed
inputs: values and gradients, for the bit-identity test (computed in a process with and without the plugin)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k1+", "abs+", "low_var_kl+", "k3+")
POLICY_LOSSES = ("vanilla", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo", "dppo_tv", "dppo_kl")
ADV_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus", "opo", "grpo_passk", "gpg", "rloo_vectorized")
ALGORITHM = {"gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": True}


def builtin_outputs() -> dict[str, Tensor]:
    from verl import DataProto
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.workers.config import ActorConfig, PolicyLossConfig
    from verl.workers.utils.losses import ppo_loss

    from tests.verl._batches import make_rollouts, micro_batch

    out: dict[str, Tensor] = {}
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 6, generator=g, dtype=torch.float32).requires_grad_()
    ref = torch.randn(4, 6, generator=g, dtype=torch.float32)
    for name in KL_TYPES:
        value = core_algos.kl_penalty(lp, ref, name)
        out[f"kl/{name}"] = value.detach()
        out[f"kl/{name}/grad"] = torch.autograd.grad(value.sum(), lp)[0]
    for mode in POLICY_LOSSES:
        r = make_rollouts([3, 2, 4, 3], [4, 2, 5, 3], vocab=7, seed=1, dtype=torch.float32)
        lp_r, _ = r.logps()
        old = (lp_r + 0.1 * torch.randn(lp_r.shape, generator=g)).detach()
        config = ActorConfig(
            strategy="fsdp",
            rollout_n=2,
            ppo_micro_batch_size_per_gpu=2,
            use_kl_loss=True,
            kl_loss_type="low_var_kl",
            policy_loss=PolicyLossConfig(loss_mode=mode),
        )
        loss, _ = ppo_loss(config, *micro_batch(r, slice(0, 4), old, int(r.mask.sum()), 4))
        out[f"loss/{mode}"] = loss.detach()
        out[f"loss/{mode}/grad"] = torch.autograd.grad(loss, r.theta)[0]
    rewards = torch.zeros(8, 5)
    rewards[torch.arange(8), torch.tensor([4, 2, 3, 4, 1, 4, 0, 3])] = torch.randn(8, generator=g)
    mask = torch.ones(8, 5)
    for i, n in enumerate([5, 3, 4, 5, 2, 5, 1, 4]):
        mask[i, n:] = 0
    for est in ADV_ESTIMATORS:
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": mask, "responses": torch.zeros(8, 5)},
            non_tensors={"uid": np.array(["a", "a", "b", "b", "c", "c", "d", "d"], dtype=object)},
        )
        data = compute_advantage(data, adv_estimator=est, num_repeat=2, config=OmegaConf.create(ALGORITHM))
        out[f"adv/{est}"] = data.batch["advantages"].clone()
    return out
