"""The registered trainer ``trainer.v1.trainer_mode=trl_divergences``: the objective's rollout step on verl-shaped
batches (hand-computed curriculum tables, ACE advantages, schedules), its TransferQueue round trip and actor step
info with verl's base methods stubbed, the curriculum sampler through verl's ``StatefulDataLoader`` checkpoint, and
construction from a composed config."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from tests.verl.test_hydra import compose

pytestmark = pytest.mark.verl

pytest.importorskip("transfer_queue")
trainer_base = pytest.importorskip("verl.trainer.ppo.v1.trainer_base")

from trl_divergences.curricula import get_curriculum  # noqa: E402
from trl_divergences.objective import Objective  # noqa: E402
from trl_divergences.verl import trainer as our_trainer  # noqa: E402
from trl_divergences.verl.kl import parse_kl_type  # noqa: E402
from trl_divergences.verl.loss import CORRECT, DIVERGENCE_WEIGHT, STEP_KEY  # noqa: E402
from trl_divergences.verl.sampler import INDEX, CurriculumPromptSampler, PromptIndexed  # noqa: E402

MODE = ["trainer.v1.trainer_mode=trl_divergences"]


def padded_batch(rewards: list[float], lengths: list[int], prompt_index: list[int], seed: int = 0) -> dict:
    """verl's padded fields of one generation batch: the reward on each response's last token, GRPO-like
    advantages constant over the response, π_old / ρ log-probs."""
    g = torch.Generator().manual_seed(seed)
    bs, t = len(rewards), max(lengths)
    mask = torch.zeros(bs, t)
    scores = torch.zeros(bs, t)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        scores[i, n - 1] = rewards[i]
    adv = torch.tensor([0.7, -0.7, 0.0, 0.0, 0.5, -0.5])[:bs].unsqueeze(-1) * mask
    return {
        "response_mask": mask,
        "rm_scores": scores,
        "advantages": adv,
        "old_log_probs": -torch.rand(bs, t, generator=g) * mask,
        "ref_log_prob": -torch.rand(bs, t, generator=g) * mask,
        INDEX: torch.tensor(prompt_index),
    }


UIDS = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)


def fields_of(objective, data, real=None, step=0, max_steps=10):
    from tensordict import TensorDict

    td = TensorDict(data, batch_size=len(data["rm_scores"]))
    return our_trainer.rollout_fields(
        objective, td, UIDS[: td.batch_size[0]], step=step, max_steps=max_steps, real=real
    )


def test_curriculum_table_from_the_batch_rewards_padding_excluded():
    """Prompt 3 passes 1 of 2, prompt 7 2 of 2: p̃ = 0.9·0.5 + 0.1·p (gaussian's EMA); the padding rows (prompt 5,
    both correct) change nothing."""
    objective = Objective(curriculum="gaussian")
    objective.curriculum.bind(10)
    data = padded_batch([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], [3, 2, 4, 1, 2, 2], [3, 3, 7, 7, 5, 5])
    real = torch.tensor([True, True, True, True, False, False])
    fields, metrics = fields_of(objective, data, real)
    table = objective.curriculum.pass_rates
    assert table[3].item() == pytest.approx(0.5) and table[7].item() == pytest.approx(0.55)
    assert table[5].item() == 0.5
    assert metrics["curriculum/gaussian/batch_pass_rate"] == pytest.approx(0.75)
    assert fields[CORRECT].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert "advantages" not in fields and DIVERGENCE_WEIGHT not in fields


def test_ace_rewrites_the_negative_advantages_from_the_batch_log_probs():
    objective = Objective(advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5})
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [0, 0, 1, 1], seed=1)
    fields, metrics = fields_of(objective, data)
    c = ((data["old_log_probs"][1] - data["ref_log_prob"][1]) * data["response_mask"][1]).sum().item()
    expected = data["advantages"].clone()
    expected[1] *= 1 + 0.5 * math.log1p(math.exp(c))
    torch.testing.assert_close(fields["advantages"], expected)
    assert metrics["reweighting/ace/modulated_fraction"] == 0.25


def test_dads_weights_reach_the_batch():
    objective = Objective(advantage_reweighting="dads", coef=1e-3)
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [0, 0, 1, 1])
    fields, _ = fields_of(objective, data)
    # group a: accuracy ½, so the correct rollout (A > 0) weighs 1 − exp(−e·½); the others 1
    assert fields[DIVERGENCE_WEIGHT].tolist() == pytest.approx([1 - math.exp(-math.e / 2), 1.0, 1.0, 1.0])


@pytest.mark.parametrize(("mode", "kept"), [("psr", [True, False, True, True]), ("nsr", [False, True, False, False])])
def test_psr_nsr_drop_rollouts_from_the_masks_verl_counts(mode, kept):
    """PSR keeps the correct rollouts, NSR the wrong ones: the others' response and loss masks are zeroed (verl's
    engine normalises by the global count of loss_mask tokens, TRL's recount)."""
    objective = Objective(advantage_reweighting="w_reinforce", reweighting_kwargs={"mode": mode})
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [0, 0, 1, 1])
    fields, _ = fields_of(objective, data)
    expected = data["response_mask"] * torch.tensor(kept, dtype=torch.float32).unsqueeze(-1)
    assert torch.equal(fields["response_mask"], expected) and torch.equal(fields["loss_mask"], expected)


