"""The ``trl_divergences`` command: its loaders (local folders only, no downloads), every recipe in
examples/recipes trained for 2 steps on a tiny toy model, and one run of the command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from trl_divergences import cli
from trl_divergences.loading import load_tokenizer
from trl_divergences.toy import BaseModelConfig, build_random_model, make_dataset, parse_prompt, sum_reward
from trl_divergences.trl.config import DivergenceGRPOConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "examples" / "recipes"
TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
#: recipe -> a metric key its family logs every step
FAMILIES = {
    "divergence_sampled": "divergence/forward_kl/k3",
    "exact_divergence": "divergence/js/full",
    "token_masks": "mask/siren/kept_fraction",
    "reweighting": "reweighting/ace/modulated_fraction",
    "curriculum": "curriculum/gaussian/effective_prompts",
    "schedule": "divergence/coef",
    "rehearsal": "rehearsal/forward_kl",
    "lp_reg": "divergence/lp_reg/selected_fraction",
}
#: the small run every recipe is overridden to (the recipes themselves run the demo's sizes on the toy base model)
SMALL = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4", "--logging_steps", "1"]
OWN_FIELDS = set(DivergenceGRPOConfig.__dataclass_fields__) - set(DivergenceGRPOConfig.__mro__[1].__dataclass_fields__)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build_random_model(tmp_path_factory.mktemp("tiny") / "model", seed=0, config=TINY))


def even_targets_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """1 for every completion of a prompt with an even target: those prompts are perfect for the store."""
    return [float(parse_prompt(p) % 2 == 0) for p in prompts]


@pytest.fixture(scope="module")
def store(tiny_model_dir, tmp_path_factory) -> str:
    """A rehearsal store of the tiny model on 8 toy training prompts (the even ones perfect)."""
    from transformers import AutoModelForCausalLM

    from trl_divergences.rehearsal.build import BuildConfig, build_store

    path = tmp_path_factory.mktemp("store") / "s"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dataset = make_dataset("train").select(range(8))
    build_store(
        model, load_tokenizer(tiny_model_dir), dataset, even_targets_reward, path, BuildConfig(k=2, max_new_tokens=3)
    )
    return str(path)


def _overrides(name: str, model: str, store: str, out: Path) -> list[str]:
    extra = ["--rehearsal_dataset", store] if name == "rehearsal" else []
    return ["--model_name_or_path", model, "--output_dir", str(out), "--disable_tqdm", "true", *SMALL, *extra]


# ---- loaders (trl_divergences.loading, with the field named in the errors) ---------------------------------
def test_reward_funcs_load_and_bad_ones_name_the_field():
    assert cli.load_reward_funcs(["trl_divergences.toy:sum_reward"]) == [sum_reward]
    for spec, match in [
        ("trl_divergences.toy.sum_reward", "expected 'package.module:function'"),
        ("no_such_module_xyz:f", "No module named 'no_such_module_xyz'"),
        ("trl_divergences.toy:nope", "has no callable 'nope'"),
        ("trl_divergences.toy:N_TRAIN", "has no callable 'N_TRAIN'"),
    ]:
        with pytest.raises(ValueError, match=f"reward_funcs '{spec}': .*{match}"):
            cli.load_reward_funcs([spec])
    with pytest.raises(ValueError, match="reward_funcs is required"):
        cli.load_reward_funcs([])


def test_reward_modules_in_the_working_directory_are_importable(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_cli_test.py").write_text("def score(prompts, completions, **kw):\n    return [1.0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    (func,) = cli.load_reward_funcs(["my_rewards_for_cli_test:score"])
    assert func([], []) == [1.0]


def test_dataset_from_local_folders_and_loaders(tmp_path):
    rows = {"prompt": ["S 12 =", "S 40 ="]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows["prompt"]))
    for name in ("one", "dict", "files"):
        assert cli.load_split(str(tmp_path / name), "train")["prompt"] == rows["prompt"]
    heldout = cli.load_split("trl_divergences.toy:make_dataset", "heldout")
    assert heldout["prompt"] == make_dataset("heldout")["prompt"]


def test_missing_model_or_dataset_names_the_field(tmp_path):
    for argv, match in [([], "model_name_or_path is required"), (["--model_name_or_path", "m"], "dataset_name")]:
        parsed = cli.make_parser().parse_args_and_config(
            [*argv, "--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false", "--report_to", "none"]
        )
        with pytest.raises(ValueError, match=match):
            cli.train(*parsed)


def test_unknown_command_and_help(capsys):
    with pytest.raises(SystemExit, match="unknown command 'sft'; valid: grpo"):
        cli.main(["sft"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0 and "module:function" in capsys.readouterr().out


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cli.load_named(scripts["trl_divergences"], "script") is cli.main


# ---- recipes ---------------------------------------------------------------------------------------------------
def test_one_recipe_per_family():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recipe_parses_into_the_configs(name, tmp_path):
    recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    (tmp_path / "store").mkdir()
    # the marker the config checks (the store itself is built in the training test)
    (tmp_path / "store" / "meta.json").write_text('{"n_samples": 1}')
    script, args, model = cli.make_parser().parse_args_and_config(
        ["--config", str(RECIPES / f"{name}.yaml"), "--rehearsal_dataset", str(tmp_path / "store")]
    )
    assert model.model_name_or_path == "trl_divergences.toy:build_base_model" and script.processing_class is None
    assert script.reward_funcs == ["trl_divergences.toy:sum_reward"]
    for field in OWN_FIELDS & set(recipe) - {"rehearsal_dataset"}:
        assert getattr(args, field) == recipe[field]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_recipe_trains_two_steps(name, tiny_model_dir, store, tmp_path):
    argv = ["--config", str(RECIPES / f"{name}.yaml"), *_overrides(name, tiny_model_dir, store, tmp_path / "out")]
    trainer = cli.train(*cli.make_parser().parse_args_and_config(argv))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert all(FAMILIES[name] in h for h in logs)
    if name == "schedule":  # forward KL for the first half of the run, reverse KL after
        assert "divergence/forward_kl" in logs[0] and "divergence/reverse_kl" in logs[1]
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.slow
def test_command_runs_in_a_subprocess(tiny_model_dir, tmp_path):
    """``python -m trl_divergences.cli grpo --config recipe`` with command-line overrides, offline; the trainer's
    checkpoint holds the recipe's fields and the overrides."""
    out = tmp_path / "out"
    argv = [
        *("-m", "trl_divergences.cli", "grpo", "--config", str(RECIPES / "exact_divergence.yaml")),
        *_overrides("exact_divergence", tiny_model_dir, "", out),
        *("--divergence_kwargs", '{"beta": 0.25}', "--save_strategy", "steps", "--save_steps", "2"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Model saved to {out}" in done.stdout
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all("divergence/js/full" in h for h in state["log_history"] if "loss" in h)
    args = torch.load(out / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert (args.divergence, args.divergence_estimator, args.divergence_kwargs, args.beta) == (
        "js",
        "full",
        {"beta": 0.25},
        2.0,
    )
