"""Where an RL run moves the weights: the fraction of parameters it updates and the effective rank of the update.

Framework-agnostic (plain tensors / ``nn.Module``); the TRL callbacks that log them are in
:mod:`trl_divergences.trl.callbacks`.

* Update sparsity ("Reinforcement Learning Finetunes Small Subnetworks in Large Language Models", Mukherjee et al.
  2025): the fraction of scalar parameters with |θ − θ₀| > tol (tolerance default 1e-5, the paper's criterion for
  "unchanged"); the paper reports RL updating 5–30 % of the parameters of LLMs.
* Update rank, per 2-D weight ΔW = W − W₀: the entropy effective rank of its singular values σ (Roy & Vetterli
  2007), erank = exp(−Σ p_i log p_i) with p_i = σ_i / Σ_j σ_j, in [1, min(rows, cols)], and the top-1 energy share
  σ₁² / Σ σ_i² (1 for a rank-1 update); the subnetworks paper reports RL updates to be nearly full-rank.
* Trajectory rank ("You Only Need Minimal RLVR Training: Extrapolating LLMs via Rank-1 Trajectories", RELEX, 2026):
  the checkpoints' flattened deltas Δθ(t₁), …, Δθ(t_T) stacked as a T × P matrix; its top-1 energy share is the
  fraction of the trajectory a single direction explains (RELEX: most of the gain lies in a rank-1 subspace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

#: the paper's tolerance below which a parameter counts as unchanged
DEFAULT_TOLERANCE = 1e-5


def parameter_snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters (``named_parameters``: tied weights once), on the CPU."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def updated_fraction(current: Iterable[Tensor], reference: Iterable[Tensor], tol: float = DEFAULT_TOLERANCE) -> float:
    """Fraction of scalar entries with |θ − θ₀| > ``tol`` over all tensor pairs (same shapes, zipped in order)."""
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    changed = total = 0
    for cur, ref in zip(current, reference, strict=True):
        if cur.shape != ref.shape:
            raise ValueError(f"shape mismatch: {tuple(cur.shape)} vs {tuple(ref.shape)}")
        diff = (cur.detach().double().cpu() - ref.detach().double().cpu()).abs()
        changed += int((diff > tol).sum())
        total += diff.numel()
    if total == 0:
        raise ValueError("no parameters given")
    return changed / total


def _singular_values(delta: Tensor) -> Tensor:
    if delta.dim() != 2:
        raise ValueError(f"need a 2-D matrix, got shape {tuple(delta.shape)}")
    return torch.linalg.svdvals(delta.detach().double().cpu())


def effective_rank(delta: Tensor) -> float:
    """Entropy effective rank exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli 2007); 0 for the zero matrix."""
    s = _singular_values(delta)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def top1_energy(delta: Tensor) -> float:
    """Share of the squared Frobenius norm in the top singular direction, σ₁² / Σσ²; 0 for the zero matrix."""
    s = _singular_values(delta)
    energy = (s**2).sum()
    return 0.0 if energy == 0 else float(s[0] ** 2 / energy)


def update_statistics(
    model: torch.nn.Module, reference: Mapping[str, Tensor], tol: float = DEFAULT_TOLERANCE
) -> dict[str, float]:
    """Update statistics of ``model`` against a :func:`parameter_snapshot`: ``updated_fraction`` (all parameters),
    and over the 2-D weights whose update is non-zero the mean ``effective_rank``, the mean ``effective_rank_ratio``
    (erank / min(rows, cols)) and the mean ``top1_energy``."""
    params = dict(model.named_parameters())
    missing = sorted(set(reference) - set(params))
    if missing:
        raise ValueError(f"reference names not in the model: {missing[:5]}")
    names = list(reference)
    stats = {"updated_fraction": updated_fraction([params[n] for n in names], [reference[n] for n in names], tol)}
    ranks, ratios, tops = [], [], []
    for name in names:
        if reference[name].dim() != 2:
            continue
        delta = params[name].detach().cpu().double() - reference[name].double()
        erank = effective_rank(delta)
        if erank == 0.0:
            continue
        ranks.append(erank)
        ratios.append(erank / min(delta.shape))
        tops.append(top1_energy(delta))
    for key, values in (("effective_rank", ranks), ("effective_rank_ratio", ratios), ("top1_energy", tops)):
        stats[key] = sum(values) / len(values) if values else 0.0
    return stats


def trajectory_top1_energy(deltas: Iterable[Tensor]) -> float:
    """Top-1 energy share σ₁² / Σσ² of the T × P matrix of flattened parameter deltas Δθ(t₁) … Δθ(t_T) (RELEX's
    rank-1 trajectory: 1 when every checkpoint lies on one line through θ₀)."""
    rows = [d.detach().double().cpu().reshape(-1) for d in deltas]
    if not rows:
        raise ValueError("no deltas given")
    return top1_energy(torch.stack(rows))
