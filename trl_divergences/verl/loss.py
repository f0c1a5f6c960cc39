"""The actor loss of the registered trainer (``trainer.v1.trainer_mode=trl_divergences``): verl's ``ppo_loss`` with
the objective's token masks on its policy-gradient term, the coefficient / divergence in force this step (a
schedule), and a per-rollout weight on the KL loss (DADS).

verl's actor worker binds ``partial(ppo_loss, config=ActorConfig)`` when it builds its model; :func:`install` replaces
the ``ppo_loss`` name of ``verl.workers.engine_workers`` at plugin import (before any worker builds), with
:func:`ppo_loss`, which calls verl's function unchanged unless the micro-batch carries our step info
(:data:`STEP_KEY`, put in ``batch.extra_info`` by the trainer, so it reaches every micro-batch as non-tensor data).
With it, per micro-batch and with verl's ``agg_loss`` over the global batch (``loss_agg_mode``):

    verl's PG(π, π_old, A; mask · keep) − entropy_coeff · agg(H; mask) + β_t · agg(w_i · kl_penalty_t(π, ρ); mask)

keep the masks' AND (:meth:`~trl_divergences.objective.Objective.token_terms`), β_t and kl_penalty_t the coefficient
and ``kl_loss_type`` in force, w_i the per-rollout penalty weight (1 without DADS). As TRL's masks, ``keep`` removes
tokens from the policy-gradient sum, not from the normaliser (verl's global token count).
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from ..objective import Objective, TokenInputs

#: the ``extra_info`` key of the trainer's per-step info: {"objective": kwargs of Objective, "coef": β_t,
#: "kl_loss_type": the name in force, "divergence": its divergence's name}
STEP_KEY = "trl_divergences"
#: per-rollout batch fields the trainer writes to TransferQueue
CORRECT = "td_correct"
DIVERGENCE_WEIGHT = "td_divergence_weight"

#: verl's original ``ppo_loss``, filled by :func:`install`
VERL_FUNCTIONS: dict = {}


def _value(data, key: str) -> Any:
    """A non-tensor entry of a verl micro-batch (``NonTensorData`` or a plain value), or None when absent."""
    if key not in data.keys():
        return None
    value = data[key]
    return getattr(value, "data", value)


@lru_cache(maxsize=8)
def worker_objective(settings: str) -> Objective:
    """The trainer's objective rebuilt on the worker from its JSON kwargs (cached: one per configuration)."""
    return Objective(**json.loads(settings))


def _reduce_sum(dp_group) -> Any:
    if dp_group is None or not torch.distributed.is_initialized():
        return None

    def reduce_sum(values: Tensor) -> Tensor:
        values = values.clone()
        torch.distributed.all_reduce(values, group=dp_group)
        return values

    return reduce_sum


def _gather(dp_group) -> Any:
    if dp_group is None or not torch.distributed.is_initialized():
        return None

    def gather(values: Tensor) -> Tensor:
        world = torch.distributed.get_world_size(dp_group)
        size = torch.tensor([values.numel()], device=values.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        torch.distributed.all_gather(sizes, size, group=dp_group)
        longest = int(max(s.item() for s in sizes))
        padded = values.new_zeros(longest)
        padded[: values.numel()] = values
        parts = [torch.zeros_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded, group=dp_group)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])

    return gather


def ppo_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` (bit for bit) unless the micro-batch carries the trainer's step info; then
    :func:`objective_ppo_loss`."""
    step = _value(data, STEP_KEY)
    if step is None:
        return VERL_FUNCTIONS["ppo_loss"](config, model_output, data, dp_group)
    return objective_ppo_loss(config, model_output, data, dp_group, step=step)


def objective_ppo_loss(config, model_output: dict, data, dp_group=None, *, step: dict):
    """The formula of the module docstring; returns verl's (loss, metrics) plus ``mask/<name>/...``,
    ``divergence/<name>`` and ``divergence/coef``."""
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils import losses as verl_losses
    from verl.workers.utils.padding import no_padding_2_padding, response_to_nested

    objective = worker_objective(json.dumps(step["objective"], sort_keys=True))
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy")
    entropy = None if entropy is None else no_padding_2_padding(entropy, data)
    fields = ["response_mask", "old_log_probs", "advantages", *(["ref_log_prob"] if "ref_log_prob" in data else [])]
    padded = data.select(*fields).to_padded_tensor()
    mask = padded["response_mask"].to(torch.bool)
    ref_log_prob = padded["ref_log_prob"] if "ref_log_prob" in padded.keys() else None
    correct = data[CORRECT].to(mask.device) if CORRECT in data.keys() else None
    weight = data[DIVERGENCE_WEIGHT].to(mask.device) if DIVERGENCE_WEIGHT in data.keys() else None

    inner_output, inner_data, extra = {"log_probs": model_output["log_probs"]}, data, {}
    if objective.requirements.token_selection:
        terms = objective.token_terms(
            TokenInputs(
                mask=mask,
                logps=log_prob,
                entropies=entropy,
                advantages=padded["advantages"],
                old_logps=padded["old_log_probs"],
                ref_logps=ref_log_prob,
                correct=None if correct is None else correct.bool(),
                gather=_gather(dp_group),
                reduce_sum=_reduce_sum(dp_group),
            ),
            penalty=False,
        )
        keep = mask & terms.pg_keep
        inner_data = data.copy()
        inner_data["response_mask"] = response_to_nested(keep.to(data["response_mask"].dtype), data["response_mask"])
        extra = terms.metrics

    inner = dataclasses.replace(config, use_kl_loss=False)
    loss, metrics = VERL_FUNCTIONS["ppo_loss"](inner, inner_output, inner_data, dp_group)
    info = inner.global_batch_info
    aggregation = metrics["actor/pg_loss"].aggregation
    if entropy is not None:
        entropy_loss = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=config.loss_agg_mode, **info)
        loss -= config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(value=entropy_loss, aggregation=aggregation)
    if config.use_kl_loss:
        coef = float(step["coef"])
        kld = verl_losses.kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=step["kl_loss_type"])
        value = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=config.loss_agg_mode, **info)
        if weight is not None:
            kld = kld * weight.to(kld.dtype).unsqueeze(-1)
            kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=config.loss_agg_mode, **info)
        else:
            kl_loss = value
        loss += kl_loss * coef
        metrics["kl_loss"] = Metric(value=kl_loss, aggregation=aggregation)
        metrics["kl_coef"] = coef
        metrics[f"divergence/{step['divergence']}"] = Metric(value=value.detach(), aggregation=aggregation)
        metrics["divergence/coef"] = coef
    metrics.update({key: Metric(value=v, aggregation=AggregationType.MEAN) for key, v in extra.items()})
    return loss, metrics


def install() -> None:
    """Replace ``ppo_loss`` in ``verl.workers.engine_workers`` (the name its actor binds) with :func:`ppo_loss`
    (idempotent)."""
    import importlib

    workers = importlib.import_module("verl.workers.engine_workers")
    if workers.ppo_loss is ppo_loss:
        return
    original = importlib.import_module("verl.workers.utils.losses").ppo_loss
    if workers.ppo_loss is not original:
        raise RuntimeError("verl.workers.engine_workers.ppo_loss is not verl 0.9.1's workers.utils.losses.ppo_loss")
    VERL_FUNCTIONS["ppo_loss"] = original
    workers.ppo_loss = ppo_loss