def test_schedules_set_the_step_info():
    """accuracy_conditioned: β·(tanh(ā) + 1)/2; forward_then_reverse: the configured name, then reverse_kl with the
    configured estimator (a name our kl grammar parses)."""
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [0, 0, 1, 1])
    objective = Objective(coef=0.02, coefficient_schedule="accuracy_conditioned")
    fields_of(objective, data)
    info = our_trainer.step_info(objective, {}, "low_var_kl")
    assert info["coef"] == pytest.approx(0.02 * (math.tanh(0.75) + 1) / 2) and info["kl_loss_type"] == "low_var_kl"

    objective = Objective(
        divergence="forward_kl",
        divergence_estimator="k3+",
        coef=0.1,
        coefficient_schedule="forward_then_reverse",
        schedule_kwargs={"switch_steps": 2},
    )
    fields_of(objective, data, step=1)
    assert our_trainer.step_info(objective, {}, "forward_kl")["kl_loss_type"] == "forward_kl"
    fields_of(objective, data, step=2)
    info = our_trainer.step_info(objective, {}, "forward_kl")
    spec = parse_kl_type(info["kl_loss_type"])
    assert (spec.divergence.name, spec.estimator, info["divergence"]) == ("reverse_kl", "k3+", "reverse_kl")


# ---- the curriculum sampler through verl's dataloader checkpoint ---------------------------------------------------
class Prompts(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": torch.tensor([i, i + 1]), "raw_prompt": f"prompt {i}"}


def loader(num_workers: int = 0):
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.utils.dataset.rl_dataset import collate_fn

    curriculum = get_curriculum("paced")
    sampler = CurriculumPromptSampler(curriculum, n_prompts=12, batch_size=4, seed=3)
    dl = StatefulDataLoader(
        PromptIndexed(Prompts()), batch_size=4, sampler=sampler, drop_last=True, collate_fn=collate_fn
    )
    return curriculum, dl


def batches(dl, curriculum, n: int, save_after: int | None = None, it=None):
    """n batches as verl's trainer reads them (a new iterator after StopIteration), the curriculum updated after
    each; (indices per batch, dataloader state after ``save_after`` batches, pass rates then)."""
    it, out, state = iter(dl) if it is None else it, [], None
    for k in range(n):
        try:
            b = next(it)
        except StopIteration:
            it = iter(dl)
            b = next(it)
        assert b["raw_prompt"].tolist() == [f"prompt {i}" for i in b[INDEX].tolist()]
        out.append(b[INDEX].tolist())
        curriculum.update(b[INDEX], torch.linspace(0, 1, 4) * (k % 2))
        if k + 1 == save_after:
            state = (dl.state_dict(), curriculum.pass_rates.clone())
    return out, state


@pytest.mark.parametrize("save_after", [2, 3, 4])
def test_sampler_state_round_trips_through_the_dataloader_checkpoint(save_after):
    """A loader restored from ``state_dict()`` (verl's data.pt) continues with the batches of the uninterrupted run,
    across the epoch boundary (3 batches per epoch), with the restored pass-rate table (restored when the loader
    starts iterating, as verl's trainer does right after loading the checkpoint)."""
    curriculum, dl = loader()
    full, (state, rates) = batches(dl, curriculum, 7, save_after=save_after)
    assert full[3] != full[0]  # the second epoch draws afresh (the epoch advances without set_epoch)
    curriculum2, dl2 = loader()
    dl2.load_state_dict(state)
    it = iter(dl2)
    assert torch.equal(curriculum2.pass_rates, rates)
    resumed, _ = batches(dl2, curriculum2, 7 - save_after, it=it)
    assert resumed == full[save_after:]


def test_each_chunk_has_distinct_prompts_from_the_weights():
    curriculum, dl = loader()
    curriculum.bind(12)
    curriculum.pass_rates[:6] = 1.0  # solved prompts: paced's Beta kernel floors them at min_weight
    out, _ = batches(dl, curriculum, 3)
    assert all(len(set(b)) == 4 for b in out)
    assert sum(i >= 6 for b in out for i in b) > sum(i < 6 for b in out for i in b)


# ---- the trainer: construction, and its overrides with verl's base methods stubbed ----------------------------
def build(overrides: list[str]):
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls

    return get_trainer_cls("trl_divergences")(compose([*MODE, *overrides]))


def test_construction_normalises_the_mode_and_builds_the_objective():
    trainer = build(
        [
            "actor_rollout_ref.actor.use_kl_loss=true",
            "actor_rollout_ref.actor.kl_loss_type=forward_kl",
            "+trl_divergences.curriculum=gaussian",
            "+trl_divergences.curriculum_kwargs.std=0.2",
        ]
    )
    assert isinstance(trainer, our_trainer.DivergencePPOTrainer)
    assert trainer.trainer_mode == "sync" and trainer.config.trainer.v1.trainer_mode == "sync"
    assert trainer.objective.curriculum.std == 0.2 and trainer.objective.divergence.name == "forward_kl"
    assert trainer.objective_kwargs["divergence_estimator"] == "k3+"


class FakeTransferQueue:
    """kv_batch_get / kv_batch_put over one stored batch of jagged fields (as verl's TransferQueue returns them)."""

    def __init__(self, rows: list[dict]) -> None:
        from verl.utils import tensordict_utils as tu

        self.store = tu.list_of_dict_to_tensordict(rows)
        self.put: dict = {}

    def kv_batch_get(self, keys, partition_id, select_fields):
        return self.store.select(*select_fields)

    def kv_batch_put(self, keys, partition_id, fields):
        self.put = dict(fields.items())
        return "put"


TOKEN_FIELDS = ("response_mask", "rm_scores", "advantages", "old_log_probs", "ref_log_prob")


def test_compute_advantage_round_trip(monkeypatch):
    import transfer_queue as tq
    from transfer_queue import KVBatchMeta

    trainer = build(
        [
            "actor_rollout_ref.actor.use_kl_loss=true",
            "+trl_divergences.advantage_reweighting=ace",
            "+trl_divergences.reweighting_kwargs.alpha=0.5",
            "+trl_divergences.curriculum=gaussian",
        ]
    )
    trainer.objective.curriculum.bind(10)
    trainer.global_steps, trainer.total_training_steps = 1, 5
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [3, 3, 7, 7], seed=1)
    lengths = [3, 2, 4, 1]
    rows = [
        {
            "uid": uid,
            **{k: data[k][i, :n] for k in TOKEN_FIELDS},
            INDEX: data[INDEX][i],
        }
        for i, (uid, n) in enumerate(zip(UIDS[:4], lengths, strict=True))
    ]
    fake = FakeTransferQueue(rows)
    monkeypatch.setattr(tq, "kv_batch_get", fake.kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", fake.kv_batch_put)
    monkeypatch.setattr(trainer_base.PPOTrainer, "_compute_advantage", lambda self, batch, metrics: batch)
    batch = KVBatchMeta(partition_id="train", keys=[f"k{i}" for i in range(4)], tags=[{}] * 4)
    metrics: dict = {}
    assert trainer._compute_advantage(batch, metrics) == "put"
    expected, _ = fields_of(Objective(advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5}), data)
    advantages = fake.put["advantages"]
    assert advantages.is_nested
    for i, n in enumerate(lengths):
        torch.testing.assert_close(advantages[i], expected["advantages"][i, :n])
    assert fake.put[CORRECT].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert trainer.objective.curriculum.pass_rates[7].item() == pytest.approx(0.55)
    assert "reweighting/ace/modulated_fraction" in metrics and "curriculum/gaussian/batch_pass_rate" in metrics


