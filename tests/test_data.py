"""Tests for vit_lab.data: IDX parsing, verification, splits, batching, augmentation and the real MNIST files."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vit_lab.data import Augment, Batches, IDXDataset, ImageData, file_md5, read_idx
from vit_lab.errors import ConfigError, DataError

MNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
               "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def one_line_error(exc_info, *fragments: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


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


@pytest.mark.parametrize("content, fragment", [
    (b"\x01\x02" + GOOD[2:], "not an IDX file"),
    (b"", "not an IDX file"),
    (idx_bytes(np.zeros((2, 3), np.uint8), code=0x0D), "0x0D"),
    (GOOD[:-1], "truncated"),
    (GOOD[:9], "truncated IDX header"),
    (GOOD + b"\x00\x00", "2 trailing bytes"),
    (gzip.compress(GOOD)[:-12], "corrupt gzip"),
    (gzip.compress(GOOD)[:10] + b"\xff" * 20, "corrupt gzip"),
])
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


# ------------------------------------------------------------------------------------------------ datasets

N_TRAIN, N_TEST, C, H, W, K = 40, 12, 3, 8, 6, 5


def unique_images(n: int, offset: int) -> np.ndarray:
    """(N,H,W,C) images whose first two bytes encode the sample id, so rows can be traced through splits."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, (n, H, W, C), dtype=np.uint8)
    ids = np.arange(n) + offset
    x[:, 0, 0, 0], x[:, 0, 0, 1] = ids % 256, ids // 256
    return x


@pytest.fixture
def synth(tmp_path):
    """A tiny 4-D channels-last IDX dataset (3 channels, 8x6, 5 classes) under tmp_path/Synth/raw."""
    raw = tmp_path / "Synth" / "raw"
    raw.mkdir(parents=True)
    arrays = {"train_images": unique_images(N_TRAIN, 0), "train_labels": np.arange(N_TRAIN) % K,
              "test_images": unique_images(N_TEST, 1000), "test_labels": (np.arange(N_TEST) * 3) % K}
    names = {k: f"{k}.idx" for k in arrays}
    for i, (k, a) in enumerate(arrays.items()):
        write_idx(raw / (names[k] + (".gz" if i % 2 else "")), a, gz=bool(i % 2))  # mix raw and .gz
    md5 = {k: hashlib.md5(idx_bytes(a)).hexdigest() for k, a in arrays.items()}
    cfg = dict(name="synth", root=str(tmp_path), subdir="Synth/raw", files=names, md5=md5, channels=C, image_size=[H, W],
               num_classes=K, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], val_size=10, channels_last=True)
    return cfg, arrays, raw


def make(cfg: dict, **over) -> IDXDataset:
    return IDXDataset(**{**cfg, **over})


def test_dataset_loads_through_hydra_config(synth):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg, arrays, _ = synth
    conf = OmegaConf.create({"_target_": "vit_lab.data.IDXDataset", **cfg, "train_limit": 20, "test_limit": 5})
    ds = instantiate(conf, _execution_whitelist_=["vit_lab.data.IDXDataset"])
    assert isinstance(ds, IDXDataset) and ds.chw == (C, H, W) and type(ds.files) is dict
    d = ds.load(seed=1)
    assert isinstance(d, ImageData)
    assert d.train_images.shape == (20, C, H, W) and d.val_images.shape == (10, C, H, W) and d.test_images.shape == (5, C, H, W)
    assert d.train_images.dtype == torch.uint8 and d.train_labels.dtype == torch.int64
    assert len(d.train_labels) == 20 and len(d.val_labels) == 10 and len(d.test_labels) == 5
    # channels_last files come back as (N,C,H,W) with the same pixels, test set in file order
    assert np.array_equal(d.test_images.numpy(), arrays["test_images"][:5].transpose(0, 3, 1, 2))
    assert np.array_equal(d.test_labels.numpy(), arrays["test_labels"][:5])


def sample_ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


