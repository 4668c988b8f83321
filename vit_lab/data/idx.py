"""IDX files (the MNIST layout): the reader, checksums of the uncompressed content, and the IDX dataset.

A file is parsed with one ``numpy.frombuffer``; gzip is detected by its magic bytes. Every problem a user can
fix (missing, truncated or corrupt files, a config that disagrees with the files) is a one-line DataError.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..errors import DataError
from .checks import invalid, is_md5, one_line
from .datasets import Arrays, InMemoryDataset, torchvision_download

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
DOWNLOADERS = ("MNIST", "FashionMNIST")  # torchvision classes that write plain IDX files to <root>/<class>/raw


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The file's uncompressed bytes; gzip is detected by its magic bytes, not the suffix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({one_line(e.strerror or e)})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: corrupt gzip data ({type(e).__name__}: {one_line(e)}); re-download the file"
        ) from None


def _parse_idx(data: bytes, path: str | os.PathLike) -> torch.Tensor:
    """Parse IDX bytes, refusing anything whose header and payload disagree."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}, expected 0000 then dtype, ndim)"
        )
    code, ndim = data[2], data[3]
    if code != _IDX_UINT8:
        raise DataError(f"{path}: IDX dtype code 0x{code:02X} is not supported (only 0x08 = uint8)")
    if ndim == 0:
        raise DataError(f"{path}: IDX header has 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected, payload = math.prod(dims), len(data) - header
    if payload < expected:
        raise DataError(
            f"{path}: truncated, dims {list(dims)} need {expected} bytes of data but only {payload} present"
        )
    if payload > expected:
        raise DataError(
            f"{path}: {payload - expected} trailing bytes after the {expected} bytes that dims {list(dims)} describe"
        )
    # copy: frombuffer on bytes is read-only, and the copy frees the big decompressed buffer
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy())


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (raw or gzip) into a uint8 tensor of the shape its header declares."""
    return _parse_idx(_read_bytes(path), path)


def file_md5(path: str | Path) -> str:
    """MD5 of the uncompressed content, so a recompressed .gz still matches the canonical checksum."""
    return hashlib.md5(_read_bytes(path)).hexdigest()


@dataclass(kw_only=True)
class IDXDataset(InMemoryDataset):
    """A dataset stored as four IDX files (MNIST layout); built from ``conf/data/*.yaml``, reads nothing until load."""

    subdir: str
    files: dict
    md5: dict | None = None
    download: str | None = None
    channels_last: bool = False

    plain_keys: ClassVar[tuple[str, ...]] = (*InMemoryDataset.plain_keys, "files", "md5")
    bool_keys: ClassVar[tuple[str, ...]] = (*InMemoryDataset.bool_keys, "channels_last")

    def check(self) -> None:
        if not isinstance(self.subdir, str):
            raise invalid("subdir", self.subdir, "must be a string (folder relative to data.root)")
        if not isinstance(self.files, Mapping) or any(
            not isinstance(self.files.get(k), str) or not self.files.get(k) for k in FILE_KEYS
        ):
            raise invalid("files", self.files, f"must map each of {', '.join(FILE_KEYS)} to a file name")
        if self.md5 is not None:
            if not isinstance(self.md5, Mapping):
                raise invalid("md5", self.md5, "must be a mapping of file keys to md5 strings, or null")
            for k, v in self.md5.items():
                if k not in FILE_KEYS:
                    raise invalid(f"md5.{k}", v, f"is not a file key (expected one of {', '.join(FILE_KEYS)})")
                if v is not None and not is_md5(v):
                    raise invalid(f"md5.{k}", v, "must be a 32-digit hex md5 or null")
        if self.download not in (None, "") and self.download not in DOWNLOADERS:
            raise invalid("download", self.download, f"must be null or one of {', '.join(DOWNLOADERS)}")

    def shape_keys(self) -> str:
        return f"{super().shape_keys()}, data.channels_last={self.channels_last}"

    def read(self, root: Path) -> Arrays:
        folder = root / self.subdir
        found, missing = self._find(folder)
        why = None
        if missing and self.download:
            why = torchvision_download(self.download, root)
            found, missing = self._find(folder)
        if missing:
            hint = f"set data.root=... or VIT_LAB_DATA to the folder that holds {self.subdir}/"
            if not self.download:
                hint += f", or data.download={self._download_guess()}"
            elif why:
                hint += f" (data.download={self.download} failed: {why})"
            else:
                hint += f" (data.download={self.download} wrote {self.download}/raw; check data.subdir)"
            raise DataError(f"{self.name} data not found: {folder} lacks {', '.join(missing)}; {hint}")
        t = {key: self._read(key, path) for key, path in found.items()}
        return Arrays(
            self._nchw(t["train_images"], found["train_images"]),
            t["train_labels"],
            self._nchw(t["test_images"], found["test_images"]),
            t["test_labels"],
            where={key: str(path) for key, path in found.items()},
        )

    def _find(self, folder: Path) -> tuple[dict[str, Path], list[str]]:
        found, missing = {}, []
        for key in FILE_KEYS:
            name = self.files[key]
            hit = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if hit is None:
                missing.append(f"{name}[.gz]")
            else:
                found[key] = hit
        return found, missing

    def _read(self, key: str, path: Path) -> torch.Tensor:
        data = _read_bytes(path)
        want = (self.md5 or {}).get(key)
        if want:
            got = hashlib.md5(data).hexdigest()
            if got != want.lower():
                raise DataError(
                    f"{path}: md5 of uncompressed content is {got}, expected {want.lower()} (data.md5.{key}); "
                    "the file is corrupt or a different version, re-download it"
                )
        return _parse_idx(data, path)

    def _nchw(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        """(N,H,W) gains a channel axis; (N,H,W,C) files (data.channels_last) become (N,C,H,W)."""
        if x.ndim == 3:
            return x.unsqueeze(1)
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2).contiguous() if self.channels_last else x
        raise DataError(f"{path}: images must be 3-D (N,H,W) or 4-D, got shape {tuple(x.shape)}")

    def _download_guess(self) -> str:
        """The torchvision downloader this subdir would match (for the error hint)."""
        head = Path(self.subdir).parts[0] if self.subdir else ""
        return head if head in DOWNLOADERS else "MNIST"
