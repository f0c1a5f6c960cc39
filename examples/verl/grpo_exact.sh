#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with verl's KL loss replaced by one of our divergences, exact over the
# vocabulary: the reference worker stores the final hidden states of the completion tokens (H values per token), the
# actor's loss recomputes the reference logits from them with a frozen copy of the reference lm_head.
#
#   DIVERGENCE='js(beta=0.3)' bash examples/verl/grpo_exact.sh [more overrides]
#
# DIVERGENCE is <divergence>[(<kwarg>=<value>, ...)]; ":full" is appended. Needs the plugin's trainer
# (trainer.v1.trainer_mode=trl_divergences_full), an FSDP actor, no LoRA, no Ulysses sequence parallelism, no fused
# kernels and no distillation: anything else is refused by validate_config before a worker starts.
set -euo pipefail

DIVERGENCE=${DIVERGENCE:-forward_kl}
COEF=${COEF:-0.001}
NAME="grpo_gsm8k_exact_${DIVERGENCE//[^A-Za-z0-9_.+-]/_}" \
    bash "$(dirname "$0")/gsm8k_grpo_base.sh" \
    trainer.v1.trainer_mode=trl_divergences_full \
    actor_rollout_ref.actor.use_kl_loss=true "actor_rollout_ref.actor.kl_loss_type='${DIVERGENCE}:full'" \
    actor_rollout_ref.actor.kl_loss_coef="${COEF}" algorithm.use_kl_in_reward=false "$@"
