"""Forward + backward of per-token log-prob + entropy + divergence from hidden states (fused linear), against naive
torch, TRL 1.16's ``ChunkedDivergenceFunction`` and Liger's ``LigerFusedLinearJSDLoss`` — wall time and peak memory.

Every (implementation, V) runs in its own subprocess, so peak memory is clean: on CPU the RSS high-water mark over
the steps (reset once the inputs exist, :mod:`_memory`) minus the RSS then (it includes grad W); on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation once inputs exist. Gradients flow into the policy hidden
states and the policy lm_head weight.

    python benchmarks/bench_ops.py                      # CPU, V = 32000 and 151936, N = 2048, H = 512
    python benchmarks/bench_ops.py --device cuda        # adds the Triton rows and the logits-kernel bandwidth

Implementations (each computes the per-token loss Σ_t w_logp·logp + w_ent·H + w_div·D, or what it can of it):

* ``textbook``: what a user writes — logits = h @ Wᵀ for both models, ``log_softmax``, logp by ``gather``, the
  entropy and the divergence's formula written out (forward KL, reverse KL, JS), autograd;
* ``naive``: the package's test oracle (:mod:`trl_divergences.ops.naive`: full fp32 logits, autograd);
* ``floor``: only the matmuls the op cannot avoid — policy logits, reference logits, grad h, grad W — on the same
  shapes into preallocated outputs (no softmax, no gradient math); every row is also read as a multiple of it;
* ``chunked``: ours, per-token outputs, recompute in backward (vocabulary-tiled torch driver);
* ``ingrad``: ours, :func:`trl_divergences.ops.fused_linear_divergence_loss` (gradient in the forward);
* ``triton`` / ``triton_ingrad`` (CUDA only): the same two drivers with the Triton row kernels;
* ``trl_default`` / ``trl_tuned``: TRL's ``ChunkedDivergenceFunction`` at its default tiles (4096 × 32768) and at
  512 × 8192 (module constants patched): divergence + (non-differentiable) entropy, no log-prob;
* ``liger``: Liger's chunked-loss ``LigerFusedLinearJSDLoss`` (torch, not compiled): a scalar (CE + divergence),
  no entropy. TRL and Liger apply to ``forward_kl`` / ``reverse_kl`` / ``js`` only;
* ``cce``: Cut Cross-Entropy's ``linear_cross_entropy(impl="torch_compile")`` (the ``cut-cross-entropy`` package,
  ``bench`` extra): log-prob only (its fast kernel is Triton/CUDA only).

Gradients are reset (``grad = None``) before every step, as an optimizer's ``zero_grad`` does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from _memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from report import ops_section

IMPLS_CPU = ("textbook", "naive", "floor", "chunked", "ingrad", "trl_default", "trl_tuned", "liger", "cce")
IMPLS_GPU = (
    "textbook", "naive", "floor", "chunked", "ingrad", "triton", "triton_ingrad", "trl_default", "trl_tuned", "liger",
    "cce",
)  # fmt: skip
#: β of TRL's / Liger's generalized JSD that gives our divergence (None: not supported there)
FOREIGN_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0, "js": 0.5}
H100_PEAK_BYTES_PER_S = 3.35e12


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(args, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(args.device)

    n, h = args.n, args.hidden
    hr = args.ref_hidden or h
    return dict(
        hidden=r(n, h).requires_grad_(),
        weight=r(vocab, h, scale=h**-0.5).requires_grad_(),
        ref_hidden=r(n, hr),
        ref_weight=r(vocab, hr, scale=hr**-0.5),
        targets=torch.randint(0, vocab, (n,), generator=g).to(args.device),
        w=[torch.randn(n, generator=g).to(args.device) / n for _ in range(3)],
    )


def _textbook_divergence(name: str, lp: torch.Tensor, lr: torch.Tensor) -> torch.Tensor | None:
    """The divergence as a user writes it from two log-softmaxes (None: not written out for ``name``)."""
    if name == "forward_kl":
        return (lr.exp() * (lr - lp)).sum(-1)
    if name == "reverse_kl":
        return (lp.exp() * (lp - lr)).sum(-1)
    if name == "js":
        lm = torch.logaddexp(lp, lr) - math.log(2.0)
        return 0.5 * (lr.exp() * (lr - lm)).sum(-1) + 0.5 * (lp.exp() * (lp - lm)).sum(-1)
    return None


def _step_fn(impl: str, x: dict, args):
    """A closure running one forward + backward of ``impl`` (gradients into hidden and weight)."""
    step = _make_step(impl, x, args)
    if step is None:
        return None

    def fresh_step():
        x["hidden"].grad = x["weight"].grad = None
        step()

    return fresh_step


def _make_step(impl: str, x: dict, args):
    import trl_divergences as td

    div = td.get_divergence(args.divergence)
    common = (x["hidden"], x["weight"], x["ref_hidden"], x["ref_weight"], x["targets"])
    if impl == "textbook":
        if _textbook_divergence(args.divergence, x["hidden"][:1, :1], x["hidden"][:1, :1]) is None:
            return None

        def step():
            lp = torch.log_softmax((x["hidden"] @ x["weight"].T).float(), dim=-1)
            lr = torch.log_softmax((x["ref_hidden"] @ x["ref_weight"].T).float(), dim=-1)
            logp = lp.gather(-1, x["targets"].unsqueeze(-1)).squeeze(-1)
            entropy = -(lp.exp() * lp).sum(-1)
            dv = _textbook_divergence(args.divergence, lp, lr)
            w_logp, w_ent, w_div = x["w"]
            ((w_logp * logp).sum() + (w_ent * entropy).sum() + (w_div * dv).sum()).backward()

        return step
    if impl == "floor":
        h, w, hr, wr = (x[k].detach() for k in ("hidden", "weight", "ref_hidden", "ref_weight"))
        z = torch.empty(h.shape[0], w.shape[0], dtype=h.dtype, device=h.device)
        zr, grad_h, grad_w = torch.empty_like(z), torch.empty_like(h), torch.empty_like(w)

        def step():  # the four GEMMs: z = h Wᵀ, z_ref = h_ref W_refᵀ, grad h = dz W, grad W = dzᵀ h (dz := z)
            torch.mm(h, w.T, out=z)
            torch.mm(hr, wr.T, out=zr)
            torch.mm(z, w, out=grad_h)
            torch.mm(z.T, h, out=grad_w)
            x["hidden"].grad, x["weight"].grad = grad_h, grad_w

        return step
    if impl == "cce":
        from cut_cross_entropy import linear_cross_entropy

        def step():
            nll = linear_cross_entropy(x["hidden"], x["weight"], x["targets"], reduction="none", impl="torch_compile")
            (-(x["w"][0] * nll)).sum().backward()

        return step
    if impl in ("naive", "chunked", "triton"):

        def step():
            outs = td.ops.fused_linear_logprob_entropy_divergence(*common, divergence=div, impl=impl)
            sum((w * o).sum() for w, o in zip(x["w"], outs)).backward()

        return step
    if impl in ("ingrad", "triton_ingrad"):
        which = "chunked" if impl == "ingrad" else "triton"

        def step():
            loss = td.ops.fused_linear_divergence_loss(*common, *x["w"], divergence=div, impl=which)[0]
            loss.backward()

        return step
    beta = FOREIGN_BETA.get(args.divergence)
    if beta is None:
        return None
    if impl.startswith("trl"):
        from trl.kernels import chunked_divergence as trl_cd

        if impl == "trl_tuned":
            trl_cd.TOKEN_CHUNK_SIZE, trl_cd.VOCAB_CHUNK_SIZE = 512, 8192

        def step():
            dv, _ = trl_cd.ChunkedDivergenceFunction.apply(
                x["hidden"], x["weight"], None, x["ref_hidden"], x["ref_weight"], None, beta
            )
            (x["w"][2] * dv).sum().backward()

        return step
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(beta=beta, compiled=False)

        def step():
            loss_fn(x["hidden"], x["weight"], x["ref_hidden"], x["ref_weight"], x["targets"]).backward()

        return step
    raise ValueError(f"unknown implementation {impl!r}")


def _logits_bandwidth(args, vocab: int) -> dict:
    """CUDA: time the logits-level Triton forward + backward on bf16 logits vs naive; achieved bytes/s."""
    import trl_divergences as td

    g = torch.Generator().manual_seed(1)
    z = torch.randn(args.n, vocab, generator=g).to(torch.bfloat16).to("cuda").requires_grad_()
    zr = torch.randn(args.n, vocab, generator=g).to(torch.bfloat16).to("cuda")
    tg = torch.randint(0, vocab, (args.n,), generator=g).to("cuda")
    ws = [torch.randn(args.n, device="cuda") for _ in range(3)]
    out = {}
    for impl in ("triton", "naive"):

        def step(impl=impl):
            z.grad = None
            outs = td.ops.logprob_entropy_divergence(z, zr, tg, divergence=args.divergence, impl=impl)
            sum((w * o).sum() for w, o in zip(ws, outs)).backward()

        times = _time(step, "cuda", args.iters)
        out[f"logits_{impl}_s"] = statistics.median(times)
    # compulsory traffic: forward reads z and zr; backward reads z, zr and writes dz (two bytes each)
    min_bytes = 5 * args.n * vocab * 2
    out["logits_speedup_vs_naive"] = out["logits_naive_s"] / out["logits_triton_s"]
    out["logits_bandwidth_Bps"] = min_bytes / out["logits_triton_s"]
    out["logits_bandwidth_frac_h100"] = out["logits_bandwidth_Bps"] / H100_PEAK_BYTES_PER_S
    return out


def _time(step, device: str, iters: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):  # compilation, allocator
        step()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def worker(args) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    vocab = args.vocab[0]
    impl = args.worker
    if impl == "logits_bandwidth":
        print(json.dumps(_logits_bandwidth(args, vocab)))
        return
    x = _inputs(args, vocab)
    step = _step_fn(impl, x, args)
    if step is None:
        print(json.dumps({"skipped": f"{impl} does not support {args.divergence}"}))
        return
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        extra = {}
    else:  # RSS now, not the high-water mark: building the inputs freed temporaries (see benchmarks/_memory.py)
        base = rss_bytes()
        extra = {"hwm_reset": reset_peak_rss()}
    times = _time(step, args.device, args.iters, args.warmup)
    peak = torch.cuda.max_memory_allocated() - base if args.device == "cuda" else peak_rss_bytes() - base
    grads = {k: float(x[k].grad.float().norm()) for k in ("hidden", "weight")}
    out = {"time_s": statistics.median(times), "times_s": times, "peak_mb": peak / 2**20, **grads, **extra}
    print(json.dumps(out))


def _run_one(args, impl: str, vocab: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--vocab", str(vocab)]
    for key in ("device", "n", "hidden", "ref_hidden", "iters", "warmup", "divergence", "dtype", "threads"):
        if getattr(args, key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 151936])
    p.add_argument("--n", type=int, default=2048, help="tokens")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument(
        "--ref-hidden", type=int, default=None, help="hidden size of the other side (a teacher's); default --hidden"
    )
    p.add_argument("--iters", type=int, default=3, help="timed iterations after one warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--divergence", default="forward_kl")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--impls", nargs="+", default=None, help="subset of implementations")
    p.add_argument("--out", default="benchmarks/results/ops_cpu.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    impls = tuple(args.impls or (IMPLS_GPU if args.device == "cuda" else IMPLS_CPU))
    load_before = os.getloadavg()[0]  # the machine's load, recorded with the results (the README states it)
    results: dict = {}
    for vocab in args.vocab:
        results[str(vocab)] = {}
        for impl in impls:
            results[str(vocab)][impl] = r = _run_one(args, impl, vocab)
            print(f"V={vocab} {impl}: {r}", flush=True)
        if args.device == "cuda":
            results[str(vocab)]["logits_bandwidth"] = _run_one(args, "logits_bandwidth", vocab)
    device = torch.cuda.get_device_name() if args.device == "cuda" else _cpu_name()
    meta = {
        "device": device,
        "device_type": args.device,
        "cpu_count": os.cpu_count(),
        "load_avg": [load_before, os.getloadavg()[0]],
        "torch": torch.__version__,
        **{
            k: getattr(args, k)
            for k in ("n", "hidden", "ref_hidden", "iters", "warmup", "divergence", "dtype", "threads")
        },
    }
    print(f"\n{meta}\n")
    print(ops_section({"meta": meta, "results": results}, args.out))  # the README's block, from this run
    if args.device == "cuda":
        for vocab in args.vocab:
            print(f"V={vocab} logits-level kernel: {results[str(vocab)]['logits_bandwidth']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
