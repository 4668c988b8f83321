"""What the debug presets (``conf/debug/``) switch on in the trainer.

- ``trainer.limit_batches: N`` (``debug=fast``): only the first N batches of each split, a smoke test of any config.
- ``trainer.overfit_batches: N`` (``debug=overfit``): train and validate on the same first N training batches,
  unshuffled and unaugmented; a model that can learn drives the loss towards zero.
- ``trainer.profile: {wait, warmup, active}`` (``debug=profile``): ``torch.profiler`` over those training steps,
  written to ``<run dir>/profile/`` as a Chrome/Perfetto trace (TensorBoard's profiler plugin reads the same
  folder), with a table of the costliest operators in ``profile/summary.txt``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vit_lab.data import ImageData
from vit_lab.io import atomic_write

log = logging.getLogger("vit_lab.train")


def _count(trainer: Any, key: str) -> int:
    return trainer.get(key) or 0  # null or 0: off (the schema types it, vit_lab.job.validate_config ranges it)


def subset(data: ImageData, trainer: Any) -> ImageData:
    """The splits cut to ``limit_batches``, or the overfit batches standing in for both training and validation."""
    if n := _count(trainer, "overfit_batches"):
        x, y = data.train_images[: n * trainer.batch_size], data.train_labels[: n * trainer.batch_size]
        return replace(data, train_images=x, train_labels=y, val_images=x, val_labels=y)
    if n := _count(trainer, "limit_batches"):
        train, held_out = n * trainer.batch_size, n * trainer.eval_batch_size
        return ImageData(
            data.train_images[:train],
            data.train_labels[:train],
            data.val_images[:held_out],
            data.val_labels[:held_out],
            data.test_images[:held_out],
            data.test_labels[:held_out],
        )
    return data


class StepProfiler:
    """``torch.profiler`` over a few training steps (``trainer.profile``), or nothing at all when that is null."""

    def __init__(self, spec: Any, run_dir: Path, device: torch.device) -> None:
        self.prof, self.folder, self.active = None, run_dir / "profile", 0
        if spec is None:
            return
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        self.active = spec.active
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.prof = profile(
            activities=activities,
            record_shapes=True,
            schedule=schedule(wait=spec.wait, warmup=spec.warmup, active=spec.active, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.folder)),
        )

    def __enter__(self) -> StepProfiler:
        if self.prof is not None:
            self.prof.start()
        return self

    def step(self) -> None:
        if self.prof is not None:
            self.prof.step()

    def __exit__(self, *exc: Any) -> None:
        if self.prof is None:
            return
        self.prof.stop()
        if exc[0] is None and self.prof.profiler is not None:
            table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            atomic_write(self.folder / "summary.txt", lambda f: f.write(table + "\n"))
            log.info(
                "profile of %d training steps in %s: summary.txt, and a .pt.trace.json for Perfetto or "
                "chrome://tracing",
                self.active,
                self.folder,
            )
