"""Independent float64 oracle: the textbook definitions of design.md on probabilities.

Nothing here calls package code: every divergence is written from its definition on the probability vectors
p = π (policy) and q = ρ (reference), summed over the last (vocabulary) dimension, in float64 and differentiable
by plain autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: (name, kwargs) of every divergence configuration the suite checks.
SPECS: list[tuple[str, dict[str, Any]]] = [
    ("reverse_kl", {}),
    ("forward_kl", {}),
    ("js", {"beta": 0.5}),
    ("js", {"beta": 0.1}),
    ("js", {"beta": 0.9}),
    ("tv", {}),
    ("chi2", {}),
    ("hellinger", {}),
    ("alpha", {"alpha": 0.5}),
    ("alpha", {"alpha": 0.3}),
    ("alpha", {"alpha": 0.0}),
    ("alpha", {"alpha": 1.0}),
    ("alpha", {"alpha": 1.5}),
    ("alpha", {"alpha": -0.5}),
]


def spec_id(spec: tuple[str, dict[str, Any]]) -> str:
    name, kw = spec
    return name + "".join(f"-{k}={v}" for k, v in kw.items())


SPEC_IDS = [spec_id(s) for s in SPECS]


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p‖q) = Σ p log(p/q), with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def js(p: Tensor, q: Tensor, beta: float) -> Tensor:
    """β KL(ρ‖M) + (1−β) KL(π‖M), M = βρ + (1−β)π."""
    m = beta * q + (1.0 - beta) * p
    return beta * kl(q, m) + (1.0 - beta) * kl(p, m)


def alpha_div(p: Tensor, q: Tensor, alpha: float) -> Tensor:
    """Amari: (1 − Σ π^α ρ^(1−α)) / (α(1−α)); the α → 1 / α → 0 limits are KL(π‖ρ) / KL(ρ‖π)."""
    if alpha == 1.0:
        return kl(p, q)
    if alpha == 0.0:
        return kl(q, p)
    return (1.0 - (p**alpha * q ** (1.0 - alpha)).sum(-1)) / (alpha * (1.0 - alpha))


ORACLES: dict[str, Callable[..., Tensor]] = {
    "reverse_kl": lambda p, q: kl(p, q),
    "forward_kl": lambda p, q: kl(q, p),
    "js": lambda p, q, beta: js(p, q, beta),
    "tv": lambda p, q: 0.5 * (p - q).abs().sum(-1),
    "chi2": lambda p, q: ((p - q) ** 2 / q).sum(-1),
    "hellinger": lambda p, q: 1.0 - (p * q).sqrt().sum(-1),
    "alpha": lambda p, q, alpha: alpha_div(p, q, alpha),
}


def oracle(name: str, p: Tensor, q: Tensor, **kwargs: Any) -> Tensor:
    """Textbook value of divergence ``name`` between probability vectors p = π and q = ρ (float64)."""
    return ORACLES[name](p.double(), q.double(), **kwargs)


def probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Float64 softmax of (already rounded) logits."""
    return torch.softmax(logits.double() / temperature, dim=-1)


def oracle_from_logits(name: str, policy_logits: Tensor, ref_logits: Tensor, temperature: float = 1.0, **kw) -> Tensor:
    return oracle(name, probs(policy_logits, temperature), probs(ref_logits, temperature), **kw)


def oracle_grad(
    name: str, policy_logits: Tensor, ref_logits: Tensor, weights: Tensor, temperature: float = 1.0, **kw
) -> Tensor:
    """d(Σ weights · D)/d policy_logits by float64 autograd through the textbook formula."""
    z = policy_logits.detach().double().requires_grad_(True)
    value = oracle_from_logits(name, z, ref_logits.detach().double(), temperature, **kw)
    (grad,) = torch.autograd.grad((weights.double() * value).sum(), z)
    return grad


ZERO_MASS = math.exp(-50.0)


def zero_mass_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Probabilities with exact zeros (−inf logits) replaced by e^−50 — base.py's documented zero-mass convention."""
    p = probs(logits, temperature)
    return torch.where(p == 0, torch.full_like(p, ZERO_MASS), p)
