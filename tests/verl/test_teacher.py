"""Teacher methods on verl's distillation (``loss_mode=trl_divergences``): through verl's own
``distillation_ppo_loss`` on verl-shaped micro-batches — KDRL against verl's built-in k2 distillation and a float64
hand computation (KDRL-Masking included), G-OPD / ExOPD against verl's vanilla surrogate on the hand-computed teacher
advantage; hydra composition through ``validate_config``, and the refusals."""

from __future__ import annotations

import pytest
import torch

from tests.verl._batches import actor_config, make_rollouts, micro_batch

pytestmark = pytest.mark.verl

pytest.importorskip("verl.trainer.distillation")

from trl_divergences.verl.teacher import LOSS_MODE, TeacherLossConfig  # noqa: E402

PROMPTS, RESPONSES = [2, 3, 2, 4], [3, 5, 2, 4]
N_TOKENS = sum(RESPONSES)


def batch(seed: int = 0, on_policy: bool = True):
    """(rollouts, log π, log τ, log π_old, model_output, data) with the teacher's log-probs laid out as verl stores
    them (over prompt + response, the response token k's at position P + k − 1) and token-level rewards (rows 0 and 2
    correct)."""
    from verl.utils import tensordict_utils as tu

    r = make_rollouts(PROMPTS, RESPONSES, vocab=7, seed=seed)
    lp, _ = r.logps()
    g = torch.Generator().manual_seed(seed + 1)
    teacher = torch.log_softmax(r.theta.detach() + torch.randn(r.theta.shape, generator=g, dtype=r.theta.dtype), -1)
    teacher = teacher.gather(-1, r.tokens.unsqueeze(-1)).squeeze(-1)
    old = lp.detach() if on_policy else lp.detach() + 0.1 * torch.randn(lp.shape, generator=g, dtype=lp.dtype)
    model_output, data = micro_batch(r, slice(0, len(PROMPTS)), old, N_TOKENS, len(PROMPTS))
    rows, scores = [], []
    for i, (p, n) in enumerate(zip(PROMPTS, RESPONSES)):
        rows.append(torch.cat([teacher.new_zeros(p - 1), teacher[i, :n], teacher.new_zeros(1)]).unsqueeze(-1))
        score = torch.zeros(n, dtype=lp.dtype)
        score[-1] = 1.0 if i in (0, 2) else 0.0
        scores.append(score)
    data["teacher_logprobs"] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    data["rm_scores"] = torch.nested.as_nested_tensor(scores, layout=torch.jagged)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=N_TOKENS, global_batch_size=len(PROMPTS))
    return r, lp, teacher, old, model_output, data


def run(loss_config, model_output, data, use_kl_loss=False):
    from types import SimpleNamespace

    from verl.trainer.distillation.losses import distillation_ppo_loss

    config = actor_config("low_var_kl")
    if not use_kl_loss:
        import dataclasses

        config = dataclasses.replace(config, use_kl_loss=False)
    return distillation_ppo_loss(config, SimpleNamespace(distillation_loss=loss_config), model_output, data)


def kdrl(**teacher_kwargs):
    return TeacherLossConfig(loss_mode=LOSS_MODE, use_policy_gradient=False, teacher_kwargs=teacher_kwargs)


def test_kdrl_k2_equals_verls_builtin_k2_distillation():
    from verl.workers.config import DistillationLossConfig

    r, *_, model_output, data = batch()
    ours, metrics = run(kdrl(coef=0.05, estimator="k2"), model_output, data)
    (g_ours,) = torch.autograd.grad(ours, r.theta)
    r, *_, model_output, data = batch()
    builtin = DistillationLossConfig(
        loss_mode="k2", use_policy_gradient=False, distillation_loss_coef=0.05, loss_max_clamp=None
    )
    theirs, _ = run(builtin, model_output, data)
    (g_theirs,) = torch.autograd.grad(theirs, r.theta)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-14)
    assert "teacher/reverse_kl" in metrics


def test_kdrl_masking_by_hand_in_float64():
    """loss = GRPO's token-mean surrogate + token-mean of β·m_i·½(log π − log τ)², m_i = 0 on correct rows."""
    r, lp, teacher, old, model_output, data = batch()
    loss, _ = run(kdrl(coef=0.3, only_incorrect=True), model_output, data)
    m = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).unsqueeze(-1)
    kd = (0.3 * m * 0.5 * (lp - teacher) ** 2 * r.mask).sum() / N_TOKENS
    pg = -(r.advantages * torch.exp(lp - old) * r.mask).sum() / N_TOKENS
    want = pg + kd
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss, r.theta)[0], torch.autograd.grad(want, r.theta)[0])


