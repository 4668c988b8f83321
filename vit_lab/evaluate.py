"""Evaluate a finished run's weights again: accuracy, loss, per-class scores, the confusion matrix.

    python -m vit_lab.evaluate outputs/runs/2026-11-27/10-00-00                  # the last weights, its test split
    python -m vit_lab.evaluate RUN_DIR --weights best                            # the best-validation weights
    python -m vit_lab.evaluate RUN_DIR data=fashion_mnist data.test_limit=1000   # another data config
    python -m vit_lab.evaluate RUN_DIR --tta                                     # + test-time augmentation

The model is rebuilt from the run's ``.hydra/config.yaml`` only through the lab's ``_target_`` whitelist
(``vit_lab.config.build``) and the weights are read with ``torch.load(weights_only=True)``, so a run folder
someone sent cannot run code. Data, normalisation, batching and the loss are the trainer's own
(``vit_lab.data``, ``vit_lab.train.evaluate``), so the last weights reproduce the run's ``test_acc`` and
``test_loss`` exactly. Writes ``eval.json`` (``eval_best.json``, ``eval_<data>.json``; ``--out``) atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from vit_lab.cli import CONF_DIR
from vit_lab.errors import ConfigError, UserError
from vit_lab.run_files import BEST, CHECKPOINT, METRICS
from vit_lab.scores import confused_pairs, scores

WEIGHTS = {"last": CHECKPOINT, "best": BEST}
OVERRIDABLE = ("data", "device", "trainer.eval_batch_size")  # what a re-evaluation may change


@dataclass
class LoadedRun:
    """A run's model with its weights, ready on ``device``, and the data spec to evaluate it on."""

    dir: Path
    cfg: DictConfig  # the run's config with the overrides applied
    spec: Any  # vit_lab.data.IDXDataset of the data to use
    model: torch.nn.Module
    device: torch.device
    weights: str  # "last" or "best"
    epoch: int | None  # epochs behind the weights
    same_data: bool  # the run's own data config (no data override)
    precision: str  # device.precision resolved for this machine (auto: bf16 or fp32)


