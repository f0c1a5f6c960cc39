"""The registered trainer's prompt curriculum on verl's dataloader (verl 0.9.1 has no ``data.sampler`` hook).

The trainer wraps the train dataset in :class:`PromptIndexed` (each row carries its dataset index, which verl
copies into every trajectory's TransferQueue fields) and draws it with :class:`CurriculumPromptSampler`: one
generation batch of distinct prompts per chunk, drawn from the curriculum's weights when the chunk is first read.
verl's ``StatefulDataLoader`` saves the sampler's :meth:`~CurriculumPromptSampler.state_dict` (pass-rate table,
the recently drawn chunks, the epoch) in the checkpoint's ``data.pt`` and restores it before it fast-forwards to
its position, so a resumed run draws the same prompts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from ..curricula import CurriculumSampler, PassRateCurriculum

#: the dataset column (and TransferQueue field) holding each prompt's dataset row
INDEX = "td_prompt_index"


class PromptIndexed(Dataset):
    """``dataset`` with each row's index added as a 0-d int64 tensor under :data:`INDEX` (verl's ``collate_fn``
    stacks it into a [B] tensor); other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        if INDEX in row:
            raise ValueError(f"the dataset already has a {INDEX!r} column")
        return {**row, INDEX: torch.tensor(int(index), dtype=torch.int64)}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class CurriculumPromptSampler(CurriculumSampler):
    """:class:`~trl_divergences.curricula.CurriculumSampler` with verl's layout: each chunk is one generation batch of
    ``batch_size`` distinct prompts, each yielded once (verl's agent loop makes the ``rollout.n`` rollouts), and the
    epoch advances by itself at the end of an iteration (verl's loop never calls ``set_epoch``). The state holds the
    position in the epoch: the dataloader restores a stateful sampler and lets it resume (it does not skip)."""

    def __init__(self, curriculum: PassRateCurriculum, n_prompts: int, batch_size: int, seed: int = 0) -> None:
        super().__init__(curriculum, n_prompts, mini_repeat_count=1, batch_size=batch_size, repeat_count=1, seed=seed)
        #: prompts yielded in this epoch
        self.position = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[int]:
        start, self._resume_at = self._resume_at, 0
        for j in range(start // self.batch_size, self.chunks_per_epoch):
            indices = self.draw(self.epoch * self.chunks_per_epoch + j)
            for k, index in enumerate(indices):
                if j * self.batch_size + k >= start:
                    self.position = j * self.batch_size + k + 1
                    yield index
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.position = self._resume_at = int(state["position"])
