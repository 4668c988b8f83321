"""The main job: train a model on an IDX image set, validate every epoch, test once at the end.

    python -m vit_lab.train                      # the default ViT on MNIST
    python -m vit_lab.train model.n_heads=4      # any value can be overridden
    python -m vit_lab.train resume=outputs/runs/2026-11-27/10-00-00   # continue a run

``train()`` reads top to bottom: setup (config check, device, callbacks and loggers, model, data, optimizer,
schedule) -> restore (from ``resume``) -> fit (the epoch loop) -> test -> finish, with the callbacks told when the
run starts, after each epoch and how it ended. The run directory's files (``vit_lab.records``) are written
atomically, so a killed run always leaves readable files and can be resumed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from vit_lab import debug, preemption, sweeps
from vit_lab.callbacks import Callbacks, StopTraining
from vit_lab.cli import cli, full_error
from vit_lab.config import build
from vit_lab.device import compile_model, configure_process, resolve_device, resolve_precision
from vit_lab.ema import build_ema, check_decay
from vit_lab.errors import Interrupted, RunDirBusy, RunStopped, UserError
from vit_lab.io import dir_is_held, release_dir
from vit_lab.job import Job, build_data, build_optimizer, param_groups, validate_config  # noqa: F401
from vit_lab.loop import (  # noqa: F401
    State,
    Sums,
    evaluate,
    finite_loss,
    optimizer_step,
    signal_handlers,
    stop_on_signals,
)  # noqa: F401
from vit_lab.records import (
    CHECKPOINT,
    METRICS,
    Run,
    check_compatible,
    finish_with_error,  # noqa: F401
    git_info,
    load_checkpoint,
    now,
    versions,
)

log = logging.getLogger("vit_lab.train")


# --------------------------------------------------------------------------- build


def setup(cfg: DictConfig, run_dir: Path) -> Job:
    """Check the config, then build the device, callbacks, model, run record, data, optimizer and schedule."""
    spec = validate_config(cfg)
    device = resolve_device(cfg.device.name)
    precision = resolve_precision(device, cfg.device.precision)  # checks the name early; auto picks bf16 or fp32
    check_decay(cfg.trainer.get("ema_decay"))
    configure_process(device, cfg.device.threads, malloc=cfg.device.tune_malloc)
    callbacks = Callbacks.from_config(cfg)
    ckpt_file, ckpt = (None, None) if cfg.resume is None else load_checkpoint(cfg.resume)
    torch.manual_seed(cfg.trainer.seed)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    if ckpt is not None:
        check_compatible(model, ckpt["model"], Path(cfg.resume))
    run = Run(run_dir, cfg)
    run.write_metrics(
        device=str(device),
        versions=versions(),
        git=git_info(),
        n_params=sum(p.numel() for p in model.parameters()),
        model=type(model).__name__,
        resumed_from=str(ckpt_file) if ckpt_file else None,
        data_root=str(spec.resolve_root()),
        precision=precision,
    )
    data = build_data(cfg, spec, device)  # (generator, train, val, test)
    model.to(device)
    ema = build_ema(model, cfg.trainer.get("ema_decay"))
    step_model = compile_model(model, cfg.device.get("compile_mode", "default")) if cfg.device.compile else model
    opt, sched = build_optimizer(cfg, model, len(data[1]))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    profiler = debug.StepProfiler(cfg.trainer.get("profile"), run_dir, device)
    job = Job(
        cfg, run, device, model, step_model, callbacks, *data, opt, sched, criterion, profiler, ckpt, ckpt_file, ema
    )
    describe(job, precision)
    return job


def describe(job: Job, precision: str) -> None:
    """The run's first log lines: what trains on what, where, and in which precision."""
    sizes = (len(job.train_batches.labels), len(job.val_batches.labels), len(job.test_batches.labels))
    log.info(
        "%s with %s parameters on %s; %d train / %d val / %d test images; run dir %s",
        *(type(job.model).__name__, f"{job.run.metrics['n_params']:,}", job.device, *sizes, job.run.dir),
    )
    log.info("precision %s (device.precision=%s)", precision, job.cfg.device.precision)


