"""The typed schema (vit_lab/schema.py): wrong types and unknown keys fail while Hydra composes, in every group,
as one line naming the key (through vit_lab.cli, as the command prints it)."""

from __future__ import annotations

import pytest
from conftest import CONF, run_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from vit_lab import schema  # noqa: F401 - registers the schemas, as every entry point does
from vit_lab.cli import describe


def compose_error(*overrides: str) -> str:
    """The one line vit_lab.cli prints for the composition error these overrides cause."""
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigCompositionException) as err, initialize_config_dir(config_dir=str(CONF)):
        compose("config", overrides=list(overrides))
    line = describe(err.value)
    assert line is not None and "\n" not in line
    return line


# (group option, override, words of the line): a wrong type or an unknown key in each typed group
CASES = [
    ("trainer=default", "trainer.epochs=abc", ["trainer.epochs", "abc", "Integer"]),
    ("trainer=default", "trainer.epochz=3", ["trainer.epochz", "Did you mean", "epochs"]),
    ("trainer=default", "trainer.checkpoint=maybe", ["trainer.checkpoint", "maybe"]),
    ("trainer=default", "trainer.progress=sometimes", ["trainer.progress", "sometimes"]),
    ("debug=profile", "trainer.profile.active=x", ["trainer.profile.active", "Integer"]),
    ("device=cpu", "device.precision=3", ["device.precision", "fp32", "bf16"]),
    ("device=auto", "device.compile_mode=turbo", ["device.compile_mode", "turbo", "reduce-overhead"]),
    ("device=auto", "device.threads=two", ["device.threads", "two"]),
    ("model=vit", "model.depth=1.5", ["model.depth", "1.5", "Integer"]),
    ("model=vit", "model.attn_kernel=flash", ["model.attn_kernel", "flash", "sdpa"]),
    ("model=vit", "model.width=3", ["model.width"]),  # a CNN key on the ViT
    ("model=cnn", "model.width=wide", ["model.width", "wide"]),
    ("model=cnn", "model.depth=3", ["model.depth"]),  # a ViT key on the CNN
    ("data=mnist", "data.val_size=many", ["data.val_size", "many"]),
    ("data=mnist", "data.image_size=[28,x]", ["data.image_size", "x"]),
    ("data=fashion_mnist", "data.num_clases=3", ["data.num_clases", "num_classes"]),
    ("data=cifar10", "data.train_files=3", ["data.train_files"]),
    ("data=image_folder", "data.test_fraction=half", ["data.test_fraction", "half"]),
    ("data=image_folder", "data.channels_last=true", ["data.channels_last"]),  # an IDX key on image folders
    ("augment=crop", "augment.crop_padding=2.5", ["augment.crop_padding", "2.5"]),
    ("augment=affine", "augment.degree=5", ["augment.degree", "degrees"]),
    ("optimizer=adamw", "optimizer.lr=fast", ["optimizer.lr", "fast", "Float"]),
    ("optimizer=sgd", "optimizer.nesterov=perhaps", ["optimizer.nesterov", "perhaps"]),
    ("optimizer=sgd", "optimizer.betas=[0.9,0.99]", ["optimizer.betas"]),  # an Adam key on SGD
    ("scheduler=warmup_cosine", "scheduler.warmup_epochs=one", ["scheduler.warmup_epochs", "one"]),
    ("scheduler=constant", "scheduler.min_lr_ratio=0.1", ["scheduler.min_lr_ratio"]),
]


@pytest.mark.parametrize("option,override,words", CASES, ids=[c[1] for c in CASES])
def test_wrong_type_or_unknown_key_fails_at_composition(option, override, words):
    line = compose_error(option, override)
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize(
    "group", ["trainer", "device", "model", "data", "augment", "optimizer", "scheduler", "distill"]
)
def test_every_option_of_the_typed_groups_is_typed(group):
    """Each YAML option of these groups names its schema, so its keys are typed (not plain dicts)."""
    for path in sorted((CONF / group).glob("*.yaml")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF)):
            cfg = compose("config", overrides=[f"{group}={path.stem}"])
        node = cfg[group]
        assert OmegaConf.get_type(node) in schema.SCHEMAS.values(), (group, path.stem)


def test_yaml_values_match_their_schema_defaults_where_both_exist():
    """The schema's code defaults agree with the YAML defaults (e.g. device.tune_malloc: true in both)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config")
    for group, cls in (("trainer", schema.Trainer), ("device", schema.Device)):
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(OmegaConf.structured(cls)), group


def test_typed_values_keep_their_plain_python_types():
    """Literal and Union fields hold plain str/bool (saved configs and checkpoints keep plain values)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config", overrides=["trainer.progress=false", "optimizer.lr=1"])
    assert cfg.trainer.progress is False and type(cfg.device.precision) is str and cfg.optimizer.lr == 1.0
    assert isinstance(cfg.optimizer.lr, float)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,words",
    [
        ("trainer.epochs=abc", ["trainer.epochs", "abc"]),
        ("trainer.epochz=3", ["trainer.epochz", "epochs"]),
        ("model.depth=1.5", ["model.depth", "1.5"]),
        ("device.precision=3", ["device.precision", "fp32"]),
    ],
)
def test_the_command_prints_one_line_and_exits_2(tmp_path, override, words):
    proc = run_train(override, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "Warning" not in line and not line.startswith("  ")
    ]
    assert len(lines) == 1 and lines[0].startswith("vit_lab: error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "run").exists()  # refused before any job started
