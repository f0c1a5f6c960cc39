"""Teacher-guided methods in the TRL adapter: a 2-step run per method on the tiny model with finite loss and its
``teacher/<name>/...`` metrics; parity (a teacher equal to the reference gives the reference-divergence term, exactly
for the sampled k2 and the exact path; TRRD with α = 1 is GRPO); the teacher's tokenizer and ρ are checked."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import trl_divergences as td
import trl_divergences.objective.vocabulary as vocabulary_module
from trl_divergences import DivergenceGRPOConfig, DivergenceGRPOTrainer
from trl_divergences.objective import Objective, RolloutInputs
from trl_divergences.toy import BaseModelConfig, build_random_model, build_tokenizer

from .helpers import BASE_ARGS, make_trainer, prompts_dataset, varied_reward

pytestmark = pytest.mark.slow

#: a teacher wider than the student (H_τ = 48 vs 32), same tokenizer
TEACHER = BaseModelConfig(hidden_size=48, intermediate_size=64, num_heads=2, num_kv_heads=1)
SHORT = dict(max_steps=2, learning_rate=0.05, per_device_train_batch_size=4, gradient_accumulation_steps=2)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    return str(build_random_model(tmp_path_factory.mktemp("teacher") / "model", seed=1, config=TEACHER))


def _logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


CASES = [
    ("kdrl", {}, ["teacher/kdrl/reverse_kl", "teacher/kdrl/reverse_kl/k2", "teacher/kdrl/coef"]),
    (
        "kdrl",
        {
            "estimator": "full",
            "only_incorrect": True,
            "schedule": "linear_anneal",
            "schedule_kwargs": {"anneal_steps": 2},
        },
        ["teacher/kdrl/reverse_kl/full", "teacher/kdrl/kd_fraction", "teacher/kdrl/coef"],
    ),
    ("exact_opd", {"divergence": "js"}, ["teacher/exact_opd/js/full", "teacher/exact_opd/coef"]),
    ("g_opd", {}, ["teacher/g_opd/advantage", "teacher/g_opd/log_ratio"]),
    ("exopd", {"outcome_weight": 0.5}, ["teacher/exopd/advantage", "teacher/exopd/log_ratio"]),
    ("trrd", {}, ["teacher/trrd/initial_ratio", "teacher/trrd/clamped_fraction"]),
]


@pytest.mark.parametrize("method,kwargs,keys", CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)])
def test_two_steps_per_method(tiny_model_dir, tokenizer, tmp_path, teacher_dir, method, kwargs, keys):
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=0.0,
        teacher_model=teacher_dir,
        teacher_method=method,
        teacher_kwargs=kwargs,
        **SHORT,
    )
    trainer.train()
    logs = _logs(trainer)
    assert len(logs) == 2
    for log in logs:
        assert math.isfinite(log["loss"])
        for key in keys:
            assert math.isfinite(log[key]), key
    assert trainer.ref_model is None or method == "exopd"  # ρ only where λ ≠ 1
    state = trainer.methods_state_dict()["teacher"]
    if method in ("kdrl", "exact_opd"):
        assert set(state) == {"coef_now", "divergence_now"}
    if kwargs.get("schedule") == "linear_anneal":
        # 2e-3 · max(1 − 0.8·s/2, 0.2) at steps 0 and 1: 2e-3 then 1.2e-3
        assert [log["teacher/kdrl/coef"] for log in logs] == pytest.approx([2e-3, 1.2e-3])


def test_exopd_loads_the_reference_even_at_beta_zero(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    trainer = make_trainer(
        tiny_model_dir, tokenizer, tmp_path, beta=0.0, teacher_model=teacher_dir, teacher_method="exopd", **SHORT
    )
    assert trainer.ref_model is not None and trainer.objective.requirements.ref_logps


def test_missing_reference_log_probs_fail_fast() -> None:
    objective = Objective(teacher_method="exopd")
    x = RolloutInputs(
        rewards=torch.zeros(2),
        advantages=torch.zeros(2),
        group_ids=torch.tensor([0, 0]),
        local=slice(0, 2),
        completion_mask=torch.ones(2, 3),
        old_logps=torch.zeros(2, 3),
        teacher_logps=torch.zeros(2, 3),
    )
    with pytest.raises(ValueError, match=r"lam=1.25 != 1 needs the reference"):
        objective.rollout_step(x, step=0, max_steps=2, training=True)
    with pytest.raises(ValueError, match="needs the teacher's log-probs"):
        Objective(teacher_method="kdrl").rollout_step(
            RolloutInputs(x.rewards, x.advantages, x.group_ids, x.local, x.completion_mask),
            step=0,
            max_steps=2,
            training=True,
        )


def _train(model_dir, tokenizer, tmp_path, **overrides):
    trainer = make_trainer(model_dir, tokenizer, tmp_path, **overrides)
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return params, _logs(trainer)


@pytest.mark.parametrize(
    "reference, teacher",
    [
        ({"divergence_estimator": "k2"}, {"estimator": "k2", "coef": 0.2}),
        ({"divergence_estimator": "full"}, {"estimator": "full", "coef": 0.2}),
    ],
    ids=["k2", "full"],
)
def test_kdrl_with_the_teacher_equal_to_the_reference_is_the_reference_term(
    tiny_model_dir, tokenizer, tmp_path, reference, teacher
):
    ref_params, ref_logs = _train(tiny_model_dir, tokenizer, tmp_path / "ref", beta=0.2, **reference, **SHORT)
    ours_params, ours_logs = _train(
        tiny_model_dir,
        tokenizer,
        tmp_path / "teacher",
        beta=0.0,
        teacher_model=tiny_model_dir,
        teacher_method="kdrl",
        teacher_kwargs=teacher,
        **SHORT,
    )
    for name in ref_params:
        torch.testing.assert_close(ours_params[name], ref_params[name], atol=1e-6, rtol=0, msg=name)
    estimator = teacher["estimator"]
    assert [log[f"teacher/kdrl/reverse_kl/{estimator}"] for log in ours_logs] == pytest.approx(
        [log["kl"] for log in ref_logs], rel=1e-4, abs=1e-7
    )
    assert ref_logs[-1]["kl"] > 0


def test_trrd_with_alpha_one_is_grpo_and_below_one_is_not(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    grpo, _ = _train(tiny_model_dir, tokenizer, tmp_path / "grpo", beta=0.0, **SHORT)
    common = dict(beta=0.0, teacher_model=teacher_dir, teacher_method="trrd", **SHORT)
    alpha_one, _ = _train(tiny_model_dir, tokenizer, tmp_path / "a1", teacher_kwargs={"alpha": 1.0}, **common)
    half, _ = _train(tiny_model_dir, tokenizer, tmp_path / "a05", **common)
    for name in grpo:
        torch.testing.assert_close(alpha_one[name], grpo[name], atol=1e-6, rtol=0, msg=name)
    assert any(not torch.allclose(half[name], grpo[name], atol=1e-5) for name in grpo)


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    other = tmp_path / "other-teacher"
    AutoModelForCausalLM.from_pretrained(teacher_dir).save_pretrained(other)
    changed = build_tokenizer()
    changed.add_tokens(["<think>"])
    changed.save_pretrained(other)
    with pytest.raises(ValueError) as info:
        make_trainer(tiny_model_dir, tokenizer, tmp_path, teacher_model=str(other), teacher_method="kdrl", **SHORT)
    message = str(info.value)
    assert f"teacher {str(other)!r}" in message and f"student {tiny_model_dir!r}" in message
    assert "only the teacher's: ['<think>']" in message


def test_a_loaded_teacher_and_the_missing_cases(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    args = DivergenceGRPOConfig(
        output_dir=str(tmp_path / "loaded"), **{**BASE_ARGS, **SHORT, "beta": 0.0}, teacher_method="kdrl"
    )

    def trainer(**kwargs):
        return DivergenceGRPOTrainer(
            model=tiny_model_dir,
            reward_funcs=varied_reward,
            args=args,
            train_dataset=prompts_dataset(),
            processing_class=tokenizer,
            **kwargs,
        )

    loaded = trainer(teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir))
    loaded.train()
    assert all(math.isfinite(log["teacher/kdrl/reverse_kl"]) for log in _logs(loaded))
    with pytest.raises(ValueError, match="teacher_method 'kdrl' needs a teacher"):
        trainer()
    plain = {"use_cpu": True, "bf16": False, "report_to": []}
    with pytest.raises(ValueError, match="teacher_model .* given without a teacher_method"):
        DivergenceGRPOConfig(output_dir=str(tmp_path / "x"), teacher_model=teacher_dir, **plain)
    with pytest.raises(ValueError, match="valid choices: kdrl, exact_opd"):
        DivergenceGRPOConfig(output_dir=str(tmp_path / "x"), teacher_model=teacher_dir, teacher_method="opd", **plain)
    with pytest.raises(ValueError, match="advantage_reweighting 'w_reinforce' conflicts"):
        DivergenceGRPOConfig(
            output_dir=str(tmp_path / "x"), teacher_method="g_opd", advantage_reweighting="w_reinforce", **plain
        )
    with pytest.raises(ValueError, match="teacher_kwargs given without a method"):
        DivergenceGRPOConfig(output_dir=str(tmp_path / "x"), teacher_kwargs={"coef": 1.0}, **plain)


def test_exopd_with_a_given_reference_loads_it_and_not_the_reference_model(
    tiny_model_dir, tokenizer, tmp_path, teacher_dir
):
    """ρ given (G-OPD's reward correction: the teacher's pre-RL base; here another random model): one more frozen
    model, no reference model; its log-probs are the ones the advantages read."""
    base_dir = str(build_random_model(tmp_path / "base", seed=2, config=TEACHER))
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=0.0,
        teacher_model=teacher_dir,
        teacher_method="exopd",
        teacher_reference_model=base_dir,
        **SHORT,
    )
    assert trainer.ref_model is None and trainer.teacher_reference_model is not None
    assert not any(p.requires_grad for p in trainer.teacher_reference_model.parameters())
    trainer.train()
    logs = _logs(trainer)
    assert len(logs) == 2
    for log in logs:
        assert math.isfinite(log["loss"])
        assert math.isfinite(log["teacher/exopd/teacher_reference_log_ratio"])


def test_exopd_with_the_student_init_given_as_reference_is_the_default(
    tiny_model_dir, tokenizer, tmp_path, teacher_dir
):
    """ρ given as the student's initial weights (a loaded model) trains exactly like the default ρ (TRL's reference
    model): the separate ρ pass computes the same log-probs."""
    common = dict(beta=0.0, teacher_model=teacher_dir, teacher_method="exopd", **SHORT)
    default, default_logs = _train(tiny_model_dir, tokenizer, tmp_path / "default", **common)
    args = DivergenceGRPOConfig(output_dir=str(tmp_path / "given"), **{**BASE_ARGS, **common})
    trainer = DivergenceGRPOTrainer(
        model=tiny_model_dir,
        reward_funcs=varied_reward,
        args=args,
        train_dataset=prompts_dataset(),
        processing_class=tokenizer,
        teacher_reference_model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        teacher_reference_processing_class=tokenizer,
    )
    assert trainer.ref_model is None
    trainer.train()
    for name, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), default[name], atol=1e-6, rtol=0, msg=name)
    advantages = [[log["teacher/exopd/advantage"] for log in logs] for logs in (default_logs, _logs(trainer))]
    assert advantages[0] == pytest.approx(advantages[1], rel=1e-5, abs=1e-7)


def test_a_given_reference_is_checked_at_construction(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_pretrained(teacher_dir).save_pretrained(other)
    changed = build_tokenizer()
    changed.add_tokens(["<think>"])
    changed.save_pretrained(other)
    common = dict(teacher_model=teacher_dir, **SHORT)
    with pytest.raises(ValueError) as info:
        make_trainer(
            tiny_model_dir, tokenizer, tmp_path, teacher_method="exopd", teacher_reference_model=str(other), **common
        )
    assert f"the teacher's reference ρ {str(other)!r} does not share the tokenizer" in str(info.value)
    with pytest.raises(ValueError, match=r"teacher_method .*GOPD\(lam=1.0.* does not read a reference ρ"):
        make_trainer(
            tiny_model_dir, tokenizer, tmp_path, teacher_method="g_opd", teacher_reference_model=teacher_dir, **common
        )
    args = DivergenceGRPOConfig(output_dir=str(tmp_path / "x"), **{**BASE_ARGS, **common, "teacher_method": "kdrl"})
    with pytest.raises(ValueError, match="does not read a reference ρ"):
        DivergenceGRPOTrainer(
            model=tiny_model_dir,
            reward_funcs=varied_reward,
            args=args,
            train_dataset=prompts_dataset(),
            processing_class=tokenizer,
            teacher_reference_model=AutoModelForCausalLM.from_pretrained(teacher_dir),
        )


def _counting(calls: list):
    def op(*args, **kwargs):
        calls.append(1)
        return td.ops.fused_linear_divergence_loss(*args, **kwargs)

    return op


@pytest.mark.parametrize(
    "method, kwargs, overrides",
    [
        ("exact_opd", {"divergence": "js", "outcome_weight": 1.0}, {}),
        ("kdrl", {"estimator": "full", "coef": 0.2, "only_incorrect": True}, {"loss_type": "dapo"}),
    ],
    ids=["exact_opd-js", "kdrl-full-only_incorrect-dapo"],
)
def test_exact_teacher_term_in_the_forward_trains_like_the_per_token_route(
    tiny_model_dir, tokenizer, tmp_path, teacher_dir, monkeypatch, method, kwargs, overrides
):
    """The exact teacher term aggregated inside the forward (its weights coef·m_i known before it) moves the
    parameters as the per-token values aggregated after the loss (the route taken without those weights)."""
    runs = {}
    for route in ("in_forward", "per_token"):
        trainer = make_trainer(
            tiny_model_dir,
            tokenizer,
            tmp_path / route,
            beta=0.0,
            teacher_model=teacher_dir,
            teacher_method=method,
            teacher_kwargs=kwargs,
            **{**SHORT, **overrides},
        )
        calls = []
        monkeypatch.setattr(vocabulary_module, "fused_linear_divergence_loss", _counting(calls))
        if route == "per_token":
            monkeypatch.setattr(trainer.objective, "teacher_penalty_weights", lambda *a, **k: None)
        trainer.train()
        assert bool(calls) == (route == "in_forward")
        runs[route] = ({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, _logs(trainer))
        monkeypatch.undo()
    for name, value in runs["in_forward"][0].items():
        torch.testing.assert_close(value, runs["per_token"][0][name], atol=1e-6, rtol=1e-5, msg=name)
    key = f"teacher/{method}/{kwargs['divergence'] if 'divergence' in kwargs else 'reverse_kl'}/full"
    values = [[log[key] for log in run[1]] for run in runs.values()]
    assert values[0] == pytest.approx(values[1], rel=1e-5) and len(values[0]) == 2 and values[0][0] > 0


def _sampled_logps(model, output, temperature: float) -> torch.Tensor:
    """[B, C] float64 log-probs of the sampled completion tokens from ``model``'s full logits at ``temperature``."""
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], 1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], 1)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1][:, -output["completion_ids"].size(1) :]
    logps = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logps.gather(-1, output["completion_ids"].unsqueeze(-1)).squeeze(-1)


