"""Regenerate the README's Performance tables from the benchmark results (``make bench`` runs it last).

Reads ``benchmarks/results/ops_cpu.json`` (``bench_ops.py``), ``ops_cuda.json`` when present and
``trainer_cpu.json`` (``bench_trainer.py``), and rewrites what lies between the marker comments

    <!-- bench:ops_cpu -->   ...   <!-- /bench:ops_cpu -->
    <!-- bench:ops_cuda -->  ...   <!-- /bench:ops_cuda -->
    <!-- bench:trainer -->   ...   <!-- /bench:trainer -->

in README.md: the run's settings and command, the side-by-side tables (ratios to the textbook implementation, the
GEMM floor, TRL's tuned tiles, stock TRL's k3 step) and the sentences stating the issue's targets as met or not.
Every number between the markers comes from a JSON; the prose around them explains the method without numbers.

    python benchmarks/report.py                      # rewrite README.md in place
    python benchmarks/report.py --check              # exit 1 if README.md is not what the JSONs give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: implementation -> (label, what it computes), in table order
OPS_ROWS = {
    "textbook": (
        "textbook naive torch (logits, `log_softmax`, formula written out)",
        "logp + entropy + div, any grads",
    ),
    "naive": ("package oracle (`ops/naive.py`)", "same"),
    "floor": ("GEMM floor (the 4 unavoidable matmuls alone)", "nothing else"),
    "ingrad": ("ours, `fused_linear_divergence_loss` (gradient in forward)", "Σ w·(logp, H, D), weights known"),
    "chunked": (
        "ours, `fused_linear_logprob_entropy_divergence` (recompute in backward)",
        "per-token outputs, any grads",
    ),
    "triton": ("ours, Triton rows, recompute in backward", "per-token outputs, any grads"),
    "triton_ingrad": ("ours, Triton rows, gradient in forward", "Σ w·(logp, H, D), weights known"),
    "trl_default": ("TRL `ChunkedDivergenceFunction`, default tiles 4096×32768", "div (+ entropy, no grad), no logp"),
    "trl_tuned": ("TRL `ChunkedDivergenceFunction`, tiles 512×8192", "same"),
    "liger": ("Liger `LigerFusedLinearJSDLoss` (torch, not compiled)", "scalar CE + div, no entropy"),
    "cce": ("Cut Cross-Entropy, `torch_compile` path", "logp only (no reference, no entropy)"),
}
#: the issue's targets: ours at most as slow as TRL's tuned tiles, at most this fraction of the textbook's memory,
#: the gradient-in-forward driver within this multiple of the GEMM floor, exact JS within this multiple of TRL's k3
TARGET_MEM_VS_TEXTBOOK = 0.1
TARGET_INGRAD_VS_FLOOR = 1.5
TARGET_JS_VS_K3 = 1.2
#: bench_ops.py options recorded in the JSON's meta, with their defaults (left out of the command when default)
OPS_OPTIONS = {"n": 2048, "hidden": 512, "ref_hidden": None, "iters": 3, "warmup": 1, "divergence": "forward_kl"}
TRAINER_OPTIONS = {"completions": 8, "completion_len": 32, "hidden": 64, "layers": 1, "beta": 0.04, "warmup": 1}


def _num(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _command(script: str, meta: dict, defaults: dict, extra: list[str]) -> str:
    opts = [
        f"--{k.replace('_', '-')} {meta[k]}" for k in defaults if meta.get(k) is not None and meta[k] != defaults[k]
    ]
    return " ".join([f"python benchmarks/{script}", *extra, *opts])


def _load(meta: dict) -> str:
    load = meta.get("load_avg")
    if not load:
        return "load average not recorded"
    return "load average " + " → ".join(_num(x, 1) for x in load) + " (1-min, before → after the run)"


def ops_section(data: dict, out: str) -> str:
    """Markdown for one ``bench_ops.py`` JSON: settings, one table per V, the targets' verdicts."""
    meta, results = data["meta"], data["results"]
    vocabs = sorted(results, key=int)
    command = _command("bench_ops.py", meta, OPS_OPTIONS, ["--vocab " + " ".join(vocabs), f"--out {out}"])
    if meta.get("device_type", "cpu") == "cuda":
        command = command.replace("bench_ops.py", "bench_ops.py --device cuda", 1)
    lines = [
        f"`{command}` on {meta['device']} ({meta['cpu_count']} CPU cores, {meta.get('threads', '?')} threads, "
        f"torch {meta['torch']}; {_load(meta)}): N = {meta['n']:,} tokens, H = {meta['hidden']}, "
        f"{meta['dtype']}, {meta['divergence']}; median of {meta['iters']} timed step(s) after "
        f"{meta['warmup']} warm-up.",
        "",
    ]
    for v in vocabs:
        rows = results[v]
        base, floor, trl = (rows.get(k, {}) for k in ("textbook", "floor", "trl_tuned"))
        lines += [
            f"V = {int(v):,}:",
            "",
            "| implementation | computes | time s / peak MB | vs textbook time / mem | time / floor | time / TRL tuned"
            " |",
            "|---|---|---|---|---|---|",
        ]
        for impl, (label, computes) in OPS_ROWS.items():
            r = rows.get(impl)
            if r is None:
                continue
            if "time_s" not in r:
                lines.append(f"| {label} | {computes} | {r.get('skipped') or r.get('error', 'n/a')} | | | |")
                continue
            mem = "—" if impl == "floor" else _num(r["peak_mb"], 0)
            cells = [f"{_num(r['time_s'])} / {mem}"]
            if "time_s" in base:
                mem_ratio = "—" if impl == "floor" else _num(r["peak_mb"] / base["peak_mb"], 3)
                cells.append(f"{_num(r['time_s'] / base['time_s'])} / {mem_ratio}")
            else:
                cells.append("")
            for ref in (floor, trl):
                cells.append(_num(r["time_s"] / ref["time_s"]) if "time_s" in ref else "")
            lines.append(f"| {label} | {computes} | " + " | ".join(cells) + " |")
        lines += ["", *_ops_verdicts(rows), ""]
    if "logits_bandwidth" in results.get(vocabs[-1], {}):
        for v in vocabs:
            b = results[v]["logits_bandwidth"]
            if "logits_triton_s" in b:
                lines.append(
                    f"Logits-level Triton kernel at V = {int(v):,} (bf16 logits): {_num(b['logits_triton_s'], 4)} s, "
                    f"{_num(b['logits_speedup_vs_naive'])}× naive torch, {_num(b['logits_bandwidth_Bps'] / 1e9, 0)} "
                    f"GB/s = {_num(b['logits_bandwidth_frac_h100'])} of the H100's peak."
                )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _ops_verdicts(rows: dict) -> list[str]:
    """The issue's op targets, each stated with its measured ratio (only those whose rows were run)."""
    base, floor, trl = (rows.get(k, {}) for k in ("textbook", "floor", "trl_tuned"))
    out = []
    for impl, name in (("ingrad", "gradient in forward"), ("chunked", "recompute in backward")):
        r = rows.get(impl, {})
        if "time_s" not in r:
            continue
        parts = []
        if "time_s" in trl:
            ratio = r["time_s"] / trl["time_s"]
            parts.append(f"{_num(ratio)}× TRL's tuned tiles (target ≤ 1: {_met(ratio <= 1.0)})")
        if "peak_mb" in base:
            ratio = r["peak_mb"] / base["peak_mb"]
            target = TARGET_MEM_VS_TEXTBOOK
            parts.append(f"{_num(ratio, 3)}× the textbook's memory (target ≤ {target}: {_met(ratio <= target)})")
        if impl == "ingrad" and "time_s" in floor:
            ratio = r["time_s"] / floor["time_s"]
            target = TARGET_INGRAD_VS_FLOOR
            parts.append(f"{_num(ratio)}× the GEMM floor (target ≤ {target}: {_met(ratio <= target)})")
        if parts:
            out.append(f"- ours, {name}: " + "; ".join(parts) + ".")
    return out


