"""The dataset interface the trainer uses, a base class that implements it for in-memory data, and the data root.

To add a format, subclass :class:`InMemoryDataset`, implement :meth:`~InMemoryDataset.read` (and
:meth:`~InMemoryDataset.check` for the format's own config keys), and write ``conf/data/<name>.yaml`` whose
``_target_`` names the class: roots, config checks, shape and label checks and the seeded splits come with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..errors import ConfigError, DataError
from .checks import invalid, is_int, is_num, one_line, plain

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


@dataclass
class ImageData:
    """The whole dataset in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@runtime_checkable
class Dataset(Protocol):
    """What the trainer uses of the object a ``conf/data/*.yaml`` builds (no file is read before :meth:`load`)."""

    name: str  # names the sweep's study (vit_optuna-<name>)
    num_classes: int
    mean: Sequence[float]  # per channel, applied to [0,1] images when normalize is true
    std: Sequence[float]
    normalize: bool

    @property
    def chw(self) -> tuple[int, int, int]:
        """Image shape (channels, height, width) as the model sees it; known from the config alone."""
        ...

    def validate(self) -> None:
        """Check the config alone; raise a one-line ConfigError naming ``data.<key>``."""
        ...

    def resolve_root(self) -> Path:
        """The absolute folder the data is read from (recorded in metrics.json)."""
        ...

    def load(self, seed: int = 0) -> ImageData:
        """Read everything into memory; the validation split depends on ``seed`` only."""
        ...


@dataclass
class Arrays:
    """What a format's :meth:`InMemoryDataset.read` returns; ``where`` names each tensor's source for errors."""

    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # integer (N,)
    test_images: torch.Tensor
    test_labels: torch.Tensor
    where: dict[str, str]  # train_images, train_labels, test_images, test_labels -> a file or folder


def torchvision_download(downloader: str, root: Path) -> str | None:
    """Run torchvision's downloader class ``downloader`` for both splits into ``root``; why it failed, or None."""
    try:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, downloader)
        for train in (True, False):
            cls(root=str(root), train=train, download=True)
    except Exception as e:  # no network, HTTP errors, bad archives: all become the caller's missing-data error
        return f"{type(e).__name__}: {one_line(e)}"
    return None


