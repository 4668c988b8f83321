"""Batching on the tensor side: index the uint8 tensors, convert to float, augment, normalise; resumable exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import ConfigError
from .augment import Augment
from .checks import is_int


class Batches:
    """Iterate batches on the tensor side: index a uint8 tensor, convert to float, augment, normalise.

    Exact resume: :meth:`permutation` is the only call that advances ``generator`` (once per epoch). Iteration
    only *peeks* at the state it leaves to get the epoch's augmentation seed, and batch ``i`` augments with its
    own generator seeded ``aug_seed + i``. So restoring the generator state saved after ``permutation()`` (any
    time during the epoch) and calling ``iter_from(k, perm)`` reproduces batches k, k+1, ... bit for bit,
    without replaying 0..k-1. Random numbers are drawn on the CPU, so pass a CPU generator.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float] | torch.Tensor | None,
        std: Sequence[float] | torch.Tensor | None,
        normalize: bool = True,
        shuffle: bool = False,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"Batches needs uint8 images (N,C,H,W), got {images.dtype} {tuple(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"Batches needs one label per image, got labels {tuple(labels.shape)} for {len(images)} images"
            )
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
        if augment is not None:
            augment.validate()
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.generator, self.device, self.normalize = generator, torch.device(device), normalize
        c = images.shape[1]
        if not normalize and mean is None and std is None:
            mean, std = (0.0,), (1.0,)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).to(self.device)
        if normalize and (self.mean.shape[1] not in (1, c) or self.std.shape[1] not in (1, c)):
            raise ConfigError(
                f"mean/std have {self.mean.shape[1]}/{self.std.shape[1]} values but images have {c} channels"
            )

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

    def iter_from(
        self, start_batch: int, perm: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch``, ... of the epoch. ``perm`` is this epoch's permutation() with the generator in
        the state that call left (e.g. restored from a checkpoint); without it, a new epoch is started here."""
        if perm is None:
            perm = self.permutation()
        # read now, not lazily at the first next(), so later use of the generator cannot change this epoch
        aug_seed = self._aug_seed() if self.augment is not None else 0
        if perm is not None:
            perm = perm.to(self.images.device)
        return self._batches(int(start_batch), perm, aug_seed)

    def _batches(
        self, start: int, perm: torch.Tensor | None, aug_seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
