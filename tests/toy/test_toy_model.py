import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from trl_divergences.toy import (
    TEACHER_CONFIG,
    VOCAB,
    BaseModelConfig,
    build_base_model,
    build_teacher_model,
    default_cache_dir,
    is_correct,
    load_tokenizer,
)
from trl_divergences.toy import model as model_module
from trl_divergences.toy.model import BUILD_INFO, answer_table

from .conftest import TINY

FAST = {"steps": 4, "batch_size": 8, "warmup_steps": 2}


def test_answer_table_matches_the_recipe():
    config = BaseModelConfig()
    probs, shares = answer_table(config, seed=0)
    assert probs.shape == (80, 50 * 50)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    for i, n in enumerate(range(10, 90)):
        cells = np.flatnonzero(probs[i])
        correct = np.array([is_correct(f"S {n} =", f"{c // 50} {c % 50}") for c in cells])
        assert probs[i, cells[correct]].sum() == pytest.approx(shares[i])
        assert correct.sum() >= 10  # every valid answer has some mass
        # wrong answers are near misses only
        assert all(abs(c // 50 + c % 50 - n) <= 2 for c in cells[~correct])
    hard = shares < config.share_range[0]
    assert 0.1 < hard.mean() < 0.5
    assert shares[hard].min() >= config.hard_share_range[0] and shares[~hard].max() <= config.share_range[1]
    assert not np.array_equal(answer_table(config, seed=1)[0], probs)


def test_build_base_model_is_cached_and_loads(tmp_path, monkeypatch):
    first = build_base_model(tmp_path, config=TINY, progress=False, **FAST)
    assert first.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp dir left
    info = json.loads((first / BUILD_INFO).read_text())
    assert info["config"]["steps"] == FAST["steps"] and info["seed"] == 0

    def no_training(*args, **kwargs):
        raise AssertionError("cached model was rebuilt")

    monkeypatch.setattr(model_module, "_pretrain", no_training)
    assert build_base_model(tmp_path, config=TINY, progress=False, **FAST) == first
    with pytest.raises(AssertionError):
        build_base_model(tmp_path, seed=1, config=TINY, progress=False, **FAST)

    assert AutoConfig.from_pretrained(first).model_type == "qwen2"
    model = AutoModelForCausalLM.from_pretrained(first)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(VOCAB)
    tok = load_tokenizer(first)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.convert_ids_to_tokens(tok("S 14 =")["input_ids"]) == ["S", "14", "="]


def test_build_base_model_is_deterministic(tmp_path):
    a = build_base_model(tmp_path / "a", config=TINY, progress=False, **FAST)
    b = build_base_model(tmp_path / "b", config=TINY, progress=False, **FAST)
    sa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    sb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    init = AutoModelForCausalLM.from_pretrained(model_module.build_random_model(tmp_path / "r", config=TINY))
    assert not torch.equal(init.lm_head.weight, sa["lm_head.weight"])  # the SFT steps did move the seed-0 init


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_DIVERGENCES_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TRL_DIVERGENCES_CACHE")
    assert default_cache_dir().name == "trl_divergences"


def test_teacher_recipe_is_stronger_on_every_prompt():
    _, base_shares = answer_table(BaseModelConfig(), seed=0)
    _, shares = answer_table(TEACHER_CONFIG, seed=0)
    assert shares.min() >= 0.7 and shares.max() <= 0.95  # no hard prompts: mostly correct answers everywhere
    assert shares.mean() > 2 * base_shares.mean()
    assert TEACHER_CONFIG.steps > BaseModelConfig().steps  # trained longer
    assert TEACHER_CONFIG.hidden_size != BaseModelConfig().hidden_size  # the exact path sees H_τ ≠ H


def test_build_teacher_model_is_cached_and_shares_the_tokenizer(tmp_path, monkeypatch):
    small = {"hidden_size": 48, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 1, **FAST}
    teacher = build_teacher_model(tmp_path, progress=False, **small)
    assert teacher.name.startswith("toy-teacher-")
    info = json.loads((teacher / BUILD_INFO).read_text())
    assert info["config"]["share_range"] == [0.7, 0.95] and info["config"]["hard_fraction"] == 0.0
    base = build_base_model(tmp_path, config=TINY, progress=False, **FAST)
    assert base.name.startswith("toy-base-") and base != teacher
    assert load_tokenizer(teacher).get_vocab() == load_tokenizer(base).get_vocab()
    configs = [AutoConfig.from_pretrained(p) for p in (teacher, base)]
    assert configs[0].vocab_size == configs[1].vocab_size and configs[0].hidden_size != configs[1].hidden_size

    def no_training(*args, **kwargs):
        raise AssertionError("cached teacher was rebuilt")

    monkeypatch.setattr(model_module, "_pretrain", no_training)
    assert build_teacher_model(tmp_path, progress=False, **small) == teacher


def test_toy_is_a_leaf():
    code = (
        "import sys, trl_divergences.toy; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'trl' or m.startswith(('trl_divergences.trl', "
        "'trl_divergences.toy.demo'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
