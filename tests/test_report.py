"""The README's Performance generator (benchmarks/report.py) on small hand-made result files: the blocks between
the markers are rewritten from the JSONs (numbers, ratios, the targets' verdicts), the prose around them is kept,
a missing file says how to make it, and missing markers are an error."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.report import main, render, replace_block

README = """# Title

Prose before, kept.

<!-- bench:ops_cpu -->
stale table
<!-- /bench:ops_cpu -->

Prose between, kept.

<!-- bench:trainer -->
<!-- /bench:trainer -->

<!-- bench:ops_cuda -->
old
<!-- /bench:ops_cuda -->
"""

OPS = {
    "meta": {
        "device": "Test CPU", "device_type": "cpu", "cpu_count": 2, "load_avg": [0.5, 1.25], "torch": "2.x",
        "n": 64, "hidden": 16, "ref_hidden": None, "iters": 1, "warmup": 1, "divergence": "forward_kl",
        "dtype": "float32", "threads": 2,
    },
    "results": {
        "1000": {
            "textbook": {"time_s": 10.0, "peak_mb": 1000.0},
            "floor": {"time_s": 4.0, "peak_mb": 50.0},
            "ingrad": {"time_s": 5.0, "peak_mb": 80.0},
            "chunked": {"time_s": 9.0, "peak_mb": 120.0},
            "trl_tuned": {"time_s": 8.0, "peak_mb": 90.0},
            "liger": {"skipped": "liger does not support tv"},
        }
    },
}  # fmt: skip
TRAINER = {
    "meta": {
        "device": "cpu", "cpu_count": 2, "torch": "2.x", "vocab": 1000, "completions": 8, "completion_len": 32,
        "prompt_len": 8, "hidden": 64, "layers": 1, "beta": 0.04, "warmup": 1, "steps": 2, "threads": 2,
    },
    "results": {
        "trl_k3": {"time_s": 2.0, "peak_mb": 400.0},
        "ours_k3": {"time_s": 2.0, "peak_mb": 360.0},
        "js_full": {"time_s": 2.6, "peak_mb": 420.0},
        "tv_full": {"time_s": 2.2, "peak_mb": 410.0},
        "chi2_full": {"error": "RuntimeError: boom"},
    },
}  # fmt: skip


@pytest.fixture
def results(tmp_path):
    (tmp_path / "ops_cpu.json").write_text(json.dumps(OPS))
    (tmp_path / "trainer_cpu.json").write_text(json.dumps(TRAINER))
    return tmp_path


def test_render_ops_and_trainer(results) -> None:
    out = render(README, results)
    assert "stale table" not in out and "old" not in out.split("<!-- bench:ops_cuda -->")[1]
    for prose in ("# Title", "Prose before, kept.", "Prose between, kept."):
        assert out.count(prose) == 1
    ops = out.split("<!-- bench:ops_cpu -->\n")[1].split("<!-- /bench:ops_cpu -->")[0]
    assert "`python benchmarks/bench_ops.py --vocab 1000 --out benchmarks/results/ops_cpu.json --n 64" in ops
    assert "--iters 1" in ops and "--warmup" not in ops  # only non-default options
    assert "load average 0.5 → 1.2" in ops and "V = 1,000:" in ops
    # ingrad: 5 s / 80 MB -> 0.50 / 0.080 of textbook, 1.25 × floor, 0.62 × TRL tuned
    assert "| 5.00 / 80 | 0.50 / 0.080 | 1.25 | 0.62 |" in ops
    assert "| 4.00 / — | 0.40 / — | 1.00 | 0.50 |" in ops  # the floor's memory is meaningless
    assert "| liger does not support tv | | | |" in ops
    assert "gradient in forward: 0.62× TRL's tuned tiles (target ≤ 1: met); 0.080× the textbook's memory" in ops
    assert "1.25× the GEMM floor (target ≤ 1.5: met)" in ops
    assert "recompute in backward: 1.12× TRL's tuned tiles (target ≤ 1: **not met**)" in ops
    trainer = out.split("<!-- bench:trainer -->\n")[1].split("<!-- /bench:trainer -->")[0]
    assert "| ours, `js`, exact `full` | 2.60 | 420 | 1.30 | 1.05 |" in trainer
    assert "| ours, `chi2`, exact `full` | RuntimeError: boom | | | |" in trainer
    assert "cost 1.10–1.30× stock TRL's k3 step. JS: 1.30× (target ≤ 1.2: **not met**)." in trainer
    cuda = out.split("<!-- bench:ops_cuda -->\n")[1].split("<!-- /bench:ops_cuda -->")[0]
    assert cuda.startswith("Not measured yet") and "--device cuda --out benchmarks/results/ops_cuda.json" in cuda
    assert render(out, results) == out  # idempotent


def test_cuda_block_with_bandwidth(results) -> None:
    cuda = json.loads(json.dumps(OPS))
    cuda["meta"]["device_type"] = "cuda"
    cuda["results"]["1000"]["logits_bandwidth"] = {
        "logits_triton_s": 0.001, "logits_speedup_vs_naive": 3.0, "logits_bandwidth_Bps": 2.0e12,
        "logits_bandwidth_frac_h100": 2.0e12 / 3.35e12,
    }  # fmt: skip
    (results / "ops_cuda.json").write_text(json.dumps(cuda))
    block = render(README, results).split("<!-- bench:ops_cuda -->\n")[1]
    assert "`python benchmarks/bench_ops.py --device cuda --vocab 1000" in block
    assert "0.0010 s, 3.00× naive torch, 2,000 GB/s = 0.60 of the H100's peak" in block


def test_missing_markers_and_check(results, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="bench:trainer"):
        replace_block("no markers here", "trainer", "x")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    args = ["report.py", "--readme", str(readme), "--results", str(results)]
    monkeypatch.setattr(sys, "argv", [*args, "--check"])
    with pytest.raises(SystemExit):
        main()
    monkeypatch.setattr(sys, "argv", args)
    main()
    assert readme.read_text() == render(README, results)
    monkeypatch.setattr(sys, "argv", [*args, "--check"])
    main()  # up to date now: no exit