def test_split_is_seeded_disjoint_and_complete(synth):
    cfg, arrays, _ = synth
    ds = make(cfg)
    a, b, c = ds.load(seed=3), ds.load(seed=3), ds.load(seed=4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_labels, b.val_labels)
    assert sample_ids(a.val_images) != sample_ids(c.val_images)
    tr, va = sample_ids(a.train_images), sample_ids(a.val_images)
    assert len(tr) == N_TRAIN - 10 and len(va) == 10 and not set(tr) & set(va)
    assert sorted(tr + va) == list(range(N_TRAIN))
    # labels travel with their images
    assert a.train_labels.tolist() == [arrays["train_labels"][i] for i in tr]
    # the val set does not depend on train_limit; train_limit takes the first of the shuffled train set
    lim = make(cfg, train_limit=7).load(seed=3)
    assert sample_ids(lim.val_images) == va and sample_ids(lim.train_images) == tr[:7]


def test_val_size_zero_and_too_large(synth):
    cfg, _, _ = synth
    d = make(cfg, val_size=0).load()
    assert len(d.train_images) == N_TRAIN and d.val_images.shape == (0, C, H, W)
    with pytest.raises(ConfigError) as e:
        make(cfg, val_size=N_TRAIN).load()
    one_line_error(e, f"data.val_size={N_TRAIN}", str(N_TRAIN))


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
    mn = dict(name="m", root=str(tmp_path), subdir="M/raw", files=MNIST_FILES, md5=None, channels=1, image_size=[28, 28],
              num_classes=10, mean=[0.1307], std=[0.3081], val_size=1)
    assert make(mn).load().train_images.shape == (3, 1, 28, 28)  # 3-D files gain a channel dim
    with pytest.raises(DataError) as e:
        make(mn, image_size=[32, 32]).load()
    one_line_error(e, "train-images-idx3-ubyte.gz", "(1, 28, 28)", "data.image_size=[32, 32]")


@pytest.mark.parametrize("over, fragment", [
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
])
def test_validate_names_the_key(synth, over, fragment):
    cfg, _, _ = synth
    ds = make(cfg, **over)  # constructing never raises (Hydra would wrap the error)
    with pytest.raises(ConfigError) as e:
        ds.validate()
    one_line_error(e, fragment)
    with pytest.raises(ConfigError):
        ds.load()


def test_root_resolution(monkeypatch, tmp_path):
    ds = IDXDataset(name="m", root=None, subdir="MNIST/raw", files=MNIST_FILES, md5=None, channels=1, image_size=[28, 28],
                    num_classes=10, mean=[0.1307], std=[0.3081])
    monkeypatch.setenv("VIT_LAB_DATA", str(tmp_path / "env"))
    assert ds.resolve_root() == tmp_path / "env"
    monkeypatch.delenv("VIT_LAB_DATA")
    monkeypatch.chdir(tmp_path)
    assert ds.resolve_root() == tmp_path / "data"
    ds.root = str(tmp_path / "explicit")
    assert ds.resolve_root() == tmp_path / "explicit"


def mnist_like(tmp_path: Path, download: str | None) -> IDXDataset:
    return IDXDataset(name="mnist", root=str(tmp_path), subdir="MNIST/raw", files=MNIST_FILES, md5=None, channels=1,
                      image_size=[28, 28], num_classes=10, mean=[0.1307], std=[0.3081], val_size=2, download=download)


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        mnist_like(tmp_path, None).load()
    one_line_error(e, str(tmp_path / "MNIST" / "raw"), "train-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]",
                   "data.root=", "VIT_LAB_DATA", "data.download=MNIST")
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


# ------------------------------------------------------------------------------------------------ batching


