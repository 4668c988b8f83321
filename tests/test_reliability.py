"""Reliability (issue 6): bad input is one clear line, interruptions resume exactly, kills never leave half files.

Most bad-input cases run the real entry point in-process (``cli(main)`` with sys.argv, which is what
``python -m vit_lab.train`` does) because a subprocess costs seconds of imports; a few run as real
subprocesses to prove the command line itself. Data cases use a small fake MNIST root written in tmp_path.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONF, MICRO, REPO, data_root, run_train
from omegaconf import OmegaConf

from vit_lab import train as train_mod
from vit_lab.cli import cli, one_line
from vit_lab.io import atomic_write, write_json

NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ----------------------------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def fake_mnist(root: Path, n_train: int = 96, n_test: int = 32, gz: bool = True, **arrays: np.ndarray) -> Path:
    """An MNIST-layout root (root/MNIST/raw) of random 28x28 images; ``arrays`` replace any of the four files."""
    rng = np.random.default_rng(0)
    data = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    data.update(arrays)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, arr in data.items():
        content = idx_bytes(arr)
        (raw / (NAMES[key] + (".gz" if gz else ""))).write_bytes(gzip.compress(content) if gz else content)
    return root


def fake_overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        "data.md5=null",
        "data.download=null",
        "data.val_size=16",
        "trainer.epochs=1",
        "trainer.batch_size=16",
        "model.depth=1",
        "model.hidden_d=16",
        "model.patch_size=7",
        "device=cpu",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.returncode, self.stdout, self.stderr = code, out, err


def cli_run(capsys, monkeypatch, *args: str) -> Result:
    """`python -m vit_lab.train args...`, in-process: the same cli(main) the module runs."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("VIT_LAB_DATA", str(data_root()))
    # --config-path: Hydra resolves "../conf" from the module file only when it runs as __main__
    monkeypatch.setattr(sys, "argv", ["vit_lab/train.py", "--config-path", str(CONF), *args])
    capsys.readouterr()
    try:
        cli(train_mod.main)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_one_clear_line(proc, *words: str) -> str:
    """Non-zero exit, no traceback, and exactly one line on stderr that names every word."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "Warning" not in line and not line.startswith("  ")
    ]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vit_lab: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def read(path: Path):
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------- bad overrides


@pytest.mark.parametrize(
    "override,words",
    [
        ("model.foo=1", ["model.foo", "+model.foo=1"]),  # unknown key (Hydra's own error, made one line)
        ("trainer.epochs_typo=3", ["trainer.epochs_typo"]),
        ("model=foo", ["model/foo", "cnn, vit"]),  # unknown group option, with the options
        ("distill.teacher=runs/cnn", ["distill.teacher", "group is off", "distill=hard", "hard, soft"]),  # group off
        ("model.stem=resnet", ["model.stem", "resnet", "linear", "conv"]),
        ("model.patch_dropout=1", ["model.patch_dropout=1.0", "[0, 1)"]),
        ("trainer.patch_dropout_epochs=-2", ["trainer.patch_dropout_epochs=-2"]),
        ("optimizer=nadam", ["optimizer/nadam", "adamw"]),
        ("model.depth=[", ["model.depth=["]),  # an override Hydra cannot parse
        ("trainer.epochs=two", ["trainer.epochs", "two"]),  # wrong types
        ("trainer.epochs=1.5", ["trainer.epochs", "1.5", "Integer"]),
        ("optimizer.lr=abc", ["optimizer.lr", "abc"]),
        ("trainer.epochs=-1", ["trainer.epochs=-1"]),  # zero or negative sizes, epochs, batch, lr
        ("trainer.batch_size=0", ["trainer.batch_size=0"]),
        ("trainer.eval_batch_size=-8", ["trainer.eval_batch_size=-8"]),
        ("optimizer.lr=0", ["optimizer.lr=0"]),
        ("optimizer.lr=-0.001", ["optimizer.lr=-0.001"]),
        ("model.hidden_d=0", ["model.hidden_d=0"]),
        ("model.depth=-1", ["model.depth=-1"]),
        ("model.n_heads=0", ["model.n_heads=0"]),
        ("model.patch_size=0", ["model.patch_size"]),
        ("model.mlp_ratio=0", ["model.mlp_ratio=0"]),
        ("data.image_size=[0,28]", ["data.image_size"]),
        ("data.val_size=-1", ["data.val_size"]),
        ("model.patch_size=5", ["model.patch_size=5", "28x28"]),  # patch does not divide the image
        ("model.n_heads=3", ["model.n_heads=3", "model.hidden_d=64"]),  # heads do not divide the width
        ("device.precision=fp8", ["device.precision", "fp8"]),
        ("device.precision=fp16", ["device.precision=fp16", "gradient scaler", "bf16"]),  # refused: no scaler
        ("device=mps", ["device=mps", "device=cpu"]),  # absent devices
        ("device.name=cuda:99", ["device=cuda:99"]),  # absent on any machine with < 100 GPUs
    ],
)
def test_bad_override_is_one_line_before_any_data_is_read(capsys, monkeypatch, tmp_path, override, words):
    # the data root does not exist: the config error must come first, before any data loading
    proc = cli_run(
        capsys,
        monkeypatch,
        override,
        f"data.root={tmp_path / 'no-data'}",
        "data.download=null",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    line = assert_one_clear_line(proc, *words)
    assert "no-data" not in line and proc.returncode == 2
    metrics = tmp_path / "run" / "metrics.json"
    assert not metrics.exists() or read(metrics)["status"] == "failed"


@pytest.mark.parametrize(
    "param,words",
    [
        ("{trainer.seed:'range(1,5,step=0)'}", ["hydra.sweeper.params", "nonzero step"]),
        ("{trainer.seed:'zzz(1,2)'}", ["zzz"]),
        ("{optimizer.lr:'interval(1,'}", ["interval(1,"]),
    ],
)
def test_invalid_sweeper_params_is_one_line(capsys, monkeypatch, tmp_path, param, words):
    proc = cli_run(
        capsys,
        monkeypatch,
        "-m",
        "hydra/sweeper=optuna",
        f"+hydra.sweeper.params={param}",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert_one_clear_line(proc, *words)
    assert not any(tmp_path.rglob("metrics.json"))  # nothing was launched


@pytest.mark.slow
def test_official_sweeper_reports_the_trials_error_not_a_bad_parameter(tmp_path):
    """Every trial fails on missing data: the data error reaches the console and the last line says no trial
    completed, instead of blaming hydra.sweeper.params."""
    (tmp_path / "outputs").mkdir()
    proc = run_train(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.storage=sqlite:///outputs/optuna.db",
        "hydra.sweeper.n_trials=2",
        "model.depth=choice(1,2)",
        "trainer.epochs=1",
        cwd=tmp_path,
        env={"VIT_LAB_DATA": str(tmp_path / "nothing")},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vit_lab: error: ")]
    assert len(errors) == 1 and "no trial of the sweep completed" in errors[0], proc.stderr
    assert "hydra.sweeper.params" not in errors[0]
    assert "mnist data not found" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_storage_in_a_missing_folder_is_one_line(tmp_path):
    proc = run_train(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.storage=sqlite:///nowhere/optuna.db",
        "hydra.sweeper.n_trials=1",
        "model.depth=choice(1,2)",
        cwd=tmp_path,
    )
    assert_one_clear_line(proc, "hydra.sweeper.storage", "unable to open database file")


def test_one_line_folds_hydra_messages():
    msg = (
        "In 'config': Could not find 'model/foo'\n\nAvailable options in 'model':\n\tcnn\n\tvit\n"
        "Config search path:\n\tprovider=hydra, path=pkg://hydra.conf\n"
    )
    assert one_line(msg) == "In 'config': Could not find 'model/foo'; Available options in 'model': cnn, vit"
    assert (
        one_line("Key 'foo' is not in struct\n    full_key: model.foo\n    object_type=dict")
        == "Key 'foo' is not in struct"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,words",
    [
        ("model.foo=1", ["model.foo"]),
        ("model=foo", ["model/foo", "cnn, vit"]),
    ],
)
def test_hydra_errors_one_line_on_the_real_command(tmp_path, override, words):
    proc = run_train(override, f"hydra.run.dir={tmp_path}")
    assert_one_clear_line(proc, *words)
    assert proc.returncode == 2


@pytest.mark.slow
def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # tests run as root: chmod cannot stop root, a file in the path can
    proc = run_train("trainer.progress=false", f"hydra.run.dir={blocker}/run")
    assert_one_clear_line(proc, str(blocker), "hydra.run.dir")


@pytest.mark.slow
def test_full_tracebacks_with_hydra_full_error(tmp_path):
    for args, error in ((["model.foo=1"], "ConfigCompositionException"), (["trainer.batch_size=0"], "ConfigError")):
        proc = popen_train(*args, f"hydra.run.dir={tmp_path / error}", env={"HYDRA_FULL_ERROR": "1"})
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and "Traceback" in err and error in err, err
    assert read(tmp_path / "ConfigError" / "metrics.json")["status"] == "failed"  # still recorded


# ----------------------------------------------------------------------------------------------- bad data


def test_fake_root_trains(capsys, monkeypatch, tmp_path):
    """The fake root is valid, so each corruption below is what fails."""
    root = fake_mnist(tmp_path / "data")
    proc = cli_run(capsys, monkeypatch, *fake_overrides(root, tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert read(tmp_path / "run" / "metrics.json")["status"] == "completed"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 8):
        b[i] ^= 0xFF
    path.write_bytes(bytes(b))


def _plain(path: Path, content: bytes) -> None:
    path.unlink()
    path.with_suffix("").write_bytes(content)


RAW = "MNIST/raw/"


@pytest.mark.parametrize(
    "case,words",
    [
        ("missing root", ["data not found", "no-such-root"]),
        ("missing file", ["t10k-labels-idx1-ubyte", "data not found"]),
        ("truncated gz", ["train-images-idx3-ubyte.gz", "corrupt gzip"]),
        ("corrupt gz", ["train-images-idx3-ubyte.gz", "corrupt gzip"]),
        ("wrong magic", ["train-labels-idx1-ubyte", "not an IDX file"]),
        ("wrong dims", ["train-images-idx3-ubyte", "3-D"]),
        ("truncated raw", ["t10k-images-idx3-ubyte", "truncated"]),
        ("label count", ["train-labels-idx1-ubyte", "95 labels", "96 images"]),
        ("label range", ["t10k-labels-idx1-ubyte", "label 12", "num_classes=10"]),
        ("shape disagrees", ["train-images-idx3-ubyte", "(1, 28, 28)", "(1, 32, 32)", "data.image_size"]),
    ],
)
def test_bad_data_is_one_line(capsys, monkeypatch, tmp_path, case, words):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    extra: list[str] = []
    if case == "missing root":
        root = tmp_path / "no-such-root"
    elif case == "wrong dims":
        fake_mnist(root, train_images=rng.integers(0, 256, (96, 784)))
    elif case == "label count":
        fake_mnist(root, train_labels=np.arange(95) % 10)
    elif case == "label range":
        fake_mnist(root, test_labels=np.arange(32) % 13)
    elif case == "shape disagrees":
        fake_mnist(root)
        extra = ["data.image_size=[32,32]", "model.patch_size=4"]
    else:
        fake_mnist(root)
        raw = root / "MNIST" / "raw"
        {
            "missing file": lambda: (raw / "t10k-labels-idx1-ubyte.gz").unlink(),
            "truncated gz": lambda: _truncate(raw / "train-images-idx3-ubyte.gz"),
            "corrupt gz": lambda: _flip(raw / "train-images-idx3-ubyte.gz"),
            "wrong magic": lambda: _plain(raw / "train-labels-idx1-ubyte.gz", b"\x01\x02\x08\x01" + bytes(100)),
            "truncated raw": lambda: _plain(raw / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((32, 28, 28)))[:-1]),
        }[case]()
    proc = cli_run(capsys, monkeypatch, *fake_overrides(root, tmp_path / "run", *extra))
    assert_one_clear_line(proc, *words)
    assert read(tmp_path / "run" / "metrics.json")["status"] == "failed"


@pytest.mark.slow
def test_bad_data_one_line_on_the_real_command(tmp_path):
    root = fake_mnist(tmp_path / "data")
    _truncate(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz")
    proc = run_train(*fake_overrides(root, tmp_path / "run"))
    assert_one_clear_line(proc, "corrupt gzip")


# ----------------------------------------------------------------------------------------------- resume errors


def test_resume_missing_or_unreadable_checkpoint(capsys, monkeypatch, tmp_path):
    root = fake_mnist(tmp_path / "data")
    proc = cli_run(capsys, monkeypatch, *fake_overrides(root, tmp_path / "a", f"resume={tmp_path / 'nothing'}"))
    assert_one_clear_line(proc, "resume=", "no checkpoint found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not really a checkpoint")
    proc = cli_run(capsys, monkeypatch, *fake_overrides(root, tmp_path / "b", f"resume={garbage}"))
    assert_one_clear_line(proc, str(garbage), "not a readable checkpoint")


def test_resume_other_architecture_names_the_keys(capsys, monkeypatch, tmp_path):
    root = fake_mnist(tmp_path / "data")
    assert cli_run(capsys, monkeypatch, *fake_overrides(root, tmp_path / "a")).returncode == 0
    proc = cli_run(
        capsys, monkeypatch, *fake_overrides(root, tmp_path / "b", "model.hidden_d=32", f"resume={tmp_path / 'a'}")
    )
    assert_one_clear_line(proc, "different architecture", "linear_mapper.weight [16, 49] vs [32, 49]")
    proc = cli_run(
        capsys, monkeypatch, *fake_overrides(root, tmp_path / "c", "model.depth=2", f"resume={tmp_path / 'a'}")
    )
    assert_one_clear_line(proc, "different architecture", "missing: blocks.1.")
    assert read(tmp_path / "c" / "metrics.json")["status"] == "failed"


# ----------------------------------------------------------------------------------------------- divergence


def test_diverging_run_stops_early_as_failed(capsys, monkeypatch, tmp_path):
    root = fake_mnist(tmp_path / "data")
    proc = cli_run(
        capsys,
        monkeypatch,
        *fake_overrides(root, tmp_path / "run", "trainer.epochs=20", "optimizer.lr=1e6", "scheduler=constant"),
    )
    assert_one_clear_line(proc, "training loss became", "optimizer.lr")
    m = read(tmp_path / "run" / "metrics.json")
    assert m["status"] == "failed" and "loss became" in m["reason"]
    assert m["epochs"] == 20 and m["epochs_completed"] < 20  # stopped early


# ----------------------------------------------------------------------------------------------- signals

# 300 steps per epoch: a signal sent just after an epoch's log line lands in the middle of the next epoch
STEPS = 1200  # ~1.2 s per epoch on 2 quiet cores: a signal 0.3 s after an epoch line lands mid-epoch
RESUME_RUN = [
    "trainer.epochs=3",
    f"data.train_limit={16 * STEPS}",
    "data.val_size=256",
    "data.test_limit=256",
    "trainer.batch_size=16",
    "model.depth=1",
    "model.hidden_d=16",
    "model.patch_size=7",
    "optimizer.lr=0.01",
    "scheduler.warmup_epochs=0.2",
    "trainer.progress=false",
    "device=cpu",
    "device.threads=1",
]


def popen_train(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "vit_lab.train", *args],
        cwd=REPO,
        env={**full_env, **(env or {})},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before the moment to signal: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(poll)


def final_results(run_dir: Path) -> tuple:
    m, h = read(run_dir / "metrics.json"), read(run_dir / "history.json")
    losses = [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in h]
    return m["status"], m["epochs_completed"], m["test_acc"], m["test_loss"], m["best_val_acc"], losses


def interrupt_mid_epoch(run_dir: Path, after_epoch: int, sig: signal.Signals, *args: str) -> dict:
    """Start a run, send ``sig`` early in epoch ``after_epoch + 1``; check the interrupted state; return the
    checkpoint."""
    proc = popen_train(*RESUME_RUN, *args, f"hydra.run.dir={run_dir}")
    log = run_dir / "train.log"
    wait_for(lambda: log.exists() and f"epoch {after_epoch}/3" in log.read_text(), proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted by {sig.name}" in err and f"resume={run_dir}" in err
    m = read(run_dir / "metrics.json")
    assert m["status"] == "interrupted" and sig.name in m["reason"] and m["epochs_completed"] == after_epoch
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == after_epoch and 0 < ckpt["step"] < STEPS, "the signal should land mid-epoch"
    assert ckpt["sums"]["seen"] == 16 * ckpt["step"] and ckpt["perm"] is not None
    assert m["train_seconds"] >= sum(r["epoch_seconds"] for r in read(run_dir / "history.json"))
    return m


@pytest.mark.slow
def test_sigint_and_sigterm_mid_epoch_resume_to_identical_metrics(tmp_path):
    """Interrupt (SIGINT) in epoch 2, resume, interrupt the resumed run (SIGTERM) in epoch 3, resume again:
    the final metrics and history equal an uninterrupted run's exactly (CPU, one thread, same seed)."""
    ref_dir, first, second, final = (tmp_path / n for n in ("ref", "first", "second", "final"))
    ref = popen_train(*RESUME_RUN, f"hydra.run.dir={ref_dir}")  # overlaps the others: 2 cores
    try:
        m1 = interrupt_mid_epoch(first, 1, signal.SIGINT)
        m2 = interrupt_mid_epoch(second, 2, signal.SIGTERM, f"resume={first}")
        proc = popen_train(*RESUME_RUN, f"resume={second}", f"hydra.run.dir={final}")
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        ref.communicate(timeout=180)
        assert ref.returncode == 0
    finally:
        if ref.poll() is None:
            ref.kill()
    assert final_results(final) == final_results(ref_dir)  # exactly
    m3 = read(final / "metrics.json")
    assert m3["resumed_from"] == str(second / "checkpoint.pt") and m3["epochs_completed"] == 3
    # train_seconds adds up the training time of all three processes; images/s stays consistent with it
    assert m1["train_seconds"] < m2["train_seconds"] < m3["train_seconds"] < 60
    h = read(final / "history.json")
    images = sum(r["images_per_second"] * r["epoch_seconds"] for r in h)
    assert images == pytest.approx(3 * 16 * STEPS, rel=1e-6)  # each epoch's record covers its whole epoch
    assert m3["train_images_per_second"] == pytest.approx(images / m3["train_seconds"], rel=1e-6)


