"""Every option of every config group composes through Hydra's compose API, and builds."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from vit_lab.config import build
from vit_lab.data import Dataset
from vit_lab.errors import ConfigError, ShapeError
from vit_lab.train import validate_config

GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("model", "data", "augment", "optimizer", "scheduler", "device", "trainer", "experiment")
}


def compose_cfg(*overrides: str, hydra_cfg: bool = False):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def test_groups_are_complete():
    assert {"vit", "cnn"} <= set(GROUPS["model"])
    assert {"mnist", "fashion_mnist"} <= set(GROUPS["data"])
    assert {"adam", "adamw", "sgd"} <= set(GROUPS["optimizer"])
    assert {"auto", "cpu", "cuda", "mps"} <= set(GROUPS["device"])
    assert {"tutorial", "tutorial_fixed"} <= set(GROUPS["experiment"])


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_cfg(f"{group}={option}")
    OmegaConf.resolve(cfg)
    spec = validate_config(cfg)
    assert isinstance(spec, Dataset)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    assert model(torch.zeros(2, *spec.chw)).shape == (2, spec.num_classes)
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    opt = build(cfg.optimizer)(params)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    sched = build(cfg.scheduler)(opt, total_steps=100, steps_per_epoch=10)
    opt.step()
    sched.step()
    assert 0 < opt.param_groups[0]["lr"] <= cfg.optimizer.lr
    build(cfg.augment)(torch.rand(2, *spec.chw), torch.Generator().manual_seed(0))


def test_default_main_job():
    cfg = compose_cfg()
    assert cfg.model._target_ == "vit_lab.models.MyViT"
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.scheduler._target_.endswith("warmup_cosine")
    assert cfg.device.name == "auto" and cfg.data.name == "mnist"
    for key in (
        "model.patch_size",
        "model.depth",
        "model.n_heads",
        "model.hidden_d",
        "model.mlp_ratio",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.seed",
        "data.root",
        "data.train_limit",
        "data.test_limit",
        "data.val_size",
    ):
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key


def test_tutorial_experiment_is_the_seed_setup():
    cfg = compose_cfg("experiment=tutorial")
    m = cfg.model
    assert (m.patch_size, m.hidden_d, m.depth, m.n_heads, m.attention, m.head_softmax) == (4, 8, 2, 2, "tutorial", True)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.005
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.data.normalize) == (128, 5, False)
    spec = validate_config(cfg)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    assert sum(p.numel() for p in model.parameters()) == 1642
    fixed = compose_cfg("experiment=tutorial_fixed")
    assert fixed.model.head_softmax is False
    fixed.model.head_softmax = True
    assert fixed == cfg  # the fix changes exactly one value


@pytest.mark.parametrize("preset,params,epochs", [("fast_cpu", 105_418, 12), ("best_cpu", 205_834, 36)])
def test_time_to_accuracy_presets_build_the_measured_models(preset, params, epochs):
    """The presets whose times and accuracies benchmarks/README.md reports: the same model size and budget, in bf16
    where the CPU computes it natively, with clipping, label smoothing and the weights' average; best_cpu compiled,
    with patch dropout for its first 26 epochs."""
    cfg = compose_cfg(f"experiment={preset}")
    spec = validate_config(cfg)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    assert sum(p.numel() for p in model.parameters()) == params
    assert (cfg.trainer.epochs, cfg.device.precision) == (epochs, "auto")
    decay = {"fast_cpu": 0.999, "best_cpu": 0.9995}[preset]
    assert (cfg.trainer.ema_decay, cfg.trainer.grad_clip, cfg.trainer.label_smoothing) == (decay, 1.0, 0.1)
    if preset == "best_cpu":
        assert cfg.device.compile and (model.patch_dropout, cfg.trainer.patch_dropout_epochs) == (0.5, 26)


def test_fashion_preset_is_best_cpu_on_clothes_mirrored_upright_for_longer():
    best, fashion = compose_cfg("experiment=best_cpu"), compose_cfg("experiment=fashion_cpu")
    spec = validate_config(fashion)
    assert spec.subdir == "FashionMNIST/raw" and fashion.augment.hflip == 0.5 and best.augment.hflip == 0.0
    assert fashion.augment.crop_padding == 2 and fashion.augment.degrees == 0 and list(fashion.augment.scale) == [1, 1]
    assert not build(fashion.augment).affine and build(best.augment).affine  # crop and mirror only
    assert (fashion.trainer.epochs, fashion.trainer.patch_dropout_epochs) == (64, 48)
    for key in ("model", "optimizer", "scheduler", "device"):
        assert fashion[key] == best[key]  # the same model and recipe, only the data, its augmentation and budget
    fashion.augment = best.augment
    fashion.trainer.epochs, fashion.trainer.patch_dropout_epochs = 36, 26
    fashion.data = best.data
    assert fashion == best


def test_conv_stem_composes_for_every_vit_preset():
    for preset in ("fast_cpu", "best_cpu", "best"):
        cfg = compose_cfg(f"experiment={preset}", "model.stem=conv")
        spec = validate_config(cfg)
        model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
        assert model.stem == "conv" and not hasattr(model, "linear_mapper")


def test_overrides_reach_the_model():
    cfg = compose_cfg("model.n_heads=8", "model.hidden_d=32", "model.patch_size=7", "data=fashion_mnist")
    spec = validate_config(cfg)
    model = build(cfg.model, chw=spec.chw, out_d=spec.num_classes)
    assert model.blocks[0].mhsa.n_heads == 8 and model.n_patches == 16
    assert spec.subdir == "FashionMNIST/raw"


def test_hydra_output_dirs():
    cfg = compose_cfg(hydra_cfg=True)
    assert cfg.hydra.run.dir.startswith("outputs/runs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/")


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.patch_size=5", ["model.patch_size=5", "28x28"]),
        ("model.n_heads=3", ["model.n_heads=3", "model.hidden_d=64"]),
        ("trainer.epochs=0", ["trainer.epochs=0"]),
        ("trainer.batch_size=-4", ["trainer.batch_size=-4"]),
        ("optimizer.lr=0", ["optimizer.lr=0"]),
        ("optimizer.lr=-1e-3", ["optimizer.lr"]),
        ("data.val_size=-1", ["data.val_size"]),
        ("trainer.limit_batches=-1", ["trainer.limit_batches=-1", ">= 0"]),  # ranges the schema's types cannot say
        ("device.threads=-2", ["device.threads=-2"]),
        ("trainer.label_smoothing=1.0", ["trainer.label_smoothing=1.0", "< 1"]),
    ],
)
def test_bad_values_fail_validation_with_one_line(override, words):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_shape_error_is_a_config_error():
    cfg = compose_cfg("model.patch_size=3")
    with pytest.raises(ShapeError):
        validate_config(cfg)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "mps"])
def test_device_options_share_auto_s_keys(device):
    """cpu/cuda/mps.yaml inherit every key but the name from auto.yaml; a key added there reaches them all."""
    cfg = compose_cfg(f"device={device}")
    assert cfg.device.name == device
    assert set(cfg.device) == set(compose_cfg("device=auto").device)
    assert cfg.device.compile is False and cfg.device.compile_mode == "default" and cfg.device.tune_malloc is True
