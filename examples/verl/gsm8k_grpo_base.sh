#!/usr/bin/env bash
# Shared by the launch scripts of this folder: verl 0.9.1's GRPO on GSM8K with Qwen2.5-0.5B-Instruct (FSDP actor and
# reference, vLLM rollouts), the shape of verl's own examples. Usage: gsm8k_grpo_base.sh <extra hydra overrides...>
#
#   pip install "trl-divergences[verl]" vllm      # the plugin loads itself on `import verl` (entry point)
#   python3 examples/data_preprocess/gsm8k.py --local_save_dir ~/data/gsm8k   # in a checkout of verl v0.9.1
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
DATA=${DATA:-$HOME/data/gsm8k}
GPUS=${GPUS:-8}
NAME=${NAME:-grpo_gsm8k}

exec python3 -m verl.trainer.main_ppo \
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
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n=5 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    trainer.logger='["console"]' \
    trainer.project_name=trl_divergences_verl \
    trainer.experiment_name="$NAME" \
    trainer.n_gpus_per_node="$GPUS" \
    trainer.nnodes=1 \
    trainer.save_freq=-1 \
    trainer.test_freq=5 \
    trainer.total_epochs=15 \
    "$@"
