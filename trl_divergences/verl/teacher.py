"""Teacher-guided RL (:mod:`trl_divergences.teacher`) on verl's own distillation machinery.

verl 0.9.1's distillation (``distillation.enabled=true``) runs the teacher as inference servers and stores the
teacher's log-probs of the sampled tokens with each trajectory (at temperature 1: verl's teacher requests ignore the
rollout temperature); the actor's loss then calls the registered distillation loss named by
``distillation.distillation_loss.loss_mode``, which returns per-token values that verl either aggregates as a loss
(``use_policy_gradient=false``: + ``distillation_loss_coef`` × agg, beside ``ppo_loss`` when ``use_task_rewards``) or
negates into the advantages of a vanilla clipped surrogate (``use_policy_gradient=true``). The loss mode
``trl_divergences`` (:func:`teacher_loss`) maps our methods onto those two slots, their formulas from
:mod:`trl_divergences.teacher`:

* ``kdrl``: per token coef·m_i·D̂(π‖τ) (:meth:`~trl_divergences.teacher.TeacherDivergence.penalty` of
  :meth:`~trl_divergences.teacher.TeacherDivergence.sampled`, any divergence and sampled estimator, no importance
  weight: verl's convention), m_i = 0 on responses whose summed reward reaches ``correct_reward_threshold`` with
  ``only_incorrect``; the loss slot, next to the task reward's ``ppo_loss``.
* ``g_opd`` / ``exopd``: per token −A_t with A_t = λ(log τ − log ρ) − (log π_old − log ρ)
  (:meth:`~trl_divergences.teacher.opd.GOPD.advantages`); the policy-gradient slot without the task reward, i.e. the
  official code's vanilla PPO on the teacher advantage. ρ is verl's reference (``ref_log_prob``; λ ≠ 1 needs the ref
  worker, which verl starts with ``actor.use_kl_loss`` or ``algorithm.use_kl_in_reward``).

Configured through a ``_target_`` subclass of verl's loss config (verl's rejects unknown keys)::

    distillation.distillation_loss._target_=trl_divergences.verl.teacher.TeacherLossConfig
    distillation.distillation_loss.loss_mode=trl_divergences
    +distillation.distillation_loss.teacher_method=kdrl
    +distillation.distillation_loss.teacher_kwargs.only_incorrect=true

TRL only, with the reason (refused when the config is built): ``trrd`` (it replaces log π_old in the ratio; verl's
policy-gradient slot keeps π_old and no registered policy loss sees the teacher), ``exact_opd`` and the ``full``
estimator (verl's teacher servers return log-probs, never hidden states), coefficient schedules such as
``linear_anneal`` (no training step reaches a distillation loss), G-OPD's ``outcome_weight`` (the two surrogates
verl would add are clipped separately, not one surrogate on the summed advantages).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from verl.trainer.distillation.losses import DistillationLossSettings, register_distillation_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.config import DistillationLossConfig
from verl.workers.utils.padding import no_padding_2_padding

from ..checks import is_finite_number
from ..divergences import FULL
from ..teacher import get_teacher_method

#: the ``distillation.distillation_loss.loss_mode`` of our methods
LOSS_MODE = "trl_divergences"
#: the teacher methods verl's distillation can run (see the module docstring for the others)
VERL_TEACHER_METHODS = ("kdrl", "g_opd", "exopd")
TRL_ONLY = {
    "trrd": "it replaces log π_old in the PPO ratio; verl's policy-gradient slot keeps π_old and no registered "
    "policy loss sees the teacher's log-probs",
    "exact_opd": "the exact divergence needs the teacher's hidden states; verl's teacher servers return log-probs",
}


@lru_cache(maxsize=16)
def _build(name: str, kwargs_json: str):
    return get_teacher_method(name, **json.loads(kwargs_json))


def build_teacher_method(name: str, kwargs: Any):
    """The teacher method ``name`` with ``kwargs`` (a dict or hydra's DictConfig), refused where verl's distillation
    cannot run it (see the module docstring)."""
    field_name = "distillation.distillation_loss.teacher_method"
    if name in TRL_ONLY:
        raise ValueError(f"{field_name}={name!r} is TRL only for now: {TRL_ONLY[name]}")
    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    method = _build(name, json.dumps(dict(kwargs or {}), sort_keys=True))  # ValueError names the valid methods / kwargs
    if name not in VERL_TEACHER_METHODS:
        raise ValueError(f"{field_name}={name!r}: verl runs {', '.join(VERL_TEACHER_METHODS)}")
    if method.adds_penalty:
        if method.estimator == FULL:
            raise ValueError(
                f"{field_name}={name!r} with estimator 'full' is TRL only for now: {TRL_ONLY['exact_opd']}"
            )
        if method.schedule is not None:
            raise ValueError(
                f"{field_name}={name!r} with a schedule is TRL only for now: no training step reaches verl's "
                "distillation loss; use a constant coef"
            )
    if method.replaces_advantages and method.outcome_weight:
        raise ValueError(
            f"{field_name}={name!r} with outcome_weight={method.outcome_weight!r} is TRL only for now: verl would add "
            "two separately clipped surrogates, not one on the summed advantages; use outcome_weight 0 (the official)"
        )
    return method


@dataclass
class TeacherLossConfig(DistillationLossConfig):
    """verl's distillation loss config plus our teacher method (``loss_mode=trl_divergences``).

    Args:
        teacher_method: ``kdrl``, ``g_opd`` or ``exopd`` (:func:`trl_divergences.list_teacher_methods`).
        teacher_kwargs: the method's kwargs (e.g. KDRL's ``coef``, ``divergence``, ``estimator``, ``only_incorrect``).
        correct_reward_threshold: a response is correct when its summed reward reaches it (KDRL's ``only_incorrect``).
    """

    teacher_method: str = "kdrl"
    teacher_kwargs: dict = field(default_factory=dict)
    correct_reward_threshold: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_mode != LOSS_MODE:
            raise ValueError(
                f"distillation.distillation_loss.loss_mode {self.loss_mode!r}: TeacherLossConfig runs "
                f"loss_mode={LOSS_MODE!r}"
            )
        if not is_finite_number(self.correct_reward_threshold):
            raise ValueError(f"correct_reward_threshold must be a finite number, got {self.correct_reward_threshold!r}")
        method = self.method
        if method.replaces_advantages:
            want = {"use_policy_gradient": True, "use_task_rewards": False}
        else:
            want = {"use_policy_gradient": False, "use_task_rewards": True, "distillation_loss_coef": 1.0}
        for key, value in want.items():
            if getattr(self, key) != value:
                raise ValueError(
                    f"distillation.distillation_loss.{key}={getattr(self, key)!r} with teacher_method="
                    f"{self.teacher_method!r}: use {value!r} ("
                    + (
                        "G-OPD's advantage drives verl's vanilla surrogate; the task reward is not used"
                        if method.replaces_advantages
                        else "KDRL's term is a loss beside the task reward's; its coefficient is teacher_kwargs.coef"
                    )
                    + ")"
                )

    @property
    def method(self):
        """The built teacher method (cached by name and kwargs)."""
        return build_teacher_method(self.teacher_method, self.teacher_kwargs)


def _padded(tensor: Tensor) -> Tensor:
    return tensor.to_padded_tensor(0.0) if tensor.is_nested else tensor


def _correct(data, threshold: float) -> Tensor:
    """[bs] bool: the response's summed reward (verl's token-level ``rm_scores``) reaches ``threshold``."""
    return _padded(data["rm_scores"]).sum(-1) >= threshold


@register_distillation_loss(DistillationLossSettings(names=[LOSS_MODE], use_estimator=True))
def teacher_loss(config, distillation_config, model_output: dict, data) -> tuple[Tensor, dict[str, Any]]:
    """Per-token values [bs, T] of our teacher method for verl's distillation (see the module docstring)."""
    loss_config = distillation_config.distillation_loss
    if not isinstance(loss_config, TeacherLossConfig):
        raise ValueError(
            f"loss_mode={LOSS_MODE!r} needs distillation.distillation_loss._target_="
            "trl_divergences.verl.teacher.TeacherLossConfig"
        )
    method = loss_config.method
    log_probs = no_padding_2_padding(model_output["log_probs"], data)
    teacher = no_padding_2_padding(data["teacher_logprobs"], data).squeeze(-1)
    mask = _padded(data["response_mask"]).bool()
    if method.replaces_advantages:
        reference = _padded(data["ref_log_prob"]) if method.requirements.reference_logps else None
        advantages = method.advantages(
            torch.zeros(mask.shape[0]),
            old_logps=_padded(data["old_log_probs"]),
            teacher_logps=teacher,
            reference_logps=reference,
            mask=mask,
        )
        values = -advantages.to(log_probs.dtype)
        metrics = {"teacher/advantage": Metric(AggregationType.MEAN, advantages[mask].mean())}
    else:
        correct = _correct(data, loss_config.correct_reward_threshold) if method.only_incorrect else None
        divergence = method.sampled(log_probs, teacher)
        values = torch.where(mask, method.penalty(divergence, correct), torch.zeros_like(divergence))
        metrics = {f"teacher/{method.divergence.name}": Metric(AggregationType.MEAN, divergence[mask].mean().detach())}
    return values, metrics


