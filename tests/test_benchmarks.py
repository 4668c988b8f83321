"""Smoke tests of benchmarks/: the loop tutorial model against vit_lab's, the FLOP counter against a hand count,
and every benchmark's entry point on a micro budget. Nothing here times anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is run from a checkout (`python -m benchmarks.x`), not installed
    sys.path.insert(0, str(REPO))

from benchmarks import (  # noqa: E402
    cost,
    gpu,
    peak,
    pruner_comparison,
    screening_fidelity,
    step_options,
    throughput,
    time_to_accuracy,
)
from benchmarks._common import SIZES, build_timm, build_vit_lab, build_vit_pytorch, n_params  # noqa: E402
from benchmarks.tutorial_model import TutorialViT, copy_into_vit_lab, loop_patchify  # noqa: E402
from vit_lab.models import MyViT, get_positional_embeddings, patchify  # noqa: E402


@pytest.fixture(autouse=True)
def _data_root(mnist_root, monkeypatch, tmp_path):
    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    monkeypatch.setattr("benchmarks._common.RESULTS", tmp_path / "results")


def tutorial_pair(**kw):
    torch.manual_seed(0)
    loop = TutorialViT((1, 28, 28), n_patches=7, n_blocks=2, hidden_d=8, n_heads=2, out_d=10, **kw)
    mine = MyViT(
        (1, 28, 28),
        patch_size=4,
        depth=2,
        hidden_d=8,
        n_heads=2,
        out_d=10,
        attention="tutorial",
        pos_embed="sinusoidal",
        pool="cls",
        head_softmax=True,
        mlp_ratio=kw.get("mlp_ratio", 4.0),
    )
    return loop, copy_into_vit_lab(loop, mine)


def test_loop_model_is_the_tutorials():
    loop, _ = tutorial_pair()
    assert n_params(loop) == 1642
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loop_patchify(x, 4, 4), patchify(x, 4))
    assert torch.allclose(loop.positional_embeddings, get_positional_embeddings(50, 8), atol=1e-6)
    out = loop(x)
    assert out.shape == (3, 10) and torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)  # the Softmax head


def test_loop_model_equals_vit_lab_tutorial_style():
    loop, mine = tutorial_pair()
    assert n_params(mine) == n_params(loop)
    x = torch.rand(5, 1, 28, 28)
    a, b = loop(x), mine(x)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    # and the gradients agree too (the last-block shortcut of vit_lab included)
    y = torch.tensor([0, 1, 2, 3, 4])
    torch.nn.functional.cross_entropy(a, y).backward()
    torch.nn.functional.cross_entropy(b, y).backward()
    assert torch.allclose(loop.linear_mapper.weight.grad, mine.linear_mapper.weight.grad, atol=1e-6)
    assert torch.allclose(
        loop.blocks[0].mhsa.q_mappings[1].weight.grad, mine.blocks[0].mhsa.qkv_weight.grad[1, 0], atol=1e-6
    )


def test_matched_peers_have_the_same_size():
    size = SIZES["default"]
    model, _ = build_vit_lab(size)
    assert n_params(build_timm(size)) == n_params(model)  # same layers; timm without final norm, like cls pooling
    assert abs(n_params(build_vit_pytorch(size)) - n_params(model)) < 0.01 * n_params(model)  # + its extra norms
    for m in (model, build_timm(size), build_vit_pytorch(size)):
        assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_flop_counter_matches_a_hand_count():
    # 1x8x8 image, patch 4 -> 4 patches + cls = 5 tokens; width 4, 2 heads (dh 2), depth 1, MLP 8, 3 classes, batch 2
    f = peak.vit_forward_flops(
        2, chw=(1, 8, 8), patch=4, width=4, depth=1, heads=2, mlp_ratio=2.0, out_d=3, cls_shortcut=False
    )
    hand = {
        "patch_embed": 2 * 2 * 4 * 16 * 4,  # B * N * (C p p) * d, 2 FLOPs per multiply-add
        "qkv": 2 * 2 * 5 * 4 * 12,  # B * T * d * 3d
        "attention": 2 * (2 * 2 * 2 * 5 * 5 * 2),  # (q k^T and attn v) x B * heads * T * T * dh
        "proj": 2 * 2 * 5 * 4 * 4,
        "mlp": 2 * (2 * 2 * 5 * 4 * 8),
        "head": 2 * 2 * 4 * 3,
    }
    assert {k: f[k] for k in hand} == hand
    assert f["total"] == sum(hand.values()) == 4432
    assert (
        peak.train_step_flops(
            2, chw=(1, 8, 8), patch=4, width=4, depth=1, heads=2, mlp_ratio=2.0, out_d=3, cls_shortcut=False
        )
        == 3 * f["total"]
    )
    # MyViT's last block with cls pooling: queries, projection and MLP for the class token only (1 of 5 tokens)
    s = peak.vit_forward_flops(2, chw=(1, 8, 8), patch=4, width=4, depth=1, heads=2, mlp_ratio=2.0, out_d=3)
    assert s["qkv"] == 2 * 2 * (1 * 4 * 4 + 5 * 4 * 8) and s["attention"] == 2 * (2 * 2 * 2 * 1 * 5 * 2)
    assert s["proj"] == 2 * 2 * 1 * 4 * 4 and s["mlp"] == 2 * (2 * 2 * 1 * 4 * 8)
    t = peak.vit_forward_flops(
        2,
        chw=(1, 8, 8),
        patch=4,
        width=4,
        depth=1,
        heads=2,
        mlp_ratio=2.0,
        out_d=3,
        attention="tutorial",
        cls_shortcut=False,
    )
    assert t["qkv"] == 2 * 2 * 5 * 2 * 3 * 2 * 2 and t["proj"] == 0


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_flop_counter_agrees_with_torch_on_the_matrix_products(kernel):
    from torch.utils.flop_counter import FlopCounterMode

    model = MyViT(
        (1, 28, 28),
        patch_size=7,
        depth=2,
        hidden_d=16,
        n_heads=2,
        mlp_ratio=2.0,
        out_d=10,
        pool="mean",
        attn_kernel=kernel,
    )
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(4, 1, 28, 28))
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    products = sum(v for k, v in by_op.items() if "addmm" in k or k.endswith("mm") or "bmm" in k)
    f = peak.vit_forward_flops(4, patch=7, width=16, depth=2, heads=2, mlp_ratio=2.0, pool="mean")
    # explicit attention is two batched products that torch counts; SDPA is counted apart (if at all)
    assert products == (f["total"] if kernel == "explicit" else f["total"] - f["attention"])


def test_trainer_step_trains_through_a_compiled_forward():
    """`--compile` hands the step a torch.compile'd module, which raises on len(): the step must not test its
    truth value (a regression that broke `benchmarks.throughput --compile`); here a stand-in that raises alike."""
    from benchmarks._common import synthetic_batch, trainer_step

    torch.manual_seed(0)
    model, cfg = build_vit_lab(SIZES["tutorial"])

    class NoLen(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

        def __len__(self):
            raise TypeError("no len()")

    x, y = synthetic_batch(16)
    before = model.mlp.weight.detach().clone()
    trainer_step(model, NoLen(model), cfg)(x, y)
    assert not torch.equal(before, model.mlp.weight)


def test_micro_budgets(capsys):
    r = throughput.main(["--size", "tutorial", "--rounds", "1", "--steps", "1", "--batch", "4", "--no-eval"])
    cs = r["sizes"]["tutorial"]["contenders"]
    assert {"vit_lab", "vit_lab_tutorial_style", "tutorial_loop", "timm", "vit_pytorch"} <= set(cs)
    assert cs["vit_lab"]["train_wall_ratio_to_vit_lab"] == 1.0
    assert json.loads(open(r["saved"]).read())["benchmark"] == "throughput"
    p = peak.main(["--size", "tutorial", "--rounds", "1", "--steps", "1", "--batch", "4", "--peak-n", "32"])
    assert p["wall"]["share_of_peak"] > 0
    c = cost.main(["--part", "scale", "--patches", "7", "--widths", "16"])
    assert c["scale"]["p7_w16"]["tokens"] == 17
    c = cost.main(["--part", "pipeline", "--batches", "1"])
    assert 0 < c["pipeline"]["wall"]["none"]["share_of_epoch"] < 1
    g = gpu.main(["--device", "cpu", "--smoke", "--no-save"])  # the CUDA script's code path, on the CPU
    assert set(g["epoch"]) >= {"vit_lab_fp32", "vit_lab_bf16", "timm_bf16"}
    assert "pipeline" in capsys.readouterr().out


def test_step_benchmarks_follow_a_data_override():
    """`data=cifar10` reaches the models, the synthetic batch and the FLOP count (3x32x32 images), where a fixed
    MNIST shape would let a data override do nothing."""
    from benchmarks._common import compose, data_shape

    cifar = ["data=cifar10", "model.patch_size=8"]
    assert data_shape(compose(cifar)) == ((3, 32, 32), 10)
    p = peak.run("tutorial", batch=4, rounds=1, steps=1, peak_n=32, overrides=cifar, save=False)
    config = p["config"]
    assert config["chw"] == (3, 32, 32) and config["patch"] == 8
    assert p["forward_flops"] == peak.vit_forward_flops(4, **config)
    assert p["forward_flops"]["total"] != peak.vit_forward_flops(4, **{**config, "chw": (1, 32, 32)})["total"]
    step, images, _ = step_options.variant([*step_options.SMOKE, *cifar])
    assert images == 8
    step()  # a model built for MNIST's 1x28x28 cannot take CIFAR-10's batch
    r = throughput.run(("tutorial",), batch=4, rounds=1, steps=1, overrides=["data=cifar10"], save=False, eval_=False)
    assert {"vit_lab", "tutorial_loop", "timm", "vit_pytorch"} <= set(r["sizes"]["tutorial"]["contenders"])


def test_step_options_smoke(capsys):
    r = step_options.main(["--smoke", "--no-save", "--variants", "eager,pd50,batch256"])
    v = r["variants"]
    assert list(v) == ["eager", "pd50", "batch256"] and v["eager"]["ratio"] == 1.0
    assert all(x["images_per_s"] > 0 and x["first_s"] > 0 for x in v.values())
    assert (
        v["pd50"]["overrides"] == ["device.compile=false", "model.patch_dropout=0.5"] and "model.depth=1" in r["base"]
    )
    assert "pd50" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        step_options.main(["--smoke", "--no-save", "--variants", "eager,turbo"])
    assert "unknown variant turbo" in capsys.readouterr().err


@pytest.mark.slow
def test_time_to_accuracy_and_memory_subprocess(tmp_path):
    r = time_to_accuracy.main(["--smoke", "--quiet", "--target", "0.0", "--run-dir", str(tmp_path / "run")])
    assert r["returncode"] == 0 and r["status"] == "completed"
    assert len(r["curve"]) == 1 and r["target_reached_at"]["epoch"] == 1
    assert r["peak_rss_bytes"] > 50 * 2**20


@pytest.mark.slow
def test_gpu_session_script_on_the_cpu(tmp_path):
    """The prepared GPU session, end to end on the CPU: both trainings, the benchmark, and what comes back."""
    import subprocess
    import tarfile

    from conftest import data_root

    out = tmp_path / "out"
    env = {
        **os.environ,
        "PY": sys.executable,
        "DEVICE": "cpu",
        "COMPILE": "false",
        "PRECISION": "fp32",
        "BUDGET": "240",
        "BENCH_AT": "200",
        "OUT": str(out),
        "RUNS": str(tmp_path / "runs"),
        "WHEELS": str(tmp_path),
        "BENCH_ARGS": "--device cpu --smoke --no-save",
        "VIT_LAB_DATA": str(data_root()),
        "BEST_ARGS": "trainer.epochs=1 data.train_limit=256 data.val_size=256 data.test_limit=200 model.depth=1",
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "GPU path on cpu" in (out / "gpu_bench.log").read_text()
    for name in ("best_mnist", "best_fashion"):
        assert "test_acc" in (out / f"{name}.log").read_text()
        with tarfile.open(out / f"run_{name}.tgz") as tar:
            metrics = json.load(tar.extractfile(f"{name}/metrics.json"))
        assert metrics["status"] == "completed" and metrics["n_params"] > 0
    assert "[session] done" in proc.stdout

    # a later lease continues a run from the packed checkpoint: only the runs named in TRAIN, with resume=
    env2 = {
        **env,
        "OUT": str(tmp_path / "out2"),
        "RUNS": str(tmp_path / "runs2"),
        "TRAIN": "best_mnist",
        "RESUME_FROM": str(tmp_path / "runs"),
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"], cwd=REPO, env=env2, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (tmp_path / "out2" / "best_fashion.log").exists()
    with tarfile.open(tmp_path / "out2" / "run_best_mnist.tgz") as tar:
        metrics = json.load(tar.extractfile("best_mnist/metrics.json"))
    assert metrics["status"] == "completed"
    assert metrics["resumed_from"] == str(tmp_path / "runs" / "best_mnist" / "checkpoint.pt")
    bad = subprocess.run(
        ["bash", "benchmarks/gpu_session.sh"],
        cwd=REPO,
        env={**env2, "TRAIN": "best_cifar"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown run 'best_cifar'" in bad.stdout


@pytest.mark.slow
def test_sweep_throughput_runs_each_mode_on_a_micro_budget():
    from benchmarks import sweep_throughput

    result = sweep_throughput.main(["--micro", "--trials", "2", "--no-save"])
    assert [r["mode"] for r in result["runs"]] == ["single", "workers", "joblib"]
    for r in result["runs"]:
        assert r["returncodes"] == [0] * r["workers"] and sum(r["trials"].values()) == 2
        assert 0 < r["busy_share"] <= 1 and r["trials_per_hour"] > 0
        assert (r["batch_wait_share"] > 0) == (r["mode"] == "joblib")  # only batches make a slot wait
    assert [r["workers"] for r in result["runs"]] == [1, 2, 1]


def test_logging_overhead_micro_budget():
    from benchmarks import logging_overhead

    r = logging_overhead.main(
        ["--loggers", "csv", "tensorboard", "--epochs", "2", "--rounds", "1", "--steps", "1", "--no-save"]
    )  # mlflow's store creation alone takes seconds; test_loggers covers it
    assert set(r["loggers"]) == {"tensorboard", "csv"} and r["default_epoch_seconds"] > 0
    for v in r["loggers"].values():
        assert 0 < v["per_epoch_seconds"] < v["one_off_seconds"] + 1 and 0 < v["per_epoch_share"] < 1


def test_screening_fidelity_rank_correlation_by_hand():
    """Spearman's rho of a screening budget against the full budget, its winner's full rank, and the leading
    epochs of the full runs, on hand-made accuracies: ranks (3, 4, 2, 1) against (4, 3, 2, 1) give
    rho = 1 - 6 * 2 / (4 * 15) = 0.8."""
    full = {"a": 0.99, "b": 0.98, "c": 0.97, "d": 0.96}
    screen = {"a": 0.5, "b": 0.6, "c": 0.4, "d": 0.3}
    curves = {"a": [0.5, 0.9, 0.99], "b": [0.6, 0.8, 0.98], "c": [0.7, 0.7, 0.97], "d": [0.65, 0.6, 0.96]}
    table = {
        "full": {
            k: {"best_val_acc": v, "val_curve": curves[k], "train_seconds": 10.0, "n_params": 1}
            for k, v in full.items()
        },
        "e3-n5k": {
            k: {"best_val_acc": v, "val_curve": [], "train_seconds": 1.0, "n_params": 1} for k, v in screen.items()
        },
    }
    rows = {r["budget"]: r for r in screening_fidelity.fidelity(table)}
    r = rows["e3-n5k"]
    assert r["spearman"] == pytest.approx(0.8) and r["n"] == 4
    assert (r["winner"], r["winner_full_rank"]) == ("b", 2)
    assert r["images_per_trial"] == 15000 and r["cost_vs_full"] == pytest.approx(15000 / 825000)
    assert rows["e1-all"]["spearman"] is None and rows["e1-all"]["n"] == 0  # not run: no figure
    assert rows["full, first 1 epoch"]["spearman"] == pytest.approx(-0.8)  # the curves cross
    assert rows["full, first 2 epochs"]["spearman"] == pytest.approx(1.0)  # best of epochs 1-2
    assert "| e3-n5k | 15,000 | 1.8% | 0.80 (0.2) | 2 of 4 |" in screening_fidelity.markdown(table, list(rows.values()))


@pytest.mark.slow
def test_screening_fidelity_smoke_is_resumable(tmp_path, capsys):
    # a Hydra override right after --budgets' names goes to every run, not to --budgets
    args = [
        "--smoke",
        "--configs",
        "3",
        "--budgets",
        "e1-all",
        "full",
        "trainer.label_smoothing=0.05",
        "--out",
        str(tmp_path),
    ]
    assert screening_fidelity.main(args) == 0
    for over in tmp_path.glob("*/*/.hydra/overrides.yaml"):
        assert "trainer.label_smoothing=0.05" in over.read_text(), over
    doc = json.loads((tmp_path / "fidelity.json").read_text())
    assert (
        set(doc["val_acc"]["full"]) == set(doc["val_acc"]["e1-all"]) == {c[0] for c in screening_fidelity.CONFIGS[:3]}
    )
    (row,) = [r for r in doc["rows"] if r["budget"] == "e1-all"]
    assert row["n"] == 3 and -1 <= row["spearman"] <= 1
    first = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/metrics.json")}
    assert len(first) == 6 and len(list(tmp_path.glob("*/*/.hydra/overrides.yaml"))) == 6
    capsys.readouterr()
    assert screening_fidelity.main(args) == 0  # everything is there: nothing is trained again
    assert "best val" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/metrics.json")} == first


@pytest.mark.slow
def test_pruner_comparison_smoke(tmp_path):
    tiny = [
        "trainer.epochs=2",
        "data.train_limit=256",
        "data.val_size=128",
        "data.test_limit=128",
        "model.depth=1",
        "model.hidden_d=16",
        "model.patch_size=7",
        "trainer.batch_size=64",
        "trainer.progress=false",
    ]
    args = [
        "--trials",
        "2",
        "--pruners",
        "median",
        "nop",
        "--out",
        str(tmp_path),
        "--retrain",
        "--full-overrides",
        *tiny,
        "--",
        *tiny,
    ]
    assert pruner_comparison.main(args) == 0
    doc = json.loads((tmp_path / "pruners.json").read_text())
    rows = {r["pruner"]: r for r in doc["rows"]}
    assert set(rows) == {"median", "nop"}
    # the median pruner never prunes its first 4 trials: both sweeps train the same 2 seeded configurations
    for r in rows.values():
        assert (r["complete"], r["pruned"], r["epochs"]) == (2, 0, 4) and r["wall_seconds"] > 0
        assert r["full"]["best_val_acc"] > 0 and os.path.isdir(r["full"]["run_dir"])
    assert rows["median"]["best"]["params"] == rows["nop"]["best"]["params"] and doc["same_best"] is True
    assert "| median | 2 | 0 | 4 |" in (tmp_path / "pruners.md").read_text()


def test_benchmarks_compose_the_config_without_the_tests_registering_the_schemas():
    """A fresh interpreter, as `python -m benchmarks.X` starts: the typed schemas are registered by compose itself."""
    code = "from benchmarks import _common as C; cfg = C.compose(['trainer.epochs=3']); print(cfg.trainer.epochs)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]
