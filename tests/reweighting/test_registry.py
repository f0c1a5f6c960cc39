"""The advantage-reweighting registry: names, flags, and construction-time ValueErrors."""

from __future__ import annotations

import pytest

from trl_divergences.reweighting import (
    ADVANTAGE_REWEIGHTINGS,
    AdvantageReweighting,
    get_advantage_reweighting,
    list_advantage_reweightings,
)

NAMES = {"ace", "resrl", "w_reinforce", "dads", "success_adaptive", "paced"}


def test_list_has_exactly_the_design_names() -> None:
    names = list_advantage_reweightings()
    assert sorted(names) == sorted(NAMES)
    assert names == ADVANTAGE_REWEIGHTINGS.names()


@pytest.mark.parametrize("name", sorted(NAMES))
def test_build_sets_name_and_is_stateless(name: str) -> None:
    kwargs = {"alpha": 0.5} if name == "ace" else {}
    method = get_advantage_reweighting(name, **kwargs)
    assert isinstance(method, AdvantageReweighting) and method.name == name
    assert method.state_dict() == {}
    method.load_state_dict({})
    with pytest.raises(ValueError, match="stateless"):
        method.load_state_dict({"step": 1})


def test_flags() -> None:
    ace = get_advantage_reweighting("ace", alpha=0.5)
    assert ace.requires == {"seq_log_ratio"} and ace.needs_reference and not ace.whole_groups_per_process
    resrl = get_advantage_reweighting("resrl")
    assert resrl.requires == {"hidden", "completion_mask"} and resrl.whole_groups_per_process
    assert not resrl.needs_reference
    for name in ("w_reinforce", "dads", "success_adaptive", "paced"):
        method = get_advantage_reweighting(name)
        assert method.requires == frozenset() and not method.needs_reference and not method.whole_groups_per_process


@pytest.mark.parametrize("bad", ["nope", "ACE", "w-reinforce", ""])
def test_unknown_name_lists_the_valid_ones(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        get_advantage_reweighting(bad)
    assert repr(bad) in str(info.value) and all(name in str(info.value) for name in NAMES)


def test_ace_alpha_is_required_and_the_error_suggests_a_sweep() -> None:
    with pytest.raises(ValueError) as info:
        get_advantage_reweighting("ace")
    message = str(info.value)
    assert "'alpha'" in message and "suggested sweep 0.1–1.0" in message
    assert {name: ADVANTAGE_REWEIGHTINGS.required_kwargs(name) for name in NAMES} == {
        name: (["alpha"] if name == "ace" else []) for name in NAMES
    }


def test_unknown_kwarg_names_the_accepted_ones() -> None:
    with pytest.raises(ValueError) as info:
        get_advantage_reweighting("paced", gamma=1.0)
    assert "gamma" in str(info.value) and "alpha" in str(info.value) and "normalize" in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg", "value"),
    [
        ("ace", {"alpha": -1.0}, "alpha", "-1.0"),
        ("ace", {"alpha": float("nan")}, "alpha", "nan"),
        ("ace", {"alpha": True}, "alpha", "True"),
        ("ace", {"alpha": 0.5, "c_clip": -2.0}, "c_clip", "-2.0"),
        ("ace", {"alpha": 0.5, "length_normalize": "yes"}, "length_normalize", "'yes'"),
        ("resrl", {"rank": 0}, "rank", "0"),
        ("resrl", {"rank": 8.0}, "rank", "8.0"),
        ("resrl", {"min_positive_tokens": 1}, "min_positive_tokens", "1"),
        ("resrl", {"max_positive_tokens": 3}, "max_positive_tokens", "3"),
        ("resrl", {"low_quantile": -0.1}, "low_quantile", "-0.1"),
        ("resrl", {"high_quantile": 1.5}, "high_quantile", "1.5"),
        ("resrl", {"low_quantile": 0.8, "high_quantile": 0.2}, "low_quantile", "0.8"),
        ("resrl", {"min_weight": 1.1}, "min_weight", "1.1"),
        ("resrl", {"positive_weight": -0.1}, "positive_weight", "-0.1"),
        ("resrl", {"pca": "svd"}, "pca", "'svd'"),
        ("resrl", {"pca_niter": -1}, "pca_niter", "-1"),
        ("resrl", {"seed": 1.5}, "seed", "1.5"),
        ("w_reinforce", {"positive_weight": -0.1}, "positive_weight", "-0.1"),
        ("w_reinforce", {"mode": "both"}, "mode", "'both'"),
        ("success_adaptive", {"base": 1.5}, "base", "1.5"),
        ("success_adaptive", {"slope": -1.0}, "slope", "-1.0"),
        ("dads", {"scale": 0.0}, "scale", "0.0"),
        ("dads", {"stcr": "true"}, "stcr", "'true'"),
        ("dads", {"stcr_base": 1.0}, "stcr_base", "1.0"),
        ("dads", {"stcr_base": -2.0}, "stcr_base", "-2.0"),
        ("paced", {"alpha": -1.0}, "alpha", "-1.0"),
        ("paced", {"beta": float("inf")}, "beta", "inf"),
        ("paced", {"normalize": "sum"}, "normalize", "'sum'"),
    ],
)
def test_bad_kwargs_raise_naming_method_argument_and_value(name: str, kwargs: dict, arg: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        get_advantage_reweighting(name, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}:") and arg in message and value in message
