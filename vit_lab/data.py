"""Datasets as in-memory uint8 tensors, batched and augmented on the tensor side.

MNIST-sized data fits in memory many times over, so there is no DataLoader, no PIL and no per-sample Python:
files are parsed with one ``numpy.frombuffer``, batches are tensor indexing, augmentation is one batched
``grid_sample``. Every problem a user can fix (missing, truncated or corrupt files, a config that disagrees
with the files) raises a one-line :class:`~vit_lab.errors.DataError` or :class:`~vit_lab.errors.ConfigError`.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError

__all__ = ["read_idx", "file_md5", "ImageData", "IDXDataset", "Batches", "Augment", "FILE_KEYS"]

FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
_DOWNLOADERS = ("MNIST", "FashionMNIST", "KMNIST")  # torchvision classes whose raw/ files are plain IDX


DATA_ENV = "VIT_LAB_DATA"


def pin_data_env(cwd: str | os.PathLike | None = None) -> str | None:
    """Make a relative ``$VIT_LAB_DATA`` absolute, once, against the folder the command was launched from.

    Launchers, sweep workers and subprocesses inherit the environment but may start in other folders, where a
    relative path would point elsewhere; pinning it at the entry point gives every job the same data.
    """
    value = os.environ.get(DATA_ENV)
    if value and not Path(value).expanduser().is_absolute():
        value = str((Path(cwd or os.getcwd()) / Path(value).expanduser()).resolve())
        os.environ[DATA_ENV] = value
    return value


def _one_line(text: Any) -> str:
    """Collapse whitespace so an error message stays on one line."""
    return " ".join(str(text).split())


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes to a target) -> plain dicts/lists; anything else unchanged."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# --------------------------------------------------------------------------------------------- IDX files


def _read_bytes(path: str | os.PathLike) -> bytes:
    """The file's uncompressed bytes; gzip is detected by its magic bytes, not the suffix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e.strerror or e)})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({type(e).__name__}: {_one_line(e)}); re-download the file") from None


def _parse_idx(data: bytes, path: str | os.PathLike) -> torch.Tensor:
    """Parse IDX bytes, refusing anything whose header and payload disagree."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}, expected 0000 then dtype, ndim)")
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
        raise DataError(f"{path}: truncated, dims {list(dims)} need {expected} bytes of data but only {payload} present")
    if payload > expected:
        raise DataError(f"{path}: {payload - expected} trailing bytes after the {expected} bytes that dims {list(dims)} describe")
    # copy: frombuffer on bytes is read-only, and the copy frees the big decompressed buffer
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy())


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (raw or gzip) into a uint8 tensor of the shape its header declares."""
    return _parse_idx(_read_bytes(path), path)


def file_md5(path: str | Path) -> str:
    """MD5 of the uncompressed content, so a recompressed .gz still matches the canonical checksum."""
    return hashlib.md5(_read_bytes(path)).hexdigest()


# --------------------------------------------------------------------------------------------- datasets


