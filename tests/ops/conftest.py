"""Run the Triton kernels on CPU through the interpreter when there is no GPU (must happen before Triton's first
import, hence here and not in the test module)."""

import os

import torch

from tests._threads import single_thread  # noqa: F401  (autouse fixture)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