def grid(n: int = 23, c: int = 2, h: int = 5, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels are distinct per sample; labels = sample index (to trace order)."""
    x = (torch.arange(n * c * h * w) % 251).to(torch.uint8).reshape(n, c, h, w)
    return x, torch.arange(n)


AUG = Augment(enabled=True, max_shift=0.1, degrees=20, scale=(0.9, 1.1), crop_padding=1)


def test_batches_cover_epoch_once_and_drop_last():
    x, y = grid()
    b = Batches(x, y, 5, mean=[0, 0], std=[1, 1], normalize=False, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(b) == 5
    ys = [yb for _, yb in b]
    assert [len(t) for t in ys] == [5, 5, 5, 5, 3]
    order = torch.cat(ys)
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    for xb, yb in b:  # images travel with their labels
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xb, x[yb].float() / 255)
    d = Batches(x, y, 5, mean=[0, 0], std=[1, 1], drop_last=True)
    assert len(d) == 4 and [len(t) for _, t in d] == [5] * 4
    assert torch.cat([t for _, t in d]).tolist() == list(range(20)) and d.permutation() is None


def test_normalisation_values():
    x = torch.zeros(2, 2, 3, 3, dtype=torch.uint8)
    x[1] = 255
    (xb, _), = Batches(x, torch.zeros(2, dtype=torch.long), 4, mean=[0.5, 0.1], std=[0.25, 0.2])
    assert torch.allclose(xb[0, 0], torch.full((3, 3), -2.0)) and torch.allclose(xb[0, 1], torch.full((3, 3), -0.5))
    assert torch.allclose(xb[1, 0], torch.full((3, 3), 2.0)) and torch.allclose(xb[1, 1], torch.full((3, 3), 4.5))
    (raw, _), = Batches(x, torch.zeros(2, dtype=torch.long), 4, mean=[0.5, 0.1], std=[0.25, 0.2], normalize=False)
    assert raw.min() == 0 and raw.max() == 1


@pytest.mark.parametrize("augment", [None, AUG])
def test_iter_from_resumes_exactly(augment):
    """The trainer's protocol: seed, permutation(), save (perm, generator state) mid-epoch, restore, iter_from(k, perm)."""
    x, y = grid()
    g = torch.Generator()
    b = Batches(x, y, 4, mean=[0.5, 0.5], std=[0.3, 0.3], shuffle=True, augment=augment, generator=g)
    g.manual_seed(11)
    perm = b.permutation()
    state = g.get_state()
    full = list(b.iter_from(0, perm))
    assert torch.equal(torch.cat([t for _, t in full]), perm)
    assert torch.equal(g.get_state(), state)  # iterating does not advance the generator
    g.manual_seed(99)  # whatever happened in between
    g.set_state(state)
    tail = list(b.iter_from(3, perm))
    g.manual_seed(11)
    plain = list(b)  # __iter__ == permutation() + iter_from(0, perm)
    g.manual_seed(11)
    tail2 = list(b.iter_from(3))
    assert len(tail) == len(full) - 3 == len(tail2) and len(plain) == len(full)
    for (xa, ya), (xb, yb) in zip(full, plain):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb), (xc, yc) in zip(full[3:], tail, tail2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, xc) and torch.equal(ya, yc)
    g.manual_seed(12)
    assert not torch.equal(torch.cat([t for _, t in b]), perm)


def test_unshuffled_augmentation_differs_per_epoch():
    x, y = grid()
    g = torch.Generator().manual_seed(0)
    b = Batches(x, y, 8, mean=[0, 0], std=[1, 1], augment=AUG, generator=g)
    e1, e2 = list(b), list(b)
    assert [t.tolist() for _, t in e1] == [t.tolist() for _, t in e2] == [list(range(i, min(i + 8, 23))) for i in (0, 8, 16)]
    assert not torch.equal(e1[0][0], e2[0][0])
    g.manual_seed(0)
    assert torch.equal(next(iter(b))[0], e1[0][0])


def test_same_seed_same_augmented_batches():
    x, y = grid()

    def epoch(seed):
        return list(Batches(x, y, 8, mean=[0, 0], std=[1, 1], shuffle=True, augment=AUG, generator=torch.Generator().manual_seed(seed)))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # augmentation changed something, but not the label order that the permutation fixed
    plain = list(Batches(x, y, 8, mean=[0, 0], std=[1, 1], shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, plain)) and not torch.equal(a[0][0], plain[0][0])


def test_batches_rejects_bad_input():
    x, y = grid()
    with pytest.raises(ConfigError):
        Batches(x, y, 0, mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError):
        Batches(x.float(), y, 2, mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError):
        Batches(x, y[:-1], 2, mean=[0, 0], std=[1, 1])
    with pytest.raises(ConfigError):
        Batches(x, y, 2, mean=[0, 0, 0], std=[1, 1, 1])


# ------------------------------------------------------------------------------------------------ augmentation


def test_augment_identity_when_disabled_or_neutral():
    x = torch.rand(6, 3, 8, 6)
    g = torch.Generator().manual_seed(0)
    for aug in (Augment(), Augment(enabled=False, degrees=30, crop_padding=2), Augment(enabled=True)):
        state = g.get_state()
        assert torch.equal(aug(x, g), x) and torch.equal(g.get_state(), state)
    out = AUG(x, g)
    assert out.shape == x.shape and out.dtype == torch.float32 and not torch.equal(out, x)


