"""Classify image files with a run's model.

    python -m vit_lab.predict RUN_DIR digit.png photo.jpg          # class and probability per file
    python -m vit_lab.predict RUN_DIR *.png --format json --top 3
    python -m vit_lab.predict RUN_DIR scan.png --invert            # dark ink on a light background

Files are read with ``torchvision.io`` (PNG, JPEG, GIF, WEBP), converted to the run's channels (grayscale for
1-channel data, RGB for 3), resized to its image size, then scaled and normalised as in training
(``vit_lab.data.Batches``). A file that cannot be used is one line on stderr; the other files are still answered,
and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vit_lab.errors import UserError
from vit_lab.evaluate import WEIGHTS, LoadedRun, load, normalise, probabilities


def read_image(path: str | Path, chw: Sequence[int], invert: bool = False) -> torch.Tensor:
    """A file as a uint8 (C, H, W) tensor in the model's channels and size."""
    from torchvision.transforms.v2 import functional as TF

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for TorchCodec's; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, read_file

    c, h, w = (int(v) for v in chw)
    mode = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}.get(c, ImageReadMode.UNCHANGED)
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode_image(read_file(str(path)), mode=mode)
    except (RuntimeError, ValueError, OSError) as e:
        why = " ".join(str(e).split())[:120]
        raise UserError(f"{path}: not a readable PNG, JPEG, GIF or WEBP image ({why})") from None
    if img.shape[0] != c:
        raise UserError(
            f"{path}: has {img.shape[0]} channels, but the model takes {c}-channel images "
            f"(data.channels={c}); convert the file to {c} channels"
        )
    if img.dtype != torch.uint8:  # 16-bit PNGs
        img = TF.to_dtype(img, torch.uint8, scale=True)
    if tuple(img.shape[1:]) != (h, w):
        img = TF.resize(img, [h, w], antialias=True)
    return 255 - img if invert else img


@torch.no_grad()
def classify(run: LoadedRun, images: torch.Tensor, top: int = 1) -> list[list[tuple[int, float]]]:
    """uint8 images (B, C, H, W) -> per image, the ``top`` (class, probability) pairs, most likely first."""
    from vit_lab.device import autocast

    with autocast(run.device, run.precision):
        p = probabilities(run.model, run.model(normalise(run, images)))
    probs, classes = p.topk(min(top, p.shape[1]), dim=1)
    return [list(zip(c.tolist(), pr.tolist())) for c, pr in zip(classes.cpu(), probs.cpu())]


def predict_files(run: LoadedRun, files: Sequence[str], top: int = 1, invert: bool = False) -> list[dict[str, Any]]:
    """One record per file, in order: ``class``, ``probability``, ``top``; or ``error``."""
    records: list[dict[str, Any]] = []
    good: list[tuple[int, torch.Tensor]] = []
    for i, f in enumerate(files):
        try:
            good.append((i, read_image(f, run.spec.chw, invert)))
            records.append({"file": f})
        except UserError as e:
            records.append({"file": f, "error": str(e)})
    if good:
        answers = classify(run, torch.stack([img for _, img in good]), top)
        for (i, _), ranked in zip(good, answers):
            records[i].update({"class": ranked[0][0], "probability": ranked[0][1], "top": [list(r) for r in ranked]})
    return records


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    p = argparse.ArgumentParser(prog="python -m vit_lab.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("files", nargs="+", metavar="IMAGE", help="PNG/JPEG files")
    p.add_argument("--weights", choices=tuple(WEIGHTS), default="last", help="last (default) or best")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--top", type=int, default=1, help="also list the next most likely classes (default 1)")
    p.add_argument("--invert", action="store_true", help="invert the pixels (dark digits on a light background)")
    args = p.parse_args(argv)
    try:
        if args.top < 1:
            raise UserError(f"--top {args.top}: must be at least 1")
        run = load(args.run_dir, args.weights)
        records = predict_files(run, args.files, args.top, args.invert)
    except (UserError, OmegaConfBaseException) as e:
        print(f"vit_lab.predict: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for r in records:
        if "error" in r:
            print(f"vit_lab.predict: error: {r['error']}", file=sys.stderr)
        elif args.format == "text":
            ranked = ", ".join(f"{c} ({p:.3f})" for c, p in r["top"])
            print(f"{r['file']}: {ranked}")
    if args.format == "json":
        print(json.dumps(records, indent=2))
    return 2 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
