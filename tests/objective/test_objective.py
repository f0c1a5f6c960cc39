"""The objective layer on plain tensors (no framework): requirements per configuration, the per-generation-batch
step and the per-token terms, against hand-computed float64 values."""

from __future__ import annotations

import math

import pytest
import torch

from trl_divergences.masks import TOKEN_MASKS, MaskOutput, TokenBatch, TokenMask
from trl_divergences.objective import (
    FULL,
    Objective,
    RolloutInputs,
    TokenInputs,
    VocabularyRequest,
    importance_weight,
    masked_mean,
)

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# ---- requirements ---------------------------------------------------------------------------------------------------
def test_defaults_are_the_plain_reverse_k3_and_need_nothing_more():
    obj = Objective(coef=0.04)
    r = obj.requirements
    assert obj.plain_reverse_k3 and r.penalty and r.reference_model and r.ref_logps
    assert not (r.ref_hidden or r.vocabulary or r.rollout_statistics or r.token_selection or r.prompt_index)
    assert obj.rollout_request(has_old_logps=False) is None and obj.loss_request() is None
    assert not Objective(coef=0.0).requirements.reference_model


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (dict(divergence="forward_kl", divergence_estimator=FULL, coef=0.1), dict(ref_hidden=True, ref_logps=False)),
        (dict(token_masks=["eksft"]), dict(reference_model=True, ref_hidden=True, token_selection=True)),
        (dict(divergence="lp_reg", coef=1.0), dict(reference_model=False, token_selection=True, penalty=False)),
        (dict(advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5}), dict(reference_model=True)),
        (dict(advantage_reweighting="resrl"), dict(whole_groups=("resrl",), rollout_statistics=True)),
        (
            dict(advantage_reweighting="w_reinforce", reweighting_kwargs={"mode": "nsr"}),
            dict(drops_rollouts=("w_reinforce",)),
        ),
        (dict(curriculum="gaussian"), dict(prompt_index=True, greedy_filter=False)),
        (dict(curriculum="self"), dict(greedy_filter=True, whole_groups=("self",))),
    ],
)
def test_requirements_follow_the_methods_capabilities(config, expected):
    r = Objective(**config).requirements
    for key, value in expected.items():
        assert getattr(r, key) == value, key


def test_vocabulary_requests_at_rollout_and_loss_time():
    obj = Objective(coef=0.2, divergence="js", divergence_estimator=FULL, token_masks=["siren", "eksft"])
    loss = obj.loss_request()
    assert set(loss.exact) == {"divergence", "reverse_kl"} and loss.exact["divergence"].name == "js"
    assert (loss.top_p, loss.top_k, loss.min_p) == (0.8, 10000, None) and loss.needs_reference
    rollout = obj.rollout_request(has_old_logps=True)  # SIREN's anchor is unset: the nucleus of π_old
    assert rollout == VocabularyRequest(top_p=0.8, top_k=10000)
    obj.token_masks[0].set_anchor(1.0)
    assert obj.rollout_request(has_old_logps=True) is None
    lp = Objective(
        divergence="lp_reg",
        divergence_kwargs={"kappa": 0.05},
        token_masks=["low_probability"],
        token_mask_kwargs={"low_probability": {"kappa": 0.05}},
    )
    assert lp.rollout_request(has_old_logps=True) == VocabularyRequest(min_p=0.05)
    ace = Objective(advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5})
    assert ace.rollout_request(has_old_logps=True) is None and ace.rollout_request(has_old_logps=False) is not None


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            dict(divergence="tv", divergence_estimator="k2"),
            "divergence_estimator 'k2' is not supported by divergence 'tv'",
        ),
        (dict(divergence="lp_reg", divergence_estimator=FULL), "valid: k3"),
        (
            dict(
                divergence="lp_reg",
                token_masks=["low_probability"],
                token_mask_kwargs={"low_probability": {"kappa": 0.1}},
            ),
            "kappa must agree",
        ),
        (dict(divergence="js", coefficient_schedule="forward_then_reverse"), "conflicts with it"),
        (dict(token_masks=["siren", "siren"]), "lists a mask twice"),
        (dict(token_mask_kwargs={"siren": {}}), "not in token_masks"),
        (dict(reweighting_kwargs={"alpha": 1.0}), "without a method"),
        (dict(divergence_kwargs=[1]), "divergence_kwargs must be a dict"),
        (dict(coef=float("nan")), "beta .* finite"),
        (dict(correct_reward_threshold=float("inf")), "correct_reward_threshold"),
        (dict(rehearsal_coef=-1.0), "rehearsal_coef"),
    ],
)
def test_conflicts_are_refused_at_construction(config, match):
    with pytest.raises(ValueError, match=match):
        Objective(**config)


