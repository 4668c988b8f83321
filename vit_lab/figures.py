"""The README's figures and the numbers behind them, from the seed comparison's runs (and a sweep, if given).

    python -m vit_lab.figures                                         # outputs/seed_comparison -> docs/
    python -m vit_lab.figures --runs outputs/seed_comparison --sweep outputs/multirun/2026-12-01/10-00-00

Writes docs/learning_curves.png, docs/confusion_vit_cnn.png, docs/confusion_tutorial.png,
docs/attention_rollout.png, docs/attention_misclassified.png, docs/attention_layers.png and, with ``--sweep``,
docs/sweep.png; prints the numbers the README quotes (most confused digits, the ViT's and the CNN's shared
mistakes, the rollout deletion test, the attention's share on strokes per layer). Runs without an ``eval.json`` are
evaluated first (``vit_lab.evaluate``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vit_lab.compare.runs import RunInfo, discover, natural_key
from vit_lab.compare.seed_comparison import RUNS
from vit_lab.errors import UserError

ROWS = {
    name: label
    for name, label in zip(
        (n for n, _ in RUNS), ("tutorial (exact)", "tutorial, softmax fixed", "ViT (default)", "CNN")
    )
}
COLORS = {"1-tutorial": "tab:red", "2-tutorial_fixed": "tab:orange", "3-vit": "tab:blue", "4-cnn": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    from vit_lab.io import save_png

    return save_png(fig, out)


def seed_runs(root: Path) -> dict[str, list[RunInfo]]:
    """The completed runs of each seed-comparison row (``<root>/<row>/seed<k>``), in seed order."""
    if not root.is_dir():
        raise UserError(f"--runs {root}: no such folder; run python -m vit_lab.compare.seed_comparison first")
    rows = {
        name: [r for r in discover([root / name]) if r.status == "completed"] if (root / name).is_dir() else []
        for name in ROWS
    }
    if not rows["3-vit"] or not rows["4-cnn"]:
        raise UserError(
            f"--runs {root}: needs completed 3-vit and 4-cnn runs; run python -m "
            "vit_lab.compare.seed_comparison (it keeps what is done)"
        )
    return rows


def ensure_eval(run: RunInfo) -> dict[str, Any]:
    """The run's eval.json (last weights, its own test split), evaluated now if missing."""
    from vit_lab.evaluate import evaluate_run, load
    from vit_lab.io import read_json, write_json

    file = run.dir / "eval.json"
    if not file.is_file():
        write_json(file, evaluate_run(load(run.dir)))
    return read_json(file)


def learning_curves(rows: dict[str, list[RunInfo]], out: Path) -> Path:
    """Validation error (log scale) and training loss per epoch: a thin line per seed, the mean in bold."""
    plt = _pyplot()
    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in rows.items():
        hists = [r.history() for r in runs]
        hists = [h for h in hists if h]
        if not hists:
            continue
        for ax, key, f in ((ax_err, "val_acc", lambda v: 100 * (1 - v)), (ax_loss, "train_loss", lambda v: v)):
            curves = [[f(e[key]) for e in h] for h in hists]
            for c in curves:
                ax.plot(range(1, len(c) + 1), c, color=COLORS[name], alpha=0.3, linewidth=0.8)
            n = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
            ax.plot(
                range(1, n + 1),
                mean,
                color=COLORS[name],
                linewidth=2,
                label=f"{ROWS[name]} ({len(curves)} seed{'s' * (len(curves) > 1)})",
            )
    ax_err.set(yscale="log", xlabel="epoch", ylabel="validation error (%)", title="Validation error (log scale)")
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="training loss", title="Training cross-entropy (log scale)")
    from matplotlib.ticker import FuncFormatter

    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.get_major_locator().set_params(integer=True)
        for axis in (ax.yaxis,):  # plain numbers (0.5, 2, 20) instead of powers of ten on the log axes
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax_err.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out)


def summed_confusion(evals: Sequence[dict]) -> list[list[int]]:
    k = len(evals[0]["confusion"])
    return [[sum(e["confusion"][t][p] for e in evals) for p in range(k)] for t in range(k)]


def confusion_figure(panels: Sequence[tuple[str, Sequence[dict]]], out: Path) -> Path:
    """Confusion matrices side by side, summed over seeds; the colour shows mistakes only (the diagonal is grey)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, evals) in zip(axes[0], panels):
        cm = np.array(summed_confusion(evals))
        k, n = len(cm), int(cm.sum())
        off = cm.astype(float)
        np.fill_diagonal(off, np.nan)
        ax.imshow(np.where(np.eye(k, dtype=bool), 0.0, np.nan), cmap="Greys", vmin=0, vmax=4)
        im = ax.imshow(off, cmap="Reds", vmin=0, vmax=max(np.nanmax(off), 1))
        for t in range(k):
            for p in range(k):
                if cm[t, p] and (t == p or cm[t, p] >= max(2, 0.05 * np.nanmax(off))):
                    ax.text(
                        p,
                        t,
                        str(cm[t, p]),
                        ha="center",
                        va="center",
                        fontsize=6 if t == p else 7,
                        color="white" if t != p and cm[t, p] > 0.6 * np.nanmax(off) else "black",
                    )
        wrong = n - int(np.trace(cm))
        ax.set(
            xticks=range(k),
            yticks=range(k),
            xlabel="predicted",
            ylabel="true",
            title=f"{title}\n{wrong:,} errors in {n:,} predictions ({len(evals)} seed{'s' * (len(evals) > 1)})",
        )
        ax.tick_params(labelsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mistakes")
    fig.tight_layout()
    return _save(fig, out)


def sweep_figure(
    sweep: Path,
    out: Path,
    keys: Sequence[str] = ("model.patch_size", "model.depth", "model.n_heads"),
    metric: str = "best_val_acc",
) -> Path:
    """The sweep's completed trials: the metric against each parameter (points, the mean per value joined)."""
    from vit_lab.compare.metrics import lookup, metric_value

    runs = [r for r in discover([sweep]) if r.status == "completed" and metric_value(r, metric) is not None]
    if not runs:
        raise UserError(f"--sweep {sweep}: no completed trial with {metric}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = sorted((float(lookup(r, key)), 100 * metric_value(r, metric)) for r in runs if lookup(r, key) is not None)
        if not pts:
            continue
        ax.scatter(*zip(*pts), alpha=0.7, s=30)
        xs = sorted({x for x, _ in pts})
        ax.plot(
            xs,
            [sum(y for x2, y in pts if x2 == x) / sum(1 for x2, _ in pts if x2 == x) for x in xs],
            color="tab:orange",
            label="mean per value",
        )
        ax.set(xlabel=key, xticks=xs)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric.replace('_', ' ')} (%)")
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{len(runs)} completed trials of {sweep.name}")
    fig.tight_layout()
    print(f"sweep: {len(runs)} completed trials of {sweep}")
    return _save(fig, out)


