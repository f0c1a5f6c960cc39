"""DivergenceGRPOConfig from random combinations of its fields (the values a YAML recipe or a command line can
give: numbers, strings, bools, lists, dicts, None): it constructs, or it raises a ValueError that names one of the
fields set (its name, its method, or one of its hyper-parameters) — never another exception type, and never
silently when a value is certainly invalid (wrong type, NaN, unknown name or argument)."""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from trl_divergences.curricula import CURRICULA, SCHEDULES
from trl_divergences.divergences import DIVERGENCES
from trl_divergences.masks import TOKEN_MASKS
from trl_divergences.objective import KWARGS_FIELDS
from trl_divergences.registry import Registry
from trl_divergences.rehearsal.loss import REHEARSAL_DIVERGENCES
from trl_divergences.reweighting import ADVANTAGE_REWEIGHTINGS
from trl_divergences.trl import DivergenceGRPOConfig

from ._strategies import examples

COMMON = dict(output_dir="unused", report_to=[], use_cpu=True, bf16=False)
NAN = math.nan
#: each part is certainly invalid with probability 1/12, so that about a third of the configs are fully valid
RARELY = st.sampled_from([False] * 11 + [True])


@dataclass
class Part:
    """One field's drawn value, the words an error about it may use, and whether it is certainly invalid."""

    value: Any
    words: set[str] = field(default_factory=set)
    bad: bool = False


def _hints(factory) -> dict[str, Any]:
    return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)


@st.composite
def _value(draw, hint: Any, default: Any, force_bad: bool = False) -> tuple[Any, bool]:
    """(value, certainly invalid) for a hyper-parameter annotated ``hint`` with ``default`` (invalid if forced)."""
    optional = typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None))
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    good = [st.just(default)] * 8 if default is not inspect.Parameter.empty else []  # mostly the default
    if optional:
        good.append(st.none())
    if base is float:
        good += [st.floats(-2.0, 3.0), st.integers(-2, 5), st.floats(1e-6, 1e6)]
        bad = [st.just(NAN), st.just(math.inf), st.just("0.5"), st.booleans(), st.just([0.5])]
    elif base is int:
        good += [st.integers(-3, 100)]
        bad = [st.just(2.5), st.just("3"), st.booleans(), st.just(NAN)]
    elif base is bool:
        good += [st.booleans()]
        bad = [st.just(1), st.just("true"), st.just(0.5)]
    elif base is str:
        bad = [st.just("no_such_choice"), st.just(3)]
    else:
        raise AssertionError(f"no strategy for {hint}")
    if not optional:
        bad.append(st.none())
    is_bad = force_bad or not good or draw(RARELY)
    return draw(st.one_of(bad if is_bad else good)), is_bad


@st.composite
def _kwargs(draw, registry: Registry, name: str) -> tuple[dict[str, Any], bool]:
    """A random subset of ``name``'s hyper-parameters, sometimes with an unknown one."""
    params = inspect.signature(registry.factory(name)).parameters
    hints = _hints(registry.factory(name))
    chosen = draw(st.lists(st.sampled_from(registry.accepted_kwargs(name)), unique=True)) if params else []
    out, bad = {}, False
    for key in chosen:
        out[key], key_bad = draw(_value(hints[key], params[key].default))
        bad |= key_bad
    if any(k not in out for k in registry.required_kwargs(name)):
        bad = True
    if draw(RARELY):
        out["not_a_parameter"], bad = 1.0, True
    return out, bad


@st.composite
def _method(draw, registry: Registry, field_name: str, kwargs_field: str, words: set[str]) -> dict[str, Part]:
    """``field_name`` (None, a registered name or an unknown one) and its ``kwargs_field``."""
    name = "no_such_method" if draw(RARELY) else draw(st.one_of(st.none(), st.sampled_from(registry.names())))
    if name is None or name == "no_such_method":
        kwargs = {"alpha": 0.5} if draw(RARELY) else {}
        bad = bool(kwargs) or name is not None
    else:
        kwargs, bad = draw(_kwargs(registry, name))
    tags = words | {field_name, kwargs_field, str(name), *kwargs}
    return {field_name: Part(name, tags, name == "no_such_method"), kwargs_field: Part(kwargs, tags, bad)}