def test_layout_checks_name_the_adapters_fields():
    obj = Objective(advantage_reweighting="resrl")
    obj.check_whole_groups(8, 4, rows="rows per rank", group="group size")
    with pytest.raises(ValueError, match=r"resrl needs every prompt's 4 rollouts on one process: rows per rank \(6\)"):
        obj.check_whole_groups(6, 4, rows="rows per rank", group="group size")
    nsr = Objective(advantage_reweighting="w_reinforce", reweighting_kwargs={"mode": "nsr"})
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        nsr.check_token_count_normaliser("loss_agg_mode", "seq-mean-token-sum", ("token-mean",))


# ---- per token ---------------------------------------------------------------------------------------------------
def test_sampled_penalty_with_per_rollout_weights():
    """k3 = r − 1 − log r, r = ρ/π: log r = −0.5 → 0.1065307; log r = 1 → e − 2 = 0.7182818."""
    obj = Objective(coef=0.5)
    terms = obj.token_terms(
        TokenInputs(
            mask=t([[1.0, 1.0]]), logps=t([[-1.0, -2.0]]), ref_logps=t([[-1.5, -1.0]]), divergence_weight=t([2.0])
        )
    )
    k3 = [math.exp(-0.5) - 1 + 0.5, math.e - 2.0]
    torch.testing.assert_close(terms.penalty, t([[0.5 * 2 * k3[0], 0.5 * 2 * k3[1]]]))
    assert terms.pg_keep is None and terms.replaced_pg is None and terms.aux_loss is None
    assert terms.divergence_value == pytest.approx(sum(k3) / 2)
    assert terms.metrics == {
        "divergence/reverse_kl": pytest.approx(sum(k3) / 2),
        "divergence/reverse_kl/k3": pytest.approx(sum(k3) / 2),
        "divergence/coef": 0.5,
    }
    assert obj.token_terms(TokenInputs(mask=t([[1.0]]), logps=t([[-1.0]])), penalty=False).penalty is None


def test_exact_penalty_reads_the_loss_forward_and_masked_tokens_do_not_count():
    obj = Objective(coef=2.0, divergence="forward_kl", divergence_estimator=FULL)
    terms = obj.token_terms(
        TokenInputs(mask=t([[1.0, 0.0]]), logps=t([[-1.0, -1.0]]), vocabulary={"divergence": t([[0.3, 9.0]])})
    )
    torch.testing.assert_close(terms.penalty, t([[0.6, 18.0]]))  # the adapter's normaliser applies the mask
    assert terms.divergence_value == pytest.approx(0.3)


