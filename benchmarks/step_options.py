"""What each training-step option buys on this machine: the trainer's step of one composed config in variants,
alternating round by round; images/s and the ratio to the first variant.

    python -m benchmarks.step_options experiment=best_cpu               # ~3 minutes on 2 cores (compile included)
    python -m benchmarks.step_options experiment=best_cpu --variants eager,pd50 --rounds 4
    python -m benchmarks.step_options --smoke                           # a tiny model: checks the plumbing

Every variant is the base config (the overrides given, precision as configured: ``auto`` is bf16 on CPUs with
native bf16) plus the variant's own overrides, built as the trainer builds it and stepped with the trainer's
``optimizer_step`` on one fixed batch. The first step of each variant (compile, for the compiled ones) is timed
apart. Per-epoch time in a real run also counts validation and, with ``device.compile``, a recompile for the
epoch's last, smaller batch; ``benchmarks.time_to_accuracy`` measures whole runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks import _common as C

EAGER = ["device.compile=false", "model.patch_dropout=0"]
VARIANTS = {  # each sets both keys, so a base that turns either on (experiment=best_cpu does) is still compared
    "eager": EAGER,
    "compiled": ["device.compile=true", "model.patch_dropout=0"],
    "pd25": ["device.compile=false", "model.patch_dropout=0.25"],
    "pd50": ["device.compile=false", "model.patch_dropout=0.5"],
    "compiled_pd50": ["device.compile=true", "model.patch_dropout=0.5"],
    "batch256": [*EAGER, "trainer.batch_size=256"],
}
SMOKE = ["model.patch_size=7", "model.hidden_d=16", "model.depth=1", "model.n_heads=2", "trainer.batch_size=8"]


def variant(overrides: list[str]) -> tuple[Callable[[], None], int, float]:
    """(step(), images per step, seconds of the first step) for the composed config with ``overrides``."""
    from vit_lab.config import build
    from vit_lab.device import resolve_precision

    cfg = C.compose(overrides)
    torch.manual_seed(0)
    chw, classes = C.data_shape(cfg)
    model = build(cfg.model, chw=chw, out_d=classes)
    x, y = C.synthetic_batch(cfg.trainer.batch_size, chw, classes=classes)
    precision = resolve_precision(torch.device("cpu"), cfg.device.precision)
    step = C.make_contender("", model, x, y, compile=C.trainer_compile(cfg), precision=precision, cfg=cfg).train_step
    t = time.perf_counter()
    step()
    return step, len(y), time.perf_counter() - t


def variant_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return names


def run(base: list[str], names: list[str], rounds: int, steps: int) -> dict:
    built = {name: variant(base + VARIANTS[name]) for name in names}
    times = C.interleaved({k: fn for k, (fn, _, _) in built.items()}, steps, rounds, warmup=1)
    first = names[0]
    out = {}
    for name, (_, images, first_s) in built.items():
        ips = images / C.per_call(times[name], "wall")
        ratios = [a / b for a, b in zip(times[first]["wall"], times[name]["wall"])]  # per round: robust to drift
        out[name] = {"overrides": VARIANTS[name], "images_per_s": ips, "ratio": C.median(ratios), "first_s": first_s}
    return out


def report(result: dict) -> str:
    lines = [f"base: {' '.join(result['base']) or '(defaults)'}; {result['rounds']} rounds, wall clock"]
    for name, r in result["variants"].items():
        lines.append(
            f"  {name:14s} {r['images_per_s']:7.0f} img/s  x{r['ratio']:.2f}  first step {r['first_s']:.1f} s"
            f"  {' '.join(r['overrides'])}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", type=variant_names, default=None, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=8, help="steps per timed chunk")
    p.add_argument("--smoke", action="store_true", help="a tiny model, eager and pd50, one round")
    C.add_step_args(p)
    a = C.parse_step_args(p, argv)
    C.set_threads(a.threads)
    base = [*SMOKE, *a.overrides] if a.smoke else list(a.overrides)
    names = a.variants or (["eager", "pd50"] if a.smoke else ["eager", "compiled", "pd25", "pd50", "compiled_pd50"])
    rounds, steps = (1, 1) if a.smoke else (a.rounds, a.steps)
    result = {"base": base, "rounds": rounds, "variants": run(base, names, rounds, steps)}
    if not a.no_save:
        result["saved"] = str(C.save("step_options", result))
    return C.print_result(result, report)


if __name__ == "__main__":
    main()
