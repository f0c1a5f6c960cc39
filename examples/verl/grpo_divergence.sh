#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with verl's KL loss replaced by one of our divergences.
#
#   DIVERGENCE='js(beta=0.5):k3+' bash examples/verl/grpo_divergence.sh [more overrides]
#
# DIVERGENCE is <divergence>[(<kwarg>=<value>, ...)][:<estimator>][+]: forward_kl (estimator k3, TRL's default),
# forward_kl:k3+ (value k3, gradient unbiased for the divergence's: the estimator to use in verl, which applies no
# π/π_old weight), 'js(beta=0.3):k3+', 'alpha(alpha=0.5):k3+', chi2:k1. A trailing "+" after anything but :k3+ is
# verl's straight-through (k2's gradient, i.e. reverse KL's, whatever the name).
# IN_REWARD=1 puts the same name in the reward instead (verl's in-reward KL, algorithm.kl_penalty).
set -euo pipefail

DIVERGENCE=${DIVERGENCE:-forward_kl:k3+}
COEF=${COEF:-0.001}
if [[ "${IN_REWARD:-0}" == "1" ]]; then
    PENALTY=(actor_rollout_ref.actor.use_kl_loss=false algorithm.use_kl_in_reward=true
             "algorithm.kl_penalty='${DIVERGENCE}'" algorithm.kl_ctrl.kl_coef="${COEF}")
else
    PENALTY=(actor_rollout_ref.actor.use_kl_loss=true "actor_rollout_ref.actor.kl_loss_type='${DIVERGENCE}'"
             actor_rollout_ref.actor.kl_loss_coef="${COEF}" algorithm.use_kl_in_reward=false)
fi
NAME="grpo_gsm8k_${DIVERGENCE//[^A-Za-z0-9_.+-]/_}" \
    bash "$(dirname "$0")/gsm8k_grpo_base.sh" "${PENALTY[@]}" "$@"
