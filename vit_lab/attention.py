"""Where a ViT run looks: the class token's (or mean token's) attention over the patches per layer and head,
attention rollout (Abnar and Zuidema 2020), figures of both, and a deletion test of the rollout's faithfulness.

    python -m vit_lab.attention RUN_DIR --images 16 --out attn.png        # rollout over 16 test digits
    python -m vit_lab.attention RUN_DIR --layers --images 6 --out layers.png   # each layer's map, then rollout
    python -m vit_lab.attention RUN_DIR --heads --out heads.png           # every layer and head of one digit
    python -m vit_lab.attention RUN_DIR --pick misclassified              # digits the model gets wrong
    python -m vit_lab.attention RUN_DIR --deletion 200 --fraction 0.1     # mask top-rollout vs random patches
    python -m vit_lab.attention RUN_DIR --ink 1000                        # attention on strokes, per layer

The probabilities come from ``MyViT.forward_with_attention``, a side path that every attention style and
kernel shares and that training never takes. Runs are loaded as ``vit_lab.evaluate`` loads them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vit_lab.errors import UserError
from vit_lab.evaluate import WEIGHTS, LoadedRun, batches, load, normalise, probabilities
from vit_lab.models.vit import MyViT, patchify


def vit(model: torch.nn.Module) -> MyViT:
    if not isinstance(model, MyViT):
        raise UserError(f"attention maps need a ViT run (model=vit); this run's model is a {type(model).__name__}")
    return model


def attention_maps(model: MyViT, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and attention probabilities (B, layers, heads, N, N) of a MyViT."""
    logits, maps = vit(model).forward_with_attention(images)
    return logits, torch.stack(maps, dim=1)


def token_attention(maps: torch.Tensor, pool: str, prefix: int = 1) -> torch.Tensor:
    """(B, L, h, N, N) -> (B, L, h, P): the class token's attention over the P patches (pool=cls; the ``prefix``
    class and distillation tokens skipped), or the mean token's (pool=mean: the average of every token's row)."""
    return maps[..., 0, prefix:] if pool == "cls" else maps.mean(dim=-2)


def rollout(maps: torch.Tensor, pool: str, prefix: int = 1) -> torch.Tensor:
    """Attention rollout, (B, L, h, N, N) -> (B, P) summing to 1: average the heads, add the identity (the
    residual), renormalise the rows, multiply the layers' matrices; the class token's (or mean) row over patches
    (the ``prefix`` columns of the class and distillation tokens skipped)."""
    a = maps.mean(dim=2)
    a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    a = a / a.sum(dim=-1, keepdim=True)
    r = a[:, 0]
    for layer in range(1, a.shape[1]):  # a handful of layers: the product runs batched over images
        r = a[:, layer] @ r
    row = r[:, 0, prefix:] if pool == "cls" else r.mean(dim=1)
    return row / row.sum(dim=-1, keepdim=True)


def patch_grid(model: MyViT) -> tuple[int, int, int, int]:
    """(rows, cols, patch height, patch width) of the model's patch grid."""
    (_, h, w), (ph, pw) = model.chw, model.patch_size
    return h // ph, w // pw, ph, pw


def to_pixels(model: MyViT, per_patch: torch.Tensor) -> torch.Tensor:
    """(B, P) -> (B, H, W): each patch's value spread over its pixels."""
    gh, gw, ph, pw = patch_grid(model)
    b = per_patch.shape[0]
    return per_patch.reshape(b, gh, 1, gw, 1).expand(b, gh, ph, gw, pw).reshape(b, gh * ph, gw * pw)


