"""Shared pieces of the benchmarks: model builders at matched sizes, the trainer's step, interleaved timing.

Every comparison runs in one process and alternates between the contenders round by round, so a noisy,
shared machine slows all of them alike; medians of the rounds are reported, with the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from vit_lab import device as vit_lab_device
from vit_lab.io import write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# The two sizes of the issue. mlp is the hidden width of the MLP.
SIZES = {
    "tutorial": dict(patch=4, width=8, depth=2, heads=2, mlp_ratio=4.0),
    "default": dict(patch=4, width=64, depth=4, heads=4, mlp_ratio=2.0),
}


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return []


def machine() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc_tuned": vit_lab_device.MALLOC_TUNED,
    }


def compose(overrides: list[str] | None = None):
    """The trainer's composed Hydra config (conf/config.yaml + overrides), exactly what `python -m vit_lab.train`
    sees."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    from vit_lab import schema  # noqa: F401 - registers the typed schemas the YAML files extend
    from vit_lab.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return _compose(config_name="config", overrides=list(overrides or []))


def size_overrides(size: dict) -> list[str]:
    return [
        f"model.patch_size={size['patch']}",
        f"model.hidden_d={size['width']}",
        f"model.depth={size['depth']}",
        f"model.n_heads={size['heads']}",
        f"model.mlp_ratio={size['mlp_ratio']}",
    ]


def data_shape(cfg: DictConfig) -> tuple[tuple[int, int, int], int]:
    """The composed config's image shape (channels, height, width) and class count, from the data config alone
    (nothing is read), so a ``data=`` override reaches the benchmark's model and synthetic batch."""
    from vit_lab.config import build

    spec = build(cfg.data, _convert_="all")
    return tuple(spec.chw), int(spec.num_classes)


def build_vit_lab(size: dict, overrides: list[str] | None = None) -> tuple[torch.nn.Module, DictConfig]:
    """vit_lab's model built from the trainer's config (defaults + the size + overrides) for its data's image
    shape and classes; returns (model, cfg)."""
    from vit_lab.config import build

    cfg = compose(size_overrides(size) + list(overrides or []))
    chw, classes = data_shape(cfg)
    return build(cfg.model, chw=chw, out_d=classes), cfg


