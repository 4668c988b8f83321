"""Resuming a run: what its checkpoint holds, when it is written, and how a run continues from it.

``checkpoint()`` gathers everything the next step depends on (weights, optimizer, schedule, the epoch's order
and partial sums, the generators' states, the history, the callbacks' and the EMA's state); ``restore()`` puts
it back, so a resumed run continues exactly where the killed one stopped. The files themselves (atomic writes,
reading a checkpoint, the architecture check) are ``vit_lab.records``'.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from vit_lab.job import Job
from vit_lab.loop import State

log = logging.getLogger("vit_lab.train")


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