def test_update_actor_sends_the_step_info_and_unprefixes_our_metrics(monkeypatch):
    from transfer_queue import KVBatchMeta

    trainer = build(
        [
            "actor_rollout_ref.actor.use_kl_loss=true",
            "actor_rollout_ref.actor.kl_loss_coef=0.04",
            "actor_rollout_ref.actor.calculate_entropy=true",
            "+trl_divergences.token_masks=[entropy_quantile]",
            "+trl_divergences.coefficient_schedule=warmup",
            "+trl_divergences.schedule_kwargs.warmup_steps=4",
        ]
    )
    seen = {}

    def base_update(self, batch, metrics):
        seen.update(batch.extra_info)
        metrics.update({"actor/mask/entropy_quantile/kept_fraction": 0.2, "actor/pg_loss": 1.0})
        return batch

    monkeypatch.setattr(trainer_base.PPOTrainer, "_update_actor", base_update)
    data = padded_batch([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1], [0, 0, 1, 1])
    fields_of(trainer.objective, data, step=1, max_steps=10)  # warm-up step 1 of 4
    metrics: dict = {}
    trainer._update_actor(KVBatchMeta(partition_id="train", keys=["k"], tags=[{}]), metrics)
    info = seen[STEP_KEY]
    assert info["coef"] == pytest.approx(0.04 * trainer.objective.schedule(1, 10)[0]) and info["coef"] < 0.04
    assert info["kl_loss_type"] == "low_var_kl" and info["objective"] == trainer.objective_kwargs
    assert Objective(**info["objective"]).token_masks[0].name == "entropy_quantile"
    assert metrics == {"mask/entropy_quantile/kept_fraction": 0.2, "actor/pg_loss": 1.0}


