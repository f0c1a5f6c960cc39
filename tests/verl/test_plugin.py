"""Plugin loading: the entry point in fresh processes (plain ``import verl``, the env switches, a broken
registration), a local Ray task, verl's own CPU tests with the plugin loaded, and bit-identical built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.verl

verl = pytest.importorskip("verl")

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, sys, verl\n"
    "from verl.trainer.ppo import core_algos\n"
    "from verl.workers.utils import losses\n"
    "print('PROBE ' + json.dumps({'module': 'trl_divergences.verl' in sys.modules,\n"
    "    'forward': core_algos.kl_penalty_forward.__module__, 'loss': losses.kl_penalty.__module__}))\n"
)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)


def probe(**env: str) -> dict:
    out = run_python(PROBE, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))[6:])


def test_plugins_off_and_the_external_modules_fallback():
    assert probe(VERL_USE_EXTERNAL_PLUGINS="none")["forward"] == "verl.trainer.ppo.core_algos"
    fallback = probe(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="trl_divergences.verl")
    assert fallback["forward"] == "trl_divergences.verl.kl"


def test_a_broken_registration_is_reported_not_swallowed():
    """verl logs a failing entry point at DEBUG; ours logs at ERROR with the traceback (and verl still imports)."""
    code = "import sys\nsys.modules['trl_divergences.verl.kl'] = None\n" + PROBE
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trl-divergences: registering the verl plugin failed" in out.stderr
    assert "Traceback" in out.stderr and "trl_divergences.verl.kl" in out.stderr
    assert '"forward": "verl.trainer.ppo.core_algos"' in out.stdout


def test_a_local_ray_worker_sees_the_registrations():
    ray = pytest.importorskip("ray")

    @ray.remote
    def worker() -> tuple[int, str, float]:
        import torch
        from verl.trainer.ppo import core_algos

        value = core_algos.kl_penalty(torch.tensor([-1.0]), torch.tensor([-2.0]), "forward_kl:k1")
        return os.getpid(), core_algos.kl_penalty_forward.__module__, float(value)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pid, module, value = ray.get(worker.remote(), timeout=240)
    finally:
        ray.shutdown()
    assert pid != os.getpid()
    assert module == "trl_divergences.verl.kl"
    assert value == pytest.approx(torch.exp(torch.tensor(-1.0)).item() * -1.0)  # k1 = r log r, r = ρ/π = e^-1


BUILTINS = (
    "import sys, torch, verl\n"
    "from tests.verl._builtins import builtin_outputs\n"
    "torch.save(builtin_outputs(), sys.argv[1] if len(sys.argv) > 1 else {path!r})\n"
)


def test_builtins_bit_identical_with_and_without_the_plugin(tmp_path):
    """verl's own KL types, policy losses (through ppo_loss) and advantage estimators: the same bits with the
    plugin loaded (this process) as in a process with plugins off."""
    from tests.verl._builtins import builtin_outputs

    path = tmp_path / "plain.pt"
    out = run_python(BUILTINS.format(path=str(path)), VERL_USE_EXTERNAL_PLUGINS="none")
    assert out.returncode == 0, out.stderr[-3000:]
    plain = torch.load(path)
    ours = builtin_outputs()
    assert plain.keys() == ours.keys() and len(ours) > 30
    for key, value in ours.items():
        assert torch.equal(value, plain[key]), key


VERL_CPU_TESTS = (
    "tests/trainer/ppo/test_core_algos_on_cpu.py",
    "tests/trainer/ppo/test_dynamic_policy_losses_on_cpu.py",
    "tests/trainer/ppo/test_loss_aggregation_on_cpu.py",
    "tests/trainer/ppo/test_value_loss_normalization_on_cpu.py",
    "tests/trainer/test_multi_trajectories_advantage_on_cpu.py",
)


def test_import_verl_alone_registers_everything_and_verl_own_cpu_tests_pass():
    """In a fresh process, ``import verl`` alone loads our entry point (both patches in place); verl 0.9.1's wheel
    ships its CPU tests (a top-level ``tests`` package in site-packages), and a subset passes in that process."""
    site = Path(verl.__file__).resolve().parents[1]
    files = [str(site / f) for f in VERL_CPU_TESTS if (site / f).exists()]
    assert files, "this verl wheel ships none of the CPU tests we rerun"
    code = (
        PROBE
        + "import pytest\n"
        + "args = ['-q', '-p', 'no:cacheprovider', '-W', 'ignore', '--rootdir', sys.argv[1], *sys.argv[2:]]\n"
        + "sys.exit(pytest.main(args))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(site), *files],
        capture_output=True,
        text=True,
        cwd=site,
        env=environ,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    probed = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert probed == {"module": True, "forward": "trl_divergences.verl.kl", "loss": "trl_divergences.verl.kl"}
    assert " passed" in out.stdout and " failed" not in out.stdout
