#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) guided by a teacher through verl's distillation (teacher inference servers on
# their own GPUs, its log-probs of the sampled tokens stored with each trajectory), with our teacher methods as the
# distillation loss (loss_mode=trl_divergences).
#
#   METHOD=kdrl bash examples/verl/grpo_teacher.sh [more overrides]              # GRPO + β·k2 KL(π‖τ), β = 2e-3
#   METHOD=kdrl MASK=1 bash examples/verl/grpo_teacher.sh                        # KDRL-Masking: KD on incorrect only
#   METHOD=exopd bash examples/verl/grpo_teacher.sh                              # A_t = 1.25(log τ − log ρ) − (log π_old − log ρ)
#
# The teacher shares the student's tokenizer. verl scores it at temperature 1, so the rollout runs at 1.0 too.
set -euo pipefail

METHOD=${METHOD:-kdrl}
TEACHER=${TEACHER:-Qwen/Qwen2.5-1.5B-Instruct}
TEACHER_GPUS=${TEACHER_GPUS:-1}
ARGS=(
    distillation.enabled=true
    distillation.n_gpus_per_node="${TEACHER_GPUS}" distillation.nnodes=1
    distillation.teacher_models.teacher_model.model_path="${TEACHER}"
    distillation.teacher_models.teacher_model.num_replicas="${TEACHER_GPUS}"
    distillation.teacher_models.teacher_model.inference.tensor_model_parallel_size=1
    distillation.distillation_loss._target_=trl_divergences.verl.teacher.TeacherLossConfig
    distillation.distillation_loss.loss_mode=trl_divergences
    +distillation.distillation_loss.teacher_method="${METHOD}"
    actor_rollout_ref.rollout.temperature=1.0
)
if [[ "${METHOD}" == "kdrl" ]]; then
    ARGS+=(distillation.distillation_loss.use_policy_gradient=false distillation.distillation_loss.use_task_rewards=true)
    if [[ "${MASK:-0}" == "1" ]]; then
        ARGS+=(+distillation.distillation_loss.teacher_kwargs.only_incorrect=true)
    fi
else  # g_opd / exopd: the teacher advantage drives verl's vanilla surrogate; the task reward is only logged
    ARGS+=(distillation.distillation_loss.use_policy_gradient=true distillation.distillation_loss.use_task_rewards=false
           actor_rollout_ref.actor.use_kl_loss=true)  # starts the ref worker: ρ's log-probs for λ != 1
fi
NAME="grpo_gsm8k_teacher_${METHOD}" bash "$(dirname "$0")/gsm8k_grpo_base.sh" "${ARGS[@]}" "$@"