def test_lp_reg_replaces_the_policy_gradient_on_the_tokens_it_selects():
    """ρ = 1: all four negative-advantage tokens are candidates (k = 4); selected where log π < log π_proxy."""
    obj = Objective(divergence="lp_reg", divergence_kwargs={"rho": 1.0}, coef=0.5)
    logps = t([[-3.0, -1.0, -2.0, -0.5]]).requires_grad_()
    proxy = t([[-2.0, -2.0, -1.0, -1e4]])
    terms = obj.token_terms(
        TokenInputs(mask=t([[1.0] * 4]), logps=logps, advantages=t([-1.5]), proxy_logps=proxy, gather=None)
    )
    assert terms.pg_keep.tolist() == [[False, True, False, True]]
    k3 = [math.exp(1.0) - 1 - 1.0, 0.0, math.exp(1.0) - 1 - 1.0, 0.0]  # log r = log π_proxy − log π = 1 on both
    expected = [1.5 + 0.5 * k3[0], 0.0, 1.5 + 0.5 * k3[2], 0.0]  # −A·π/π_old (= 1 on-policy) + coef·k3
    torch.testing.assert_close(terms.replaced_pg, t([expected]))
    assert terms.penalty is None and terms.divergence_value == pytest.approx(k3[0])
    assert terms.metrics["divergence/lp_reg/selected_fraction"] == 0.5
    terms.replaced_pg.sum().backward()  # d/dlp of −A·exp(lp − old) + coef·(exp(lr − lp) − 1 − (lr − lp))
    grad = [1.5 + 0.5 * (1 - math.e), 0.0, 1.5 + 0.5 * (1 - math.e), 0.0]
    torch.testing.assert_close(logps.grad, t([grad]))


def test_masks_compose_with_and_and_log_their_kept_fraction():
    obj = Objective(
        token_masks=["correct_only", "entropy_quantile"], token_mask_kwargs={"entropy_quantile": {"quantile": 0.5}}
    )
    terms = obj.token_terms(
        TokenInputs(
            mask=t([[1.0, 1.0], [1.0, 1.0]]),
            logps=t([[-1.0, -1.0], [-1.0, -1.0]]),
            entropies=t([[0.1, 0.9], [0.8, 0.2]]),
            correct=torch.tensor([True, False]),
        )
    )
    # correct_only keeps row 0; the entropy median (0.5) keeps 0.9 and 0.8
    assert terms.pg_keep.tolist() == [[False, True], [False, False]]
    assert terms.metrics["mask/correct_only/kept_fraction"] == 0.5
    assert terms.metrics["mask/entropy_quantile/kept_fraction"] == 0.5
    assert terms.penalty is None  # coefficient 0


