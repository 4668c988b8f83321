"""Typed schemas of the config groups, registered in Hydra's ConfigStore as ``schema/<group>[/<option>]``.

Each ``conf/<group>/*.yaml`` lists its schema first in its defaults (``- /schema/trainer@_here_``, then
``_self_``), so Hydra checks the file's values and every override against these types while it composes: a wrong
type (``trainer.epochs=abc``) or an unknown key (``trainer.epochz=3``) fails there, with Hydra's message naming the
key (made one line by ``vit_lab.cli``). What types cannot say (a patch size dividing the image, ranges) is checked
in one place, ``vit_lab.job.validate_config``. A config file without a schema line (your own ``model=mine``) is
not typed. Importing this module registers the schemas (``vit_lab.config`` imports it, so every entry point
does); import it before composing with Hydra's compose API in your own code.
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import MISSING


@dataclass
class Profile:
    wait: int = 1
    warmup: int = 2
    active: int = 4


@dataclass
class Trainer:
    epochs: int = 15
    batch_size: int = 128
    eval_batch_size: int = 1000
    seed: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    patch_dropout_epochs: int | None = None
    checkpoint: bool = True
    progress: bool | Literal["auto"] = "auto"
    limit_batches: int | None = None
    overfit_batches: int = 0
    profile: Profile | None = None


@dataclass
class Device:
    name: str = "auto"  # auto, cpu, cuda, cuda:N, mps (checked against the machine, vit_lab.device)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # fp16 is refused with its reason (vit_lab.device)
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    threads: int | None = None
    tune_malloc: bool = True


@dataclass
class ViT:
    _target_: str = "vit_lab.models.MyViT"
    patch_size: Any = 4  # an integer or [height, width] (OmegaConf unions hold scalars only)
    depth: int = 4
    hidden_d: int = 64
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    attention: Literal["fused", "tutorial"] = "fused"
    attn_kernel: Literal["auto", "sdpa", "explicit", "cpu"] = "auto"
    pos_embed: Literal["sinusoidal", "learned"] = "learned"
    pool: Literal["cls", "mean"] = "cls"
    head_softmax: bool = False
    distill_token: bool = False
    stem: Literal["linear", "conv"] = "linear"
    patch_dropout: float = 0.0


@dataclass
class CNN:
    _target_: str = "vit_lab.models.SimpleCNN"
    width: int = 32
    dropout: float = 0.1


@dataclass
class Data:
    """The keys every in-memory format shares (``vit_lab.data.InMemoryDataset``)."""

    _target_: str = MISSING
    name: str = MISSING
    root: str | None = None
    channels: int = 1
    image_size: list[int] = field(default_factory=lambda: [28, 28])
    num_classes: int = 10
    mean: list[float] = MISSING
    std: list[float] = MISSING
    normalize: bool = True
    val_size: int = 5000
    train_limit: int | None = None
    test_limit: int | None = None


@dataclass
class IDXData(Data):
    subdir: str = MISSING
    files: dict[str, str] = MISSING
    md5: dict[str, str | None] | None = None
    download: str | None = None
    channels_last: bool = False


@dataclass
class CIFAR10Data(Data):
    subdir: str = "cifar-10-batches-py"
    train_files: list[str] = MISSING
    test_files: list[str] = MISSING
    md5: dict[str, str | None] | None = None
    download: str | None = None


@dataclass
class ImageFolderData(Data):
    train_dir: str = "images/train"
    test_dir: str | None = "images/test"
    test_fraction: float = 0.2
    resize: bool = True
    cache: bool = True
    cache_dir: str | None = None


@dataclass
class Augment:
    _target_: str = "vit_lab.data.Augment"
    enabled: bool = False
    max_shift: float = 0.0
    degrees: float = 0.0
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_padding: int = 0
    hflip: float = 0.0


@dataclass
class Optimizer:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = MISSING
    weight_decay: float = 0.0


@dataclass
class Adam(Optimizer):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    fused: bool | None = None


@dataclass
class SGD(Optimizer):
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class Scheduler:
    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class WarmupCosine(Scheduler):
    warmup_epochs: float = 1.0
    warmup_fraction: float | None = 0.1
    min_lr_ratio: float = 0.01


@dataclass
class Distill:
    """Distillation from a finished run (``vit_lab.distill``); the ``distill`` group is null (off) by default."""

    teacher: str | None = None  # the teacher's run directory (relative: to the folder the command runs in)
    weights: Literal["last", "best"] = "last"
    kind: Literal["hard", "soft"] = "hard"
    alpha: float = 0.5  # the teacher's share of the loss
    tau: float = 1.0  # soft distillation's temperature


SCHEMAS: dict[str, type] = {
    "trainer": Trainer,
    "device": Device,
    "model/vit": ViT,
    "model/cnn": CNN,
    "data/idx": IDXData,
    "data/cifar10": CIFAR10Data,
    "data/image_folder": ImageFolderData,
    "augment": Augment,
    "optimizer/adam": Adam,
    "optimizer/sgd": SGD,
    "scheduler/constant": Scheduler,
    "scheduler/warmup_cosine": WarmupCosine,
    "distill": Distill,
}


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent): ``schema/trainer``, ``schema/model/vit``, ..."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for path, node in SCHEMAS.items():
        group, _, name = path.rpartition("/")
        cs.store(group=f"schema/{group}" if group else "schema", name=name, node=node)


register()  # on import: vit_lab.config (every entry point) imports this module before Hydra composes
