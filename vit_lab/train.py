"""The main job: train a model on an IDX image set, validate every epoch, test once at the end.

    python -m vit_lab.train                      # the default ViT on MNIST
    python -m vit_lab.train model.n_heads=4      # any value can be overridden
    python -m vit_lab.train resume=outputs/runs/2026-11-27/10-00-00   # continue a run

One readable loop. The run directory gets `metrics.json`, `history.json` and `checkpoint.pt`, each
written atomically, so a killed run always leaves readable files and can be resumed.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import signal
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from vit_lab.config import build
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from vit_lab.data import Batches, IDXDataset
from vit_lab.device import autocast, check_compile_mode, compile_model, configure_process, resolve_device
from vit_lab.errors import ConfigError, Diverged, Interrupted, RunDirBusy, RunStopped, UserError
from vit_lab.io import atomic_write, claim_dir, dir_is_held, read_json, release_dir, write_json
from vit_lab.models.vit import check_vit_shape

log = logging.getLogger("vit_lab.train")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
HISTORY = "history.json"


# --------------------------------------------------------------------------- config checks


def _number(cfg: DictConfig, key: str, kind: type, minimum: float | None = None, strict: bool = True,
            optional: bool = False) -> Any:
    """Read a numeric config value, failing with a one-line ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ConfigError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ConfigError(f"{key}={value} must be {'>' if strict else '>='} {minimum}")
    return value


def validate_config(cfg: DictConfig) -> IDXDataset:
    """Check every value before any data is read or any step is taken; returns the data spec."""
    _number(cfg, "trainer.epochs", int, 0)
    _number(cfg, "trainer.batch_size", int, 0)
    _number(cfg, "trainer.eval_batch_size", int, 0)
    _number(cfg, "trainer.seed", int, 0, strict=False)
    _number(cfg, "trainer.label_smoothing", float, 0, strict=False)
    if cfg.trainer.label_smoothing >= 1:
        raise ConfigError(f"trainer.label_smoothing={cfg.trainer.label_smoothing} must be < 1")
    _number(cfg, "trainer.grad_clip", float, 0, optional=True)
    _number(cfg, "optimizer.lr", float, 0)
    if OmegaConf.select(cfg, "optimizer.weight_decay") is not None:
        _number(cfg, "optimizer.weight_decay", float, 0, strict=False)
    if cfg.trainer.progress not in ("auto", True, False):
        raise ConfigError(f"trainer.progress={cfg.trainer.progress!r} must be auto, true or false")
    for key in ("device.compile", "device.tune_malloc"):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
    check_compile_mode(OmegaConf.select(cfg, "device.compile_mode", default="default"))

    spec = build(cfg.data, _convert_="all")
    spec.validate()
    build(cfg.augment).validate()
    if "patch_size" in cfg.model:  # a ViT: check the shape against the data before building anything
        for key in ("depth", "hidden_d", "n_heads"):
            _number(cfg, f"model.{key}", int, 0)
        _number(cfg, "model.mlp_ratio", float, 0)
        _number(cfg, "model.dropout", float, 0, strict=False)
        ps = cfg.model.patch_size
        if not (isinstance(ps, int) and not isinstance(ps, bool)) and not OmegaConf.is_list(ps):
            raise ConfigError(f"model.patch_size={ps!r} must be an integer")
        check_vit_shape(spec.chw, ps, cfg.model.hidden_d, cfg.model.n_heads, cfg.model.depth, cfg.model.mlp_ratio)
    return spec


# --------------------------------------------------------------------------- pieces of the loop


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: decaying norms, biases and embeddings hurts small ViTs."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim >= 2 and "pos_embed" not in name and "class_token" not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Batches, device: torch.device, precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a split."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in batches:
        with autocast(device, precision):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(dim=1) == y).sum()
        n += len(y)
    model.train()
    if n == 0:
        return float("nan"), float("nan")
    return loss_sum.item() / n, correct.item() / n


