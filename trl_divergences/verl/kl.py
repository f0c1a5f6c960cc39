"""Our divergences as verl ``kl_loss_type`` / ``algorithm.kl_penalty`` names.

verl 0.9.1 has no KL registry: ``core_algos.kl_penalty(logprob, ref_logprob, name)`` strips one trailing ``+``
(its straight-through: value of the named estimator, gradient of k2 = ½(log π − log ρ)²) and calls the if-chain
``core_algos.kl_penalty_forward``. We wrap both (and the copy of ``kl_penalty`` that ``workers/utils/losses.py``
imported by name); verl's own names go to the original functions unchanged, ours to
:meth:`~trl_divergences.divergences.Divergence.sampled`.

The name grammar (one string, because only the string reaches ``kl_penalty`` in every process that calls it: the
actor workers' ``ppo_loss`` and the driver's in-reward ``apply_kl_penalty``)::

    <divergence>[(<kwarg>=<value>, ...)][:<estimator>][+]

e.g. ``forward_kl`` (estimator k3+: TRL's default k3 value and, without TRL's importance weight, still the
divergence's gradient), ``js(beta=0.3):k3``, ``chi2:k1``, ``forward_kl+``.
``:k3+`` is our straight-through estimator (gradient (f'(1/r) − f'(1))∇log π(y), unbiased for ∇D_f); a further
trailing ``+`` after any other estimator (or after the bare name) is verl's own straight-through. Names with
kwargs need the value quoted in a hydra override (``"actor_rollout_ref.actor.kl_loss_type='js(beta=0.3):k3'"`` in a
shell).

verl multiplies its KL loss by no importance weight π/π_old, so every estimator enters with TRL's
``use_bias_correction_kl=False`` convention (see the README's verl gradient table).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache

from torch import Tensor

from ..divergences import DIVERGENCES, Divergence, get_divergence
from ..objective import FULL, check_estimator

#: the estimator a bare divergence name uses: k3+, whose value is k3 (TRL's default) and whose expected gradient is
#: ∇D without an importance weight; TRL's k3 has that gradient only through TRL's π/π_old weight, which verl lacks
DEFAULT_ESTIMATOR = "k3+"
#: verl 0.9.1's own ``kl_penalty_forward`` names (``full`` among them raises ``NotImplementedError`` there)
VERL_KL_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")

_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<kwargs>[^()]*)\))?(?::(?P<estimator>[A-Za-z0-9_+]+))?$")


@dataclass(frozen=True)
class KLSpec:
    """A parsed ``kl_loss_type``: the divergence, the estimator, and whether verl's trailing ``+`` applies."""

    divergence: Divergence
    estimator: str
    verl_straight_through: bool

    def estimate(self, logprob: Tensor, ref_logprob: Tensor) -> Tensor:
        """Per-token estimate [bs, T] from log π and log ρ of the sampled tokens (no importance weight: verl's
        convention). ``full`` is not a per-token function of two log-probs and is refused here."""
        if self.estimator == FULL:
            raise ValueError(
                f"kl_loss_type {self.divergence.name!r} with estimator 'full' is exact over the vocabulary: it runs in "
                "the plugin's full-vocabulary actor loss (trl_divergences.verl.full), not in verl's kl_penalty"
            )
        return self.divergence.sampled(logprob, ref_logprob, self.estimator)


def is_verl_name(name: object) -> bool:
    """True for verl's own names (with or without its ``+``) and anything that is not a string: verl handles those."""
    return not isinstance(name, str) or name in VERL_KL_TYPES or (name.endswith("+") and name[:-1] in VERL_KL_TYPES)


@lru_cache(maxsize=64)
def parse_kl_type(name: str, field: str = "kl_loss_type") -> KLSpec:
    """Parse and validate one of our names (see the module docstring); ``ValueError`` with TRL's messages."""
    spec = _parse(name, field)
    if spec is None and name.endswith("+"):
        spec = _parse(name[:-1], field)
        if spec is not None:
            return KLSpec(spec.divergence, spec.estimator, verl_straight_through=True)
    if spec is None:
        raise ValueError(
            f"{field} {name!r} is not of the form <divergence>[(<kwarg>=<value>, ...)][:<estimator>][+]; "
            f"divergences: {', '.join(DIVERGENCES.names())}; verl's own: {', '.join(VERL_KL_TYPES)}"
        )
    return spec


