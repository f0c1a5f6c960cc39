"""Lp-Reg (divergence ``lp_reg``) against hand-computed values (methods.md §1 "Lp-Reg"; research notes A §3).

Selection: among valid negative-advantage tokens, k = ⌊ρ·n⌋ (none when k ≤ 1), the bottom k by current log π, AND
log π < log π_proxy. Penalty: k3 = clamp(r − 1 − log r, −10, 10), r = π_proxy/π, gradient 1 − r inside the clamp.
Selected-token loss: −A·exp(logp − old) + coef·k3. Every expectation is worked out by hand below.
"""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.divergences.lp_reg import LpReg, low_probability_selection

F64 = torch.float64
E = math.e


def t(rows, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64, requires_grad=grad)


def cells(pairs: list[tuple[int, int]], shape=(4, 6)) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.bool)
    for r, c in pairs:
        out[r, c] = True
    return out


class FakeGather:
    """Concatenates a second process's values after this process's; counts its calls."""

    def __init__(self, other: list[float]) -> None:
        self.other, self.calls = other, 0

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([values, torch.tensor(self.other, dtype=values.dtype)])


# 4 rows × 6 tokens, column 5 is padding (log π −50, the smallest of all, never a candidate).
# row 0 A = −1, row 1 A = +2 (its −9/−8 are no candidates), row 2 A = −0.5, row 3 A = 0 (not negative).
LOGPS = [
    [-0.5, -3.0, -1.0, -6.0, -0.25, -50.0],
    [-9.0, -8.0, -0.5, -0.5, -0.5, -50.0],
    [-2.0, -4.0, -0.125, -5.0, -1.5, -50.0],
    [-10.0, -10.0, -10.0, -10.0, -10.0, -50.0],
]
MASK = [[1, 1, 1, 1, 1, 0]] * 4
ADV = [-1.0, 2.0, -0.5, 0.0]
PROXY_OPEN = [[0.0] * 6] * 4  # every token passes log π < log π_proxy
# candidates, n = 10, ascending: −6 (0,3), −5 (2,3), −4 (2,1), −3 (0,1), −2 (2,0), −1.5 (2,4), −1 (0,2), −0.5 (0,0),
# −0.25 (0,4), −0.125 (2,2)
ASCENDING = [(0, 3), (2, 3), (2, 1), (0, 1), (2, 0), (2, 4), (0, 2), (0, 0), (0, 4), (2, 2)]


@pytest.mark.parametrize(
    "rho, k",
    [(0.3, 3), (0.2, 2), (0.5, 5), (1.0, 10), (0.25, 2), (0.19, 0), (0.1, 0), (0.01, 0)],
)
def test_selection_bottom_k_of_negative_advantage_tokens(rho, k) -> None:
    # ⌊ρ·10⌋ = 3, 2, 5, 10, 2, 1, 1, 0; k ≤ 1 selects nothing (the parameter k is the expected count)
    got = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), rho)
    assert got.dtype == torch.bool
    assert torch.equal(got, cells(ASCENDING[:k]))


def test_selection_requires_logp_below_the_proxy() -> None:
    proxy = [row[:] for row in PROXY_OPEN]
    proxy[0][3] = -1e4  # removed by min-p: never passes, although it has the smallest log π
    proxy[2][3] = -5.0  # equal to log π: the test is strict
    proxy[2][1] = -3.5  # −4 < −3.5: passes
    got = low_probability_selection(t(LOGPS), t(proxy), t(ADV), t(MASK), 0.3)
    # S ⊆ S₀ = the bottom 3: the next candidate (0,1) −3.0 does not move up to replace the failed ones
    assert torch.equal(got, cells([(2, 1)]))


def test_selection_with_per_token_advantages() -> None:
    adv = [[a] * 6 for a in ADV]
    adv[1][0] = -1.0  # (1,0) −9.0 becomes a candidate
    adv[0][3] = 1.0  # (0,3) −6.0 stops being one
    # candidates still n = 10: −9 (1,0), −5 (2,3), −4 (2,1), ...; ρ = 0.3 → k = 3
    got = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(adv), t(MASK), 0.3)
    assert torch.equal(got, cells([(1, 0), (2, 3), (2, 1)]))
    # [B] advantages broadcast like the equivalent [B, T] ones
    same = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t([[a] * 6 for a in ADV]), t(MASK), 0.3)
    assert torch.equal(same, cells(ASCENDING[:3]))


