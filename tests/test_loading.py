"""Command-line loaders: ``package.module:function`` specs, dataset folders, model loaders, plain tokenizers."""

from __future__ import annotations

import datasets
import pytest

from trl_divergences.loading import is_callable_spec, load_callable, load_dataset, load_tokenizer, resolve_model
from trl_divergences.toy import BaseModelConfig, build_random_model, make_dataset, sum_reward

TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)


def three_rows(split: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [f"{split} {i}" for i in range(3)]})


def test_callable_specs(tmp_path):
    assert is_callable_spec("trl_divergences.toy:sum_reward")
    assert not is_callable_spec("Qwen/Qwen2.5-0.5B") and not is_callable_spec(str(tmp_path))
    assert load_callable("trl_divergences.toy:sum_reward") is sum_reward
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        load_callable("trl_divergences.toy:nope")
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        load_callable("trl_divergences.toy")


def test_datasets_from_a_loader_or_a_folder(tmp_path):
    assert load_dataset("tests.test_loading:three_rows", "heldout")["prompt"][0] == "heldout 0"
    make_dataset("train").save_to_disk(str(tmp_path / "data"))
    assert load_dataset(str(tmp_path / "data"))["prompt"] == make_dataset("train")["prompt"]


def test_model_loader_and_plain_tokenizer_as_saved(tmp_path):
    folder = build_random_model(tmp_path / "model", config=TINY)
    assert resolve_model(str(folder)) == str(folder)
    tokenizer = load_tokenizer(str(folder))
    assert len(tokenizer.tokenize("S 14 =")) == 3  # "14" is one WordLevel token (AutoTokenizer splits it)
