"""With the importance weight w = π/π_old (TRL's use_bias_correction_kl), every estimator's expected gradient is the
exact ∇D_f(π‖ρ), on- and off-policy. Expectations are exact sums over a small float64 categorical."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td

CASES = [
    (name, kwargs, estimator)
    for name, kwargs in [
        ("reverse_kl", {}),
        ("forward_kl", {}),
        ("js", {"beta": 0.3}),
        ("chi2", {}),
        ("hellinger", {}),
        ("alpha", {"alpha": 0.3}),
        ("tv", {}),
    ]
    for estimator in td.get_divergence(name, **kwargs).estimators
]


def _expected_weighted_gradient(div, z, lr, z_old, estimator):
    """Σ_v π_old(v) ∇_z [w(v)·est(v)] with w = π(v)/π_old(v) carrying its graph."""
    lp = torch.log_softmax(z, -1)
    lp_old = torch.log_softmax(z_old, -1).detach()
    weight = torch.exp(lp - lp_old)
    est = div.sampled(lp, lr, estimator, importance_weight=weight)
    return torch.autograd.grad((lp_old.exp() * est).sum(), z)[0]


@pytest.mark.parametrize("name,kwargs,estimator", CASES, ids=[f"{n}-{e}" for n, _, e in CASES])
@pytest.mark.parametrize("off_policy", [False, True], ids=["on-policy", "off-policy"])
def test_weighted_estimators_have_the_exact_gradient(name, kwargs, estimator, off_policy):
    torch.manual_seed(0)
    div = td.get_divergence(name, **kwargs)
    z = torch.randn(7, dtype=torch.float64, requires_grad=True)
    lr = torch.log_softmax(torch.randn(7, dtype=torch.float64), -1)
    z_old = z.detach() + (0.5 * torch.randn(7, dtype=torch.float64) if off_policy else 0.0)
    got = _expected_weighted_gradient(div, z, lr, z_old, estimator)
    want = torch.autograd.grad(div.full(z, lr), z)[0]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_trl_k3_with_weight_is_reverse_not_forward_kl_gradient():
    """The fact behind TRL's default: unweighted k3 follows ∇KL(ρ‖π); weighted k3 follows ∇KL(π‖ρ)."""
    torch.manual_seed(1)
    rkl, fkl = td.get_divergence("reverse_kl"), td.get_divergence("forward_kl")
    z = torch.randn(6, dtype=torch.float64, requires_grad=True)
    lr = torch.log_softmax(torch.randn(6, dtype=torch.float64), -1)
    p = torch.softmax(z, -1).detach()
    plain = torch.autograd.grad((p * rkl.sampled(torch.log_softmax(z, -1), lr, "k3")).sum(), z)[0]
    weighted = _expected_weighted_gradient(rkl, z, lr, z.detach(), "k3")
    torch.testing.assert_close(plain, torch.autograd.grad(fkl.full(z, lr), z)[0])
    torch.testing.assert_close(weighted, torch.autograd.grad(rkl.full(z, lr), z)[0])
    assert not torch.allclose(plain, weighted)