def test_a_signal_inside_a_library_call_stays_an_interrupt(tmp_path):
    """The signal can land inside any library's ``except Exception`` (OmegaConf's attribute access rebuilt the
    exception from its message and lost the signal, as CI once saw): Interrupted must pass through, like Ctrl-C."""
    from vit_lab.endings import interrupt_outside_the_loop
    from vit_lab.errors import Interrupted

    def kill_self():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, inside OmegaConf's resolver call
        return 0

    OmegaConf.register_resolver("_test_kill_self", kill_self, replace=True)
    cfg = OmegaConf.create({"trainer": {"seed": "${_test_kill_self:}"}})
    try:
        with pytest.raises(Interrupted) as info, interrupt_outside_the_loop(tmp_path):
            cfg.trainer.seed  # noqa: B018 - the access is the test
    finally:
        OmegaConf.clear_resolver("_test_kill_self")
    assert info.value.signum == signal.SIGTERM and "nothing to resume" in str(info.value)
    assert not isinstance(info.value, Exception)  # no `except Exception` anywhere may swallow or rebuild it


@pytest.mark.slow
def test_signal_before_training_is_recorded(tmp_path):
    """SIGTERM while the data loads (before the loop's own handler) still ends as `interrupted`, not a dead
    `running`."""
    run_dir = tmp_path / "run"
    proc = popen_train(*RESUME_RUN, f"hydra.run.dir={run_dir}")
    wait_for(lambda: (run_dir / "metrics.json").exists(), proc, poll=0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    m = read(run_dir / "metrics.json")
    assert m["status"] == "interrupted" and "SIGTERM" in m["reason"]
    if (run_dir / "checkpoint.pt").exists():  # the signal reached the loop: a checkpoint at the first step
        assert "checkpoint saved" in m["reason"]
    else:
        assert "nothing to resume" in m["reason"]


# ----------------------------------------------------------------------------------------------- SIGKILL


KILLED_WRITER = """
import os, signal, sys
from vit_lab.io import atomic_write
def half_then_die(f):
    f.write("{\\"half\\": ")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], half_then_die)
"""


def test_sigkill_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"status": "running", "epochs_completed": 3})
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert read(target) == {"status": "running", "epochs_completed": 3}  # the previous complete file
    stale = list(tmp_path.glob(".metrics.json.*.tmp"))
    assert len(stale) == 1 and stale[0].read_text() == '{"half": '  # the half-written temp, never the result
    # a run starting in that folder clears such leftovers
    train_mod.Run(tmp_path, OmegaConf.create({"trainer": {"epochs": 1, "checkpoint": True}}))
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "history.json"
    write_json(target, [1, 2])

    def broken(f):
        f.write("[1, 2, ")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert read(target) == [1, 2] and not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_path_is_one_user_error(tmp_path):
    """A folder that is a file, or a path that is a folder: OutputError (a UserError, printed as one line by the
    entry points, and still an OSError), naming the path; nothing left behind."""
    from vit_lab.errors import OutputError, UserError

    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile" / "out.json", tmp_path):
        with pytest.raises(OutputError) as e:
            write_json(bad, {"a": 1})
        assert isinstance(e.value, UserError) and isinstance(e.value, OSError)
        assert str(bad) in str(e.value) and "folder you can write to" in str(e.value) and "\n" not in str(e.value)
        if bad.parent.name == "afile":
            assert f"{bad.parent} is a file, not a folder" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_complete_files(tmp_path):
    """Three runs that write every few milliseconds, each SIGKILLed at a random moment (set VIT_LAB_KILL_SEED to
    vary)."""
    root = fake_mnist(tmp_path / "data", n_train=80, n_test=16)
    rng = random.Random(int(os.environ.get("VIT_LAB_KILL_SEED", "6")))
    run = ["scheduler=constant", "device.threads=1"]
    dirs = [tmp_path / f"run{i}" for i in range(3)]
    procs = [popen_train(*fake_overrides(root, d, *run, "trainer.epochs=400")) for d in dirs]
    try:
        for proc, run_dir in zip(procs, dirs):
            wait_for(lambda d=run_dir: (d / "checkpoint.pt").exists(), proc, poll=0.01)  # one epoch done
        kill_at = {i: time.monotonic() + rng.uniform(0.0, 2.5) for i in range(len(procs))}
        while kill_at:
            for i, t in list(kill_at.items()):
                if time.monotonic() >= t:
                    procs[i].kill()
                    del kill_at[i]
            time.sleep(0.005)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)
    for proc, run_dir in zip(procs, dirs):
        assert proc.returncode == -signal.SIGKILL, "the run should still be going when killed"
        m = read(run_dir / "metrics.json")  # always parses
        assert m["status"] == "running"
        history = read(run_dir / "history.json")
        ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        # written in the order history, checkpoint, metrics: each at most one epoch ahead of the next
        assert len(history) - ckpt["epoch"] in (0, 1) and ckpt["epoch"] - m["epochs_completed"] in (0, 1)
        assert ckpt["history"] == history[: ckpt["epoch"]]
        for leftover in run_dir.glob("*.tmp"):
            assert leftover.name.startswith("."), leftover  # hidden temps only, never a result name

    # nothing finished is lost: a killed run resumes in its own folder and clears stale temps
    run_dir = dirs[-1]
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    done = ckpt["epoch"]
    proc = popen_train(*fake_overrides(root, run_dir, *run, f"trainer.epochs={done + 1}", f"resume={run_dir}"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [r["epoch"] for r in read(run_dir / "history.json")] == list(range(1, done + 2))
    assert read(run_dir / "history.json")[:done] == ckpt["history"]
    assert read(run_dir / "metrics.json")["status"] == "completed"
    assert not list(run_dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------------- sweeps

SWEEP_TINY = ["trainer.epochs=1", *MICRO, "hydra/sweeper/pruner=nop"]


def sweep_cmd(*extra: str) -> list[str]:
    # "-m hparams_search=vit_optuna" with its own storage and sweep dirs (relative to the working directory)
    return [sys.executable, "-m", "vit_lab.train", "-m", "hparams_search=vit_optuna", *SWEEP_TINY, *extra]


def sweep_env() -> dict:
    env = {**os.environ, "VIT_LAB_DATA": str(data_root())}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def all_files_complete(tree: Path) -> int:
    """Every JSON in the tree parses, every checkpoint loads, and no temp file is left: returns the file count."""
    n = 0
    for path in tree.rglob("*"):
        assert not path.name.endswith(".tmp"), f"half-written file left: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())
            n += 1
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
            n += 1
    return n


def trial_dirs(study) -> dict[int, Path]:
    return {t.number: Path(t.user_attrs["run_dir"]) for t in study.trials if "run_dir" in t.user_attrs}


@pytest.mark.slow
def test_soak_20_trials_2_parallel_jobs(tmp_path):
    """20 tiny trials, 2 at a time (joblib): every trial has its directory and study entry, and they agree."""
    import optuna

    proc = subprocess.run(
        sweep_cmd(
            "hydra.sweeper.n_trials=20",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path}/sweep",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        ),
        cwd=tmp_path,
        env=sweep_env(),
        text=True,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(t.number for t in study.trials) == list(range(20))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    dirs = trial_dirs(study)
    assert sorted(dirs.values()) == sorted(tmp_path / "sweep" / str(i) for i in range(20))  # one folder each
    for number, run_dir in dirs.items():
        m = read(run_dir / "metrics.json")
        t = study.trials[number]
        assert m["status"] == "completed" and m["best_val_acc"] == pytest.approx(t.value)
        assert m["epochs_completed"] == 1 and len(read(run_dir / "history.json")) == 1
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        for key, value in t.params.items():  # the folder ran the trial's parameters
            assert f"{key}={value}" in overrides, (key, value, overrides)
    assert all_files_complete(tmp_path / "sweep") >= 40


@pytest.mark.slow
def test_killed_sweep_resumes_keeps_finished_trials_and_fails_running_ones(tmp_path):
    """SIGKILL a sweep mid-trial, run the same command again: finished trials stay, the killed one is FAIL."""
    import optuna

    # the preset's storage (outputs/optuna.db) and sweep dirs, under tmp_path as the working directory
    cmd = sweep_cmd(
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=2",
        "data.train_limit=1024",
    )
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=sweep_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def finished() -> list[Path]:
        return [p for p in tmp_path.glob("outputs/multirun/*/*/*/metrics.json") if read(p)["status"] == "completed"]

    def third_running() -> bool:  # two trials done and the next one has started (its metrics.json says running)
        runs = [read(p)["status"] for p in tmp_path.glob("outputs/multirun/*/*/*/metrics.json")]
        return runs.count("completed") >= 2 and "running" in runs

    wait_for(third_running, proc, timeout=300, poll=0.01)
    proc.kill()  # at once: on a quiet machine a tiny trial lasts about a second
    proc.communicate(timeout=30)
    first_session = {p.parent: read(p) for p in tmp_path.glob("outputs/multirun/*/*/*/metrics.json")}
    done_before = {d: m for d, m in first_session.items() if m["status"] == "completed"}
    assert len(done_before) >= 2
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    before = {t.number: (t.state, t.value) for t in study.trials}
    assert optuna.trial.TrialState.RUNNING in {s for s, _ in before.values()}, "the kill should catch a trial"

    time.sleep(2.5)  # past the heartbeat grace period
    proc = subprocess.run(cmd, cwd=tmp_path, env=sweep_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    states = {t.number: t.state for t in study.trials}
    assert len(states) == len(before) + 3
    for number, (state, value) in before.items():
        if state == optuna.trial.TrialState.RUNNING:  # left RUNNING by the kill: failed, never complete
            assert states[number] == optuna.trial.TrialState.FAIL
        else:  # finished before the kill: still there, unchanged
            assert states[number] == state and study.trials[number].value == value
    assert optuna.trial.TrialState.RUNNING not in states.values()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(done_before) + 3
    for d, m in done_before.items():  # their folders are untouched by the second session
        assert read(d / "metrics.json") == m
    assert {Path(t.user_attrs["run_dir"]) for t in complete} >= set(done_before)
    all_files_complete(tmp_path / "outputs" / "multirun")


@pytest.mark.slow
def test_two_runs_in_one_folder_never_interleave(capsys, monkeypatch, tmp_path):
    """Two runs given the same run directory (e.g. started in the same second): the second refuses, in one line,
    and leaves the first one's files alone."""
    root = fake_mnist(tmp_path / "data", n_train=80, n_test=16)
    run_dir = tmp_path / "run"
    first = popen_train(*fake_overrides(root, run_dir, "trainer.epochs=400", "scheduler=constant", "device.threads=1"))
    try:
        wait_for(lambda: (run_dir / "history.json").exists(), first)
        proc = cli_run(capsys, monkeypatch, *fake_overrides(root, run_dir))
        assert_one_clear_line(proc, str(run_dir), "in use by another run", f"pid {first.pid}", "hydra.run.dir")
        assert first.poll() is None
        m = read(run_dir / "metrics.json")
        assert m["status"] == "running" and m["pid"] == first.pid  # untouched by the second run
    finally:
        first.kill()
        first.communicate(timeout=30)
    # once the first is gone (even killed), the folder is free again: e.g. to resume in place
    done = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"]
    proc = cli_run(
        capsys,
        monkeypatch,
        *fake_overrides(root, run_dir, "scheduler=constant", f"resume={run_dir}", f"trainer.epochs={done + 1}"),
    )
    assert proc.returncode == 0, proc.stderr
    assert read(run_dir / "metrics.json")["status"] == "completed"


@pytest.mark.slow
def test_diverging_trial_fails_and_the_sweep_goes_on(tmp_path):
    import optuna

    proc = subprocess.run(
        sweep_cmd(
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1",
            "optimizer.lr=1e6",
            "scheduler=constant",
            "data.train_limit=512",
            "trainer.batch_size=16",
            "trainer.epochs=3",
            "hydra.sweeper.max_failure_rate=1.0",
            f"hydra.sweep.dir={tmp_path}/sweep",
            f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        ),
        cwd=tmp_path,
        env=sweep_env(),
        text=True,
        capture_output=True,
        timeout=600,
    )
    # every trial failed: the sweep says so in one line and exits non-zero (as the official sweeper does)
    assert proc.returncode == 2 and "none of the 2 trials of this sweep finished" in proc.stderr, proc.stderr[-3000:]
    study = optuna.load_study(study_name="vit_optuna-mnist", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2  # both ran: the sweep went on
    for run_dir in trial_dirs(study).values():
        m = read(run_dir / "metrics.json")
        assert m["status"] == "failed" and "training loss became" in m["reason"] and m["epochs_completed"] < 3
