"""Cost and scale: data-pipeline share of an epoch, peak resident memory of the main job, and step time
against patch size (token count) and width.

    python -m benchmarks.cost                         # all three, short (~2 minutes)
    python -m benchmarks.cost --part pipeline --batches 400
    python -m benchmarks.cost --part memory --full    # peak RSS of the whole default main job (~10 min)
    python -m benchmarks.cost --part scale --patches 2 4 7 14 --widths 32 64 128 192

- pipeline: the trainer's own ``Batches`` over real MNIST (shuffle, uint8 -> float, normalise, and each
  augmentation preset), timed alternately with the default model's training step on those batches; the
  share is pipeline / (pipeline + step) per batch. Needs the real data (``$VIT_LAB_DATA``).
- memory: runs ``python -m vit_lab.train`` (full data loaded; 1 epoch on 2,048 images unless ``--full``) in a
  subprocess and reads its peak RSS (``ru_maxrss``; psutil polling too).
- scale: training step time of the default model while varying patch size (tokens = (28/p)^2 + 1) and width
  (heads kept at width/16), interleaved, with the analytic FLOPs of each (see benchmarks/peak.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import _common as C
from benchmarks.peak import train_step_flops


def pipeline(batches: int = 100, rounds: int = 5, augments=("none", "crop", "affine")) -> dict:
    from vit_lab.config import build
    from vit_lab.data import Batches

    cfg = C.compose()
    spec = build(cfg.data, _convert_="all")
    data = spec.load(seed=0)
    model, _ = C.build_vit_lab(C.SIZES["default"])
    x0, y0 = C.synthetic_batch(cfg.trainer.batch_size)
    step = C.make_contender("vit_lab", model, x0, y0, compile=C.trainer_compile(cfg))

    iters = {}
    for name in augments:
        aug = build(C.compose([f"augment={name}"]).augment)
        gen = torch.Generator().manual_seed(0)
        b = Batches(
            data.train_images,
            data.train_labels,
            cfg.trainer.batch_size,
            shuffle=True,
            augment=aug,
            generator=gen,
            mean=spec.mean,
            std=spec.std,
            normalize=spec.normalize,
        )
        state = {"it": iter(b)}

        def next_batch(b=b, state=state) -> None:
            try:
                next(state["it"])
            except StopIteration:
                state["it"] = iter(b)
                next(state["it"])

        iters[name] = next_batch
    times = C.interleaved(
        {"train_step": step.train_step, **{f"pipeline_{k}": f for k, f in iters.items()}},
        steps=max(1, batches // rounds),
        rounds=rounds,
        warmup=1,
    )
    out = {"batch_size": cfg.trainer.batch_size, "epoch_batches": -(-len(data.train_labels) // cfg.trainer.batch_size)}
    for clock in ("wall", "cpu"):
        t_step = C.median(times["train_step"][clock])
        out[clock] = {"train_step_seconds": t_step}
        for k in iters:
            t = C.median(times[f"pipeline_{k}"][clock])
            out[clock][k] = {"batch_seconds": t, "share_of_epoch": t / (t + t_step)}
    return out


def memory(full: bool = False, extra: list[str] | None = None) -> dict:
    from benchmarks.time_to_accuracy import run as tta_run

    overrides = [] if full else ["trainer.epochs=1", "data.train_limit=2048", "trainer.progress=false"]
    r = tta_run(overrides + list(extra or []), target=None, save=False, echo=False)
    return {
        k: r[k]
        for k in (
            "command",
            "returncode",
            "wall_seconds",
            "peak_rss_bytes",
            "psutil_peak_rss_bytes",
            "test_acc",
            "status",
        )
    }


def scale(patches=(4, 7), widths=(32, 64, 128), batch: int = 128, rounds: int = 3, steps: int = 2) -> dict:
    base = C.SIZES["default"]
    fns, meta = {}, {}
    x, y = C.synthetic_batch(batch)
    for p in patches:
        for w in widths:
            size = dict(base, patch=p, width=w, heads=max(1, w // 16))
            model, cfg = C.build_vit_lab(size)
            name = f"p{p}_w{w}"
            fns[name] = C.make_contender(name, model, x, y).train_step
            m = cfg.model
            meta[name] = {
                "patch": p,
                "width": w,
                "heads": size["heads"],
                "tokens": (28 // p) ** 2 + 1,
                "params": C.n_params(model),
                "train_step_gflop": train_step_flops(
                    batch, patch=p, width=w, depth=m.depth, heads=m.n_heads, mlp_ratio=m.mlp_ratio
                )
                / 1e9,
            }
    times = C.interleaved(fns, steps=steps, rounds=rounds, warmup=1)
    for name in fns:
        for clock in ("wall", "cpu"):
            t = C.median(times[name][clock])
            meta[name][f"{clock}_step_ms"] = 1e3 * t
            meta[name][f"{clock}_img_s"] = batch / t
    return meta


# Candidate models for the 10-minute main job and the presets (trainer overrides on top of conf/).
CANDIDATES = {
    "default_p4_w64_d4": [],
    "p4_w64_d6": ["model.depth=6"],
    "p4_w96_d4": ["model.hidden_d=96", "model.n_heads=6"],
    "p4_w48_d4": ["model.hidden_d=48", "model.n_heads=3"],
    "p7_w64_d4": ["model.patch_size=7"],
    "p7_w128_d6": ["model.patch_size=7", "model.hidden_d=128", "model.n_heads=8", "model.depth=6"],
    "best_p4_w128_d6_mean": ["experiment=best"],
    "best_cpu": ["experiment=best_cpu"],
}


def candidates(names=None, batch: int = 128, rounds: int = 3, steps: int = 2) -> dict:
    """Training img/s of candidate configs (the trainer's model + step), interleaved; ratio to the default."""
    from vit_lab.config import build

    x, y = C.synthetic_batch(batch)
    fns, meta = {}, {}
    for name in names or CANDIDATES:
        cfg = C.compose(CANDIDATES[name])
        model = build(cfg.model, chw=(1, 28, 28), out_d=10)
        fns[name] = C.make_contender(name, model, x, y, compile=C.trainer_compile(cfg), cfg=cfg).train_step
        meta[name] = {"overrides": CANDIDATES[name], "params": C.n_params(model)}
    times = C.interleaved(fns, steps=steps, rounds=rounds, warmup=1)
    first = next(iter(fns))
    for name in fns:
        for clock in ("wall", "cpu"):
            t = C.median(times[name][clock])
            meta[name][f"{clock}_img_s"] = batch / t
            meta[name][f"{clock}_ratio_to_{first}"] = C.median(times[first][clock]) / t
    return meta


def run(
    parts=("pipeline", "memory", "scale"),
    batches: int = 100,
    full: bool = False,
    patches=(4, 7),
    widths=(32, 64, 128),
    threads: int | None = None,
    save: bool = True,
) -> dict:
    C.set_threads(threads)
    out: dict = {"threads": torch.get_num_threads()}
    for part in parts:
        load0, t0 = C.loadavg(), time.perf_counter()
        if part == "pipeline":
            out[part] = pipeline(batches)
        elif part == "memory":
            out[part] = memory(full)
        elif part == "candidates":
            out[part] = candidates()
        else:
            out[part] = scale(patches, widths)
        out[f"{part}_meta"] = {"loadavg_start": load0, "loadavg_end": C.loadavg(), "seconds": time.perf_counter() - t0}
    if save:
        out["saved"] = str(C.save("cost", out))
    return out


def report(r: dict) -> str:
    lines = [f"cost and scale, {r['threads']} thread(s)"]
    if "pipeline" in r:
        p, m = r["pipeline"], r["pipeline_meta"]
        lines.append(f"\n-- data pipeline (batch {p['batch_size']}, load {m['loadavg_start']} -> {m['loadavg_end']})")
        for clock in ("wall", "cpu"):
            v = p[clock]
            parts = ", ".join(
                f"{k} {1e3 * s['batch_seconds']:.2f} ms = {100 * s['share_of_epoch']:.1f}%"
                for k, s in v.items()
                if k != "train_step_seconds"
            )
            lines.append(
                f"  [{clock:4}] train step {1e3 * v['train_step_seconds']:.1f} ms; pipeline per batch: {parts}"
            )
    if "memory" in r:
        v = r["memory"]
        lines.append(
            f"\n-- peak memory: {v['peak_rss_bytes'] / 2**20:.0f} MiB RSS"
            + (f" (psutil {v['psutil_peak_rss_bytes'] / 2**20:.0f} MiB)" if v.get("psutil_peak_rss_bytes") else "")
            + f", {v['wall_seconds']:.0f}s, status {v['status']}: $ {v['command']}"
        )
    if "candidates" in r:
        m = r["candidates_meta"]
        lines.append(
            f"\n-- candidate models, training step at batch 128 (load {m['loadavg_start']} -> {m['loadavg_end']})"
        )
        for k, v in r["candidates"].items():
            ratio = next(val for key, val in v.items() if key.startswith("cpu_ratio_to_"))
            lines.append(
                f"  {k:22} {v['params']:8d} params  {v['wall_img_s']:6.0f} img/s wall  "
                f"{v['cpu_img_s']:6.0f} img/CPU-s  x{ratio:.2f} of the first (cpu clock)"
            )
    if "scale" in r:
        m = r["scale_meta"]
        lines.append(f"\n-- step time vs patch and width (batch 128, load {m['loadavg_start']} -> {m['loadavg_end']})")
        lines.append(
            f"  {'config':10} {'tokens':>6} {'params':>8} {'GFLOP':>7} {'wall ms':>8} {'img/s':>7} {'cpu ms':>8}"
        )
        for k, v in r["scale"].items():
            lines.append(
                f"  {k:10} {v['tokens']:6d} {v['params']:8d} {v['train_step_gflop']:7.2f} "
                f"{v['wall_step_ms']:8.1f} {v['wall_img_s']:7.0f} {v['cpu_step_ms']:8.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part",
        choices=["all", "pipeline", "memory", "scale", "candidates"],
        default="all",
        help="all = pipeline, memory and scale; candidates = img/s of the candidate default/preset models",
    )
    p.add_argument("--batches", type=int, default=100, help="pipeline batches timed per contender")
    p.add_argument("--full", action="store_true", help="memory: run the whole default main job")
    p.add_argument("--patches", type=int, nargs="+", default=[4, 7])
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--threads", type=int, default=None)
    C.add_malloc_arg(p)
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args(argv)
    C.configure_like_trainer(tune_malloc=not a.no_tune_malloc)
    parts = ("pipeline", "memory", "scale") if a.part == "all" else (a.part,)
    r = run(parts, a.batches, a.full, tuple(a.patches), tuple(a.widths), a.threads, not a.no_save)
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