def trainer_section(data: dict, out: str) -> str:
    """Markdown for ``bench_trainer.py``'s JSON: settings, the step table, the JS target's verdict."""
    meta, results = data["meta"], data["results"]
    command = _command("bench_trainer.py", meta, TRAINER_OPTIONS, [f"--steps {meta['steps']}", f"--out {out}"])
    lines = [
        f"`{command}` ({meta['cpu_count']} CPU cores, torch {meta['torch']}; {_load(meta)}): a tiny Qwen2 "
        f"(hidden {meta['hidden']}, {meta['layers']} layer(s), tied embeddings) with a {meta['vocab']:,}-token "
        f"vocabulary, {meta['completions']} completions × {meta['completion_len']} tokens, `beta` = {meta['beta']}, "
        f"median of {meta['steps']} timed step(s) after {meta['warmup']} warm-up.",
        "",
        "| run | step s | peak MB | time vs TRL k3 | memory vs TRL k3 |",
        "|---|---|---|---|---|",
    ]
    base = results.get("trl_k3", {})
    for name, r in results.items():
        if name == "trl_k3":
            label = "stock TRL `GRPOTrainer`, k3"
        elif name == "ours_k3":
            label = "ours, reverse KL k3 (default)"
        else:
            label = f"ours, `{name.removesuffix('_full')}`, exact `full`"
        if "time_s" not in r:
            lines.append(f"| {label} | {r.get('error', 'n/a')} | | | |")
            continue
        ratios = ["", ""]
        if "time_s" in base:
            ratios = [_num(r["time_s"] / base["time_s"]), _num(r["peak_mb"] / base["peak_mb"])]
        lines.append(f"| {label} | {_num(r['time_s'])} | {_num(r['peak_mb'], 0)} | {ratios[0]} | {ratios[1]} |")
    full = {k: r for k, r in results.items() if k.endswith("_full") and "time_s" in r}
    if "time_s" in base and full:
        ratios = sorted(r["time_s"] / base["time_s"] for r in full.values())
        lines += ["", f"The exact divergences cost {_num(ratios[0])}–{_num(ratios[-1])}× stock TRL's k3 step."]
        if "time_s" in results.get("js_full", {}):
            js = results["js_full"]["time_s"] / base["time_s"]
            lines[-1] += f" JS: {_num(js)}× (target ≤ {TARGET_JS_VS_K3}: {_met(js <= TARGET_JS_VS_K3)})."
    return "\n".join(lines).rstrip() + "\n"


