"""Tests for vit_lab.data.idx: IDX parsing, checksums, the IDX dataset (files, downloads) and the real MNIST files."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import MNIST_FILES, N_TRAIN, C, H, K, W, idx_bytes, one_line_error, synth_idx, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from vit_lab.config import build
from vit_lab.data import IDXDataset, ImageData, file_md5, read_idx
from vit_lab.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("shape", [(7,), (5, 4, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, shape, gz):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    t = read_idx(write_idx(tmp_path / ("f.gz" if gz else "f"), arr, gz=gz))
    assert t.dtype == torch.uint8 and tuple(t.shape) == shape
    assert np.array_equal(t.numpy(), arr)


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "plain-name", arr, gz=True)).numpy(), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "looks.gz", arr, gz=False)).numpy(), arr)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4), st.integers(0, 2**32 - 1), st.booleans())
def test_read_idx_roundtrip_property(tmp_path_factory, dims, seed, gz):
    arr = np.random.default_rng(seed).integers(0, 256, dims, dtype=np.uint8)
    path = write_idx(tmp_path_factory.mktemp("h") / "f", arr, gz=gz)
    t = read_idx(path)
    assert tuple(t.shape) == tuple(dims) and np.array_equal(t.numpy(), arr)


def test_file_md5_is_of_uncompressed_content(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    want = hashlib.md5(idx_bytes(arr)).hexdigest()
    assert file_md5(write_idx(tmp_path / "a", arr)) == want
    assert file_md5(write_idx(tmp_path / "b.gz", arr, gz=True)) == want


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


# Readable ids: byte contents as ids are unreadable, and must stay identical across xdist workers.
@pytest.mark.parametrize(
    "content, fragment",
    [
        pytest.param(b"\x01\x02" + GOOD[2:], "not an IDX file", id="bad-magic"),
        pytest.param(b"", "not an IDX file", id="empty"),
        pytest.param(idx_bytes(np.zeros((2, 3), np.uint8), code=0x0D), "0x0D", id="unsupported-type"),
        pytest.param(GOOD[:-1], "truncated", id="truncated-data"),
        pytest.param(GOOD[:9], "truncated IDX header", id="truncated-header"),
        pytest.param(GOOD + b"\x00\x00", "2 trailing bytes", id="trailing-bytes"),
        pytest.param(gzip.compress(GOOD, mtime=0)[:-12], "corrupt gzip", id="gzip-cut"),
        pytest.param(gzip.compress(GOOD, mtime=0)[:10] + b"\xff" * 20, "corrupt gzip", id="gzip-garbage"),
    ],
)
def test_read_idx_errors(tmp_path, content, fragment):
    path = tmp_path / "bad-file"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_idx(path)
    one_line_error(e, str(path), fragment)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_idx(tmp_path / "nope")
    one_line_error(e, str(tmp_path / "nope"), "not found")
    with pytest.raises(DataError) as e:
        file_md5(tmp_path / "nope")
    one_line_error(e, "nope")


# ------------------------------------------------------------------------------------------------ the dataset


@pytest.fixture
def synth(tmp_path):
    return synth_idx(tmp_path)


def make(cfg: dict, **over) -> IDXDataset:
    return IDXDataset(**{**cfg, **over})


def test_dataset_loads_through_hydra_config(synth):
    from omegaconf import OmegaConf

    cfg, arrays, _ = synth
    conf = OmegaConf.create({"_target_": "vit_lab.data.IDXDataset", **cfg, "train_limit": 20, "test_limit": 5})
    ds = build(conf)
    assert isinstance(ds, IDXDataset) and ds.chw == (C, H, W) and type(ds.files) is dict
    d = ds.load(seed=1)
    assert isinstance(d, ImageData)
    assert (
        d.train_images.shape == (20, C, H, W)
        and d.val_images.shape == (10, C, H, W)
        and d.test_images.shape == (5, C, H, W)
    )
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert len(d.train_labels) == 20 and len(d.val_labels) == 10 and len(d.test_labels) == 5
    # channels_last files come back as (N,C,H,W) with the same pixels, test set in file order
    assert np.array_equal(d.test_images.numpy(), arrays["test_images"][:5].transpose(0, 3, 1, 2))
    assert np.array_equal(d.test_labels.numpy(), arrays["test_labels"][:5])


def test_md5_mismatch(synth):
    cfg, _, raw = synth
    md5 = {**cfg["md5"], "test_labels": "0" * 32}
    with pytest.raises(DataError) as e:
        make(cfg, md5=md5).load()
    one_line_error(e, str(raw / "test_labels.idx.gz"), "0" * 32, cfg["md5"]["test_labels"])
    make(cfg, md5={"train_images": cfg["md5"]["train_images"]}).load()  # partial / absent md5 = no check
    make(cfg, md5=None).load()


def test_label_count_and_range(synth):
    cfg, arrays, raw = synth
    write_idx(raw / "train_labels.idx", arrays["train_labels"][:-1])
    with pytest.raises(DataError) as e:
        make(cfg, md5=None).load()
    one_line_error(e, "train_labels.idx", f"{N_TRAIN - 1} labels", f"{N_TRAIN} images")
    write_idx(raw / "train_labels.idx", arrays["train_labels"])
    with pytest.raises(DataError) as e:
        make(cfg, md5=None, num_classes=K - 1).load()
    one_line_error(e, "train_labels.idx", f"label {K - 1}", f"data.num_classes={K - 1}")


def test_shape_must_match_config(synth, tmp_path):
    cfg, _, _ = synth
    with pytest.raises(DataError) as e:
        make(cfg, image_size=[W, H]).load()
    one_line_error(e, "train_images.idx", str((C, H, W)), f"data.image_size={[W, H]}")
    with pytest.raises(DataError) as e:  # channels-last files read as channels-first
        make(cfg, channels_last=False).load()
    one_line_error(e, "train_images.idx", str((H, W, C)), "data.channels_last=False")
    # 28x28 3-D files (MNIST-like) read with image_size [32, 32]
    raw = tmp_path / "M" / "raw"
    raw.mkdir(parents=True)
    for k, n in MNIST_FILES.items():
        write_idx(raw / f"{n}.gz", np.zeros((4, 28, 28), np.uint8) if "images" in k else np.arange(4) % 10, gz=True)
    mn = dict(
        name="m",
        root=str(tmp_path),
        subdir="M/raw",
        files=MNIST_FILES,
        md5=None,
        channels=1,
        image_size=[28, 28],
        num_classes=10,
        mean=[0.1307],
        std=[0.3081],
        val_size=1,
    )
    assert make(mn).load().train_images.shape == (3, 1, 28, 28)  # 3-D files gain a channel dim
    with pytest.raises(DataError) as e:
        make(mn, image_size=[32, 32]).load()
    one_line_error(e, "train-images-idx3-ubyte.gz", "(1, 28, 28)", "data.image_size=[32, 32]")


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"val_size": -1}, "data.val_size=-1 must be >= 0"),
        ({"mean": [0.5]}, "data.mean=[0.5]"),
        ({"std": [1.0, 0.0, 1.0]}, "data.std="),
        ({"train_limit": 0}, "data.train_limit=0"),
        ({"test_limit": -3}, "data.test_limit=-3"),
        ({"image_size": [8]}, "data.image_size=[8]"),
        ({"channels": 0}, "data.channels=0"),
        ({"files": {"train_images": "x"}}, "data.files="),
        ({"md5": {"train_images": "xyz"}}, "data.md5.train_images='xyz'"),
        ({"download": "CIFAR10"}, "data.download='CIFAR10'"),
        (
            {"download": "KMNIST"},
            "data.download='KMNIST' must be null or one of MNIST, FashionMNIST",
        ),  # no config: dropped
    ],
)
def test_validate_names_the_key(synth, over, fragment):
    cfg, _, _ = synth
    ds = make(cfg, **over)  # constructing never raises (Hydra would wrap the error)
    with pytest.raises(ConfigError) as e:
        ds.validate()
    one_line_error(e, fragment)
    with pytest.raises(ConfigError):
        ds.load()


def mnist_like(tmp_path: Path, download: str | None) -> IDXDataset:
    return IDXDataset(
        name="mnist",
        root=str(tmp_path),
        subdir="MNIST/raw",
        files=MNIST_FILES,
        md5=None,
        channels=1,
        image_size=[28, 28],
        num_classes=10,
        mean=[0.1307],
        std=[0.3081],
        val_size=2,
        download=download,
    )


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        mnist_like(tmp_path, None).load()
    one_line_error(
        e,
        str(tmp_path / "MNIST" / "raw"),
        "train-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
        "data.root=",
        "VIT_LAB_DATA",
        "data.download=MNIST",
    )
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8), gz=True)
    with pytest.raises(DataError) as e:  # only the files still missing are named
        mnist_like(tmp_path, None).load()
    assert "train-images" not in one_line_error(e, "train-labels-idx1-ubyte[.gz]")


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n" + str(urllib.error.URLError("no network")))

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as e:
        mnist_like(tmp_path, "MNIST").load()
    one_line_error(e, "train-images-idx3-ubyte", "download", "no network")
    assert calls == [(str(tmp_path), True, True)]


def test_successful_download_is_used(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake(root, train, download):  # writes what torchvision's MNIST writes: <root>/MNIST/raw/*
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        pre = "train" if train else "t10k"
        write_idx(raw / f"{pre}-images-idx3-ubyte", np.full((6, 28, 28), 7, np.uint8))
        write_idx(raw / f"{pre}-labels-idx1-ubyte", np.arange(6) % 10)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)
    d = mnist_like(tmp_path, "MNIST").load()
    assert d.train_images.shape == (4, 1, 28, 28) and d.test_images.shape == (6, 1, 28, 28)


# ------------------------------------------------------------------------------------------------ real data


def real_root() -> Path:
    root = Path(os.environ.get("VIT_LAB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    assert (root / "MD5SUMS.uncompressed").is_file(), (
        f"real data not found at {root}: set VIT_LAB_DATA to the folder holding MNIST/raw and MD5SUMS.uncompressed"
    )
    return root


def real_dataset(sub: str, mean: float, std: float) -> IDXDataset:
    root = real_root()
    sums = dict(line.split()[::-1] for line in (root / "MD5SUMS.uncompressed").read_text().splitlines() if line.strip())
    md5 = {k: sums[f"{sub}/raw/{n}"] for k, n in MNIST_FILES.items()}
    return IDXDataset(
        name=sub.lower(),
        root=str(root),
        subdir=f"{sub}/raw",
        files=MNIST_FILES,
        md5=md5,
        channels=1,
        image_size=[28, 28],
        num_classes=10,
        mean=[mean],
        std=[std],
        val_size=5000,
    )


@pytest.mark.parametrize("sub, mean, std", [("MNIST", 0.1307, 0.3081), ("FashionMNIST", 0.2860, 0.3530)])
def test_real_data(sub, mean, std):
    d = real_dataset(sub, mean, std).load(seed=0)
    assert (len(d.train_images), len(d.val_images), len(d.test_images)) == (55000, 5000, 10000)
    assert d.train_images.shape[1:] == (1, 28, 28) and d.train_images.dtype == torch.uint8
    full = torch.cat([d.train_images, d.val_images])
    hist = torch.bincount(torch.cat([d.train_labels, d.val_labels]), minlength=10)
    assert len(hist) == 10 and hist.sum() == 60000
    if sub == "MNIST":
        assert hist.min() >= 5000 and hist.max() <= 7000, hist
    else:
        assert (hist == 6000).all(), hist  # Fashion-MNIST is balanced
    pixel_mean = full.sum(dtype=torch.int64).item() / full.numel() / 255
    assert abs(pixel_mean - mean) < 1e-3, pixel_mean
    assert torch.bincount(d.test_labels, minlength=10).min() >= 800
