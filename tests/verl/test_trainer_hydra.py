"""verl's ``ppo_trainer`` config composed with the registered trainer's overrides passes verl's ``validate_config``
and ours; what verl cannot feed is refused with the reason, bad kwargs with the TRL adapter's messages."""

from __future__ import annotations

import pytest

from tests.verl.test_hydra import compose, validate

pytestmark = pytest.mark.verl

pytest.importorskip("transfer_queue")

from trl_divergences.objective import Objective  # noqa: E402
from trl_divergences.verl.config import trainer_objective  # noqa: E402

MODE = "trainer.v1.trainer_mode=trl_divergences"
KL = ["actor_rollout_ref.actor.use_kl_loss=true"]
ENTROPY = ["actor_rollout_ref.actor.calculate_entropy=true"]
W_REINFORCE = "+trl_divergences.advantage_reweighting=w_reinforce"

REACHABLE = {
    "curriculum gaussian": ["+trl_divergences.curriculum=gaussian", "+trl_divergences.curriculum_kwargs.std=0.3"],
    "curriculum paced": ["+trl_divergences.curriculum=paced", "+trl_divergences.curriculum_kwargs.min_weight=0.05"],
    "accuracy_conditioned": [*KL, "+trl_divergences.coefficient_schedule=accuracy_conditioned"],
    "forward_then_reverse": [
        *KL,
        "actor_rollout_ref.actor.kl_loss_type=forward_kl",
        "+trl_divergences.coefficient_schedule=forward_then_reverse",
        "+trl_divergences.schedule_kwargs.switch_fraction=0.3",
    ],
    "warmup": [*KL, "+trl_divergences.coefficient_schedule=warmup", "+trl_divergences.schedule_kwargs.warmup_steps=9"],
    "linear_anneal": [*KL, "+trl_divergences.coefficient_schedule=linear_anneal"],
    "entropy_quantile": [
        *ENTROPY,
        "+trl_divergences.token_masks=[entropy_quantile]",
        "+trl_divergences.token_mask_kwargs.entropy_quantile.quantile=0.3",
    ],
    "correct_only": ["+trl_divergences.token_masks=[correct_only]"],
    "two masks": [*ENTROPY, "+trl_divergences.token_masks=[entropy_quantile,correct_only]"],
    "ace": [*KL, "+trl_divergences.advantage_reweighting=ace", "+trl_divergences.reweighting_kwargs.alpha=0.5"],
    "dads": [*KL, "+trl_divergences.advantage_reweighting=dads", "+trl_divergences.reweighting_kwargs.stcr=true"],
    "w_reinforce": ["+trl_divergences.advantage_reweighting=w_reinforce"],
    "w_reinforce psr": [W_REINFORCE, "+trl_divergences.reweighting_kwargs.mode=psr"],
    "w_reinforce nsr": [W_REINFORCE, "+trl_divergences.reweighting_kwargs.mode=nsr"],
    "success_adaptive": ["+trl_divergences.advantage_reweighting=success_adaptive"],
    "paced reweighting": ["+trl_divergences.advantage_reweighting=paced"],
    "threshold": ["+trl_divergences.curriculum=gaussian", "+trl_divergences.correct_reward_threshold=0.5"],
}


@pytest.mark.parametrize("overrides", list(REACHABLE.values()), ids=list(REACHABLE))
def test_every_trainer_override_passes_validate_config(overrides):
    config = validate([MODE, *overrides])
    objective = trainer_objective(config)
    section = config.trl_divergences
    for field in ("curriculum", "coefficient_schedule", "advantage_reweighting"):
        method = {"curriculum": objective.curriculum, "coefficient_schedule": objective.schedule}.get(
            field, objective.reweighting
        )
        assert (method.name if method is not None else None) == section.get(field)
    assert [m.name for m in objective.token_masks] == list(section.get("token_masks", []))


