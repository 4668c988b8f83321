"""`python -m vit_lab.ensemble`: the mean of the members' probabilities, on fake run folders whose heads answer
known distributions; sweeps found in order, unfinished runs left out; every bad input as one line, nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_module, run_train
from fake_runs import fake_run

from vit_lab.ensemble import main

FP32 = "device.precision=fp32"  # exact probabilities to compare with


def biased_run(path: Path, bias: dict[int, float], *overrides: str) -> Path:
    """A run whose model answers softmax(bias) for every image: the head's weights zeroed, its bias set."""
    run, model = fake_run(path, FP32, *overrides)
    state = model.state_dict()
    state["mlp.weight"].zero_()
    state["mlp.bias"].zero_()
    for k, v in bias.items():
        state["mlp.bias"][k] = v
    torch.save({"model": state, "epoch": 3}, run / "checkpoint.pt")
    return run


def softmax(bias: dict[int, float], k: int = 10) -> list[float]:
    logits = [bias.get(i, 0.0) for i in range(k)]
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits]


def test_mean_probabilities_not_majority(tmp_path, capsys):
    """Two members say 5 with little confidence, one says 3 with much: the mean probability picks 3 (a vote would
    pick 5); accuracy and loss follow from the three known distributions."""
    from test_evaluate import mnist_test_labels

    biases = [{3: 6.0}, {5: 1.0}, {5: 1.0}]
    runs = [biased_run(tmp_path / f"r{i}", b) for i, b in enumerate(biases)]
    assert main([str(r) for r in runs]) == 0
    doc = json.loads((tmp_path / "ensemble.json").read_text())  # the folder that holds the members
    labels = mnist_test_labels(256)
    mean = [sum(col) / 3 for col in zip(*map(softmax, biases))]
    assert max(range(10), key=mean.__getitem__) == 3
    assert doc["accuracy"] == (labels == 3).float().mean().item()
    assert [m["accuracy"] for m in doc["members"]] == [(labels == c).float().mean().item() for c in (3, 5, 5)]
    assert doc["loss"] == pytest.approx(-sum(math.log(mean[y]) for y in labels.tolist()) / 256, rel=1e-5)
    assert doc["n"] == 256 and doc["weights"] == "last" and [m["epoch"] for m in doc["members"]] == [3, 3, 3]
    params = sum(p.numel() for p in fake_run(tmp_path / "count")[1].parameters())
    assert doc["params"] == 3 * params and all(m["params"] == params for m in doc["members"])
    assert [row[3] for row in doc["confusion"]] == [sum(row) for row in doc["confusion"]]  # every image: 3
    out = capsys.readouterr().out
    assert f"ensemble of 3 (last weights, {3 * params:,} parameters)" in out and "wrote" in out


def test_a_sweep_folder_gives_its_completed_runs_in_order(tmp_path, capsys):
    sweep = tmp_path / "multirun"
    for job, status in ((0, "completed"), (1, "completed"), (2, "running"), (10, "completed")):
        run = biased_run(sweep / str(job), {job % 10: 1.0})
        (run / "metrics.json").write_text(json.dumps({"status": status}))
    assert main([str(sweep), "--out", str(tmp_path / "e.json")]) == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [Path(m["run_dir"]).name for m in doc["members"]] == ["0", "1", "10"]  # 2 unfinished; 10 after 1
    assert not (sweep / "ensemble.json").exists()

    assert main([str(sweep / "0"), str(sweep / "1"), "--weights", "best"]) == 2  # no best.pt: one line
    assert "no best.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_recipe_a_seed_multirun_then_its_folder(tmp_path):
    """`vit_lab.train -m ... trainer.seed=0,1` then `vit_lab.ensemble <sweep dir>`, as the README says, end to end."""
    sweep = tmp_path / "multirun"
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = run_train("-m", *TINY, "trainer.epochs=1", "trainer.seed=0,1", f"hydra.sweep.dir={sweep}", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_module("vit_lab.ensemble", str(sweep), env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((sweep / "ensemble.json").read_text())
    metrics = [json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")]
    assert [m["accuracy"] for m in doc["members"]] == [m["test_acc"] for m in metrics]
    assert doc["params"] == 2 * metrics[0]["n_params"] and doc["n"] == 256
    assert f"accuracy {100 * doc['accuracy']:.2f}%" in proc.stdout


def _one_line_error(capsys, args, *needles):
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("vit_lab.ensemble: error:"), err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys):
    a = biased_run(tmp_path / "runs" / "a", {1: 1.0})
    b = biased_run(tmp_path / "runs" / "b", {2: 1.0}, "data.test_limit=100")
    _one_line_error(capsys, [a], "at least 2 runs, got 1")
    _one_line_error(capsys, [a, tmp_path / "runs" / ".." / "runs" / "a"], "named twice")
    _one_line_error(capsys, [a, tmp_path / "nowhere"], "nowhere: no such directory")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    _one_line_error(capsys, [a, tmp_path / "empty"], "holds no completed run")
    _one_line_error(capsys, [a, b], "share one test split", "(100 images)", "(256 images)", "data.test_limit")
    _one_line_error(capsys, [a, b, "model.depth=2"], "KEY under data")
    (tmp_path / "afile").write_text("")
    bad_out = ["--out", tmp_path / "afile" / "e.json"]
    _one_line_error(capsys, [a, b, "data.test_limit=100", *bad_out], "cannot write", "afile")
    assert not list(tmp_path.rglob("ensemble*.json"))
    assert main([str(a), str(b), "data.test_limit=100"]) == 0  # one split for all: it works
    assert json.loads((tmp_path / "runs" / "ensemble.json").read_text())["n"] == 100


def test_cli_error_has_no_traceback(tmp_path):
    run, _ = fake_run(tmp_path / "run")
    proc = run_module("vit_lab.ensemble", str(run), str(run))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