def check_teacher_config(config: Any) -> None:
    """Whole-config checks of ``loss_mode=trl_divergences``: the teacher's log-probs are at temperature 1 in verl, so
    the rollout must be too (our methods compare log π and log τ at one temperature); λ ≠ 1 needs the ref worker."""
    loss = config.distillation.distillation_loss
    temperature = config.actor_rollout_ref.rollout.temperature
    if temperature != 1.0:
        raise ValueError(
            f"distillation loss_mode={LOSS_MODE!r} with actor_rollout_ref.rollout.temperature={temperature!r}: verl "
            "scores the teacher at temperature 1 whatever the rollout's, so use 1.0"
        )
    method = build_teacher_method(loss.get("teacher_method", "kdrl"), loss.get("teacher_kwargs"))
    uses_ref = config.actor_rollout_ref.actor.get("use_kl_loss", False) or config.algorithm.get("use_kl_in_reward")
    if method.requirements.reference_logps and not uses_ref:
        raise ValueError(
            f"teacher_method={loss.get('teacher_method')!r} with lam != 1 needs the reference's log-probs: verl "
            "starts the ref worker only with actor_rollout_ref.actor.use_kl_loss=true (its KL loss is part of the "
            "ppo_loss that use_task_rewards=false skips) or algorithm.use_kl_in_reward=true"
        )
