"""Our divergences through verl's ``kl_penalty`` and the actor's ``ppo_loss``: expected values and gradients
(exact enumeration over small categoricals and Monte-Carlo) against the float64 oracle, verl-shaped batches,
micro-batch invariance with verl's global batch info, and validation messages."""

from __future__ import annotations

import pytest
import torch

from tests.divergences._oracle import SPEC_IDS, SPECS, oracle
from tests.verl._batches import actor_config, make_rollouts, micro_batch
from trl_divergences import get_divergence

pytestmark = pytest.mark.verl

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
losses = pytest.importorskip("verl.workers.utils.losses")


def kl_name(name: str, kwargs: dict, estimator: str | None = None, plus: str = "") -> str:
    args = "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")" if kwargs else ""
    return f"{name}{args}" + (f":{estimator}" if estimator else "") + plus


def categorical(seed: int, vocab: int = 6):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(vocab, generator=g, dtype=torch.float64).requires_grad_()
    ref = torch.randn(vocab, generator=g, dtype=torch.float64)
    return theta, torch.log_softmax(ref, -1)


def grad_of(fn, theta):
    (g,) = torch.autograd.grad(fn(theta), theta)
    return g


def estimators(name: str) -> list[str]:
    return ["k1", "k3", "k3+"] + (["k2"] if name == "reverse_kl" else [])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_expected_value_and_gradient_exact(spec, seed):
    """E_π[k] by enumeration equals the oracle D for the unbiased estimators, and E_π[∇k] is the README's verl
    gradient table (no importance weight): k1 -> ∇D − Σ_v sg(term_v)∇log π_v, k3 -> the same with term_v + f'(1)ρ_v,
    k3+ / k2 -> ∇D; verl's '+' on any of ours -> ∇KL(π‖ρ)."""
    name, kw = spec
    div = get_divergence(name, **kw)
    theta, lr = categorical(seed)
    q = lr.exp()

    def exact(t):
        return oracle(name, torch.softmax(t, -1), q, **kw)

    grad_d = grad_of(exact, theta)
    grad_rkl = grad_of(lambda t: oracle("reverse_kl", torch.softmax(t, -1), q), theta)
    # ":k3+" is our estimator; verl's "+" is reached after any other estimator or the bare name (k3)
    cases = [(est, "") for est in estimators(name)] + [(None, ""), ("k1", "+"), (None, "+")]
    for spelled, plus in cases:
        est = spelled or "k3+"
        kl_type = kl_name(name, kw, spelled, plus)

        def expected(t, kl_type=kl_type, lr=lr):
            lp = torch.log_softmax(t, -1)
            return (lp.exp().detach() * core_algos.kl_penalty(lp, lr, kl_type)).sum()

        value = expected(theta).detach()
        if est in ("k1", "k3", "k3+"):
            torch.testing.assert_close(value, exact(theta).detach(), rtol=1e-9, atol=1e-12)
        lp = torch.log_softmax(theta, -1).detach()
        term = div.term(*div.floored(lp, lr)).detach()
        shift = {"k1": term, "k3": term + div.f_prime_at_1 * q}.get(est)
        if plus:
            want = grad_rkl
        elif shift is None:
            want = grad_d
        else:
            want = grad_d - grad_of(lambda t, s=shift: (s * torch.log_softmax(t, -1)).sum(), theta)
        torch.testing.assert_close(
            grad_of(expected, theta), want, rtol=1e-8, atol=1e-10, msg=lambda m, k=kl_type: f"{k}: {m}"
        )


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_monte_carlo_value(spec):
    """Mean of kl_penalty over tokens sampled from π -> the oracle D (the bare name, k1, k3+)."""
    name, kw = spec
    theta, lr = categorical(7)
    p = torch.softmax(theta.detach(), -1)
    g = torch.Generator().manual_seed(1)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp = torch.log(p)[y]
    want = oracle(name, p, lr.exp(), **kw)
    for kl_type in (kl_name(name, kw), kl_name(name, kw, "k1"), kl_name(name, kw, "k3+")):
        sample = core_algos.kl_penalty(lp, lr[y], kl_type)
        tol = 6 * sample.std() / sample.numel() ** 0.5 + 1e-12
        assert abs(sample.mean() - want) < tol, (kl_type, float(sample.mean()), float(want))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_ppo_loss_on_verl_batches_and_micro_batch_invariance(spec, mode):
    """With zero advantages ppo_loss is coef · agg(our per-token estimate); summing micro-batches that carry verl's
    global batch info gives the whole batch's loss and gradient."""
    name, kw = spec
    r = make_rollouts([3, 2, 4, 3], [4, 2, 5, 3], vocab=7, seed=3)
    r.advantages.zero_()
    kl_type = kl_name(name, kw, "k3+")
    div = get_divergence(name, **kw)
    lp, lr = r.logps()
    old = lp.detach()
    n_tokens, b = int(r.mask.sum()), len(r.prompt_lens)
    per_token = div.sampled(lp, lr.detach(), "k3+").masked_fill(~r.mask, 0.0)
    if mode == "token-mean":
        want = per_token.sum() / n_tokens
    elif mode == "seq-mean-token-mean":
        want = (per_token.sum(-1) / r.mask.sum(-1)).sum() / b
    else:
        want = per_token.sum(-1).sum() / b
    (want_grad,) = torch.autograd.grad(0.5 * want, r.theta)

    config = actor_config(kl_type, loss_agg_mode=mode, coef=0.5)
    whole, metrics = losses.ppo_loss(config, *micro_batch(r, slice(0, 4), old, n_tokens, b))
    torch.testing.assert_close(whole, 0.5 * want, rtol=1e-10, atol=1e-12)
    parts = [losses.ppo_loss(config, *micro_batch(r, rows, old, n_tokens, b))[0] for rows in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(sum(parts), whole, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(sum(parts), r.theta)
    torch.testing.assert_close(grad, want_grad, rtol=1e-8, atol=1e-12)


def test_verl_names_keep_verl_functions():
    """Our wrappers hand verl's own names to verl's functions: identical values and gradients."""
    from trl_divergences.verl.kl import VERL_FUNCTIONS, VERL_KL_TYPES

    theta, lr = categorical(0)
    for kl_type in [t for t in VERL_KL_TYPES if t != "full"] + ["k3+", "low_var_kl+", "k1+", "abs+"]:
        ours = core_algos.kl_penalty(torch.log_softmax(theta, -1), lr, kl_type)
        verl = VERL_FUNCTIONS["kl_penalty"](torch.log_softmax(theta, -1), lr, kl_type)
        assert torch.equal(ours, verl)
        assert torch.equal(*(torch.autograd.grad(out.sum(), theta)[0] for out in (ours, verl)))
        assert losses.kl_penalty is core_algos.kl_penalty


@pytest.mark.parametrize(
    ("kl_type", "message"),
    [
        (
            "forward_kl:k2",
            "divergence_estimator 'k2' is not supported by divergence 'forward_kl'; valid: k1, k3, k3+, full",
        ),
        ("js(beta=1.5)", "js: beta must be in the open interval (0, 1), got 1.5"),
        ("js(bta=0.5):k3", "divergence 'js' got unknown argument(s) ['bta']; accepted: ['beta', 'log_floor']"),
        ("low_var_k", "unknown divergence 'low_var_k'; valid choices: reverse_kl"),
        ("fwd_kl:k3", "unknown divergence 'fwd_kl'; valid choices: reverse_kl"),
        ("lp_reg", "divergence 'lp_reg' regularizes toward the policy's own proxy"),
        ("js(beta=)", "kwargs must be <name>=<literal>"),
        ("js::k3", "is not of the form <divergence>"),
    ],
)
def test_bad_names_fail_when_the_actor_config_is_built(kl_type, message):
    """verl's ActorConfig (built by validate_config on the driver and by every actor worker) rejects them."""
    with pytest.raises(ValueError) as err:
        actor_config(kl_type)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="is not supported|must be|unknown|regularizes|kwargs|form"):
        core_algos.kl_penalty(torch.zeros(2), torch.zeros(2), kl_type)


def test_full_is_refused_by_the_per_token_kl_penalty():
    with pytest.raises(ValueError, match="exact over the vocabulary"):
        core_algos.kl_penalty(torch.zeros(2), torch.zeros(2), "forward_kl:full")


@pytest.mark.parametrize("kl_type", ["forward_kl:k1", "js(beta=0.3)", "chi2:k3", "hellinger+"])
def test_in_reward_penalty_through_apply_kl_penalty(kl_type):
    """verl's driver-side ``apply_kl_penalty`` (``algorithm.use_kl_in_reward``): rewards − β·(our estimate of the
    rollout policy's log-probs against ρ's), masked."""
    ray_trainer = pytest.importorskip("verl.trainer.ppo.ray_trainer")
    from verl import DataProto

    from trl_divergences.verl.kl import parse_kl_type

    r = make_rollouts([2, 2, 2], [3, 5, 2], vocab=6, seed=5, dtype=torch.float32)
    lp, lr = (t.detach() for t in r.logps())
    scores = torch.zeros(3, 5)
    scores[torch.arange(3), torch.tensor([2, 4, 1])] = torch.tensor([1.0, 0.0, 1.0])
    mask = r.mask.float()
    data = DataProto.from_dict(
        tensors={"old_log_probs": lp, "ref_log_prob": lr, "response_mask": mask, "token_level_scores": scores}
    )
    data, metrics = ray_trainer.apply_kl_penalty(data, core_algos.FixedKLController(kl_coef=0.1), kl_penalty=kl_type)
    spec = parse_kl_type(kl_type)
    per_token = spec.divergence.sampled(lp, lr, spec.estimator) * mask
    torch.testing.assert_close(data.batch["token_level_rewards"], scores - 0.1 * per_token)
    want_kl = ((per_token.sum(-1) / mask.sum(-1)).mean()).item()
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(want_kl, rel=1e-6)