def missing_section(script_command: str) -> str:
    return f"Not measured yet (no result file): `{script_command}`.\n"


def replace_block(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- bench:name -->`` and ``<!-- /bench:name -->`` (markers kept)."""
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text, count=1)


def render(readme: str, results_dir: Path, rel: str = "benchmarks/results") -> str:
    """README text with every bench block regenerated from the JSONs in ``results_dir``."""
    sections = (
        ("ops_cpu", "ops_cpu.json", ops_section, "python benchmarks/bench_ops.py"),
        ("ops_cuda", "ops_cuda.json", ops_section, "python benchmarks/bench_ops.py --device cuda"),
        ("trainer", "trainer_cpu.json", trainer_section, "python benchmarks/bench_trainer.py"),
    )
    for name, file, section, command in sections:
        path = results_dir / file
        out = f"{rel}/{file}"
        if path.exists():
            body = section(json.loads(path.read_text()), out)
        else:
            body = missing_section(f"{command} --out {out}")
        readme = replace_block(readme, name, body)
    return readme


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--check", action="store_true", help="exit 1 when the README differs from what the JSONs give")
    args = p.parse_args()
    old = args.readme.read_text()
    new = render(old, args.results)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date: run python benchmarks/report.py", file=sys.stderr)
            sys.exit(1)
        return
    args.readme.write_text(new)
    print(f"rewrote the bench blocks of {args.readme}")


if __name__ == "__main__":
    main()
