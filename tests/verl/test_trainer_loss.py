"""The registered trainer's actor loss (``trl_divergences.verl.loss``) on verl-shaped micro-batches: verl's
``ppo_loss`` bit for bit without our step info; with it, against verl's ``ppo_loss`` on hand-built masks and
coefficients (the formulas of the module docstring), in float64."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.verl._batches import actor_config, make_rollouts, micro_batch

pytestmark = pytest.mark.verl

losses = pytest.importorskip("verl.workers.utils.losses")
engine_workers = pytest.importorskip("verl.workers.engine_workers")

from trl_divergences.verl import loss as our_loss  # noqa: E402
from trl_divergences.verl.config import actor_divergence  # noqa: E402

PROMPTS, RESPONSES = [3, 2, 4, 2], [5, 3, 4, 2]


def batch(seed: int = 0, *, entropy: bool = False):
    r = make_rollouts(PROMPTS, RESPONSES, vocab=7, seed=seed)
    lp, _ = r.logps()
    old = lp.detach() + 0.05 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=lp.dtype)
    model_output, data = micro_batch(r, slice(0, 4), old, batch_num_tokens=int(r.mask.sum()), global_batch_size=4)
    ent = None
    if entropy:
        probs = torch.softmax(r.theta, -1)
        ent = -(probs * torch.log_softmax(r.theta, -1)).sum(-1)  # [B, T], with graph
        rows = []
        for i, (p, n) in enumerate(zip(PROMPTS, r.response_lens, strict=True)):
            rows.append(torch.cat([ent.new_zeros(p - 1), ent[i, :n], ent.new_zeros(1)]))
        model_output["entropy"] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    return r, model_output, data, ent


def with_step(data, config, coef=None, kl_loss_type=None, **section):
    """The micro-batch with the trainer's step info for ``section`` (coef and kl type as configured unless given)."""
    from verl.utils import tensordict_utils as tu

    kwargs = {**actor_divergence(config), **section}
    step = {
        "objective": kwargs,
        "coef": config.kl_loss_coef if coef is None else coef,
        "kl_loss_type": kl_loss_type or config.kl_loss_type,
        "divergence": "x",
    }
    data = data.copy()
    tu.assign_non_tensor(data, **{our_loss.STEP_KEY: step})
    return data


def grads(r, loss):
    (g,) = torch.autograd.grad(loss, r.theta)
    return g


def masked_data(data, keep):
    """``data`` with ``response_mask`` = the padded bool ``keep`` (what verl's ppo_loss then masks)."""
    from verl.workers.utils.padding import response_to_nested

    out = data.copy()
    out["response_mask"] = response_to_nested(keep.long(), data["response_mask"])
    return out


def test_the_patched_binding_is_verl_ppo_loss_without_step_info():
    config = actor_config("low_var_kl", coef=0.3)
    r, model_output, data, _ = batch()
    assert engine_workers.ppo_loss is our_loss.ppo_loss
    ours, m1 = engine_workers.ppo_loss(config, model_output, data)
    g1 = grads(r, ours)
    r, model_output, data, _ = batch()
    theirs, m2 = losses.ppo_loss(config, model_output, data)
    assert torch.equal(ours, theirs) and torch.equal(g1, grads(r, theirs))
    assert m1.keys() == m2.keys()


@pytest.mark.parametrize("kl_loss_type", ["low_var_kl", "forward_kl:k3+"])
def test_nothing_selected_equals_verl_ppo_loss(kl_loss_type):
    config = actor_config(kl_loss_type, coef=0.3)
    r, model_output, data, _ = batch(entropy=True)
    ours, metrics = our_loss.ppo_loss(config, model_output, with_step(data, config))
    g1 = grads(r, ours)
    r, model_output, data, _ = batch(entropy=True)
    theirs, _ = losses.ppo_loss(config, model_output, data)
    assert torch.equal(ours, theirs) and torch.equal(g1, grads(r, theirs))
    assert metrics["divergence/coef"] == 0.3


def test_scheduled_coefficient_and_kl_type():
    """Step info coef 0.05 and kl type reverse_kl:k1 = verl's ppo_loss with those in its config."""
    config = actor_config("forward_kl:k3", coef=1.0)
    r, model_output, data, _ = batch(seed=2)
    step_data = with_step(data, config, 0.05, "reverse_kl:k1", coefficient_schedule="forward_then_reverse")
    ours, metrics = our_loss.ppo_loss(config, model_output, step_data)
    g1 = grads(r, ours)
    r, model_output, data, _ = batch(seed=2)
    replaced = dataclasses.replace(config, kl_loss_coef=0.05, kl_loss_type="reverse_kl:k1")
    theirs, _ = losses.ppo_loss(replaced, model_output, data)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-15)
    torch.testing.assert_close(g1, grads(r, theirs), rtol=0, atol=1e-15)
    assert metrics["kl_coef"] == 0.05


