"""The study's hinted task: prompts, verifier, splits, the SFT target tables and the cached base-model builder."""

from __future__ import annotations

import numpy as np
import pytest

from trl_divergences.toy import (
    N_TRAIN_POOL,
    HintedModelConfig,
    build_hinted_model,
    hinted_is_correct,
    hinted_pairs,
    hinted_prompt,
    hinted_reward,
    make_hinted_dataset,
    parse_hinted_prompt,
    target_correct_share,
)
from trl_divergences.toy.hinted import N_HINTED_PROMPTS, _hinted_batches, hinted_tables
from trl_divergences.toy.tokenizer import VOCAB


def test_prompt_round_trip_and_verifier():
    assert hinted_prompt(57, 3) == "S 57 3 ="
    assert parse_hinted_prompt(" S 57 3 = ") == (57, 3)
    with pytest.raises(ValueError, match="hinted-task"):
        parse_hinted_prompt("S 57 =")
    p = hinted_prompt(57, 3)
    assert hinted_is_correct(p, "8 49") and hinted_is_correct(p, " 49 8 ")
    assert not hinted_is_correct(p, "3 54")  # the hint's answer breaks the bound b <= 49
    assert not hinted_is_correct(p, "8 48") and not hinted_is_correct(p, "8 49 1") and not hinted_is_correct(p, "")
    assert hinted_reward([p, p], ["8 49", "3 54"]) == [1.0, 0.0]


def test_splits_are_disjoint_and_cover_every_prompt():
    train, heldout = hinted_pairs("train"), hinted_pairs("heldout")
    assert len(train) == N_TRAIN_POOL and len(train) + len(heldout) == N_HINTED_PROMPTS == 4000
    assert set(train).isdisjoint(heldout) and set(train) | set(heldout) == set(hinted_pairs("all"))
    assert hinted_pairs("train") == train  # seeded
    ds = make_hinted_dataset("heldout")
    assert ds[0]["prompt"] == hinted_prompt(*heldout[0])
    assert ds[0]["prompt_id"] == (heldout[0][0] - 10) * 50 + heldout[0][1]
    with pytest.raises(ValueError, match="split"):
        hinted_pairs("test")
    with pytest.raises(ValueError, match="n_train"):
        hinted_pairs("train", n_train=0)


def test_target_table_follows_the_hint():
    config = HintedModelConfig()
    probs, shares = hinted_tables(config, 0)
    assert probs.shape == (80, 50, 50) and np.allclose(probs.sum(-1), 1.0)
    easy = (0.99 <= shares) & (shares <= 0.999)
    hard = (1e-3 <= shares) & (shares <= 1e-2)
    assert np.all(easy | hard | ((0.2 <= shares) & (shares <= 0.9))) and easy.any() and hard.any()
    # n = 20, m = 5: a ≤ 20 only; the mode is a = m; ranks by (|a − m|, a): 5, 4, 6, 3, 7, ...
    row = probs[20 - 10, 5]
    assert np.all(row[21:] == 0.0) and row.argmax() == 5
    h = sum(r**-config.zipf_s for r in range(1, 22))
    assert row[5] == pytest.approx(1 / h, rel=1e-12)
    assert row[4] == pytest.approx(2**-config.zipf_s / h, rel=1e-12)
    assert row[6] == pytest.approx(3**-config.zipf_s / h, rel=1e-12)
    # the correct share of prompt (n, m) is r(n)·P(a ≥ n − 49)
    q = target_correct_share(config)
    assert q[89 - 10, 0] == pytest.approx(shares[79] * probs[79, 0, 40:].sum(), rel=1e-12)
    assert q[20 - 10, 5] == pytest.approx(shares[10], rel=1e-12)  # every a ≤ 20 gives b ≤ 49


def test_sft_batches_are_prompt_then_answer():
    tok = {t: i for i, t in enumerate(VOCAB)}
    value = {i: int(t) for t, i in tok.items() if t.isdigit()}
    batch = next(_hinted_batches(HintedModelConfig(steps=1, batch_size=512), 0))
    assert batch.shape == (512, 7)
    assert (batch[:, 0] == tok["S"]).all() and (batch[:, 3] == tok["="]).all() and (batch[:, 6] == tok["<eos>"]).all()
    truncated = 0
    for row in batch.tolist():
        n, m, a = (value[row[i]] for i in (1, 2, 4))
        assert 10 <= n <= 89 and 0 <= m <= 49 and 0 <= a <= min(49, n)
        if row[5] == tok["<eos>"]:  # a wrong answer stops after a
            truncated += 1
        else:
            assert a + value[row[5]] == n  # every second number is the exact n − a
    assert 0 < truncated < len(batch)


def test_config_rejects_bad_classes():
    with pytest.raises(ValueError, match="easy_fraction"):
        HintedModelConfig(easy_fraction=0.8, hard_fraction=0.3)
    with pytest.raises(ValueError, match="hard_share_range"):
        HintedModelConfig(hard_share_range=(0.0, 0.1))


def test_build_hinted_model_is_cached(tmp_path):
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1, "steps": 2}
    first = build_hinted_model(tmp_path, progress=False, **tiny)
    assert first.name.startswith("toy-hinted-") and (first / "toy_build.json").is_file()
    assert build_hinted_model(tmp_path, progress=False, **tiny) == first
    assert build_hinted_model(tmp_path, progress=False, **{**tiny, "steps": 3}) != first
