"""The exact path's worker wiring on CPU: the reference lm_head read from a checkpoint, the losses the workers install
run through ``FSDPEngineWithLMHead.forward_step`` against a float64 recomputation, the inner workers' flags, verl's
concatenation of the hidden states over micro-batches, and the trainer's role → worker mapping."""

from __future__ import annotations

import types
from functools import partial

import pytest
import torch

from tests.verl.test_full import RESPONSES, engine, float64_reference, micro_batch, tiny_qwen2

pytestmark = pytest.mark.verl

engine_workers = pytest.importorskip("verl.workers.engine_workers")

from trl_divergences.verl.full import REF_HIDDEN, full_ppo_loss, ref_hidden_loss  # noqa: E402
from trl_divergences.verl.workers import (  # noqa: E402
    FullActorRolloutRefWorker,
    FullActorWorker,
    RefHiddenWorker,
    install_full_losses,
    reference_lm_head,
    use_full_workers,
)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("sharded", [False, True])
def test_reference_lm_head_is_read_from_the_checkpoint(tmp_path, tied, sharded):
    model = tiny_qwen2(3)
    model.config.tie_word_embeddings = tied
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(tmp_path, max_shard_size="2KB" if sharded else "1GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    weight, bias = reference_lm_head(str(tmp_path), model.config)
    assert torch.equal(weight, model.lm_head.weight.detach())
    assert bias is None


def test_reference_lm_head_without_a_checkpoint_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="no safetensors checkpoint"):
        reference_lm_head(str(tmp_path), tiny_qwen2(0).config)


def hybrid_worker(policy, ref, checkpoint, kl_loss_type, monkeypatch):
    """A ``FullActorRolloutRefWorker`` as verl's ``init_model`` leaves it (inner workers with their engines and the
    actor's ``ppo_loss``), built without Ray or a device."""
    from verl.workers.config import ActorConfig, PolicyLossConfig
    from verl.workers.utils.losses import ppo_loss

    config = ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=3,
        use_kl_loss=True,
        kl_loss_type=kl_loss_type,
        kl_loss_coef=0.3,
        policy_loss=PolicyLossConfig(loss_mode="vanilla"),
    )
    config.model_config = types.SimpleNamespace(local_path=str(checkpoint), hf_config=ref.config)
    worker = object.__new__(FullActorRolloutRefWorker)
    worker.role = "actor_rollout_ref"
    worker.ref = object.__new__(worker.ref_worker_cls)
    worker.ref.engine = engine(ref, monkeypatch)
    worker.actor = object.__new__(worker.actor_worker_cls)
    worker.actor.engine = engine(policy, monkeypatch)
    worker.loss_fn = partial(ppo_loss, config=config)
    return worker


def batch(remove_padding: bool, **kwargs):
    """test_full's micro-batch on verl's padded path or its remove-padding path (packed [1, nnz] rows; transformers
    finds the sequences from the position ids, so the CPU's sdpa attention stays within each sequence)."""
    from verl.utils import tensordict_utils as tu

    data = micro_batch(**kwargs)
    tu.assign_non_tensor(data, use_remove_padding=remove_padding)
    return data


