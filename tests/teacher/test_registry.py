"""The teacher methods' registry (names, the lister, kwargs validation naming the valid choices) and the shared
tokenizer check."""

from __future__ import annotations

import pytest

import trl_divergences as td
from trl_divergences.teacher import (
    TEACHER_METHODS,
    TeacherMethod,
    check_shared_tokenizer,
    get_teacher_method,
    list_teacher_methods,
)
from trl_divergences.toy import build_tokenizer

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


# ---------------------------------------------------------------------------------------------------------------
# the teacher shares the student's tokenizer
# ---------------------------------------------------------------------------------------------------------------


def test_shared_tokenizer_passes() -> None:
    check_shared_tokenizer(build_tokenizer(), build_tokenizer(), student_vocab_size=105, teacher_vocab_size=105)


def test_different_tokenizer_is_refused_naming_both() -> None:
    teacher = build_tokenizer()
    teacher.add_tokens(["<think>"])
    with pytest.raises(ValueError) as info:
        check_shared_tokenizer(build_tokenizer(), teacher, student_name="toy-base", teacher_name="big-teacher")
    message = str(info.value)
    assert "teacher 'big-teacher'" in message and "student 'toy-base'" in message
    assert "105 vs 106 tokens" in message and "only the teacher's: ['<think>'] (1)" in message


def test_renumbered_tokens_and_eos_are_refused() -> None:
    class Fake:
        def __init__(self, vocab, eos):
            self.vocab, self.eos_token_id = vocab, eos

        def get_vocab(self):
            return self.vocab

    with pytest.raises(ValueError, match=r"different ids: \['a', 'b'\] \(2\)"):
        check_shared_tokenizer(Fake({"a": 0, "b": 1}, 0), Fake({"a": 1, "b": 0}, 0))
    with pytest.raises(ValueError, match="EOS ids differ \\(student 0, teacher 1\\)"):
        check_shared_tokenizer(Fake({"a": 0, "b": 1}, 0), Fake({"a": 0, "b": 1}, 1))
    with pytest.raises(ValueError, match="student's lm_head has 128 rows, the teacher's 130"):
        check_shared_tokenizer(Fake({"a": 0}, 0), Fake({"a": 0}, 0), student_vocab_size=128, teacher_vocab_size=130)


def test_capabilities() -> None:
    flags = {
        n: (m.adds_penalty, m.replaces_advantages, m.anchors_ratio) for n in NAMES for m in [get_teacher_method(n)]
    }
    assert flags == {
        "exact_opd": (True, False, False),
        "exopd": (False, True, False),
        "g_opd": (False, True, False),
        "kdrl": (True, False, False),
        "trrd": (False, False, True),
    }
