"""Token masks against hand-computed values (methods.md §2; research notes A §3–§5).

Every expected number below is worked out by hand from the formulas (the comments show the arithmetic); the code
under test is never used to produce an expectation. Values are mostly dyadic (exact in float32) so that the
expectations do not depend on the dtype the statistics are computed in; ``test_top_fraction_float64_kth_value`` is
the exception on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch

import trl_divergences as td
from trl_divergences.masks import (
    TOKEN_FIELDS,
    MaskOutput,
    TokenBatch,
    TokenMask,
    compose_token_masks,
    get_token_mask,
    list_token_masks,
)
from trl_divergences.masks.base import top_fraction

F64 = torch.float64


def t(rows, dtype=F64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def b(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


class FakeGather:
    """Concatenates the values of a second process after this process's values; counts its calls."""

    def __init__(self, other: list[float]) -> None:
        self.other = other
        self.calls = 0

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.cat([values, torch.tensor(self.other, dtype=values.dtype)])


# ---------------------------------------------------------------------------------------------------------------
# entropy_quantile
# ---------------------------------------------------------------------------------------------------------------

# valid entropies sorted: [0.25, 0.5, 1.0, 1.5, 2.0, 3.0] (n = 6); the two 9.0 are padding
EQ_ENTROPIES = [[0.5, 1.0, 2.0, 0.25], [3.0, 1.5, 9.0, 9.0]]
EQ_MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]


@pytest.mark.parametrize(
    "quantile, expected",
    [
        # level 1 − 0.5 = 0.5: position 0.5·5 = 2.5 → 1.0 + 0.5·(1.5 − 1.0) = 1.25 → keep 1.5, 2.0, 3.0
        (0.5, [[0, 0, 1, 0], [1, 1, 0, 0]]),
        # level 0.8: position 4.0 → exactly 2.0; "≥" keeps 2.0 itself → keep 2.0, 3.0
        (0.2, [[0, 0, 1, 0], [1, 0, 0, 0]]),
        # level 0.55: position 2.75 → 1.0 + 0.75·0.5 = 1.375 → keep 1.5, 2.0, 3.0
        (0.45, [[0, 0, 1, 0], [1, 1, 0, 0]]),
        # level 0.65: position 3.25 → 1.5 + 0.25·0.5 = 1.625 → keep 2.0, 3.0 (nearest rank would keep 1.5 too)
        (0.35, [[0, 0, 1, 0], [1, 0, 0, 0]]),
        # level 0.25: position 1.25 → 0.5 + 0.25·0.5 = 0.625 → keep 1.0, 1.5, 2.0, 3.0
        (0.75, [[0, 1, 1, 0], [1, 1, 0, 0]]),
        # quantile 1: level 0 → the minimum 0.25 → every valid token, never padding
        (1.0, [[1, 1, 1, 1], [1, 1, 0, 0]]),
    ],
)
def test_entropy_quantile_threshold_is_the_linear_quantile(quantile, expected) -> None:
    mask = get_token_mask("entropy_quantile", quantile=quantile, scope="micro_batch")
    out = mask(TokenBatch(mask=t(EQ_MASK), entropies=t(EQ_ENTROPIES)))
    assert out.keep.dtype == torch.bool
    assert torch.equal(out.keep, b(expected))
    assert out.loss is None


def test_entropy_quantile_defaults_and_padding_never_kept() -> None:
    mask = get_token_mask("entropy_quantile")
    assert mask.quantile == 0.2 and mask.scope == "global"
    assert mask.requires == {"entropies"} and not mask.needs_reference
    # padding has the largest entropies (9.0) but is never kept; no gather = one process
    out = mask(TokenBatch(mask=t(EQ_MASK), entropies=t(EQ_ENTROPIES)))
    assert torch.equal(out.keep, b([[0, 0, 1, 0], [1, 0, 0, 0]]))