def read_config(run_dir: Path) -> DictConfig:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory; pass a run directory that python -m vit_lab.train wrote")
    file = run_dir / ".hydra" / "config.yaml"
    if not file.is_file():
        raise UserError(
            f"{run_dir}: not a run directory (no .hydra/config.yaml); pass a folder that python -m vit_lab.train wrote"
        )
    try:
        cfg = OmegaConf.load(file)
    except Exception as e:  # noqa: BLE001 - any unreadable YAML is the same user-facing problem
        raise ConfigError(f"{file} is unreadable ({type(e).__name__}); the run folder is damaged") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{file} is not a mapping: not a config this lab wrote")
    missing = [k for k in ("model", "data", "trainer", "device") if not isinstance(cfg.get(k), DictConfig)]
    if missing:
        raise ConfigError(f"{file} lacks {', '.join(missing)}: not a config this lab wrote")
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``data=NAME``/``device=NAME`` (a config group option) and ``data.KEY=VALUE``-style values, on a copy."""
    cfg = cfg.copy()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith(OVERRIDABLE):
            raise ConfigError(
                f"override {item!r}: use KEY=VALUE with KEY under {', '.join(OVERRIDABLE)} "
                "(e.g. data=fashion_mnist, data.test_limit=1000, device=cpu)"
            )
        if key in ("data", "device"):
            options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
            if value not in options:
                raise ConfigError(f"{key}={value!r} is not a {key} config; use one of {', '.join(options)}")
            node = OmegaConf.load(CONF_DIR / key / f"{value}.yaml")
            assert isinstance(node, DictConfig)  # the lab's own config files
            node.pop("defaults", None)
            cfg[key] = OmegaConf.merge(cfg[key], node) if key == "device" else node
        else:
            try:
                OmegaConf.update(cfg, key, yaml.safe_load(value) if value else value, merge=False)
            except Exception as e:  # noqa: BLE001 - e.g. a key below a scalar
                raise ConfigError(f"override {item!r}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    return cfg


def _build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """vit_lab.config.build (the `_target_` whitelist), with its refusals as one line."""
    from hydra.errors import HydraException

    from vit_lab.config import build

    try:
        return build(node, **kwargs)
    except HydraException as e:
        raise ConfigError(f"cannot build the {what} from the run's config: {' '.join(str(e).split())}") from None


def load_weights(run_dir: Path, weights: str) -> tuple[dict, int | None]:
    """The state dict and its epoch from checkpoint.pt (last: the weights tested) or best.pt (best), read without
    running code."""
    if weights not in WEIGHTS:
        raise ConfigError(f"--weights {weights!r}: use last or best")
    file = run_dir / WEIGHTS[weights]
    if not file.is_file():
        other = next((k for k, f in WEIGHTS.items() if k != weights and (run_dir / f).is_file()), None)
        hint = (
            f"; try --weights {other}"
            if other
            else " (trained with trainer.checkpoint=false?); retrain with checkpoints on"
        )
        raise UserError(f"{run_dir} has no {WEIGHTS[weights]}, so no {weights} weights to load{hint}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UserError(
            f"{file} is not a readable checkpoint ({type(e).__name__}); the file is damaged or not this lab's"
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{file} holds no model weights (no 'model' state dict)")
    epoch = state.get("epoch")
    return tested_weights(state), epoch if isinstance(epoch, int) else None


def tested_weights(state: dict) -> dict:
    """The weights a run tested: with trainer.ema_decay, checkpoint.pt's moving average (AveragedModel's
    ``module.*`` keys), else its ``model``; best.pt holds the validated weights either way."""
    ema = state.get("ema")
    if not isinstance(ema, dict):
        return state["model"]
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def check_architecture(model: torch.nn.Module, state: dict, file: Path) -> None:
    """Weights of another architecture: name the mismatching keys, not a torch traceback."""
    from vit_lab.records import architecture_mismatch

    problems = architecture_mismatch(model, state, shown=3)
    if problems:
        raise UserError(
            f"{file} holds weights of another architecture than the run's .hydra/config.yaml "
            f"({'; '.join(problems)}); the run folder mixes files of different runs"
        )


def rebuild(run_dir: Path, trained: DictConfig, weights: str = "last") -> tuple[Any, torch.nn.Module, int | None]:
    """The data spec a run trained on and its model with the chosen weights (on the CPU): whitelisted targets only,
    weights read without running code. Shared by ``load`` and the trainer's distillation teacher."""
    train_spec = _build(trained.data, "data config", _convert_="all")
    model = _build(trained.model, "model", chw=train_spec.chw, out_d=train_spec.num_classes)
    state, epoch = load_weights(run_dir, weights)
    check_architecture(model, state, run_dir / WEIGHTS[weights])
    model.load_state_dict(state)
    return train_spec, model, epoch


def load(run_dir: str | Path, weights: str = "last", overrides: Sequence[str] = ()) -> LoadedRun:
    """Rebuild a run's model (whitelisted targets only), load its weights and pick the device and data."""
    from vit_lab.device import configure_process, resolve_device, resolve_precision
    from vit_lab.schema import Device

    run_dir = Path(run_dir)
    trained = read_config(run_dir)
    cfg = apply_overrides(trained, overrides)
    spec = _build(cfg.data, "data config", _convert_="all")
    spec.validate()
    train_spec, model, epoch = rebuild(run_dir, trained, weights)
    if (spec.chw, spec.num_classes) != (train_spec.chw, train_spec.num_classes):
        raise ConfigError(
            f"data {spec.name!r} has {spec.num_classes} classes of (C,H,W)={spec.chw} images, but the run's "
            f"model takes {train_spec.chw} images and predicts {train_spec.num_classes} classes; "
            "choose a data config with the same image shape and classes"
        )
    device = resolve_device(cfg.device.name)
    precision = resolve_precision(device, cfg.device.precision)  # checks the name; auto picks bf16 or fp32
    configure_process(device, cfg.device.get("threads"), malloc=cfg.device.get("tune_malloc", Device.tune_malloc))
    model.to(device).eval()
    same = OmegaConf.to_container(cfg.data) == OmegaConf.to_container(trained.data)
    return LoadedRun(run_dir, cfg, spec, model, device, weights, epoch, same, precision)


def batches(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor):
    """The trainer's evaluation batches (its batch size, normalisation and device)."""
    from vit_lab.data import Batches

    return Batches(
        images,
        labels,
        run.cfg.trainer.eval_batch_size,
        mean=run.spec.mean,
        std=run.spec.std,
        normalize=run.spec.normalize,
        device=run.device,
    )