@pytest.mark.parametrize("remove_padding", [False, True], ids=["padded", "remove_padding"])
@pytest.mark.parametrize("kl_type", ["js(beta=0.3):full", "hellinger:full"])
def test_installed_losses_through_the_engine_match_float64(tmp_path, kl_type, remove_padding, monkeypatch):
    policy, ref = tiny_qwen2(0), tiny_qwen2(1)
    ref.save_pretrained(tmp_path)
    worker = hybrid_worker(policy, ref, tmp_path, kl_type, monkeypatch)
    install_full_losses(worker, "cpu")
    assert worker.ref.loss_fn.func is ref_hidden_loss
    assert worker.actor.loss_fn is worker.loss_fn and worker.loss_fn.func is full_ppo_loss
    assert torch.equal(worker.loss_fn.keywords["ref_weight"], ref.lm_head.weight.detach())

    with torch.no_grad():
        _, out = worker.ref.engine.forward_step(batch(remove_padding), worker.ref.loss_fn, forward_only=True)
    ref_hidden = list(out["model_output"][REF_HIDDEN].unbind())

    name, kwargs = ("js", {"beta": 0.3}) if kl_type.startswith("js") else ("hellinger", {})
    policy64, ds, lps = float64_reference(policy, ref, name, kwargs)
    old = [lp.detach().float() for lp in lps]
    data = batch(remove_padding, old_logps=old, ref_hidden=ref_hidden, distillation_use_topk=True)
    loss, out = worker.actor.engine.forward_step(data, worker.actor.loss_fn, forward_only=False)
    loss.backward()
    n_tokens = sum(len(r) for r in RESPONSES)
    want_div = torch.cat(ds).sum() / n_tokens
    want = sum(-a * torch.exp(lp - lp.detach()).sum() for a, lp in zip([0.5, -1.0, 0.25], lps)) / n_tokens
    want = want + 0.3 * want_div
    assert float(out["metrics"]["kl_loss"].values[0]) == pytest.approx(want_div.item(), rel=1e-5)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    want.backward()
    grads64 = dict(policy64.named_parameters())
    for k, p in policy.named_parameters():
        torch.testing.assert_close(p.grad.double(), grads64[k].grad, rtol=1e-4, atol=1e-6)


def test_install_refuses_an_actor_without_the_exact_estimator(tmp_path, monkeypatch):
    ref = tiny_qwen2(1)
    worker = hybrid_worker(tiny_qwen2(0), ref, tmp_path, "js:k3", monkeypatch)
    with pytest.raises(ValueError, match="'<name>:full' kl_loss_type"):
        install_full_losses(worker, "cpu")


def test_ref_role_installs_the_hidden_state_loss_only(monkeypatch):
    worker = object.__new__(FullActorRolloutRefWorker)
    worker.role = "ref"
    worker.ref = object.__new__(RefHiddenWorker)
    worker.ref.engine = engine(tiny_qwen2(1), monkeypatch)
    install_full_losses(worker, "cpu")
    assert worker.ref.loss_fn.func is ref_hidden_loss


def test_inner_workers_set_the_engine_flags(monkeypatch):
    """The ref's inference runs its loss (the trainer asks for compute_loss=False) and never as a logits processor;
    the actor's update runs the loss as the logits processor (the trainer sets distillation_use_topk=False)."""
    from verl.utils import tensordict_utils as tu

    seen = {}
    monkeypatch.setattr(engine_workers.TrainingWorker, "infer_batch", lambda self, data: seen.update(infer=data))
    monkeypatch.setattr(engine_workers.TrainingWorker, "train_mini_batch", lambda self, data: seen.update(train=data))
    data = micro_batch()
    tu.assign_non_tensor(data, compute_loss=False, distillation_use_topk=True)
    RefHiddenWorker.infer_batch(object.__new__(RefHiddenWorker), data)
    assert tu.get(seen["infer"], "compute_loss") is True
    assert tu.get(seen["infer"], "distillation_use_topk") is False
    data = micro_batch(distillation_use_topk=False)
    FullActorWorker.train_mini_batch(object.__new__(FullActorWorker), data)
    assert tu.get(seen["train"], "distillation_use_topk") is True
    assert tu.get(seen["train"], "distillation_only") is False


