"""DivergenceGRPOConfig: defaults, validation at construction, and that GRPOConfig fields keep working."""

from __future__ import annotations

import pytest

from trl_divergences import DivergenceGRPOConfig, list_divergences

COMMON = dict(output_dir="unused", report_to=[], use_cpu=True, bf16=False)


def test_defaults_are_trl_behaviour():
    args = DivergenceGRPOConfig(**COMMON)
    assert (args.divergence, args.divergence_estimator, args.divergence_kwargs) == ("reverse_kl", "k3", {})
    assert args.uses_stock_kl


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "js", "tv", "chi2", "hellinger", "alpha"])
def test_every_divergence_accepts_full_k1_k3_k3plus(name):
    for estimator in ("full", "k1", "k3", "k3+"):
        args = DivergenceGRPOConfig(**COMMON, divergence=name, divergence_estimator=estimator)
        assert args.build_objective().divergence.name == name
        assert not args.uses_stock_kl or (name, estimator) == ("reverse_kl", "k3")


def test_unknown_divergence_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown divergence 'kl'.*forward_kl"):
        DivergenceGRPOConfig(**COMMON, divergence="kl")


def test_unsupported_estimator_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="'k2' is not supported by divergence 'forward_kl'; valid: k1, k3, k3\\+, full"
    ):
        DivergenceGRPOConfig(**COMMON, divergence="forward_kl", divergence_estimator="k2")
    with pytest.raises(ValueError, match="'exact'"):
        DivergenceGRPOConfig(**COMMON, divergence_estimator="exact")


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("js", {"beta": 1.5}, "beta must be in the open interval"),
        ("js", {"alpha": 0.5}, "unknown argument.*'alpha'.*accepted: \\['beta', 'log_floor'\\]"),
        ("alpha", {"alpha": float("nan")}, "alpha must be a finite"),
        ("tv", {"log_floor": 3.0}, "log_floor must be a finite negative"),
    ],
)
def test_bad_divergence_kwargs_fail_at_construction(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DivergenceGRPOConfig(**COMMON, divergence=name, divergence_kwargs=kwargs)


def test_grpo_config_fields_still_work():
    args = DivergenceGRPOConfig(
        **COMMON,
        loss_type="dapo",
        top_entropy_quantile=0.2,
        beta=0.01,
        num_generations=4,
        divergence="js",
        divergence_estimator="full",
        divergence_kwargs={"beta": 0.25},
    )
    assert (args.loss_type, args.top_entropy_quantile, args.beta) == ("dapo", 0.2, 0.01)
    assert args.build_objective().divergence.beta == 0.25


def test_list_divergences_covers_config_help():
    help_text = DivergenceGRPOConfig.__dataclass_fields__["divergence"].metadata["help"]
    assert all(name in help_text for name in list_divergences())


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"token_masks": ["nope"]}, "unknown token mask 'nope'; valid choices: entropy_quantile, siren, eksft"),
        ({"token_masks": "siren"}, "token_masks must be a list"),
        ({"token_masks": ["siren", "siren"]}, "lists a mask twice"),
        ({"token_masks": ["siren"], "token_mask_kwargs": {"eksft": {}}}, "not in token_masks: \\['eksft'\\]"),
        ({"token_masks": ["siren"], "token_mask_kwargs": {"siren": {"top_p": 1.5}}}, "siren: top_p must be in"),
        ({"token_masks": ["eksft"], "token_mask_kwargs": {"eksft": {"scope": "rank"}}}, "scope must be one of"),
        ({"advantage_reweighting": "ace"}, "requires argument\\(s\\) \\['alpha'\\].*0.1"),
        ({"advantage_reweighting": "grpo"}, "unknown advantage reweighting 'grpo'; valid choices: ace"),
        ({"reweighting_kwargs": {"alpha": 1.0}}, "reweighting_kwargs given without a method"),
        ({"advantage_reweighting": "w_reinforce", "reweighting_kwargs": {"mode": "psr"}, "loss_type": "grpo"},
         "drops rollouts from the token mean: loss_type must be one of \\('bnpo', 'dapo'\\)"),
        ({"curriculum": "gaussian", "curriculum_kwargs": {"std": 0}}, "gaussian: std must be a positive"),
        ({"curriculum": "self", "curriculum_kwargs": {"refill_rounds": -1}}, "refill_rounds"),
        ({"coefficient_schedule": "forward_then_reverse", "divergence": "js"}, "divergence 'js' conflicts"),
        ({"coefficient_schedule": "forward_then_reverse", "divergence_estimator": "k2"},
         "'k2' is not supported by divergence 'forward_kl'"),
        ({"coefficient_schedule": "warmup", "schedule_kwargs": {"warmup_steps": 3, "warmup_fraction": 0.1}},
         "not both"),
        ({"divergence": "lp_reg", "divergence_estimator": "full"}, "not supported by divergence 'lp_reg'; valid: k3"),
        ({"divergence": "lp_reg", "token_masks": ["low_probability"],
          "token_mask_kwargs": {"low_probability": {"kappa": 0.1}}}, "kappa must agree"),
        ({"correct_reward_threshold": float("nan")}, "correct_reward_threshold must be a finite number"),
    ],
)  # fmt: skip
def test_catalog_errors_name_the_bad_value_at_construction(overrides, match):
    with pytest.raises(ValueError, match=match):
        DivergenceGRPOConfig(**COMMON, **overrides)


def test_catalog_fields_build_their_methods():
    args = DivergenceGRPOConfig(
        **COMMON,
        token_masks=["siren", "correct_only"],
        token_mask_kwargs={"siren": {"coef": 0.01}},
        advantage_reweighting="dads",
        curriculum="gaussian",
        coefficient_schedule="warmup",
        schedule_kwargs={"warmup_steps": 10},
    )
    masks = args.build_objective().token_masks
    assert [m.name for m in masks] == ["siren", "correct_only"] and masks[0].coef == 0.01
    assert args.build_objective().reweighting.name == "dads" and args.build_objective().curriculum.std == 0.35
    assert args.build_objective().schedule.warmup_steps == 10
    assert not args.uses_stock_kl  # a schedule (and DADS's per-rollout weights) need our penalty path
    help_text = {
        f: DivergenceGRPOConfig.__dataclass_fields__[f].metadata["help"] for f in ("token_masks", "curriculum")
    }
    assert "eksft" in help_text["token_masks"] and "self" in help_text["curriculum"]


def test_whole_groups_per_process_is_checked(monkeypatch):
    """With 2 processes, per-device batches of 6 split GRPO groups of 4 across processes: ResRL and SELF refuse."""
    monkeypatch.setattr(DivergenceGRPOConfig, "world_size", property(lambda self: 2))
    layout = dict(per_device_train_batch_size=6, num_generations=4, steps_per_generation=1)
    DivergenceGRPOConfig(**COMMON, **layout)  # TRL accepts it: 12 rollouts per generation batch
    for method in ({"advantage_reweighting": "resrl"}, {"curriculum": "self"}):
        with pytest.raises(ValueError, match="rollouts on one process: .* \\(6\\) must be a multiple of"):
            DivergenceGRPOConfig(**COMMON, **layout, **method)


def test_an_empty_rehearsal_store_is_refused_at_construction(tmp_path):
    from trl_divergences.rehearsal.store import META

    (tmp_path / META).write_text('{"n_samples": 0, "n_perfect": 0}')
    with pytest.raises(ValueError, match="is empty .*nothing to rehearse"):
        DivergenceGRPOConfig(**COMMON, rehearsal_dataset=str(tmp_path))
