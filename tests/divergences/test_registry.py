"""The divergence registry: names, construction, and ValueErrors that name the valid choices."""

from __future__ import annotations

import pytest
import torch

import trl_divergences as td
from trl_divergences.divergences import Divergence, register_divergence

from ._oracle import SPECS

DESIGN_NAMES = ["reverse_kl", "forward_kl", "js", "tv", "chi2", "hellinger", "alpha"]


def test_list_divergences_has_design_names() -> None:
    names = td.list_divergences()
    assert isinstance(names, list) and all(isinstance(n, str) for n in names)
    assert set(DESIGN_NAMES) <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", DESIGN_NAMES)
def test_get_divergence_builds_named_instance(name: str) -> None:
    div = td.get_divergence(name)
    assert isinstance(div, Divergence) and div.name == name
    assert td.get_divergence(div) is div  # an instance passes through
    # kwargs() reproduces the instance
    again = td.get_divergence(name, **div.kwargs())
    assert type(again) is type(div) and again.kwargs() == div.kwargs()


def test_defaults_and_kwargs_round_trip() -> None:
    assert td.get_divergence("js").beta == 0.5
    assert td.get_divergence("alpha").alpha == 0.5
    div = td.get_divergence("js", beta=0.25, log_floor=-30.0)
    assert div.kwargs() == {"beta": 0.25, "log_floor": -30.0}
    assert "0.25" in repr(div)


@pytest.mark.parametrize("bad", ["nope", "kl", "KL", "reverse-kl", ""])
def test_unknown_name_lists_valid_choices(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        td.get_divergence(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert all(name in message for name in DESIGN_NAMES)


def test_non_string_name_raises() -> None:
    with pytest.raises(ValueError, match="reverse_kl"):
        td.get_divergence(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("js", {"beta": 1.5}, "1.5"),
        ("js", {"beta": 0}, "beta"),
        ("js", {"beta": 0.0}, "beta"),
        ("js", {"beta": 1.0}, "beta"),
        ("js", {"beta": -0.2}, "-0.2"),
        ("js", {"beta": float("nan")}, "nan"),
        ("js", {"beta": "0.5"}, "beta"),
        ("js", {"alpha": 0.5}, "beta"),  # unknown kwarg: the accepted ones are named
        ("tv", {"beta": 0.5}, "log_floor"),
        ("reverse_kl", {"temperature": 2.0}, "temperature"),
        ("alpha", {"alpha": float("nan")}, "nan"),
        ("alpha", {"alpha": float("inf")}, "inf"),
        ("alpha", {"alpha": None}, "None"),
        ("alpha", {"alpha": True}, "True"),  # regression (tests/properties): a bool was taken as α = 1
        ("hellinger", {"log_floor": True}, "True"),
        ("alpha", {"beta": 0.5}, "alpha"),
        ("hellinger", {"log_floor": 10.0}, "10.0"),
        ("hellinger", {"log_floor": float("-inf")}, "inf"),
    ],
)
def test_bad_kwargs_raise(name: str, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        td.get_divergence(name, **kwargs)
    assert needle in str(info.value)


def test_unknown_name_with_kwargs_names_the_choices() -> None:
    with pytest.raises(ValueError, match="forward_kl"):
        td.get_divergence("kl", beta=0.5)


def test_kwargs_with_an_instance_raise() -> None:
    with pytest.raises(ValueError):
        td.get_divergence(td.get_divergence("js"), beta=0.3)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="reverse_kl"):

        @register_divergence("reverse_kl")
        class _Again(Divergence):  # noqa: N801
            pass

    assert type(td.get_divergence("reverse_kl")).__name__ == "ReverseKL"  # the original stays registered


def test_ops_accept_names_instances_and_reject_bad_names() -> None:
    z, zr = torch.randn(2, 5), torch.randn(2, 5)
    for name, kw in SPECS:
        by_name = td.ops.logprob_entropy_divergence(z, zr, None, divergence=name, **kw)[2]
        by_instance = td.ops.logprob_entropy_divergence(z, zr, None, divergence=td.get_divergence(name, **kw))[2]
        torch.testing.assert_close(by_name, by_instance, rtol=0, atol=0)
    with pytest.raises(ValueError, match="reverse_kl"):
        td.ops.logprob_entropy_divergence(z, zr, None, divergence="nope")
    with pytest.raises(ValueError, match="1.5"):
        td.ops.logprob_entropy_divergence(z, zr, None, divergence="js", beta=1.5)
