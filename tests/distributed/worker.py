"""The job the distributed and fault tests launch (``python -m torch.distributed.run ... worker.py SPEC`` or plain
``python worker.py SPEC``): runs the spec's jobs one after the other in this process and writes, per job and rank,
``<out>/<job>/rank<r>.pt`` with what the tests compare. Only the public API is used (DivergenceGRPOConfig,
DivergenceGRPOTrainer, ``train(resume_from_checkpoint=...)``, ``methods_state_dict()``, the core functions).

A spec is JSON: ``{"out": DIR, "model": DIR, "store": DIR or null, "jobs": [...]}``; a job is
``{"name", "kind": "train", "output_dir", "config": {DivergenceGRPOConfig overrides}, "resume": null | true | PATH,
"dataset": "prompts" | "rehearsal", "fault": null | {...}}``, ``{"name", "kind": "stats"}`` or
``{"name", "kind": "cli", "module", "argv", "fault"}``. A fault kills this process with SIGKILL (see
:func:`arm_fault`), so the jobs after it never run: a faulty job goes last.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests` and the package

#: the trainer of the running job (the recording reward reads its step)
CURRENT: dict[str, Any] = {}
#: every reward call of the running job: step, prompts, total rewards
RECORDS: list[dict[str, Any]] = []


def recording_reward(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """``varied_reward``, recording what this process scored (the curriculum and resume checks read it)."""
    from tests.trl.helpers import varied_reward

    rewards = varied_reward(prompts, completions, **kwargs)
    trainer = CURRENT.get("trainer")
    RECORDS.append({"step": -1 if trainer is None else trainer.state.global_step, "prompts": list(prompts),
                    "rewards": rewards})  # fmt: skip
    return rewards


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm_fault(fault: dict[str, Any] | None) -> list:
    """Install a SIGKILL of this process; returns the trainer callbacks it needs.

    * ``{"after_step": s}``: at the end of optimizer step s (between steps; checkpoints of earlier steps complete).
    * ``{"target": "module:attr[.attr]", "call": n, "when": "before" | "after", "from_step": s}``: on the n-th
      call (1-based) of that function (e.g. ``torch:save`` inside a checkpoint write), before it runs or after it
      returns; with ``from_step``, only calls made once the running trainer has reached optimizer step s count.
    """
    if not fault:
        return []
    if "after_step" in fault:
        from transformers import TrainerCallback

        class KillAfterStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == fault["after_step"]:
                    _kill()

        return [KillAfterStep()]
    import importlib

    module_name, _, attr_path = fault["target"].partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = attr_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, attr)
    calls = {"n": 0}

    def counts() -> bool:
        trainer = CURRENT.get("trainer")
        return "from_step" not in fault or (trainer is not None and trainer.state.global_step >= fault["from_step"])

    def faulty(*args, **kwargs):
        calls["n"] += counts()
        hit = calls["n"] == fault["call"] and counts()
        if hit and fault["when"] == "before":
            _kill()
        result = original(*args, **kwargs)
        if hit and fault["when"] == "after":
            _kill()
        return result

    setattr(owner, attr, faulty)
    return []


def _dataset(kind: str):
    from tests.trl.helpers import prompts_dataset

    if kind == "rehearsal":
        from trl_divergences.toy import make_dataset

        return make_dataset("train").select(range(12))
    return prompts_dataset(16)


def _sharded(p: torch.Tensor) -> bool:
    """FSDP2 shards a parameter as a DTensor, ZeRO-3 partitions it (``ds_id``)."""
    return type(p).__name__ == "DTensor" or hasattr(p, "ds_id")


def _full_params(model) -> dict[str, torch.Tensor]:
    """Every parameter as a plain full CPU tensor (a collective under FSDP2 / ZeRO-3: every rank calls it)."""
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().cpu().clone() for name, p in params.items()}
    return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
            for name, p in params.items()}  # fmt: skip


def train_job(spec: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    from tests.trl.helpers import BASE_ARGS
    from trl_divergences import DivergenceGRPOConfig, DivergenceGRPOTrainer
    from trl_divergences.toy import load_tokenizer

    config = {**BASE_ARGS, "output_dir": job["output_dir"], **job.get("config", {})}
    if config.pop("rehearsal", False):
        config["rehearsal_dataset"] = spec["store"]
    callbacks = arm_fault(job.get("fault"))
    trainer = DivergenceGRPOTrainer(
        model=spec["model"],
        reward_funcs=recording_reward,
        args=DivergenceGRPOConfig(**config),
        train_dataset=_dataset(job.get("dataset", "prompts")),
        processing_class=load_tokenizer(spec["model"]),
        callbacks=callbacks,
    )
    CURRENT["trainer"] = trainer
    RECORDS.clear()
    trainer.train(resume_from_checkpoint=job.get("resume"))
    return {
        "params": _full_params(trainer.model),
        "sharded": any(_sharded(p) for p in trainer.model.parameters()),
        "wrapper": type(trainer.model_wrapped).__name__,
        "state": json.loads(json.dumps(trainer.methods_state_dict())),
        "records": list(RECORDS),
        "logs": trainer.state.log_history,
        "global_step": trainer.state.global_step,
        "dataset_prompts": list(trainer.train_dataset["prompt"]),
    }


def dist_gather(values: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor of this process concatenated over all processes in rank order (lengths may differ), by
    ``torch.distributed.all_gather`` (gloo): the gather the global scopes need, independent of the adapter's."""
    size = torch.tensor([values.numel()])
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    width = max(int(s) for s in sizes)
    padded = torch.zeros(width, dtype=values.dtype)
    padded[: values.numel()] = values
    rows = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(rows, padded)
    return torch.cat([row[: int(s)] for row, s in zip(rows, sizes)])