def build_timm(size: dict, chw=(1, 28, 28), classes: int = 10) -> torch.nn.Module:
    """timm's VisionTransformer at the same width/depth/heads/patch/MLP, class-token pooling, no final norm
    (vit_lab's cls pooling has none either)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=chw[1],
        patch_size=size["patch"],
        in_chans=chw[0],
        num_classes=classes,
        embed_dim=size["width"],
        depth=size["depth"],
        num_heads=size["heads"],
        mlp_ratio=size["mlp_ratio"],
        global_pool="token",
        final_norm=False,
    )


def build_vit_pytorch(size: dict, chw=(1, 28, 28), classes: int = 10) -> torch.nn.Module:
    """lucidrains' vit-pytorch ViT at the same sizes (it adds LayerNorms around its patch embedding and a final
    norm)."""
    from vit_pytorch import ViT

    w, h = size["width"], size["heads"]
    return ViT(
        image_size=chw[1],
        patch_size=size["patch"],
        num_classes=classes,
        dim=w,
        depth=size["depth"],
        heads=h,
        mlp_dim=int(round(size["mlp_ratio"] * w)),
        channels=chw[0],
        dim_head=w // h,
    )


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def synthetic_batch(
    batch: int, chw=(1, 28, 28), device="cpu", seed: int = 0, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *chw, generator=g).sub_(0.1307).div_(0.3081)
    y = torch.randint(0, classes, (batch,), generator=g)
    return x.to(device), y.to(device)


@dataclass
class Contender:
    """One model on one path: a train step and an eval step, each a no-argument callable on a fixed batch."""

    name: str
    model: torch.nn.Module
    train_step: Callable[[], None]
    eval_step: Callable[[], None]
    note: str = ""


_DEFAULT_CFG = None


def default_cfg():
    global _DEFAULT_CFG
    if _DEFAULT_CFG is None:
        _DEFAULT_CFG = compose()
    return _DEFAULT_CFG


def trainer_step(
    model: torch.nn.Module, forward: Callable | None = None, cfg=None, precision: str = "fp32"
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The trainer's step (``vit_lab.train.optimizer_step``) as ``step(x, y)``, with the configured optimizer
    (conf/optimizer, fused AdamW by default, with the trainer's param groups), loss and clipping, and a per-step
    schedule; ``forward`` is e.g. the compiled model."""
    from vit_lab.config import build
    from vit_lab.train import optimizer_step, param_groups

    cfg = cfg if cfg is not None else default_cfg()
    forward = forward if forward is not None else model  # not `or`: a compiled module raises on len()
    opt = build(cfg.optimizer)(param_groups(model, cfg.optimizer.get("weight_decay", 0.0) or 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        optimizer_step(model, forward, criterion, opt, sched, x, y, precision, cfg.trainer.grad_clip)

    return step


def trainer_compile(cfg) -> bool | str:
    """What the trainer does with ``cfg``: False (eager) or the torch.compile mode (device.compile/compile_mode)."""
    return cfg.device.get("compile_mode", "default") if cfg.device.compile else False


def compiled(model: torch.nn.Module, compile: bool | str) -> torch.nn.Module:
    """The model, torch.compile'd if ``compile`` (True: the default mode; a string: that torch.compile mode)."""
    from vit_lab.device import compile_model

    return compile_model(model, compile if isinstance(compile, str) else "default") if compile else model


def make_contender(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    compile: bool | str = False,
    precision: str = "fp32",
    note: str = "",
    cfg=None,
) -> Contender:
    """The trainer's step on a fixed batch (every contender gets the same optimizer); eval: no_grad forward + argmax."""
    from vit_lab.device import autocast

    model.to(x.device).train()
    forward = compiled(model, compile)
    step = trainer_step(model, forward, cfg, precision)

    def train_step() -> None:
        step(x, y)

    def eval_step() -> None:
        model.eval()
        with torch.no_grad(), autocast(x.device, precision):
            forward(x).argmax(1)
        model.train()

    return Contender(name, model, train_step, eval_step, note)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], None]],
    steps: int | dict[str, int],
    rounds: int,
    warmup: int = 2,
    device="cpu",
    min_seconds: float = 0.0,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each fn, measured in ``rounds`` rounds that alternate between the fns (order rotated
    each round). Each measurement runs ``steps`` calls (a dict gives per-fn counts; more calls if the chunk
    would take under ``min_seconds``).

    Returns {name: {"wall": [...], "cpu": [...]}}: wall-clock seconds per call and process CPU seconds per call.
    On a shared machine, CPU time at one thread is the robust measure of work (other users' load barely moves
    it); wall time is what a user waits for.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            want = steps.get(name, 1) if isinstance(steps, dict) else steps
            while n < want or time.perf_counter() - t0 < min_seconds:
                fn()
                n += 1
            _sync(device)
            times[name]["wall"].append((time.perf_counter() - t0) / n)
            times[name]["cpu"].append((time.process_time() - c0) / n)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


CLOCKS = ("wall", "cpu", "best")


def per_call(times: dict[str, list[float]], clock: str) -> float:
    """Seconds per call from one of interleaved()'s records: the median of the ``wall`` or ``cpu`` clock, or
    ``best``, the fastest wall-clock round (the least-disturbed estimate on a shared machine)."""
    return min(times["wall"]) if clock == "best" else median(times[clock])


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return write_json(path, {"benchmark": name, "machine": machine(), "loadavg_end": loadavg(), **payload})


def set_threads(threads: int | None) -> None:
    vit_lab_device.configure_process(torch.device("cpu"), threads)


def print_result(result: dict, report: Callable[[dict], str]) -> dict:
    """Every script's ending: the human-readable report, then where the JSON went."""
    print(report(result))
    if "saved" in result:
        print(f"saved {result['saved']}")
    return result


def add_malloc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-tune-malloc",
        action="store_true",
        help="leave glibc's malloc as is (the trainer tunes it on the CPU: device.tune_malloc)",
    )


def configure_like_trainer(overrides: list[str] | None = None, tune_malloc: bool = True) -> None:
    """The trainer's process-wide settings for a CPU run of the composed config (``vit_lab.device.configure_process``).
    Process-wide, so every contender in the process shares them."""
    dev = compose(overrides).device
    vit_lab_device.configure_process(torch.device("cpu"), dev.threads, malloc=tune_malloc and dev.tune_malloc)


def add_step_args(p: argparse.ArgumentParser) -> None:
    """The options every step-timing script shares: threads, malloc tuning, saving and trainer overrides."""
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    add_malloc_arg(p)
    p.add_argument("--no-save", action="store_true")
    p.add_argument("overrides", nargs="*", help="trainer config overrides for vit_lab, e.g. device.compile=true")


def parse_step_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then set up the process as the trainer would for these overrides."""
    a = p.parse_args(argv)
    configure_like_trainer(a.overrides, tune_malloc=not a.no_tune_malloc)
    return a
