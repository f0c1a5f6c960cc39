"""Run the Triton kernels on CPU through the interpreter when there is no GPU. This must happen before Triton's first
import, and collecting any test folder may import it (TRL and transformers import it when it is installed), so it
lives in the root conftest, which pytest loads before every other."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