def test_verl_batch_utilities_keep_each_samples_hidden_states():
    """The actor side's split of the fetched batch (mini-batches, fixed and dynamic micro-batches) and the ref
    side's output TensorDict keep each sample's [response_len, H] block."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import prepare_micro_batches

    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(len(r), 4, generator=g) for r in RESPONSES]
    data = micro_batch(ref_hidden=blocks)
    out = tu.get_tensordict(tensor_dict={REF_HIDDEN: data[REF_HIDDEN]}, non_tensor_dict={"metrics": {}})
    assert all(torch.equal(a, b) for a, b in zip(out[REF_HIDDEN].unbind(), blocks, strict=True))
    for mini in tu.make_iterator(data, mini_batch_size=3, epochs=1, seed=0, dataloader_kwargs={"shuffle": True}):
        index = [RESPONSES.index(r.tolist()) for r in mini["responses"].unbind()]
        assert all(torch.equal(a, blocks[i]) for a, i in zip(mini[REF_HIDDEN].unbind(), index, strict=True))
    tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=8)
    micro, indices = prepare_micro_batches(data, dp_group=None)
    assert len(micro) > 1
    for m, index in zip(micro, indices, strict=True):
        assert all(torch.equal(a, blocks[i]) for a, i in zip(m[REF_HIDDEN].unbind(), index, strict=True))


def test_verl_concatenates_and_reorders_the_hidden_states_over_micro_batches():
    """``postprocess_batch_func`` (how the ref's per-micro-batch outputs become one batch field) keeps each
    sample's [response_len, H] block, also when dynamic batching reordered the samples."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import postprocess_batch_func

    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(n, 4, generator=g) for n in (3, 1, 2, 5)]
    order = [[2, 0], [3, 1]]  # dynamic batching's micro-batches, as indices into the batch

    def nested(idx):
        return torch.nested.as_nested_tensor([blocks[i] for i in idx], layout=torch.jagged)

    outputs = [{"model_output": {REF_HIDDEN: nested(idx)}, "loss": 0.0, "metrics": {}} for idx in order]
    data = micro_batch()
    tu.assign_non_tensor(data, use_dynamic_bsz=True)
    merged = postprocess_batch_func(outputs, order, data)["model_output"][REF_HIDDEN]
    for got, want in zip(merged.unbind(), blocks):
        assert torch.equal(got, want)


def test_use_full_workers_swaps_only_verls_hybrid_worker():
    import ray

    mapping = {
        "actor": ray.remote(engine_workers.ActorRolloutRefWorker),
        "critic": ray.remote(engine_workers.TrainingWorker),
    }
    critic = mapping["critic"]
    use_full_workers(mapping)
    assert mapping["actor"].__ray_actor_class__ is FullActorRolloutRefWorker
    assert mapping["critic"] is critic
    from verl.single_controller.base.decorator import MAGIC_ATTR, Dispatch

    # still an RPC of the worker group, dispatched to every rank like verl's own init_model
    assert getattr(FullActorRolloutRefWorker.init_model, MAGIC_ATTR)["dispatch_mode"] == Dispatch.ONE_TO_ALL


@pytest.mark.slow
def test_transfer_queue_stores_the_hidden_states_with_the_batch():
    """The ref's output reaches the actor through TransferQueue (a real one, on a local Ray): the [bs, j, H] jagged
    field is put beside the other fields and comes back per sample with every field (the actor's fetch) and in
    another key order."""
    import os

    import ray
    import transfer_queue as tq
    import verl
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    conf = OmegaConf.load(
        os.path.join(os.path.dirname(verl.__file__), "trainer/config/transfer_queue/transfer_queue.yaml")
    )
    conf.enable = True
    conf.backend.SimpleStorage.num_data_storage_units = 1
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(n, 4, generator=g) for n in (3, 1, 5)]
    log_probs = [torch.randn(n, generator=g) for n in (3, 1, 5)]
    keys = ["a", "b", "c"]

    def jagged(tensors):
        return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tq.init(conf)
        tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({"log_probs": jagged(log_probs)}, 3))
        tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({REF_HIDDEN: jagged(blocks)}, 3))
        every = tq.kv_batch_get(keys=keys, partition_id="train")
        some = tq.kv_batch_get(keys=["c", "a"], partition_id="train", select_fields=[REF_HIDDEN])
        tq.close()
    finally:
        ray.shutdown()
    assert set(every.keys()) == {"log_probs", REF_HIDDEN}
    assert all(torch.equal(got, want) for got, want in zip(every[REF_HIDDEN].unbind(), blocks, strict=True))
    assert all(
        torch.equal(got, want) for got, want in zip(some[REF_HIDDEN].unbind(), [blocks[2], blocks[0]], strict=True)
    )
