"""The method catalog through DivergenceGRPOTrainer: a short training per flag on the tiny model that logs its metric,
TRL parity of entropy_quantile, the reference model loaded exactly when a method needs it, SELF's filter, schedules,
and the methods' state through checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trl_divergences.curricula import CurriculumSampler
from trl_divergences.toy import parse_prompt

from .helpers import make_trainer
from .test_parity import _assert_same, _train

pytestmark = pytest.mark.slow

SHORT = dict(max_steps=2, learning_rate=0.05)


def _run(model_dir, tokenizer, tmp_path, **overrides):
    trainer = make_trainer(model_dir, tokenizer, tmp_path, **{**SHORT, **overrides})
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    return trainer, logs


def parity_reward(prompts, completions, **kwargs) -> list[float]:
    return [float(sum(map(ord, c)) % 5) for c in completions]


def test_entropy_quantile_is_trls_top_entropy_quantile(tiny_model_dir, tokenizer, tmp_path):
    stock = _train(tiny_model_dir, tokenizer, tmp_path, stock=True, top_entropy_quantile=0.25)
    ours = _train(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        stock=False,
        token_masks=["entropy_quantile"],
        token_mask_kwargs={"entropy_quantile": {"quantile": 0.25}},
    )
    _assert_same(stock, ours, atol=0.0)
    kept = [h["mask/entropy_quantile/kept_fraction"] for h in ours[2].state.log_history if "kl" in h]
    assert kept and all(0.0 < k < 0.5 for k in kept)


MASK_CASES = {
    "entropy_quantile": ({}, lambda k: 0 < k < 0.5),
    "siren": ({"mask_ratio": 0.5}, lambda k: k == 1.0),  # the policy-gradient term is unchanged
    "eksft": ({"ratio": 0.5}, lambda k: 0 < k < 1),
    "low_probability": ({"kappa": 0.55, "rho": 1.0}, lambda k: 0 < k < 1),
    "correct_only": ({}, lambda k: 0 < k < 1),
}


@pytest.mark.parametrize("name", list(MASK_CASES))
def test_each_token_mask_trains_and_logs(tiny_model_dir, tokenizer, tmp_path, name):
    kwargs, kept_ok = MASK_CASES[name]
    trainer, logs = _run(
        tiny_model_dir, tokenizer, tmp_path, beta=0.0, token_masks=[name], token_mask_kwargs={name: kwargs}
    )
    assert all(kept_ok(h[f"mask/{name}/kept_fraction"]) for h in logs), [h[f"mask/{name}/kept_fraction"] for h in logs]
    assert (trainer.ref_model is not None) == (name == "eksft")  # EKSFT's exact KL(π‖ρ) needs ρ even at beta = 0
    if name == "siren":
        anchor = trainer.objective.token_masks[0].anchor
        assert anchor is not None and anchor > 0 and all(h["mask/siren/anchor"] == anchor for h in logs)
    if name == "eksft":
        assert all(h["mask/eksft/entropy_term"] > 0 for h in logs)
        assert logs[-1]["mask/eksft/kl_term"] > 0  # the policy has moved from ρ after one step


def test_masks_compose_with_a_full_penalty(tiny_model_dir, tokenizer, tmp_path):
    """EKSFT's KL(π‖ρ) and the `full` reverse-KL penalty are the same tensor: one pass, both logged."""
    trainer, logs = _run(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        divergence_estimator="full",
        token_masks=["eksft", "correct_only", "siren"],
        token_mask_kwargs={"eksft": {"ratio": 0.5, "dynamic_coef": False}},
    )
    for h in logs:
        assert {"mask/eksft/kept_fraction", "mask/correct_only/kept_fraction", "mask/siren/topp_entropy"} <= set(h)
        assert h["kl"] == h["divergence/reverse_kl/full"]
    assert logs[-1]["kl"] > 0


