"""Image folders: one sub-folder of PNG/JPEG files per class, decoded once (torchcodec or torchvision.io) and cached.

The first run decodes every file (converted to ``data.channels``, resized to ``data.image_size``) into one uint8
tensor and writes it atomically to a cache file keyed by the folder, the size and every file's name, size and
mtime; later runs load that file, so they start as fast as the IDX sets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import DataError
from ..io import atomic_write
from .checks import invalid, is_num, one_line
from .datasets import Arrays, InMemoryDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1
log = logging.getLogger(__name__)


def scan(folder: Path) -> tuple[list[str], list[Path], list[int]]:
    """Class names (sorted sub-folder names), image files and their class index; one DataError per bad folder."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: image folder not found; set data.root=... (or VIT_LAB_DATA) and "
            "data.train_dir / data.test_dir to folders holding one sub-folder of images per class"
        )
    try:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataError(
                f"{folder}: no class folders; put the images in one sub-folder per class "
                f"(e.g. {folder / 'cat' / '0001.png'})"
            )
        files: list[Path] = []
        labels: list[int] = []
        for i, name in enumerate(classes):
            found = sorted(
                p
                for p in (folder / name).iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
            if not found:
                raise DataError(
                    f"{folder / name}: class folder has no {'/'.join(IMAGE_SUFFIXES)} files; "
                    "add its images or remove the folder"
                )
            files += found
            labels += [i] * len(found)
    except OSError as e:
        raise DataError(f"{e.filename or folder}: cannot list the folder ({one_line(e.strerror or e)})") from None
    return classes, files, labels


def _torchcodec(data: torch.Tensor, channels: int) -> torch.Tensor:
    from torchcodec.decoders import decode_image

    return decode_image(data, mode="GRAY" if channels == 1 else "RGB")  # uint8 output, also for 16-bit PNGs


def _torchvision(data: torch.Tensor, channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import to_dtype

    with warnings.catch_warnings():  # deprecated since torchvision 0.29 in favour of torchcodec: the fallback
        warnings.simplefilter("ignore", DeprecationWarning)
        img = decode_image(data, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    return img if img.dtype == torch.uint8 else to_dtype(img, torch.uint8, scale=True)  # 16-bit PNGs


DECODERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "torchcodec": _torchcodec,
    "torchvision": _torchvision,
}


@functools.cache
def default_decoder() -> str:
    """torchcodec (pip install "vit_lab[images]"), which supersedes torchvision.io's decoders; else torchvision.io."""
    try:
        import torchcodec.decoders  # noqa: F401
    except (ImportError, OSError, RuntimeError):  # absent, or built for another torch
        return "torchvision"
    return "torchcodec"


def decode(path: Path, channels: int, decoder: str | None = None) -> torch.Tensor:
    """One PNG/JPEG file as uint8 (C,H,W), converted to ``channels`` (1: grayscale, 3: RGB)."""
    try:
        raw = path.read_bytes()
        if not raw:
            raise DataError(f"{path}: empty file; replace or remove it")
        img = DECODERS[decoder or default_decoder()](torch.frombuffer(bytearray(raw), dtype=torch.uint8), channels)
    except (OSError, RuntimeError, ValueError) as e:
        why = re.sub(
            r"^[\w()]+, \S+\.cpp:\d+, ", "", one_line(getattr(e, "strerror", None) or e)
        )  # drop the C++ location
        raise DataError(f"{path}: cannot decode the image ({why}); replace or remove the file") from None
    return img


@dataclass(kw_only=True)
class ImageFolderDataset(InMemoryDataset):
    """Train and test folders of class sub-folders (or one folder and a held-out test fraction)."""

    train_dir: str = "images/train"
    test_dir: str | None = "images/test"  # null: hold out test_fraction of train_dir instead
    test_fraction: float = 0.2
    resize: bool = True
    cache: bool = True
    cache_dir: str | None = None  # null: $XDG_CACHE_HOME/vit_lab, else ~/.cache/vit_lab

    bool_keys: ClassVar[tuple[str, ...]] = (*InMemoryDataset.bool_keys, "resize", "cache")

    def check(self) -> None:
        if self.channels not in (1, 3):
            raise invalid("channels", self.channels, "must be 1 (grayscale) or 3 (RGB) for image files")
        if not isinstance(self.train_dir, str) or not self.train_dir:
            raise invalid(
                "train_dir", self.train_dir, "must be a folder (relative to data.root) with one sub-folder per class"
            )
        if self.test_dir is not None and (not isinstance(self.test_dir, str) or not self.test_dir):
            raise invalid(
                "test_dir",
                self.test_dir,
                "must be a folder like data.train_dir, or null to hold out data.test_fraction",
            )
        if self.test_dir is None and (not is_num(self.test_fraction) or not 0 < self.test_fraction < 1):
            raise invalid("test_fraction", self.test_fraction, "must be in (0, 1) when data.test_dir is null")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir):
            raise invalid("cache_dir", self.cache_dir, "must be a folder or null (= $XDG_CACHE_HOME/vit_lab)")

    def read(self, root: Path) -> Arrays:
        train_dir = root / Path(self.train_dir).expanduser()
        classes, train_x, train_y = self._folder(train_dir)
        if len(classes) != self.num_classes:
            shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
            raise DataError(
                f"{train_dir}: {len(classes)} class folders ({shown}) but data.num_classes={self.num_classes}; "
                f"set data.num_classes={len(classes)}"
            )
        if self.test_dir is None:
            test_where = f"{train_dir} (held-out data.test_fraction={self.test_fraction})"
            train_x, train_y, test_x, test_y = self._hold_out(train_x, train_y, train_dir)
        else:
            test_where = str(root / Path(self.test_dir).expanduser())
            test_classes, test_x, local_y = self._folder(Path(test_where))
            unknown = [c for c in test_classes if c not in classes]
            if unknown:
                raise DataError(
                    f"{test_where}: class folder(s) {', '.join(unknown)} are not among the training classes "
                    f"in {train_dir}; both folders need the same class names"
                )
            test_y = torch.tensor([classes.index(c) for c in test_classes], dtype=torch.int64)[local_y]
        where = {
            "train_images": str(train_dir),
            "train_labels": str(train_dir),
            "test_images": test_where,
            "test_labels": test_where,
        }
        return Arrays(train_x, train_y, test_x, test_y, where)

    def _hold_out(self, x: torch.Tensor, y: torch.Tensor, folder: Path) -> tuple[torch.Tensor, ...]:
        n = len(x)
        n_test = round(self.test_fraction * n)
        if not 0 < n_test < n:
            raise DataError(
                f"{folder}: data.test_fraction={self.test_fraction} of {n} images leaves {n_test} test images; "
                "add images, change data.test_fraction or set data.test_dir"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # fixed: one test set whatever the seed
        test, train = perm[:n_test].sort().values, perm[n_test:].sort().values
        return x[train], y[train], x[test], y[test]

    def _folder(self, folder: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """A folder's classes, uint8 images and labels: from the cache when its key matches, else decoded."""
        classes, files, labels = scan(folder)
        y = torch.tensor(labels, dtype=torch.int64)
        decoder = default_decoder()
        key = self._fingerprint(files, decoder)
        path = self._cache_file(folder) if self.cache else None
        x = self._load_cache(path, key, len(files)) if path else None
        if x is None:
            log.info(
                "decoding %d images in %s with %s%s",
                len(files),
                folder,
                decoder,
                f" (once: cached in {path})" if path else "",
            )
            x = self._decode(files, decoder)
            if path:
                self._save_cache(path, key, x)
        return classes, x, y

    def _decode(self, files: list[Path], decoder: str) -> torch.Tensor:
        from torchvision.transforms.v2.functional import resize

        c, h, w = self.chw
        out = torch.empty((len(files), c, h, w), dtype=torch.uint8)
        fits = None  # the first file already of data.image_size, quoted when sizes are mixed
        for i, path in enumerate(files):  # I/O: once per file, at cache-build time only
            img = decode(path, c, decoder)
            got = (img.shape[1], img.shape[2])
            if got != (h, w):
                if not self.resize:
                    raise self._size_error(path, got, fits)
                img = resize(img, [h, w], antialias=True)
            elif fits is None:
                fits = path
            out[i] = img
        return out

    def _size_error(self, path: Path, hw: tuple[int, int], fits: Path | None) -> DataError:
        size, got = list(self.image_size), f"{hw[0]}x{hw[1]}"
        if fits is None:
            return DataError(
                f"{path}: image is {got} but data.image_size={size} and data.resize=false; set "
                f"data.image_size=[{hw[0]}, {hw[1]}] if every image is {got}, or data.resize=true"
            )
        return DataError(
            f"{path}: image is {got} but {fits} is {size[0]}x{size[1]}: mixed sizes with data.resize=false; "
            f"set data.resize=true to resize every image to data.image_size={size}"
        )

    # ---- the cache
    def _fingerprint(self, files: list[Path], decoder: str) -> str:
        """Changes when any file is added, removed, renamed or rewritten, or the decoding settings change."""
        h = hashlib.sha256(json.dumps([CACHE_VERSION, self.chw, self.resize, decoder]).encode())
        try:
            for p in files:
                st = p.stat()
                h.update(f"{p.parent.name}/{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError as e:
            raise DataError(f"{e.filename}: cannot read ({one_line(e.strerror or e)})") from None
        return h.hexdigest()

    def _cache_file(self, folder: Path) -> Path:
        if self.cache_dir:
            base = Path(self.cache_dir).expanduser()
            if not base.is_absolute():
                from hydra.utils import to_absolute_path  # the launch folder, as for data.root

                base = Path(to_absolute_path(str(base)))
        else:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vit_lab"
        tag = hashlib.sha256(json.dumps([str(folder.resolve()), self.chw, self.resize]).encode()).hexdigest()[:16]
        return base / f"image_folder-{folder.name}-{tag}.pt"

    @staticmethod
    def _load_cache(path: Path, key: str, n: int) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable cache is rebuilt, never fatal
            log.warning("ignoring the image cache %s (%s); decoding again", path, one_line(e))
            return None
        x = saved.get("images") if isinstance(saved, dict) and saved.get("key") == key else None
        return x if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and len(x) == n else None

    @staticmethod
    def _save_cache(path: Path, key: str, x: torch.Tensor) -> None:
        try:
            atomic_write(path, lambda f: torch.save({"key": key, "images": x}, f), mode="wb")
        except OSError as e:  # a read-only cache folder costs the next run a decode, not this run
            log.warning("could not write the image cache %s (%s); the next run decodes again", path, one_line(e))