@contextmanager
def stop_on_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks at each step boundary."""
    flag: dict = {"signum": None}

    def handler(signum, frame):  # noqa: ARG001
        flag["signum"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (some launchers): signals stay with their default handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def versions() -> dict[str, str]:
    import hydra as _hydra
    import optuna
    import torchvision

    from vit_lab import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "hydra": _hydra.__version__, "optuna": optuna.__version__, "vit_lab": __version__}


def load_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """Find and read a checkpoint (a run directory or the file itself), with errors a user can act on."""
    path = Path(path)
    file = path / CHECKPOINT if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"resume={path}: no checkpoint found at {file}; point resume at a run directory or its {CHECKPOINT}")
    try:
        return file, torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ConfigError(f"resume={path}: {file} is not a readable checkpoint ({type(e).__name__}); start a fresh run") from None


def check_compatible(model: torch.nn.Module, state: dict, where: Path) -> None:
    """A checkpoint of another architecture names the mismatching keys instead of a torch traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
    if problems:
        raise ConfigError(f"resume={where} holds a different architecture ({'; '.join(problems)}); "
                          "use the original run's model overrides")


# --------------------------------------------------------------------------- the run


class Run:
    """The run directory's files: metrics, history and checkpoint, always written atomically (the caller, train(),
    holds the directory's lock)."""

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.dir = run_dir
        self.cfg = cfg
        for name in (CHECKPOINT, METRICS, HISTORY):  # temp files of a writer killed in this directory before
            for stale in self.dir.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        self.metrics: dict[str, Any] = {
            "status": "running",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "epochs": cfg.trainer.epochs,
            "epochs_completed": 0,
        }
        self.history: list[dict] = []

    def write_metrics(self, **updates: Any) -> None:
        self.metrics.update(updates)
        write_json(self.dir / METRICS, self.metrics)

    def write_history(self) -> None:
        write_json(self.dir / HISTORY, self.history)

    def save_checkpoint(self, state: dict) -> None:
        if self.cfg.trainer.checkpoint:
            atomic_write(self.dir / CHECKPOINT, lambda f: torch.save(state, f), mode="wb")


def claim_run_dir(run_dir: Path) -> bool:
    """Lock ``run_dir`` for this process: one writer per run directory, so two runs never interleave their files.

    Returns True if this call took the lock, False if this process held it already; raises RunDirBusy (naming
    the holder) if another process holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if dir_is_held(run_dir):
        return False
    holder = claim_dir(run_dir)
    if holder is not None:
        raise RunDirBusy(f"{run_dir} is in use by another run ({holder}); its files are left alone. "
                         "Pass hydra.run.dir=<a new folder> (runs started in the same second share a folder)")
    return True


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float:
    """Train, validate each epoch, test at the end. Returns the best validation accuracy (the sweep objective).

    Holds the run directory's lock while it runs (``main()`` holds it longer, to record a failure there)."""
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    took = claim_run_dir(run_dir)
    try:
        return _fit(cfg, run_dir)
    finally:
        if took:
            release_dir(run_dir)