def test_selection_global_scope_uses_the_gathered_candidates() -> None:
    other = [-10.0, -11.0, -12.0, -0.5, -0.25, -0.75, -1.25, -1.75, -2.25, -2.75]
    # n = 10 + 10 = 20, ρ = 0.2 → k = 4; pooled ascending −12, −11, −10, −6 → threshold −6 → local (0,3) only
    gather = FakeGather(other)
    got = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), 0.2, gather)
    assert gather.calls == 1
    assert torch.equal(got, cells([(0, 3)]))
    # the divergence's select() uses the gather only with scope="global"
    gather = FakeGather(other)
    got = LpReg(rho=0.2, scope="global").select(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), gather)
    assert gather.calls == 1 and torch.equal(got, cells([(0, 3)]))
    # micro_batch: local n = 10, k = 2 → (0,3), (2,3); the gather is not called
    gather = FakeGather(other)
    got = LpReg(rho=0.2).select(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), gather)
    assert gather.calls == 0 and torch.equal(got, cells([(0, 3), (2, 3)]))


def test_selection_global_scope_k_counts_other_processes() -> None:
    # locally n = 10 → k = ⌊0.15·10⌋ = 1 → nothing; with another process's 10 candidates (all −0.0625, high)
    # n = 20 → k = 3 → pooled ascending −6, −5, −4 → all three are local
    gather = FakeGather([-0.0625] * 10)
    got = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), 0.15, gather)
    assert torch.equal(got, cells(ASCENDING[:3]))
    assert not low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(ADV), t(MASK), 0.15).any()


def test_selection_float64_kth_value_is_selected() -> None:
    # one negative row, n = 10, ρ = 0.2 → k = 2 → the two smallest, −2.7 and −1.1 (−1.1 is not exact in float32)
    logps = t([[-1.1, -0.3, -2.7, -0.9, -1.0, -0.7, -0.2, -0.5, -0.6, -0.4]])
    got = low_probability_selection(logps, torch.zeros(1, 10, dtype=F64), t([-1.0]), torch.ones(1, 10), 0.2)
    assert torch.equal(got, torch.tensor([[True, False, True] + [False] * 7]))


def test_selection_is_detached_and_empty_batches_are_fine() -> None:
    logps = t(LOGPS, grad=True)
    got = low_probability_selection(logps, t(PROXY_OPEN), t(ADV), t(MASK), 0.3)
    assert not got.requires_grad
    empty = low_probability_selection(t(LOGPS), t(PROXY_OPEN), t(ADV), torch.zeros(4, 6), 0.5)
    assert empty.shape == (4, 6) and not empty.any()


# ---------------------------------------------------------------------------------------------------------------
# sampled k3 toward the proxy
# ---------------------------------------------------------------------------------------------------------------

# (log π, log π_proxy, k3 = clamp(r − 1 − log r, −10, 10), ∂k3/∂log π = 1 − r inside the clamp, else 0)
K3_CASES = [
    (-2.0, -1.0, E - 2.0, 1.0 - E),  # log r = 1
    (-1.0, -2.0, math.exp(-1.0), 1.0 - math.exp(-1.0)),  # log r = −1: e⁻¹ − 1 + 1
    (-0.5, -0.5, 0.0, 0.0),  # r = 1
    (-3.0, -0.5, math.exp(2.5) - 3.5, 1.0 - math.exp(2.5)),  # log r = 2.5: 8.68 < 10
    (-5.0, 0.0, 10.0, 0.0),  # log r = 5: e⁵ − 6 = 142.4 → clamped
    (0.0, -20.0, 10.0, 0.0),  # log r = −20: e⁻²⁰ + 19 → clamped
    (-2.0, -1e4, 10.0, 0.0),  # removed by min-p: clamped, finite
]


def test_sampled_is_clamped_k3_toward_the_proxy() -> None:
    div = td.get_divergence("lp_reg")
    logp = t([c[0] for c in K3_CASES], grad=True)
    value = div.sampled(logp, t([c[1] for c in K3_CASES]))
    torch.testing.assert_close(value, t([c[2] for c in K3_CASES]), rtol=1e-12, atol=1e-12)
    value.sum().backward()
    torch.testing.assert_close(logp.grad, t([c[3] for c in K3_CASES]), rtol=1e-12, atol=1e-12)