# --------------------------------------------------------------------------- restore and save


def restore(job: Job) -> State:
    """A fresh start, or the state of ``cfg.resume``'s checkpoint: weights, optimizer, schedule, order, RNG."""
    ckpt, job.ckpt = job.ckpt, None
    if ckpt is None:
        return State()
    job.model.load_state_dict(ckpt["model"])
    job.opt.load_state_dict(ckpt["optimizer"])
    job.sched.load_state_dict(ckpt["scheduler"])
    if job.ema is not None and "ema" in ckpt:  # without one (EMA turned on at resume) the average starts now
        job.ema.load_state_dict(ckpt["ema"])
    job.gen.set_state(ckpt["gen_state"])
    torch.set_rng_state(ckpt["rng_state"])
    job.callbacks.load_state_dict(ckpt.get("callbacks", {}))
    state = State(
        epoch=ckpt["epoch"],
        step=ckpt["step"],
        perm=ckpt["perm"],
        sums=ckpt["sums"],
        best_val_acc=ckpt["best_val_acc"],
        best_epoch=ckpt.get("best_epoch"),
        train_seconds=ckpt["train_seconds"],
    )
    job.run.history = ckpt["history"]
    job.run.write_history()  # the callbacks of a resumed run find the earlier epochs there
    if job.ckpt_file is not None:
        job.run.carry_best(job.ckpt_file)
    job.run.write_metrics(
        epochs_completed=state.epoch,
        train_seconds=state.train_seconds,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
    )
    log.info("resumed from %s at epoch %d, step %d", job.ckpt_file, state.epoch, state.step)
    return state


def checkpoint(job: Job, state: State) -> dict:
    """Everything ``restore`` needs to continue exactly from this step."""
    return {
        "model": job.model.state_dict(),
        "optimizer": job.opt.state_dict(),
        "scheduler": job.sched.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "perm": state.perm,
        "sums": state.sums,
        "gen_state": job.gen.get_state(),
        "rng_state": torch.get_rng_state(),
        "history": job.run.history,
        "best_val_acc": state.best_val_acc,
        "best_epoch": state.best_epoch,
        "train_seconds": state.train_seconds,
        "callbacks": job.callbacks.state_dict(),
        "config": OmegaConf.to_container(job.cfg, resolve=True),
        **({"ema": job.ema.state_dict()} if job.ema is not None else {}),
    }


# --------------------------------------------------------------------------- fit, test, finish


def fit(job: Job, state: State) -> None:
    """The epoch loop: train an epoch, validate and record it, tell the callbacks; SIGINT/SIGTERM stop at a step."""
    with stop_on_signals() as stop, job.profiler:
        while state.epoch < job.cfg.trainer.epochs:
            record = end_epoch(job, state, train_epoch(job, state, stop))
            try:
                job.callbacks.on_epoch_end(state.epoch, record)
            except StopTraining as e:
                log.info("stopped after epoch %d: %s", state.epoch, e)
                job.run.metrics["stopped_early"] = str(e)
                return
            finally:  # whatever the callbacks said, the epoch is saved, with their state
                save_epoch(job, state)
            if stop["signum"] is not None:
                raise job.interrupted(stop["signum"])


def train_epoch(job: Job, state: State, stop: dict) -> dict:
    """One epoch of steps, or the rest of one on resume; returns its sums (loss, correct, seen, seconds)."""
    cfg, batches = job.cfg.trainer, job.train_batches
    if state.perm is None or state.step == 0:  # a fresh epoch: its order and augmentation come from (seed, epoch)
        job.gen.manual_seed(cfg.seed * 1_000_003 + state.epoch)
        state.perm, state.step, state.sums = batches.permutation(), 0, None
    sums = Sums(job.device, state.sums)
    job.model.train()
    bar = tqdm(
        total=len(batches),
        initial=state.step,
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=not (sys.stderr.isatty() if cfg.progress == "auto" else cfg.progress),
        dynamic_ncols=True,
    )
    for x, y in batches.iter_from(state.step, state.perm):
        sums.add(*train_step(job, x, y), y)
        state.step += 1
        if state.step % 25 == 0 or state.step == len(batches):
            bar.set_postfix(loss=f"{finite_loss(sums, state):.4f}", refresh=False)
        bar.update()
        job.profiler.step()
        if stop["signum"] is not None:  # the partial epoch goes into the checkpoint
            state.sums = sums.state()
            job.run.save_checkpoint(checkpoint(job, state))
            job.run.write_metrics(train_seconds=state.train_seconds + state.sums["seconds"])
            raise job.interrupted(stop["signum"])
    bar.close()
    return sums.state()