def test_importance_weight_token_and_sequence_level():
    logps, old, mask = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -2.0, 0.0]]), t([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(importance_weight(logps, old, mask), t([[math.exp(0.5), 1.0, math.exp(-3.0)]]))
    torch.testing.assert_close(importance_weight(logps, old, mask, "sequence"), t([[math.exp(0.25)]]))
    on_policy = importance_weight(logps.clone().requires_grad_(), None, mask)
    assert torch.equal(on_policy.detach(), torch.ones_like(logps)) and on_policy.requires_grad
    with pytest.raises(ValueError, match="'token' or 'sequence'"):
        importance_weight(logps, old, mask, "batch")
    assert masked_mean(t([[1.0, 3.0, 100.0]]), mask) == 2.0 and masked_mean(t([[1.0]]), t([[0.0]])) == 0.0


# ---- per generation batch -------------------------------------------------------------------------------------------
def _rollouts(rewards, advantages, **extra) -> RolloutInputs:
    n = len(rewards)
    return RolloutInputs(
        rewards=t(rewards),
        advantages=t(advantages),
        group_ids=torch.arange(n) // 2,
        local=slice(0, n),
        completion_mask=torch.ones(n, 3, dtype=F64),
        **extra,
    )


def test_rollout_step_reweights_schedules_and_updates_the_curriculum():
    obj = Objective(
        coef=0.1,
        advantage_reweighting="w_reinforce",
        coefficient_schedule="accuracy_conditioned",
        curriculum="gaussian",
    )
    obj.curriculum.bind(5)
    x = _rollouts([1.0, 0.0, 0.0, float("nan")], [0.7, -0.7, 0.0, 0.0], prompt_indices=torch.tensor([3, 3, 1, 1]))
    out = obj.rollout_step(x, step=0, max_steps=10, training=True)
    assert out.correct.tolist() == [True, False, False, False]
    assert out.advantages[:3].tolist() == [0.1, -1.0, -1.0]  # +λ / −1, no baseline (λ = 0.1)
    assert obj.coef_now == pytest.approx(0.1 * (math.tanh(0.25) + 1) / 2)  # accuracy 1/4 over all rollouts
    # pass rates: prompt 3 → 0.5, prompt 1 → 0 (the NaN reward counts as incorrect); EMA 0.9 from 0.5
    torch.testing.assert_close(obj.curriculum.pass_rates, t([0.5, 0.45, 0.5, 0.5, 0.5]))
    assert out.metrics["curriculum/gaussian/batch_pass_rate"] == pytest.approx(0.25)
    before = (obj.coef_now, obj.curriculum.pass_rates.clone())
    obj.rollout_step(x, step=1, max_steps=10, training=False)  # evaluation moves no state
    assert obj.coef_now == before[0] and torch.equal(obj.curriculum.pass_rates, before[1])


def test_rollout_step_sets_siren_anchor_and_passes_the_proxy():
    obj = Objective(token_masks=["siren", "low_probability"], token_mask_kwargs={"siren": {"mask_ratio": 0.5}})
    topp = t([[1.0, 3.0, 2.0], [4.0, 0.0, 0.0]])  # peak tokens: row 0 → {3.0}, row 1 → {4.0}
    proxy = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    x = _rollouts([1.0, 0.0], [1.0, -1.0], statistics={"topp_entropy": topp, "proxy_logp": proxy})
    out = obj.rollout_step(x, step=0, max_steps=1, training=True)
    assert obj.token_masks[0].anchor == pytest.approx(3.5)
    assert torch.equal(out.proxy_logps, proxy)
    state = obj.state_dict()
    fresh = Objective(token_masks=["siren", "low_probability"], token_mask_kwargs={"siren": {"mask_ratio": 0.5}})
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_schedule_switches_the_divergence_in_force():
    obj = Objective(
        coef=0.3, divergence="forward_kl", divergence_estimator=FULL, coefficient_schedule="forward_then_reverse"
    )
    x = _rollouts([1.0, 0.0], [1.0, -1.0])
    obj.rollout_step(x, step=0, max_steps=4, training=True)
    assert obj.loss_request().exact["divergence"].name == "forward_kl"
    obj.rollout_step(x, step=2, max_steps=4, training=True)
    assert obj.divergence_now.name == "reverse_kl" and obj.loss_request().exact["divergence"].name == "reverse_kl"
    assert obj.divergence_metrics(1.0)["divergence/reverse_kl/full"] == 1.0


# ---- a new method: its own file plus, for a new tensor, the objective's requirements -----------------------------
class BelowReference(TokenMask):
    """An example mask reading a tensor no built-in mask needs: keep tokens with log π − log ρ below ``margin``."""

    requires = frozenset({"ref_logps"})

    def __init__(self, *, margin: float = 0.0) -> None:
        self.margin = margin

    def __call__(self, batch: TokenBatch) -> MaskOutput:
        return MaskOutput(keep=batch.mask.bool() & (batch.logps - batch.ref_logps < self.margin))


@pytest.fixture
def below_reference():
    TOKEN_MASKS.register_class("below_reference")(BelowReference)
    yield
    del TOKEN_MASKS._entries["below_reference"]


def test_a_new_mask_declares_its_tensor_and_the_objective_asks_for_it(below_reference):
    obj = Objective(token_masks=["below_reference"], token_mask_kwargs={"below_reference": {"margin": 0.25}})
    assert obj.requirements.ref_logps and obj.requirements.reference_model and obj.requirements.token_selection
    terms = obj.token_terms(
        TokenInputs(mask=t([[1.0, 1.0, 1.0]]), logps=t([[-1.0, -1.0, -1.0]]), ref_logps=t([[-1.0, -1.5, -0.5]]))
    )
    assert terms.pg_keep.tolist() == [[True, False, True]]
