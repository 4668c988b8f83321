"""The main job: train a model on an IDX image set, validate every epoch, test once at the end.

    python -m vit_lab.train                      # the default ViT on MNIST
    python -m vit_lab.train model.n_heads=4      # any value can be overridden
    python -m vit_lab.train resume=outputs/runs/2026-11-27/10-00-00   # continue a run

``train()`` reads top to bottom: setup (config check, device, callbacks and loggers, model, data, optimizer,
schedule) -> restore (from ``resume``: ``vit_lab.resume``) -> fit (the epoch loop) -> test -> finish, with the
callbacks told when the run starts, after each epoch and how it ended (``vit_lab.endings``). The run directory's
files (``vit_lab.records``) are written atomically, so a killed run always leaves readable files and can be resumed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm.auto import tqdm

from vit_lab import debug, distill, preemption, sweeps
from vit_lab.callbacks import Callbacks, StopTraining
from vit_lab.cli import CONF_DIR, cli, full_error
from vit_lab.config import build
from vit_lab.device import compile_model, configure_process, resolve_device, resolve_precision
from vit_lab.ema import build_ema, check_decay
from vit_lab.endings import exit_after, interrupt_outside_the_loop, record_failure, running
from vit_lab.errors import Interrupted, RunDirBusy, RunStopped, UserError
from vit_lab.io import dir_is_held, release_dir
from vit_lab.job import Job, build_data, build_optimizer, param_groups, validate_config  # noqa: F401 (re-exported)
from vit_lab.loop import State, Sums, evaluate, finite_loss, optimizer_step, stop_on_signals
from vit_lab.models import MyViT
from vit_lab.records import CHECKPOINT, METRICS, Run, check_compatible, git_info, load_checkpoint, now, versions
from vit_lab.resume import checkpoint, restore, save_epoch

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
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    distiller = distill.from_config(cfg, spec, model, criterion, device)  # the teacher, before any data is read
    if distiller is not None and isinstance(model, MyViT):
        model.set_distilled_training()  # its distillation head learns the teacher, its class head the labels
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
        **({"distill": distiller.record} if distiller else {}),
    )
    data = build_data(cfg, spec, device)  # (generator, train, val, test)
    model.to(device)
    ema = build_ema(model, cfg.trainer.get("ema_decay"))
    step_model = compile_model(model, cfg.device.get("compile_mode", "default")) if cfg.device.compile else model
    opt, sched = build_optimizer(cfg, model, len(data[1]))
    profiler = debug.StepProfiler(cfg.trainer.get("profile"), run_dir, device)
    job = Job(cfg, run, device, model, step_model, callbacks, *data, opt, sched, criterion, profiler, ckpt, ckpt_file)
    job.ema, job.distiller, job.precision = ema, distiller, precision
    describe(job)
    return job


def describe(job: Job) -> None:
    """The run's first log lines: what trains on what, where, and in which precision."""
    sizes = (len(job.train_batches.labels), len(job.val_batches.labels), len(job.test_batches.labels))
    log.info(
        "%s with %s parameters on %s; %d train / %d val / %d test images; run dir %s",
        *(type(job.model).__name__, f"{job.run.metrics['n_params']:,}", job.device, *sizes, job.run.dir),
    )
    log.info("precision %s (device.precision=%s)", job.precision, job.cfg.device.precision)
    if job.distiller is not None:
        d = job.distiller.record
        log.info("%s distillation from %s (%s, %s weights)", d["kind"], d["teacher"], d["teacher_model"], d["weights"])


# --------------------------------------------------------------------------- fit and test


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
    drop_patches(job, state.epoch)
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


def drop_patches(job: Job, epoch: int) -> None:
    """model.patch_dropout applies in the first trainer.patch_dropout_epochs epochs (every epoch when null)."""
    n = job.cfg.trainer.get("patch_dropout_epochs")
    if isinstance(job.model, MyViT) and job.model.patch_dropout > 0:
        if epoch == n and job.model.drop_patches:
            log.info("epoch %d on: every patch token (model.patch_dropout off)", epoch + 1)
        job.model.drop_patches = n is None or epoch < n


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
        job.precision,
        job.cfg.trainer.grad_clip,
        job.distiller,
    )
    if job.ema is not None:
        job.ema.update_parameters(job.model)
    return loss, out


def end_epoch(job: Job, state: State, sums: dict) -> dict:
    """Validate, then record the epoch in the history and, when validation improved, its weights in best.pt."""
    seconds = sums["seconds"]
    val_loss, val_acc = evaluate(job.eval_model, job.val_batches, job.device, job.precision)
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


def test(job: Job, state: State) -> None:
    """Evaluate the test set once, with the last weights (their average with EMA), and record the completed run."""
    test_loss, test_acc = evaluate(job.eval_model, job.test_batches, job.device, job.precision)
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


# absolute: the console script imports this module, where Hydra would read "../conf" as a Python package
@hydra.main(config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """Hydra entry point: user errors become one line and a non-zero exit (or a failed trial in a sweep)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        claim_run_dir(run_dir)  # before train(), so a failure is recorded while the directory is still ours
        cfg.resume = preemption.resume_from(run_dir, CHECKPOINT, METRICS) or cfg.resume  # a requeued Slurm job
        with interrupt_outside_the_loop(run_dir):
            return train(cfg, run_dir)
    except (UserError, RunStopped, Interrupted) as e:
        record_failure(e, run_dir, multirun)
        if full_error():  # the user's HYDRA_FULL_ERROR=1: the traceback, for debugging; metrics.json is already written
            raise
        return exit_after(e, cfg, multirun)
    finally:
        release_dir(run_dir)  # this process is done writing there


def run() -> None:
    """``vit-lab-train`` and ``python -m vit_lab.train``: Hydra's main, with one-line errors for bad overrides."""
    cli(main)


if __name__ == "__main__":
    run()
