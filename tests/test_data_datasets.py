"""Tests for vit_lab.data.datasets: the Dataset interface, the shared config checks, roots and seeded splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CONF
from data_files import MNIST_FILES, N_TRAIN, C, H, W, one_line_error, sample_ids, synth_idx
from hydra import compose, initialize_config_dir

from vit_lab.config import build
from vit_lab.data import DATA_ENV, Arrays, Dataset, IDXDataset, ImageData, InMemoryDataset, pin_data_env
from vit_lab.errors import ConfigError, DataError


@pytest.fixture
def synth(tmp_path):
    return synth_idx(tmp_path)


def make(cfg: dict, **over) -> IDXDataset:
    return IDXDataset(**{**cfg, **over})


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


def test_root_resolution(monkeypatch, tmp_path):
    ds = IDXDataset(
        name="m",
        root=None,
        subdir="MNIST/raw",
        files=MNIST_FILES,
        md5=None,
        channels=1,
        image_size=[28, 28],
        num_classes=10,
        mean=[0.1307],
        std=[0.3081],
    )
    monkeypatch.setenv("VIT_LAB_DATA", str(tmp_path / "env"))
    assert ds.resolve_root() == tmp_path / "env"
    monkeypatch.delenv("VIT_LAB_DATA")
    monkeypatch.chdir(tmp_path)
    assert ds.resolve_root() == tmp_path / "data"
    ds.root = str(tmp_path / "explicit")
    assert ds.resolve_root() == tmp_path / "explicit"


@dataclass(kw_only=True)
class Ramp(InMemoryDataset):
    """A newcomer's format in a dozen lines: images whose pixels are their index, labels index % num_classes."""

    n_train: int = 30
    n_test: int = 7
    bad: str | None = None  # break one thing, to see the base class catch it

    def check(self) -> None:
        if self.n_train < 1:
            raise ConfigError(f"data.n_train={self.n_train} must be >= 1")

    def read(self, root: Path) -> Arrays:
        def images(n: int) -> torch.Tensor:
            return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, *self.chw).contiguous()

        test_y = torch.arange(self.n_test) % self.num_classes + (self.num_classes if self.bad == "label" else 0)
        test_x = images(self.n_test)[:, :, :-1] if self.bad == "shape" else images(self.n_test)
        return Arrays(
            images(self.n_train),
            torch.arange(self.n_train) % self.num_classes,
            test_x,
            test_y,
            where={
                "train_images": str(root / "ramp-train"),
                "train_labels": str(root / "ramp-train"),
                "test_images": str(root / "ramp-test"),
                "test_labels": str(root / "ramp-labels"),
            },
        )


def ramp(tmp_path: Path, **over) -> Ramp:
    kw = dict(
        name="ramp",
        root=str(tmp_path),
        channels=2,
        image_size=[4, 3],
        num_classes=3,
        mean=[0.5, 0.5],
        std=[0.2, 0.2],
        val_size=5,
    )
    return Ramp(**{**kw, **over})


def test_a_new_format_gets_checks_and_splits_from_the_base_class(tmp_path):
    ds = ramp(tmp_path)
    assert isinstance(ds, Dataset) and ds.chw == (2, 4, 3) and ds.resolve_root() == tmp_path
    d = ds.load(seed=0)
    assert isinstance(d, ImageData)
    assert (len(d.train_images), len(d.val_images), len(d.test_images)) == (25, 5, 7)
    ids = d.train_images[:, 0, 0, 0].tolist() + d.val_images[:, 0, 0, 0].tolist()
    assert sorted(ids) == list(range(30))  # a split of the 30, seeded
    assert torch.equal(d.train_labels, d.train_images[:, 0, 0, 0].long() % 3)
    with pytest.raises(ConfigError) as e:  # its own check() runs in validate(), after the shared ones
        ramp(tmp_path, n_train=0).validate()
    one_line_error(e, "data.n_train=0")
    with pytest.raises(ConfigError) as e:
        ramp(tmp_path, mean=[0.5]).validate()
    one_line_error(e, "data.mean=[0.5]", "data.channels=2")
    with pytest.raises(DataError) as e:  # what read() returns is checked against the config, naming its source
        ramp(tmp_path, bad="shape").load()
    one_line_error(e, str(tmp_path / "ramp-test"), "(2, 3, 3)", "(2, 4, 3)", "data.image_size=[4, 3]")
    with pytest.raises(DataError) as e:
        ramp(tmp_path, bad="label").load()
    one_line_error(e, str(tmp_path / "ramp-labels"), "label 5", "data.num_classes=3")


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_data_config_builds_a_dataset(option):
    """Every conf/data option builds an object with the interface the trainer uses, valid before any file is read."""
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"data={option}"])
    spec = build(cfg.data, _convert_="all")
    assert isinstance(spec, Dataset) and spec.name == option
    spec.validate()
    c, h, w = spec.chw
    assert len(spec.mean) == len(spec.std) == c and h > 0 and w > 0 and spec.num_classes > 1


def test_pin_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, "rel/data")
    assert pin_data_env(tmp_path) == str(tmp_path / "rel" / "data") == os.environ[DATA_ENV]
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "abs"))
    assert pin_data_env("/elsewhere") == str(tmp_path / "abs")  # absolute values are left alone
    monkeypatch.delenv(DATA_ENV)
    assert pin_data_env(tmp_path) is None and DATA_ENV not in os.environ
