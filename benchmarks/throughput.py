"""Training and eval throughput (images/s), side by side in one process, alternating round by round.

    python -m benchmarks.throughput                          # both sizes, ~2-3 minutes on 2 busy cores
    python -m benchmarks.throughput --size default --compile --rounds 15     # + torch.compile'd contenders
    python -m benchmarks.throughput --threads 1              # one thread: the most stable ratios on a shared box

Contenders, at identical architecture, batch size and thread count, on the same fixed batch:

- ``vit_lab``: ``MyViT`` built from the trainer's own composed config (``conf/``) at the size, trained with the
  trainer's step (AdamW with its param groups, CE on float logits, zero_grad(set_to_none)); torch.compile'd
  iff ``device.compile`` is on in the config, i.e. the path ``python -m vit_lab.train`` really uses;
- ``vit_lab_tutorial_style`` (tutorial size): the same with the tutorial's attention and softmax head;
- ``tutorial_loop``: the seed tutorial's loop model (``benchmarks/tutorial_model.py``);
- ``timm``: timm's ``VisionTransformer`` (Conv2d patch embed, fused qkv + SDPA), eager;
- ``vit_pytorch``: lucidrains' ``ViT`` (einops patches, one qkv projection);
- with ``--compile``: ``timm_compiled`` and ``vit_lab_compiled`` (torch.compile, inductor); compile time is
  reported separately and is not part of the steady-state throughput.

Each figure is the median over rounds; ratios are to ``vit_lab``. Two clocks are reported: wall time, and
process CPU time (robust to other users' load on a shared machine). The load average is recorded.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import torch

from benchmarks import _common as C
from benchmarks.tutorial_model import from_size


def contenders(
    size_name: str, x: torch.Tensor, y: torch.Tensor, compile_: bool, loop: bool, overrides: list[str] | None = None
) -> tuple[dict[str, C.Contender], dict[str, float]]:
    size = C.SIZES[size_name]
    out: dict[str, C.Contender] = {}
    torch.manual_seed(0)
    model, cfg = C.build_vit_lab(size, overrides)
    chw, classes = C.data_shape(cfg)  # every contender is built for the data's image shape and classes
    comp = C.trainer_compile(cfg)
    path = f"compiled, mode {comp}" if comp else "eager"

    def contender(name, m, **kw):  # every contender trains with the composed config's optimizer
        return C.make_contender(name, m, x, y, cfg=cfg, **kw)

    out["vit_lab"] = contender(
        "vit_lab", model, compile=comp, note=f"trainer default path ({path}), {C.n_params(model):,} params"
    )
    if size_name == "tutorial":
        tmodel, _ = C.build_vit_lab(
            size,
            ["model.attention=tutorial", "model.pos_embed=sinusoidal", "model.head_softmax=true"]
            + list(overrides or []),
        )
        out["vit_lab_tutorial_style"] = contender(
            "vit_lab_tutorial_style", tmodel, note="tutorial attention + softmax head"
        )
    if loop:
        lm = from_size(size, chw, classes)
        out["tutorial_loop"] = contender("tutorial_loop", lm, note=f"{C.n_params(lm):,} params")
    tm = C.build_timm(size, chw, classes)
    out["timm"] = contender("timm", tm, note=f"eager, {C.n_params(tm):,} params")
    try:
        vp = C.build_vit_pytorch(size, chw, classes)
        out["vit_pytorch"] = contender("vit_pytorch", vp, note=f"eager, {C.n_params(vp):,} params")
    except ImportError:  # pragma: no cover - the bench extra is missing
        warnings.warn("vit-pytorch is not installed (pip install -e '.[bench]'); skipped", stacklevel=2)
    compile_seconds: dict[str, float] = {}
    if compile_:
        tc = C.build_timm(size, chw, classes)
        out["timm_compiled"] = contender("timm_compiled", tc, compile=True, note="torch.compile")
        if not comp:
            mc, _ = C.build_vit_lab(size, overrides)
            out["vit_lab_compiled"] = contender("vit_lab_compiled", mc, compile=True, note="torch.compile")
    for name, c in out.items():  # the first call compiles (if at all): time it apart from the measurement
        t0 = time.perf_counter()
        c.train_step()
        c.eval_step()
        if "compiled" in name or (name == "vit_lab" and comp):
            compile_seconds[name] = time.perf_counter() - t0
    return out, compile_seconds


def run(
    sizes=("tutorial", "default"),
    batch: int = 128,
    rounds: int = 5,
    steps: int = 2,
    threads: int | None = None,
    compile_: bool = False,
    loop: bool = True,
    overrides: list[str] | None = None,
    save: bool = True,
    eval_: bool = True,
) -> dict:
    C.set_threads(threads)
    results: dict[str, Any] = {"batch": batch, "threads": torch.get_num_threads(), "rounds": rounds, "sizes": {}}
    chw, classes = C.data_shape(C.compose(overrides))  # the same data for every size
    for size_name in sizes:
        load0 = C.loadavg()
        x, y = C.synthetic_batch(batch, chw, classes=classes)
        cs, compile_seconds = contenders(size_name, x, y, compile_, loop, overrides)
        per: dict = {}
        raw: dict = {}
        for phase in ("train",) + (("eval",) if eval_ else ()):
            fns = {k: (c.train_step if phase == "train" else c.eval_step) for k, c in cs.items()}
            # the loop model is 10-50x slower: one call per chunk keeps its rounds short
            per_fn = {k: (1 if k == "tutorial_loop" else steps) for k in fns}
            times = C.interleaved(fns, steps=per_fn, rounds=rounds, warmup=1)
            raw[phase] = times
            for clock in C.CLOCKS:
                ref = C.per_call(times["vit_lab"], clock)
                for k in cs:
                    t = C.per_call(times[k], clock)
                    per.setdefault(k, {"note": cs[k].note})[f"{phase}_{clock}_img_s"] = batch / t
                    per[k][f"{phase}_{clock}_ratio_to_vit_lab"] = ref / t
        for k, v in compile_seconds.items():
            per[k]["compile_seconds"] = v
        results["sizes"][size_name] = {
            "size": C.SIZES[size_name],
            "contenders": per,
            "loadavg_start": load0,
            "loadavg_end": C.loadavg(),
            "raw_seconds_per_step": raw,
        }
    if save:
        results["saved"] = str(C.save("throughput", results))
    return results


def report(r: dict) -> str:
    lines = []
    for size_name, s in r["sizes"].items():
        lines.append(
            f"\n== {size_name} size {s['size']}, batch {r['batch']}, {r['threads']} thread(s), "
            f"load {s['loadavg_start']} -> {s['loadavg_end']}"
        )
        lines.append(
            f"{'contender':24} {'train img/s':>11} {'x vit_lab':>9} {'cpu-clock x':>11} {'best img/s':>10} "
            f"{'best x':>7} {'eval img/s':>10} {'x vit_lab':>9}  note"
        )
        for k, v in s["contenders"].items():
            lines.append(
                f"{k:24} {v['train_wall_img_s']:11.0f} {v['train_wall_ratio_to_vit_lab']:9.3f} "
                f"{v['train_cpu_ratio_to_vit_lab']:11.3f} {v['train_best_img_s']:10.0f} "
                f"{v['train_best_ratio_to_vit_lab']:7.3f} {v.get('eval_wall_img_s', float('nan')):10.0f} "
                f"{v.get('eval_wall_ratio_to_vit_lab', float('nan')):9.3f}  {v['note']}"
                + (f"; compile {v['compile_seconds']:.0f}s" if "compile_seconds" in v else "")
            )
    lines.append(
        "\n'x vit_lab' = contender throughput / vit_lab throughput, medians of wall-clock rounds; cpu-clock: "
        "medians of process CPU time; best: fastest round of each (least disturbed by other load). "
        "vit_lab / tutorial_loop = 1 / its ratio."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["both", *sorted(C.SIZES)], default="both")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="calls per timed chunk")
    p.add_argument("--compile", action="store_true", help="add torch.compile'd timm (and vit_lab if not default)")
    p.add_argument("--no-loop", action="store_true", help="skip the (slow) tutorial loop model")
    p.add_argument("--no-eval", action="store_true")
    C.add_step_args(p)
    a = C.parse_step_args(p, argv)
    sizes = ("tutorial", "default") if a.size == "both" else (a.size,)
    r = run(
        sizes,
        a.batch,
        a.rounds,
        a.steps,
        a.threads,
        a.compile,
        not a.no_loop,
        a.overrides,
        not a.no_save,
        not a.no_eval,
    )
    return C.print_result(r, report)


if __name__ == "__main__":
    main()
