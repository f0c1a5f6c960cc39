"""Aggregate the study's per-run records: means and t-intervals over seeds, crossover points, prompt buckets by
base difficulty, trajectories; write ``<name>.json``, ``<name>.md`` and the plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trl_divergences.toy import pass_at_k

from .protocol import BASE, CONFIGS, Protocol, config_by_name
from .stats import crossover_k, mean_ci

SPLITS = ("train", "heldout")
#: prompts grouped by the base model's per-prompt pass@1 (mean over the base's evaluation seeds)
BUCKETS = (("rare", 0.0, 0.05), ("mid", 0.05, 0.3), ("common", 0.3, 1.01))
TRAJECTORY_METRICS = ("pass@1", "entropy", "forward_kl", "reverse_kl")
UPDATE_METRICS = ("updated_fraction", "effective_rank", "effective_rank_ratio", "top1_energy")


def _label(name: str) -> str:
    return "base model" if name == BASE else config_by_name(name).label


def _base_difficulty(records: dict, seeds: Sequence[int], split: str, n: int) -> list[float] | None:
    rows = [records[(BASE, s)]["eval"][split]["per_prompt"]["correct"] for s in seeds if (BASE, s) in records]
    if not rows:
        return None
    return [sum(r[i] for r in rows) / (len(rows) * n) for i in range(len(rows[0]))]


def summarize(protocol: Protocol, records: dict[tuple[str, int], dict]) -> dict[str, Any]:
    """Per configuration: metrics (mean ± CI over its finished seeds), crossover points, buckets, update stats,
    trajectories and wall times."""
    ks, n, k_max = protocol.ks, protocol.eval_samples, protocol.ks[-1]
    names = (BASE, *protocol.configs)
    summary: dict[str, Any] = {}
    for name in names:
        seeds = [s for s in protocol.seeds if (name, s) in records]
        if not seeds:
            continue
        runs = [records[(name, s)] for s in seeds]
        entry: dict[str, Any] = {"label": _label(name), "seeds": seeds, "splits": {}}
        for split in SPLITS:
            metrics = [f"pass@{k}" for k in ks] + ["distinct_correct", "entropy", "forward_kl", "reverse_kl"]
            block = {m: mean_ci([r["eval"][split][m] for r in runs]) for m in metrics}
            difficulty = _base_difficulty(records, protocol.seeds, split, n)
            if difficulty is not None:
                buckets = {}
                for bucket, low, high in BUCKETS:
                    idx = [i for i, d in enumerate(difficulty) if low <= d < high]
                    if not idx:
                        continue
                    counts = [r["eval"][split]["per_prompt"]["correct"] for r in runs]
                    buckets[bucket] = {
                        "prompts": len(idx),
                        "pass@1": mean_ci([sum(c[i] / n for i in idx) / len(idx) for c in counts]),
                        f"pass@{k_max}": mean_ci(
                            [sum(pass_at_k(n, c[i], k_max) for i in idx) / len(idx) for c in counts]
                        ),
                    }
                block["buckets"] = buckets
            entry["splits"][split] = block
        entry["wall_s"] = mean_ci([r["wall_s"] for r in runs])
        if name != BASE:
            entry["train_s"] = mean_ci([r["train_s"] for r in runs])
            entry["update"] = {m: mean_ci([r["update"][m] for r in runs]) for m in UPDATE_METRICS}
            last = [r["logs"][-1].get("analysis/trajectory_top1_energy") for r in runs if r["logs"]]
            if last and None not in last:
                entry["update"]["trajectory_top1_energy"] = mean_ci(last)
        steps = [p["step"] for p in runs[0]["trajectory"]]
        entry["trajectory"] = {"steps": steps}
        for metric in TRAJECTORY_METRICS:
            per_step = [mean_ci([r["trajectory"][i][metric] for r in runs]) for i in range(len(steps))]
            entry["trajectory"][metric] = {"mean": [p["mean"] for p in per_step], "ci": [p["ci"] for p in per_step]}
        summary[name] = entry
    if BASE in summary:
        for name, entry in summary.items():
            if name == BASE:
                continue
            entry["crossover"] = {}
            for split in SPLITS:
                curve = [entry["splits"][split][f"pass@{k}"]["mean"] for k in ks]
                base = [summary[BASE]["splits"][split][f"pass@{k}"]["mean"] for k in ks]
                per_seed = []
                for s in entry["seeds"]:
                    if (BASE, s) in records:
                        row, ref = records[(name, s)]["eval"][split], records[(BASE, s)]["eval"][split]
                        per_seed.append(crossover_k(ks, [row[f"pass@{k}"] for k in ks], [ref[f"pass@{k}"] for k in ks]))
                entry["crossover"][split] = {"mean_curve": crossover_k(ks, curve, base), "per_seed": per_seed}
    return summary


def _fmt(stat: dict[str, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    if math.isnan(stat["ci"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci']:.{digits}f}"


def format_table(summary: dict[str, Any], ks: Sequence[int]) -> str:
    """Markdown table: pass@1 / pass@k_max per split (mean ± 95 % CI over seeds), crossover k, diversity, KL."""
    k = ks[-1]
    header = [
        "config", "seeds", "train pass@1", f"train pass@{k}", "held-out pass@1", f"held-out pass@{k}",
        "crossover k (train / held-out)", "train distinct correct", "train entropy", "train KL(base‖π)", "train s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in summary.values():
        tr, ho = e["splits"]["train"], e["splits"]["heldout"]
        cross = e.get("crossover")
        cross_cell = "–" if cross is None else " / ".join(str(cross[s]["mean_curve"] or "none") for s in SPLITS)
        cells = [
            e["label"], str(len(e["seeds"])), _fmt(tr["pass@1"]), _fmt(tr[f"pass@{k}"]), _fmt(ho["pass@1"]),
            _fmt(ho[f"pass@{k}"]), cross_cell, _fmt(tr["distinct_correct"], 2), _fmt(tr["entropy"]),
            _fmt(tr["forward_kl"]), _fmt(e.get("train_s"), 0),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], ks: Sequence[int], out: Path, name: str) -> list[str]:
    """``<name>_passk.png`` (pass@k and pass@k − base, per split, 95 % CI bands, crossovers marked) and
    ``<name>_trajectories.png`` (pass@1, entropy, KL(base‖π) over training). Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    base = summary.get(BASE)
    for col, split in enumerate(SPLITS):
        for i, (cname, e) in enumerate(summary.items()):
            stats = [e["splits"][split][f"pass@{k}"] for k in ks]
            mean = [s["mean"] for s in stats]
            ci = [0.0 if math.isnan(s["ci"]) else s["ci"] for s in stats]
            style = {"color": "black", "lw": 2.5} if cname == BASE else {"color": colors[i % len(colors)]}
            axes[0, col].plot(ks, mean, marker="o", ms=3, label=e["label"], **style)
            axes[0, col].fill_between(ks, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
                                      alpha=0.12, color=style["color"])  # fmt: skip
            if base is not None:
                ref = [base["splits"][split][f"pass@{k}"]["mean"] for k in ks]
                diff = [m - r for m, r in zip(mean, ref)]
                axes[1, col].plot(ks, diff, marker="o", ms=3, **style)
                axes[1, col].fill_between(ks, [d - c for d, c in zip(diff, ci)], [d + c for d, c in zip(diff, ci)],
                                          alpha=0.12, color=style["color"])  # fmt: skip
                cross = e.get("crossover", {}).get(split, {}).get("mean_curve")
                if cross is not None:
                    axes[1, col].plot([cross], [diff[list(ks).index(cross)]], marker="x", ms=10, mew=2, **style)
        axes[0, col].set(title=f"pass@k — {split} prompts", ylabel="pass@k", ylim=(0, 1.02))
        axes[1, col].axhline(0.0, color="black", lw=1)
        axes[1, col].set(title=f"pass@k − base (× = crossover) — {split}", xlabel="k", ylabel="Δ pass@k")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    files = [f"{name}_passk.png", f"{name}_trajectories.png"]
    fig.savefig(out / files[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, (cname, e) in enumerate(summary.items()):
        if cname == BASE:
            continue
        traj = e["trajectory"]
        for ax, metric in zip(axes, ("pass@1", "entropy", "forward_kl")):
            ax.plot(traj["steps"], traj[metric]["mean"], marker=".", label=e["label"], color=colors[i % len(colors)])
    for ax, title in zip(axes, ("pass@1", "entropy (nats/token)", "KL(base‖π) (nats/token)")):
        ax.set(title=f"{title} over training (train prompts)", xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / files[1], dpi=110)
    plt.close(fig)
    return files


def write_report(
    out: Path,
    name: str,
    protocol: Protocol,
    records: dict[tuple[str, int], dict],
    plan: Sequence[tuple[str, int]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write ``<name>.json`` (protocol, configs, summary, missing runs, per-run wall times and load averages),
    ``<name>.md`` (the table) and the plots; returns the JSON payload plus ``table``."""
    summary = summarize(protocol, records)
    missing = [f"{n}-seed{s}" for n, s in plan if (n, s) not in records]
    table = format_table(summary, protocol.ks) if summary else ""
    payload = {
        "protocol": protocol.to_json(),
        "configs": [
            {"name": c.name, **asdict(c.spec), "note": c.note} for c in CONFIGS if c.name in protocol.configs
        ],  # fmt: skip
        "complete": not missing,
        "missing_runs": missing,
        "runs": {
            f"{n}-seed{s}": {
                "wall_s": r["wall_s"],
                "eval_s": r["eval_s"],
                "train_s": r.get("train_s"),
                "load_average": r["load_average"],
            }
            for (n, s), r in records.items()
        },  # fmt: skip
        "total_run_s": sum(r["wall_s"] for r in records.values()),
        "summary": summary,
        **meta,
    }
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1))
    (out / f"{name}.md").write_text(table + "\n")
    payload["plots"] = plot(summary, protocol.ks, out, name) if summary else []
    payload["table"] = table
    return payload
