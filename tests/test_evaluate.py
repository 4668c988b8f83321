"""`python -m vit_lab.evaluate`: real tiny runs evaluated again reproduce their metrics.json exactly; weights
choice, data overrides, and every bad input as one line (fake run folders, no training)."""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, run_module, run_train
from fake_runs import CNN, compose, fake_run

from vit_lab.evaluate import main

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny ViT run and a tiny CNN run, trained for real (2 epochs on 1,024 images), one thread each."""
    out = tmp_path_factory.mktemp("evaluate")
    runs = {"vit": (TINY, out / "vit"), "cnn": (CNN, out / "cnn")}
    with ThreadPoolExecutor(2) as pool:
        procs = {
            k: pool.submit(run_train, *args, f"hydra.run.dir={d}", env=ONE_THREAD) for k, (args, d) in runs.items()
        }
        for f in procs.values():
            assert f.result().returncode == 0, f.result().stderr[-2000:]
    return {k: d for k, (_, d) in runs.items()}


@functools.lru_cache(maxsize=1)
def mnist_test_labels(n: int) -> torch.Tensor:
    """The first n MNIST test labels, read by the lab's loader with TINY's config."""
    from vit_lab.config import build

    return build(compose().data, _convert_="all").load().test_labels[:n]


@pytest.mark.slow
@pytest.mark.parametrize("model", ("vit", "cnn"))
def test_reproduces_the_runs_test_metrics_exactly(trained, model):
    run = trained[model]
    proc = run_module("vit_lab.evaluate", str(run), env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    doc, metrics = read_json(run / "eval.json"), read_json(run / "metrics.json")
    assert doc["accuracy"] == metrics["test_acc"] and doc["loss"] == metrics["test_loss"]  # exactly, not approx
    assert "equal to the run's test_acc" in proc.stdout
    cm = torch.tensor(doc["confusion"])
    n = doc["n"]
    assert n == 256 and cm.shape == (10, 10) and cm.sum() == n
    assert cm.trace().item() / n == doc["accuracy"]
    labels = mnist_test_labels(n)
    assert [c["support"] for c in doc["per_class"]] == torch.bincount(labels, minlength=10).tolist()
    assert cm.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert len(doc["misclassified"]) == n - cm.trace().item()
    assert all(labels[i] != p for i, p in zip(doc["misclassified"], doc["misclassified_as"]))
    for c in doc["per_class"]:
        k = c["class"]
        tp, support, predicted = int(cm[k, k]), int(cm[k].sum()), int(cm[:, k].sum())
        assert c["recall"] == c["accuracy"] == tp / support
        assert c["precision"] == (tp / predicted if predicted else None)
    assert doc["weights"] == "last" and doc["epoch"] == 2


@pytest.mark.slow
def test_best_weights_and_other_data(trained, capsys):
    """--weights best reads best.pt (here: weights that always answer 3); data overrides write their own file."""
    run = trained["vit"]
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    state["mlp.weight"].zero_()
    state["mlp.bias"].zero_()
    state["mlp.bias"][3] = 1.0
    torch.save({"model": state, "epoch": 1, "val_acc": 0.5}, run / "best.pt")
    assert main([str(run), "--weights", "best"]) == 0
    doc = read_json(run / "eval_best.json")
    assert doc["weights"] == "best" and doc["epoch"] == 1
    assert doc["accuracy"] == (mnist_test_labels(256) == 3).float().mean().item()
    assert [row[3] for row in doc["confusion"]] == [sum(row) for row in doc["confusion"]]  # every image predicted 3

    assert main([str(run), "data.test_limit=100"]) == 0
    assert read_json(run / "eval_mnist.json")["n"] == 100
    assert main([str(run), "data=fashion_mnist", "data.test_limit=300", "--out", str(run / "f.json")]) == 0
    doc = read_json(run / "f.json")
    assert doc["data"] == "fashion_mnist" and doc["n"] == 300 and sum(map(sum, doc["confusion"])) == 300
    assert "FashionMNIST" not in capsys.readouterr().err


@pytest.mark.slow
def test_tta_is_reported_beside_the_plain_accuracy(trained, tmp_path, capsys):
    run = trained["cnn"]
    assert main([str(run), "--tta", "--out", str(tmp_path / "tta.json")]) == 0
    doc, metrics = read_json(tmp_path / "tta.json"), read_json(run / "metrics.json")
    assert doc["accuracy"] == metrics["test_acc"]  # the plain figure is unchanged
    assert doc["tta"]["views"] == 5 and 0.0 <= doc["tta"]["accuracy"] <= 1.0 and doc["tta"]["loss"] > 0
    assert f"with test-time augmentation (5 views) {100 * doc['tta']['accuracy']:.2f}%" in capsys.readouterr().out


@pytest.mark.slow
def test_an_ensemble_of_a_vit_and_a_cnn(trained, tmp_path):
    """vit_lab.ensemble loads members as evaluate does: each member's accuracy is its run's test_acc, exactly."""
    from vit_lab.ensemble import main as ensemble_main

    assert ensemble_main([str(trained["vit"]), str(trained["cnn"]), "--out", str(tmp_path / "e.json")]) == 0
    doc = read_json(tmp_path / "e.json")
    metrics = [read_json(trained[k] / "metrics.json") for k in ("vit", "cnn")]
    assert [m["accuracy"] for m in doc["members"]] == [m["test_acc"] for m in metrics]
    assert doc["params"] == sum(m["n_params"] for m in metrics) and doc["n"] == 256
    assert sum(map(sum, doc["confusion"])) == 256 and 0.0 <= doc["accuracy"] <= 1.0


def _one_line_error(capsys, args, *needles):
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("vit_lab.evaluate: error:"), err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    run, _ = fake_run(tmp_path / "run")
    _one_line_error(capsys, [tmp_path / "nowhere"], "no such directory")
    _one_line_error(capsys, [tmp_path], "not a run directory")
    _one_line_error(capsys, [run, "--weights", "best"], "no best.pt", "--weights last")
    _one_line_error(capsys, [run, "data.image_size=[32,32]"], "(1, 32, 32)", "(1, 28, 28)")
    _one_line_error(capsys, [run, "data.num_classes=5"], "5 classes")
    _one_line_error(capsys, [run, "data=nope"], "data='nope'", "fashion_mnist, image_folder, mnist")
    _one_line_error(capsys, [run, "model.depth=2"], "KEY under data")
    (tmp_path / "afile").write_text("")
    _one_line_error(capsys, [run, "--out", tmp_path / "afile" / "eval.json"], "cannot write", "afile")

    other, _ = fake_run(tmp_path / "other", "model.depth=2")  # weights of another architecture
    (run / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    _one_line_error(capsys, [run], "another architecture", "unexpected: blocks.1.")

    (run / "checkpoint.pt").unlink()
    _one_line_error(capsys, [run], "no checkpoint.pt", "trainer.checkpoint=false")
    (run / "checkpoint.pt").write_text("not a checkpoint")
    _one_line_error(capsys, [run], "not a readable checkpoint")
    (run / ".hydra" / "config.yaml").write_text("model: [unclosed")
    _one_line_error(capsys, [run], "config.yaml is unreadable")


class _Pwn:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_run_folder_cannot_run_code(tmp_path, capsys):
    """A config naming a non-whitelisted _target_, or a pickled checkpoint, is refused before anything runs."""
    marker = tmp_path / "pwned"
    run, _ = fake_run(tmp_path / "run")
    cfg_file = run / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    for section in ("model", "data"):
        bad = {**cfg, section: {"_target_": "os.system", "command": f"touch {marker}"}}
        cfg_file.write_text(yaml.safe_dump(bad))
        _one_line_error(capsys, [run], "whitelist")
        assert not marker.exists()
    cfg_file.write_text(yaml.safe_dump(cfg))
    torch.save({"model": _Pwn(marker), "epoch": 0}, run / "checkpoint.pt")
    _one_line_error(capsys, [run], "not a readable checkpoint")
    assert not marker.exists()


def test_cli_error_has_no_traceback(tmp_path):
    run, _ = fake_run(tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    proc = run_module("vit_lab.evaluate", str(run))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
