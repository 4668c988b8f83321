"""Jobs that submitit (``hydra/launcher=vit_slurm``, ``submitit_local``) preempts or times out: they save, are
requeued and resume in the same run directory.

submitit sends a job its preemption signal (``SIGUSR2`` by default, ``$SUBMITIT_PREEMPT_SIGNAL`` to change it)
``signal_delay_s`` before the time limit, or when Slurm preempts it. Then:

1. the training loop treats it like SIGTERM (:func:`signals`): it finishes the step, saves ``checkpoint.pt`` there;
2. ``vit_lab.train.main`` hands the signal back to submitit's own handler (:func:`hand_over`), which calls the
   launcher's ``checkpoint()`` (hydra-submitit-launcher resubmits the same job: same overrides, run directory and
   ``VIT_OPTUNA_TRIAL``) and requeues the job; a signal outside the loop goes to submitit's handler at once;
3. the requeued job has the same job id: it finds its own checkpoint in its run directory and resumes from it
   (:func:`resume_from`); the run directory's lock lets it wait for its predecessor (:func:`claim`) but still
   refuses any other writer.

Outside a submitit job every function here is a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from vit_lab.io import claim_dir, read_json

log = logging.getLogger("vit_lab.train")

PREDECESSOR_WAIT_S = 120.0  # how long a requeued job waits for its predecessor's lock (an NFS lock may lag its death)


def job_id() -> str | None:
    """This process's submitit job id (Slurm's ``<array job>_<task>`` or job id; kept across requeues), or None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except (KeyError, RuntimeError):  # an executor without a job id in this process's environment
        return None


def signals() -> tuple[int, ...]:
    """The preemption/timeout signal submitit sends this job, for the training loop to catch; () outside submitit."""
    if job_id() is None:
        return ()
    import submitit

    sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG, None)
    return (sig,) if sig is not None else ()


def hand_over(signum: int) -> None:
    """Give a preemption signal the loop caught (its checkpoint saved) back to submitit's handler, which resubmits
    the job, requeues it and exits (or raises when it may not requeue: too many timeouts)."""
    handler = signal.getsignal(signum)
    if signum in signals() and callable(handler):
        log.info(
            "%s: checkpoint saved; submitit requeues job %s, which resumes in this run directory",
            signal.Signals(signum).name,
            job_id(),
        )
        handler(signum, None)


def _lock_note() -> str:
    jid = job_id()
    return f", submitit job {jid}" if jid else ""


def claim(run_dir: Path) -> str | None:
    """``claim_dir`` naming this job in the lock; a requeued job waits up to PREDECESSOR_WAIT_S for its predecessor
    (the same job id) to let go. Returns None once the lock is ours, else what the lock file says of its holder."""
    note = _lock_note()
    holder = claim_dir(run_dir, note)
    deadline = time.monotonic() + PREDECESSOR_WAIT_S
    while holder is not None and note and holder.endswith(note) and time.monotonic() < deadline:
        time.sleep(0.5)
        holder = claim_dir(run_dir, note)
    return holder


def resume_from(run_dir: Path, checkpoint: str, metrics: str) -> str | None:
    """``run_dir`` when this is a requeued job coming back to its own run directory (its metrics.json names this
    job id) with a checkpoint to resume from, else None."""
    jid = job_id()
    if jid is None:
        return None
    try:
        mine = read_json(run_dir / metrics).get("job_id") == jid
    except (OSError, ValueError):
        return None
    if mine and (run_dir / checkpoint).is_file():
        return str(run_dir)
    if mine:
        log.warning(
            "requeued job %s restarts from its first epoch: no %s in %s (set trainer.checkpoint=true to resume)",
            jid,
            checkpoint,
            run_dir,
        )
    return None
