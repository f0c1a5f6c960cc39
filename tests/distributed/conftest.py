"""Fixtures of the multi-process and fault tests: the tiny random model folder and a rehearsal store, built once in
this process and handed to the launched jobs by path."""

from __future__ import annotations

import pytest

from tests.rehearsal.conftest import synthetic_reward
from tests.trl.conftest import TINY
from trl_divergences.toy import build_random_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> str:
    return str(build_random_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, config=TINY))


@pytest.fixture(scope="session")
def store(model_dir, tmp_path_factory) -> str:
    """A rehearsal store of the tiny model on the first 9 toy training prompts (k = 4, :func:`synthetic_reward`)."""
    from transformers import AutoModelForCausalLM

    from trl_divergences.rehearsal.build import BuildConfig, build_store
    from trl_divergences.toy import load_tokenizer, make_dataset

    path = tmp_path_factory.mktemp("store") / "s"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = BuildConfig(k=4, max_new_tokens=3, shard_size=3, seed=0)
    dataset = make_dataset("train").select(range(9))
    build_store(model, load_tokenizer(model_dir), dataset, synthetic_reward, path, config, progress=False)
    return str(path)
