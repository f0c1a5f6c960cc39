"""GPU smoke run: a few real verl 0.9.1 GRPO steps (``verl.trainer.main_ppo``, FSDP actor/ref, vLLM rollout) on the
embedded toy task and the project's tiny Qwen2, with ``kl_loss_type=forward_kl:k3+`` and in-reward
``algorithm.kl_penalty='js(beta=0.5)'`` from the plugin. Skipped without CUDA and vLLM. Prints the step metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.verl, pytest.mark.gpu, pytest.mark.slow]

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm", reason="the smoke run rolls out with vLLM")


def write_dataset(path: Path, split: str) -> None:
    import pandas as pd

    from trl_divergences.toy.task import split_prompts

    rows = [
        {
            "data_source": "toy_sum",
            "prompt": [{"role": "user", "content": prompt}],
            "ability": "arithmetic",
            "reward_model": {"style": "rule", "ground_truth": prompt},
            "extra_info": {"index": i, "split": split},
        }
        for i, prompt in enumerate(split_prompts(split)[:64])
    ]
    pd.DataFrame(rows).to_parquet(path)


def test_grpo_steps_with_the_plugin(tmp_path):
    from trl_divergences.toy.model import build_random_model
    from trl_divergences.toy.tokenizer import load_tokenizer

    model = build_random_model(tmp_path / "model")
    tokenizer = load_tokenizer(model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(model)
    write_dataset(tmp_path / "train.parquet", "train")
    write_dataset(tmp_path / "test.parquet", "test")
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={tmp_path / 'train.parquet'}",
        f"data.val_files={tmp_path / 'test.parquet'}",
        "data.train_batch_size=16",
        "data.max_prompt_length=16",
        "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.actor.optim.lr=1e-4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_type=forward_kl:k3+",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "algorithm.use_kl_in_reward=true",
        "algorithm.kl_penalty='js(beta=0.5)'",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        f"reward.custom_reward_function.path={Path(__file__).with_name('gpu_reward.py')}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.logger=['console']",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.total_training_steps=3",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        timeout=1500,
    )
    log = out.stdout + out.stderr
    print("\n".join(line for line in log.splitlines() if "step:" in line))
    assert out.returncode == 0, log[-6000:]
    steps = [line for line in log.splitlines() if re.search(r"step:\d+", line) and "actor/kl_loss" in line]
    assert len(steps) >= 3, log[-6000:]
