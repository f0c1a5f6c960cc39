"""The demo script's hub-loading path (--model / --dataset) on local folders, and its outputs."""

from __future__ import annotations

import json

import pytest

from trl_divergences.demo import DEFAULT_RUNS, format_table, main
from trl_divergences.toy import BaseModelConfig, build_random_model, make_dataset

pytestmark = pytest.mark.slow

TINY = BaseModelConfig(hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)


def test_demo_on_local_model_and_dataset_folders(tmp_path):
    model_dir = build_random_model(tmp_path / "model", config=TINY)
    make_dataset("train").save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "out"
    payload = main(
        [
            "--model", str(model_dir), "--dataset", str(tmp_path / "data"), "--steps", "2", "--output-dir", str(out),
            "--runs", "reverse KL (k3),JS (full)", "--no-progress",
        ]
    )  # fmt: skip
    assert list(payload["results"]) == ["reverse KL (k3)", "JS (full)"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["JS (full)"]["train"].keys() == {"reward", "kl", "entropy"}
    assert "| JS (full) |" in (out / "results.md").read_text()
    logs = sorted((out / "runs").glob("*/log.jsonl"))  # TRL's per-step log dicts go to files, not the console
    assert len(logs) == 2 and all("loss" in json.loads(line) for line in logs[0].read_text().splitlines()[:1])


def test_demo_evaluates_toy_task_and_plots(tmp_path):
    model_dir = build_random_model(tmp_path / "model", config=TINY)
    out = tmp_path / "out"
    payload = main(
        ["--model", str(model_dir), "--steps", "1", "--eval-samples", "4", "--output-dir", str(out),
         "--runs", "forward KL (full),SIREN", "--no-progress"]
    )  # fmt: skip
    results = payload["results"]
    assert list(results) == ["base", "forward KL (full)", "SIREN"]
    for label in ("forward KL (full)", "SIREN"):
        for split in ("train", "heldout"):
            row = results[label][split]
            assert {"pass@1", "pass@4", "distinct_correct", "entropy", "forward_kl", "reverse_kl"} <= row.keys()
            assert 0.0 <= row["pass@1"] <= row["pass@4"] <= 1.0
    assert (out / "results.png").stat().st_size > 1000


def test_unknown_run_label_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown --runs"):
        main(["--model", "unused", "--dataset", "unused", "--runs", "nope", "--output-dir", str(tmp_path)])


def test_format_table_orders_metrics():
    row = {"pass@1": 0.1, "pass@4": 0.4, "distinct_correct": 2.0, "entropy": 0.5, "forward_kl": 0.0, "reverse_kl": 0.0}
    table = format_table({"base": {"train": row}}, k=4)
    assert table.splitlines()[0].startswith("| config | train pass@1 | train pass@4 | train distinct_correct")
    assert {r.label for r in DEFAULT_RUNS} >= {"reverse KL (k3)", "forward KL (full)", "JS (full)", "W-REINFORCE"}


def test_demo_teacher_rows_distil_a_teacher_with_and_without_reward(tmp_path):
    model_dir = build_random_model(tmp_path / "model", config=TINY)
    teacher_dir = build_random_model(tmp_path / "teacher", seed=1, config=TINY)  # same toy tokenizer
    out = tmp_path / "out"
    payload = main(
        ["--model", str(model_dir), "--teacher-model", str(teacher_dir), "--steps", "1", "--eval-samples", "4",
         "--output-dir", str(out), "--runs", "KDRL from the teacher (reward),exact OPD from the teacher (no reward)",
         "--no-progress"]
    )  # fmt: skip
    assert list(payload["results"]) == [
        "base",
        "teacher",
        "KDRL from the teacher (reward)",
        "exact OPD from the teacher (no reward)",
    ]
    logs = [
        json.loads(line) for line in sorted((out / "runs").glob("exact_OPD*/log.jsonl"))[0].read_text().splitlines()
    ]
    assert any(key.startswith("teacher/exact_opd/") for key in logs[0])
