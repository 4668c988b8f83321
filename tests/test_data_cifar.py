"""Tests for vit_lab.data.cifar on small files in CIFAR-10's own format (Python 2 pickles), written by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, run_train
from data_files import CIFAR_TRAIN, cifar_batch, one_line_error, write_cifar
from hydra import compose, initialize_config_dir

from vit_lab.config import build
from vit_lab.data import CIFAR10Dataset
from vit_lab.errors import ConfigError, DataError

FOLDER = "cifar-10-batches-py"


def spec(tmp_path: Path, **over) -> CIFAR10Dataset:
    kw = dict(root=str(tmp_path), mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616], val_size=4)
    return CIFAR10Dataset(**{**kw, **over})


def test_reads_the_batches_into_uint8_nchw(tmp_path):
    content = write_cifar(tmp_path, n=8)
    d = spec(tmp_path).load(seed=0)
    assert (len(d.train_images), len(d.val_images), len(d.test_images)) == (36, 4, 8)
    assert d.train_images.dtype == torch.uint8 and d.train_images.shape[1:] == (3, 32, 32)
    data, labels = content["test_batch"]
    assert np.array_equal(d.test_images.numpy(), data.reshape(-1, 3, 32, 32)) and d.test_labels.tolist() == labels
    # a row is 1024 red values, then green, then blue, each 32x32 row-major
    assert np.array_equal(d.test_images[0, 0].numpy(), data[0, :1024].reshape(32, 32))
    assert np.array_equal(d.test_images[0, 2, 31].numpy(), data[0, -32:])
    # train + val = the five batches, each image with its label
    rows = {r.tobytes(): y for n in CIFAR_TRAIN for r, y in zip(*content[n])}
    got = {
        x.numpy().reshape(-1).tobytes(): int(y)
        for x, y in zip(torch.cat([d.train_images, d.val_images]), torch.cat([d.train_labels, d.val_labels]))
    }
    assert got == rows


def test_the_config_checks_torchvisions_md5s(tmp_path):
    write_cifar(tmp_path, n=4)
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(
            "config", overrides=["data=cifar10", f"data.root={tmp_path}", "data.download=null", "data.val_size=2"]
        )
    ds = build(cfg.data, _convert_="all")
    with pytest.raises(DataError) as e:  # the tests' files are not the real CIFAR-10
        ds.load()
    one_line_error(
        e,
        str(tmp_path / FOLDER / "data_batch_1"),
        "expected c99cafc152244af753f735de768cd75f",
        "data.md5.data_batch_1",
        "re-download",
    )
    ds.md5 = {name: hashlib.md5((tmp_path / FOLDER / name).read_bytes()).hexdigest() for name in ds.md5}
    assert len(ds.load().test_images) == 4


def test_python3_pickles_load_too(tmp_path):
    """A batch re-pickled by Python 3 (bytes keys, numpy 2's module names, protocol 4) reads the same."""
    content = write_cifar(tmp_path, n=4)
    data, labels = content["data_batch_2"]
    (tmp_path / FOLDER / "data_batch_2").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=4))
    d = spec(tmp_path, val_size=0).load()
    got = {x.numpy().reshape(-1).tobytes(): int(y) for x, y in zip(d.train_images, d.train_labels)}
    assert len(got) == 20 and all(got[r.tobytes()] == y for r, y in zip(data, labels))


class Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["cifar10 data not found", "lacks data_batch_3", "data.root=", "data.download=CIFAR10"]),
        ("truncated", ["data_batch_2", "not a CIFAR-10 python batch", "re-download it"]),
        ("foreign_global", ["data_batch_2", "not a CIFAR-10 python batch", "mkdir"]),
        ("not_a_dict", ["data_batch_2", "not a CIFAR-10 python batch (a list, not a dict"]),
        ("no_data", ["data_batch_2", "'data' must be a uint8 array (N, 3072)", "got NoneType"]),
        ("wrong_width", ["data_batch_2", "'data' must be a uint8 array (N, 3072)", "(4, 100)"]),
        ("label_count", ["data_batch_2", "3 labels for 4 images"]),
        ("label_range", ["data_batch_1", "label 10", "data.num_classes=10"]),
    ],
)
def test_bad_batches_are_one_line_each(tmp_path, case, fragments):
    content = write_cifar(tmp_path, n=4)
    path = tmp_path / FOLDER / "data_batch_2"
    data, labels = content["data_batch_2"]
    if case == "missing":
        (tmp_path / FOLDER / "data_batch_3").unlink()
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif case == "foreign_global":
        path.write_bytes(pickle.dumps({"data": Evil(tmp_path / "pwned")}, protocol=2))
    elif case == "not_a_dict":
        path.write_bytes(pickle.dumps([1, 2], protocol=2))
    elif case == "no_data":
        path.write_bytes(pickle.dumps({"labels": labels}, protocol=2))
    elif case == "wrong_width":
        path.write_bytes(pickle.dumps({"data": data[:, :100].copy(), "labels": labels}, protocol=2))
    elif case == "label_count":
        path.write_bytes(pickle.dumps({"data": data, "labels": labels[:3]}, protocol=2))
    elif case == "label_range":
        first, _ = content["data_batch_1"]
        (tmp_path / FOLDER / "data_batch_1").write_bytes(
            pickle.dumps({"data": first, "labels": [10, 0, 0, 0]}, protocol=2)
        )
    with pytest.raises(DataError) as e:
        spec(tmp_path).load()
    one_line_error(e, *fragments)
    assert not (tmp_path / "pwned").exists()  # reading a batch never runs code


def test_download_writes_what_is_read(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake(root, train, download):  # writes what torchvision's CIFAR10 writes: <root>/cifar-10-batches-py/*
        calls.append((root, train, download))
        folder = Path(root) / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(CIFAR_TRAIN if train else ["test_batch"]):
            (folder / name).write_bytes(cifar_batch(3, seed, name)[0])

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake)
    d = spec(tmp_path, download="CIFAR10", val_size=5).load()
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert (len(d.train_images), len(d.test_images)) == (10, 3)


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train, download):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\nno network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as e:
        spec(tmp_path, download="CIFAR10").load()
    one_line_error(e, "lacks data_batch_1", "data.download=CIFAR10 failed", "no network")


@pytest.mark.parametrize(
    "over, fragment",
    [
        ({"image_size": [28, 28]}, "data.image_size=[28, 28]"),
        ({"channels": 1, "mean": [0.5], "std": [0.2]}, "data.channels=1"),
        ({"train_files": []}, "data.train_files=[]"),
        ({"md5": {"data_batch_1": "xyz"}}, "data.md5="),
        ({"download": "MNIST"}, "data.download='MNIST' must be null or one of CIFAR10"),
    ],
)
def test_validate_names_the_key(tmp_path, over, fragment):
    with pytest.raises(ConfigError) as e:
        spec(tmp_path, **over).validate()
    one_line_error(e, fragment)


@pytest.mark.slow
def test_trains_the_vit_and_the_cnn_end_to_end(tmp_path):
    """data=cifar10 through the real entry point: the default ViT (patch 4 of 32x32) and the CNN, one multirun."""
    write_cifar(tmp_path / "data", n=16)
    proc = run_train(
        "-m",
        "model=vit,cnn",
        "data=cifar10",
        f"data.root={tmp_path / 'data'}",
        "data.md5=null",
        "data.download=null",
        "data.val_size=16",
        "trainer.epochs=1",
        "trainer.batch_size=16",
        "trainer.progress=false",
        "device=cpu",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, model in (("0", "MyViT"), ("1", "SimpleCNN")):
        m = json.loads((tmp_path / "multirun" / job / "metrics.json").read_text())
        assert m["status"] == "completed" and m["epochs_completed"] == 1 and 0 <= m["test_acc"] <= 1, m
        assert m["model"] == model and m["data_root"] == str(tmp_path / "data"), m
