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
from typing import Any

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
        old_logps: log π_old(y_t) at rollout time, also on-policy (G-OPD's advantage).
    """

    teacher_logps: bool = False
    teacher_hidden: bool = False
    reference_logps: bool = False
    old_logps: bool = False


class TeacherMethod(Method):
    """Base class of the teacher-guided methods. ``requirements`` says what the adapter computes;
    :meth:`advantages` maps the outcome advantages to the policy-gradient term's advantages (identity unless the
    method replaces or rescales them); :meth:`step` sets what a schedule changes per training step.

    Capabilities (read by the objective layer, never the method's name): ``adds_penalty`` — a per-token divergence
    to the teacher (``sampled`` / exact, ``penalty``); ``replaces_advantages`` — :meth:`advantages` ignores the
    outcome advantages' shape and returns per-token ones (conflicts with an advantage reweighting);
    ``anchors_ratio`` — the policy-gradient ratio's log π_old is replaced (``effective_old_logps``).
    """

    method_kind = "teacher method"
    adds_penalty: bool = False
    replaces_advantages: bool = False
    anchors_ratio: bool = False
    #: the method's :meth:`step` reads the batch's mean correctness
    needs_accuracy: bool = False

    def step(self, step: int, max_steps: int, accuracy: float | None = None) -> None:
        """Set what is in force for the generation batch of training step ``step`` (nothing by default)."""

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


def check_shared_tokenizer(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    *,
    student_name: str = "student",
    teacher_name: str = "teacher",
    student_vocab_size: int | None = None,
    teacher_vocab_size: int | None = None,
    role: str = "teacher",
) -> None:
    """Refuse a teacher that does not share the student's tokenizer: the teacher scores the student's token ids, so
    both need the same token → id map (``get_vocab()``) and EOS id; with the models' vocabulary sizes (lm_head rows,
    for the exact path over the vocabulary) those must agree too. ``ValueError`` naming both and what differs.
    ``role`` names the checked model in the message (the teacher, or the teacher's reference ρ). Duck-typed:
    tokenizers with ``get_vocab()`` and ``eos_token_id`` (transformers')."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    who = f"the {role} {teacher_name!r} does not share the tokenizer of the student {student_name!r}"
    if student_vocab != teacher_vocab:
        only_student = sorted(set(student_vocab) - set(teacher_vocab))
        only_teacher = sorted(set(teacher_vocab) - set(student_vocab))
        moved = sorted(t for t in set(student_vocab) & set(teacher_vocab) if student_vocab[t] != teacher_vocab[t])
        details = [
            f"{label}: {names[:3]}{' …' if len(names) > 3 else ''} ({len(names)})"
            for label, names in (
                ("only the student's", only_student),
                ("only the teacher's", only_teacher),
                ("different ids", moved),
            )
            if names
        ]
        raise ValueError(
            f"{who}: {len(student_vocab)} vs {len(teacher_vocab)} tokens; {'; '.join(details)}. Teacher-guided "
            f"methods score the student's token ids with the {role}: use one with the student's tokenizer"
        )
    if student_tokenizer.eos_token_id != teacher_tokenizer.eos_token_id:
        raise ValueError(
            f"{who}: EOS ids differ (student {student_tokenizer.eos_token_id!r}, {role} "
            f"{teacher_tokenizer.eos_token_id!r})"
        )
    if student_vocab_size is not None and teacher_vocab_size is not None and student_vocab_size != teacher_vocab_size:
        raise ValueError(
            f"{who}'s vocabulary size: the student's lm_head has {student_vocab_size} rows, the teacher's "
            f"{teacher_vocab_size} (the exact divergence over the vocabulary needs the same rows)"
        )
