"""The teacher methods' registry: names, the lister, kwargs validation naming the valid choices."""

from __future__ import annotations

import pytest

import trl_divergences as td
from trl_divergences.teacher import TEACHER_METHODS, TeacherMethod, get_teacher_method, list_teacher_methods

NAMES = ["exact_opd", "exopd", "g_opd", "kdrl", "trrd"]


def test_lister() -> None:
    assert sorted(td.list_teacher_methods()) == NAMES
    assert td.list_teacher_methods() == list_teacher_methods() == TEACHER_METHODS.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_method_builds_with_its_defaults(name) -> None:
    method = td.get_teacher_method(name)
    assert isinstance(method, TeacherMethod) and method.name == name
    assert method.__doc__ and method.method_kind == "teacher method"
    req = method.requirements
    assert req.teacher_logps or req.teacher_hidden  # every method reads the teacher


def test_unknown_name_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown teacher method 'opd'; valid choices: kdrl, exact_opd"):
        get_teacher_method("opd")


@pytest.mark.parametrize(
    "name, kwargs, accepted",
    [
        ("kdrl", {"lam": 1.0}, "['coef', 'divergence', 'divergence_kwargs', 'estimator', 'only_incorrect'"),
        ("g_opd", {"alpha": 0.5}, "['lam', 'outcome_weight']"),
        ("trrd", {"clamp": 1.0}, "['alpha', 'log_ratio_clamp']"),
    ],
)
def test_unknown_kwargs_name_the_accepted_ones(name, kwargs, accepted) -> None:
    with pytest.raises(ValueError) as info:
        get_teacher_method(name, **kwargs)
    assert f"teacher method {name!r} got unknown argument(s)" in str(info.value) and accepted in str(info.value)


def test_names_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        td.register_teacher_method("kdrl")(type("Other", (TeacherMethod,), {}))
