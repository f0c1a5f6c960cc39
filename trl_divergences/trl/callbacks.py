"""TRL callbacks that log where an RL run moves the weights (the formulas are in :mod:`trl_divergences.analysis`).

Attach to any TRL trainer that keeps ``_metrics`` (``GRPOTrainer`` and ``DivergenceGRPOTrainer`` do)::

    trainer.add_callback(UpdateSparsityCallback(trainer))
    trainer.add_callback(UpdateRankCallback(trainer))

At every logging step the values go into the trainer's metrics, so TRL logs them with its own (``analysis/...``
keys in ``log_history`` and every reporter). θ₀ is the model at ``on_train_begin``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..analysis import DEFAULT_TOLERANCE, parameter_snapshot, trajectory_top1_energy, update_statistics


class _AnalysisCallback(TrainerCallback):
    def __init__(self, trainer: Any) -> None:
        if not hasattr(trainer, "_metrics"):
            raise TypeError(f"need a TRL trainer with `_metrics` (e.g. GRPOTrainer), got {type(trainer).__name__}")
        self.trainer = trainer
        self.reference: dict | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        self.reference = parameter_snapshot(model)

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if control.should_log and self.reference is not None and state.is_world_process_zero:
            for key, value in self.compute(model).items():
                self.trainer._metrics["train"][f"analysis/{key}"].append(value)

    def compute(self, model) -> dict[str, float]:
        raise NotImplementedError


class UpdateSparsityCallback(_AnalysisCallback):
    """Logs ``analysis/updated_fraction``: the share of parameters with |θ − θ₀| > ``tol`` ("RL Finetunes Small
    Subnetworks", 2025; tolerance 1e-5 as the paper)."""

    def __init__(self, trainer: Any, tol: float = DEFAULT_TOLERANCE) -> None:
        super().__init__(trainer)
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.tol = tol

    def compute(self, model) -> dict[str, float]:
        return {"updated_fraction": update_statistics(model, self.reference, self.tol)["updated_fraction"]}


class UpdateRankCallback(_AnalysisCallback):
    """Logs, over the 2-D weights, the mean ``analysis/effective_rank`` (entropy effective rank of ΔW, Roy &
    Vetterli 2007), ``analysis/effective_rank_ratio`` (÷ min(rows, cols)) and ``analysis/top1_energy``; with
    ``trajectory=True`` also ``analysis/trajectory_top1_energy`` of the deltas at every logging step so far (RELEX's
    rank-1 trajectory; keeps one flattened copy of the parameters per logging step in CPU memory)."""

    def __init__(self, trainer: Any, trajectory: bool = False) -> None:
        super().__init__(trainer)
        self.trajectory = trajectory
        self.deltas: list = []

    def compute(self, model) -> dict[str, float]:
        stats = update_statistics(model, self.reference)
        out = {k: stats[k] for k in ("effective_rank", "effective_rank_ratio", "top1_energy")}
        if self.trajectory:
            current = parameter_snapshot(model)
            self.deltas.append(torch.cat([(current[n] - ref).reshape(-1) for n, ref in self.reference.items()]))
            out["trajectory_top1_energy"] = trajectory_top1_energy(self.deltas)
        return out
