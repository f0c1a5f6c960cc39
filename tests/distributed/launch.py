"""Launching :mod:`tests.distributed.worker` as a separate job and reading back what every rank wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]


def launch(
    out: Path,
    jobs: list[dict[str, Any]],
    *,
    model: str,
    store: str | None = None,
    nproc: int = 1,
    python: str = sys.executable,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run ``jobs`` in one job of ``nproc`` processes (``torch.distributed.run``, gloo, when nproc > 1) and return
    the finished process; results are under ``out/<job name>/rank<r>.pt`` (:func:`results`)."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / f"spec-{len(list(out.glob('spec-*.json')))}.json"
    spec.write_text(json.dumps({"out": str(out), "model": model, "store": store, "jobs": jobs}))
    runner = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*(runner or [python]), str(WORKER), str(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (out / f"{spec.stem}.log").write_text(proc.stdout + proc.stderr)
    return proc


def killed(proc: subprocess.CompletedProcess) -> bool:
    """The job ended by the SIGKILL a fault injected (a plain process reports -9)."""
    return proc.returncode == -signal.SIGKILL


def results(out: Path, name: str, nproc: int = 1) -> list[dict[str, Any]]:
    """Every rank's result of job ``name``; a job whose worker raised has its traceback under ``error``."""
    paths = [out / name / f"rank{r}.pt" for r in range(nproc)]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"job {name!r} wrote no result: {missing}"
    return [torch.load(p, weights_only=False) for p in paths]


def ok(out: Path, name: str, nproc: int = 1) -> list[dict[str, Any]]:
    """:func:`results`, failing the test with the worker's traceback if a rank raised."""
    found = results(out, name, nproc)
    for r, result in enumerate(found):
        assert "error" not in result, f"job {name!r} rank {r} raised:\n{result['error']}"
    return found


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)