def test_sampled_with_a_smaller_clamp() -> None:
    div = td.get_divergence("lp_reg", clamp=0.5)
    logp = t([-2.0, -1.0], grad=True)
    value = div.sampled(logp, t([-1.0, -2.0]))
    # e − 2 = 0.718 → 0.5 (gradient 0); e⁻¹ = 0.368 stays (gradient 1 − e⁻¹)
    torch.testing.assert_close(value, t([0.5, math.exp(-1.0)]), rtol=1e-12, atol=1e-12)
    value.sum().backward()
    torch.testing.assert_close(logp.grad, t([0.0, 1.0 - math.exp(-1.0)]), rtol=1e-12, atol=1e-12)


def test_only_the_k3_estimator() -> None:
    div = td.get_divergence("lp_reg")
    assert div.estimators == ("k3",)
    for estimator in ("k1", "k2", "k3+"):
        with pytest.raises(ValueError, match=estimator.replace("+", r"\+")):
            div.sampled(t([-1.0]), t([-2.0]), estimator=estimator)


# ---------------------------------------------------------------------------------------------------------------
# selected-token loss
# ---------------------------------------------------------------------------------------------------------------

SL_LOGPS = [[-2.0, -1.0, -3.0], [-0.5, -5.0, -2.0]]
SL_OLD = [[-2.25, -1.0, -2.5], [-0.5, -4.5, -2.0]]
SL_PROXY = [[-1.0, -2.0, -0.5], [-0.5, 0.0, -1e4]]
SL_SELECTED = [[True, False, True], [False, True, False]]


@pytest.mark.parametrize("coef", [1.0, 0.5])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_selected_token_loss_value_and_gradient(coef, per_token_adv) -> None:
    # [B] A = [−1, −0.5]; the [B, T] variant differs only on unselected tokens, which must not matter
    adv = t([[-1.0, 3.0, -1.0], [7.0, -0.5, 9.0]]) if per_token_adv else t([-1.0, -0.5])
    logps, old = t(SL_LOGPS, grad=True), t(SL_OLD, grad=True)
    loss, k3 = LpReg().selected_token_loss(logps, old, t(SL_PROXY), adv, torch.tensor(SL_SELECTED), coef)
    # (0,0): ratio e^0.25, −A·ratio = e^0.25; log r = 1 → k3 = e − 2; gradient e^0.25 + coef·(1 − e)
    # (0,2): ratio e^−0.5; log r = 2.5 → k3 = e^2.5 − 3.5; gradient e^−0.5 + coef·(1 − e^2.5)
    # (1,1): ratio e^−0.5, A = −0.5 → 0.5·e^−0.5; log r = 5 → k3 = 10 (clamped, no gradient)
    hand_loss = t(
        [
            [math.exp(0.25) + coef * (E - 2.0), 0.0, math.exp(-0.5) + coef * (math.exp(2.5) - 3.5)],
            [0.0, 0.5 * math.exp(-0.5) + coef * 10.0, 0.0],
        ]
    )
    hand_k3 = t([[E - 2.0, math.exp(-1.0), math.exp(2.5) - 3.5], [0.0, 10.0, 10.0]])
    hand_grad = t(
        [
            [math.exp(0.25) + coef * (1.0 - E), 0.0, math.exp(-0.5) + coef * (1.0 - math.exp(2.5))],
            [0.0, 0.5 * math.exp(-0.5), 0.0],
        ]
    )
    torch.testing.assert_close(loss, hand_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k3, hand_k3, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, hand_grad, rtol=1e-12, atol=1e-12)
    assert old.grad is None  # π_old is detached


# ---------------------------------------------------------------------------------------------------------------
# flags, defaults, registry, validation
# ---------------------------------------------------------------------------------------------------------------


def test_flags_defaults_and_registry() -> None:
    assert "lp_reg" in td.list_divergences()
    div = td.get_divergence("lp_reg")
    assert isinstance(div, LpReg) and div.name == "lp_reg"
    assert div.supports_full is False and div.needs_reference is False
    assert (div.kappa, div.rho, div.clamp, div.scope) == (0.02, 0.01, 10.0, "micro_batch")
    again = td.get_divergence("lp_reg", **td.get_divergence("lp_reg", rho=0.005, scope="global").kwargs())
    assert (again.rho, again.scope) == (0.005, "global")


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"rho": 0.0}, "0.0"),
        ({"rho": 1.5}, "1.5"),
        ({"kappa": 0.0}, "0.0"),
        ({"kappa": 1.25}, "1.25"),
        ({"clamp": 0.0}, "0.0"),
        ({"clamp": -10.0}, "-10.0"),
        ({"scope": "sequence"}, "'sequence'"),
        ({"beta": 1.0}, "'beta'"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_value(kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        td.get_divergence("lp_reg", **kwargs)
    assert shown in str(info.value)
