"""Parity with stock TRL 1.16 GRPOTrainer: same batch, same seed -> same parameters after training and same `kl`.

Two checks: (1) default DivergenceGRPOConfig = TRL untouched; (2) our own penalty path (TRL's k3 switched off, our
sampled reverse-KL k3 added with our loss_type normalizer and π/π_old correction) forced on, which must reproduce
TRL's inline k3 for every loss aggregation, sequence-level importance sampling and off-policy iterations. SGD keeps
the parameter comparison linear in the gradients.
"""

from __future__ import annotations

import pytest
import torch

from .helpers import make_trainer

pytestmark = pytest.mark.slow


def _train(model_dir, tokenizer, tmp_path, stock: bool, force_ours: bool = False, **overrides):
    trainer = make_trainer(model_dir, tokenizer, tmp_path, stock=stock, **overrides)
    if force_ours:
        assert trainer._stock_kl  # default config selects TRL's path...
        trainer._stock_kl = False  # ...force ours through the same penalty
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    return params, kl, trainer


def _assert_same(a, b, atol: float) -> None:
    params_a, kl_a, _ = a
    params_b, kl_b, _ = b
    assert params_a.keys() == params_b.keys()
    moved = 0.0
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], atol=atol, rtol=0, msg=name)
    assert len(kl_a) == len(kl_b) > 0
    assert kl_a == pytest.approx(kl_b, rel=1e-4, abs=1e-7)
    moved = max(moved, max(float(kl) for kl in kl_a))
    assert moved > 0, "the test batch must produce a non-zero KL to compare anything"


def test_default_config_is_stock_trl(tiny_model_dir, tokenizer, tmp_path):
    stock = _train(tiny_model_dir, tokenizer, tmp_path, stock=True)
    ours = _train(tiny_model_dir, tokenizer, tmp_path, stock=False)
    _assert_same(stock, ours, atol=0.0)
    assert ours[2].state.log_history[0]["divergence/reverse_kl"] == ours[2].state.log_history[0]["kl"]
    assert ours[2].state.log_history[0]["divergence/coef"] == pytest.approx(0.2)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo", "gradient_accumulation_steps": 2},
        {"loss_type": "dapo", "importance_sampling_level": "sequence"},
        {"loss_type": "grpo", "num_iterations": 2, "max_steps": 3},
        {"loss_type": "dapo", "use_bias_correction_kl": False},
    ],
    ids=["grpo", "bnpo", "dr_grpo", "dapo-ga2", "dapo-seq", "grpo-iter2", "no-bias-corr"],
)
def test_our_penalty_path_matches_trl_k3(tiny_model_dir, tokenizer, tmp_path, overrides):
    stock = _train(tiny_model_dir, tokenizer, tmp_path, stock=True, **overrides)
    ours = _train(tiny_model_dir, tokenizer, tmp_path, stock=False, force_ours=True, **overrides)
    _assert_same(stock, ours, atol=1e-6)
