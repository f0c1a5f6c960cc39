"""The exact path at verl's engine level on CPU: a tiny random Qwen2 through ``FSDPEngineWithLMHead.forward_step``
(built without ``__init__``, as the FSDP engine cannot start on CPU), the ref side emitting final hidden states and
the actor side's loss through the logits-processor hook, against a float64 recomputation with full logits."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from tests.divergences._oracle import oracle
from trl_divergences.verl.full import REF_HIDDEN, LMHeadInput, completion_rows, full_ppo_loss, ref_hidden_loss

pytestmark = pytest.mark.verl

transformer_impl = pytest.importorskip("verl.workers.engine.fsdp.transformer_impl")

PROMPTS = [[3, 5, 7], [2, 9], [4, 4, 6, 1]]
RESPONSES = [[8, 1, 2, 11], [6, 3], [5, 10, 12]]
TEMPERATURE = 0.7


def tiny_qwen2(seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=29,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).float().eval()


def engine(model, monkeypatch):
    from verl.workers.config import FSDPEngineConfig

    monkeypatch.setattr(transformer_impl, "get_device_id", lambda: "cpu")
    monkeypatch.setattr(transformer_impl, "get_device_name", lambda: "cpu")
    eng = object.__new__(transformer_impl.FSDPEngineWithLMHead)
    eng.engine_config = FSDPEngineConfig(use_torch_compile=False)
    eng.module = model
    eng.use_ulysses_sp = False
    eng.ulysses_device_mesh = None
    eng.pad_to_length = False
    eng._autocast_dtype = torch.float32
    eng.compute_entropy_from_logits = transformer_impl.verl_F.entropy_from_logits
    return eng


def micro_batch(old_logps=None, ref_hidden=None, distillation_use_topk=False):
    from verl.utils import tensordict_utils as tu

    samples = []
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        ids = torch.tensor(p + r)
        sample = {
            "prompts": torch.tensor(p),
            "responses": torch.tensor(r),
            "input_ids": ids,
            "position_ids": torch.arange(len(ids)),
            "attention_mask": torch.ones(len(ids), dtype=torch.int64),
            "response_mask": torch.ones(len(r), dtype=torch.int64),
            "loss_mask": torch.ones(len(r), dtype=torch.int64),
            "advantages": torch.full((len(r),), [0.5, -1.0, 0.25][i]),
            "old_log_probs": torch.zeros(len(r)) if old_logps is None else old_logps[i],
        }
        if ref_hidden is not None:
            sample[REF_HIDDEN] = ref_hidden[i]
        samples.append(sample)
    data = tu.list_of_dict_to_tensordict(samples)
    n_tokens = sum(len(r) for r in RESPONSES)
    tu.assign_non_tensor(
        data,
        use_remove_padding=False,
        calculate_entropy=False,
        temperature=TEMPERATURE,
        distillation_use_topk=distillation_use_topk,
        dp_size=1,
        batch_num_tokens=n_tokens,
        global_batch_size=len(PROMPTS),
    )
    return data


def actor_config():
    from verl.workers.config import ActorConfig, PolicyLossConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=3,
        kl_loss_coef=0.3,
        policy_loss=PolicyLossConfig(loss_mode="vanilla"),
    )


def float64_reference(policy, ref, name, kwargs):
    """Full logits of float64 copies of both models at the completion positions: (the copy of the policy, the
    per-response-token D, log π)."""
    policy, ref = copy.deepcopy(policy).double(), copy.deepcopy(ref).double()
    ds, lps = [], []
    for p, r in zip(PROMPTS, RESPONSES):
        ids = torch.tensor([p + r])
        rows = torch.arange(len(p) - 1, len(p) + len(r) - 1)
        z = policy(ids).logits[0, rows] / TEMPERATURE
        zr = ref(ids).logits[0, rows].detach() / TEMPERATURE
        ds.append(oracle(name, torch.softmax(z, -1), torch.softmax(zr, -1), **kwargs))
        lps.append(torch.log_softmax(z, -1).gather(-1, torch.tensor(r).unsqueeze(-1)).squeeze(-1))
    return policy, ds, lps


@pytest.mark.parametrize(("name", "kwargs"), [("forward_kl", {}), ("js", {"beta": 0.3}), ("chi2", {})])
def test_exact_divergence_through_the_engine_matches_float64(name, kwargs, monkeypatch):
    policy, ref = tiny_qwen2(0), tiny_qwen2(1)
    kl_type = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}):full" if kwargs else f"{name}:full"

    # reference side: infer_batch-style forward with the hidden-state loss
    capture = LMHeadInput(ref)
    with torch.no_grad():
        _, out = engine(ref, monkeypatch).forward_step(
            micro_batch(), partial(ref_hidden_loss, capture=capture), forward_only=True
        )
    capture.remove()
    ref_hidden = list(out["model_output"][REF_HIDDEN].unbind())
    assert [h.shape for h in ref_hidden] == [(len(r), 16) for r in RESPONSES]

    # actor side: the logits processor + loss, old log-probs = current (on-policy), zero-mean PG term of its own
    policy64, ds, lps = float64_reference(policy, ref, name, kwargs)
    old = [lp.detach().float() for lp in lps]
    weight = ref.lm_head.weight.detach()
    loss_fn = partial(full_ppo_loss, config=actor_config(), divergence=kl_type, ref_weight=weight)
    data = micro_batch(old_logps=old, ref_hidden=ref_hidden, distillation_use_topk=True)
    loss, out = engine(policy, monkeypatch).forward_step(data, loss_fn, forward_only=False)
    loss.backward()

    n_tokens = sum(len(r) for r in RESPONSES)
    adv = [0.5, -1.0, 0.25]
    want_div = torch.cat(ds).sum() / n_tokens
    want = sum(-a * torch.exp(lp - lp.detach()).sum() for a, lp in zip(adv, lps)) / n_tokens + 0.3 * want_div
    metrics = out["metrics"]
    assert float(metrics["kl_loss"].values[0]) == pytest.approx(want_div.item(), rel=1e-5)
    assert float(metrics[f"divergence/{name}"].values[0]) == pytest.approx(want_div.item(), rel=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)

    want.backward()
    grads64 = dict(policy64.named_parameters())
    for k, p in policy.named_parameters():
        want_grad = grads64[k].grad
        torch.testing.assert_close(p.grad.double(), want_grad, rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_completion_rows_follow_verl_left_shift():
    rows = completion_rows(micro_batch())
    assert rows.tolist() == [2, 3, 4, 5, 8, 9, 14, 15, 16]