@dataclass(kw_only=True)
class InMemoryDataset:
    """A :class:`Dataset` whose files are read whole into uint8 tensors; a format implements :meth:`read`."""

    name: str
    root: str | None = None
    channels: int
    image_size: list
    num_classes: int
    mean: list
    std: list
    normalize: bool = True
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None

    plain_keys: ClassVar[tuple[str, ...]] = ("image_size", "mean", "std")  # OmegaConf containers to unwrap
    bool_keys: ClassVar[tuple[str, ...]] = ("normalize",)

    def __post_init__(self) -> None:
        # Hydra hands over DictConfig/ListConfig; keep plain Python. Never raise here: instantiate() would wrap
        # the error into a multi-line InstantiationException, so all checks live in validate().
        for key in self.plain_keys:
            setattr(self, key, plain(getattr(self, key)))

    # ---- what a format provides
    def read(self, root: Path) -> Arrays:
        """Read the train and test sets under ``root``; raise a one-line DataError naming the file and the fix."""
        raise NotImplementedError(f"{type(self).__name__} must implement read(root)")

    def check(self) -> None:
        """Check the format's own config keys (called by :meth:`validate`); raise ``invalid(key, value, why)``."""

    def shape_keys(self) -> str:
        """The config keys that decide the image shape, quoted when the files disagree with it."""
        return f"data.channels={self.channels}, data.image_size={list(self.image_size)}"

    # ---- the Dataset interface
    def validate(self) -> None:
        """Cheap checks of the config alone; raises ConfigError naming the offending key."""
        if not isinstance(self.name, str) or not self.name:
            raise invalid("name", self.name, "must be a non-empty string")
        if self.root is not None and not isinstance(self.root, (str, os.PathLike)):
            raise invalid("root", self.root, "must be a path or null")
        for key in ("channels", "num_classes"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise invalid(key, getattr(self, key), "must be an integer >= 1")
        size = self.image_size
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(is_int(s) and s >= 1 for s in size):
            raise invalid("image_size", size, "must be [height, width] with positive integers")
        for key in ("mean", "std"):
            v = getattr(self, key)
            if not isinstance(v, (list, tuple)) or len(v) != self.channels or not all(is_num(x) for x in v):
                raise invalid(
                    key,
                    v,
                    f"must be a list of {self.channels} numbers (one per channel, data.channels={self.channels})",
                )
        if any(s <= 0 for s in self.std):
            raise invalid("std", self.std, "must be > 0")
        for key in self.bool_keys:
            if not isinstance(getattr(self, key), bool):
                raise invalid(key, getattr(self, key), "must be true or false")
        if not is_int(self.val_size) or self.val_size < 0:
            raise invalid("val_size", self.val_size, "must be >= 0")
        for key in ("train_limit", "test_limit"):
            v = getattr(self, key)
            if v is not None and (not is_int(v) or v < 1):
                raise invalid(key, v, "must be >= 1 or null (= all)")
        self.check()

    @property
    def chw(self) -> tuple[int, int, int]:
        """Image shape (channels, height, width) as the model sees it."""
        return (int(self.channels), int(self.image_size[0]), int(self.image_size[1]))

    def resolve_root(self) -> Path:
        """data.root, else $VIT_LAB_DATA, else ./data; relative paths are taken from the launch folder."""
        root = self.root if self.root not in (None, "") else (os.environ.get(DATA_ENV) or "./data")
        path = Path(root).expanduser()
        if not path.is_absolute():
            from hydra.utils import to_absolute_path  # Hydra may have changed into the run folder

            path = Path(to_absolute_path(str(path)))
        return path

    def load(self, seed: int = 0) -> ImageData:
        """Read, check and split the data; the val split depends only on ``seed``, never on the limits."""
        self.validate()
        a = self.read(self.resolve_root())
        w = a.where
        train_x = self._images(a.train_images, w["train_images"])
        test_x = self._images(a.test_images, w["test_images"])
        train_y = self._labels(a.train_labels, w["train_labels"], len(train_x), w["train_images"])
        test_y = self._labels(a.test_labels, w["test_labels"], len(test_x), w["test_images"])
        return self.split(train_x, train_y, test_x, test_y, seed, w["train_images"])

    # ---- shared by every format
    def _images(self, x: torch.Tensor, where: str) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(f"{where}: images must be uint8 (N,C,H,W), got {x.dtype} of shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.chw:
            raise DataError(
                f"{where}: images have shape (C,H,W)={tuple(x.shape[1:])} but the config says {self.chw} "
                f"({self.shape_keys()})"
            )
        return x

    def _labels(self, y: torch.Tensor, where: str, n_images: int, images_where: str) -> torch.Tensor:
        if y.ndim != 1:
            raise DataError(f"{where}: labels must be 1-D, got shape {tuple(y.shape)}")
        if len(y) != n_images:
            raise DataError(f"{where}: {len(y)} labels but {images_where} has {n_images} images")
        if len(y) and int(y.min()) < 0:
            raise DataError(f"{where}: label {int(y.min())} is negative")
        if len(y) and int(y.max()) >= self.num_classes:
            raise DataError(f"{where}: label {int(y.max())} is out of range for data.num_classes={self.num_classes}")
        return y.long()

    def split(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
        seed: int,
        where: str,
    ) -> ImageData:
        """Hold out a seeded val set of ``val_size`` training images, then apply the limits."""
        n = len(train_x)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} must be < the {n} training images in {where}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_limit is not None:
            train_idx = train_idx[: self.train_limit]
        test_n = len(test_x) if self.test_limit is None else min(self.test_limit, len(test_x))
        return ImageData(
            train_x[train_idx],
            train_y[train_idx],
            train_x[val_idx],
            train_y[val_idx],
            test_x[:test_n].contiguous(),
            test_y[:test_n].contiguous(),
        )
