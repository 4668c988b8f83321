"""CIFAR-10 in torchvision's format: the python-pickle batches in ``cifar-10-batches-py``.

Each batch is a pickled dict whose ``data`` is a uint8 array (N, 3072) (1024 red, then green, then blue values of a
32x32 image, row-major) and whose ``labels`` is a list of N class indices; so (N, 3, 32, 32) is one reshape.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import DataError
from .checks import invalid, is_md5, one_line
from .datasets import Arrays, InMemoryDataset, torchvision_download

DOWNLOADERS = ("CIFAR10",)
# The globals a pickled numpy array needs (numpy 1.x wrote numpy.core, 2.x writes numpy._core; Python 3's protocol 2
# writes bytes through _codecs.encode).
_ARRAY_GLOBALS = {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
}
_ARRAY_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a batch file cannot run code when it is read."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never does")


def read_batch(raw: bytes, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR batch's bytes as uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:  # latin1: the original batches were pickled by Python 2 (its str keys and array bytes)
        entry = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # any malformed pickle: truncated, wrong protocol, foreign globals
        raise DataError(
            f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {one_line(e)}); re-download it"
        ) from None
    if not isinstance(entry, dict):
        raise DataError(
            f"{path}: not a CIFAR-10 python batch (a {type(entry).__name__}, not a dict of data and labels); "
            "re-download it"
        )
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}  # bytes: re-pickled files
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array (N, 3072) of 3x32x32 images, got {what}; re-download it")
    try:
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'labels' must be a list of class indices ({one_line(e)}); re-download it") from None
    if y.ndim != 1 or len(y) != len(data):
        raise DataError(f"{path}: {y.numel()} labels for {len(data)} images; re-download it")
    return torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32)), y


@dataclass(kw_only=True)
class CIFAR10Dataset(InMemoryDataset):
    """CIFAR-10's python batches under ``<root>/<subdir>``; torchvision downloads them when missing."""

    name: str = "cifar10"
    channels: int = 3
    image_size: list = field(default_factory=lambda: [32, 32])
    num_classes: int = 10
    subdir: str = "cifar-10-batches-py"
    train_files: list = field(default_factory=lambda: [f"data_batch_{i}" for i in range(1, 6)])
    test_files: list = field(default_factory=lambda: ["test_batch"])
    md5: dict | None = None  # file name -> md5 of the file
    download: str | None = None

    plain_keys: ClassVar[tuple[str, ...]] = (*InMemoryDataset.plain_keys, "train_files", "test_files", "md5")

    def check(self) -> None:
        if self.channels != 3 or list(self.image_size) != [32, 32]:
            raise invalid(
                "image_size",
                self.image_size,
                f"and data.channels={self.channels} must be [32, 32] and 3: "
                "CIFAR batches hold 3x32x32 images (other sizes: data=image_folder with data.resize=true)",
            )
        if not isinstance(self.subdir, str):
            raise invalid("subdir", self.subdir, "must be a string (folder relative to data.root)")
        for key in ("train_files", "test_files"):
            v = getattr(self, key)
            if not isinstance(v, list) or not v or not all(isinstance(n, str) and n for n in v):
                raise invalid(key, v, "must be a non-empty list of batch file names")
        if self.md5 is not None and (
            not isinstance(self.md5, Mapping) or not all(v is None or is_md5(v) for v in self.md5.values())
        ):
            raise invalid("md5", self.md5, "must map batch file names to 32-digit hex md5s, or be null")
        if self.download not in (None, "") and self.download not in DOWNLOADERS:
            raise invalid("download", self.download, f"must be null or one of {', '.join(DOWNLOADERS)}")

    def read(self, root: Path) -> Arrays:
        folder = root / self.subdir
        missing = self._missing(folder)
        why = torchvision_download(self.download, root) if missing and self.download else None
        missing = self._missing(folder) if self.download else missing
        if missing:
            hint = f"set data.root=... or VIT_LAB_DATA to the folder that holds {self.subdir}/"
            if not self.download:
                hint += f", or data.download={DOWNLOADERS[0]}"
            elif why:
                hint += f" (data.download={self.download} failed: {why})"
            raise DataError(f"{self.name} data not found: {folder} lacks {', '.join(missing)}; {hint}")
        train_x, train_y = self._read_all(folder, self.train_files)
        test_x, test_y = self._read_all(folder, self.test_files)
        where = {"train_images": str(folder / self.train_files[0]), "test_images": str(folder / self.test_files[0])}
        where.update(train_labels=where["train_images"], test_labels=where["test_images"])
        return Arrays(train_x, train_y, test_x, test_y, where)

    def _missing(self, folder: Path) -> list[str]:
        return [n for n in (*self.train_files, *self.test_files) if not (folder / n).is_file()]

    def _read_all(self, folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self._read(folder / n) for n in names))
        return torch.cat(xs), torch.cat(ys)

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({one_line(e.strerror or e)})") from None
        want = (self.md5 or {}).get(path.name)
        if want and hashlib.md5(raw).hexdigest() != want.lower():
            raise DataError(
                f"{path}: md5 is {hashlib.md5(raw).hexdigest()}, expected {want.lower()} (data.md5.{path.name}); "
                "the file is corrupt or a different version, re-download it"
            )
        return read_batch(raw, path)