@dataclass
class ImageData:
    """The whole dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


@dataclass
class IDXDataset:
    """A dataset stored as IDX files (MNIST layout); built from ``conf/data/*.yaml``, reads nothing until :meth:`load`."""

    name: str
    root: str | None
    subdir: str
    files: dict
    md5: dict | None
    channels: int
    image_size: list
    num_classes: int
    mean: list
    std: list
    normalize: bool = True
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None
    download: str | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        # Hydra hands over DictConfig/ListConfig; keep plain Python. Never raise here: instantiate() would wrap
        # the error into a multi-line InstantiationException, so all checks live in validate().
        for key in ("files", "md5", "image_size", "mean", "std"):
            setattr(self, key, _plain(getattr(self, key)))

    # ---- config checks
    def validate(self) -> None:
        """Cheap checks of the config alone; raises ConfigError naming the offending key."""

        def bad(key: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"data.{key}={value!r} {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", self.name, "must be a non-empty string")
        if not isinstance(self.subdir, str):
            raise bad("subdir", self.subdir, "must be a string (folder relative to data.root)")
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise bad("root", self.root, "must be a path or null")
        if not isinstance(self.files, Mapping) or any(not isinstance(self.files.get(k), str) or not self.files.get(k) for k in FILE_KEYS):
            raise bad("files", self.files, f"must map each of {', '.join(FILE_KEYS)} to a file name")
        if self.md5 is not None:
            if not isinstance(self.md5, Mapping):
                raise bad("md5", self.md5, "must be a mapping of file keys to md5 strings, or null")
            for k, v in self.md5.items():
                if k not in FILE_KEYS:
                    raise bad(f"md5.{k}", v, f"is not a file key (expected one of {', '.join(FILE_KEYS)})")
                if v is not None and (not isinstance(v, str) or len(v) != 32 or any(c not in "0123456789abcdefABCDEF" for c in v)):
                    raise bad(f"md5.{k}", v, "must be a 32-digit hex md5 or null")
        for key in ("channels", "num_classes"):
            if not _is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise bad(key, getattr(self, key), "must be an integer >= 1")
        size = self.image_size
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
            raise bad("image_size", size, "must be [height, width] with positive integers")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not isinstance(v, (list, tuple)) or len(v) != self.channels or not all(_is_num(x) for x in v):
                raise bad(key, v, f"must be a list of {self.channels} numbers (one per channel, data.channels={self.channels})")
        if any(s <= 0 for s in self.std):
            raise bad("std", self.std, "must be > 0")
        for key in ("normalize", "channels_last"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, getattr(self, key), "must be true or false")
        if not _is_int(self.val_size) or self.val_size < 0:
            raise bad("val_size", self.val_size, "must be >= 0")
        for key in ("train_limit", "test_limit"):
            v = getattr(self, key)
            if v is not None and (not _is_int(v) or v < 1):
                raise bad(key, v, "must be >= 1 or null (= all)")
        if self.download not in (None, "") and self.download not in _DOWNLOADERS:
            raise bad("download", self.download, f"must be null or one of {', '.join(_DOWNLOADERS)}")

    @property
    def chw(self) -> tuple[int, int, int]:
        """Image shape (channels, height, width) as the model sees it."""
        return (int(self.channels), int(self.image_size[0]), int(self.image_size[1]))

    def resolve_root(self) -> Path:
        """data.root, else $VIT_LAB_DATA, else ./data; relative paths are taken from the launch folder."""
        root = self.root if self.root not in (None, "") else (os.environ.get(DATA_ENV) or "./data")
        path = Path(root).expanduser()
        if not path.is_absolute():
            try:  # Hydra may have changed into the run folder; relative paths mean the folder the user launched from
                from hydra.utils import to_absolute_path

                path = Path(to_absolute_path(str(path)))
            except ImportError:  # pragma: no cover - hydra is a dependency
                path = path.absolute()
        return path

    # ---- loading
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

    def _download(self, root: Path) -> str | None:
        """Try torchvision's downloader; returns why it failed (None on success) instead of raising."""
        try:
            import torchvision.datasets

            cls = getattr(torchvision.datasets, self.download)
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
        except Exception as e:  # no network, HTTP errors, bad archives: all become the missing-data error below
            return f"{type(e).__name__}: {_one_line(e)}"
        return None

    def _read(self, key: str, path: Path) -> torch.Tensor:
        data = _read_bytes(path)
        want = (self.md5 or {}).get(key)
        if want:
            got = hashlib.md5(data).hexdigest()
            if got != want.lower():
                raise DataError(f"{path}: md5 of uncompressed content is {got}, expected {want.lower()} (data.md5.{key}); "
                                "the file is corrupt or a different version, re-download it")
        return _parse_idx(data, path)

    def _images(self, x: torch.Tensor, path: Path) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        elif x.ndim == 4:
            x = x.permute(0, 3, 1, 2).contiguous() if self.channels_last else x
        else:
            raise DataError(f"{path}: images must be 3-D (N,H,W) or 4-D, got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.chw:
            raise DataError(f"{path}: images have shape (C,H,W)={tuple(x.shape[1:])} but the config says {self.chw} "
                            f"(data.channels={self.channels}, data.image_size={list(self.image_size)}, "
                            f"data.channels_last={self.channels_last})")
        return x

    def _labels(self, y: torch.Tensor, path: Path, n_images: int, images_path: Path) -> torch.Tensor:
        if y.ndim != 1:
            raise DataError(f"{path}: labels must be 1-D, got shape {tuple(y.shape)}")
        if len(y) != n_images:
            raise DataError(f"{path}: {len(y)} labels but {images_path} has {n_images} images")
        if len(y) and int(y.max()) >= self.num_classes:
            raise DataError(f"{path}: label {int(y.max())} is out of range for data.num_classes={self.num_classes}")
        return y.long()

    def load(self, seed: int = 0) -> ImageData:
        """Read, verify and split the data; the val split depends only on ``seed``, never on the limits."""
        self.validate()
        root = self.resolve_root()
        folder = root / self.subdir
        found, missing = self._find(folder)
        why = None
        if missing and self.download:
            why = self._download(root)
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
        train_x = self._images(t["train_images"], found["train_images"])
        test_x = self._images(t["test_images"], found["test_images"])
        train_y = self._labels(t["train_labels"], found["train_labels"], len(train_x), found["train_images"])
        test_y = self._labels(t["test_labels"], found["test_labels"], len(test_x), found["test_images"])

        n = len(train_x)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} must be < the {n} training images in {found['train_images']}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_limit is not None:
            train_idx = train_idx[: self.train_limit]
        test_n = len(test_x) if self.test_limit is None else min(self.test_limit, len(test_x))
        return ImageData(train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx],
                         test_x[:test_n].contiguous(), test_y[:test_n].contiguous())

    def _download_guess(self) -> str:
        """The torchvision downloader this subdir would match (for the error hint)."""
        head = Path(self.subdir).parts[0] if self.subdir else ""
        return head if head in _DOWNLOADERS else "MNIST"


# --------------------------------------------------------------------------------------------- augmentation


@dataclass
class Augment:
    """Batched random affine (shift/rotate/scale) and padded random crop on [0,1] float images."""

    enabled: bool = False
    max_shift: float = 0.0  # fraction of the image size
    degrees: float = 0.0
    scale: Sequence[float] = (1.0, 1.0)
    crop_padding: int = 0

    def __post_init__(self) -> None:
        self.scale = _plain(self.scale)

    def validate(self) -> None:
        """Config checks (not in __post_init__, where Hydra would wrap the error)."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"augment.enabled={self.enabled!r} must be true or false")
        if not _is_num(self.max_shift) or not 0 <= self.max_shift < 1:
            raise ConfigError(f"augment.max_shift={self.max_shift!r} must be in [0, 1) (fraction of the image size)")
        if not _is_num(self.degrees) or not 0 <= self.degrees <= 180:
            raise ConfigError(f"augment.degrees={self.degrees!r} must be in [0, 180]")
        s = self.scale
        if not isinstance(s, (list, tuple)) or len(s) != 2 or not all(_is_num(v) for v in s) or not 0 < s[0] <= s[1]:
            raise ConfigError(f"augment.scale={s!r} must be [low, high] with 0 < low <= high")
        if not _is_int(self.crop_padding) or self.crop_padding < 0:
            raise ConfigError(f"augment.crop_padding={self.crop_padding!r} must be an integer >= 0")

    @property
    def affine(self) -> bool:
        return self.max_shift > 0 or self.degrees > 0 or tuple(self.scale) != (1.0, 1.0)

    @property
    def active(self) -> bool:
        """False when disabled or every parameter is neutral: then __call__ is the identity and draws nothing."""
        return bool(self.enabled) and (self.affine or self.crop_padding > 0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment a float batch (B,C,H,W); random numbers are drawn on the CPU so any device gives the same draws."""
        if not self.active:
            return x
        b, _, h, w = x.shape

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)).to(x.device, torch.float32)

        if self.crop_padding > 0:  # like RandomCrop(padding=p): integer shift in [-p, p], zero fill
            p = int(self.crop_padding)
            off = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
            padded = F.pad(x, (p, p, p, p))
            rows = (torch.arange(h, device=x.device) + off[0, :, None])[:, None, :, None].expand(b, x.shape[1], h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (torch.arange(w, device=x.device) + off[1, :, None])[:, None, None, :].expand(b, x.shape[1], h, w)
            x = x.gather(3, cols)
        if self.affine:
            angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
            scale = uniform(float(self.scale[0]), float(self.scale[1]))
            shift = torch.stack([uniform(-self.max_shift, self.max_shift), uniform(-self.max_shift, self.max_shift)], 1)
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            # theta maps output to input coordinates in [-1,1]; the h/w factors keep rotations rigid on non-square images
            theta = torch.stack([torch.stack([cos, -sin * h / w, 2 * shift[:, 0]], 1),
                                 torch.stack([sin * w / h, cos, 2 * shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x


# --------------------------------------------------------------------------------------------- batching


class Batches:
    """Iterate batches on the tensor side: index a uint8 tensor, convert to float, augment, normalise.

    Exact resume: :meth:`permutation` is the only call that advances ``generator`` (once per epoch). Iteration
    only *peeks* at the state it leaves to get the epoch's augmentation seed, and batch ``i`` augments with its
    own generator seeded ``aug_seed + i``. So restoring the generator state saved after ``permutation()`` (any
    time during the epoch) and calling ``iter_from(k, perm)`` reproduces batches k, k+1, ... bit for bit,
    without replaying 0..k-1. Random numbers are drawn on the CPU, so pass a CPU generator.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean: Sequence[float] | torch.Tensor | None,
                 std: Sequence[float] | torch.Tensor | None, normalize: bool = True, shuffle: bool = False, augment: Augment | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu", drop_last: bool = False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"Batches needs uint8 images (N,C,H,W), got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"Batches needs one label per image, got labels {tuple(labels.shape)} for {len(images)} images")
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
        if augment is not None:
            augment.validate()
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.generator, self.device, self.normalize = generator, torch.device(device), normalize
        c = images.shape[1]
        mean, std = (0.0, 1.0) if not normalize and mean is None and std is None else (mean, std)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
        if normalize and (self.mean.shape[1] not in (1, c) or self.std.shape[1] not in (1, c)):
            raise ConfigError(f"mean/std have {self.mean.shape[1]}/{self.std.shape[1]} values but images have {c} channels")

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def permutation(self) -> torch.Tensor | None:
        """Start an epoch: its sample order drawn from the generator (None when not shuffling)."""
        if self.shuffle:
            return torch.randperm(len(self.images), generator=self.generator)
        if self.augment is not None:  # still advance, so unshuffled epochs get fresh augmentation
            torch.randint(0, 2**62, (1,), generator=self.generator)
        return None

    def _aug_seed(self) -> int:
        """The epoch's augmentation seed, read from a copy of the generator so its state is left as is."""
        peek = torch.Generator()
        peek.set_state((self.generator or torch.default_generator).get_state())
        return int(torch.randint(0, 2**62, (1,), generator=peek))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int, perm: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch``, ... of the epoch. ``perm`` is this epoch's permutation() with the generator in
        the state that call left (e.g. restored from a checkpoint); without it, a new epoch is started here."""
        if perm is None:
            perm = self.permutation()
        # read now, not lazily at the first next(), so later use of the generator cannot change this epoch
        aug_seed = self._aug_seed() if self.augment is not None else 0
        if perm is not None:
            perm = perm.to(self.images.device)
        return self._batches(int(start_batch), perm, aug_seed)

    def _batches(self, start: int, perm: torch.Tensor | None, aug_seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, cuda = len(self.images), self.batch_size, self.device.type == "cuda"
        for i in range(max(start, 0), len(self)):
            lo, hi = i * bs, min((i + 1) * bs, n)
            if perm is None:
                xb, yb = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = perm[lo:hi]
                xb, yb = self.images[idx], self.labels[idx]
            x = xb.to(self.device, non_blocking=cuda).float().div_(255)  # uint8 crosses the bus, 4x cheaper
            y = yb.to(self.device, non_blocking=cuda).long()
            if self.augment is not None:
                x = self.augment(x, torch.Generator().manual_seed(aug_seed + i))
            if self.normalize:
                x = x.sub_(self.mean).div_(self.std)
            yield x, y
