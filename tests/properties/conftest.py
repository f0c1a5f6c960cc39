"""Property-based tests (hypothesis): single-threaded torch, and a derandomized profile on CI so a run there is
reproducible (locally every run draws new examples and keeps failing ones in .hypothesis/)."""

import os

from hypothesis import settings

from tests._threads import single_thread  # noqa: F401  (autouse fixture)

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