def test_lp_reg_selects_tokens_and_needs_no_reference(tiny_model_dir, tokenizer, tmp_path):
    trainer, logs = _run(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=1.0,
        divergence="lp_reg",
        divergence_kwargs={"kappa": 0.55, "rho": 1.0},
    )
    assert trainer.ref_model is None
    for h in logs:
        assert 0 < h["divergence/lp_reg/selected_fraction"] < 1
        assert h["kl"] == h["divergence/lp_reg"] == h["divergence/lp_reg/k3"] > 0  # π < π_proxy on selected tokens
        assert h["divergence/coef"] == 1.0


REWEIGHTING_CASES = {
    "ace": ({"alpha": 0.5}, "modulated_fraction"),
    "resrl": ({"rank": 4}, "mean_negative_weight"),
    "w_reinforce": ({}, "correct_fraction"),
    "dads": ({"stcr": True}, "mean_divergence_weight"),
    "success_adaptive": ({}, None),
    "paced": ({}, "mean_raw_weight"),
}


@pytest.mark.parametrize("name", list(REWEIGHTING_CASES))
def test_each_reweighting_trains_and_logs(tiny_model_dir, tokenizer, tmp_path, name):
    kwargs, key = REWEIGHTING_CASES[name]
    beta = 0.2 if name == "dads" else 0.0
    trainer, logs = _run(
        tiny_model_dir, tokenizer, tmp_path, beta=beta, advantage_reweighting=name, reweighting_kwargs=kwargs
    )
    prefix = f"reweighting/{name}/"
    assert all(any(k.startswith(prefix) for k in h) for h in logs)
    if key is not None:
        assert all(math.isfinite(h[prefix + key]) for h in logs)
    assert (trainer.ref_model is not None) == (name in ("ace", "dads"))  # ACE reads ρ at beta = 0
    if name == "dads":
        assert not trainer._stock_kl and all("divergence/coef" in h for h in logs)


@pytest.mark.parametrize("mode", ["psr", "nsr"])
def test_w_reinforce_drops_the_other_samples(tiny_model_dir, tokenizer, tmp_path, mode):
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, advantage_reweighting="w_reinforce", reweighting_kwargs={"mode": mode}
    )
    trainer.model.train()
    rows = [trainer.train_dataset[0]] * 4 + [trainer.train_dataset[1]] * 4  # two groups of G = 4
    batch = trainer._generate_and_score_completions(rows)
    correct = batch["correct"].bool()
    assert correct.any() and not correct.all()
    kept = batch["tool_mask"].bool().any(-1)
    assert torch.equal(kept, correct if mode == "psr" else ~correct)
    assert batch["num_items_in_batch"] == (batch["completion_mask"] * batch["tool_mask"]).sum()
    assert torch.all(batch["advantages"][kept] == (1.0 if mode == "psr" else -1.0))


@pytest.mark.parametrize("name", ["gaussian", "paced"])
def test_pass_rate_curricula_sample_and_update(tiny_model_dir, tokenizer, tmp_path, name):
    trainer, logs = _run(tiny_model_dir, tokenizer, tmp_path, curriculum=name, max_steps=3)
    assert isinstance(trainer._curriculum_sampler, CurriculumSampler)
    assert all(f"curriculum/{name}/effective_prompts" in h for h in logs)
    table = trainer.objective.curriculum.pass_rates
    assert (table != 0.5).sum() > 0  # sampled prompts moved from the prior


def even_prompts_solved(prompts, completions, **kwargs) -> list[float]:
    """Every completion of an even n is correct, none of an odd n: the greedy filter must drop exactly the evens."""
    return [float(parse_prompt(p) % 2 == 0) for p in prompts]


def test_self_filter_trains_only_on_prompts_the_greedy_policy_misses(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, curriculum="self", **SHORT)
    trainer.reward_funcs = [even_prompts_solved]
    trained: list[str] = []
    original = trainer._calculate_rewards

    def record(inputs, prompts, completions, ids):
        if len(prompts) == trainer.args.per_device_train_batch_size * trainer.args.steps_per_generation:
            trained.extend(prompts)  # the rollouts (the greedy passes score one row per prompt)
        return original(inputs, prompts, completions, ids)

    trainer._calculate_rewards = record
    trainer.train()
    assert trained and all(parse_prompt(p) % 2 == 1 for p in trained)
    logs = [h for h in trainer.state.log_history if "curriculum/self/kept_fraction" in h]
    assert len(logs) == 2 and all(0 <= h["curriculum/self/kept_fraction"] < 1 for h in logs)
    groups = [trained[i : i + 4] for i in range(0, len(trained), 4)]
    assert all(len(set(g)) == 1 for g in groups)  # GRPO's groups stay whole


