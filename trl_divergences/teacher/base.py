"""The teacher-guided methods' contract: a frozen *teacher* τ (a stronger model sharing the student's tokenizer)
enters the GRPO/PPO objective as a divergence term, as the advantage, or as the ratio's anchor.

Notation (per sampled completion token y_t): log π — the student being trained, with graph; log π_old — the rollout
policy, detached; log τ — the teacher at the rollout temperature, detached; log ρ — the reference (the student's
initial model), detached; A_i — the framework's outcome advantage of rollout i; c_i — rollout i is correct.

A method declares what an adapter must compute for it (:class:`TeacherRequirements`) and exposes tensors-in,
tensors-out pieces: :meth:`TeacherMethod.advantages` once per generation batch (``[n]`` outcome advantages in,
``[n]`` or ``[n, T]`` out), and the per-token pieces of the subclass (a divergence penalty, a log-ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ..registry import Method, Registry

TEACHER_METHODS: Registry[TeacherMethod] = Registry("teacher method")


@dataclass(frozen=True)
class TeacherRequirements:
    """The tensors a teacher method needs, beyond the framework's own.

    Attributes:
        teacher_logps: log τ(y_t) of the sampled completion tokens at rollout time ([n, T], detached).
        teacher_hidden: the teacher's final hidden states at the positions predicting the completion tokens, for an
            exact term over the vocabulary against the teacher's lm_head (carried like the reference's).
        reference_logps: log ρ(y_t) of the sampled tokens at rollout time (G-OPD with λ ≠ 1).
        old_logps: log π_old(y_t) at rollout time, also on-policy (G-OPD's advantage, TRRD's anchor).
    """

    teacher_logps: bool = False
    teacher_hidden: bool = False
    reference_logps: bool = False
    old_logps: bool = False


class TeacherMethod(Method):
    """Base class of the teacher-guided methods. ``requirements`` says what the adapter computes;
    :meth:`advantages` maps the outcome advantages to the policy-gradient term's advantages (identity unless the
    method replaces or rescales them)."""

    method_kind = "teacher method"

    @property
    def requirements(self) -> TeacherRequirements:
        raise NotImplementedError

    def advantages(
        self,
        outcome_advantages: Tensor,
        *,
        old_logps: Tensor | None = None,
        teacher_logps: Tensor | None = None,
        reference_logps: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """[n] outcome advantages (e.g. GRPO's group-normalized ones) and this process's [n, T] rollout-time
        log-probs (those :attr:`requirements` asks for) and valid-token mask -> [n] or [n, T] advantages of the
        policy-gradient term. The default keeps the outcome advantages."""
        return outcome_advantages


def register_teacher_method(name: str) -> Callable[[type[TeacherMethod]], type[TeacherMethod]]:
    """Class decorator registering a :class:`TeacherMethod` subclass under ``name``."""
    return TEACHER_METHODS.register_class(name)


def get_teacher_method(name: str, **kwargs) -> TeacherMethod:
    """Build a registered teacher method; ``ValueError`` names the valid names / kwargs."""
    return TEACHER_METHODS.build(name, **kwargs)


def list_teacher_methods() -> list[str]:
    """Names of all registered teacher methods."""
    return TEACHER_METHODS.names()
