"""Sharded training: FSDP2 (accelerate, through ``fsdp`` / ``fsdp_config``) and DeepSpeed ZeRO-3 (``deepspeed``)
on the exact-divergence path and one method per family. GPU only: on CPU, accelerate 1.15 keeps a MULTI_CPU run
as plain DDP whatever the FSDP configuration (it turns FSDP on only for accelerator device types), and refuses
DeepSpeed with ``use_cpu`` while transformers still builds the model under ``deepspeed.zero.Init``; without
``use_cpu`` on a CPU-only machine, transformers computes world size 1 where DeepSpeed counts 2, so no batch-size
configuration passes both checks. Up to 2 GPUs: NCCL runs one process per device."""

from __future__ import annotations

import math

import pytest
import torch

from .launch import assert_same_params, launch, ok
from .test_multiprocess import CONFIGS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP2 and ZeRO-3 need CUDA here (see the docstring)"),
]

#: the exact divergence and one method per family
FAMILIES = ["full_forward_kl", "js_k3_warmup", "eksft_global", "ace", "gaussian", "lp_reg_global", "rehearsal"]
ON_GPU = dict(use_cpu=False, bf16=False, max_steps=2, learning_rate=0.05)
WRAP = ["Qwen2DecoderLayer"]
BACKENDS = {
    "fsdp2": dict(fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": WRAP}),
    "zero3": dict(deepspeed={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto",
                             "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}),
}  # fmt: skip


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sharded_runs_finish_with_identical_ranks(model_dir, store, tmp_path, backend):
    if backend == "zero3":
        pytest.importorskip("deepspeed")
    nproc = min(2, torch.cuda.device_count())
    jobs = []
    for name in FAMILIES:
        config, _, dataset = CONFIGS[name]
        jobs.append({"name": name, "kind": "train", "output_dir": str(tmp_path / "runs" / name), "dataset": dataset,
                     "config": {**config, **ON_GPU, **BACKENDS[backend]}})  # fmt: skip
    proc = launch(tmp_path, jobs, model=model_dir, store=store, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for name in FAMILIES:
        metric = CONFIGS[name][1]
        ranks = ok(tmp_path, name, nproc)
        for result in ranks:
            assert result["sharded"], f"{name}: parameters are not sharded under {backend} ({result['wrapper']})"
            logs = [h for h in result["logs"] if "loss" in h and "train_loss" not in h]
            assert len(logs) == 2 and all(math.isfinite(h["loss"]) and metric in h for h in logs)
        for other in ranks[1:]:
            assert_same_params(ranks[0]["params"], other["params"])
            assert other["state"] == ranks[0]["state"]