def test_entropy_quantile_scope_micro_batch_vs_global() -> None:
    entropies = t([[0.25, 0.5, 1.0, 1.5, 8.0]])
    valid = t([[1, 1, 1, 1, 0]])
    other = [4.0, 5.0, 6.0, 7.0]
    # global: pool [0.25, 0.5, 1.0, 1.5, 4, 5, 6, 7], level 0.25 → position 0.25·7 = 1.75 → 0.5 + 0.75·0.5 = 0.875
    gather = FakeGather(other)
    out = get_token_mask("entropy_quantile", quantile=0.75, scope="global")(
        TokenBatch(mask=valid, entropies=entropies, gather=gather)
    )
    assert gather.calls == 1
    assert torch.equal(out.keep, b([[0, 0, 1, 1, 0]]))
    # micro_batch: local pool [0.25, 0.5, 1.0, 1.5], position 0.25·3 = 0.75 → 0.25 + 0.75·0.25 = 0.4375
    gather = FakeGather(other)
    out = get_token_mask("entropy_quantile", quantile=0.75, scope="micro_batch")(
        TokenBatch(mask=valid, entropies=entropies, gather=gather)
    )
    assert gather.calls == 0
    assert torch.equal(out.keep, b([[0, 1, 1, 1, 0]]))


@pytest.mark.parametrize("scope, other", [("micro_batch", []), ("global", []), ("global", [1.0, 2.0])])
def test_entropy_quantile_all_masked_keeps_nothing(scope, other) -> None:
    batch = TokenBatch(
        mask=torch.zeros(2, 3), entropies=t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), gather=FakeGather(other)
    )
    out = get_token_mask("entropy_quantile", scope=scope)(batch)
    assert out.keep.shape == (2, 3) and not out.keep.any()


# ---------------------------------------------------------------------------------------------------------------
# siren
# ---------------------------------------------------------------------------------------------------------------

