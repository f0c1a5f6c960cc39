"""The registered verl trainer that runs ``kl_loss_type=<name>:full``: ``trainer.v1.trainer_mode=trl_divergences_full``.

verl's v1 trainer maps every actor / ref role to ``ActorRolloutRefWorker`` in ``_init_resource_pool_mgr``; the
exact divergence needs :class:`~.workers.FullActorRolloutRefWorker` there instead. :class:`FullDivergenceMixin` is
that one override, so any trainer of this plugin can inherit it; :class:`FullDivergenceTrainer` is verl's synchronous
trainer with it.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

from .config import FULL_TRAINER_MODE, full_kl_spec, validate_config
from .workers import use_full_workers


class FullDivergenceMixin:
    """Maps verl's actor / ref roles to the exact-divergence workers when ``kl_loss_type`` is ``<name>:full``."""

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        if full_kl_spec(self.config.actor_rollout_ref.actor) is not None:
            use_full_workers(self.role_worker_mapping)


@register_trainer(FULL_TRAINER_MODE)
class FullDivergenceTrainer(FullDivergenceMixin, PPOTrainerSync):
    """verl's synchronous v1 trainer with :class:`FullDivergenceMixin`; our config checks run first."""

    def __init__(self, config: DictConfig) -> None:
        validate_config(config)
        # verl compares trainer_mode == "sync" literally in several places: ours is the synchronous trainer
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
