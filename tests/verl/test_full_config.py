"""``kl_loss_type=<name>:full`` from a hydra config: verl's ``ppo_trainer`` composed with the overrides passes
verl's ``validate_config`` (wrapped with ours, as ``main_ppo`` calls it) for every divergence; the combinations the
exact path cannot run are refused there, naming the valid choice; the registered trainer maps verl's roles to the
exact-divergence workers."""

from __future__ import annotations

import pytest

from tests.divergences._oracle import SPEC_IDS, SPECS
from tests.verl.test_hydra import compose, example_overrides, quoted

pytestmark = pytest.mark.verl

pytest.importorskip("verl.trainer.ppo.v1")

from trl_divergences.verl.config import FULL_TRAINER_MODE, check_full_actor  # noqa: E402

FULL = [
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
    f"trainer.v1.trainer_mode={FULL_TRAINER_MODE}",
]


def validate(overrides: list[str]):
    """verl's validate_config as main_ppo imports it (the plugin wrapped it with ours)."""
    import verl.trainer.main_ppo as main_ppo

    config = compose(overrides)
    main_ppo.validate_config(config, use_reference_policy=True, use_critic=False)
    return config


def test_main_ppo_runs_our_checks():
    import verl.trainer.main_ppo as main_ppo
    import verl.utils.config

    assert main_ppo.validate_config is verl.utils.config.validate_config
    assert main_ppo.validate_config._trl_divergences


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_exact_divergence_passes_validate_config(spec):
    name = f"{quoted(*spec)}:full"
    config = validate([*FULL, f"actor_rollout_ref.actor.kl_loss_type='{name}'"])
    assert config.actor_rollout_ref.actor.kl_loss_type == name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.v1.trainer_mode=sync"], "trainer.v1.trainer_mode='sync': set trainer.use_v1=true trainer.v1."),
        (
            ["trainer.v1.trainer_mode=trl_divergences"],
            "trainer.v1.trainer_mode='trl_divergences': the exact path runs under trainer.v1.trainer_mode="
            "trl_divergences_full",
        ),
        (["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"], "ulysses_sequence_parallel_size=2: use 1"),
        (["actor_rollout_ref.ref.ulysses_sequence_parallel_size=2"], "ref.ulysses_sequence_parallel_size=2: use 1"),
        (["actor_rollout_ref.model.use_fused_kernels=true"], "use_fused_kernels=True: use false"),
        (["distillation.enabled=true"], "distillation.enabled=True: use one of them"),
        (
            ["algorithm.use_kl_in_reward=true", "algorithm.kl_penalty=forward_kl:full"],
            "algorithm.kl_penalty 'forward_kl:full': the exact estimator 'full' is a KL loss of the actor",
        ),
    ],
)
def test_combinations_that_cannot_run_are_refused(overrides, message):
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException)) as err:
        validate([*FULL, "actor_rollout_ref.actor.kl_loss_type=forward_kl:full", *overrides])
    assert message in str(err.value)


def test_lora_is_refused():
    """(verl's own LoRA checks need vLLM installed, so ours run alone on the composed config.)"""
    from trl_divergences.verl.config import validate_config

    config = compose(
        [*FULL, "actor_rollout_ref.actor.kl_loss_type=forward_kl:full", "actor_rollout_ref.model.lora.rank=8"]
    )
    with pytest.raises(ValueError, match="model.lora rank=8: train without LoRA"):
        validate_config(config)


def test_megatron_is_refused():
    with pytest.raises(ValueError, match="actor.strategy='megatron': use fsdp or fsdp2"):
        check_full_actor({"strategy": "megatron"})


@pytest.mark.parametrize("kl_type", ["forward_kl:full", "js:k3+"])
def test_registered_trainer_maps_the_roles_to_the_exact_workers(kl_type):
    from verl.trainer.ppo.utils import Role
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from trl_divergences.verl.workers import FullActorRolloutRefWorker

    config = validate([*FULL, f"actor_rollout_ref.actor.kl_loss_type={kl_type}"])
    trainer = get_trainer_cls(FULL_TRAINER_MODE)(config=config)
    assert trainer.trainer_mode == "sync"  # verl's literal == "sync" checks see the synchronous trainer
    trainer._init_resource_pool_mgr()
    classes = {role: cls.__ray_actor_class__ for role, cls in trainer.role_worker_mapping.items()}
    want = FullActorRolloutRefWorker if kl_type.endswith(":full") else ActorRolloutRefWorker
    assert classes == {Role.ActorRolloutRef: want}


def test_example_script_composes_and_validates(tmp_path):
    overrides = example_overrides(tmp_path, "grpo_exact.sh", GPUS="1")
    config = validate([o for o in overrides if not o.startswith("trainer.n_gpus_per_node")])
    assert config.actor_rollout_ref.actor.kl_loss_type == "forward_kl:full"
    assert config.trainer.v1.trainer_mode == FULL_TRAINER_MODE
