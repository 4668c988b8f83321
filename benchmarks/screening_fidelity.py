"""Screening fidelity: does a cheap per-trial budget rank ViT configurations the way full training does?

Trains a fixed set of configurations spread over the `vit_optuna` search space at the full budget (the
default recipe: 15 epochs, all data) and at candidate screening budgets, then reports Spearman's rank
correlation (scipy.stats.spearmanr) between each screening budget's best validation accuracy and the full
budget's, with the cost per trial. Every budget uses the default validation split (5,000 images), so the
accuracies are measured on the same images.

    python -m benchmarks.screening_fidelity                  # train what is missing, then print the table (hours)
    python -m benchmarks.screening_fidelity --report         # only the table, from the runs already there
    python -m benchmarks.screening_fidelity --time           # 1 epoch on all data per config: seconds per epoch
    python -m benchmarks.screening_fidelity --budgets e3-n5k --max-minutes 8   # one budget, in short pieces
    python -m benchmarks.screening_fidelity --smoke --out /tmp/s   # a few seconds: checks the plumbing
    python -m benchmarks.screening_fidelity device.precision=fp32  # Hydra overrides go to every run

Resumable: each run is `python -m vit_lab.train ... hydra.run.dir=<out>/<budget>/<config>`; completed runs are
skipped, a killed full-budget run continues from its checkpoint. Accuracy runs use one thread (--threads), which
changes only the rounding of the sums, and keeps them fast on a shared machine. Screening budgets run first (cheap),
then
the full budget, cheapest configuration first. Results: `<out>/fidelity.json` and `<out>/fidelity.md`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from vit_lab.io import atomic_write, read_json, write_json
from vit_lab.run_files import CHECKPOINT, HISTORY, METRICS

# (name, patch, depth, heads, width, lr): spread over the sweep space; the priciest corner (patch 4, depth 6,
# width 128: ~40 min at the full budget) is left out so the full-budget runs fit ~1.5 h of 2 cores.
CONFIGS = [
    ("p4-d4-h4-w64", 4, 4, 4, 64, 2e-3),  # the default model
    ("p7-d1-h1-w32", 7, 1, 1, 32, 1e-3),
    ("p7-d6-h8-w128", 7, 6, 8, 128, 2.8e-3),  # the old default sweep's winner
    ("p4-d2-h2-w32", 4, 2, 2, 32, 3e-3),
    ("p7-d3-h4-w64", 7, 3, 4, 64, 5e-3),
    ("p4-d6-h8-w64", 4, 6, 8, 64, 1e-3),
    ("p7-d4-h2-w128", 7, 4, 2, 128, 5e-4),
    ("p4-d1-h8-w128", 4, 1, 8, 128, 2e-3),
    ("p7-d2-h8-w32", 7, 2, 8, 32, 4e-4),
    ("p4-d3-h1-w64", 4, 3, 1, 64, 3e-4),
    ("p7-d5-h2-w64", 7, 5, 2, 64, 1.5e-3),
    ("p4-d5-h4-w32", 4, 5, 4, 32, 4e-3),
    ("p7-d6-h1-w32", 7, 6, 1, 32, 5e-3),
    ("p4-d2-h8-w128", 4, 2, 8, 128, 7e-4),
]
FULL = "full"
# name -> (epochs, train_limit); train_limit None = all 55,000 training images.
BUDGETS = {
    "e3-n5k": (3, 5000),
    "e5-n10k": (5, 10000),
    "e1-all": (1, None),
    "e3-n20k": (3, 20000),
    "e2-all": (2, None),
    FULL: (15, None),
}
PRESET_BUDGET = "e5-n10k"  # the vit_optuna preset's per-trial budget: the cheapest with Spearman >= 0.8
TRAIN_POOL = 55000  # MNIST's 60,000 training images minus the 5,000 validation images
SMOKE = ["data.val_size=256", "data.test_limit=256", "trainer.batch_size=64", "model.depth=1", "model.hidden_d=16"]


def config_overrides(cfg: tuple) -> list[str]:
    _, patch, depth, heads, width, lr = cfg
    return [
        f"model.patch_size={patch}",
        f"model.depth={depth}",
        f"model.n_heads={heads}",
        f"model.hidden_d={width}",
        f"optimizer.lr={lr}",
    ]


def budget_overrides(budget: str, smoke: bool = False) -> list[str]:
    epochs, limit = BUDGETS[budget]
    if smoke:
        epochs, limit = min(epochs, 2), 512 if limit is None else 256
    return [
        f"trainer.epochs={epochs}",
        f"data.train_limit={'null' if limit is None else limit}",
        f"trainer.checkpoint={'true' if budget == FULL else 'false'}",
        "trainer.progress=false",
        "device=cpu",
    ]


def images_per_trial(budget: str) -> int:
    epochs, limit = BUDGETS[budget]
    return epochs * (TRAIN_POOL if limit is None else min(limit, TRAIN_POOL))


def run_status(run_dir: Path) -> str | None:
    try:
        return read_json(run_dir / METRICS).get("status")
    except (OSError, ValueError):
        return None


def train(
    cfg: tuple, budget: str, out: Path, smoke: bool = False, extra: list[str] | None = None, threads: int | None = 1
) -> dict | None:
    """One run, unless it is already complete; a killed run with a checkpoint is resumed in place."""
    run_dir = out / budget / cfg[0]
    if run_status(run_dir) == "completed":
        return read_json(run_dir / METRICS)
    args = config_overrides(cfg) + budget_overrides(budget, smoke) + (SMOKE if smoke else []) + list(extra or [])
    args.append(f"device.threads={'null' if threads is None else threads}")
    if (run_dir / CHECKPOINT).is_file():
        args.append(f"resume={run_dir}")
    cmd = [sys.executable, "-m", "vit_lab.train", *args, f"hydra.run.dir={run_dir}"]
    print(f"[{time.strftime('%H:%M:%S')}] {budget} {cfg[0]}", flush=True)
    proc = subprocess.run(
        cmd, check=False, cwd=C.REPO, env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        print(
            f"  failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}", flush=True
        )
        return None
    m = read_json(run_dir / METRICS)
    print(f"  best val {m['best_val_acc']:.4f}, {m['train_seconds']:.0f} s", flush=True)
    return m


def collect(out: Path, configs: list[tuple] = CONFIGS) -> dict[str, dict[str, dict]]:
    """{budget: {config: metrics + per-epoch val accuracies}} for the completed runs."""
    table: dict[str, dict[str, dict]] = {}
    for budget in BUDGETS:
        for cfg in configs:
            run_dir = out / budget / cfg[0]
            if run_status(run_dir) != "completed":
                continue
            m = read_json(run_dir / METRICS)
            try:
                m["val_curve"] = [h["val_acc"] for h in read_json(run_dir / HISTORY)]
            except (OSError, ValueError, KeyError, TypeError):
                m["val_curve"] = []
            table.setdefault(budget, {})[cfg[0]] = m
    return table


def fidelity(table: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per screening budget (and per leading epochs of the full runs, which is what a pruner sees):
    Spearman's rho against the full budget, the screening winner's full-budget rank, the cost."""
    from scipy.stats import spearmanr

    full = {k: m["best_val_acc"] for k, m in table.get(FULL, {}).items()}
    ranked = sorted(full, key=lambda k: full[k], reverse=True)
    candidates: list[tuple[str, dict[str, Any], int, str | None]] = [
        (b, {k: m["best_val_acc"] for k, m in table.get(b, {}).items()}, images_per_trial(b), b)
        for b in BUDGETS
        if b != FULL
    ]
    n_epochs = min((len(m["val_curve"]) for m in table.get(FULL, {}).values()), default=0)
    for e in (1, 2, 3):
        if e < n_epochs:
            curve = {k: max(m["val_curve"][:e]) for k, m in table[FULL].items()}
            candidates.append((f"full, first {e} epoch{'s' if e > 1 else ''}", curve, e * TRAIN_POOL, None))
    rows = []
    for name, vals, images, budget in candidates:
        common = [k for k in ranked if k in vals]
        row = {
            "budget": name,
            "n": len(common),
            "images_per_trial": images,
            "cost_vs_full": images / images_per_trial(FULL),
            "spearman": None,
            "p_value": None,
        }
        if budget is not None:
            row["epochs"], row["train_limit"] = BUDGETS[budget]
            row["train_seconds_mean"] = sum(table[budget][k]["train_seconds"] for k in common) / max(len(common), 1)
        if len(common) >= 3:
            res = spearmanr([vals[k] for k in common], [full[k] for k in common])
            row["spearman"], row["p_value"] = float(res.statistic), float(res.pvalue)
            winner = max(common, key=lambda k: vals[k])
            row["winner"], row["winner_full_rank"] = winner, ranked.index(winner) + 1
        rows.append(row)
    return rows