def test_peft_student_reference_is_the_adapter_disabled_base_and_the_teacher_its_own_model(
    tiny_model_dir, tokenizer, tmp_path, teacher_dir
):
    """A LoRA student: no reference model is loaded, ρ is the student with its adapter disabled (as for the reference
    penalty), the teacher is its own frozen model; ExOPD's advantages from the three, against a float64 recomputation
    from full logits at the rollout temperature."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=0.0,
        teacher_model=teacher_dir,
        teacher_method="exopd",
        peft_config=lora,
        learning_rate=0.0,
        max_steps=1,
        temperature=0.7,
    )
    assert trainer.ref_model is None and not hasattr(trainer.teacher_model, "peft_config")
    with torch.no_grad():  # the adapter must change the policy for ρ = base to mean anything
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5 * torch.randn_like(p))
    outputs = []
    generate = trainer._generate_and_score_completions

    def recording(inputs):
        outputs.append(generate(inputs))
        return outputs[-1]

    trainer._generate_and_score_completions = recording
    trainer.train()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert outputs
    with torch.no_grad():
        for output in outputs:
            mask = output["completion_mask"].bool()
            with trainer.model.disable_adapter():
                base = _sampled_logps(trainer.model, output, 0.7)
            policy = _sampled_logps(trainer.model, output, 0.7)
            tau = _sampled_logps(teacher, output, 0.7)
            assert (policy - base)[mask].abs().max() > 1e-3
            for got, want in ((output["ref_per_token_logps"], base), (output["teacher_per_token_logps"], tau)):
                torch.testing.assert_close(got[mask].double(), want[mask], atol=2e-5, rtol=1e-5)
            want = 1.25 * (tau - base) - (policy - base)
            torch.testing.assert_close(output["advantages"][mask].double(), want[mask], atol=5e-5, rtol=1e-5)


def test_peft_student_with_the_exact_teacher_term_trains_its_adapter(tiny_model_dir, tokenizer, tmp_path, teacher_dir):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(
        tiny_model_dir,
        tokenizer,
        tmp_path,
        beta=0.0,
        teacher_model=teacher_dir,
        teacher_method="exact_opd",
        peft_config=lora,
        **SHORT,
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = _logs(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["teacher/exact_opd/reverse_kl/full"]) for log in logs)
    moved = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)


def test_zero3_is_refused_for_the_teacher_and_other_stages_are_not():
    from types import SimpleNamespace

    from trl_divergences.trl.trainer import refuse_zero3_teacher

    with pytest.raises(ValueError, match="teacher_reference_model under DeepSpeed ZeRO-3 is not supported yet"):
        refuse_zero3_teacher(SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)), "teacher_reference_model")
    for args in (
        SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
        SimpleNamespace(deepspeed_plugin=None),
    ):
        refuse_zero3_teacher(args)
