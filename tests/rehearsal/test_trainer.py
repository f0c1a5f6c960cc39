"""DivergenceGRPOTrainer with rehearsal: a short run per rehearsal loss (beta = 0 and beta > 0), exploration-only
RL prompts, the stream resumed from a checkpoint, and config validation."""

from __future__ import annotations

import math

import pytest

from tests.trl.helpers import make_trainer
from trl_divergences import DivergenceGRPOConfig
from trl_divergences.rehearsal.store import load_store
from trl_divergences.toy import make_dataset


def _trainer(model_dir, tokenizer, tmp_path, store, **overrides):
    kwargs = dict(
        rehearsal_dataset=str(store),
        rehearsal_batch_size=2,
        rehearsal_coef=0.1,
        beta=0.0,
        max_steps=2,
        learning_rate=0.05,
        train_dataset=make_dataset("train").select(range(9)),
    )
    return make_trainer(model_dir, tokenizer, tmp_path, **{**kwargs, **overrides})


def _record(trainer) -> list[list[int]]:
    drawn, stream = [], trainer._rehearsal.stream
    original = stream.next_indices

    def next_indices(n: int) -> list[int]:
        drawn.append(original(n))
        return drawn[-1]

    stream.next_indices = next_indices
    return drawn


@pytest.mark.slow
@pytest.mark.parametrize("name", ["forward_kl", "js", "alpha", "nll"])
def test_short_run_without_reference_model(tiny_model_dir, tokenizer, tmp_path, store, name):
    trainer = _trainer(tiny_model_dir, tokenizer, tmp_path, store, rehearsal_divergence=name)
    assert trainer.ref_model is None
    perfect = set(load_store(store, "prompts").filter(lambda r: r["perfect"])["prompt"])
    assert perfect and not perfect & set(trainer.train_dataset["prompt"])
    assert len(trainer.train_dataset) == 9 - len(perfect)
    drawn = _record(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if f"rehearsal/{name}" in h]
    assert len(logs) == 2 and len(drawn) == 2 and all(len(d) == 2 for d in drawn)
    for log in logs:
        assert math.isfinite(log["loss"]) and math.isfinite(log[f"rehearsal/{name}"])
        assert 0.0 < log["rehearsal/token_share"] < 1.0
    if name != "nll":  # the policy starts at ρ: u = 1 on the first step, the divergence is 0 there
        assert logs[0][f"rehearsal/{name}"] == pytest.approx(0.0, abs=1e-5)
        assert logs[1][f"rehearsal/{name}"] > 0.0
    assert not any("kl" in h for h in trainer.state.log_history)


@pytest.mark.slow
def test_with_an_online_divergence(tiny_model_dir, tokenizer, tmp_path, store):
    trainer = _trainer(
        tiny_model_dir, tokenizer, tmp_path, store, beta=0.2, divergence="forward_kl", divergence_estimator="k3+"
    )
    assert trainer.ref_model is not None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rehearsal/forward_kl" in h]
    assert len(logs) == 2 and all("divergence/forward_kl" in h and math.isfinite(h["kl"]) for h in logs)


@pytest.mark.slow
def test_resumed_run_continues_the_rehearsal_stream(tiny_model_dir, tokenizer, tmp_path, store):
    ckpt = dict(max_steps=2, save_strategy="steps", save_steps=1, gradient_accumulation_steps=2,
                per_device_train_batch_size=4)  # fmt: skip
    full = _trainer(tiny_model_dir, tokenizer, tmp_path / "a", store, **ckpt)
    drawn_full = _record(full)
    full.train()
    assert len(drawn_full) == 4  # one rehearsal batch per micro-batch
    resumed = _trainer(tiny_model_dir, tokenizer, tmp_path / "a", store, **ckpt)
    drawn_resumed = _record(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "ours" / "checkpoint-1"))
    assert drawn_resumed == drawn_full[2:]


def test_config_validation(tmp_path, store):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    with pytest.raises(ValueError, match="valid: forward_kl, js, alpha, nll"):
        DivergenceGRPOConfig(**base, rehearsal_divergence="reverse_kl")
    with pytest.raises(ValueError, match="not a finished rehearsal store"):
        DivergenceGRPOConfig(**base, rehearsal_dataset=str(tmp_path))
    with pytest.raises(ValueError, match="rehearsal_batch_size"):
        DivergenceGRPOConfig(**base, rehearsal_dataset=str(store), rehearsal_batch_size=0)
    with pytest.raises(ValueError, match="rehearsal_coef"):
        DivergenceGRPOConfig(**base, rehearsal_dataset=str(store), rehearsal_coef=-1.0)
    with pytest.raises(ValueError, match="unknown argument"):
        DivergenceGRPOConfig(**base, rehearsal_dataset=str(store), rehearsal_kwargs={"alpha": 0.5})
    config = DivergenceGRPOConfig(**base, rehearsal_dataset=str(store), per_device_train_batch_size=32)
    assert config.rehearsal_batch_size == 4 and config.rehearsal_coef == 0.01


@pytest.mark.slow
def test_temperature_mismatch_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path, store):
    with pytest.raises(ValueError, match="temperature 1.0, but training runs at temperature 0.7"):
        _trainer(tiny_model_dir, tokenizer, tmp_path, store, temperature=0.7)
