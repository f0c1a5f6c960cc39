"""Fixtures for the rehearsal tests: a tiny random Qwen2 folder and a small store built from it."""

from __future__ import annotations

import pytest

from trl_divergences.toy import BaseModelConfig, build_random_model, load_tokenizer, parse_prompt

TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)


def synthetic_reward(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """Prompts n ≡ 0 (mod 3) always correct, n ≡ 1 correct iff the first completion token id is even, else wrong."""
    out = []
    for prompt, ids in zip(prompts, completion_ids, strict=True):
        n = parse_prompt(prompt) % 3
        out.append(1.0 if n == 0 else float(n == 1 and ids[0] % 2 == 0))
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_random_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, config=TINY))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)
