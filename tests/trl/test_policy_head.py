"""The on-policy fast path: TRL's policy-gradient term carried by our one vocabulary pass (TRL's fused head skipped)
gives the loss value, every parameter gradient and the logged metrics of the route through TRL's head; every
setting outside its whitelist takes TRL's head."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

import trl_divergences.trl.forward as forward_module

from .helpers import make_trainer

pytestmark = pytest.mark.slow

METRICS = ("entropy", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


def _trained(tiny_model_dir, tokenizer, tmp_path, **overrides):
    """A JS-full trainer after one step, with the loss micro-batches it saw."""
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, divergence="js", divergence_estimator="full", max_steps=1, **overrides
    )
    batches, original = [], trainer._compute_loss

    def compute_loss(model, inputs):
        batches.append(inputs)
        return original(model, inputs)

    trainer._compute_loss = compute_loss
    trainer.train()
    trainer._compute_loss = original
    return trainer, batches


def _loss_and_grads(trainer, inputs, fast: bool, monkeypatch):
    calls = []
    head = forward_module.policy_head_forward
    monkeypatch.setattr(forward_module, "policy_head_forward", lambda *a: calls.append(1) or head(*a))
    if not fast:
        monkeypatch.setattr(trainer, "_policy_gradient_in_forward", lambda *a: False)
    trainer.model.train()
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: trainer._metrics["train"][k][-1] for k in METRICS}
    monkeypatch.undo()
    assert bool(calls) == fast
    return loss.detach(), grads, metrics


LORA = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")}


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo", "gradient_accumulation_steps": 2},
        {"loss_type": "luspo"},
        {"loss_type": "grpo", **LORA},
    ],
)
def test_fast_path_matches_trl_head_route(tiny_model_dir, tokenizer, tmp_path, monkeypatch, overrides):
    trainer, batches = _trained(tiny_model_dir, tokenizer, tmp_path, **overrides)
    inputs = dict(batches[0])
    mask = inputs["completion_mask"].clone()
    mask[0, -2:] = 0  # masked tokens
    inputs["completion_mask"] = mask
    advantages = inputs["advantages"].clone()
    advantages[:4] = 0.0  # a zero-advantage group
    inputs["advantages"] = advantages
    assert advantages.abs().sum() > 0
    fast, slow = (_loss_and_grads(trainer, inputs, f, monkeypatch) for f in (True, False))
    torch.testing.assert_close(fast[0], slow[0], atol=1e-6, rtol=1e-6)
    assert fast[1].keys() == slow[1].keys() and len(fast[1]) > 0
    for name, grad in fast[1].items():
        assert grad.abs().max() > 0 or slow[1][name].abs().max() == 0
        torch.testing.assert_close(grad, slow[1][name], atol=1e-6, rtol=1e-5, msg=name)
    assert fast[2] == pytest.approx(slow[2], rel=1e-5, abs=1e-7)
    assert fast[2]["clip_ratio/region_mean"] == 0.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "cispo"},
        {"loss_type": "sapo"},
        {"importance_sampling_level": "sequence"},
        {"top_entropy_quantile": 0.5},
        {"entropy_coef": 0.01},
        {"delta": 2.0},
        {"off_policy_mask_threshold": 0.5},
        {"epsilon": 0.0},
        {"num_iterations": 2},
        {"token_masks": ["entropy_quantile"]},
        {"divergence": "reverse_kl", "divergence_estimator": "k3"},
    ],
)
def test_settings_outside_the_whitelist_take_trl_head(tiny_model_dir, tokenizer, tmp_path, monkeypatch, overrides):
    calls = []
    head = forward_module.policy_head_forward
    monkeypatch.setattr(forward_module, "policy_head_forward", lambda *a: calls.append(1) or head(*a))
    kwargs = {"divergence": "js", "divergence_estimator": "full", "max_steps": 1, **overrides}
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, **kwargs)
    trainer.train()
    assert not calls


def test_default_js_full_takes_the_fast_path(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    calls = []
    head = forward_module.policy_head_forward
    monkeypatch.setattr(forward_module, "policy_head_forward", lambda *a: calls.append(1) or head(*a))
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, divergence="js", divergence_estimator="full")
    trainer.train()
    assert len(calls) == 2