def _rank_batch(case: int, r: int, width: int = 7) -> dict[str, torch.Tensor]:
    """Process r's micro-batch of stats case ``case``: a rank-dependent number of rows, random masks, some ties."""
    gen = torch.Generator().manual_seed(1000 * case + r)
    rows = 3 + 2 * r + case % 3
    mask = torch.rand(rows, width, generator=gen) < 0.8
    mask[:, 0] = True
    ties = case % 2 == 1  # odd cases: values on a coarse grid, so thresholds fall on ties
    values = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    values = (values * 2).round() / 2 if ties else values
    logps = -torch.rand(rows, width, generator=gen).mul(6)
    logps = (logps * 2).round() / 2 if ties else logps
    proxy = logps + torch.randn(rows, width, generator=gen)
    advantages = torch.randn(rows, generator=gen)
    entropies = torch.rand(rows, width, generator=gen).mul(3)
    correct = torch.rand(rows, generator=gen) < 0.5
    return {"mask": mask, "values": values, "logps": logps, "proxy": proxy, "advantages": advantages,
            "entropies": entropies, "reverse_kl": values.abs().float(), "correct": correct}  # fmt: skip


def stats_job(spec: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """Each global-scope statistic on this process's micro-batch with the real all_gather, against the same
    statistic on the concatenation of every process's micro-batch in one process (gather=None): this rank's rows of
    the latter must equal the former. Returns the booleans and the selections (the test asserts on them)."""
    from trl_divergences.curricula import get_curriculum
    from trl_divergences.divergences import get_divergence
    from trl_divergences.divergences.lp_reg import low_probability_selection
    from trl_divergences.groups import group_mean
    from trl_divergences.masks import TokenBatch, get_token_mask
    from trl_divergences.masks.base import top_fraction

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    r, world = rank(), world_size()
    results: dict[str, Any] = {}
    for case in range(job.get("cases", 6)):
        local = _rank_batch(case, r)
        every = [_rank_batch(case, q) for q in range(world)]
        full = {key: torch.cat([b[key] for b in every]) for key in local}
        start = sum(b["mask"].size(0) for b in every[:r])
        mine = slice(start, start + local["mask"].size(0))
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for fraction in (0.1, 0.35):
            pairs[f"top_fraction/{fraction}"] = (
                top_fraction(local["values"], local["mask"], fraction, "global", dist_gather),
                top_fraction(full["values"], full["mask"], fraction, "global")[mine],
            )
        for rho in (0.2, 0.5):
            pairs[f"low_probability_selection/{rho}"] = (
                low_probability_selection(local["logps"], local["proxy"], local["advantages"], local["mask"], rho,
                                          dist_gather),
                low_probability_selection(full["logps"], full["proxy"], full["advantages"], full["mask"], rho)[mine],
            )  # fmt: skip
        lp_reg = get_divergence("lp_reg", rho=0.3, scope="global")
        pairs["lp_reg.select"] = (
            lp_reg.select(local["logps"], local["proxy"], local["advantages"], local["mask"], dist_gather),
            lp_reg.select(full["logps"], full["proxy"], full["advantages"], full["mask"])[mine],
        )
        masks = {
            "entropy_quantile": get_token_mask("entropy_quantile", quantile=0.3, scope="global"),
            "low_probability": get_token_mask("low_probability", rho=0.3, scope="global"),
            "eksft": get_token_mask("eksft", ratio=0.25, scope="global", dynamic_coef=False),
        }
        for name, mask in masks.items():

            def batch(b: dict[str, torch.Tensor], gather) -> TokenBatch:
                return TokenBatch(mask=b["mask"], logps=b["logps"], entropies=b["entropies"],
                                  advantages=b["advantages"], reverse_kl=b["reverse_kl"], proxy_logps=b["proxy"],
                                  vocab_size=106, gather=gather)  # fmt: skip

            pairs[f"mask/{name}"] = (mask(batch(local, dist_gather)).keep, mask(batch(full, None)).keep[mine])
        # curricula: the pass-rate table folded from every process's groups (rows are whole groups of 1 + rank)
        curriculum = get_curriculum("gaussian", ema=0.5)
        curriculum.bind(8)
        reference = get_curriculum("gaussian", ema=0.5)
        reference.bind(8)
        group_ids = torch.arange(local["correct"].numel()) // 2 + 100 * r
        prompt_of_group = (torch.arange(local["correct"].numel()) // 2 + 3 * r + case) % 8
        gathered_correct = dist_gather(local["correct"].double())
        gathered_groups = dist_gather(group_ids)
        gathered_prompts = dist_gather(prompt_of_group)
        curriculum.update(gathered_prompts, group_mean(gathered_correct, gathered_groups))
        every_groups = torch.cat([torch.arange(b["correct"].numel()) // 2 + 100 * q for q, b in enumerate(every)])
        every_prompts = torch.cat(
            [(torch.arange(b["correct"].numel()) // 2 + 3 * q + case) % 8 for q, b in enumerate(every)]
        )
        reference.update(every_prompts, group_mean(full["correct"].double(), every_groups))
        pairs["curriculum/pass_rates"] = (curriculum.pass_rates, reference.pass_rates)
        pairs["curriculum/weights"] = (curriculum.weights(), reference.weights())
        for key, (ours, single) in pairs.items():
            results[f"{case}/{key}"] = {"equal": bool(torch.equal(ours, single)), "selected": int(ours.sum()),
                                        "single_selected": int(single.sum())}  # fmt: skip
    return {"stats": results}


def cli_job(spec: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """``python -m <job["module"]> <job["argv"]>`` in this process (so that a fault can be armed inside it)."""
    import runpy

    arm_fault(job.get("fault"))
    saved = sys.argv
    sys.argv = [job["module"], *job["argv"]]
    try:
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return {"done": True}


JOBS = {"train": train_job, "stats": stats_job, "cli": cli_job}


def main() -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a hung rank is
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    for job in spec["jobs"]:
        folder = Path(spec["out"]) / job["name"]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = JOBS[job["kind"]](spec, job)
        except Exception:  # recorded for the test to report (e.g. a resume that crashes), then the next job
            result = {"error": traceback.format_exc()}
        torch.save(result, folder / f"rank{rank()}.pt")
        CURRENT.clear()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
