import importlib
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_divergences.toy import evaluate, load_tokenizer, pass_at_k, split_prompts

evaluate_module = importlib.import_module("trl_divergences.toy.evaluate")  # the package re-exports the function


def test_pass_at_k_hand_cases():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(64, 3, 1) == pytest.approx(3 / 64)
    assert pass_at_k(10, 0, 4) == 0.0
    assert pass_at_k(10, 10, 4) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # k > n - c: every k-subset holds a correct sample
    for bad in ((5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    from trl_divergences.toy import build_random_model

    from .conftest import TINY

    other = build_random_model(tmp_path_factory.mktemp("toy") / "other", seed=1, config=TINY)
    return (
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        AutoModelForCausalLM.from_pretrained(other),
        load_tokenizer(tiny_model_dir),
    )


PROMPTS = split_prompts("train")[:4]


def test_evaluate_random_model_in_range_and_seeded(models):
    policy, base, tok = models
    rng = torch.get_rng_state()
    out = evaluate(policy, tok, PROMPTS, n_samples=16, ks=(1, 4, 16), base_model=base, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(out) == {"pass@1", "pass@4", "pass@16", "distinct_correct", "entropy", "forward_kl", "reverse_kl"}
    assert all(math.isfinite(v) for v in out.values())
    assert 0.0 <= out["pass@1"] <= out["pass@4"] <= out["pass@16"] <= 1.0
    assert 0.0 <= out["distinct_correct"] <= 16
    assert 0.0 < out["entropy"] <= math.log(len(tok)) + 1e-5
    assert out["forward_kl"] > 0 and out["reverse_kl"] > 0
    assert evaluate(policy, tok, PROMPTS, n_samples=16, ks=(1, 4, 16), base_model=base, seed=3) == out
    assert policy.training is False and base.training is False


def test_evaluate_against_itself_has_zero_divergence(models):
    policy, _, tok = models
    out = evaluate(policy, tok, PROMPTS, n_samples=8, ks=(1, 8), base_model=policy)
    assert abs(out["forward_kl"]) < 1e-5 and abs(out["reverse_kl"]) < 1e-5
    assert "forward_kl" not in evaluate(policy, tok, PROMPTS, n_samples=8, ks=(1,))


def test_uniform_policy_has_entropy_log_vocab(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # final hidden state 0 -> logits 0 -> uniform over the vocabulary
    tok = load_tokenizer(tiny_model_dir)
    out = evaluate(model, tok, PROMPTS, n_samples=8, ks=(1,))
    assert out["entropy"] == pytest.approx(math.log(len(tok)), abs=1e-5)


def _force_completions(monkeypatch, completions: list[str]) -> None:
    """Make evaluate() see the given completions (each followed by <eos>, then padding) instead of samples."""
    real_sample = evaluate_module._sample

    def fake_sample(model, tokenizer, prompts, n_samples, temperature, batch_size, max_new):
        seqs, mask, prompt_len = real_sample(model, tokenizer, prompts, n_samples, temperature, batch_size, max_new)
        for row, text in enumerate(completions):
            ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
            ids += [tokenizer.pad_token_id] * (max_new - len(ids))
            seqs[row, prompt_len:] = torch.tensor(ids[:max_new])
        return seqs, mask, prompt_len

    monkeypatch.setattr(evaluate_module, "_sample", fake_sample)


def test_evaluate_scores_known_completions(models, monkeypatch):
    policy, _, tok = models
    _force_completions(
        monkeypatch, ["3 17", "3 17", "4 16", "17 3", "3 18", "50 -30", "", "3"]
    )  # 4 correct, 3 distinct
    out = evaluate(policy, tok, ["S 20 ="], n_samples=8, ks=(1, 2, 8))
    assert out["pass@1"] == pytest.approx(4 / 8)
    assert out["pass@2"] == pytest.approx(1 - math.comb(4, 2) / math.comb(8, 2))
    assert out["pass@8"] == 1.0
    assert out["distinct_correct"] == 3


def test_entropy_counts_tokens_up_to_first_eos(models, monkeypatch):
    policy, _, tok = models
    _force_completions(monkeypatch, ["", "3 17"])  # 1 and 3 scored tokens; the padding after <eos> is not scored
    out = evaluate(policy, tok, ["S 20 ="], n_samples=2, ks=(1,))
    seqs = tok(["S 20 = <eos> <pad> <pad> <pad>", "S 20 = 3 17 <eos> <pad>"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        entropies = torch.distributions.Categorical(logits=policy(input_ids=seqs).logits[:, 2:-1]).entropy()
    expected = (entropies[0, :1].sum() + entropies[1, :3].sum()) / 4
    assert out["entropy"] == pytest.approx(expected.item(), rel=1e-5)


def test_evaluate_rejects_k_above_n(models):
    policy, _, tok = models
    with pytest.raises(ValueError):
        evaluate(policy, tok, PROMPTS, n_samples=4, ks=(1, 8))