def _fit(cfg: DictConfig, run_dir: Path) -> float:
    spec = validate_config(cfg)
    device = resolve_device(cfg.device.name)
    precision = cfg.device.precision
    autocast(device, precision)  # validates the precision name early
    threads = _number(cfg, "device.threads", int, 0) if cfg.device.threads else None
    configure_process(device, threads, malloc=cfg.device.get("tune_malloc", False))  # 1.05-1.3x on the CPU
    hooks: list[Callable[[int, dict], None]] = [build(c) for c in (cfg.get("callbacks") or {}).values()]

    ckpt_file, ckpt = (None, None) if cfg.resume is None else load_checkpoint(cfg.resume)
    seed = cfg.trainer.seed
    torch.manual_seed(seed)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    if ckpt is not None:
        check_compatible(model, ckpt["model"], Path(cfg.resume))

    run = Run(run_dir, cfg)
    run.write_metrics(device=str(device), versions=versions(), n_params=sum(p.numel() for p in model.parameters()),
                      model=type(model).__name__, resumed_from=str(ckpt_file) if ckpt_file else None,
                      data_root=str(spec.resolve_root()))
    data = spec.load(seed=seed)
    if device.type != "cpu":  # keep the whole (uint8) dataset on the accelerator: no per-batch host copies
        data = type(data)(**{k: v.to(device) for k, v in vars(data).items()})
    model.to(device)
    step_model = compile_model(model, cfg.device.get("compile_mode", "default")) if cfg.device.compile else model

    opt = build(cfg.optimizer)(param_groups(model, cfg.optimizer.get("weight_decay", 0.0) or 0.0))
    norm = dict(mean=spec.mean, std=spec.std, normalize=spec.normalize, device=device)
    gen = torch.Generator()
    train_batches = Batches(data.train_images, data.train_labels, cfg.trainer.batch_size, shuffle=True,
                            augment=build(cfg.augment), generator=gen, **norm)
    val_batches = Batches(data.val_images, data.val_labels, cfg.trainer.eval_batch_size, **norm)
    test_batches = Batches(data.test_images, data.test_labels, cfg.trainer.eval_batch_size, **norm)
    if len(train_batches) == 0:
        raise ConfigError("data.train_limit leaves no training images; raise data.train_limit or lower data.val_size")
    epochs, steps_per_epoch = cfg.trainer.epochs, len(train_batches)
    sched = build(cfg.scheduler)(opt, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    start_epoch, start_step, perm, sums = 0, 0, None, None
    best_val_acc, train_seconds = float("nan"), 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, start_step, perm = ckpt["epoch"], ckpt["step"], ckpt["perm"]
        sums = ckpt["sums"]
        gen.set_state(ckpt["gen_state"])
        torch.set_rng_state(ckpt["rng_state"])
        run.history, best_val_acc, train_seconds = ckpt["history"], ckpt["best_val_acc"], ckpt["train_seconds"]
        run.write_metrics(epochs_completed=start_epoch, train_seconds=train_seconds)
        log.info("resumed from %s at epoch %d, step %d", ckpt_file, start_epoch, start_step)

    def checkpoint_state(epoch: int, step: int, perm: torch.Tensor | None, sums: dict | None) -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "step": step, "perm": perm, "sums": sums, "gen_state": gen.get_state(),
                "rng_state": torch.get_rng_state(), "history": run.history, "best_val_acc": best_val_acc,
                "train_seconds": train_seconds, "config": OmegaConf.to_container(cfg, resolve=True)}

    show_bar = sys.stderr.isatty() if cfg.trainer.progress == "auto" else bool(cfg.trainer.progress)
    n_train = len(data.train_labels)
    log.info("%s with %s parameters on %s; %d train / %d val / %d test images; run dir %s",
             type(model).__name__, f"{run.metrics['n_params']:,}", device, n_train, len(data.val_labels),
             len(data.test_labels), run_dir)

    with stop_on_signals() as stop:
        for epoch in range(start_epoch, epochs):
            if perm is None or start_step == 0:  # a fresh epoch: its order and augmentation come from (seed, epoch)
                gen.manual_seed(seed * 1_000_003 + epoch)
                perm, start_step, sums = train_batches.permutation(), 0, None
            sums = sums or {"loss": 0.0, "correct": 0, "seen": 0}
            loss_sum = torch.tensor(sums["loss"], device=device, dtype=torch.float64)
            correct = torch.tensor(sums["correct"], device=device)
            seen, epoch_before = sums["seen"], sums.get("seconds", 0.0)
            model.train()
            tic = time.perf_counter()
            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not show_bar, leave=False, dynamic_ncols=True)
            step = start_step
            for step, (x, y) in enumerate(train_batches.iter_from(start_step, perm), start=start_step + 1):
                with autocast(device, precision):
                    out = step_model(x)
                    loss = criterion(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.trainer.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
                opt.step()
                sched.step()
                loss_sum += loss.detach() * len(y)
                correct += (out.argmax(dim=1) == y).sum()
                seen += len(y)
                if step % 25 == 0 or step == steps_per_epoch:
                    mean_loss = loss_sum.item() / seen
                    if not math.isfinite(mean_loss):
                        raise Diverged(f"training loss became {mean_loss} at epoch {epoch + 1}, step {step}; "
                                       "lower optimizer.lr or set trainer.grad_clip")
                    bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                bar.update()
                if stop["signum"] is not None:
                    # the partial epoch (its sums and seconds) goes into the checkpoint, so a resumed epoch
                    # reports the same losses and a full epoch's time
                    elapsed = epoch_before + time.perf_counter() - tic
                    sums = {"loss": loss_sum.item(), "correct": int(correct.item()), "seen": seen, "seconds": elapsed}
                    run.save_checkpoint(checkpoint_state(epoch, step, perm, sums))
                    run.write_metrics(train_seconds=train_seconds + elapsed)
                    raise Interrupted(stop["signum"], run_dir, saved=bool(cfg.trainer.checkpoint))
            bar.close()
            epoch_seconds = epoch_before + time.perf_counter() - tic
            train_seconds += epoch_seconds
            val_loss, val_acc = evaluate(model, val_batches, device, precision)
            if math.isfinite(val_acc) and not (val_acc <= best_val_acc):  # NaN-safe max
                best_val_acc = val_acc
            record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                      "val_loss": val_loss, "val_acc": val_acc, "lr": opt.param_groups[0]["lr"],
                      "images_per_second": seen / epoch_seconds, "epoch_seconds": epoch_seconds,
                      "train_seconds": train_seconds}
            run.history.append(record)
            log.info("epoch %d/%d train_loss %.4f train_acc %.2f%% val_loss %.4f val_acc %.2f%% lr %.2e "
                     "%.0f img/s %.1fs", epoch + 1, epochs, record["train_loss"], 100 * record["train_acc"],
                     val_loss, 100 * val_acc, record["lr"], record["images_per_second"], epoch_seconds)
            perm, start_step, sums = None, 0, None
            run.write_history()
            run.save_checkpoint(checkpoint_state(epoch + 1, 0, None, None))
            run.write_metrics(epochs_completed=epoch + 1, best_val_acc=best_val_acc, val_acc=val_acc,
                              train_seconds=train_seconds)
            for hook in hooks:
                hook(epoch + 1, record)
            if stop["signum"] is not None:
                raise Interrupted(stop["signum"], run_dir, saved=bool(cfg.trainer.checkpoint))

    test_loss, test_acc = evaluate(model, test_batches, device, precision)
    images = n_train * len(run.history)  # every epoch sees every training image once
    run.write_metrics(status="completed", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      test_acc=test_acc, test_loss=test_loss, best_val_acc=best_val_acc,
                      train_images_per_second=images / max(train_seconds, 1e-9))
    log.info("test_acc %.2f%% test_loss %.4f best_val_acc %.2f%% train %.1fs; results in %s",
             100 * test_acc, test_loss, 100 * best_val_acc, train_seconds, run_dir)
    return float(best_val_acc)


