"""The CUDA code path, exercised on the CPU: device selection, precision names, bf16 autocast, and the trainer's
branch that keeps the whole dataset on the accelerator (with CUDA mocked)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import one_epoch_cfg

from vit_lab import device as dev
from vit_lab.errors import ConfigError, DeviceError


@pytest.fixture
def cuda(monkeypatch):
    """Pretend `n` CUDA devices exist (no MPS)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(dev, "_mps_available", lambda: False)

    return set_count


def test_auto_picks_cuda_when_present(cuda):
    cuda(2)
    assert dev.resolve_device("auto") == torch.device("cuda")
    assert dev.resolve_device("cuda") == torch.device("cuda")
    assert dev.resolve_device("cuda:1") == torch.device("cuda:1")


def test_auto_falls_back_to_cpu(cuda):
    cuda(0)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_mps_before_cpu(cuda, monkeypatch):
    cuda(0)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("mps")


def test_absent_cuda_is_a_clear_error(cuda):
    cuda(0)
    with pytest.raises(DeviceError, match="no CUDA GPU") as err:
        dev.resolve_device("cuda")
    assert "device=cpu" in str(err.value)


def test_cuda_index_out_of_range(cuda):
    cuda(1)
    with pytest.raises(DeviceError, match="only 1 CUDA device") as err:
        dev.resolve_device("cuda:1")
    assert "cuda:0" in str(err.value)


def test_unknown_device_name():
    with pytest.raises(ConfigError, match="tpu"):
        dev.resolve_device("tpu")


def test_absent_mps(cuda):
    cuda(0)
    with pytest.raises(DeviceError, match="MPS"):
        dev.resolve_device("mps")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_precision_names(device_type):
    d = torch.device(device_type)
    assert isinstance(dev.autocast(d, "fp32"), contextlib.nullcontext)
    ctx = dev.autocast(d, "bf16")
    assert isinstance(ctx, torch.autocast)
    assert ctx.fast_dtype == torch.bfloat16 and ctx.device == device_type
    with pytest.raises(ConfigError, match="fp8"):
        dev.autocast(d, "fp8")


def test_fp16_is_refused_with_its_reason():
    """No gradient scaler, so fp16 would silently underflow small gradients: refused, pointing at bf16."""
    with pytest.raises(ConfigError) as err:
        dev.autocast(torch.device("cpu"), "fp16")
    message = str(err.value)
    assert "\n" not in message and "device.precision=fp16" in message
    assert "gradient scaler" in message and "device.precision=bf16" in message


XEON_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
    "ht syscall nx pdpe1gb rdtscp lm constant_tsc avx2 avx512f avx512dq avx512cd avx512bw avx512vl"
)
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+ (with bf16 and amx in its name, which must not count)
flags\t\t: {flags}
bugs\t\t: spectre_v1 spectre_v2 avx512_bf16_is_not_a_bug_name

