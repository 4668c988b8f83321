"""Datasets as in-memory uint8 tensors, batched and augmented on the tensor side.

Image datasets of this size fit in memory many times over, so there is no DataLoader, no PIL and no per-sample
Python: files are read once into uint8 tensors, batches are tensor indexing, augmentation is one batched
``grid_sample``. Every problem a user can fix (missing, truncated or corrupt files, a config that disagrees with
the files) raises a one-line :class:`~vit_lab.errors.DataError` or :class:`~vit_lab.errors.ConfigError`.

- :mod:`.datasets`: the :class:`Dataset` interface the trainer uses, the :class:`InMemoryDataset` base that a
  new format subclasses, the data root and the seeded splits
- :mod:`.idx`, :mod:`.image_folder`, :mod:`.cifar`: the formats (``conf/data/*.yaml`` name them)
- :mod:`.augment` (the ``augment`` group) and :mod:`.batches` (tensor-side batching)
"""

from .augment import Augment
from .batches import Batches
from .cifar import CIFAR10Dataset
from .datasets import DATA_ENV, Arrays, Dataset, ImageData, InMemoryDataset, pin_data_env
from .idx import FILE_KEYS, IDXDataset, file_md5, read_idx
from .image_folder import ImageFolderDataset

__all__ = [
    "DATA_ENV",
    "FILE_KEYS",
    "Arrays",
    "Augment",
    "Batches",
    "CIFAR10Dataset",
    "Dataset",
    "IDXDataset",
    "ImageData",
    "ImageFolderDataset",
    "InMemoryDataset",
    "file_md5",
    "pin_data_env",
    "read_idx",
]