def _finish_with_error(run_dir: Path, status: str, reason: str) -> None:
    """Record why a run ended in its metrics.json, keeping what was already there."""
    path = run_dir / METRICS
    try:
        metrics = read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        metrics = {}
    metrics.update(status=status, reason=reason, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        write_json(path, metrics)
    except OSError:
        pass


def _log_to_files(level: int, message: str, console: bool = False) -> None:
    """Log to the run's files only (a single run prints its own one line), or everywhere (a sweep's job)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if console or isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextmanager
def _interrupt_outside_the_loop(run_dir: Path) -> Iterator[None]:
    """SIGINT/SIGTERM before or after the training loop (which checks its own flag) ends the run as interrupted."""

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum, run_dir, saved=(run_dir / CHECKPOINT).is_file())

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (some launchers): signals keep their handlers
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@hydra.main(config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: user errors become one line and a non-zero exit (or a failed trial in a sweep)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        claim_run_dir(run_dir)  # before train(), so a failure is recorded while the directory is still ours
        with _interrupt_outside_the_loop(run_dir):
            return train(cfg, run_dir)
    except (UserError, RunStopped, Interrupted) as e:
        status = getattr(e, "status", "interrupted" if isinstance(e, Interrupted) else "failed")
        if not isinstance(e, RunDirBusy):  # that metrics.json belongs to the other run
            _finish_with_error(run_dir, status, str(e))
        # a single run's console gets the one line below; a sweep job's error must reach the console here, or
        # the sweep's own summary ("no trial completed") would be all the user sees
        _log_to_files(logging.ERROR, f"{status}: {e}", console=multirun and not isinstance(e, Interrupted))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the traceback, for debugging; metrics.json is already written
            raise
        if isinstance(e, Interrupted):
            print(f"vit_lab: {e}", file=sys.stderr)
            sys.exit(128 + e.signum)
        if multirun:  # a failed trial, not a failed sweep: NaN is recorded as a failed trial
            return float("nan")
        print(f"vit_lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_dir(run_dir)  # this process is done writing there


if __name__ == "__main__":
    from vit_lab.cli import cli

    cli(main)  # Hydra's main, with one-line errors for bad overrides and output dirs
