"""Shared builders for the TRL adapter tests."""

from __future__ import annotations

from typing import Any

import datasets
from trl import GRPOConfig, GRPOTrainer

from trl_divergences import DivergenceGRPOConfig, DivergenceGRPOTrainer


def varied_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """A deterministic reward that varies across completions (so advantages are non-zero)."""
    return [float(sum(map(ord, c)) % 5) for c in completions]


def prompts_dataset(n: int = 16) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [f"S {10 + i} =" for i in range(n)]})


BASE_ARGS: dict[str, Any] = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=4,
    max_steps=2,
    learning_rate=0.5,
    optim="sgd",
    beta=0.2,
    report_to=[],
    logging_steps=1,
    bf16=False,
    use_cpu=True,
    save_strategy="no",
    disable_tqdm=True,
    seed=0,
    data_seed=0,
)


def make_trainer(model: Any, tokenizer, tmp_path, stock: bool = False, train_dataset=None, **overrides: Any):
    """A GRPOTrainer (``stock=True``) or DivergenceGRPOTrainer with BASE_ARGS and ``overrides``."""
    kwargs = {**BASE_ARGS, "output_dir": str(tmp_path / ("stock" if stock else "ours")), **overrides}
    peft_config = kwargs.pop("peft_config", None)
    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if stock else (DivergenceGRPOConfig, DivergenceGRPOTrainer)
    return trainer_cls(
        model=model,
        reward_funcs=varied_reward,
        args=config_cls(**kwargs),
        train_dataset=train_dataset if train_dataset is not None else prompts_dataset(),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