@st.composite
def configs(draw) -> dict[str, Part]:
    parts: dict[str, Part] = {}
    div = "kl" if draw(RARELY) else draw(st.sampled_from(DIVERGENCES.names()))
    div_kwargs, div_bad = ({}, False) if div == "kl" else draw(_kwargs(DIVERGENCES, div))
    words = {"divergence", div, *div_kwargs}
    parts["divergence"] = Part(div, words, div == "kl")
    parts["divergence_kwargs"] = Part(div_kwargs, words | {"divergence_kwargs"}, div_bad)
    estimator = "exact" if draw(RARELY) else draw(st.sampled_from(["k1", "k2", "k3", "k3", "k3+", "full"]))
    parts["divergence_estimator"] = Part(estimator, {"estimator", estimator}, estimator == "exact")
    masks = draw(st.lists(st.sampled_from(TOKEN_MASKS.names()), unique=True, max_size=3))
    masks += [draw(st.sampled_from(["nope", *masks[:1]]))] if draw(RARELY) else []
    parts["token_masks"] = Part(masks, {"token mask", *masks}, "nope" in masks or len(set(masks)) < len(masks))
    mask_kwargs, mask_bad = {}, False
    stray = [m for m in TOKEN_MASKS.names() if m not in masks][:1] if draw(RARELY) else []
    known = [m for m in dict.fromkeys(masks) if m in TOKEN_MASKS]
    for mask in (draw(st.lists(st.sampled_from(known), unique=True)) if known else []) + stray:
        mask_kwargs[mask], bad = draw(_kwargs(TOKEN_MASKS, mask))
        mask_bad |= bad or mask not in masks
    parts["token_mask_kwargs"] = Part(mask_kwargs, {"token_mask", *mask_kwargs, *masks}, mask_bad)
    for registry, name, kwargs_name in (
        (ADVANTAGE_REWEIGHTINGS, "advantage_reweighting", "reweighting_kwargs"),
        (CURRICULA, "curriculum", "curriculum_kwargs"),
        (SCHEDULES, "coefficient_schedule", "schedule_kwargs"),
    ):
        parts.update(draw(_method(registry, name, kwargs_name, {registry.kind})))
    threshold = draw(st.sampled_from([NAN, math.inf, "1"])) if draw(RARELY) else draw(st.floats(-1.0, 2.0))
    parts["correct_reward_threshold"] = Part(
        threshold, {"correct_reward_threshold"}, not (isinstance(threshold, float) and math.isfinite(threshold))
    )
    rehearsal = "kl" if draw(RARELY) else draw(st.sampled_from(REHEARSAL_DIVERGENCES))
    parts["rehearsal_divergence"] = Part(rehearsal, {"rehearsal", rehearsal}, rehearsal == "kl")
    coef = draw(st.sampled_from([-0.1, NAN, "0.1"])) if draw(RARELY) else draw(st.floats(0.0, 1.0))
    parts["rehearsal_coef"] = Part(coef, {"rehearsal_coef"}, not (isinstance(coef, float) and coef >= 0))
    size = draw(st.sampled_from([0, 2.5, "2"])) if draw(RARELY) else draw(st.one_of(st.none(), st.integers(1, 8)))
    parts["rehearsal_batch_size"] = Part(
        size, {"rehearsal_batch_size"}, size is not None and not (isinstance(size, int) and size >= 1)
    )
    clamp = draw(st.sampled_from([-1.0, "5"])) if draw(RARELY) else draw(st.sampled_from([None, None, 5.0]))
    rehearsal_kwargs = {} if clamp is None else {"value_clamp": clamp}
    parts["rehearsal_kwargs"] = Part(
        rehearsal_kwargs, {"rehearsal", "value_clamp"}, clamp in (-1.0, "5") or (rehearsal == "nll" and clamp)
    )
    store = "no/such/store" if draw(RARELY) else None
    parts["rehearsal_dataset"] = Part(store, {"rehearsal store"}, store is not None)
    parts["rehearsal_exploration_only"] = Part(draw(st.booleans()))
    loss_type = draw(st.sampled_from(["grpo", "bnpo", "dapo", "dr_grpo"]))
    generations = draw(st.integers(2, 4))
    batch = draw(st.integers(1, 8)) if draw(RARELY) else generations * draw(st.integers(1, 3))
    layout = {"loss_type", "batch", "generation", "num_generations"}
    parts["loss_type"] = Part(loss_type, layout)
    parts["per_device_train_batch_size"] = Part(batch, layout)
    parts["num_generations"] = Part(generations, layout)
    parts["beta"] = Part(draw(st.floats(0.0, 1.0)), {"beta"})
    return parts