def test_init_dataloader_swaps_the_sampler_and_keeps_verls_loader_settings(monkeypatch):
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.utils.dataset.rl_dataset import collate_fn

    def base_init(self):
        self.train_dataset = Prompts()
        self.train_dataloader = StatefulDataLoader(self.train_dataset, batch_size=4, num_workers=0, drop_last=True)
        self.train_dataloader_it = iter(self.train_dataloader)

    monkeypatch.setattr(trainer_base.PPOTrainer, "_init_dataloader", base_init)
    trainer = build(["+trl_divergences.curriculum=paced"])
    trainer._init_dataloader()
    dl = trainer.train_dataloader
    assert isinstance(dl.sampler, CurriculumPromptSampler) and dl.sampler.curriculum is trainer.objective.curriculum
    assert (dl.batch_size, dl.num_workers, dl.drop_last, dl.collate_fn) == (4, 0, True, collate_fn)
    assert trainer.train_dataloader_it is None and isinstance(trainer.train_dataset, PromptIndexed)
    assert len(next(iter(dl))[INDEX]) == 4


def test_the_verl_methods_we_override_keep_their_signatures():
    """An upgrade that renames or reshapes them must fail here, not at the first step on a cluster."""
    import transfer_queue as tq
    from verl.workers import engine_workers
    from verl.workers.utils import padding

    base = trainer_base.PPOTrainer
    assert list(inspect.signature(base._compute_advantage).parameters) == ["self", "batch", "metrics"]
    assert list(inspect.signature(base._update_actor).parameters) == ["self", "batch", "metrics"]
    assert list(inspect.signature(base._init_dataloader).parameters) == ["self"]
    assert {"keys", "partition_id", "select_fields"} <= set(inspect.signature(tq.kv_batch_get).parameters)
    assert {"keys", "partition_id", "fields"} <= set(inspect.signature(tq.kv_batch_put).parameters)
    assert list(inspect.signature(padding.response_to_nested).parameters) == ["tensor", "response_mask"]
    assert "partial(ppo_loss, config=actor_config)" in inspect.getsource(engine_workers.ActorRolloutRefWorker)
    for name in ("train_dataloader", "train_dataloader_it", "train_dataset"):
        assert f"self.{name} =" in inspect.getsource(base._init_dataloader)
    assert "batch.extra_info.update(extra_info)" in inspect.getsource(base._update_actor)


def test_the_entry_point_registers_the_trainer_and_the_loss_in_a_fresh_process():
    import subprocess
    import sys

    code = (
        "import verl\n"
        "from verl.trainer.ppo.v1.trainer_base import get_trainer_cls\n"
        "from verl.workers import engine_workers\n"
        "from trl_divergences.verl import loss, trainer\n"
        "assert get_trainer_cls('trl_divergences') is trainer.DivergencePPOTrainer\n"
        "assert engine_workers.ppo_loss is loss.ppo_loss\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_compute_advantage_against_a_real_transfer_queue():
    """``_tq_round_trip.py`` in its own process (it starts Ray; ~35 s on 2 busy cores)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_tq_round_trip.py"))],
        capture_output=True, text=True, timeout=600, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (out.stdout + out.stderr)[-4000:]
