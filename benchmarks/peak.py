"""Share of the machine's peak: analytic FLOPs of a training step / its time, against measured fp32 matmul GFLOP/s.

    python -m benchmarks.peak                      # default size, batch 128, ~1-2 minutes
    python -m benchmarks.peak --size tutorial --threads 1 --rounds 20

Counting convention (the usual one): only matrix products count (linear layers, patch embedding, q k^T and
attention @ v; 2 FLOPs per multiply-add); a training step is 3x the forward (the backward computes the
gradient w.r.t. the input and w.r.t. the weights, each as large as the forward product). LayerNorm, GELU,
softmax, the optimizer and the loss are not counted: they are the "overhead" that keeps a step below peak.

The peak is what torch's fp32 ``mm`` reaches in the same process, at the same thread count, measured in
rounds alternating with the training step (so both see the same machine load). Two references are
reported: a large square product (``--peak-n``, the machine's practical peak) and the step's own biggest
product shape (what these small matrices can reach at best).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks import _common as C


def vit_forward_flops(
    batch: int,
    chw=(1, 28, 28),
    patch: int = 4,
    width: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    attention: str = "fused",
    pool: str = "cls",
    out_d: int = 10,
    cls_shortcut: bool | None = None,
) -> dict:
    """Matmul FLOPs of one forward pass of ``MyViT`` (2 per multiply-add), itemised.

    ``cls_shortcut`` (default: on with cls pooling, as MyViT does): the last block computes only the class
    token's row (queries, projection and MLP for 1 token; keys and values for all). Off gives the nominal
    FLOPs of a ViT that runs every token through every block (what timm executes). The tutorial style counts
    its per-head q/k/v products (the model's arithmetic); MyMSA runs them as one block-diagonal product,
    ``heads`` times as many multiply-adds.
    """
    c, h, w = chw
    n = (h // patch) * (w // patch)
    t = n + (pool == "cls")
    d, m, dh = width, int(round(mlp_ratio * width)), width // heads
    shortcut = (pool == "cls") if cls_shortcut is None else bool(cls_shortcut and pool == "cls")

    def block(tq: int) -> dict:  # tq query tokens attend over t tokens
        if attention == "fused":
            qkv, proj = 2 * batch * (tq * d * d + t * d * 2 * d), 2 * batch * tq * d * d
        else:  # per head: q, k, v Linear(dh, dh) on the head's slice; no output projection
            qkv, proj = 2 * batch * heads * (tq * dh * dh + t * 2 * dh * dh), 0
        return {
            "qkv": qkv,
            "attention": 2 * (2 * batch * heads * tq * t * dh),
            "proj": proj,
            "mlp": 2 * (2 * batch * tq * d * m),
        }

    items = {"patch_embed": 2 * batch * n * (c * patch * patch) * d, "qkv": 0, "attention": 0, "proj": 0, "mlp": 0}
    for i in range(depth):
        for k, v in block(1 if shortcut and i == depth - 1 else t).items():
            items[k] += v
    items["head"] = 2 * batch * d * out_d
    items["total"] = sum(items.values())
    return items


def train_step_flops(batch: int, **kw) -> int:
    """Matmul FLOPs of a training step: forward + backward = 3x the forward."""
    return 3 * vit_forward_flops(batch, **kw)["total"]


def mm_fn(m: int, k: int, n: int):
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)

    def fn() -> None:
        torch.mm(a, b, out=out)

    return fn, 2 * m * k * n


def shares(times: dict, clock: str, batch: int, flops, nominal, big_flops, shaped_flops) -> dict:
    """One clock's step time, achieved GFLOP/s and their shares of the two matmul peaks."""
    t_step = C.per_call(times["train_step"], clock)
    peak = big_flops / C.per_call(times["mm_square"], clock)
    shaped_peak = shaped_flops / C.per_call(times["mm_step_shape"], clock)
    achieved = flops / t_step
    return {
        "step_seconds": t_step,
        "images_per_second": batch / t_step,
        "achieved_gflops": achieved / 1e9,
        "peak_gflops_square": peak / 1e9,
        "peak_gflops_step_shape": shaped_peak / 1e9,
        "share_of_peak": achieved / peak,
        "share_of_step_shape_peak": achieved / shaped_peak,
        "nominal_share_of_peak": nominal / t_step / peak,
    }


def run(
    size_name: str = "default",
    batch: int = 128,
    rounds: int = 8,
    steps: int = 3,
    threads: int | None = None,
    peak_n: int = 1024,
    overrides: list[str] | None = None,
    save: bool = True,
) -> dict:
    C.set_threads(threads)
    size = C.SIZES[size_name]
    load0 = C.loadavg()
    model, cfg = C.build_vit_lab(size, overrides)
    chw, classes = C.data_shape(cfg)
    x, y = C.synthetic_batch(batch, chw, classes=classes)
    contender = C.make_contender("vit_lab", model, x, y, compile=C.trainer_compile(cfg), cfg=cfg)
    m = cfg.model
    kw = dict(
        chw=chw,
        out_d=classes,
        patch=m.patch_size,
        width=m.hidden_d,
        depth=m.depth,
        heads=m.n_heads,
        mlp_ratio=m.mlp_ratio,
        attention=m.attention,
        pool=m.pool,
    )
    flops = train_step_flops(batch, **kw)  # what vit_lab executes
    nominal = train_step_flops(batch, cls_shortcut=False, **kw)  # a ViT running every token through every block
    tokens = batch * ((chw[1] // m.patch_size) * (chw[2] // m.patch_size) + (m.pool == "cls"))
    big, big_flops = mm_fn(peak_n, peak_n, peak_n)
    # the step's largest product: the MLP's first linear, (B*T, d) @ (d, mlp)
    shaped, shaped_flops = mm_fn(tokens, m.hidden_d, int(round(m.mlp_ratio * m.hidden_d)))
    times = C.interleaved(
        {"train_step": contender.train_step, "mm_square": big, "mm_step_shape": shaped}, steps=steps, rounds=rounds
    )
    result = {
        "size": size_name,
        "batch": batch,
        "config": kw,
        "train_step_flops": flops,
        "nominal_train_step_flops": nominal,
        "forward_flops": vit_forward_flops(batch, **kw),
        "loadavg_start": load0,
        "threads": torch.get_num_threads(),
    }
    for clock in C.CLOCKS:
        result[clock] = shares(times, clock, batch, flops, nominal, big_flops, shaped_flops)
    result["loadavg_end"] = C.loadavg()
    if save:
        result["saved"] = str(C.save("peak", result))
    return result


def report(r: dict) -> str:
    lines = [
        f"peak share, {r['size']} size, batch {r['batch']}, {r['threads']} thread(s); "
        f"train step = {r['train_step_flops'] / 1e9:.3f} GFLOP executed (matmuls, 3x forward; "
        f"{r['nominal_train_step_flops'] / 1e9:.3f} nominal without the last-block shortcut); "
        f"load {r['loadavg_start']} -> {r['loadavg_end']}"
    ]
    for clock in ("wall", "cpu", "best"):
        v = r[clock]
        lines.append(
            f"  [{clock:4}] step {v['step_seconds'] * 1e3:7.1f} ms ({v['images_per_second']:6.0f} img/s) "
            f"-> {v['achieved_gflops']:6.1f} GFLOP/s; fp32 mm peak {v['peak_gflops_square']:6.1f} GFLOP/s "
            f"(step-shape mm {v['peak_gflops_step_shape']:6.1f}); share {100 * v['share_of_peak']:.0f}% "
            f"of peak ({100 * v['nominal_share_of_peak']:.0f}% counting nominal FLOPs), "
            f"{100 * v['share_of_step_shape_peak']:.0f}% of step-shape mm"
        )
    lines.append(
        "  (wall = median elapsed time; cpu = median process CPU seconds over all threads, robust to other "
        "users' load at 1 thread: shares comparable, GFLOP/s per CPU-second; best = fastest round of each)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(C.SIZES), default="default")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="calls per timed chunk")
    p.add_argument("--peak-n", type=int, default=1024, help="square matmul size for the peak reference")
    C.add_step_args(p)
    a = C.parse_step_args(p, argv)
    r = run(a.size, a.batch, a.rounds, a.steps, a.threads, a.peak_n, a.overrides, save=not a.no_save)
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
