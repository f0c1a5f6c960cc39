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


@pytest.fixture(scope="session")
def store(tiny_model, tokenizer, tmp_path_factory):
    """A store of the tiny model on the first 9 toy training prompts (k = 4), built with :func:`synthetic_reward`."""
    from trl_divergences.rehearsal.build import BuildConfig, build_store
    from trl_divergences.toy import make_dataset

    path = tmp_path_factory.mktemp("store") / "s"
    config = BuildConfig(k=4, max_new_tokens=3, shard_size=3, seed=0)
    build_store(tiny_model, tokenizer, make_dataset("train").select(range(9)), synthetic_reward, path, config, False)
    return path
