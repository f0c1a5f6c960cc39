"""Curricula (``curriculum=...``: ``gaussian``, ``paced``, ``self``) and coefficient schedules
(``coefficient_schedule=...``: ``accuracy_conditioned``, ``forward_then_reverse``, ``warmup``,
``linear_anneal``); see :mod:`.base`."""

from . import samplers, schedules, self_filter  # noqa: F401  (registers the built-in curricula and schedules)
from .base import (
    CURRICULA,
    SCHEDULES,
    Curriculum,
    CurriculumSampler,
    PassRateCurriculum,
    Schedule,
    get_curriculum,
    get_schedule,
    list_curricula,
    list_schedules,
)

__all__ = [
    "CURRICULA",
    "SCHEDULES",
    "Curriculum",
    "CurriculumSampler",
    "PassRateCurriculum",
    "Schedule",
    "get_curriculum",
    "get_schedule",
    "list_curricula",
    "list_schedules",
]
