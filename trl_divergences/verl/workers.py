"""verl worker subclasses that switch on the exact divergence (``kl_loss_type=<name>:full``, :mod:`.full`).

* :class:`RefHiddenWorker` (verl's ``ActorRolloutRefWorker.ref_worker_cls``): the reference's inner training worker;
  its ``infer_batch`` runs with ``compute_loss=True`` so the engine calls :func:`~.full.ref_hidden_loss`, whose
  ``model_output["ref_hidden"]`` (final hidden states of the completion positions) is returned beside
  ``log_probs`` and, through verl's TransferQueue bridge, stored with the batch.
* :class:`FullActorWorker` (``actor_worker_cls``): the actor's inner training worker; its ``train_mini_batch`` sets
  the micro-batch flag ``distillation_use_topk`` so the FSDP engine calls the loss first as its logits processor
  (:func:`~.full.full_ppo_loss`).
* :class:`FullActorRolloutRefWorker`: the Ray worker class, verl's hybrid worker with those two inner classes; after
  verl's ``init_model`` it installs the two loss functions, the actor's with a frozen copy of the reference lm_head
  read from the checkpoint (verl's reference is the initial actor: both are built from ``actor_rollout_ref.model``).

:func:`use_full_workers` swaps it into a trainer's role → worker mapping (:mod:`.full_trainer`).
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import torch
from torch import Tensor
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from .config import full_kl_spec
from .full import LMHeadInput, full_ppo_loss, ref_hidden_loss


def _checkpoint_tensors(path: str, names: list[str]) -> dict[str, Tensor]:
    """The tensors ``names`` that a Hugging Face safetensors checkpoint folder holds (absent names are left out)."""
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files: dict[str, list[str]] = {}
        for name in names:
            if name in weight_map:
                files.setdefault(weight_map[name], []).append(name)
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = {"model.safetensors": names}
    else:
        raise FileNotFoundError(f"no safetensors checkpoint (model.safetensors[.index.json]) in {path!r}")
    out = {}
    for file, wanted in files.items():
        with safe_open(os.path.join(path, file), framework="pt") as f:
            out.update({name: f.get_tensor(name) for name in wanted if name in f.keys()})
    return out


def reference_lm_head(path: str, hf_config: Any, trust_remote_code: bool = False) -> tuple[Tensor, Tensor | None]:
    """The reference's lm_head weight [V, H] (and bias [V] or None) read from its checkpoint folder ``path``: the
    output embedding's parameters of the model class ``hf_config`` builds (found on a meta-device copy), or the
    input embedding's when they are tied and the checkpoint stores only those."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    modules = {id(m): n for n, m in model.named_modules()}
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) for the exact divergence")
    head_name, embed_name = modules[id(head)], modules[id(embed)]
    wanted = [f"{head_name}.weight", f"{embed_name}.weight"]
    if getattr(head, "bias", None) is not None:
        wanted.append(f"{head_name}.bias")
    tensors = _checkpoint_tensors(path, wanted)
    weight = tensors.get(f"{head_name}.weight")
    if weight is None and getattr(hf_config, "tie_word_embeddings", False):
        weight = tensors.get(f"{embed_name}.weight")
    if weight is None:
        raise ValueError(f"checkpoint {path!r} holds no {head_name}.weight (nor tied {embed_name}.weight)")
    return weight, tensors.get(f"{head_name}.bias")


class RefHiddenWorker(TrainingWorker):
    """The reference's inner worker: every ``infer_batch`` also returns ``ref_hidden`` (see the module docstring)."""

    def install_hidden_loss(self) -> None:
        """Hook the engine's lm_head and make :func:`~.full.ref_hidden_loss` this worker's loss function."""
        self.loss_fn = partial(ref_hidden_loss, capture=LMHeadInput(self.engine.module))

    def infer_batch(self, data):
        tu.assign_non_tensor(data, compute_loss=True, distillation_use_topk=False)
        return super().infer_batch(data)


class FullActorWorker(TrainingWorker):
    """The actor's inner worker: its updates run the loss as the engine's logits processor first."""

    def train_mini_batch(self, data):
        tu.assign_non_tensor(data, distillation_use_topk=True, distillation_only=False)
        return super().train_mini_batch(data)


def install_full_losses(worker: Any, device: str | torch.device) -> None:
    """After verl's ``init_model``: the ref's hidden-state loss on ``worker.ref`` (roles with "ref") and
    :func:`~.full.full_ppo_loss` on ``worker.actor`` (roles with "actor"), its frozen reference lm_head read from
    ``actor_rollout_ref.model`` and placed on ``device``."""
    if "ref" in worker.role:
        worker.ref.install_hidden_loss()
    if "actor" in worker.role:
        actor_config = worker.loss_fn.keywords["config"]
        spec = full_kl_spec(actor_config)
        if spec is None:
            raise ValueError("the full-divergence workers need actor.use_kl_loss=true and a '<name>:full' kl_loss_type")
        model = actor_config.model_config
        weight, bias = reference_lm_head(
            model.local_path, model.hf_config, trust_remote_code=getattr(model, "trust_remote_code", False)
        )
        worker.loss_fn = partial(
            full_ppo_loss,
            config=actor_config,
            divergence=actor_config.kl_loss_type,
            ref_weight=weight.to(device),
            ref_bias=None if bias is None else bias.to(device),
        )
        worker.actor.set_loss_fn(worker.loss_fn)


class FullActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor / rollout / ref worker with the exact-divergence inner workers and losses."""

    actor_worker_cls = FullActorWorker
    ref_worker_cls = RefHiddenWorker

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self):
        from verl.utils.device import get_device_name

        super().init_model()
        install_full_losses(self, get_device_name())


def use_full_workers(role_worker_mapping: dict) -> None:
    """Replace verl's ``ActorRolloutRefWorker`` by :class:`FullActorRolloutRefWorker` in a trainer's role → Ray
    worker-class mapping (every role verl maps to it: actor, actor+rollout(+ref), ref)."""
    import ray

    for role, cls in role_worker_mapping.items():
        if getattr(cls, "__ray_actor_class__", None) is ActorRolloutRefWorker:
            role_worker_mapping[role] = ray.remote(FullActorRolloutRefWorker)