def test_crop_padding_is_an_integer_shift():
    x = torch.rand(16, 2, 7, 5)
    out = Augment(enabled=True, crop_padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for xi, oi in zip(x, out):  # reference: plain zero-padded shift, found by trying all offsets
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = torch.zeros_like(xi)
                ys, yd = slice(max(dy, 0), 7 + min(dy, 0)), slice(max(-dy, 0), 7 + min(-dy, 0))
                xs, xd = slice(max(dx, 0), 5 + min(dx, 0)), slice(max(-dx, 0), 5 + min(-dx, 0))
                ref[:, yd, xd] = xi[:, ys, xs]
                if torch.equal(oi, ref):
                    matches.append((dy, dx))
        assert matches, "output is not an integer shift of the input"
        seen.add(matches[0])
    assert len(seen) > 3  # offsets are random per sample


def test_rotation_changes_images_but_stays_rigid():
    """Large rotations move pixels; on a non-square image a centred disc stays round (no aspect distortion)."""
    h, w = 16, 32
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = ((yy**2 + xx**2) <= 5**2).float().expand(8, 1, h, w)
    bar = torch.zeros(8, 1, h, w)
    bar[:, :, 7:9, 4:28] = 1
    aug = Augment(enabled=True, degrees=180)
    g = torch.Generator().manual_seed(0)
    assert (aug(bar, g) - bar).abs().amax(dim=(1, 2, 3)).min() > 0.5
    out = aug(disc, g)
    mass = out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass, disc[0].sum().expand(8), rtol=0.05)
    vy, vx = (out * yy**2).sum(dim=(1, 2, 3)) / mass, (out * xx**2).sum(dim=(1, 2, 3)) / mass
    assert ((vy / vx) - 1).abs().max() < 0.15


def test_shift_and_scale_ranges():
    x = torch.zeros(32, 1, 20, 20)
    x[:, :, 8:12, 8:12] = 1
    shifted = Augment(enabled=True, max_shift=0.2)(x, torch.Generator().manual_seed(0))
    cy = (shifted.sum(dim=(1, 3)) * torch.arange(20)).sum(1) / shifted.sum(dim=(1, 2, 3)) - 9.5
    assert cy.abs().max() <= 0.2 * 20 + 1e-4 and cy.abs().max() > 1  # within +-20% of the size, and it moves
    zoom = Augment(enabled=True, scale=(2.0, 2.0))(x, None)
    assert torch.allclose(zoom.sum(dim=(1, 2, 3)), torch.full((32,), 64.0), rtol=1e-4)  # 2x zoom: 4x area


@pytest.mark.parametrize("over, key", [({"max_shift": 1.5}, "max_shift"), ({"degrees": -1}, "degrees"),
                                       ({"scale": (1.2, 0.8)}, "scale"), ({"crop_padding": -1}, "crop_padding")])
def test_augment_validate(over, key):
    with pytest.raises(ConfigError) as e:
        Augment(enabled=True, **over).validate()
    one_line_error(e, f"augment.{key}=")


# ------------------------------------------------------------------------------------------------ real data


def real_root() -> Path:
    root = Path(os.environ.get("VIT_LAB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    assert (root / "MD5SUMS.uncompressed").is_file(), (
        f"real data not found at {root}: set VIT_LAB_DATA to the folder holding MNIST/raw and MD5SUMS.uncompressed")
    return root


def real_dataset(sub: str, mean: float, std: float) -> IDXDataset:
    root = real_root()
    sums = dict(line.split()[::-1] for line in (root / "MD5SUMS.uncompressed").read_text().splitlines() if line.strip())
    md5 = {k: sums[f"{sub}/raw/{n}"] for k, n in MNIST_FILES.items()}
    return IDXDataset(name=sub.lower(), root=str(root), subdir=f"{sub}/raw", files=MNIST_FILES, md5=md5, channels=1,
                      image_size=[28, 28], num_classes=10, mean=[mean], std=[std], val_size=5000)


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


def test_augment_from_hydra_config():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.create({"_target_": "vit_lab.data.Augment", "enabled": True, "degrees": 10.0, "scale": [0.9, 1.1],
                             "max_shift": 0.1, "crop_padding": 2})
    aug = instantiate(conf, _execution_whitelist_=["vit_lab.data.Augment"])
    aug.validate()
    assert type(aug.scale) is list and aug.active
    x = torch.rand(4, 1, 28, 28)
    assert aug(x, torch.Generator().manual_seed(0)).shape == x.shape
