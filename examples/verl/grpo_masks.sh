#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with token masks on the policy-gradient term, through the registered trainer
# trainer.v1.trainer_mode=trl_divergences (its actor loss applies the masks; verl's KL loss is unchanged).
#
#   MASKS=entropy_quantile bash examples/verl/grpo_masks.sh +trl_divergences.token_mask_kwargs.entropy_quantile.quantile=0.2
#   MASKS=entropy_quantile,correct_only bash examples/verl/grpo_masks.sh
#
# Reachable in verl: entropy_quantile (needs the policy's entropy: calculate_entropy=true, set here) and
# correct_only. siren, eksft and low_probability need statistics over the vocabulary (TRL only, refused at start).
set -euo pipefail

MASKS=${MASKS:-entropy_quantile}
NAME="grpo_gsm8k_masks_${MASKS//,/_}" bash "$(dirname "$0")/gsm8k_grpo_base.sh" \
    trainer.v1.trainer_mode=trl_divergences \
    "+trl_divergences.token_masks=[${MASKS}]" \
    +trl_divergences.correct_reward_threshold=1.0 \
    actor_rollout_ref.actor.calculate_entropy=true \
    actor_rollout_ref.actor.use_kl_loss=true \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    "$@"
