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
        assert args.build_divergence().name == name
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
    assert args.build_divergence().beta == 0.25


def test_list_divergences_covers_config_help():
    help_text = DivergenceGRPOConfig.__dataclass_fields__["divergence"].metadata["help"]
    assert all(name in help_text for name in list_divergences())