def shared(a: dict, b: dict) -> tuple[int, int, int, float]:
    """Mistakes of two evaluations: (a's, b's, both's, both's if the mistakes were independent)."""
    ma, mb = set(a["misclassified"]), set(b["misclassified"])
    return len(ma), len(mb), len(ma & mb), len(ma) * len(mb) / a["n"]


def shared_mistakes(vit: Sequence[dict], cnn: Sequence[dict]) -> list[str]:
    """Whether the ViT and the CNN fail on the same images: per seed, and against two seeds of one model."""
    lines = []
    for i, (a, b) in enumerate(zip(vit, cnn)):
        na, nb, both, chance = shared(a, b)
        lines.append(
            f"seed {i}: ViT wrong on {na}, CNN on {nb}, both on {both} (independent mistakes would share {chance:.1f})"
        )
    for name, evals in (("ViT", vit), ("CNN", cnn)):
        pairs = [shared(evals[i], evals[j]) for i in range(len(evals)) for j in range(i + 1, len(evals))]
        if pairs:
            lines.append(
                f"{name} against itself with another seed: both wrong on "
                f"{', '.join(str(p[2]) for p in pairs)} of {', '.join(f'{p[0]}/{p[1]}' for p in pairs)} "
                f"(seed pairs {', '.join(f'{i}-{j}' for i in range(len(evals)) for j in range(i + 1, len(evals)))})"
            )
    return lines


def confused(evals: Sequence[dict], top: int = 5) -> str:
    cm = summed_confusion(evals)
    pairs = sorted(((cm[t][p], t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p), reverse=True)[:top]
    return ", ".join(f"{t}->{p} ({n})" for n, t, p in pairs)


def report(rows: dict[str, list[RunInfo]], evals: dict[str, list[dict]], deletion: int) -> list[str]:
    """The numbers the README quotes."""
    from vit_lab.attention import deletion_test, describe_deletion, describe_ink, ink_attention, test_images
    from vit_lab.evaluate import load

    lines = [
        f"most confused (true->predicted, summed over seeds): {ROWS[name]}: {confused(e)}"
        for name, e in evals.items()
        if e
    ]
    lines += shared_mistakes(evals["3-vit"], evals["4-cnn"])
    if deletion:
        for run in rows["3-vit"]:
            loaded = load(run.dir)
            _, x, y, _ = test_images(loaded, deletion, "first")
            d = deletion_test(loaded, x, y)
            lines.append(f"deletion test of {run.path}: {describe_deletion(d)}")
            lines += [f"{run.path}: {line}" for line in describe_ink(ink_attention(loaded, 10 * deletion))]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    p = argparse.ArgumentParser(prog="python -m vit_lab.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="outputs/seed_comparison", help="the seed comparison's folder")
    p.add_argument("--sweep", help="a sweep folder for docs/sweep.png (accuracy against patch size, depth, heads)")
    p.add_argument("--out", default="docs", help="folder for the PNGs (default docs/)")
    p.add_argument(
        "--deletion",
        type=int,
        default=200,
        help="test images for the deletion test, x10 for the ink shares (0: skip both)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        from vit_lab.attention import figure
        from vit_lab.evaluate import load

        rows = seed_runs(Path(args.runs))
        evals = {name: [ensure_eval(r) for r in runs] for name, runs in rows.items()}
        written = [
            learning_curves(rows, out / "learning_curves.png"),
            confusion_figure([(ROWS[n], evals[n]) for n in ("3-vit", "4-cnn")], out / "confusion_vit_cnn.png"),
        ]
        if evals["1-tutorial"] and evals["2-tutorial_fixed"]:
            written.append(
                confusion_figure(
                    [(ROWS[n], evals[n]) for n in ("1-tutorial", "2-tutorial_fixed")], out / "confusion_tutorial.png"
                )
            )
        vit = load(min(rows["3-vit"], key=lambda r: natural_key(r.path)).dir)
        written += [
            figure(vit, 16, out / "attention_rollout.png"),
            figure(vit, 16, out / "attention_misclassified.png", pick="misclassified"),
            figure(vit, 4, out / "attention_layers.png", mode="layers"),
        ]
        if args.sweep:
            written.append(sweep_figure(Path(args.sweep), out / "sweep.png"))
        lines = report(rows, evals, args.deletion)
    except (UserError, OmegaConfBaseException) as e:
        print(f"vit_lab.figures: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"wrote {', '.join(str(w) for w in written)}" + ("" if args.sweep else "; no --sweep given, so no sweep.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
