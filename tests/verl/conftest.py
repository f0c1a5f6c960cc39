import pytest

from tests._threads import single_thread  # noqa: F401  (autouse fixture)

pytest.importorskip("verl", reason="verl is not installed: pip install 'trl-divergences[verl]' (make test does)")
