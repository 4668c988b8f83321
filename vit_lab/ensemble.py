"""Ensemble finished runs: the mean of their class probabilities, tested on one split.

    python -m vit_lab.ensemble outputs/multirun/2026-12-02/08-00-00      # the completed runs of a sweep
    python -m vit_lab.ensemble RUN_A RUN_B RUN_C --weights best          # named runs, best-validation weights
    python -m vit_lab.ensemble SWEEP_DIR data.test_limit=1000 --out ens.json

Each member is loaded as ``vit_lab.evaluate`` loads a run (whitelisted ``_target_``s, weights read without running
code, the trainer's batches and normalisation), so a member's own accuracy is its ``evaluate`` figure. The ensemble
predicts the class of the averaged probabilities; its parameter count is the members' sum, since it holds them all.
Members may differ in architecture (a ViT and a CNN), never in their test split. Writes ``ensemble.json``
(``ensemble_best.json``; ``--out``) atomically in the folder that holds the members.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vit_lab.errors import UserError
from vit_lab.evaluate import WEIGHTS, LoadedRun, all_probabilities, batches, load


def find_members(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories: each path that is a run, and the completed runs inside each path that is not (a sweep),
    found and ordered as ``vit_lab.compare`` finds them (job 10 after job 9)."""
    from vit_lab.compare.runs import discover, is_run_dir

    members: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p}: no such directory; pass run directories or a folder of runs (a sweep)")
        if is_run_dir(p):
            members.append(p)
            continue
        found = discover([p])
        done = [r.dir for r in found if r.status == "completed"]
        if not done:
            raise UserError(f"{p}: holds no completed run ({len(found)} unfinished); pass finished run directories")
        members.extend(done)
    seen: dict[Path, Path] = {}
    for m in members:
        if m.resolve() in seen:
            raise UserError(f"{m}: named twice (also as {seen[m.resolve()]}); each run can join an ensemble once")
        seen[m.resolve()] = m
    if len(members) < 2:
        raise UserError(f"an ensemble needs at least 2 runs, got {len(members)}; pass more run directories")
    return members


def probabilities_on_test(run: LoadedRun) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's class probabilities for every test image, in order, and the labels."""
    data = run.spec.load(seed=run.cfg.trainer.seed)  # the trainer's split; the test split does not depend on it
    return all_probabilities(run, batches(run, data.test_images, data.test_labels)), data.test_labels


def _check_same_split(first: tuple[Path, str, torch.Tensor], run: LoadedRun, labels: torch.Tensor) -> None:
    where, name, ref = first
    if labels.shape != ref.shape or not torch.equal(labels, ref):
        raise UserError(
            f"{run.dir} tests on {run.spec.name} ({len(labels)} images), {where} on {name} ({len(ref)} images): "
            "members must share one test split; pass data=NAME (and data.test_limit=N) to test them all on one"
        )


def ensemble(members: Sequence[Path], weights: str = "last", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """ensemble.json's content: each member's accuracy and parameters, and the ensemble's accuracy, loss and scores."""
    from vit_lab.scores import scores

    total: torch.Tensor | None = None
    first: tuple[Path, str, torch.Tensor] | None = None
    rows: list[dict[str, Any]] = []
    for d in members:  # one model in memory at a time
        run = load(d, weights, overrides)
        probs, labels = probabilities_on_test(run)
        first = first or (run.dir, run.spec.name, labels)
        _check_same_split(first, run, labels)
        total = probs if total is None else total + probs
        acc = (probs.argmax(dim=1) == labels).float().mean().item()
        n_params = sum(p.numel() for p in run.model.parameters())
        rows.append({"run_dir": str(d), "epoch": run.epoch, "params": n_params, "accuracy": acc})
    assert total is not None and first is not None
    ref, mean = first[2], total / len(members)
    preds = mean.argmax(dim=1)
    doc = {
        "weights": weights,
        "weights_file": WEIGHTS[weights],
        "data": first[1],
        "split": "test",
        "n": len(ref),
        "members": rows,
        "params": sum(r["params"] for r in rows),
        "accuracy": (preds == ref).float().mean().item(),
        "loss": F.nll_loss(mean.clamp_min(1e-30).log(), ref).item(),
        "best_member_accuracy": max(r["accuracy"] for r in rows),
    }
    return {**doc, **scores(ref, preds, mean.shape[1])}


def default_out(members: Sequence[Path], weights: str) -> Path:
    """In the deepest folder that holds every member (a sweep's folder)."""
    common = Path(os.path.commonpath([m.resolve() for m in members]))
    return common / ("ensemble" + ("_best" if weights == "best" else "") + ".json")


def split_args(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Paths and KEY=VALUE overrides: an existing path is a path even if its name holds '=' (Hydra's job names)."""
    paths = [a for a in items if "=" not in a or Path(a).exists()]
    return paths, [a for a in items if a not in paths]


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from vit_lab.io import write_json

    p = argparse.ArgumentParser(prog="python -m vit_lab.ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("items", nargs="+", metavar="RUN_OR_FOLDER | KEY=VALUE", help="runs, sweeps, data=NAME, ...")
    p.add_argument("--weights", choices=tuple(WEIGHTS), default="last", help="last (default) or best, for every run")
    p.add_argument("--out", metavar="FILE.json", help="where to write (default: ensemble[_best].json beside the runs)")
    args = p.parse_args(argv)
    try:
        paths, overrides = split_args(args.items)
        members = find_members(paths)
        doc = ensemble(members, args.weights, overrides)
        out = write_json(args.out or default_out(members, args.weights), doc)
    except (UserError, OmegaConfBaseException) as e:
        print(f"vit_lab.ensemble: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for r in doc["members"]:
        print(f"{r['run_dir']}: {100 * r['accuracy']:.2f}% ({r['params']:,} parameters, epoch {r['epoch']})")
    print(
        f"ensemble of {len(members)} ({args.weights} weights, {doc['params']:,} parameters) on {doc['data']} test "
        f"({doc['n']} images): accuracy {100 * doc['accuracy']:.2f}%, loss {doc['loss']:.4f} "
        f"(best member {100 * doc['best_member_accuracy']:.2f}%); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