def markdown(table: dict[str, dict[str, dict]], rows: list[dict]) -> str:
    budgets = [b for b in BUDGETS if b in table]
    lines = ["| config | lr | params | " + " | ".join(budgets) + " |", "| --- | --- | --- |" + " --- |" * len(budgets)]
    order = sorted(
        [c for c in CONFIGS if any(c[0] in table[b] for b in budgets)],
        key=lambda c: -table.get(FULL, {}).get(c[0], {}).get("best_val_acc", -1),
    )
    for cfg in order:
        cells = [f"{100 * table[b][cfg[0]]['best_val_acc']:.2f}" if cfg[0] in table[b] else "-" for b in budgets]
        params = next((table[b][cfg[0]]["n_params"] for b in budgets if cfg[0] in table[b]), None)
        lines.append(f"| {cfg[0]} | {cfg[5]:g} | {params if params is not None else '-'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| screening budget | images per trial | cost vs full | Spearman rho (p) | its winner's full-budget rank |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rho = "-" if r["spearman"] is None else f"{r['spearman']:.2f} ({r['p_value']:.2g})"
        rank = f"{r['winner_full_rank']} of {r['n']}" if r.get("winner") else "-"
        lines.append(f"| {r['budget']} | {r['images_per_trial']:,} | {100 * r['cost_vs_full']:.1f}% | {rho} | {rank} |")
    return "\n".join(lines) + "\n"


def report(out: Path, configs: list[tuple] = CONFIGS) -> list[dict]:
    table = collect(out, configs)
    rows = fidelity(table)
    text = markdown(table, rows)
    write_json(
        out / "fidelity.json",
        {
            "budgets": {b: list(v) for b, v in BUDGETS.items()},
            "rows": rows,
            "val_acc": {b: {k: m["best_val_acc"] for k, m in v.items()} for b, v in table.items()},
            "train_seconds": {b: {k: m["train_seconds"] for k, m in v.items()} for b, v in table.items()},
            "loadavg": C.loadavg(),
        },
    )
    atomic_write(out / "fidelity.md", lambda f: f.write(text))
    print(text)
    return rows


def time_epochs(out: Path, configs: list[tuple] = CONFIGS, smoke: bool = False) -> dict:
    """Seconds per epoch on all training images, per configuration (run this on a quiet machine)."""
    result = {}
    for cfg in configs:
        run_dir = out / "time" / cfg[0]
        args = config_overrides(cfg) + budget_overrides("e1-all", smoke) + (SMOKE if smoke else [])
        subprocess.run(
            [sys.executable, "-m", "vit_lab.train", *args, f"hydra.run.dir={run_dir}"],
            cwd=C.REPO,
            check=True,
            capture_output=True,
            env={**os.environ, "MPLBACKEND": "Agg"},
        )
        m = read_json(run_dir / METRICS)
        result[cfg[0]] = {"seconds_per_epoch": m["train_seconds"], "images_per_second": m["train_images_per_second"]}
        print(f"{cfg[0]}: {m['train_seconds']:.1f} s per epoch ({m['train_images_per_second']:.0f} img/s)", flush=True)
    write_json(out / "epoch_seconds.json", {"configs": result, "loadavg": C.loadavg(), "machine": C.machine()})
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Hydra overrides (key=value) anywhere go to every run."
    )
    p.add_argument("--out", type=Path, default=C.RESULTS / "screening")
    p.add_argument("--report", action="store_true", help="only print the table from the runs already there")
    p.add_argument("--time", action="store_true", help="time one epoch on all data per config (quiet machine)")
    p.add_argument("--budgets", nargs="*", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--configs", type=int, default=len(CONFIGS), help="use the first N configs")
    p.add_argument("--smoke", action="store_true", help="tiny models and data: checks the plumbing in seconds")
    p.add_argument(
        "--threads",
        type=lambda v: None if v == "null" else int(v),
        default=1,
        help="device.threads of the accuracy runs (default 1: a second process on a 2-core machine stalls a "
        "2-thread run's OpenMP barriers; 'null' = torch's default); --time keeps torch's default",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="start no new run after M minutes (run the command again to go on)",
    )
    argv = sys.argv[1:] if argv is None else argv
    # key=value words are Hydra's wherever they stand: --budgets takes any number of names, so it would swallow them
    overrides = [w for w in argv if "=" in w and not w.startswith("-")]
    a = p.parse_args([w for w in argv if w not in overrides])
    a.overrides = overrides
    configs = CONFIGS[: a.configs]
    if a.time:
        time_epochs(a.out, configs, a.smoke)
        return 0
    if not a.report:
        deadline = time.monotonic() + 60 * a.max_minutes if a.max_minutes else float("inf")
        runs = [(cfg, b) for b in a.budgets if b != FULL for cfg in configs]
        runs += [(cfg, FULL) for cfg in sorted(configs, key=_full_cost)] if FULL in a.budgets else []
        for cfg, budget in runs:
            if time.monotonic() > deadline:
                print(f"--max-minutes {a.max_minutes:g} reached: run the same command again to go on", flush=True)
                break
            train(cfg, budget, a.out, a.smoke, extra=a.overrides, threads=a.threads)
    report(a.out, configs)
    return 0


def _full_cost(cfg: tuple) -> float:
    """A rough per-image cost for ordering the full runs (tokens x depth x width^2, attention included)."""
    _, patch, depth, _, width, _ = cfg
    tokens = (28 // patch) ** 2 + 1
    return depth * tokens * (8 * width * width + 2 * tokens * width) + 2e5


if __name__ == "__main__":
    sys.exit(main())
