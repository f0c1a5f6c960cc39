"""The private TRL 1.16 names our adapter overrides or reads. An upgrade that renames or re-signs them must fail here
(the behaviour behind them is pinned by test_parity and test_full_estimator)."""

from __future__ import annotations

import inspect

import trl
from trl import GRPOTrainer
from trl.trainer import utils as trl_utils


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_trl_version_is_pinned_range():
    assert trl.__version__.startswith("1.16.")


def test_overridden_private_methods_keep_their_signatures():
    assert _params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert _params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    assert _params(GRPOTrainer._get_per_token_logps_and_entropies)[:5] == [
        "self",
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
    ]


def test_beta_is_read_from_the_instance_in_rollout_and_loss():
    """We switch TRL's k3 off by setting ``self.beta`` to 0 around these calls."""
    for fn in (GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss):
        assert "self.beta != 0.0" in inspect.getsource(fn)


def test_fused_head_and_adapter_helpers_exist():
    assert "fused_lm_head" in inspect.getsource(trl_utils.add_fused_lm_head)
    assert callable(trl_utils.use_adapter)
    src = inspect.getsource(trl_utils.add_fused_lm_head)
    assert "last_hidden_state[:, :-1]" in src  # our hidden-state alignment assumes TRL's shift


def test_catalog_seams_keep_their_signatures():
    """The seams of the method catalog (trl/trainer.py, trl/rollout.py)."""
    assert _params(GRPOTrainer._get_train_sampler) == ["self", "dataset"]
    assert _params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert _params(GRPOTrainer.get_high_entropy_mask) == ["self", "entropies", "mask", "threshold"]
    assert _params(GRPOTrainer._tokenize_prompts) == ["self", "prompts"]
    assert _params(GRPOTrainer._generate_single_turn)[:5] == [
        "self",
        "prompt_ids",
        "images",
        "multimodal_fields",
        "num_generations",
    ]
    assert _params(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    assert _params(GRPOTrainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]


def test_catalog_reads_instance_attributes_we_set():
    """Masks enter through get_high_entropy_mask, which TRL calls iff ``self.top_entropy_quantile < 1``; the greedy
    filter swaps ``self.generation_config``; the reward stash is TRL's gathered ``rewards_per_func``."""
    loss_src = inspect.getsource(GRPOTrainer._compute_loss)
    assert "if self.top_entropy_quantile < 1.0:" in loss_src
    assert "self.get_high_entropy_mask(entropies, mask" in loss_src
    assert "per_token_loss = per_token_loss * entropy_mask" in loss_src
    assert "generation_config=self.generation_config" in inspect.getsource(GRPOTrainer._generate_single_turn)
    assert "rewards_per_func = gather(rewards_per_func)" in inspect.getsource(GRPOTrainer._calculate_rewards)
    rollout_src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    assert "rewards_per_func * self.reward_weights" in rollout_src
    assert "rewards.view(-1, num_generations)" in rollout_src  # groups are consecutive rows: our group ids


def test_policy_head_fast_path_reads():
    """The on-policy fast path (``DivergenceGRPOTrainer._policy_gradient_in_forward``) relies on TRL's loss reading
    these instance attributes, on the ratio being exp(log π − log π_old) with log π_old = log π detached when absent,
    on the loss forward's keyword arguments, and on ``FusedCausalLMOutput`` carrying the fields we fill."""
    loss = inspect.getsource(GRPOTrainer._compute_loss)
    for read in (
        "self.loss_type",
        "self.importance_sampling_level",
        "self.off_policy_mask_threshold",
        "self.args.delta",
        "self.top_entropy_quantile",
        "self._entropy_bonus_enabled",
        "self.aux_loss_enabled",
        "self.vllm_importance_sampling_correction",
        "old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps",
        "log_ratio = per_token_logps - old_per_token_logps",
    ):
        assert read in loss, read
    logps = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "model(**model_inputs, labels=labels, fused_lm_head=True)" in logps
    assert "outputs.log_probs[:, -logits_to_keep:]" in logps and "outputs.entropy[:, -logits_to_keep:]" in logps
    fields = trl_utils.FusedCausalLMOutput.__dataclass_fields__
    assert {"log_probs", "entropy", "label_mask"} <= set(fields)
