"""How a run ends: the status an exception gives it, recorded in metrics.json and told to the callbacks; and, for
the command, the run's log files, the user's one line and the exit code (or a failed trial's NaN in a sweep).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from vit_lab import preemption, sweeps
from vit_lab.errors import Interrupted, RunDirBusy, RunStopped, UserError
from vit_lab.job import Job
from vit_lab.loop import signal_handlers
from vit_lab.records import finish_with_error, now
from vit_lab.run_files import CHECKPOINT

log = logging.getLogger("vit_lab.train")


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


@contextmanager
def interrupt_outside_the_loop(run_dir: Path) -> Iterator[None]:
    """SIGINT/SIGTERM before or after the training loop (which checks its own flag) ends the run as interrupted."""

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum, run_dir, saved=(run_dir / CHECKPOINT).is_file())

    with signal_handlers(handler):
        yield


def record_failure(e: UserError | RunStopped | Interrupted, run_dir: Path, multirun: bool) -> None:
    """metrics.json and the run's log files say how the command's run ended; an interrupted job's signal goes back
    to submitit (its preemption signal: submitit requeues the job and exits)."""
    status, reason = ending(e)
    if not isinstance(e, RunDirBusy):  # that metrics.json belongs to the other run
        finish_with_error(run_dir, status, reason)
    # a single run's console gets exit_after()'s one line; a sweep job's error must reach the console here, or the
    # sweep's own summary ("no trial completed") would be all the user sees
    log_to_files(logging.ERROR, f"{status}: {e}", console=multirun and not isinstance(e, Interrupted))
    if isinstance(e, Interrupted):
        preemption.hand_over(e.signum)


def exit_after(e: UserError | RunStopped | Interrupted, cfg: DictConfig, multirun: bool) -> float | tuple[float, ...]:
    """The command's end once the failure is recorded: one line and exit 128 + the signal, or 2; a sweep's job
    returns NaN instead (one per objective), which the sweeper records as a failed trial, not a failed sweep."""
    if isinstance(e, Interrupted):
        print(f"vit_lab: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    if multirun:
        return sweeps.failed_values(cfg)
    print(f"vit_lab: error: {e}", file=sys.stderr)
    sys.exit(2)


def log_to_files(level: int, message: str, console: bool = False) -> None:
    """Log to the run's files only (a single run prints its own one line), or everywhere (a sweep's job)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if console or isinstance(handler, logging.FileHandler):
            handler.handle(record)
