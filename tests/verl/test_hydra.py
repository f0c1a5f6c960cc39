"""verl's ``ppo_trainer`` config composed with our overrides passes verl's ``validate_config`` (which builds the
ActorConfig our checks hook into); bad names fail there with TRL's messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.divergences._oracle import SPEC_IDS, SPECS

pytestmark = pytest.mark.verl

verl = pytest.importorskip("verl")
hydra = pytest.importorskip("hydra")

from trl_divergences.verl.config import validate_config as our_validate_config  # noqa: E402

SIZES = [
    "data.train_batch_size=8",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=[*SIZES, *overrides])


def validate(overrides: list[str]):
    from verl.utils.config import validate_config

    config = compose(overrides)
    validate_config(config, use_reference_policy=True, use_critic=False)
    our_validate_config(config)
    return config


def quoted(name: str, kwargs: dict) -> str:
    args = "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")" if kwargs else ""
    return name + args


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_divergence_override_passes_validate_config(spec):
    base = quoted(*spec)
    config = validate(
        [
            "actor_rollout_ref.actor.use_kl_loss=true",
            f"actor_rollout_ref.actor.kl_loss_type='{base}:k3+'",
            "actor_rollout_ref.actor.kl_loss_coef=0.01",
            "algorithm.use_kl_in_reward=true",
            f"algorithm.kl_penalty='{base}+'",
        ]
    )
    assert config.actor_rollout_ref.actor.kl_loss_type == f"{base}:k3+"
    assert config.algorithm.kl_penalty == f"{base}+"


def test_unquoted_overrides_without_kwargs():
    config = validate(
        [
            "actor_rollout_ref.actor.use_kl_loss=true",
            "actor_rollout_ref.actor.kl_loss_type=chi2:k1",
            "algorithm.use_kl_in_reward=true",
            "algorithm.kl_penalty=forward_kl",
        ]
    )
    assert config.actor_rollout_ref.actor.kl_loss_type == "chi2:k1"
    assert config.algorithm.kl_penalty == "forward_kl"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("actor_rollout_ref.actor.kl_loss_type=forward_kl:k2", "estimator 'k2' is not supported by divergence"),
        ("actor_rollout_ref.actor.kl_loss_type='js(beta=1.5)'", "js: beta must be in the open interval (0, 1)"),
        ("actor_rollout_ref.actor.kl_loss_type=low_var_k", "unknown divergence 'low_var_k'"),
        ("algorithm.kl_penalty=forward_kl:k2", "estimator 'k2' is not supported by divergence"),
    ],
)
def test_bad_overrides_fail_at_validation(override, message):
    from hydra.errors import InstantiationException

    # hydra wraps the ValueError of the ActorConfig it instantiates; the algorithm section is ours to check
    with pytest.raises((ValueError, InstantiationException)) as err:
        validate(["actor_rollout_ref.actor.use_kl_loss=true", "algorithm.use_kl_in_reward=true", override])
    assert message in str(err.value)


def test_reweighting_estimator_overrides_pass_validate_config():
    config = validate(
        [
            "algorithm.adv_estimator=trl_divergences",
            "+algorithm.trl_divergences.advantage_reweighting=success_adaptive",
            "+algorithm.trl_divergences.reweighting_kwargs.base=0.4",
            "+algorithm.trl_divergences.base_estimator=grpo",
        ]
    )
    assert config.algorithm.trl_divergences.reweighting_kwargs.base == 0.4


def test_reweighting_estimator_refusal_at_validation():
    with pytest.raises(ValueError, match="dropping rollouts from the loss's token mean"):
        validate(
            [
                "algorithm.adv_estimator=trl_divergences",
                "+algorithm.trl_divergences.advantage_reweighting=w_reinforce",
                "+algorithm.trl_divergences.reweighting_kwargs.mode=nsr",
            ]
        )


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"


def example_overrides(tmp_path, script: str, **env: str) -> list[str]:
    """The hydra overrides a launch script passes to ``verl.trainer.main_ppo`` (``python3`` shimmed on PATH)."""
    shim = tmp_path / "python3"
    shim.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    shim.chmod(0o755)
    environ = {**os.environ, **env, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(EXAMPLES / script)], capture_output=True, text=True, env=environ, check=True)
    argv = json.loads(out.stdout.strip().splitlines()[-1])
    assert argv[:2] == ["-m", "verl.trainer.main_ppo"]
    return argv[2:]


@pytest.mark.parametrize(
    ("script", "env"),
    [
        ("grpo_divergence.sh", {}),
        ("grpo_divergence.sh", {"DIVERGENCE": "js(beta=0.3):k3+", "IN_REWARD": "1"}),
        ("grpo_reweighting.sh", {"REWEIGHTING": "success_adaptive"}),
    ],
)
def test_example_scripts_compose_and_validate(tmp_path, script, env):
    overrides = example_overrides(tmp_path, script, GPUS="1", **env)
    config = compose([o for o in overrides if not o.startswith("trainer.n_gpus_per_node")])
    from verl.utils.config import validate_config

    validate_config(config, use_reference_policy=True, use_critic=False)
    our_validate_config(config)
    if script == "grpo_reweighting.sh":  # the later override of the base script's grpo wins, as on the command line
        assert config.algorithm.adv_estimator == "trl_divergences"
    elif env.get("IN_REWARD") == "1":
        assert config.algorithm.use_kl_in_reward and config.algorithm.kl_penalty == env["DIVERGENCE"]
    else:
        assert config.actor_rollout_ref.actor.kl_loss_type == "forward_kl:k3+"
