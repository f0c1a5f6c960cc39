"""Every DivergenceGRPOConfig field from TRL's command line (``TrlParser``, as ``trl grpo`` takes arguments) and from
a YAML ``--config`` file, ``*_kwargs`` as JSON strings included."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from trl import GRPOConfig, TrlParser

from trl_divergences import DivergenceGRPOConfig
from trl_divergences.rehearsal.store import META
from trl_divergences.trl.config import JSON_FIELDS

COMMON_ARGV = ["--use_cpu", "--bf16", "false", "--report_to", "none"]
OWN_FIELDS = sorted(
    {f.name for f in dataclasses.fields(DivergenceGRPOConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
)

#: field -> (a non-default value, the other fields it needs); the command line gets JSON for dicts, words for lists
CASES: dict[str, tuple[object, dict[str, object]]] = {
    "divergence": ("js", {}),
    "divergence_estimator": ("full", {}),
    "divergence_kwargs": ({"beta": 0.3}, {"divergence": "js"}),
    "token_masks": (["siren", "correct_only"], {}),
    "token_mask_kwargs": ({"siren": {"coef": 0.01, "top_p": 0.9}}, {"token_masks": ["siren"]}),
    "advantage_reweighting": ("w_reinforce", {}),
    "reweighting_kwargs": ({"alpha": 0.5}, {"advantage_reweighting": "ace"}),
    "curriculum": ("gaussian", {}),
    "curriculum_kwargs": ({"std": 0.2, "mean": 0.4}, {"curriculum": "gaussian"}),
    "coefficient_schedule": ("warmup", {}),
    "schedule_kwargs": ({"warmup_steps": 5}, {"coefficient_schedule": "warmup"}),
    "correct_reward_threshold": (0.5, {}),
    "rehearsal_dataset": ("STORE", {}),
    "rehearsal_divergence": ("js", {}),
    "rehearsal_coef": (0.05, {}),
    "rehearsal_batch_size": (3, {}),
    "rehearsal_kwargs": ({"beta": 0.3, "value_clamp": None}, {"rehearsal_divergence": "js"}),
    "rehearsal_exploration_only": (False, {}),
    "teacher_model": ("some/teacher", {"teacher_method": "kdrl"}),
    "teacher_model_init_kwargs": ({"dtype": "float32"}, {}),
    "teacher_method": ("kdrl", {}),
    "teacher_kwargs": ({"coef": 0.01}, {"teacher_method": "kdrl"}),
    "teacher_reference_model": ("some/base", {"teacher_method": "exopd", "teacher_model": "some/teacher"}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A folder the config accepts as a finished rehearsal store (only its marker file is read at construction)."""
    path = tmp_path_factory.mktemp("store")
    (path / META).write_text('{"n_samples": 1}')
    return str(path)


def _resolve(value: object, store: str) -> object:
    return store if value == "STORE" else value


def _argv_value(value: object) -> list[str]:
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value).lower() if isinstance(value, bool) else str(value)]


def _cli(fields: dict[str, object], tmp_path, extra: list[str] = ()) -> DivergenceGRPOConfig:
    argv = ["--output_dir", str(tmp_path), *COMMON_ARGV, *extra]
    for name, value in fields.items():
        argv += [f"--{name}", *_argv_value(value)]
    (args,) = TrlParser((DivergenceGRPOConfig,)).parse_args_and_config(argv)
    return args


def _yaml(fields: dict[str, object], tmp_path, extra: list[str] = ()) -> DivergenceGRPOConfig:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"use_cpu": True, "bf16": False, "report_to": "none", **fields}))
    argv = ["--config", str(path), "--output_dir", str(tmp_path), *extra]
    (args,) = TrlParser((DivergenceGRPOConfig,)).parse_args_and_config(argv)
    return args


def test_cases_cover_every_field():
    assert sorted(CASES) == OWN_FIELDS
    assert set(JSON_FIELDS) == {name for name, (value, _) in CASES.items() if isinstance(value, dict)}
    defaults = DivergenceGRPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    assert all(getattr(defaults, name) != value for name, (value, _) in CASES.items())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("source", ["cli", "yaml"])
def test_every_field_from_cli_and_yaml(name, source, store, tmp_path):
    value, needs = CASES[name]
    value = _resolve(value, store)
    args = (_cli if source == "cli" else _yaml)({**needs, name: value}, tmp_path)
    assert getattr(args, name) == value
    for other, want in needs.items():
        assert getattr(args, other) == want


@pytest.mark.parametrize("name", JSON_FIELDS)
def test_kwargs_as_json_strings_in_yaml(name, tmp_path):
    value, needs = CASES[name]
    args = _yaml({**needs, name: json.dumps(value)}, tmp_path)
    assert getattr(args, name) == value


def test_command_line_overrides_yaml(tmp_path):
    recipe = {"divergence": "js", "divergence_kwargs": {"beta": 0.3}, "token_masks": ["siren"], "beta": 0.1}
    args = _yaml(recipe, tmp_path, ["--divergence_kwargs", '{"beta": 0.7}', "--token_masks", "eksft", "--beta", "0.2"])
    assert (args.divergence, args.divergence_kwargs, args.token_masks) == ("js", {"beta": 0.7}, ["eksft"])
    assert args.beta == 0.2


def test_grpo_config_fields_from_the_command_line(tmp_path):
    args = _cli(
        {"loss_type": "dapo", "beta": 0.01, "num_generations": 4, "model_init_kwargs": {"dtype": "float32"}}, tmp_path
    )
    assert (args.loss_type, args.beta, args.num_generations, args.model_init_kwargs) == (
        "dapo",
        0.01,
        4,
        {"dtype": "float32"},
    )


@pytest.mark.parametrize("name", JSON_FIELDS)
def test_bad_json_names_the_field(name, tmp_path):
    with pytest.raises(ValueError, match=f"{name} must be a JSON object.*got 'beta=0.3'"):
        _cli({name: "beta=0.3"}, tmp_path)
    with pytest.raises(ValueError, match=f"{name} must be a JSON object.*got \"{{'beta': 0.3}}\""):
        _cli({name: "{'beta': 0.3}"}, tmp_path)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"divergence_kwargs": "[0.3]"}, "divergence_kwargs must be a dict, got list"),
        ({"token_masks": ["siren"], "token_mask_kwargs": '{"siren": 0.1}'}, "token_mask_kwargs\\['siren'\\] must be"),
        ({"divergence": "js", "divergence_kwargs": '{"beta": 2}'}, "js: beta must be in the open interval"),
    ],
)
def test_json_of_the_wrong_shape_fails_at_construction(fields, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _cli(fields, tmp_path)


def test_json_null_is_no_kwargs(tmp_path):
    assert _cli({"divergence_kwargs": "null"}, tmp_path).divergence_kwargs == {}
