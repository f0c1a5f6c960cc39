"""The exact (`full`) estimator: the per-token divergence the trainer adds equals a float64 recomputation from the
two models' full logits, with a separate reference model and with a PEFT adapter (reference = adapter disabled)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

import trl_divergences as td
import trl_divergences.objective.vocabulary as vocabulary_module

from .helpers import make_trainer

pytestmark = pytest.mark.slow


def _record(trainer, monkeypatch):
    """Record each loss batch and the per-token divergence the fused op returns inside the policy forward."""
    batches, divs = [], []
    original_loss = trainer._compute_loss

    def compute_loss(model, inputs):
        batches.append(inputs)
        return original_loss(model, inputs)

    def op(*args, **kwargs):
        out = td.ops.fused_linear_logprob_entropy_divergence(*args, **kwargs)
        divs.append(out[2].detach())
        return out

    def loss_op(*args, **kwargs):  # the training route: the penalty aggregated with its gradient in the forward
        out = td.ops.fused_linear_divergence_loss(*args, **kwargs)
        divs.append(out[3])
        return out

    trainer._compute_loss = compute_loss
    monkeypatch.setattr(vocabulary_module, "fused_linear_logprob_entropy_divergence", op)
    monkeypatch.setattr(vocabulary_module, "fused_linear_divergence_loss", loss_op)
    return batches, divs


def _completion_logits(model, inputs) -> torch.Tensor:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, :-1][:, -inputs["completion_ids"].size(1) :].double()


def _check(trainer, batches, divs, ref_logits_fn, name, kwargs):
    assert len(batches) == len(divs) > 0
    div = td.get_divergence(name, **kwargs)
    with torch.no_grad():
        for inputs, got in zip(batches, divs):
            pol = _completion_logits(trainer.model, inputs)
            ref = ref_logits_fn(inputs)
            want = td.ops.logprob_entropy_divergence(pol, ref, None, div, trainer.temperature, impl="naive")[2]
            mask = inputs["completion_mask"].bool()
            assert want[mask].abs().max() > 1e-3, "policy and reference must differ for the test to mean anything"
            torch.testing.assert_close(got[mask].double(), want[mask], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name,kwargs", [("forward_kl", {}), ("js", {"beta": 0.3}), ("chi2", {})])
def test_full_matches_float64_with_reference_model(tiny_model_dir, tokenizer, tmp_path, monkeypatch, name, kwargs):
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # the reference is reloaded from the folder, so perturbing the instance makes them differ
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = make_trainer(
        policy,
        tokenizer,
        tmp_path,
        divergence=name,
        divergence_kwargs=kwargs,
        divergence_estimator="full",
        learning_rate=0.0,
        max_steps=1,
        temperature=0.7,
    )
    assert trainer.ref_model is not None
    batches, divs = _record(trainer, monkeypatch)
    trainer.train()
    _check(trainer, batches, divs, lambda inputs: _completion_logits(trainer.ref_model, inputs), name, kwargs)
    log = trainer.state.log_history[0]
    assert log["kl"] == log[f"divergence/{name}"] == log[f"divergence/{name}/full"] > 0


def test_full_matches_float64_with_peft(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        divergence="forward_kl",
        divergence_estimator="full",
        learning_rate=0.0,
        max_steps=1,
        peft_config=lora,
    )
    assert trainer.ref_model is None
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5 * torch.randn_like(p))

    def ref_logits(inputs):
        with trainer.model.disable_adapter():
            return _completion_logits(trainer.model, inputs)

    batches, divs = _record(trainer, monkeypatch)
    trainer.train()
    _check(trainer, batches, divs, ref_logits, "forward_kl", {})


def test_full_gradient_reaches_lm_head_and_backbone(tiny_model_dir, tokenizer, tmp_path):
    """Only the divergence drives the update (zero-variance rewards -> zero advantages): the policy still moves."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    head_before = policy.get_output_embeddings().weight.detach().clone()
    trainer = make_trainer(
        policy, tokenizer, tmp_path, divergence="forward_kl", divergence_estimator="full", max_steps=1
    )
    trainer.reward_funcs = [lambda prompts, completions, **kw: [1.0] * len(completions)]
    trainer.train()
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert not torch.equal(trainer.model.get_output_embeddings().weight.detach(), head_before)
    assert any("layers.0" in n for n in moved)


def _counting(calls: list):
    def op(*args, **kwargs):
        calls.append(1)
        return td.ops.fused_linear_divergence_loss(*args, **kwargs)

    return op


@pytest.mark.parametrize("overrides", [{"loss_type": "grpo"}, {"loss_type": "dapo", "gradient_accumulation_steps": 2}])
def test_gradient_in_forward_route_trains_like_the_per_token_route(
    tiny_model_dir, tokenizer, tmp_path, monkeypatch, overrides
):
    """The exact penalty aggregated inside the forward (its weights known before it) moves the parameters exactly as
    the per-token values aggregated after the loss (the route taken when the weights are not handed over)."""
    runs = {}
    for route in ("in_forward", "per_token"):
        trainer = make_trainer(
            tiny_model_dir, tokenizer, tmp_path / route, divergence="js", divergence_estimator="full", **overrides
        )
        calls = []
        monkeypatch.setattr(vocabulary_module, "fused_linear_divergence_loss", _counting(calls))
        if route == "per_token":
            monkeypatch.setattr(trainer.objective, "penalty_weights", lambda *a, **k: None)
        trainer.train()
        assert bool(calls) == (route == "in_forward")
        runs[route] = ({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer.state.log_history)
        monkeypatch.undo()
    for name, value in runs["in_forward"][0].items():
        torch.testing.assert_close(value, runs["per_token"][0][name], atol=1e-5, rtol=1e-4, msg=name)
    kl = [[h["kl"] for h in run[1] if "kl" in h] for run in runs.values()]
    assert kl[0] == pytest.approx(kl[1], rel=1e-5) and len(kl[0]) == 2