REFUSED = [
    (["+trl_divergences.token_masks=[siren]"], "statistics over the vocabulary"),
    ([*ENTROPY, "+trl_divergences.token_masks=[eksft]"], "statistics over the vocabulary"),
    (["+trl_divergences.token_masks=[low_probability]"], "statistics over the vocabulary"),
    (["+trl_divergences.advantage_reweighting=resrl"], "penultimate hidden states"),
    (["+trl_divergences.curriculum=self"], "greedy decode"),
    (
        [
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
            "+trl_divergences.advantage_reweighting=w_reinforce",
            "+trl_divergences.reweighting_kwargs.mode=psr",
        ],
        "drops rollouts from the token mean",
    ),
    (["+trl_divergences.token_masks=[entropy_quantile]"], "calculate_entropy=true"),
    (
        [
            *ENTROPY,
            "actor_rollout_ref.actor.use_dynamic_bsz=true",
            "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
            "+trl_divergences.token_masks=[entropy_quantile]",
        ],
        "scope 'global'",
    ),
    (["+trl_divergences.advantage_reweighting=ace", "+trl_divergences.reweighting_kwargs.alpha=1"], "use_kl_loss=true"),
    (
        [
            "algorithm.adv_estimator=trl_divergences",
            "+algorithm.trl_divergences.advantage_reweighting=paced",
            "+trl_divergences.advantage_reweighting=paced",
        ],
        "twice",
    ),
    (["+trl_divergences.rehearsal_dataset=store"], "TRL only"),
    (["+trl_divergences.teacher_method=kdrl"], "TRL only"),
    (["+trl_divergences.curriculm=gaussian"], "unknown key"),
    (
        [*KL, "actor_rollout_ref.actor.kl_loss_type=js", "+trl_divergences.coefficient_schedule=forward_then_reverse"],
        "conflicts with it",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_unreachable_or_bad_configurations_fail_at_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate([MODE, *overrides])


@pytest.mark.parametrize(
    ("override", "kwargs"),
    [
        ("+trl_divergences.curriculum_kwargs.std=-1", {"curriculum": "gaussian", "curriculum_kwargs": {"std": -1}}),
        ("+trl_divergences.schedule_kwargs.warmup_steps=0", {"coefficient_schedule": "warmup"}),
        ("+trl_divergences.token_masks=[nope]", {"token_masks": ["nope"]}),
    ],
)
def test_bad_kwargs_fail_with_the_trl_adapters_message(override, kwargs):
    """The objective validates, so verl's message is the one DivergenceGRPOConfig shows."""
    extra = {
        "+trl_divergences.curriculum_kwargs.std=-1": ["+trl_divergences.curriculum=gaussian"],
        "+trl_divergences.schedule_kwargs.warmup_steps=0": [*KL, "+trl_divergences.coefficient_schedule=warmup"],
    }.get(override, [])
    if "schedule_kwargs" in override:
        kwargs = {**kwargs, "schedule_kwargs": {"warmup_steps": 0}}
    with pytest.raises(ValueError) as trl_error:
        Objective(**kwargs)
    with pytest.raises(ValueError) as verl_error:
        validate([MODE, *extra, override])
    assert str(verl_error.value) == str(trl_error.value)


def test_the_section_without_the_trainer_is_refused():
    with pytest.raises(ValueError, match="trainer_mode=trl_divergences"):
        validate(["+trl_divergences.curriculum=gaussian"])


def test_plain_configs_are_untouched():
    config = compose([])
    assert config.trainer.v1.trainer_mode == "sync" and "trl_divergences" not in config
    validate([])


@pytest.mark.parametrize(
    ("script", "env", "extra"),
    [
        ("grpo_masks.sh", {}, []),
        ("grpo_masks.sh", {"MASKS": "entropy_quantile,correct_only"}, []),
        ("grpo_curriculum.sh", {}, []),
        ("grpo_curriculum.sh", {"CURRICULUM": "paced", "SCHEDULE": "warmup"}, []),
        ("grpo_curriculum.sh", {"SCHEDULE": "forward_then_reverse", "KL": "forward_kl:k3+"}, []),
        ("grpo_reweighting.sh", {"REWEIGHTING": "ace"}, ["+trl_divergences.reweighting_kwargs.alpha=0.5"]),
        ("grpo_reweighting.sh", {"REWEIGHTING": "dads"}, []),
        ("grpo_reweighting.sh", {"REWEIGHTING": "paced", "TRAINER": "1"}, []),
    ],
)
def test_trainer_example_scripts_compose_and_validate(tmp_path, script, env, extra):
    from tests.verl.test_hydra import example_overrides

    overrides = example_overrides(tmp_path, script, GPUS="1", **env)
    config = validate([*[o for o in overrides if not o.startswith("trainer.n_gpus_per_node")], *extra])
    assert config.trainer.v1.trainer_mode == "trl_divergences"
    objective = trainer_objective(config)
    if "SCHEDULE" in env:
        assert objective.schedule.name == env["SCHEDULE"]
    if script == "grpo_masks.sh":
        assert [m.name for m in objective.token_masks] == env.get("MASKS", "entropy_quantile").split(",")