@pytest.mark.parametrize(("method", "lam"), [("g_opd", 1.0), ("exopd", 1.25), ("g_opd", 0.5)])
def test_g_opd_is_verls_vanilla_surrogate_on_the_teacher_advantage(method, lam):
    r, lp, teacher, old, model_output, data = batch(on_policy=False)
    kwargs = {} if (method, lam) == ("exopd", 1.25) else {"lam": lam}
    config = TeacherLossConfig(
        loss_mode=LOSS_MODE, use_task_rewards=False, teacher_method=method, teacher_kwargs=kwargs
    )
    loss, metrics = run(config, model_output, data)
    ref = data["ref_log_prob"].to_padded_tensor(0.0)
    advantages = lam * (teacher - ref) - (old - ref)
    ratio = torch.exp(lp - old)
    surrogate = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2))
    dual = torch.where(advantages < 0, torch.minimum(surrogate, -advantages * 3.0), surrogate)
    want = (dual * r.mask).sum() / N_TOKENS
    assert loss.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(torch.autograd.grad(loss, r.theta)[0], torch.autograd.grad(want, r.theta)[0])
    assert float(metrics["teacher/advantage"].values[0]) == pytest.approx(advantages[r.mask].mean().item())


# hydra: verl's ppo_trainer with distillation on and our loss


def distill(*overrides: str) -> list[str]:
    return [
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.temperature=1.0",
        "distillation.enabled=true",
        "distillation.n_gpus_per_node=1",
        "distillation.nnodes=1",
        "distillation.teacher_models.teacher_model.model_path=Qwen/Qwen2.5-1.5B-Instruct",
        "distillation.teacher_models.teacher_model.num_replicas=1",
        "distillation.teacher_models.teacher_model.inference.tensor_model_parallel_size=1",
        "distillation.distillation_loss._target_=trl_divergences.verl.teacher.TeacherLossConfig",
        f"distillation.distillation_loss.loss_mode={LOSS_MODE}",
        *overrides,
    ]


KDRL = [
    "distillation.distillation_loss.use_policy_gradient=false",
    "+distillation.distillation_loss.teacher_method=kdrl",
]
EXOPD = [
    "distillation.distillation_loss.use_policy_gradient=true",
    "distillation.distillation_loss.use_task_rewards=false",
    "+distillation.distillation_loss.teacher_method=exopd",
    "actor_rollout_ref.actor.use_kl_loss=true",
]


def validate(overrides):
    import verl.trainer.main_ppo as main_ppo
    from verl.utils.config import omega_conf_to_dataclass

    from tests.verl.test_hydra import compose

    config = compose(overrides)
    main_ppo.validate_config(config, use_reference_policy=True, use_critic=False)
    return config, omega_conf_to_dataclass(config.distillation)


@pytest.mark.parametrize(
    "overrides",
    [
        KDRL,
        [
            *KDRL,
            "+distillation.distillation_loss.teacher_kwargs.only_incorrect=true",
            "+distillation.distillation_loss.teacher_kwargs.divergence=js",
            "+distillation.distillation_loss.teacher_kwargs.divergence_kwargs.beta=0.3",
            "+distillation.distillation_loss.teacher_kwargs.estimator=k3+",
        ],
        EXOPD,
    ],
    ids=["kdrl", "kdrl-js-masked", "exopd"],
)
def test_teacher_overrides_pass_validate_config(overrides):
    _, distillation = validate(distill(*overrides))
    loss = distillation.distillation_loss
    assert isinstance(loss, TeacherLossConfig)
    assert loss.method.name == ("exopd" if overrides is EXOPD else "kdrl")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([*KDRL[:1], "+distillation.distillation_loss.teacher_method=trrd"], "'trrd' is TRL only for now: it replaces"),
        ([*KDRL[:1], "+distillation.distillation_loss.teacher_method=exact_opd"], "'exact_opd' is TRL only for now"),
        ([*KDRL, "+distillation.distillation_loss.teacher_kwargs.estimator=full"], "with estimator 'full' is TRL only"),
        ([*KDRL, "+distillation.distillation_loss.teacher_kwargs.schedule=linear_anneal"], "with a schedule is TRL"),
        ([*KDRL, "+distillation.distillation_loss.teacher_kwargs.coef=-1"], "coef must be a non-negative"),
        ([*KDRL, "distillation.distillation_loss.distillation_loss_coef=0.5"], "distillation_loss_coef=0.5 with"),
        (
            [*KDRL, "distillation.distillation_loss.use_task_rewards=false"],
            "use_task_rewards=False with teacher_method='kdrl'",
        ),
        ([*EXOPD[:3]], "with lam != 1 needs the reference's log-probs"),
        ([*EXOPD, "+distillation.distillation_loss.teacher_kwargs.outcome_weight=1"], "outcome_weight=1.0 is TRL only"),
        ([*EXOPD[1:], "distillation.distillation_loss.use_task_rewards=false"], "use_policy_gradient=False with"),
        ([*KDRL, "actor_rollout_ref.rollout.temperature=0.7"], "temperature=0.7: verl scores the teacher at"),
    ],
)
def test_teacher_combinations_that_cannot_run_are_refused(overrides, message):
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException)) as err:
        validate(distill(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize(("env", "method"), [({}, "kdrl"), ({"MASK": "1"}, "kdrl"), ({"METHOD": "exopd"}, "exopd")])
def test_example_script_composes_and_validates(tmp_path, env, method):
    from tests.verl.test_hydra import example_overrides

    overrides = example_overrides(tmp_path, "grpo_teacher.sh", GPUS="1", **env)
    _, distillation = validate([o for o in overrides if not o.startswith("trainer.n_gpus_per_node")])
    assert distillation.distillation_loss.method.name == method
    assert distillation.distillation_loss.method.__dict__.get("only_incorrect", False) == ("MASK" in env)