@examples(300)
@given(configs())
def test_random_configs_construct_or_name_a_field(parts):
    fields = {name: part.value for name, part in parts.items()}
    try:
        config = DivergenceGRPOConfig(**COMMON, **fields)
    except ValueError as err:
        event("ValueError")
        message = str(err).lower()
        assert any(word.lower() in message for part in parts.values() for word in part.words), message
        return
    event("constructed")
    bad = sorted(name for name, part in parts.items() if part.bad)
    assert not bad, f"accepted certainly invalid {bad}: {[fields[b] for b in bad]}"
    config.build_objective()  # the trainer builds it again from the validated fields


#: (field, its kwargs field, registry) of every kind of method
KINDS = [
    ("divergence", "divergence_kwargs", DIVERGENCES),
    ("token_masks", "token_mask_kwargs", TOKEN_MASKS),
    ("advantage_reweighting", "reweighting_kwargs", ADVANTAGE_REWEIGHTINGS),
    ("curriculum", "curriculum_kwargs", CURRICULA),
    ("coefficient_schedule", "schedule_kwargs", SCHEDULES),
]
WITH_KWARGS = [(kind, name) for kind in KINDS for name in kind[2].names() if kind[2].accepted_kwargs(name)]


@examples(200)
@given(st.sampled_from(WITH_KWARGS), st.data())
def test_one_invalid_hyper_parameter_is_named(kind_and_name, data):
    """Every other field valid, one hyper-parameter of one method certainly invalid: a ValueError naming it."""
    (field_name, kwargs_field, registry), name = kind_and_name
    key = data.draw(st.sampled_from(registry.accepted_kwargs(name)))
    params = inspect.signature(registry.factory(name)).parameters
    value, _ = data.draw(_value(_hints(registry.factory(name))[key], params[key].default, force_bad=True))
    kwargs = {k: 0.5 for k in registry.required_kwargs(name)} | {key: value}
    fields = (
        {field_name: [name], kwargs_field: {name: kwargs}}
        if field_name == "token_masks"
        else {
            field_name: name,
            kwargs_field: kwargs,
        }
    )
    try:
        DivergenceGRPOConfig(**COMMON, **fields)
    except ValueError as err:
        assert key in str(err), str(err)
    else:
        raise AssertionError(f"{name}: {key}={value!r} accepted")


@pytest.mark.parametrize(
    "field_name,value,word",
    [
        *[("divergence", v, "divergence") for v in ("kl", None, 3)],
        *[("divergence_estimator", v, "divergence_estimator") for v in ("exact", None)],
        *[("token_masks", v, "token.mask") for v in ("siren", None, ["nope"], [3], ["siren", "siren"])],
        *[(f, v, w) for f, w in (("advantage_reweighting", "reweighting"), ("curriculum", "curriculum"),
                                 ("coefficient_schedule", "schedule")) for v in ("nope", 3)],
        *[(f, v, f) for f in KWARGS_FIELDS for v in ([], 3, "beta=0.3")],
        *[("correct_reward_threshold", v, "correct_reward_threshold") for v in (NAN, math.inf, "1", None)],
        *[("rehearsal_coef", v, "rehearsal_coef") for v in (-0.1, NAN, "0.1", None)],
        *[("rehearsal_batch_size", v, "rehearsal_batch_size") for v in (0, -2, 2.5, "2")],
        *[("rehearsal_divergence", v, "rehearsal.divergence") for v in ("kl", None, 3)],
        ("rehearsal_dataset", "no/such/store", "rehearsal store"),
    ],
)  # fmt: skip
def test_one_invalid_field_is_named(field_name, value, word):
    with pytest.raises(ValueError, match=word):
        DivergenceGRPOConfig(**COMMON, **{field_name: value})


@pytest.mark.parametrize(
    "fields",
    [
        {"rehearsal_dataset": 3},  # TypeError from pathlib, not a ValueError
        {"rehearsal_exploration_only": "yes"},  # not validated: any value is accepted
        {"correct_reward_threshold": True},  # a bool is taken as 1.0
        {"rehearsal_coef": True},
        {"rehearsal_batch_size": True},
        {"rehearsal_kwargs": {"value_clamp": True}},
    ],
)
def test_config_gaps_found_by_the_properties_are_refused(fields):
    with pytest.raises(ValueError):
        DivergenceGRPOConfig(**COMMON, **fields)