def test_entropy_quantile_masks_the_policy_gradient_only():
    """keep = top 20% entropies over the micro-batch's tokens (hand: ≥ the 0.8 quantile); verl's PG term on keep,
    its entropy bonus on every token, the normaliser unchanged (global token count)."""
    config = dataclasses.replace(actor_config("low_var_kl", coef=0.2), entropy_coeff=0.01, calculate_entropy=True)
    r, model_output, data, ent = batch(seed=3, entropy=True)
    section = {"token_masks": ["entropy_quantile"], "token_mask_kwargs": {"entropy_quantile": {"scope": "micro_batch"}}}
    ours, metrics = our_loss.ppo_loss(config, model_output, with_step(data, config, **section))
    g1 = grads(r, ours)

    r, model_output, data, ent = batch(seed=3, entropy=True)
    values = ent.detach()[r.mask]
    keep = r.mask & (ent.detach() >= torch.quantile(values, 0.8))
    assert 0 < keep.sum() < r.mask.sum()
    pg, _ = losses.ppo_loss(
        dataclasses.replace(config, use_kl_loss=False, entropy_coeff=0.0),
        {"log_probs": model_output["log_probs"]},
        masked_data(data, keep),
    )
    lp, lr = r.logps()
    n = r.mask.sum()
    kl = torch.where(r.mask, torch.exp(lr - lp) - (lr - lp) - 1, 0.0).clamp(-10, 10).sum() / n
    entropy_bonus = torch.where(r.mask, ent, 0.0).sum() / n
    expected = pg - 0.01 * entropy_bonus + 0.2 * kl
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g1, grads(r, expected), rtol=1e-10, atol=1e-13)
    assert metrics["mask/entropy_quantile/kept_fraction"].aggregate() == pytest.approx((keep.sum() / n).item())


def test_correct_only_keeps_the_correct_rollouts_tokens():
    config = actor_config("low_var_kl", coef=0.0)
    r, model_output, data, _ = batch(seed=4)
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    step_data = with_step(data, config, token_masks=["correct_only"])
    step_data[our_loss.CORRECT] = correct
    ours, _ = our_loss.ppo_loss(config, model_output, step_data)
    r, model_output, data, _ = batch(seed=4)
    keep = r.mask & correct.bool().unsqueeze(-1)
    theirs, _ = losses.ppo_loss(config, model_output, masked_data(data, keep))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_divergence_weight_scales_each_rollouts_penalty():
    """DADS's per-rollout weights: β · Σ_i w_i Σ_t k(i, t) / N next to verl's PG term (k: our forward_kl:k3+)."""
    config = actor_config("forward_kl:k3+", coef=0.5)
    r, model_output, data, _ = batch(seed=5)
    w = torch.tensor([0.25, 1.0, 0.5, 0.75], dtype=torch.float64)
    step_data = with_step(data, config, advantage_reweighting="dads")
    step_data[our_loss.DIVERGENCE_WEIGHT] = w
    ours, metrics = our_loss.ppo_loss(config, model_output, step_data)
    r, model_output, data, _ = batch(seed=5)
    pg, _ = losses.ppo_loss(dataclasses.replace(config, use_kl_loss=False), model_output, data)
    lp, lr = r.logps()
    # forward KL's k3 value: r·f(1/r) + f'(1)(r − 1) with f(u) = −log u, r = ρ/π: r log r − (r − 1)
    ratio = torch.exp(lr - lp)
    k3 = torch.where(r.mask, ratio * (lr - lp) - (ratio - 1), 0.0)
    expected = pg + 0.5 * (w.unsqueeze(-1) * k3).sum() / r.mask.sum()
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    assert metrics["kl_loss"].aggregate() == pytest.approx(((w.unsqueeze(-1) * k3).sum() / r.mask.sum()).item())


def test_gather_and_reduce_sum_over_a_data_parallel_group():
    """2 gloo processes, uneven lengths: what entropy_quantile's global scope and the masks' metrics rely on."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).with_name("_dist_gather.py"))],
        capture_output=True, text=True, timeout=300, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
