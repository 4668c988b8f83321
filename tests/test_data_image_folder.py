"""Tests for vit_lab.data.image_folder on real PNG/JPEG files the tests write: decoding, resizing, the cache, bad
folders,
and a tiny training run of the ViT and the CNN."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_train
from data_files import one_line_error, write_image, write_image_folder

from vit_lab.data import ImageFolderDataset
from vit_lab.data.image_folder import DECODERS, decode
from vit_lab.errors import ConfigError, DataError

CLASSES = {"cat": 4, "dog": 3, "emu": 5}


def spec(tmp_path: Path, **over) -> ImageFolderDataset:
    kw = dict(
        name="pics",
        root=str(tmp_path),
        train_dir="train",
        test_dir="test",
        channels=3,
        image_size=[12, 10],
        num_classes=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        val_size=2,
        resize=False,
        cache_dir=str(tmp_path / "cache"),
    )
    kw.update(over)
    if kw["channels"] == 1 and "mean" not in over:
        kw.update(mean=[0.5], std=[0.25])
    return ImageFolderDataset(**kw)


@pytest.fixture
def pics(tmp_path):
    """train/ with three classes of 12x10 PNGs; test/ with JPEGs of two of the classes."""
    train = write_image_folder(tmp_path / "train", CLASSES)
    test = write_image_folder(tmp_path / "test", {"dog": 2, "emu": 2}, seed=1, suffix=".jpg")
    return train, test


def test_pngs_decode_exactly_and_labels_follow_sorted_class_names(tmp_path, pics):
    train, _ = pics
    d = spec(tmp_path, val_size=0).load(seed=0)
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape == (12, 3, 12, 10)
    assert d.train_labels.dtype == torch.int64
    want = {}  # PNG is lossless: every decoded image is one of the written ones, with its class's label
    for path, img in train.items():
        want[img.numpy().tobytes()] = ["cat", "dog", "emu"].index(path.parent.name)
    got = {x.numpy().tobytes(): int(y) for x, y in zip(d.train_images, d.train_labels)}
    assert got == want
    # the test folder has only dog and emu: their labels are the training indices, not 0 and 1
    assert d.test_images.shape == (4, 3, 12, 10) and d.test_labels.tolist() == [1, 1, 2, 2]


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_decoders(tmp_path, decoder):
    """torchcodec and the torchvision.io fallback decode the same files to the same uint8 (C,H,W) tensors."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 9, 7), generator=g, dtype=torch.uint8)
    smooth = torch.linspace(0, 255, 9 * 7).reshape(1, 9, 7).expand(3, 9, 7).round().to(torch.uint8)
    assert torch.equal(decode(write_image(tmp_path / "a.png", rgb), 3, decoder), rgb)  # PNG is lossless
    gray = decode(write_image(tmp_path / "a.png", rgb), 1, decoder)  # RGB files become grayscale on request
    luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).round()
    assert gray.shape == (1, 9, 7) and (gray[0].float() - luma).abs().max() <= 1
    assert decode(write_image(tmp_path / "g.png", rgb[:1]), 3, decoder).shape == (3, 9, 7)  # and gray becomes RGB
    jpeg = decode(write_image(tmp_path / "b.JPG", smooth), 3, decoder)
    assert jpeg.dtype == torch.uint8 and (jpeg.float() - smooth.float()).abs().mean() < 3
    wide = (torch.arange(63, dtype=torch.int32) * 1000).reshape(1, 9, 7).to(torch.uint16)
    deep = decode(write_image(tmp_path / "c.png", wide), 1, decoder)  # 16-bit PNG: scaled to uint8
    assert deep.dtype == torch.uint8 and (deep.float() - wide.float() / 257).abs().max() <= 1
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError) as e:
        decode(tmp_path / "bad.png", 3, decoder)
    assert ".cpp" not in one_line_error(e, str(tmp_path / "bad.png"), "cannot decode the image")


def test_jpeg_files_decode_to_their_own_pixels(tmp_path, pics):
    _, test = pics
    d = spec(tmp_path).load()
    written = torch.stack(list(test.values())).flatten(1).float()  # in file order: dog/000, dog/001, emu/000, ...
    dist = torch.cdist(d.test_images.flatten(1).float(), written)  # JPEG is lossy on noise: nearest, not equal
    assert dist.argmin(1).tolist() == list(range(len(written)))


