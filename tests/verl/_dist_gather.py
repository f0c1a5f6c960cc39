"""Run by ``torch.distributed.run`` (2 processes, gloo) from ``test_trainer_loss.py``: the actor loss's gather and
reduce_sum over a data-parallel group, with a different number of values on each rank; exits non-zero on a
mismatch."""

import torch
import torch.distributed as dist

from trl_divergences.verl.loss import _gather, _reduce_sum

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
group = dist.new_group(list(range(world)))


def values_of(r: int) -> torch.Tensor:
    return torch.arange(r + 2, dtype=torch.float64) + 10 * r


gathered = _gather(group)(values_of(rank))
assert torch.equal(gathered, torch.cat([values_of(r) for r in range(world)])), gathered
summed = _reduce_sum(group)(torch.tensor([float(rank + 1), 1.0]))
assert summed.tolist() == [world * (world + 1) / 2, float(world)], summed
assert _gather(None) is None and _reduce_sum(None) is None
dist.destroy_process_group()