def always_correct(prompts, completions, **kwargs) -> list[float]:
    return [1.0] * len(prompts)


def test_accuracy_conditioned_coefficient(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, coefficient_schedule="accuracy_conditioned", **SHORT)
    trainer.reward_funcs = [always_correct]
    trainer.train()
    coefs = [h["divergence/coef"] for h in trainer.state.log_history if "divergence/coef" in h]
    assert coefs == pytest.approx([0.2 * (math.tanh(1.0) + 1) / 2] * 2)


def test_forward_then_reverse_and_warmup(tiny_model_dir, tokenizer, tmp_path):
    _, logs = _run(
        tiny_model_dir, tokenizer, tmp_path / "a", coefficient_schedule="forward_then_reverse", max_steps=4,
        divergence_estimator="full",
    )  # fmt: skip
    assert ["divergence/forward_kl" in h for h in logs] == [True, True, False, False]
    assert ["divergence/reverse_kl/full" in h for h in logs] == [False, False, True, True]
    _, logs = _run(
        tiny_model_dir, tokenizer, tmp_path / "b", coefficient_schedule="warmup",
        schedule_kwargs={"warmup_steps": 3}, max_steps=4,
    )  # fmt: skip
    assert [h["divergence/coef"] for h in logs] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.2])


def _prompts_per_step(trainer) -> list[list[str]]:
    drawn: list[list[str]] = []
    original = trainer._calculate_rewards

    def record(inputs, prompts, completions, ids):
        drawn.append(list(prompts))
        return original(inputs, prompts, completions, ids)

    trainer._calculate_rewards = record
    return drawn


def test_resumed_curriculum_samples_like_an_uninterrupted_run(tiny_model_dir, tokenizer, tmp_path):
    run = dict(curriculum="gaussian", curriculum_kwargs={"std": 0.1, "ema": 0.5}, max_steps=4, learning_rate=0.05,
               save_strategy="steps", save_steps=2)  # fmt: skip
    full = make_trainer(tiny_model_dir, tokenizer, tmp_path / "a", **run)
    drawn_full = _prompts_per_step(full)
    full.train()
    saved = json.loads((tmp_path / "a" / "ours" / "checkpoint-2" / "trl_divergences_state.json").read_text())
    assert saved["curriculum"]["pass_rates"] != [0.5] * len(full.train_dataset)
    resumed = make_trainer(tiny_model_dir, tokenizer, tmp_path / "a", **run)
    drawn_resumed = _prompts_per_step(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "ours" / "checkpoint-2"))
    assert len(drawn_full) == 4 and drawn_resumed == drawn_full[2:]
    assert torch.equal(resumed.objective.curriculum.pass_rates, full.objective.curriculum.pass_rates)


def test_methods_state_round_trips(tiny_model_dir, tokenizer, tmp_path):
    trainer, _ = _run(
        tiny_model_dir, tokenizer, tmp_path / "a", token_masks=["siren"], coefficient_schedule="forward_then_reverse",
        curriculum="paced",
    )  # fmt: skip
    state = json.loads(json.dumps(trainer.methods_state_dict()))
    fresh = make_trainer(
        tiny_model_dir, tokenizer, tmp_path / "b", token_masks=["siren"], coefficient_schedule="forward_then_reverse",
        curriculum="paced",
    )  # fmt: skip
    fresh.get_train_dataloader()  # builds the sampler
    fresh.load_methods_state_dict(state)
    assert fresh.methods_state_dict() == state
    assert fresh.objective.token_masks[0].anchor == trainer.objective.token_masks[0].anchor
    assert fresh.objective.divergence_now.name == "reverse_kl"