def mask_patches(model: MyViT, x: torch.Tensor, patches: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Set the given patch indices (B, k) of normalised images (B, C, H, W) to ``fill`` (C,), per channel."""
    chosen = torch.zeros(x.shape[0], model.n_patches, dtype=torch.bool, device=x.device).scatter_(1, patches, True)
    pixels = to_pixels(model, chosen).unsqueeze(1)
    return torch.where(pixels, fill.reshape(1, -1, 1, 1).to(x), x)


def background(run: LoadedRun) -> torch.Tensor:
    """A black pixel (0) as the model sees it: MNIST's background, so a masked patch reads as empty."""
    mean = torch.as_tensor(run.spec.mean, dtype=torch.float32)
    std = torch.as_tensor(run.spec.std, dtype=torch.float32)
    return -mean / std if run.spec.normalize else torch.zeros_like(mean)


@torch.no_grad()
def deletion_test(
    run: LoadedRun, x: torch.Tensor, y: torch.Tensor, fraction: float = 0.1, draws: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Mask the top ``fraction`` of patches by rollout, and as many random patches (``draws`` times), and compare
    the true-class probability: a faithful map lowers it more than chance does."""
    from scipy import stats

    model = vit(run.model)
    pool = model.pool
    k = max(1, round(fraction * model.n_patches))
    logits, maps = attention_maps(model, x)
    rows = torch.arange(len(y))

    def true_prob(images: torch.Tensor) -> torch.Tensor:
        return probabilities(model, model(images))[rows, y]

    base = probabilities(model, logits)[rows, y]
    fill = background(run)
    top = true_prob(mask_patches(model, x, rollout(maps, pool, model.n_prefix).topk(k, dim=1).indices, fill))
    gen = torch.Generator().manual_seed(seed)
    rand = torch.stack(
        [
            true_prob(
                mask_patches(
                    model,
                    x,
                    torch.rand(len(y), model.n_patches, generator=gen).argsort(dim=1)[:, :k].to(x.device),
                    fill,
                )
            )
            for _ in range(draws)
        ]
    ).mean(0)
    paired = stats.ttest_rel(top.cpu().numpy(), rand.cpu().numpy(), alternative="less")
    return {
        "n": len(y),
        "fraction": fraction,
        "patches_masked": k,
        "patches": model.n_patches,
        "random_draws": draws,
        "prob_true_original": base.mean().item(),
        "prob_true_top_masked": top.mean().item(),
        "prob_true_random_masked": rand.mean().item(),
        "drop_top": (base - top).mean().item(),
        "drop_random": (base - rand).mean().item(),
        "share_top_lower": (top < rand).float().mean().item(),
        "paired_t": float(paired.statistic),
        "p_value": float(paired.pvalue),
        "faithful": bool((base - top).mean() > (base - rand).mean()),
    }


@torch.no_grad()
def ink_attention(run: LoadedRun, n: int, threshold: int = 128) -> dict[str, Any]:
    """Where the attention goes, per layer and head: the share of the class token's (or mean token's) attention
    over the patches that lands on patches with ink (a pixel >= ``threshold``), on ``n`` test images. Against
    ``ink_patch_share`` (uniform attention): above it, a head looks at the strokes; below, at the background."""
    model = vit(run.model)
    raw, x, _, _ = test_images(run, n, "first")
    _, maps = attention_maps(model, x)
    ink = (patchify(raw.float(), model.patch_size).amax(dim=-1) >= threshold).float()  # (B, P)
    tok = token_attention(maps, model.pool, model.n_prefix)  # (B, L, h, P)
    shares = (tok * ink[:, None, None]).sum(-1) / tok.sum(-1)  # of the attention over patches
    doc = {
        "n": len(x),
        "threshold": threshold,
        "ink_patch_share": ink.mean().item(),
        "layers": shares.mean(0).tolist(),
        "rollout": (rollout(maps, model.pool, model.n_prefix) * ink).sum(-1).mean().item(),
    }
    if model.pool == "cls":  # what the class token keeps for itself
        doc["cls_self"] = maps[..., 0, 0].mean(dim=(0, 2)).tolist()
    return doc


def describe_ink(d: dict[str, Any]) -> list[str]:
    lines = [
        f"ink share on {d['n']} test images: {100 * d['ink_patch_share']:.0f}% of patches hold ink (a pixel >= "
        f"{d['threshold']}); rollout puts {100 * d['rollout']:.0f}% of its weight there"
    ]
    for i, heads in enumerate(d["layers"]):
        own = f"; the class token keeps {100 * d['cls_self'][i]:.0f}% for itself" if "cls_self" in d else ""
        lines.append(
            f"layer {i + 1}: {100 * sum(heads) / len(heads):.0f}% of the attention over patches on ink "
            f"(heads: {', '.join(f'{100 * h:.0f}%' for h in heads)}){own}"
        )
    return lines


def describe_deletion(d: dict[str, Any]) -> str:
    return (
        f"{d['n']} test images, {d['patches_masked']} of {d['patches']} patches masked: true-class probability "
        f"{d['prob_true_original']:.4f} -> {d['prob_true_top_masked']:.4f} (top rollout) vs "
        f"{d['prob_true_random_masked']:.4f} (random); lower in {100 * d['share_top_lower']:.0f}% of images; "
        f"paired t {d['paired_t']:.2f}, one-sided p {d['p_value']:.2g}"
    )


def test_images(run: LoadedRun, n: int, pick: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (or the first ``n`` the model gets wrong): (raw uint8, normalised, labels,
    indices)."""
    data = run.spec.load(seed=run.cfg.trainer.seed)
    images, labels = data.test_images, data.test_labels
    index = torch.arange(len(labels))
    if pick == "misclassified":
        from vit_lab.evaluate import predict_all

        preds, _ = predict_all(run, batches(run, images, labels))
        index = (preds != labels).nonzero().flatten()
    index = index[:n]
    if len(index) == 0:
        raise UserError(f"no test images to show (--pick {pick}, --images {n})")
    return images[index], normalise(run, images[index]), labels[index].to(run.device), index


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw(cells: list[dict], ncols: int, out: str | Path, title: str, cell_inches: float = 1.6) -> Path:
    """A grid of panels, each a grey image (``image``, H x W) with an optional heat overlay (``heat``, H x W) and a
    ``title`` (red when ``wrong``)."""
    plt = _pyplot()
    nrows = math.ceil(len(cells) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell_inches * ncols, (cell_inches + 0.15) * nrows + 0.5), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, cell in zip(axes.flat, cells):
        ax.imshow(cell["image"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if cell.get("heat") is not None:
            heat = cell["heat"] / max(float(cell["heat"].max()), 1e-12)
            ax.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(cell.get("title", ""), fontsize=8, color="tab:red" if cell.get("wrong") else "black")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from vit_lab.io import save_png

    return save_png(fig, out)


@torch.no_grad()
def figure(run: LoadedRun, n: int, out: str | Path, mode: str = "rollout", pick: str = "first") -> Path:
    """The rollout grid (mode rollout), each layer's head-averaged map then the rollout per image (layers), or
    every layer and head of the first image (heads)."""
    model = vit(run.model)
    raw, x, y, index = test_images(run, 1 if mode == "heads" else n, pick)
    logits, maps = attention_maps(model, x)
    pred, pool = logits.argmax(dim=1), model.pool
    gray = raw[:, 0].cpu() if raw.shape[1] == 1 else raw.float().mean(dim=1).cpu()
    roll = to_pixels(model, rollout(maps, pool, model.n_prefix)).cpu()
    layer_maps = token_attention(maps, pool, model.n_prefix)  # (B, L, h, P)
    depth, heads = layer_maps.shape[1:3]

    def label(i: int) -> dict:
        return {"title": f"#{int(index[i])} true {int(y[i])} pred {int(pred[i])}", "wrong": bool(pred[i] != y[i])}

    if mode == "rollout":
        cells = [{"image": gray[i], "heat": roll[i], **label(i)} for i in range(len(y))]
        return draw(cells, min(len(cells), 8), out, f"Attention rollout ({run.weights} weights; red: misclassified)")
    if mode == "layers":
        per_layer = to_pixels(model, layer_maps.mean(dim=2).flatten(0, 1)).reshape(len(y), depth, *roll.shape[1:]).cpu()
        cells = []
        for i in range(len(y)):
            cells.append({"image": gray[i], **label(i)})
            cells += [{"image": gray[i], "heat": per_layer[i, d], "title": f"layer {d + 1}"} for d in range(depth)]
            cells.append({"image": gray[i], "heat": roll[i], "title": "rollout"})
        return draw(
            cells,
            depth + 2,
            out,
            f"{'Class' if pool == 'cls' else 'Mean'}-token attention per layer (heads averaged), then rollout",
        )
    maps_px = to_pixels(model, layer_maps[0].flatten(0, 1)).reshape(depth, heads, *roll.shape[1:]).cpu()
    cells = [
        {"image": gray[0], "heat": maps_px[d, h], "title": f"layer {d + 1} head {h + 1}"}
        for d in range(depth)
        for h in range(heads)
    ]
    return draw(cells, heads, out, f"Every head of every layer: {label(0)['title']}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vit_lab.attention", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data=NAME, data.KEY=VALUE, device=NAME")
    p.add_argument("--weights", choices=tuple(WEIGHTS), default="last")
    p.add_argument("--images", type=int, default=16, help="test images to draw (default 16)")
    p.add_argument(
        "--pick",
        choices=("first", "misclassified"),
        default="first",
        help="the first test images, or the first ones the model gets wrong",
    )
    view = p.add_mutually_exclusive_group()
    view.add_argument("--layers", action="store_true", help="each layer's map (heads averaged), then the rollout")
    view.add_argument("--heads", action="store_true", help="every layer and head of the first picked image")
    p.add_argument("--out", metavar="FILE.png", help="the figure (default RUN_DIR/attention[_layers|_heads].png)")
    p.add_argument("--deletion", type=int, metavar="N", help="instead of a figure: the deletion test on N test images")
    p.add_argument("--fraction", type=float, default=0.1, help="share of patches the deletion test masks (default 0.1)")
    p.add_argument("--draws", type=int, default=5, help="random masks per image in the deletion test (default 5)")
    p.add_argument(
        "--ink",
        type=int,
        metavar="N",
        help="instead of a figure: the share of each layer's and head's "
        "attention on patches with ink (strokes) against background, over N test images",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from vit_lab.io import write_json

    args = _parser().parse_args(argv)
    try:
        counts = (args.images, args.draws, *(v for v in (args.deletion, args.ink) if v is not None))
        if not 0 < args.fraction < 1 or min(counts) < 1:
            raise UserError("--fraction must be in (0, 1); --images, --draws, --deletion and --ink at least 1")
        run = load(args.run_dir, args.weights, args.overrides)
        if args.ink:
            doc = ink_attention(run, args.ink)
            out = write_json(args.out or run.dir / "ink.json", {"run_dir": str(run.dir), "weights": run.weights, **doc})
            print("\n".join(describe_ink(doc)) + f"\nwrote {out}")
            return 0
        if args.deletion:
            _, x, y, _ = test_images(run, args.deletion, "first")
            doc = deletion_test(run, x, y, args.fraction, args.draws)
            out = write_json(
                args.out or run.dir / "deletion.json", {"run_dir": str(run.dir), "weights": run.weights, **doc}
            )
            print(f"deletion test: {describe_deletion(doc)}; wrote {out}")
            return 0
        mode = "layers" if args.layers else "heads" if args.heads else "rollout"
        out = figure(
            run,
            args.images,
            args.out or run.dir / f"attention{'' if mode == 'rollout' else '_' + mode}.png",
            mode,
            args.pick,
        )
    except (UserError, OmegaConfBaseException) as e:
        print(f"vit_lab.attention: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
