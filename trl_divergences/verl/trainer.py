"""The registered verl trainer ``trainer.v1.trainer_mode=trl_divergences``: verl's synchronous v1 trainer with the
objective's methods that verl's registries do not reach, configured by ``+trl_divergences.<field>=...`` with
``DivergenceGRPOConfig``'s field names (the divergence and its coefficient stay ``actor_rollout_ref.actor.
kl_loss_type`` / ``kl_loss_coef``)::

    trainer.v1.trainer_mode=trl_divergences
    +trl_divergences.curriculum=gaussian +trl_divergences.curriculum_kwargs.std=0.35
    +trl_divergences.token_masks=[entropy_quantile] actor_rollout_ref.actor.calculate_entropy=true
    +trl_divergences.coefficient_schedule=warmup +trl_divergences.schedule_kwargs.warmup_steps=20
    +trl_divergences.advantage_reweighting=ace +trl_divergences.reweighting_kwargs.alpha=0.5

The objective is built (and validated, with the TRL adapter's messages) when the trainer is constructed. Per step,
only translation happens here:

* ``_init_dataloader``: a curriculum's weighted sampler (:mod:`.sampler`) replaces verl's, on a dataset whose rows
  carry their index; its state rides verl's dataloader checkpoint (``data.pt``).
* ``_compute_advantage``: after verl's advantages, :meth:`~trl_divergences.objective.Objective.rollout_step` on the
  batch's rewards, uids, prompt indices and π_old / ρ log-probs: the curriculum's pass-rate update, the
  reweighted advantages, per-rollout correctness and penalty weights (written back to TransferQueue), the schedule's
  coefficient and divergence; its metrics join verl's.
* ``_update_actor``: the step info (:data:`~trl_divergences.verl.loss.STEP_KEY`) in ``batch.extra_info`` for the
  actor loss (:mod:`.loss`); the loss's ``mask/…`` and ``divergence/…`` metrics are logged without verl's
  ``actor/`` prefix, as design.md names them.

verl compares ``trainer_mode == "sync"`` literally in several places, so the mode is set back to ``sync`` in the
config before verl's constructor runs.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import open_dict
from tensordict import TensorDict
from torch import Tensor
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from ..objective import Objective
from . import advantage
from . import config as plugin_config
from .loss import CORRECT, DIVERGENCE_WEIGHT, STEP_KEY
from .sampler import INDEX, CurriculumPromptSampler, PromptIndexed

#: metric prefixes the actor loss emits that are logged without verl's ``actor/`` prefix
LOSS_METRIC_PREFIXES = ("mask/", "divergence/")


def needs_actor_loss(objective: Objective) -> bool:
    """The actor loss must change: token masks, a schedule, or per-rollout penalty weights."""
    rw = objective.reweighting
    return bool(
        objective.requirements.token_selection
        or objective.schedule is not None
        or (rw is not None and rw.reweights_divergence)
    )


def rollout_fields(
    objective: Objective,
    data: TensorDict,
    uids: np.ndarray,
    *,
    step: int,
    max_steps: int,
    real: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """One generation batch through :meth:`Objective.rollout_step`: (padded fields to write back, metrics).

    ``data``: verl's padded fields ``response_mask``, ``rm_scores``, ``advantages`` [bs, T], and where present
    ``old_log_probs``, ``ref_log_prob`` [bs, T], :data:`~.sampler.INDEX` [bs]; ``uids`` [bs] the prompt uids;
    ``real`` [bs] bool the rows that are not verl's padding (only those enter the statistics; padding rows keep
    verl's advantages, weight 1, not correct). Fields: ``advantages`` (when a reweighting rewrites them),
    :data:`~.loss.CORRECT`, :data:`~.loss.DIVERGENCE_WEIGHT` (when the reweighting weights the penalty),
    ``response_mask`` and ``loss_mask`` zero on the rollouts a reweighting drops (PSR/NSR; verl's engine counts the
    global tokens of ``loss_mask``, so they leave the token mean as TRL's recount does).
    """
    advantages = data["advantages"]
    bs = advantages.shape[0]
    rows = torch.arange(bs) if real is None else torch.nonzero(real.cpu()).squeeze(-1)
    mask = data["response_mask"][rows]
    optional = {
        "old_logps": data["old_log_probs"][rows] if "old_log_probs" in data.keys() else None,
        "ref_logps": data["ref_log_prob"][rows] if "ref_log_prob" in data.keys() else None,
        "prompt_indices": data[INDEX][rows].long() if INDEX in data.keys() else None,
    }
    x = advantage.rollout_inputs(
        data["rm_scores"][rows], advantages[rows], mask, np.asarray(uids, dtype=object)[rows.numpy()], **optional
    )
    out = objective.rollout_step(x, step=step, max_steps=max_steps, training=True)
    fields = {CORRECT: torch.zeros(bs, dtype=torch.float32).index_put((rows,), out.correct.float())}
    if objective.reweighting is not None:
        rewritten = advantages.clone()
        rewritten[rows] = advantage.token_advantages(out.advantages, mask, advantages.dtype)
        fields["advantages"] = rewritten
    if out.keep is not None:  # dropped rollouts leave the loss and verl's token count (loss_mask)
        kept = data["response_mask"].clone()
        kept[rows] = mask * out.keep.to(mask.dtype).unsqueeze(-1)
        fields["response_mask"] = fields["loss_mask"] = kept
    if out.divergence_weight is not None:
        weight = torch.ones(bs, dtype=torch.float32)
        fields[DIVERGENCE_WEIGHT] = weight.index_put((rows,), out.divergence_weight.float().cpu())
    return fields, out.metrics


def step_info(objective: Objective, kwargs: dict, kl_loss_type: str) -> dict:
    """The actor loss's per-step info (:data:`~trl_divergences.verl.loss.STEP_KEY`)."""
    return {
        "objective": kwargs,
        "coef": objective.coef_now,
        "kl_loss_type": plugin_config.scheduled_kl_type(kl_loss_type, objective),
        "divergence": objective.divergence_now.name,
    }


def loss_metrics(metrics: dict) -> dict:
    """verl's actor metrics with our loss's ``actor/mask/…`` and ``actor/divergence/…`` keys unprefixed."""
    ours = tuple(f"actor/{prefix}" for prefix in LOSS_METRIC_PREFIXES)
    return {(key[len("actor/") :] if key.startswith(ours) else key): v for key, v in metrics.items()}


@register_trainer(plugin_config.TRAINER_MODE)
class DivergencePPOTrainer(PPOTrainerSync):
    """verl's synchronous v1 trainer with the objective of ``+trl_divergences.*``; see the module docstring."""

    def __init__(self, config) -> None:
        plugin_config.validate_config(config)
        self.objective_kwargs = plugin_config.objective_kwargs(config)
        self.objective = plugin_config.trainer_objective(config)
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)

    # ---- dataloader: the curriculum's sampler ----------------------------------------------------------------
    def _init_dataloader(self) -> None:
        super()._init_dataloader()
        if not self.objective.requirements.prompt_index:
            return
        from torchdata.stateful_dataloader import StatefulDataLoader
        from verl.utils.dataset.rl_dataset import collate_fn

        loader = self.train_dataloader
        self.train_dataset = PromptIndexed(self.train_dataset)
        self.curriculum_sampler = CurriculumPromptSampler(
            self.objective.curriculum,
            n_prompts=len(self.train_dataset),
            batch_size=loader.batch_size,
            seed=int(self.config.data.get("seed", 1) or 0),
        )
        self.train_dataloader = StatefulDataLoader(
            dataset=self.train_dataset,
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            drop_last=loader.drop_last,
            collate_fn=collate_fn,
            sampler=self.curriculum_sampler,
        )
        self.train_dataloader_it = None

    # ---- once per generation batch -----------------------------------------------------------------------------
    def _compute_advantage(self, batch, metrics: dict):
        import transfer_queue as tq

        batch = super()._compute_advantage(batch, metrics)
        if not self.objective.requirements.rollout_statistics:
            return batch
        from verl.workers.utils.padding import response_to_nested

        names = ["uid", "response_mask", "rm_scores", "advantages", "old_log_probs"]
        if self.use_reference_policy:
            names.append("ref_log_prob")
        if self.objective.requirements.prompt_index:
            names.append(INDEX)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=names)
        response_mask = data["response_mask"]
        padded = data.to_padded_tensor()
        uids = np.array(padded.pop("uid").tolist(), dtype=object)
        real = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags])
        fields, rollout_metrics = rollout_fields(
            self.objective,
            padded,
            uids,
            step=self.global_steps - 1,
            max_steps=self.total_training_steps,
            real=real,
        )
        output = {key: response_to_nested(v, response_mask) if v.dim() == 2 else v for key, v in fields.items()}
        batch = tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(output, batch_size=len(batch))
        )
        metrics.update(rollout_metrics)
        return batch

    # ---- actor update -----------------------------------------------------------------------------------------
    def _update_actor(self, batch, metrics: dict):
        if not needs_actor_loss(self.objective):
            return super()._update_actor(batch, metrics)
        actor = self.config.actor_rollout_ref.actor
        batch.extra_info[STEP_KEY] = step_info(self.objective, self.objective_kwargs, actor.kl_loss_type)
        actor_metrics: dict = {}
        batch = super()._update_actor(batch, actor_metrics)
        metrics.update(loss_metrics(actor_metrics))
        return batch
