"""A short training run for every divergence x supported estimator on the tiny model: finite loss, metrics logged,
the reference side handled (TRL's ref log-probs for sampled estimators, ref hidden states for `full`)."""

from __future__ import annotations

import math

import pytest

import trl_divergences as td

from .helpers import make_trainer, prompts_dataset

pytestmark = pytest.mark.slow

CASES = [
    (name, estimator)
    for name in td.list_divergences()
    for estimator in (*td.get_divergence(name).estimators, "full")
    if (name, estimator) != ("reverse_kl", "k3")  # the stock path: covered by test_parity
    and name != "lp_reg"  # selects no token at its defaults on this model: covered by test_catalog
]


@pytest.mark.parametrize("name,estimator", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_short_run(tiny_model_dir, tokenizer, tmp_path, name, estimator):
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        divergence=name,
        divergence_estimator=estimator,
        max_steps=2,
        learning_rate=0.05,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logs) == 2
    for log in logs:
        assert math.isfinite(log["loss"]) and math.isfinite(log["kl"])
        assert log[f"divergence/{name}"] == log["kl"] == log[f"divergence/{name}/{estimator}"]
        assert log["divergence/coef"] == pytest.approx(0.2)
    # after one update the policy differs from the reference, so the second step's divergence is non-zero
    assert logs[-1]["kl"] != 0.0


def test_beta_zero_loads_no_reference_and_logs_no_divergence(tiny_model_dir, tokenizer, tmp_path):
    trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path, beta=0.0, divergence="js", divergence_estimator="full")
    assert trainer.ref_model is None
    trainer.train()
    assert not any("kl" in h or "divergence/coef" in h for h in trainer.state.log_history)


def test_plain_grpo_config_and_no_args_are_trls_defaults(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """Drop-in: a plain GRPOConfig is taken with our fields at their defaults; no args builds TRL's default config."""
    from trl import GRPOConfig, GRPOTrainer

    def reward(**kwargs):
        return [0.0] * len(kwargs["completions"])

    plain = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], beta=0.1)
    data = prompts_dataset()
    trainer = td.DivergenceGRPOTrainer(tiny_model_dir, reward, plain, data, processing_class=tokenizer)
    assert isinstance(trainer.args, td.DivergenceGRPOConfig)
    assert trainer.args.beta == 0.1 and trainer.args.generation_batch_size == plain.generation_batch_size
    assert (trainer.args.divergence, trainer.args.divergence_estimator) == ("reverse_kl", "k3")
    assert trainer._stock_kl and trainer.ref_model is not None
    monkeypatch.chdir(tmp_path)
    # no args: TRL's default config (bf16 on, so on a CPU machine TRL's and ours refuse it with TRL's message)
    errors = []
    for cls in (GRPOTrainer, td.DivergenceGRPOTrainer):
        with pytest.raises(ValueError) as info:
            cls(tiny_model_dir, reward, train_dataset=data, processing_class=tokenizer)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    with pytest.raises(TypeError, match="DivergenceGRPOConfig or a GRPOConfig"):
        td.DivergenceGRPOTrainer(tiny_model_dir, reward, {"beta": 0.1}, data)


def test_get_high_entropy_mask_on_a_mocked_trainer_is_trls():
    """TRL's unit tests call ``get_high_entropy_mask`` on a mocked trainer: outside our loss ours is TRL's."""
    from unittest.mock import MagicMock

    import torch
    from trl import GRPOTrainer

    trainer = MagicMock()
    trainer.accelerator.pad_across_processes.side_effect = lambda x, dim, pad_index: x
    trainer.accelerator.gather.side_effect = lambda x: x
    entropies = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.7, 0.2, 0.8, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ours = td.DivergenceGRPOTrainer.get_high_entropy_mask(trainer, entropies, mask, 0.5)
    assert torch.equal(ours, GRPOTrainer.get_high_entropy_mask(trainer, entropies, mask, 0.5))
    assert ours.sum() == 4 and not ours[1, 3]
