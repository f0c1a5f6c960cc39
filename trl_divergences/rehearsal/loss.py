"""Per-token rehearsal loss on stored reference samples (DPH-RL, "The Choice of Divergence", 2025).

For a token y of a stored base-model sample, u = π(y)/ρ(y) on ρ's own prefix (log ρ stored at build time, log π
recomputed with gradient). The generator-form divergences use the core estimator
:meth:`~trl_divergences.divergences.Divergence.reference_sampled`, f_c(u) = f(u) − f'(1)(u − 1), whose mean under ρ
is D_f(π‖ρ) and whose gradient is exact for the teacher-forced per-token divergence:

* ``forward_kl``: u − 1 − log u, estimating KL(ρ‖π) (mass-covering; DPH-RL's recommended choice);
* ``js``: ½·(u log u − (u + 1) log((u + 1)/2)) at β = ½ (DPH-RL's "JS generator" is twice this: use a 2× coef);
* ``alpha``: our α-divergence; DPH-RL's α is our 1 − α, so their default 0.2 is our default 0.8 here;
* ``nll``: −log π(y), plain SFT on the stored samples (needs no stored log-probs; not a divergence).

Official clamps (DPH-RL's forward-KL path): log u clipped to [−20, 20] and the value to [−10, 10]; the value clip
zeroes the gradient of tokens the policy has strongly forgotten (log u < −11). The other generators are unclamped
there. Both clamps are options (``log_ratio_clamp``, ``value_clamp``; ``None`` = off) with those defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..divergences import Divergence, get_divergence
from ..numerics import compute_dtype

NLL = "nll"
#: rehearsal losses: the generator-form divergences of DPH-RL plus plain SFT
REHEARSAL_DIVERGENCES = ("forward_kl", "js", "alpha", NLL)
#: (log_ratio_clamp, value_clamp) of the official code, per divergence (absent: unclamped)
OFFICIAL_CLAMPS: dict[str, tuple[float, float]] = {"forward_kl": (20.0, 10.0)}
#: DPH-RL's default α (their 0.2) in our convention
DEFAULT_ALPHA = 0.8


@dataclass(frozen=True)
class RehearsalLoss:
    """Rehearsal loss of one kind; ``divergence`` is None for ``nll``."""

    name: str
    divergence: Divergence | None
    log_ratio_clamp: float | None = None
    value_clamp: float | None = None

    def per_token(self, logp: Tensor, ref_logp: Tensor | None) -> Tensor:
        """Per-token loss [...] from policy log-probs (with graph) and stored reference log-probs of ρ's samples."""
        dtype = compute_dtype(logp.dtype)
        if self.divergence is None:
            return -logp.to(dtype)
        lp, lr = logp.to(dtype), ref_logp.to(dtype).detach()
        if self.log_ratio_clamp is not None:
            lp = lr + (lp - lr).clamp(-self.log_ratio_clamp, self.log_ratio_clamp)
        value = self.divergence.reference_sampled(lp, lr)
        if self.value_clamp is not None:
            value = value.clamp(-self.value_clamp, self.value_clamp)
        return value

    def __call__(self, logp: Tensor, ref_logp: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(token-mean loss over ``mask``, per-token values [...]) — DPH-RL aggregates token-mean per batch."""
        values = self.per_token(logp, ref_logp)
        mask = mask.to(values.dtype)
        return (values * mask).sum() / mask.sum().clamp(min=1.0), values


def build_rehearsal_loss(name: str, **kwargs: Any) -> RehearsalLoss:
    """The rehearsal loss ``name`` (one of :data:`REHEARSAL_DIVERGENCES`).

    ``kwargs``: ``log_ratio_clamp`` / ``value_clamp`` (float or None; default: the official ones for that
    divergence), and the divergence's own hyper-parameters (``beta`` for js, default ½; ``alpha`` for alpha,
    default 0.8 = DPH-RL's 0.2). ``nll`` takes none. Unknown names or arguments raise ``ValueError``.
    """
    if name not in REHEARSAL_DIVERGENCES:
        raise ValueError(f"rehearsal divergence {name!r} is not supported; valid: {', '.join(REHEARSAL_DIVERGENCES)}")
    kwargs = dict(kwargs)
    if name == NLL:
        if kwargs:
            raise ValueError(f"rehearsal divergence 'nll' takes no arguments, got {sorted(kwargs)}")
        return RehearsalLoss(NLL, None)
    default_ratio, default_value = OFFICIAL_CLAMPS.get(name, (None, None))
    clamps = (kwargs.pop("log_ratio_clamp", default_ratio), kwargs.pop("value_clamp", default_value))
    for label, clamp in zip(("log_ratio_clamp", "value_clamp"), clamps):
        if clamp is not None and not (isinstance(clamp, (int, float)) and not isinstance(clamp, bool) and clamp > 0):
            raise ValueError(f"rehearsal {label} must be a positive number or None, got {clamp!r}")
    if name == "alpha":
        kwargs.setdefault("alpha", DEFAULT_ALPHA)
    divergence = get_divergence(name, **kwargs)
    return RehearsalLoss(name, divergence, *(None if c is None else float(c) for c in clamps))
