"""The ops tests run single-threaded (TRITON_INTERPRET is set in the root conftest, before Triton's first import)."""

from tests._threads import single_thread  # noqa: F401  (autouse fixture)