def train_step(job: Job, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the job's model on a batch, then the weights' average (with ``trainer.ema_decay``)."""
    loss, out = optimizer_step(
        job.model,
        job.step_model,
        job.criterion,
        job.opt,
        job.sched,
        x,
        y,
        job.cfg.device.precision,
        job.cfg.trainer.grad_clip,
    )
    if job.ema is not None:
        job.ema.update_parameters(job.model)
    return loss, out


def end_epoch(job: Job, state: State, sums: dict) -> dict:
    """Validate, then record the epoch in the history and, when validation improved, its weights in best.pt."""
    seconds = sums["seconds"]
    val_loss, val_acc = evaluate(job.eval_model, job.val_batches, job.device, job.cfg.device.precision)
    state.epoch, state.step, state.perm, state.sums = state.epoch + 1, 0, None, None
    state.train_seconds += seconds
    record = {
        "epoch": state.epoch,
        "train_loss": sums["loss"] / sums["seen"],
        "train_acc": sums["correct"] / sums["seen"],
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": job.opt.param_groups[0]["lr"],
        "images_per_second": sums["seen"] / seconds,
        "epoch_seconds": seconds,
        "train_seconds": state.train_seconds,
    }
    job.run.add_epoch(record)
    if math.isfinite(val_acc) and not (val_acc <= state.best_val_acc):  # NaN-safe max
        state.best_val_acc, state.best_epoch = val_acc, state.epoch
        job.run.save_best(job.eval_model, state.epoch, val_acc)
    return record


def save_epoch(job: Job, state: State) -> None:
    """The epoch's checkpoint, then metrics.json: written in this order, metrics.json is never ahead of it."""
    job.run.save_checkpoint(checkpoint(job, state))
    job.run.write_metrics(
        epochs_completed=state.epoch,
        best_val_acc=state.best_val_acc,
        best_epoch=state.best_epoch,
        val_acc=job.run.history[-1]["val_acc"],
        train_seconds=state.train_seconds,
    )


def test(job: Job, state: State) -> None:
    """Evaluate the test set once, with the last weights (their average with EMA), and record the completed run."""
    test_loss, test_acc = evaluate(job.eval_model, job.test_batches, job.device, job.cfg.device.precision)
    images = len(job.train_batches.labels) * len(job.run.history)  # every epoch sees every training image once
    job.run.write_metrics(
        status="completed",
        finished=now(),
        test_acc=test_acc,
        test_loss=test_loss,
        best_val_acc=state.best_val_acc,
        train_images_per_second=images / max(state.train_seconds, 1e-9),
    )
    log.info(
        "test_acc %.2f%% test_loss %.4f best_val_acc %.2f%% train %.1fs; results in %s",
        100 * test_acc,
        test_loss,
        100 * state.best_val_acc,
        state.train_seconds,
        job.run.dir,
    )


def ending(e: BaseException) -> tuple[str, str]:
    """The status and reason an exception ends a run with."""
    if isinstance(e, (Interrupted, KeyboardInterrupt)):
        return "interrupted", str(e) or "interrupted"
    if isinstance(e, RunStopped):
        return e.status, str(e)
    return "failed", str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"


@contextmanager
def running(job: Job) -> Iterator[None]:
    """Tell the callbacks the run starts and, whatever ends it, how it ended (recorded in metrics.json first)."""
    try:
        job.callbacks.on_run_start(job.cfg, job.run.dir, job.ckpt_file is not None)
        yield
    except BaseException as e:
        status, reason = ending(e)
        job.run.write_metrics(status=status, reason=reason, finished=now())
        try:
            job.callbacks.on_run_end(job.run.metrics, status)
        except Exception as hook_error:  # noqa: BLE001 - the run's own error is the one to report
            log.warning("a callback failed while the run ended (%s: %s)", type(hook_error).__name__, hook_error)
        raise
    job.callbacks.on_run_end(job.run.metrics, "completed")


# --------------------------------------------------------------------------- the run


def claim_run_dir(run_dir: Path) -> bool:
    """Lock ``run_dir`` for this process: one writer per run directory, so two runs never interleave their files.

    Returns True if this call took the lock, False if this process held it already; raises RunDirBusy (naming
    the holder) if another process holds it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if dir_is_held(run_dir):
        return False
    holder = preemption.claim(run_dir)  # claim_dir; a requeued Slurm job waits for its predecessor
    if holder is not None:
        raise RunDirBusy(
            f"{run_dir} is in use by another run ({holder}); its files are left alone. "
            "Pass hydra.run.dir=<a new folder> (runs started in the same second share a folder)"
        )
    return True


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float | tuple[float, ...]:
    """Train, validate each epoch, test at the end. Returns the sweep objective(s): ``cfg.objectives`` read from
    metrics.json, by default the best validation accuracy (a float); several objectives give a tuple.

    Holds the run directory's lock while it runs (``main()`` holds it longer, to record a failure there)."""
    run_dir = Path(run_dir or HydraConfig.get().runtime.output_dir)
    took = claim_run_dir(run_dir)
    try:
        objectives = sweeps.objectives(cfg)
        job = setup(cfg, run_dir)
        state = restore(job)
        with running(job):
            fit(job, state)
            test(job, state)
        return sweeps.objective_values(objectives, job.run.metrics)
    finally:
        if took:
            release_dir(run_dir)


# --------------------------------------------------------------------------- the command


def _log_to_files(level: int, message: str, console: bool = False) -> None:
    """Log to the run's files only (a single run prints its own one line), or everywhere (a sweep's job)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if console or isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextmanager
def _interrupt_outside_the_loop(run_dir: Path) -> Iterator[None]:
    """SIGINT/SIGTERM before or after the training loop (which checks its own flag) ends the run as interrupted."""

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum, run_dir, saved=(run_dir / CHECKPOINT).is_file())

    with signal_handlers(handler):
        yield


# absolute: the console script imports this module, where Hydra would read "../conf" as a Python package
@hydra.main(config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Hydra entry point: user errors become one line and a non-zero exit (or a failed trial in a sweep)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        claim_run_dir(run_dir)  # before train(), so a failure is recorded while the directory is still ours
        cfg.resume = preemption.resume_from(run_dir, CHECKPOINT, METRICS) or cfg.resume  # a requeued Slurm job
        with _interrupt_outside_the_loop(run_dir):
            return train(cfg, run_dir)
    except (UserError, RunStopped, Interrupted) as e:
        status, reason = ending(e)
        if not isinstance(e, RunDirBusy):  # that metrics.json belongs to the other run
            finish_with_error(run_dir, status, reason)
        # a single run's console gets the one line below; a sweep job's error must reach the console here, or
        # the sweep's own summary ("no trial completed") would be all the user sees
        _log_to_files(logging.ERROR, f"{status}: {e}", console=multirun and not isinstance(e, Interrupted))
        if isinstance(e, Interrupted):
            preemption.hand_over(e.signum)  # submitit's preemption signal: submitit requeues the job and exits
        if full_error():  # the user's HYDRA_FULL_ERROR=1: the traceback, for debugging; metrics.json is already written
            raise
        if isinstance(e, Interrupted):
            print(f"vit_lab: {e}", file=sys.stderr)
            sys.exit(128 + e.signum)
        if multirun:  # a failed trial, not a failed sweep: NaN (one per objective) is recorded as a failed trial
            return sweeps.failed_values(cfg)
        print(f"vit_lab: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_dir(run_dir)  # this process is done writing there


def run() -> None:
    """``vit-lab-train`` and ``python -m vit_lab.train``: Hydra's main, with one-line errors for bad overrides."""
    cli(main)


if __name__ == "__main__":
    run()
