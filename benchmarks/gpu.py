"""The GPU path, in one prepared script: vit_lab against timm on the same card, with bf16 autocast, a
GPU-resident dataset and torch.compile. Images/s on a fixed batch and the wall time of a full training epoch.

    python -m benchmarks.gpu                          # on a CUDA machine, ~3-5 minutes (compile included)
    python -m benchmarks.gpu --batch 128 512 --epochs 2 --no-compile
    python -m benchmarks.gpu --device cpu --smoke     # exercises the code path on the CPU (seconds)

Contenders (default size; ``--size tutorial`` for the other): ``vit_lab`` fp32 eager, ``vit_lab`` bf16 eager,
``vit_lab`` bf16 + compile, ``timm`` bf16 eager, ``timm`` bf16 + compile, and on CUDA ``vit_lab`` bf16 + compile
with CUDA graphs (mode "reduce-overhead"); every one with the trainer's step
(autocast forward, float CE, AdamW). Steady-state images/s come from interleaved rounds with CUDA sync;
compile time is reported apart. The epoch time runs the trainer's ``Batches`` over the training split kept on the
GPU as uint8 (the trainer does this whenever device != cpu), bf16 (+ compile), for vit_lab and timm.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import _common as C


def _dataset(device: torch.device, limit: int | None):
    """Real MNIST (training split, uint8) on the device; a synthetic stand-in if the files are missing."""
    from vit_lab.config import build

    cfg = C.compose([f"data.train_limit={limit}"] if limit else [])
    spec = build(cfg.data, _convert_="all")
    try:
        data = spec.load(seed=0)
        images, labels, source = data.train_images, data.train_labels, "MNIST"
    except Exception as e:  # noqa: BLE001 - benchmark only: keep going on synthetic data
        n = limit or 55_000
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        source = f"synthetic ({type(e).__name__})"
    return images.to(device), labels.to(device), spec, source


def epoch_time(step, images, labels, spec, batch: int, device: torch.device) -> dict:
    """One epoch through the trainer's Batches (device-resident uint8 -> float, normalise) with the trainer's step."""
    from vit_lab.data import Batches

    batches = Batches(
        images,
        labels,
        batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        mean=spec.mean,
        std=spec.std,
        normalize=spec.normalize,
        device=device,
    )
    C._sync(device)
    t0 = time.perf_counter()
    n = 0
    for x, y in batches:
        step(x, y)
        n += len(y)
    C._sync(device)
    seconds = time.perf_counter() - t0
    return {"epoch_seconds": seconds, "images": n, "images_per_second": n / seconds}


def run(
    device_name: str = "cuda",
    size_name: str = "default",
    batches=(128, 512),
    rounds: int = 5,
    steps: int = 20,
    compile_: bool = True,
    epochs: int = 1,
    limit: int | None = None,
    save: bool = True,
) -> dict:
    from vit_lab.device import resolve_device

    device = resolve_device(device_name)
    size = C.SIZES[size_name]
    out: dict = {
        "device": str(device),
        "size": size_name,
        "loadavg_start": C.loadavg(),
        "throughput": {},
        "epoch": {},
        "compile_seconds": {},
    }
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        out["gpu"] = torch.cuda.get_device_name(device)
    specs: list[tuple[str, str, str, bool | str]] = [
        ("vit_lab_fp32", "vit_lab", "fp32", False),
        ("vit_lab_bf16", "vit_lab", "bf16", False),
        ("timm_bf16", "timm", "bf16", False),
    ]
    if compile_:
        specs += [("vit_lab_bf16_compiled", "vit_lab", "bf16", True), ("timm_bf16_compiled", "timm", "bf16", True)]
        if device.type == "cuda":  # CUDA graphs: the step's launches replayed at once (the host bounds this step)
            specs += [("vit_lab_bf16_cudagraphs", "vit_lab", "bf16", "reduce-overhead")]
    _throughput(out, specs, size, batches, device, steps, rounds)
    _epochs(out, specs, size, batches[0], device, epochs, limit)
    out["loadavg_end"] = C.loadavg()
    if save:
        out["saved"] = str(C.save("gpu", out))
    return out


def _throughput(out: dict, specs: list, size, batches, device, steps: int, rounds: int) -> None:
    """Train and eval steps per second of every contender, interleaved, at each batch size."""
    for batch in batches:
        x, y = C.synthetic_batch(batch, device=device)
        cs = {}
        for name, kind, precision, comp in specs:
            torch.manual_seed(0)
            model = C.build_vit_lab(size)[0] if kind == "vit_lab" else C.build_timm(size)
            cs[name] = C.make_contender(name, model, x, y, compile=comp, precision=precision)
            t0 = time.perf_counter()
            cs[name].train_step()
            C._sync(device)
            if comp:
                out["compile_seconds"][f"{name}@{batch}"] = time.perf_counter() - t0
        times = C.interleaved({k: c.train_step for k, c in cs.items()}, steps=steps, rounds=rounds, device=device)
        evals = C.interleaved({k: c.eval_step for k, c in cs.items()}, steps=steps, rounds=rounds, device=device)
        ref = C.median(times["vit_lab_bf16"]["wall"])
        out["throughput"][batch] = {
            k: {
                "train_img_s": batch / C.median(times[k]["wall"]),
                "eval_img_s": batch / C.median(evals[k]["wall"]),
                "train_ratio_to_vit_lab_bf16": ref / C.median(times[k]["wall"]),
            }
            for k in cs
        }
        for k, v in out["throughput"][batch].items():  # as measured: a run cut short still leaves its numbers
            print(
                f"[gpu] batch {batch} {k}: train {v['train_img_s']:.0f} img/s, eval {v['eval_img_s']:.0f} img/s",
                flush=True,
            )


def _epochs(out: dict, specs: list, size, batch: int, device, epochs: int, limit: int | None) -> None:
    """Whole epochs of every contender on the resident dataset (the first includes compile and warm-up)."""
    images, labels, spec, source = _dataset(device, limit)
    out["epoch_data"] = {"source": source, "images": len(labels), "resident_on": str(images.device)}
    for name, kind, precision, comp in specs:
        torch.manual_seed(0)
        model = (C.build_vit_lab(size)[0] if kind == "vit_lab" else C.build_timm(size)).to(device).train()
        step = C.trainer_step(model, C.compiled(model, comp), precision=precision)
        runs = [epoch_time(step, images, labels, spec, batch, device) for _ in range(epochs + 1)]
        out["epoch"][name] = {
            "first_epoch_seconds": runs[0]["epoch_seconds"],  # includes compile / warm-up
            "epoch_seconds": C.median([r["epoch_seconds"] for r in runs[1:]]),
            "images_per_second": C.median([r["images_per_second"] for r in runs[1:]]),
            "batch": batch,
        }
        print(
            f"[gpu] epoch {name}: {out['epoch'][name]['epoch_seconds']:.2f} s (first {runs[0]['epoch_seconds']:.1f} s)",
            flush=True,
        )


def report(r: dict) -> str:
    lines = [
        f"GPU path on {r.get('gpu', r['device'])}, {r['size']} size, load {r['loadavg_start']} -> {r['loadavg_end']}"
    ]
    for batch, cs in r["throughput"].items():
        lines.append(
            f"\n  batch {batch}: {'contender':24} {'train img/s':>11} {'x vit_lab bf16':>14} {'eval img/s':>11}"
        )
        for k, v in cs.items():
            lines.append(
                f"  {'':9}{k:24} {v['train_img_s']:11.0f} {v['train_ratio_to_vit_lab_bf16']:14.2f} "
                f"{v['eval_img_s']:11.0f}"
            )
    lines.append(
        f"\n  full epoch ({r['epoch_data']['source']}, {r['epoch_data']['images']} images resident on "
        f"{r['epoch_data']['resident_on']}):"
    )
    for k, v in r["epoch"].items():
        lines.append(
            f"    {k:24} {v['epoch_seconds']:7.2f} s/epoch ({v['images_per_second']:.0f} img/s), "
            f"first epoch {v['first_epoch_seconds']:.1f} s"
        )
    if r["compile_seconds"]:
        lines.append("  compile: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["compile_seconds"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=sorted(C.SIZES), default="default")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs after a warm-up epoch")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny: batch 8, 1 round of 1 step, 32 images, no compile")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)
    if a.smoke:
        r = run(a.device, "tutorial", (8,), 1, 1, False, 1, 32, save=not a.no_save)
    else:
        r = run(
            a.device, a.size, tuple(a.batch), a.rounds, a.steps, not a.no_compile, a.epochs, None, save=not a.no_save
        )
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
