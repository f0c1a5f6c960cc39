"""The offline step: split on a synthetic scorer, stored log-probs, reproducibility from the seed, resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from trl_divergences.rehearsal.build import BuildConfig, build_store
from trl_divergences.rehearsal.store import load_meta, load_store
from trl_divergences.toy import make_dataset

from .conftest import synthetic_reward

pytestmark = pytest.mark.slow

CONFIG = BuildConfig(k=4, max_new_tokens=3, shard_size=3, seed=0)


def _data(n: int = 9):
    return make_dataset("train").select(range(n))


def _contents(path) -> tuple[list, list, list]:
    return (
        load_store(path).to_list(),
        load_store(path, "prompts").to_list(),
        load_store(path, "exploration")["prompt"],
    )


def test_split_is_perfect_iff_all_k_correct_and_store_holds_only_their_correct_samples(store):
    samples, prompts, exploration = _contents(store)
    meta = load_meta(store)
    shards = json.loads((store / "build.json").read_text())
    assert shards["config"]["k"] == 4
    for row in prompts:
        assert row["perfect"] == (row["n_correct"] == 4)
        if int(row["prompt"].split()[1]) % 3 == 0:
            assert row["perfect"]
        if int(row["prompt"].split()[1]) % 3 == 2:
            assert not row["perfect"] and row["n_correct"] == 0
    perfect = {r["prompt"] for r in prompts if r["perfect"]}
    assert perfect and set(exploration) == {r["prompt"] for r in prompts} - perfect
    assert len(samples) == 4 * len(perfect) == meta["n_samples"]
    assert all(s["prompt"] in perfect and s["reward"] >= 1.0 for s in samples)
    assert meta["n_perfect"] == len(perfect) and meta["n_exploration"] == len(exploration)


def test_stored_logprobs_match_a_recomputation(store, tiny_model, tokenizer):
    samples = load_store(store)
    for row in samples.select(range(6)):
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logp = tiny_model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        expected = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(row["prompt_ids"]) - 1 :]
        assert len(row["ref_logps"]) == len(row["completion_ids"]) >= 1
        torch.testing.assert_close(torch.tensor(row["ref_logps"]), expected, atol=1e-5, rtol=1e-5)
        assert row["completion"] == tokenizer.decode(row["completion_ids"], skip_special_tokens=True)


def test_rebuild_is_reproducible_and_resume_after_interruption_gives_the_same_store(
    store, tiny_model, tokenizer, tmp_path
):
    calls = {"n": 0}

    def crashing_reward(**kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during the second shard (3 prompts per shard)
            raise RuntimeError("interrupted")
        return synthetic_reward(**kwargs)

    with pytest.raises(RuntimeError, match="interrupted"):
        build_store(tiny_model, tokenizer, _data(), crashing_reward, tmp_path, CONFIG, progress=False)
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.parquet")) == ["shard-00000.parquet"]
    first_shard = (tmp_path / "shards" / "shard-00000.parquet").stat().st_mtime_ns
    build_store(tiny_model, tokenizer, _data(), synthetic_reward, tmp_path, CONFIG, progress=False)
    assert (tmp_path / "shards" / "shard-00000.parquet").stat().st_mtime_ns == first_shard  # skipped, not redone
    assert _contents(tmp_path) == _contents(store)


def test_other_seed_samples_differently_and_other_settings_refuse_the_folder(store, tiny_model, tokenizer, tmp_path):
    other = BuildConfig(k=4, max_new_tokens=3, shard_size=3, seed=1)
    build_store(tiny_model, tokenizer, _data(), synthetic_reward, tmp_path, other, progress=False)
    assert load_store(tmp_path)["completion_ids"] != load_store(store)["completion_ids"]
    with pytest.raises(ValueError, match="other settings"):
        build_store(tiny_model, tokenizer, _data(), synthetic_reward, store, other, progress=False)


def test_cli_builds_a_store(tiny_model_dir, tmp_path):
    from trl_divergences.rehearsal.__main__ import main

    _data(4).save_to_disk(str(tmp_path / "data"))
    meta = main(
        ["build", "--model", tiny_model_dir, "--dataset", str(tmp_path / "data"), "--reward",
         "tests.rehearsal.conftest:synthetic_reward", "--k", "2", "--max-new-tokens", "2", "--output",
         str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    assert meta == load_meta(tmp_path / "out") and meta["n_prompts"] == 4 and meta["config"]["top_p"] == 0.95
    with pytest.raises(ValueError, match="not a finished rehearsal store"):
        load_meta(tmp_path)
