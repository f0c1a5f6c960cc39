"""Fixtures for the TRL adapter tests: a tiny random Qwen2 folder (the hub-loading path, on a local folder)."""

from __future__ import annotations

import pytest

from trl_divergences.toy import BaseModelConfig, build_random_model, load_tokenizer

TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_random_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, config=TINY))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)