def test_resize_mixed_sizes_and_grayscale(tmp_path):
    write_image(tmp_path / "train" / "a" / "big.png", torch.full((3, 40, 30), 200, dtype=torch.uint8))
    write_image(tmp_path / "train" / "a" / "small.png", torch.full((3, 6, 5), 10, dtype=torch.uint8))
    write_image(tmp_path / "train" / "b" / "exact.png", torch.full((3, 12, 10), 90, dtype=torch.uint8))
    ds = spec(tmp_path, test_dir=None, test_fraction=0.34, num_classes=2, val_size=0, resize=True)
    d = ds.load()
    x = torch.cat([d.train_images, d.test_images])
    assert x.shape == (3, 3, 12, 10)
    assert sorted(int(v) for v in x.flatten(1).float().mean(1)) == [10, 90, 200]  # flat images stay flat
    assert all(len(v.unique()) == 1 for v in x)
    gray = spec(tmp_path, test_dir=None, test_fraction=0.34, num_classes=2, val_size=0, resize=True, channels=1).load()
    assert gray.train_images.shape[1:] == (1, 12, 10) and gray.test_images.shape[1:] == (1, 12, 10)


def test_held_out_test_set_is_fixed_whatever_the_seed(tmp_path, pics):
    ds = spec(tmp_path, test_dir=None, test_fraction=0.25, val_size=3)
    a, b = ds.load(seed=0), ds.load(seed=1)
    assert len(a.test_images) == 3 and torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.val_images, b.val_images)
    every = {x.numpy().tobytes() for d in (a,) for x in torch.cat([d.train_images, d.val_images, d.test_images])}
    assert len(every) == sum(CLASSES.values())  # train + val + test = the whole folder, no image twice


def cached_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []


def test_cache_skips_decoding_until_a_file_changes(tmp_path, pics):
    train, _ = pics
    first = spec(tmp_path).load()
    files = cached_files(tmp_path)
    assert len(files) == 2 and all(f.suffix == ".pt" for f in files)  # train and test, nothing half-written beside
    # overwrite a PNG with garbage of the same length and mtime: a cached load never opens it
    victim = next(iter(train))
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = spec(tmp_path).load()
    assert torch.equal(first.train_images, again.train_images) and torch.equal(first.test_images, again.test_images)
    # a new mtime invalidates the key: the folder is decoded again and the broken file found
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError) as e:
        spec(tmp_path).load()
    msg = one_line_error(e, str(victim), "cannot decode", "replace or remove the file")
    assert ".cpp" not in msg


def test_cache_keys_and_opt_out(tmp_path, pics):
    spec(tmp_path).load()
    spec(tmp_path, image_size=[8, 8], resize=True).load()  # another size: its own cache file, the first one kept
    assert len(cached_files(tmp_path)) == 4
    (tmp_path / "train" / "cat" / "extra.png").write_bytes((tmp_path / "train" / "cat" / "000.png").read_bytes())
    d = spec(tmp_path).load()  # an added file: rebuilt in place
    assert len(d.train_images) + len(d.val_images) == 13 and len(cached_files(tmp_path)) == 4
    spec(tmp_path, cache=False, cache_dir=str(tmp_path / "none")).load()
    assert not (tmp_path / "none").exists()


