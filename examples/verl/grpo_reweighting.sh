#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with its advantages rewritten by one of our advantage reweightings: verl's GRPO
# advantages (base_estimator), then the reweighting, through algorithm.adv_estimator=trl_divergences.
#
#   REWEIGHTING=success_adaptive bash examples/verl/grpo_reweighting.sh +algorithm.trl_divergences.reweighting_kwargs.base=0.5
#
# Reachable in verl: w_reinforce (mode=weighted), success_adaptive, paced. ace, resrl, dads and w_reinforce's
# psr/nsr modes need inputs verl does not give an advantage estimator and are refused with the reason (TRL only).
set -euo pipefail

REWEIGHTING=${REWEIGHTING:-w_reinforce}
NAME="grpo_gsm8k_${REWEIGHTING}" bash "$(dirname "$0")/gsm8k_grpo_base.sh" \
    algorithm.adv_estimator=trl_divergences \
    +algorithm.trl_divergences.advantage_reweighting="${REWEIGHTING}" \
    +algorithm.trl_divergences.base_estimator=grpo \
    +algorithm.trl_divergences.correct_reward_threshold=1.0 \
    actor_rollout_ref.actor.use_kl_loss=true \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    "$@"
