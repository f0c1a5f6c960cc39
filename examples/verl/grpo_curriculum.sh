#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with a prompt curriculum and, optionally, a schedule of the KL coefficient,
# through the registered trainer trainer.v1.trainer_mode=trl_divergences: the curriculum's sampler replaces verl's
# (pass rates from each batch's rewards; its state is saved in the checkpoint's data.pt), the schedule sets the
# actor's kl_loss_coef (and kl_loss_type for forward_then_reverse) every step.
#
#   CURRICULUM=gaussian bash examples/verl/grpo_curriculum.sh +trl_divergences.curriculum_kwargs.std=0.35
#   CURRICULUM=paced SCHEDULE=warmup bash examples/verl/grpo_curriculum.sh +trl_divergences.schedule_kwargs.warmup_steps=20
#   CURRICULUM=gaussian SCHEDULE=forward_then_reverse KL=forward_kl:k3+ bash examples/verl/grpo_curriculum.sh
#
# Curricula: gaussian, paced (self needs a greedy decode before the rollouts: TRL only). Schedules:
# accuracy_conditioned, forward_then_reverse (KL must be forward_kl or reverse_kl), warmup, linear_anneal.
set -euo pipefail

CURRICULUM=${CURRICULUM:-gaussian}
KL=${KL:-low_var_kl}
SCHEDULE_ARGS=()
if [[ -n "${SCHEDULE:-}" ]]; then
    SCHEDULE_ARGS=("+trl_divergences.coefficient_schedule=${SCHEDULE}")
fi
NAME="grpo_gsm8k_${CURRICULUM}${SCHEDULE:+_${SCHEDULE}}" bash "$(dirname "$0")/gsm8k_grpo_base.sh" \
    trainer.v1.trainer_mode=trl_divergences \
    "+trl_divergences.curriculum=${CURRICULUM}" \
    +trl_divergences.correct_reward_threshold=1.0 \
    "${SCHEDULE_ARGS[@]}" \
    actor_rollout_ref.actor.use_kl_loss=true \
    "actor_rollout_ref.actor.kl_loss_type='${KL}'" \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    "$@"