def test_a_corrupt_cache_is_rebuilt(tmp_path, pics):
    first = spec(tmp_path).load()
    for f in cached_files(tmp_path):
        f.write_bytes(b"not a torch file")
    again = spec(tmp_path).load()
    assert torch.equal(first.train_images, again.train_images)
    assert all(f.stat().st_size > 100 for f in cached_files(tmp_path))


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["nowhere", "image folder not found", "data.train_dir"]),
        ("no_classes", ["no class folders", "one sub-folder per class"]),
        ("empty_class", ["train/dog", "class folder has no .png/.jpg/.jpeg files"]),
        ("unreadable", ["train/cat/000.png", "cannot decode the image", "replace or remove the file"]),
        ("empty_file", ["train/cat/000.png", "empty file", "replace or remove it"]),
        ("mixed_sizes", ["train/dog/000.png", "is 9x9", "train/cat/000.png", "mixed sizes", "data.resize=true"]),
        ("wrong_size", ["is 12x10", "data.image_size=[9, 9]", "set data.image_size=[12, 10]", "data.resize=true"]),
        ("num_classes", ["3 class folders (cat, dog, emu)", "data.num_classes=4", "set data.num_classes=3"]),
        ("unknown_test_class", ["test", "yak", "not among the training classes"]),
        ("test_fraction", ["data.test_fraction=0.01", "leaves 0 test images"]),
    ],
)
def test_bad_folders_are_one_line_each(tmp_path, case, fragments):
    write_image_folder(tmp_path / "train", CLASSES)
    write_image_folder(tmp_path / "test", {"dog": 1}, seed=1)
    over: dict = {}
    if case == "missing":
        over = {"train_dir": "nowhere"}
    elif case == "no_classes":
        (tmp_path / "flat").mkdir()
        write_image(tmp_path / "flat" / "loose.png", torch.zeros(3, 12, 10, dtype=torch.uint8))
        over = {"train_dir": "flat"}
    elif case == "empty_class":
        for f in (tmp_path / "train" / "dog").iterdir():
            f.rename(f.with_suffix(".txt"))  # files that are not images do not count
    elif case in ("unreadable", "empty_file"):
        (tmp_path / "train" / "cat" / "000.png").write_bytes(
            b"" if case == "empty_file" else b"\x89PNG\r\n\x1a\n garbage"
        )
    elif case == "mixed_sizes":
        write_image(tmp_path / "train" / "dog" / "000.png", torch.zeros(3, 9, 9, dtype=torch.uint8))
    elif case == "wrong_size":
        over = {"image_size": [9, 9]}
    elif case == "num_classes":
        over = {"num_classes": 4}
    elif case == "unknown_test_class":
        write_image_folder(tmp_path / "test", {"yak": 1})
    elif case == "test_fraction":
        over = {"test_dir": None, "test_fraction": 0.01}
    with pytest.raises(DataError) as e:
        spec(tmp_path, **over).load()
    one_line_error(e, *fragments)


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"channels": 2, "mean": [0.5] * 2, "std": [0.2] * 2}, "data.channels=2 must be 1 (grayscale) or 3 (RGB)"),
        ({"train_dir": ""}, "data.train_dir=''"),
        ({"test_dir": None, "test_fraction": 1.5}, "data.test_fraction=1.5"),
        ({"resize": "yes"}, "data.resize='yes' must be true or false"),
        ({"cache": 1}, "data.cache=1"),
    ],
)
def test_validate_names_the_key(tmp_path, over, fragment):
    with pytest.raises(ConfigError) as e:
        spec(tmp_path, **over).validate()
    one_line_error(e, fragment)


@pytest.mark.slow
def test_trains_the_vit_and_the_cnn_end_to_end(tmp_path):
    """data=image_folder through the real entry point, both models in one multirun; then a bad folder is one line."""
    write_image_folder(tmp_path / "pics" / "train", {"a": 12, "b": 12, "c": 12}, hw=(20, 24))
    write_image_folder(tmp_path / "pics" / "test", {"a": 4, "b": 4, "c": 4}, hw=(36, 32), seed=1, suffix=".jpg")
    common = [
        "data=image_folder",
        f"data.root={tmp_path / 'pics'}",
        "data.train_dir=train",
        "data.test_dir=test",
        "data.num_classes=3",
        "data.val_size=6",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=1",
        "trainer.batch_size=10",
        "trainer.progress=false",
        "device=cpu",
    ]
    proc = run_train("-m", "model=vit,cnn", *common, f"hydra.sweep.dir={tmp_path / 'multirun'}", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        m = json.loads((tmp_path / "multirun" / job / "metrics.json").read_text())
        assert m["status"] == "completed" and m["epochs_completed"] == 1 and 0 <= m["test_acc"] <= 1, m
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    bad = run_train(*common, "data.num_classes=4", f"hydra.run.dir={tmp_path / 'bad'}", timeout=120)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("vit_lab: error: ")]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(errors) == 1, bad.stderr
    assert "set data.num_classes=3" in errors[0]