def _parse(name: str, field: str) -> KLSpec | None:
    match = _SPEC.match(name)
    if match is None:
        return None
    estimator = match["estimator"] or DEFAULT_ESTIMATOR
    if match["name"] not in DIVERGENCES:
        if match["estimator"] is None and match["kwargs"] is None:
            # a typo of a verl name or of ours: the registry's message, plus verl's names
            raise ValueError(
                f"{field} {name!r}: unknown divergence {match['name']!r}; valid choices: "
                f"{', '.join(DIVERGENCES.names())}, or verl's own {', '.join(VERL_KL_TYPES)}"
            )
    div = get_divergence(match["name"], **_parse_kwargs(match["kwargs"], field, name))
    if not div.needs_reference:
        raise ValueError(
            f"{field} {name!r}: divergence {div.name!r} regularizes toward the policy's own proxy, not the reference "
            "model, so it is not a KL type; it is TRL only for now"
        )
    if estimator.endswith("+") and estimator not in div.estimators and estimator[:-1] in (*div.estimators, FULL):
        return None  # a trailing "+" after a valid estimator: verl's straight-through, handled by the caller
    try:
        check_estimator(div, estimator)
    except ValueError as err:
        raise ValueError(f"{field} {name!r}: {err}") from None
    return KLSpec(div, estimator, verl_straight_through=False)


def _parse_kwargs(text: str | None, field: str, name: str) -> dict:
    """``beta=0.3, log_floor=-40`` -> {"beta": 0.3, "log_floor": -40} (Python literals)."""
    if text is None or not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"{field} {name!r}: kwargs must be <name>=<literal>, ... (e.g. 'js(beta=0.3)')") from err


def kl_penalty_forward(logprob: Tensor, ref_logprob: Tensor, kl_penalty: str) -> Tensor:
    """verl's ``core_algos.kl_penalty_forward`` extended with our names; verl's names go to verl's function."""
    if is_verl_name(kl_penalty):
        return VERL_FUNCTIONS["kl_penalty_forward"](logprob, ref_logprob, kl_penalty)
    spec = parse_kl_type(kl_penalty)
    if spec.verl_straight_through:
        raise ValueError(f"kl_penalty_forward got {kl_penalty!r}: the trailing '+' is kl_penalty's, not the forward's")
    return spec.estimate(logprob, ref_logprob)


def kl_penalty(logprob: Tensor, ref_logprob: Tensor, kl_penalty: str) -> Tensor:
    """verl's ``core_algos.kl_penalty`` extended with our names (``:k3+`` is ours; see the module docstring)."""
    if is_verl_name(kl_penalty):
        return VERL_FUNCTIONS["kl_penalty"](logprob, ref_logprob, kl_penalty)
    spec = parse_kl_type(kl_penalty)
    if spec.verl_straight_through:
        # verl's own "+": its kl_penalty strips it, calls kl_penalty_forward (ours) and applies its k2 gradient
        return VERL_FUNCTIONS["kl_penalty"](logprob, ref_logprob, kl_penalty)
    return spec.estimate(logprob, ref_logprob)


#: verl's original functions, filled by :func:`install`
VERL_FUNCTIONS: dict = {}
#: the modules whose ``kl_penalty`` binding we replace: core_algos (looked up there by ``apply_kl_penalty``) and the
#: ones that imported it by name and can compute a KL loss (the actor's ``ppo_loss``)
KL_PENALTY_MODULES = ("verl.trainer.ppo.core_algos", "verl.workers.utils.losses")


def install() -> None:
    """Replace ``kl_penalty_forward`` in core_algos and ``kl_penalty`` in :data:`KL_PENALTY_MODULES` (idempotent)."""
    import importlib

    core_algos = importlib.import_module("verl.trainer.ppo.core_algos")
    if core_algos.kl_penalty_forward is kl_penalty_forward:
        return
    VERL_FUNCTIONS["kl_penalty_forward"] = core_algos.kl_penalty_forward
    VERL_FUNCTIONS["kl_penalty"] = core_algos.kl_penalty
    modules = [importlib.import_module(name) for name in KL_PENALTY_MODULES]
    for module in modules:
        if module.kl_penalty is not VERL_FUNCTIONS["kl_penalty"]:
            raise RuntimeError(f"{module.__name__}.kl_penalty is not verl 0.9.1's core_algos.kl_penalty")
    core_algos.kl_penalty_forward = kl_penalty_forward
    for module in modules:
        module.kl_penalty = kl_penalty