processor\t: 1
flags\t\t: {flags}
"""


@pytest.mark.parametrize(
    "extra, has",
    [
        ("", False),
        (" avx512_bf16", True),
        (" amx_bf16 amx_tile amx_int8", True),
        (" avx512_vnni amx_tile amx_int8", False),
    ],
)
def test_cpuinfo_bf16_flags(extra, has):
    assert dev.cpuinfo_has_bf16(CPUINFO.format(flags=XEON_FLAGS + extra)) is has


def test_cpuinfo_without_flags_lines():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16\n"
    assert dev.cpuinfo_has_bf16(arm) is False  # aarch64 lists "Features"; its bf16 path is not the x86 one measured
    assert dev.cpuinfo_has_bf16("") is False


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_follows_the_hardware(monkeypatch, has_bf16):
    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: has_bf16)
    want = "bf16" if has_bf16 else "fp32"
    assert dev.resolve_precision(torch.device("cpu"), "auto") == want
    assert dev.resolve_precision(torch.device("cuda"), "auto") == "fp32"  # bf16 not measured to win there
    assert dev.resolve_precision(torch.device("mps"), "auto") == "fp32"
    assert dev.resolve_precision(torch.device("cpu"), "bf16") == "bf16"  # an explicit name stays
    ctx = dev.autocast(torch.device("cpu"), "auto")
    assert (
        (isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16)
        if has_bf16
        else isinstance(ctx, contextlib.nullcontext)
    )
    with pytest.raises(ConfigError, match="auto"):
        dev.resolve_precision(torch.device("cpu"), "bf32")  # the message lists auto among the choices


@pytest.mark.parametrize("has_bf16", [True, False])
def test_a_run_with_auto_precision_records_and_logs_its_choice(mnist_root, tmp_path, monkeypatch, caplog, has_bf16):
    import logging

    import vit_lab.train as train_mod

    monkeypatch.setattr(dev, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    with caplog.at_level(logging.INFO, logger="vit_lab.train"):
        train_mod.train(one_epoch_cfg("device=cpu", "device.precision=auto", "logger=none"), tmp_path)
    chosen = "bf16" if has_bf16 else "fp32"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["precision"] == chosen and metrics["status"] == "completed"
    assert [r.getMessage() for r in caplog.records].count(f"precision {chosen} (device.precision=auto)") == 1


def test_bf16_autocast_on_cpu_gives_bf16_matmuls_and_float_loss():
    from vit_lab.models import MyViT

    torch.manual_seed(0)
    model = MyViT(hidden_d=16, n_heads=2, depth=1, patch_size=7)
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with dev.autocast(torch.device("cpu"), "bf16"):
        assert lin(x).dtype == torch.bfloat16
        assert (x @ x.T).dtype == torch.bfloat16
        out = model(torch.rand(4, 1, 28, 28))
        loss = torch.nn.functional.cross_entropy(out.float(), torch.arange(4))  # what the trainer does
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    with dev.autocast(torch.device("cpu"), "fp32"):
        assert lin(x).dtype == torch.float32


def _cuda_as_cpu(device):
    """A 'cuda' device argument becomes cpu; anything else passes through."""
    if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
        return torch.device("cpu")
    return device


def test_trainer_keeps_the_dataset_on_the_accelerator(mnist_root, tmp_path, monkeypatch):
    """With a (mocked) CUDA device, the trainer moves the whole uint8 dataset to it once, and batches come from it."""
    import vit_lab.train as train_mod

    moved = []
    real_tensor_to, real_module_to = torch.Tensor.to, torch.nn.Module.to
    real_tensor, real_zeros = torch.tensor, torch.zeros

    def tensor_to(self, *args, **kwargs):
        if args and _cuda_as_cpu(args[0]) is not args[0]:
            moved.append((tuple(self.shape), self.dtype))
            args = (torch.device("cpu"),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = _cuda_as_cpu(kwargs["device"])
        return real_tensor_to(self, *args, **kwargs)

    def module_to(self, *args, **kwargs):
        return real_module_to(self, *[_cuda_as_cpu(a) for a in args], **kwargs)

    def factory(real):
        def make(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cuda_as_cpu(kwargs["device"])
            return real(*args, **kwargs)

        return make

    tuned = []
    monkeypatch.setattr(dev, "tune_malloc", lambda: tuned.append(1))
    monkeypatch.setattr(train_mod, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    monkeypatch.setattr(torch.nn.Module, "to", module_to)
    monkeypatch.setattr(torch, "tensor", factory(real_tensor))
    monkeypatch.setattr(torch, "zeros", factory(real_zeros))
    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    train_mod.train(one_epoch_cfg(), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["device"] == "cuda"
    # the six dataset tensors crossed once, as uint8 images and int64 labels, before any batch
    first_six = moved[:6]
    assert (1024, 1, 28, 28) in [s for s, _ in first_six] and all(
        dt == torch.uint8 for s, dt in first_six if len(s) == 4
    )
    assert sum(1 for s, dt in moved if s == (1024, 1, 28, 28) and dt == torch.uint8) == 1
    assert tuned == []  # glibc tuning is for CPU runs only


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_tunes_malloc_on_cpu_runs(mnist_root, tmp_path, monkeypatch, enabled):
    import vit_lab.train as train_mod

    tuned = []
    monkeypatch.setattr(dev, "tune_malloc", lambda: tuned.append(1))
    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    train_mod.train(one_epoch_cfg("device=cpu", f"device.tune_malloc={str(enabled).lower()}"), tmp_path)
    assert tuned == ([1] if enabled else [])


_FAULTS = """
import resource, sys, torch
from vit_lab.device import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    xs = [torch.ones(2**k) for k in (18, 19, 20, 21, 19, 18)]  # 1-8 MiB activations, freed together
    return sum(x.sum() for x in xs)
step()
before = faults()
for _ in range(20):
    step()
print((faults() - before) // 20)
"""


def test_tune_malloc_stops_page_faulting_freed_activations():
    """Untuned, glibc gives freed activations back to the OS and the next step faults their pages in again."""
    import subprocess
    import sys

    per_alloc = {
        mode: int(
            subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("default", "tuned")
    }
    assert per_alloc["default"] > 1000  # 20 MiB a step = 5,120 pages; glibc keeps some of them
    assert per_alloc["tuned"] < per_alloc["default"] / 10


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_trainer_compiles_with_the_configured_mode(mnist_root, tmp_path, monkeypatch, mode):
    """device.compile_mode reaches torch.compile (reduce-overhead = CUDA graphs on a GPU; the compile itself is
    replaced here: what matters is the call the trainer makes)."""
    import vit_lab.train as train_mod

    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: calls.append(mode) or model)
    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    train_mod.train(one_epoch_cfg("device.compile=true", f"device.compile_mode={mode}"), tmp_path)
    assert calls == [None if mode == "default" else mode]