SIREN_H = [
    # all 8 valid; sorted [0.1, 0.2, 0.3, 0.4, 0.9, 1.2, 1.5, 1.6], position 0.8·7 = 5.6 → 1.2 + 0.6·0.3 = 1.38
    # → peak {1.6 (t=3), 1.5 (t=6)}; mean 1.55
    [0.1, 0.9, 0.4, 1.6, 0.2, 1.2, 1.5, 0.3],
    # 5 valid; sorted [0.3, 0.5, 0.7, 1.0, 2.0], position 3.2 → 1.0 + 0.2·1.0 = 1.2 → peak {2.0 (t=1)}; padding 5.0
    [0.3, 2.0, 0.5, 0.7, 1.0, 5.0, 5.0, 5.0],
    # 4 valid, all 0.5: τ = 0.5 and nothing is strictly above → empty peak mask → contributes 0
    [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
]
SIREN_MASK = [[1] * 8, [1] * 5 + [0] * 3, [1] * 4 + [0] * 4]
SIREN_PEAK = [[0, 0, 0, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0] * 8]
SIREN_HBAR = (1.55 + 2.0 + 0.0) / 3  # mean over the 3 responses, the empty one counting 0


def test_siren_per_response_peak_mask_and_means() -> None:
    siren = get_token_mask("siren", anchor=0.5)
    means, peak = siren.response_means(t(SIREN_H), t(SIREN_MASK))
    assert torch.equal(peak, b(SIREN_PEAK))
    torch.testing.assert_close(means, t([1.55, 2.0, 0.0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("anchor", [0.5, 2.0])
def test_siren_loss_gradient_and_keep(anchor) -> None:
    coef = 0.005
    h = t(SIREN_H, grad=True)
    out = get_token_mask("siren", anchor=anchor, coef=coef)(TokenBatch(mask=t(SIREN_MASK), topp_entropy=h))
    # loss = coef·(H̄ − anchor)²
    expected = coef * (SIREN_HBAR - anchor) ** 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    # PG term unchanged: keep is exactly the valid mask
    assert torch.equal(out.keep, b(SIREN_MASK))
    assert out.metrics["topp_entropy"] == pytest.approx(SIREN_HBAR, rel=1e-12)
    assert out.metrics["anchor"] == anchor
    assert out.metrics["peak_fraction"] == pytest.approx(3 / 17)  # 3 peak tokens over 8 + 5 + 4 valid
    # gradient 2·coef·(H̄ − a)·∂H̄/∂H, ∂H̄/∂H_{i,t} = 1/(B·|M_i|) on the peak tokens, 0 elsewhere
    out.loss.backward()
    g = 2 * coef * (SIREN_HBAR - anchor)
    hand = torch.zeros(3, 8, dtype=F64)
    hand[0, 3] = hand[0, 6] = g / (3 * 2)
    hand[1, 1] = g / (3 * 1)
    torch.testing.assert_close(h.grad, hand, rtol=1e-12, atol=1e-15)


def test_siren_defaults() -> None:
    siren = get_token_mask("siren")
    assert (siren.top_p, siren.top_k, siren.mask_ratio, siren.coef, siren.anchor) == (0.8, 10000, 0.8, 0.005, None)
    assert siren.requires == {"topp_entropy"} and not siren.needs_reference


def test_siren_without_anchor_raises() -> None:
    siren = get_token_mask("siren")
    with pytest.raises(RuntimeError, match="anchor"):
        siren(TokenBatch(mask=t(SIREN_MASK), topp_entropy=t(SIREN_H)))


def test_siren_state_dict_round_trip() -> None:
    first = get_token_mask("siren")
    assert first.state_dict() == {"anchor": None}
    first.set_anchor(0.75)
    state = first.state_dict()
    assert state == {"anchor": 0.75}
    second = get_token_mask("siren")
    second.load_state_dict(state)
    assert second.anchor == 0.75
    out = second(TokenBatch(mask=t(SIREN_MASK), topp_entropy=t(SIREN_H)))
    assert out.loss.item() == pytest.approx(0.005 * (SIREN_HBAR - 0.75) ** 2, rel=1e-12)
    with pytest.raises(ValueError, match="-0.5"):
        second.set_anchor(-0.5)
    with pytest.raises(ValueError, match="-1.0"):
        second.load_state_dict({"anchor": -1.0})
    with pytest.raises(ValueError, match="expected state"):
        second.load_state_dict({})
    second.load_state_dict({"anchor": None})
    assert second.anchor is None


@pytest.mark.parametrize("vocab_size", [None, 1])
def test_eksft_needs_the_vocabulary_size(vocab_size) -> None:
    mask = get_token_mask("eksft")
    batch = TokenBatch(mask=t([[1, 1]]), entropies=t([[0.5, 0.2]]), reverse_kl=t([[0.1, 0.3]]), vocab_size=vocab_size)
    with pytest.raises(ValueError, match=f"vocab_size must be an integer ≥ 2, got {vocab_size}"):
        mask(batch)


# ---------------------------------------------------------------------------------------------------------------
# eksft
# ---------------------------------------------------------------------------------------------------------------

V = 1000
LOG_V = math.log(V)
# row 0: 10 valid (k = ⌊0.2·10⌋ = 2); row 1: 6 valid (k = ⌊1.2⌋ = 1), padding 9.0 (the largest values)
EK_H = [
    [0.125, 1.5, 0.25, 0.875, 2.5, 0.0625, 0.375, 0.5, 0.625, 0.75],
    [0.5, 0.25, 0.375, 3.0, 2.75, 0.4375, 9.0, 9.0, 9.0, 9.0],
]
EK_KL = [
    [0.25, 0.125, 1.75, 0.0625, 0.1875, 1.25, 0.3125, 0.375, 0.4375, 0.5],
    [0.0625, 0.125, 0.03125, 1.0, 0.875, 0.1875, 9.0, 9.0, 9.0, 9.0],
]
EK_MASK = [[1] * 10, [1] * 6 + [0] * 4]


def positions(cells: list[tuple[int, int]], shape=(2, 10)) -> torch.Tensor:
    out = torch.zeros(shape, dtype=torch.bool)
    for r, c in cells:
        out[r, c] = True
    return out


# per sequence: E = {(0,4) 2.5, (0,1) 1.5, (1,3) 3.0}; K = {(0,2) 1.75, (0,5) 1.25, (1,3) 1.0}
SEQ_E = [(0, 4), (0, 1), (1, 3)]
SEQ_K = [(0, 2), (0, 5), (1, 3)]
SEQ_ENTROPY_TERM = (2.5 + 1.5 + 3.0) / 3 / LOG_V  # 0.3378
SEQ_KL_TERM = (1.75 + 1.25 + 1.0) / 3  # 1.3333


def eksft_batch(grad: bool = False, gather=None) -> tuple[TokenBatch, torch.Tensor, torch.Tensor]:
    h, kl = t(EK_H, grad=grad), t(EK_KL, grad=grad)
    return TokenBatch(mask=t(EK_MASK), entropies=h, reverse_kl=kl, vocab_size=V, gather=gather), h, kl


@pytest.mark.parametrize(
    "kwargs, lam_h, lam_kl",
    [
        # defaults: entropy term 0.3378 < 0.5 → λ_H·1.05; KL term 1.333 ≤ 2.0 → λ_KL·0.95
        ({}, 0.05 * 1.05, 0.05 * 0.95),
        # the other branches: 0.3378 ≥ 0.25 → ·0.95; 1.333 > 1.0 → ·1.05
        ({"entropy_target": 0.25, "kl_target": 1.0}, 0.05 * 0.95, 0.05 * 1.05),
        ({"dynamic_coef": False}, 0.05, 0.05),
        ({"dynamic_coef": False, "entropy_coef": 0.2, "kl_coef": 0.3}, 0.2, 0.3),
    ],
)
def test_eksft_sequence_scope_value_and_gradient(kwargs, lam_h, lam_kl) -> None:
    batch, h, kl = eksft_batch(grad=True)
    out = get_token_mask("eksft", **kwargs)(batch)
    # union of E and K leaves the PG term; keep = valid minus the union
    union = positions(SEQ_E + SEQ_K)
    assert torch.equal(out.keep, b(EK_MASK) & ~union)
    # loss = −λ_H·mean_E[H/log V] + λ_KL·mean_K[KL]
    expected = -lam_h * SEQ_ENTROPY_TERM + lam_kl * SEQ_KL_TERM
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["entropy_term"] == pytest.approx(SEQ_ENTROPY_TERM, rel=1e-12)
    assert out.metrics["kl_term"] == pytest.approx(SEQ_KL_TERM, rel=1e-12)
    assert out.metrics["entropy_fraction"] == pytest.approx(3 / 16)
    assert out.metrics["kl_fraction"] == pytest.approx(3 / 16)
    # gradient only on the selected sets: −λ_H/(|E|·log V) on E for H, λ_KL/|K| on K for KL
    out.loss.backward()
    hand_h = torch.zeros(2, 10, dtype=F64)
    for r, c in SEQ_E:
        hand_h[r, c] = -lam_h / (3 * LOG_V)
    hand_kl = torch.zeros(2, 10, dtype=F64)
    for r, c in SEQ_K:
        hand_kl[r, c] = lam_kl / 3
    torch.testing.assert_close(h.grad, hand_h, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(kl.grad, hand_kl, rtol=1e-12, atol=1e-15)


def test_eksft_intersection() -> None:
    batch, _, _ = eksft_batch()
    out = get_token_mask("eksft", combine="intersection")(batch)
    # E ∩ K = {(1, 3)}
    assert torch.equal(out.keep, b(EK_MASK) & ~positions([(1, 3)]))


def test_eksft_micro_batch_scope() -> None:
    batch, _, _ = eksft_batch()
    out = get_token_mask("eksft", scope="micro_batch", dynamic_coef=False)(batch)
    # n = 16 valid, k = ⌊3.2⌋ = 3 over the flattened micro-batch
    # E = {(1,3) 3.0, (1,4) 2.75, (0,4) 2.5}; K = {(0,2) 1.75, (0,5) 1.25, (1,3) 1.0}
    e, k = [(1, 3), (1, 4), (0, 4)], [(0, 2), (0, 5), (1, 3)]
    assert torch.equal(out.keep, b(EK_MASK) & ~positions(e + k))
    expected = -0.05 * (3.0 + 2.75 + 2.5) / 3 / LOG_V + 0.05 * (1.75 + 1.25 + 1.0) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_eksft_global_scope_with_fake_gather() -> None:
    gather = FakeGather([2.875, 2.625, 0.0, 0.0])
    batch, _, _ = eksft_batch(gather=gather)
    out = get_token_mask("eksft", scope="global", dynamic_coef=False)(batch)
    assert gather.calls == 2  # once for the entropies, once for the KLs
    # n = 16 + 4 = 20, k = 4. Entropy pool top 4: 3.0, 2.875, 2.75, 2.625 → local E = {(1,3), (1,4)}
    # KL pool top 4: 2.875, 2.625, 1.75, 1.25 → local K = {(0,2), (0,5)}
    e, k = [(1, 3), (1, 4)], [(0, 2), (0, 5)]
    assert torch.equal(out.keep, b(EK_MASK) & ~positions(e + k))
    # the terms are means over this micro-batch's selected tokens
    expected = -0.05 * (3.0 + 2.75) / 2 / LOG_V + 0.05 * (1.75 + 1.25) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_eksft_ignores_gather_outside_global_scope() -> None:
    gather = FakeGather([100.0] * 20)
    batch, _, _ = eksft_batch(gather=gather)
    out = get_token_mask("eksft")(batch)
    assert gather.calls == 0
    assert torch.equal(out.keep, b(EK_MASK) & ~positions(SEQ_E + SEQ_K))


@pytest.mark.parametrize("scope", ["sequence", "micro_batch", "global"])
def test_eksft_empty_selection_is_a_finite_zero(scope) -> None:
    h = t([[0.5, 1.0, 2.0, 0.25], [3.0, 1.5, 0.0, 0.0]], grad=True)
    kl = t([[0.5, 1.0, 2.0, 0.25], [3.0, 1.5, 0.0, 0.0]], grad=True)
    mask = t([[1, 1, 0, 0], [1, 1, 0, 0]])  # 2 + 2 valid: k = ⌊0.2·2⌋ = 0 per row, ⌊0.2·4⌋ = 0 over the batch
    out = get_token_mask("eksft", scope=scope)(TokenBatch(mask=mask, entropies=h, reverse_kl=kl, vocab_size=V))
    assert torch.equal(out.keep, mask.bool())
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(kl.grad, torch.zeros_like(kl))


def test_eksft_defaults() -> None:
    m = get_token_mask("eksft")
    assert (m.ratio, m.entropy_coef, m.kl_coef, m.combine, m.dynamic_coef) == (0.2, 0.05, 0.05, "union", True)
    assert (m.entropy_target, m.kl_target, m.scope) == (0.5, 2.0, "sequence")
    assert m.requires == {"entropies", "reverse_kl"} and m.needs_reference


# ---------------------------------------------------------------------------------------------------------------
# low_probability, correct_only
# ---------------------------------------------------------------------------------------------------------------

LP_LOGPS = [[-0.5, -4.0, -1.0, -2.0], [-9.0, -0.125, -0.25, -0.375], [-5.0, -0.25, -3.0, -20.0]]
LP_MASK = [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]
LP_ADV = [-1.0, 1.0, -0.5]  # row 1 is positive: its −9.0 is no candidate
LP_PROXY = [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1e4, 0.0, 0.0, 0.0]]


def lp_batch() -> TokenBatch:
    return TokenBatch(mask=t(LP_MASK), logps=t(LP_LOGPS), advantages=t(LP_ADV), proxy_logps=t(LP_PROXY))


def test_low_probability_removes_the_selection_from_the_pg_term() -> None:
    # candidates: the 4 + 3 valid tokens of rows 0 and 2 (n = 7); ρ = 0.3 → k = ⌊2.1⌋ = 2 → the two smallest log π:
    # −5.0 at (2,0) and −4.0 at (0,1). (2,0) has proxy −1e4 (removed by min-p) → fails; (0,1): −4 < −1 → selected
    out = get_token_mask("low_probability", rho=0.3)(lp_batch())
    expected = b(LP_MASK)
    expected[0, 1] = False
    assert torch.equal(out.keep, expected)
    assert out.loss is None


def test_low_probability_k_at_most_one_selects_nothing() -> None:
    # ρ = 0.25 → k = ⌊1.75⌋ = 1 ≤ 1 → no selection
    out = get_token_mask("low_probability", rho=0.25)(lp_batch())
    assert torch.equal(out.keep, b(LP_MASK))


def test_low_probability_defaults() -> None:
    m = get_token_mask("low_probability")
    assert (m.min_p, m.rho, m.scope) == (0.02, 0.01, "micro_batch")
    assert m.requires == {"logps", "advantages", "proxy_logps"} and not m.needs_reference


def test_correct_only_keeps_the_valid_tokens_of_correct_rows() -> None:
    mask = t([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    out = get_token_mask("correct_only")(TokenBatch(mask=mask, correct=torch.tensor([True, False, True])))
    assert torch.equal(out.keep, b([[1, 1, 0], [0, 0, 0], [1, 0, 0]]))
    assert out.loss is None
    assert get_token_mask("correct_only").requires == {"correct"}


# ---------------------------------------------------------------------------------------------------------------
# compose_token_masks, top_fraction
# ---------------------------------------------------------------------------------------------------------------


class FixedMask(TokenMask):
    def __init__(self, name: str, keep: list, loss: float | None) -> None:
        self.name, self._keep, self._loss = name, keep, loss

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        return MaskOutput(keep=b(self._keep), loss=None if self._loss is None else torch.tensor(self._loss))


def test_compose_ands_keeps_and_sums_losses() -> None:
    valid = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    masks = [
        FixedMask("a", [[1, 1, 0, 1], [1, 1, 1, 1]], 0.25),
        FixedMask("b", [[1, 0, 1, 1], [1, 1, 1, 1]], None),
        FixedMask("c", [[1, 1, 1, 1], [0, 1, 1, 1]], 1.5),
    ]
    keep, loss, outputs = compose_token_masks(masks, TokenBatch(mask=valid))
    # AND of the three keeps and the valid mask (the keeps' padding entries never survive)
    assert torch.equal(keep, b([[1, 0, 0, 0], [0, 1, 0, 0]]))
    assert loss.item() == 0.25 + 1.5
    assert list(outputs) == ["a", "b", "c"] and outputs["b"].loss is None


def test_compose_without_losses_and_with_real_masks() -> None:
    keep, loss, outputs = compose_token_masks([], TokenBatch(mask=t([[1, 0]])))
    assert torch.equal(keep, b([[1, 0]])) and loss is None and outputs == {}
    # two real masks: correct_only drops row 1; entropy_quantile (0.5, micro-batch) keeps 1.5, 2.0, 3.0 (above)
    batch = TokenBatch(mask=t(EQ_MASK), entropies=t(EQ_ENTROPIES), correct=torch.tensor([True, False]))
    masks = [get_token_mask("entropy_quantile", quantile=0.5, scope="micro_batch"), get_token_mask("correct_only")]
    keep, loss, outputs = compose_token_masks(masks, batch)
    assert torch.equal(keep, b([[0, 0, 1, 0], [0, 0, 0, 0]])) and loss is None
    assert set(outputs) == {"entropy_quantile", "correct_only"}
    # two loss-bearing masks: the loss is the sum of SIREN's and EKSFT's
    siren_batch = TokenBatch(
        mask=t(EK_MASK), entropies=t(EK_H), reverse_kl=t(EK_KL), topp_entropy=t(EK_H), vocab_size=V
    )
    siren, eksft = get_token_mask("siren", anchor=1.0), get_token_mask("eksft", dynamic_coef=False)
    # SIREN on EK_H: row 0 sorted [.0625 .125 .25 .375 .5 .625 .75 .875 1.5 2.5], position 7.2 → .875 + .2·.625 = 1.0
    # → peak {1.5, 2.5}, mean 2.0; row 1 sorted [.25 .375 .4375 .5 2.75 3.0], position 4.0 → 2.75 → peak {3.0}
    hbar = (2.0 + 3.0) / 2
    expected = 0.005 * (hbar - 1.0) ** 2 + (-0.05 * SEQ_ENTROPY_TERM + 0.05 * SEQ_KL_TERM)
    keep, loss, _ = compose_token_masks([siren, eksft], siren_batch)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.equal(keep, b(EK_MASK) & ~positions(SEQ_E + SEQ_K))


TF_VALUES = [[0.5, 2.0, 1.0, 2.0, 0.25], [4.0, 0.125, 8.0, 0.0, 0.0]]
TF_MASK = [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]  # 8.0 is padding


@pytest.mark.parametrize(
    "fraction, scope, expected",
    [
        # per row: row 0 k = ⌊0.4·5⌋ = 2 → the two 2.0; row 1 k = ⌊0.8⌋ = 0
        (0.4, "sequence", [[0, 1, 0, 1, 0], [0, 0, 0, 0, 0]]),
        # per row, tie at the k-th: k = ⌊1.0⌋ = 1 → exactly one, the first 2.0 (stable order); row 1 k = ⌊0.4⌋ = 0
        (0.2, "sequence", [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]),
        # row 1 k = ⌊0.6·2⌋ = 1 → 4.0 (never the padding 8.0); row 0 k = 3 → 2.0, 2.0, 1.0
        (0.6, "sequence", [[0, 1, 1, 1, 0], [1, 0, 0, 0, 0]]),
        # flattened: n = 7, k = ⌊3.5⌋ = 3 → 4.0, 2.0, 2.0
        (0.5, "micro_batch", [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]),
        # flattened: k = ⌊2.1⌋ = 2 → 4.0 and the first 2.0
        (0.3, "micro_batch", [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]),
        # global without gather: k = 2 → threshold = 2nd largest = 2.0, ties included → 3 tokens
        (0.3, "global", [[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]),
        # k = ⌊0.1·7⌋ = 0 → none
        (0.1, "global", [[0] * 5, [0] * 5]),
    ],
)
def test_top_fraction_by_hand(fraction, scope, expected) -> None:
    out = top_fraction(t(TF_VALUES), t(TF_MASK), fraction, scope)
    assert out.dtype == torch.bool and torch.equal(out, b(expected))


def test_top_fraction_global_with_gather() -> None:
    gather = FakeGather([5.0, 6.0, 0.0])
    # n = 7 + 3 = 10, k = 3 → pool top 3: 6.0, 5.0, 4.0 → threshold 4.0 → local (1, 0) only
    out = top_fraction(t(TF_VALUES), t(TF_MASK), 0.3, "global", gather)
    assert gather.calls == 1
    assert torch.equal(out, b([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]))


@pytest.mark.parametrize("scope", ["sequence", "micro_batch", "global"])
def test_top_fraction_float64_kth_value(scope) -> None:
    # k = ⌊0.2·10⌋ = 2 → the two largest, 2.7 and 1.1, whatever the scope (1.1 is not exact in float32)
    values = t([[1.1, 0.3, 2.7, 0.9, 1.0, 0.7, 0.2, 0.5, 0.6, 0.4]])
    out = top_fraction(values, torch.ones(1, 10), 0.2, scope)
    assert torch.equal(out, b([[1, 0, 1, 0, 0, 0, 0, 0, 0, 0]]))


# ---------------------------------------------------------------------------------------------------------------
# registry and validation
# ---------------------------------------------------------------------------------------------------------------

MASK_NAMES = ["entropy_quantile", "siren", "eksft", "low_probability", "correct_only"]


def test_registry_lists_exactly_the_masks() -> None:
    assert sorted(list_token_masks()) == sorted(MASK_NAMES)
    assert sorted(td.list_token_masks()) == sorted(MASK_NAMES)
    for name in MASK_NAMES:
        mask = get_token_mask(name)
        assert isinstance(mask, TokenMask) and mask.name == name
        assert mask.requires <= set(TOKEN_FIELDS)


@pytest.mark.parametrize("name", ["entropy_quantile", "eksft", "low_probability", "correct_only"])
def test_stateless_masks(name) -> None:
    mask = get_token_mask(name)
    assert mask.state_dict() == {}
    mask.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        mask.load_state_dict({"step": 3})


def test_unknown_mask_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        get_token_mask("entropy")
    assert "'entropy'" in str(info.value) and all(n in str(info.value) for n in MASK_NAMES)


@pytest.mark.parametrize(
    "name, kwargs, shown",
    [
        ("entropy_quantile", {"quantile": 0.0}, "0.0"),
        ("entropy_quantile", {"quantile": 1.5}, "1.5"),
        ("entropy_quantile", {"quantile": -0.2}, "-0.2"),
        ("entropy_quantile", {"scope": "sequence"}, "'sequence'"),
        ("siren", {"top_p": 0.0}, "0.0"),
        ("siren", {"top_p": 1.25}, "1.25"),
        ("siren", {"top_k": 0}, "0"),
        ("siren", {"mask_ratio": 1.0}, "1.0"),
        ("siren", {"mask_ratio": -0.1}, "-0.1"),
        ("siren", {"coef": -0.005}, "-0.005"),
        ("siren", {"anchor": -1.0}, "-1.0"),
        ("eksft", {"ratio": 0.0}, "0.0"),
        ("eksft", {"ratio": 1.2}, "1.2"),
        ("eksft", {"combine": "xor"}, "'xor'"),
        ("eksft", {"scope": "batch"}, "'batch'"),
        ("eksft", {"dynamic_coef": "yes"}, "'yes'"),
        ("eksft", {"entropy_coef": -1.0}, "-1.0"),
        ("eksft", {"kl_target": 0.0}, "0.0"),
        ("low_probability", {"kappa": 0.0}, "0.0"),
        ("low_probability", {"rho": 2.0}, "2.0"),
        ("low_probability", {"scope": "sequence"}, "'sequence'"),
        ("siren", {"temperature": 1.0}, "'temperature'"),
        ("correct_only", {"rho": 0.1}, "'rho'"),
        ("entropy_quantile", {"top_entropy_quantile": 0.2}, "'top_entropy_quantile'"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_value(name, kwargs, shown) -> None:
    with pytest.raises(ValueError) as info:
        get_token_mask(name, **kwargs)
    assert shown in str(info.value)
