#!/usr/bin/env bash
# GRPO on GSM8K (gsm8k_grpo_base.sh) with its advantages rewritten by one of our advantage reweightings, after
# verl's GRPO advantages.
#
#   REWEIGHTING=success_adaptive bash examples/verl/grpo_reweighting.sh +algorithm.trl_divergences.reweighting_kwargs.base=0.5
#   REWEIGHTING=ace bash examples/verl/grpo_reweighting.sh +trl_divergences.reweighting_kwargs.alpha=0.5
#   REWEIGHTING=dads bash examples/verl/grpo_reweighting.sh
#
# w_reinforce (mode=weighted), success_adaptive and paced need only the rewards: a registered advantage estimator,
# algorithm.adv_estimator=trl_divergences, with verl's own trainer. ace (π_old and ρ log-probs) and dads (a weight on
# each rollout's KL loss) go through the registered trainer trainer.v1.trainer_mode=trl_divergences (TRAINER=1 sends
# the others there too). resrl (hidden states) and w_reinforce's psr/nsr (dropping rollouts) are TRL only.
set -euo pipefail

REWEIGHTING=${REWEIGHTING:-w_reinforce}
if [[ "${REWEIGHTING}" == ace || "${REWEIGHTING}" == dads || "${TRAINER:-0}" == 1 ]]; then
    METHOD=(trainer.v1.trainer_mode=trl_divergences "+trl_divergences.advantage_reweighting=${REWEIGHTING}"
            +trl_divergences.correct_reward_threshold=1.0)
else
    METHOD=(algorithm.adv_estimator=trl_divergences "+algorithm.trl_divergences.advantage_reweighting=${REWEIGHTING}"
            +algorithm.trl_divergences.base_estimator=grpo +algorithm.trl_divergences.correct_reward_threshold=1.0)
fi
NAME="grpo_gsm8k_${REWEIGHTING}" bash "$(dirname "$0")/gsm8k_grpo_base.sh" \
    "${METHOD[@]}" \
    actor_rollout_ref.actor.use_kl_loss=true \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    "$@"
