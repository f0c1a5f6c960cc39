"""Curricula (which prompts a generation batch trains on) and schedules (the divergence coefficient and direction in
force at each step).

* A :class:`Curriculum` of kind ``"sampler"`` keeps a per-prompt pass-rate table and turns it into sampling
  weights; :class:`CurriculumSampler` draws GRPO generation batches from them with TRL's ``RepeatSampler`` layout.
* A curriculum of kind ``"filter"`` (SELF) instead filters each step's prompts before the rollouts.
* A :class:`Schedule` maps (step, batch accuracy) to a coefficient multiplier and, optionally, the divergence name.

Every object has ``state_dict()`` / ``load_state_dict()`` so that a resumed run samples and weighs like an
uninterrupted one; weights are computed only from gathered statistics, so every process holds the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ..checks import check_fraction, check_positive_int
from ..registry import Method, Registry
from ..seeding import derive_seed

CURRICULA: Registry[Curriculum] = Registry("curriculum")
SCHEDULES: Registry[Schedule] = Registry("coefficient schedule")


class Curriculum(Method):
    """Base class of curricula; ``kind`` is ``"sampler"`` (:class:`PassRateCurriculum`) or ``"filter"``."""

    method_kind = "curriculum"
    kind: str = "sampler"


class PassRateCurriculum(Curriculum):
    """Sampling weights from a per-prompt EMA pass rate p̃ (FG-ExPO's table): p̃ starts at ``initial`` (0.5, an
    optimistic prior that gives uniform sampling) and, each time a prompt is sampled with pass rate p in its group,
    p̃ ← ``ema``·p̃ + (1 − ``ema``)·p. Subclasses map p̃ to weights in :meth:`weight_of`.
    """

    def __init__(self, *, ema: float = 0.9, initial: float = 0.5) -> None:
        self.ema = check_fraction(self.name, "ema", ema, low_open=False, high_open=True)
        self.initial = check_fraction(self.name, "initial", initial, low_open=False)
        self.pass_rates: Tensor | None = None

    def bind(self, n_prompts: int) -> None:
        """Size the table for a dataset of ``n_prompts`` prompts (a restored table must match)."""
        if self.pass_rates is None:
            self.pass_rates = torch.full((n_prompts,), self.initial, dtype=torch.float64)
        elif self.pass_rates.numel() != n_prompts:
            raise ValueError(f"{self.name}: state has {self.pass_rates.numel()} prompts, the dataset {n_prompts}")

    def update(self, prompt_indices: Tensor, pass_rates: Tensor) -> None:
        """Fold one generation batch's per-group pass rates into the table (one entry per sampled prompt; a prompt
        drawn twice in the batch is updated once per occurrence, in order)."""
        table = self._table()
        for index, rate in zip(prompt_indices.tolist(), pass_rates.double().tolist(), strict=True):
            if rate == rate:  # NaN: the group was not scored
                table[index] = self.ema * table[index] + (1.0 - self.ema) * rate

    def weight_of(self, pass_rates: Tensor) -> Tensor:
        raise NotImplementedError

    def weights(self) -> Tensor:
        """[n_prompts] float64 non-negative sampling weights (unnormalized)."""
        return self.weight_of(self._table())

    def _table(self) -> Tensor:
        if self.pass_rates is None:
            raise RuntimeError(f"{self.name}: bind(n_prompts) before use")
        return self.pass_rates

    def state_dict(self) -> dict:
        return {"pass_rates": None if self.pass_rates is None else self.pass_rates.tolist()}

    def load_state_dict(self, state: dict) -> None:
        rates = state["pass_rates"]
        self.pass_rates = None if rates is None else torch.tensor(rates, dtype=torch.float64)


class CurriculumSampler(Sampler[int]):
    """TRL ``RepeatSampler``'s layout with prompts drawn from a curriculum's weights.

    Each chunk is ``batch_size`` distinct prompts drawn without replacement with probability ∝ weights (read when the
    chunk is drawn, so a weight update reaches the chunks drawn after it); each prompt index is repeated
    ``mini_repeat_count`` (G) times consecutively and the chunk ``repeat_count`` times (num_iterations ×
    steps_per_generation). An epoch has ⌊n_prompts / batch_size⌋ chunks, as RepeatSampler. Chunk c is drawn with its
    own generator seeded by (seed, c), so every process draws the same prompts from the same weights, and the last
    ``history`` drawn chunks are kept in the state: a resumed run replays the chunks that were drawn ahead of the
    checkpoint instead of redrawing them from newer weights.
    """

    def __init__(
        self,
        curriculum: PassRateCurriculum,
        n_prompts: int,
        mini_repeat_count: int,
        batch_size: int,
        repeat_count: int,
        seed: int = 0,
        history: int = 8,
    ) -> None:
        check_positive_int("curriculum sampler", "history", history)
        if batch_size > n_prompts:
            raise ValueError(f"a generation batch needs {batch_size} distinct prompts, the dataset has {n_prompts}")
        curriculum.bind(n_prompts)
        self.curriculum = curriculum
        self.n_prompts, self.mini_repeat_count = n_prompts, mini_repeat_count
        self.batch_size, self.repeat_count = batch_size, repeat_count
        self.seed, self.history = seed, history
        self.chunks_per_epoch = n_prompts // batch_size
        self.epoch = 0
        self.drawn: dict[int, list[int]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, chunk: int) -> list[int]:
        """The prompt indices of chunk ``chunk`` (replayed from the history when it was drawn already)."""
        if chunk not in self.drawn:
            weights = self.curriculum.weights().clamp(min=0.0)
            total = weights.sum()
            # a floor far below any real weight: no-replacement draws need batch_size entries > 0
            weights = weights / total + 1e-12 if total > 0 else torch.ones_like(weights)
            gen = torch.Generator().manual_seed(derive_seed("curriculum", self.seed, chunk))
            self.drawn[chunk] = torch.multinomial(weights, self.batch_size, replacement=False, generator=gen).tolist()
            for old in sorted(self.drawn)[: -self.history]:
                del self.drawn[old]
        return self.drawn[chunk]

    def __iter__(self) -> Iterator[int]:
        for j in range(self.chunks_per_epoch):
            indices = self.draw(self.epoch * self.chunks_per_epoch + j)
            for _ in range(self.repeat_count):
                for index in indices:
                    yield from [index] * self.mini_repeat_count

    def __len__(self) -> int:
        return self.chunks_per_epoch * self.batch_size * self.mini_repeat_count * self.repeat_count

    def state_dict(self) -> dict:
        return {"drawn": {str(k): v for k, v in self.drawn.items()}, "curriculum": self.curriculum.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = {int(k): list(v) for k, v in state["drawn"].items()}
        self.curriculum.load_state_dict(state["curriculum"])
        self.curriculum.bind(self.n_prompts)


class Schedule(Method):
    """Base class of coefficient schedules: :meth:`__call__` gives (coefficient multiplier, divergence name or None
    for the configured one) at a training step. ``needs_accuracy``: the value depends on the batch's mean
    correctness; ``divergences``: the names the schedule may switch to (validated against the estimator)."""

    method_kind = "coefficient schedule"
    needs_accuracy: bool = False
    divergences: tuple[str, ...] = ()

    def __call__(self, step: int, max_steps: int, accuracy: float | None = None) -> tuple[float, str | None]:
        raise NotImplementedError


def get_curriculum(name: str, **kwargs) -> Curriculum:
    """Build a registered curriculum; ``ValueError`` names the valid names / kwargs."""
    return CURRICULA.build(name, **kwargs)


def list_curricula() -> list[str]:
    """Names of all registered curricula."""
    return CURRICULA.names()


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a registered coefficient schedule; ``ValueError`` names the valid names / kwargs."""
    return SCHEDULES.build(name, **kwargs)


def list_schedules() -> list[str]:
    """Names of all registered coefficient schedules."""
    return SCHEDULES.names()
