"""Fixtures of the teacher-method tests: single-threaded torch (tiny tensors)."""

from tests._threads import single_thread  # noqa: F401  (autouse fixture)
