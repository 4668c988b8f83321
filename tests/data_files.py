"""Small data files in each format the lab reads (IDX, image folders, CIFAR batches), written by the tests."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def one_line_error(exc_info, *fragments: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------------ IDX


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


N_TRAIN, N_TEST, C, H, W, K = 40, 12, 3, 8, 6, 5


def unique_images(n: int, offset: int) -> np.ndarray:
    """(N,H,W,C) images whose first two bytes encode the sample id, so rows can be traced through splits."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, (n, H, W, C), dtype=np.uint8)
    ids = np.arange(n) + offset
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids % 256, ids // 256
    return x


def sample_ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


def synth_idx(tmp_path: Path) -> tuple[dict, dict, Path]:
    """A tiny 4-D channels-last IDX dataset (3 channels, 8x6, 5 classes) under tmp_path/Synth/raw:
    (IDXDataset kwargs, the arrays written, the folder)."""
    raw = tmp_path / "Synth" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train_images": unique_images(N_TRAIN, 0),
        "train_labels": np.arange(N_TRAIN) % K,
        "test_images": unique_images(N_TEST, 1000),
        "test_labels": (np.arange(N_TEST) * 3) % K,
    }
    names = {k: f"{k}.idx" for k in arrays}
    for i, (k, a) in enumerate(arrays.items()):
        write_idx(raw / (names[k] + (".gz" if i % 2 else "")), a, gz=bool(i % 2))  # mix raw and .gz
    md5 = {k: hashlib.md5(idx_bytes(a)).hexdigest() for k, a in arrays.items()}
    cfg = dict(
        name="synth",
        root=str(tmp_path),
        subdir="Synth/raw",
        files=names,
        md5=md5,
        channels=C,
        image_size=[H, W],
        num_classes=K,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        val_size=10,
        channels_last=True,
    )
    return cfg, arrays, raw


# ------------------------------------------------------------------------------------------------ image folders


def write_image(path: Path, img: torch.Tensor) -> Path:
    """Write a uint8 or uint16 (C,H,W) tensor as a real PNG or JPEG file (by suffix), encoded by Pillow."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img.numpy()
    Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(path, quality=95)  # uint16: I;16
    return path


def write_image_folder(
    folder: Path,
    per_class: dict[str, int],
    *,
    hw: tuple[int, int] = (12, 10),
    channels: int = 3,
    seed: int = 0,
    suffix: str = ".png",
) -> dict[Path, torch.Tensor]:
    """``per_class[name]`` random images in ``folder/<name>/``; returns each file's pixels."""
    g = torch.Generator().manual_seed(seed)
    written = {}
    for name, n in per_class.items():
        for i in range(n):
            img = torch.randint(0, 256, (channels, *hw), generator=g, dtype=torch.uint8)
            written[write_image(folder / name / f"{i:03d}{suffix}", img)] = img
    return written


# ------------------------------------------------------------------------------------------------ CIFAR-10


def py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle.dump(obj, f, 2) wrote CIFAR's batches: str as BINSTRING, numpy arrays through
    numpy.core.multiarray._reconstruct with their bytes as a Python 2 str (what encoding="latin1" exists for)."""
    out = bytearray(pickle.PROTO + b"\x02")

    def put(v) -> None:
        if v is None:
            out.extend(pickle.NONE)
        elif isinstance(v, bool):
            out.extend(pickle.NEWTRUE if v else pickle.NEWFALSE)
        elif isinstance(v, int):
            out.extend(pickle.BININT + struct.pack("<i", v))
        elif isinstance(v, (str, bytes)):
            b = v.encode("latin1") if isinstance(v, str) else v
            out.extend(
                (
                    pickle.SHORT_BINSTRING + bytes([len(b)])
                    if len(b) < 256
                    else pickle.BINSTRING + struct.pack("<i", len(b))
                )
                + b
            )
        elif isinstance(v, tuple):
            out.extend(pickle.MARK)
            for x in v:
                put(x)
            out.extend(pickle.TUPLE)
        elif isinstance(v, list):
            out.extend(pickle.EMPTY_LIST + pickle.MARK)
            for x in v:
                put(x)
            out.extend(pickle.APPENDS)
        elif isinstance(v, dict):
            out.extend(pickle.EMPTY_DICT + pickle.MARK)
            for k, x in v.items():
                put(k)
                put(x)
            out.extend(pickle.SETITEMS)
        elif isinstance(v, np.ndarray):  # numpy's own __reduce__: _reconstruct(ndarray, (0,), 'b') + __setstate__
            assert v.dtype == np.uint8
            out.extend(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            out.extend(pickle.MARK + pickle.GLOBAL + b"numpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(pickle.TUPLE + pickle.REDUCE + pickle.MARK)
            put(1)
            put(tuple(v.shape))
            out.extend(pickle.GLOBAL + b"numpy\ndtype\n")
            put(("u1", False, True))
            out.extend(pickle.REDUCE)
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(pickle.BUILD)
            put(False)
            put(np.ascontiguousarray(v).tobytes())
            out.extend(pickle.TUPLE + pickle.BUILD)
        else:
            raise TypeError(type(v))

    put(obj)
    return bytes(out + pickle.STOP)


CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def cifar_batch(n: int, seed: int, name: str) -> tuple[bytes, np.ndarray, list[int]]:
    """A CIFAR-10 python batch of n random 3x32x32 images: (file bytes, data (N, 3072), labels)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    entry = {
        "batch_label": f"{name} of 5",
        "labels": labels,
        "data": data,
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
    }
    return py2_pickle(entry), data, labels


def write_cifar(root: Path, n: int = 8) -> dict[str, tuple[np.ndarray, list[int]]]:
    """<root>/cifar-10-batches-py/data_batch_1..5 and test_batch with n images each; returns each file's content."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for seed, name in enumerate([*CIFAR_TRAIN, "test_batch"]):
        raw, data, labels = cifar_batch(n, seed, name)
        (folder / name).write_bytes(raw)
        content[name] = (data, labels)
    return content
