"""Run as a script by ``test_trainer.py`` (its own process: it starts Ray): the trainer's ``_compute_advantage``
override against a real TransferQueue (SimpleStorage on a local Ray), verl's base method stubbed. Trajectories are
stored the way verl's agent loop stores them (``list_of_dict_to_tensordict`` of per-trajectory dicts, with the
dataset columns, our prompt index among them, as 0-d tensors); exits non-zero on a mismatch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402
import torch  # noqa: E402
import transfer_queue as tq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl.trainer.ppo.v1 import trainer_base  # noqa: E402
from verl.utils.tensordict_utils import list_of_dict_to_tensordict  # noqa: E402

from tests.verl.test_hydra import compose  # noqa: E402
from tests.verl.test_trainer import TOKEN_FIELDS, UIDS, padded_batch  # noqa: E402
from trl_divergences.objective import Objective  # noqa: E402
from trl_divergences.verl import trainer as our_trainer  # noqa: E402
from trl_divergences.verl.loss import CORRECT  # noqa: E402
from trl_divergences.verl.sampler import INDEX  # noqa: E402

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
section = ["+trl_divergences.advantage_reweighting=ace", "+trl_divergences.reweighting_kwargs.alpha=0.5"]
config = compose(
    [
        "trainer.v1.trainer_mode=trl_divergences",
        "actor_rollout_ref.actor.use_kl_loss=true",
        *section,
        "+trl_divergences.curriculum=gaussian",
    ]
)
trainer = trainer_base.get_trainer_cls("trl_divergences")(config)
trainer.objective.curriculum.bind(10)
trainer.global_steps, trainer.total_training_steps = 1, 5
trainer_base.PPOTrainer._compute_advantage = lambda self, batch, metrics: batch

lengths = [3, 2, 4, 1, 2, 2]
data = padded_batch([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], lengths, [3, 3, 7, 7, 5, 5], seed=1)
rows = [
    {"uid": uid, **{k: data[k][i, :n] for k in TOKEN_FIELDS}, INDEX: data[INDEX][i]}
    for i, (uid, n) in enumerate(zip(UIDS, lengths, strict=True))
]
keys = [f"k{i}" for i in range(6)]
tags = [{}, {}, {}, {}, {"is_padding": True}, {"is_padding": True}]
tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(rows), tags=tags)
metrics: dict = {}
trainer._compute_advantage(KVBatchMeta(partition_id="train", keys=keys, tags=tags), metrics)

back = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages", CORRECT])
expected, _ = our_trainer.rollout_fields(
    Objective(advantage_reweighting="ace", reweighting_kwargs={"alpha": 0.5}),
    TensorDict(data, batch_size=6),
    UIDS,
    step=0,
    max_steps=5,
    real=torch.tensor([not t.get("is_padding", False) for t in tags]),
)
for i, n in enumerate(lengths):
    torch.testing.assert_close(back["advantages"][i], expected["advantages"][i, :n])
assert back[CORRECT].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0], back[CORRECT]
table = trainer.objective.curriculum.pass_rates
assert abs(table[3].item() - 0.5) < 1e-12 and abs(table[7].item() - 0.55) < 1e-12 and table[5].item() == 0.5, table
assert metrics["curriculum/gaussian/batch_pass_rate"] == 0.75, metrics
ray.shutdown()
print("ok")