def normalise(run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, C, H, W) as the trainer feeds them to the model: scaled, normalised, on its device."""
    from vit_lab.data import Batches

    ((x, _),) = Batches(
        images,
        torch.zeros(len(images), dtype=torch.long),
        max(len(images), 1),
        mean=run.spec.mean,
        std=run.spec.std,
        normalize=run.spec.normalize,
        device=run.device,
    )
    return x


def probabilities(model: torch.nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Class probabilities from a model's output (the tutorial's head already ends in a softmax)."""
    return out.float() if getattr(model, "head_softmax", False) else out.float().softmax(dim=-1)


@torch.no_grad()
def all_probabilities(run: LoadedRun, batches_) -> torch.Tensor:
    """Class probabilities for every image, in order (float32, on the CPU)."""
    from vit_lab.device import autocast

    run.model.eval()  # vit_lab.train.evaluate leaves the model in training mode
    out = []
    for x, _ in batches_:
        with autocast(run.device, run.precision):
            out.append(probabilities(run.model, run.model(x)).cpu())
    return torch.cat(out)


def predict_all(run: LoadedRun, batches_) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its probability for every image, in order (on the CPU)."""
    probs, preds = all_probabilities(run, batches_).max(dim=1)
    return preds, probs


def evaluate_run(run: LoadedRun, tta: bool = False) -> dict[str, Any]:
    """eval.json's content: the trainer's loss and accuracy on the test split, and the scores behind them; with
    ``tta``, also those of the averaged shifted views (vit_lab.tta), reported apart."""
    from vit_lab.train import evaluate
    from vit_lab.tta import trained_on_mirrors, tta_evaluate

    data = run.spec.load(seed=run.cfg.trainer.seed)  # the trainer's split; the test split does not depend on it
    test = batches(run, data.test_images, data.test_labels)
    loss, acc = evaluate(run.model, test, run.device, run.precision)
    preds, _ = predict_all(run, test)
    doc = {
        "run_dir": str(run.dir),
        "weights": run.weights,
        "weights_file": WEIGHTS[run.weights],
        "epoch": run.epoch,
        "data": run.spec.name,
        "data_root": str(run.spec.resolve_root()),
        "split": "test",
        "n": len(data.test_labels),
        "accuracy": acc,
        "loss": loss,
    }
    if tta:
        doc["tta"] = tta_evaluate(run.model, test, run.device, run.precision, flip=trained_on_mirrors(run.cfg))
    return {**doc, **scores(data.test_labels, preds, run.spec.num_classes)}


def default_out(run: LoadedRun) -> Path:
    name = "eval" + ("_best" if run.weights == "best" else "") + ("" if run.same_data else f"_{run.spec.name}")
    return run.dir / f"{name}.json"


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from vit_lab.io import read_json, write_json

    p = argparse.ArgumentParser(prog="python -m vit_lab.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data=NAME, data.KEY=VALUE, device=NAME, ...")
    p.add_argument(
        "--weights",
        choices=tuple(WEIGHTS),
        default="last",
        help="last (checkpoint.pt, the run's final weights; default) or best (best.pt, best validation)",
    )
    p.add_argument("--out", metavar="FILE.json", help="where to write (default RUN_DIR/eval[_best][_<data>].json)")
    p.add_argument(
        "--tta",
        action="store_true",
        help="also test the mean of each image's 5 one-pixel-shifted views (and their mirrors if trained on mirrors)",
    )
    args = p.parse_args(argv)
    try:
        run = load(args.run_dir, args.weights, args.overrides)
        doc = evaluate_run(run, args.tta)
        out = write_json(args.out or default_out(run), doc)
    except (UserError, OmegaConfBaseException) as e:
        print(f"vit_lab.evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    line = (
        f"{run.dir}: {args.weights} weights on {doc['data']} test ({doc['n']} images): "
        f"accuracy {100 * doc['accuracy']:.2f}%, loss {doc['loss']:.4f}"
    )
    metrics = run.dir / METRICS
    if run.same_data and args.weights == "last" and metrics.is_file():
        m = read_json(metrics)
        if isinstance(m.get("test_acc"), float):
            same = m["test_acc"] == doc["accuracy"] and m.get("test_loss") == doc["loss"]
            line += f" ({'equal to' if same else 'differs from'} the run's test_acc {100 * m['test_acc']:.2f}%)"
    if "tta" in doc:
        line += f"; with test-time augmentation ({doc['tta']['views']} views) {100 * doc['tta']['accuracy']:.2f}%"
    print(line)
    pairs = ", ".join(f"{t}->{p} x{n}" for t, p, n in confused_pairs(doc))
    print(f"most confused (true->predicted): {pairs or 'none'}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
