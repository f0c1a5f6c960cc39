"""A seeded, resumable stream of rehearsal samples: epochs of seeded permutations of the store."""

from __future__ import annotations

from typing import Any

import torch

from .store import derive_seed


class RehearsalStream:
    """Yields batches of sample indices in ``range(n)``: epoch e is a permutation drawn from ``derive_seed(seed, e)``,
    batches run across epoch boundaries. ``state_dict()`` / ``load_state_dict()`` give exact continuation."""

    def __init__(self, n: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError("the rehearsal store is empty: no prompt had all k base samples correct")
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def next_indices(self, batch_size: int) -> list[int]:
        """The next ``batch_size`` indices of the stream."""
        out: list[int] = []
        while len(out) < batch_size:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(batch_size - len(out), self.n - self.position)
            out += self._order[self.position : self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n:
            raise ValueError(f"stream state is for a store of {state['n']} samples, this store has {self.n}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)
