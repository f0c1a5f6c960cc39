#!/usr/bin/env bash
# GRPO on GSM8K with Qwen2.5-0.5B-Instruct in verl 0.9.1, the KL loss replaced by one of our divergences.
#
#   pip install "trl-divergences[verl]" vllm      # the plugin loads itself on `import verl` (entry point)
#   python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k   # in a checkout of verl v0.9.1
#   DIVERGENCE='js(beta=0.5):k3+' bash examples/verl/grpo_divergence.sh
#
# DIVERGENCE is <divergence>[(<kwarg>=<value>, ...)][:<estimator>][+]: e.g. forward_kl (estimator k3),
# forward_kl:k3+ (value k3, gradient unbiased for the divergence's), 'js(beta=0.3):k3+', 'alpha(alpha=0.5):k3+',
# chi2:k1. A trailing "+" after anything but :k3+ is verl's straight-through (k2's, i.e. reverse KL's, gradient).
# IN_REWARD=1 puts the same name in the reward instead (algorithm.kl_penalty, verl's in-reward KL).
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
DATA=${DATA:-$HOME/data/gsm8k}
DIVERGENCE=${DIVERGENCE:-forward_kl:k3+}
COEF=${COEF:-0.001}
GPUS=${GPUS:-8}

if [[ "${IN_REWARD:-0}" == "1" ]]; then
    PENALTY=(actor_rollout_ref.actor.use_kl_loss=false algorithm.use_kl_in_reward=true
             "algorithm.kl_penalty='${DIVERGENCE}'" algorithm.kl_ctrl.kl_coef="${COEF}")
else
    PENALTY=(actor_rollout_ref.actor.use_kl_loss=true "actor_rollout_ref.actor.kl_loss_type='${DIVERGENCE}'"
             actor_rollout_ref.actor.kl_loss_coef="${COEF}" algorithm.use_kl_in_reward=false)
fi

python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/test.parquet" \
    data.train_batch_size=256 \
    data.max_prompt_length=512 \
    data.max_response_length=1024 \
    data.filter_overlong_prompts=true \
    data.truncation=error \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.use_remove_padding=true \
    actor_rollout_ref.model.enable_gradient_checkpointing=true \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.actor.entropy_coeff=0 \
    "${PENALTY[@]}" \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=5 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    trainer.logger='["console"]' \
    trainer.project_name=trl_divergences_verl \
    trainer.experiment_name="grpo_gsm8k_${DIVERGENCE//[^A-Za-z0-9_.+=-]/_}" \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes=1 \
    trainer.save_freq=-1 \
    trainer.test_freq=5 \
    trainer.total_epochs=15 \
    "$@"
