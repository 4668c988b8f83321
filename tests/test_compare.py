"""`python -m vit_lab.compare` on real tiny runs (made once per module) and on hand-made broken run folders."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import yaml
from conftest import TINY, run_module, run_train

from vit_lab.compare.__main__ import main
from vit_lab.compare.errors import UsageError
from vit_lab.compare.formats import fmt_params, fmt_pct, fmt_seconds
from vit_lab.compare.query import parse_where
from vit_lab.compare.terminal import shorten_path as _shorten_path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The seed comparison's four runs on a tiny budget: only data/trainer keys, which every model accepts.
SEED_TINY = [
    "trainer.epochs=1",
    "data.train_limit=256",
    "data.val_size=128",
    "data.test_limit=128",
    "trainer.progress=false",
    "trainer.checkpoint=false",
]


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def compare(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def make_run(path: Path, metrics: object | None = None, raw: str | None = None, config: dict | None = None) -> Path:
    """A hand-made run folder: .hydra/config.yaml (+ hydra.yaml choices) and a metrics.json as given."""
    (path / ".hydra").mkdir(parents=True)
    config = (
        config
        if config is not None
        else {
            "model": {"_target_": "vit_lab.models.MyViT", "n_heads": 2},
            "data": {"name": "mnist"},
            "trainer": {"epochs": 2},
            "optimizer": {"lr": 0.01},
        }
    )
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if raw is not None:
        (path / "metrics.json").write_text(raw)
    elif metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def make_bad_runs(root: Path) -> dict[str, Path]:
    """Every way a run folder can be broken, one folder each."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    full = {
        "status": "completed",
        "epochs": 2,
        "epochs_completed": 2,
        "test_acc": 0.5,
        "best_val_acc": 0.5,
        "n_params": 1000,
        "train_seconds": 1.0,
        "train_images_per_second": 100.0,
    }
    return {
        "corrupt": make_run(root / "corrupt", raw=json.dumps(full)[:40]),  # half-written
        "incomplete": make_run(root / "incomplete"),  # no metrics.json at all
        "killed": make_run(
            root / "killed",
            {"status": "running", "pid": dead.pid, "host": socket.gethostname(), "epochs": 2, "epochs_completed": 1},
        ),
        "failed": make_run(root / "failed", {"status": "failed", "reason": "training loss became nan"}),
        "unreadable": make_run(root / "unreadable"),
        "old": make_run(root / "old", {"acc": 0.9}, config={"model": {"name": "vit", "patch": 4}}),
    }


def _unreadable(runs: dict[str, Path]) -> None:
    (runs["unreadable"] / "metrics.json").mkdir()  # reading it fails with an OSError, even as root


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """Real tiny runs, made once: the seed comparison (4 runs), an n_heads grid multirun (2 jobs), a 3-trial
    Optuna sweep with SQLite storage, plus hand-made broken runs; all under <tmp>/outputs."""
    tmp = tmp_path_factory.mktemp("compare")
    out = tmp / "outputs"
    jobs = {
        "seed": lambda: run_module(
            "vit_lab.compare.seed_comparison",
            "--out",
            str(out / "seed"),
            "--jobs",
            "2",
            "--seeds",
            "0",
            *SEED_TINY,
            env=ONE_THREAD,
        ),
        "grid": lambda: run_train(
            "-m",
            "model.n_heads=2,4",
            *TINY,
            "trainer.checkpoint=false",
            f"hydra.sweep.dir={out / 'grid'}",
            env=ONE_THREAD,
        ),
        # the storage path is relative to the launch folder, as with the default sqlite:///outputs/optuna.db
        "optuna": lambda: run_train(
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.storage=sqlite:///outputs/optuna.db",
            "hydra.sweeper.study_name=t",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.direction=maximize",
            "hydra.sweeper.sampler.seed=0",
            "model.depth=choice(1,2)",
            "optimizer.lr=interval(0.001,0.02)",
            *[o for o in TINY if not o.startswith(("model.depth", "optimizer.lr"))],
            "trainer.checkpoint=false",
            f"hydra.sweep.dir={out / 'optuna'}",
            cwd=tmp,
            env=ONE_THREAD,
        ),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        procs = {name: f.result() for name, f in futures.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    bad = make_bad_runs(out / "bad")
    _unreadable(bad)
    return {"tmp": tmp, "out": out, "procs": procs, "bad": bad}


def grid_runs(lab) -> list[Path]:
    return sorted(p for p in (lab["out"] / "grid").iterdir() if (p / ".hydra").is_dir())


# --------------------------------------------------------------------------- pure helpers (fast)


def test_number_formats():
    assert fmt_pct(0.97312) == "97.31%" and fmt_pct(None) == "" and fmt_pct(float("nan")) == "nan"
    assert [fmt_params(n) for n in (842, 1642, 206_154, 1_234_567)] == ["842", "1.6k", "206k", "1.2M"]
    assert [fmt_seconds(s) for s in (12.34, 75, 7200)] == ["12.3s", "1.2min", "2.0h"]
    assert _shorten_path("outputs/multirun/2026-11-27/10-00-00/3", 20) == ".../10-00-00/3"


def test_where_syntax():
    assert parse_where("model.patch_size=4") == ("model.patch_size", "=", "4")
    assert parse_where("acc>=0.9") == ("test_acc", ">=", "0.9")
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_where("model.patch_size")


def test_broken_runs_are_rows_not_crashes(tmp_path, capsys, monkeypatch):
    runs = make_bad_runs(tmp_path / "outputs")
    _unreadable(runs)
    monkeypatch.chdir(tmp_path)
    rc, out, err = compare(capsys, "--format", "json")  # default path: outputs/
    assert rc == 0, err
    rows = {Path(r["path"]).name: r for r in json.loads(out)["runs"]}
    assert rows["corrupt"]["path"] == os.path.join("outputs", "corrupt")  # relative to the current folder
    assert rows["corrupt"]["status"] == "corrupt" and "half-written" in rows["corrupt"]["note"]
    assert rows["incomplete"]["status"] == "incomplete" and "no metrics.json" in rows["incomplete"]["note"]
    assert rows["killed"]["status"] == "incomplete" and "killed" in rows["killed"]["note"]
    assert rows["failed"]["status"] == "failed" and "nan" in rows["failed"]["note"]
    assert rows["unreadable"]["status"] == "unreadable"
    assert rows["old"]["status"] == "old schema" and "older schema" in rows["old"]["note"]
    assert json.loads(out)["differing"] == []  # the old-schema config does not make every key "differ"
    rc, out, err = compare(capsys, "--width", "80")
    assert rc == 0 and all(len(line) <= 80 for line in out.splitlines())
    for status in ("corrupt", "incomplete", "failed", "unreadable", "old schema"):
        assert status in out


def test_missing_optuna_storage_is_a_note_and_creates_nothing(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_run(sweep / "0", {"status": "completed", "best_val_acc": 0.5})
    db = tmp_path / "gone.db"
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                        "storage": f"sqlite:///{db}",
                        "study_name": "s",
                        "direction": "maximize",
                    }
                }
            }
        )
    )
    rc, out, err = compare(capsys, sweep, "--format", "json")
    assert rc == 0, err
    (summary,) = json.loads(out)["sweeps"]
    assert summary["study"] is None and "not found" in summary["note"]
    assert not db.exists()


def test_seed_comparison_dry_run(capsys):
    from vit_lab.compare.seed_comparison import main as seed_main

    assert seed_main(["--dry-run", "--out", "o", "device=cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12  # 4 rows x 3 seeds, every row's seed 0 first
    assert "experiment=tutorial " in lines[0] and "experiment=tutorial_fixed" in lines[1]
    assert "experiment" not in lines[2] and "model=cnn" in lines[3]
    assert all("device=cpu" in line and "-m vit_lab.train" in line for line in lines)
    assert [line.split("trainer.seed=")[1][0] for line in lines] == list("000011112222")
    assert lines[7].endswith(f"hydra.run.dir={os.path.join('o', '4-cnn', 'seed1')}")

    assert seed_main(["--dry-run", "--seeds", "5", "--out", "o"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("trainer.seed=5" in line for line in lines)
    with pytest.raises(SystemExit):
        seed_main(["--dry-run", "--seeds", "1,x"])
    assert "--seeds '1,x'" in capsys.readouterr().err


# --------------------------------------------------------------------------- real runs


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table in text: its header cells and rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]]
    return cells[0], cells[2:]


@pytest.mark.slow
def test_seed_comparison_table_from_real_runs(lab):
    proc = lab["procs"]["seed"]
    assert proc.stdout.startswith("| experiment"), proc.stdout[:500]  # stdout holds only tables; logs go to stderr
    header, cells = markdown_table(proc.stdout)
    assert header[:3] == ["experiment", "model", "n"], header
    assert len(cells) == 4, proc.stdout
    assert [c[0] for c in cells] == ["tutorial", "tutorial_fixed", "-", "-"]  # the rows in the folders' order
    assert [c[1] for c in cells] == ["vit", "vit", "vit", "cnn"]
    assert [c[2] for c in cells] == ["1"] * 4  # one seed each
    assert cells[0][header.index("params")] == "1.6k"  # the tutorial's 1,642 parameters
    for row, name in zip(cells, ("1-tutorial", "2-tutorial_fixed", "3-vit", "4-cnn")):
        m = read_json(lab["out"] / "seed" / name / "seed0" / "metrics.json")
        assert m["status"] == "completed"
        assert row[header.index("test acc")] == f"{100 * m['test_acc']:.2f}%"
    assert "Welch's t-test (test_acc)" in proc.stdout  # undefined with one run per row: empty cells, no crash


@pytest.mark.slow
def test_seed_comparison_keeps_completed_runs(lab, capsys):
    from vit_lab.compare.seed_comparison import main as seed_main

    before = {p: p.stat().st_mtime_ns for p in (lab["out"] / "seed").glob("*/seed0/metrics.json")}
    assert len(before) == 4
    assert seed_main(["--out", str(lab["out"] / "seed"), "--seeds", "0", "--format", "csv", *SEED_TINY]) == 0
    out, err = capsys.readouterr()
    assert err.count("keeping completed") == 4
    assert len(list(csv.DictReader(io.StringIO(out)))) == 4
    assert before == {p: p.stat().st_mtime_ns for p in (lab["out"] / "seed").glob("*/seed0/metrics.json")}


@pytest.mark.slow
def test_table_fits_80_columns_and_shows_only_differing_keys(lab, capsys, monkeypatch):
    monkeypatch.chdir(lab["tmp"])
    rc, out, err = compare(capsys, "outputs/grid", "--width", "80")
    assert rc == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    header = "\n".join(lines[:3])
    assert "n_heads" in header and "depth" not in header and "patch_size" not in header
    assert sum(" completed  " in line for line in lines) == 2 and sum(line.startswith("*  ") for line in lines) == 1

    rc, out, err = compare(capsys, "outputs/grid", "outputs/seed/4-cnn/seed0", "--format", "json")
    doc = json.loads(out)
    assert doc["differing"][0] == "model" and "model.n_heads" in doc["differing"]  # the choice, then the leaves
    assert "model.width" in doc["differing"] and "data.name" not in doc["differing"]

    rc, out, err = compare(capsys, "--width", "80")  # everything, the broken runs and the sweep included
    assert rc == 0, err
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "Not shown for width" in out and "corrupt" in out and "study 't'" in out
    assert ".../seed0" in out  # the seed comparison's runs, their paths shortened to fit


@pytest.mark.slow
def test_sort_top_where(lab, capsys, monkeypatch):
    monkeypatch.chdir(lab["tmp"])
    completed = {}
    for m in lab["out"].rglob("metrics.json"):
        if m.is_file():
            try:
                data = read_json(m)
            except ValueError:
                continue
            if data.get("status") == "completed" and "test_acc" in data:
                completed[os.path.relpath(m.parent, lab["tmp"])] = data

    rc, out, _ = compare(capsys, "--sort", "test_acc", "--top", "3", "--format", "json")
    runs = json.loads(out)["runs"]
    assert len(runs) == 3
    accs = sorted((m["test_acc"] for m in completed.values()), reverse=True)[:3]
    assert [r["metrics"]["test_acc"] for r in runs] == accs

    rc, out, _ = compare(capsys, "--sort", "test_loss", "--format", "json")
    losses = [r["metrics"]["test_loss"] for r in json.loads(out)["runs"] if "test_loss" in r["metrics"]]
    assert losses == sorted(losses)  # losses: low first; runs without one come last

    rc, out, _ = compare(capsys, "--where", "model.n_heads=4", "--where", "status=completed", "--format", "json")
    paths = {r["path"] for r in json.loads(out)["runs"]}
    expected = {
        p
        for p in completed
        if yaml.safe_load((lab["tmp"] / p / ".hydra" / "config.yaml").read_text())["model"].get("n_heads") == 4
    }
    assert paths == expected and len(paths) >= 2  # the grid's n_heads=4 job and the default ViT

    rc, out, _ = compare(capsys, "--where", "model=cnn", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["path"]).parent.name for r in rows] == ["4-cnn"]

    rc, out, _ = compare(
        capsys,
        "outputs/grid",
        "--where",
        "test_acc>=0",
        "--where",
        "model.n_heads!=4",
        "--columns",
        "path,model.n_heads,test_acc",
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1 and rows[0]["model.n_heads"] == "2"


@pytest.mark.slow
def test_csv_and_json_round_trip(lab, capsys, monkeypatch):
    monkeypatch.chdir(lab["tmp"])
    rc, out, _ = compare(capsys, "outputs/grid", "outputs/seed", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6
    for row in rows:
        m = read_json(lab["tmp"] / row["path"] / "metrics.json")
        assert float(row["test_acc"]) == m["test_acc"] and float(row["best_val_acc"]) == m["best_val_acc"]
        assert float(row["train_seconds"]) == m["train_seconds"]
        assert float(row["train_images_per_second"]) == m["train_images_per_second"]
        assert int(row["n_params"]) == m["n_params"] and int(row["epochs_completed"]) == m["epochs_completed"]
        assert row["status"] == m["status"]
    assert sum(row["best"] == "true" for row in rows) == 1

    rc, out, _ = compare(capsys, "outputs", "--format", "json")
    runs = json.loads(out)["runs"]
    assert len(runs) == 4 + 2 + 3 + 6  # seed, grid, optuna trials, broken
    for r in runs:
        if r["status"] in ("completed",):
            assert r["metrics"] == read_json(lab["tmp"] / r["path"] / "metrics.json")


@pytest.mark.slow
def test_diff_shows_exactly_the_differing_key(lab, capsys):
    a, b = grid_runs(lab)
    rc, out, err = compare(capsys, "diff", a, b, "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["config"] == {"model.n_heads": [2, 4]}
    ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
    assert doc["metrics"]["test_acc"]["delta"] == pytest.approx(mb["test_acc"] - ma["test_acc"])

    rc, out, _ = compare(capsys, "diff", a, b)
    config_lines = out.split("\n\n")[1].splitlines()[2:]
    assert [line.split()[:3] for line in config_lines] == [["model.n_heads", "2", "4"]]
    assert "pp" in out and "test acc" in out

    rc, out, _ = compare(capsys, "diff", a, a)
    assert "identical" in out and "+0.00 pp" in out


@pytest.mark.slow
def test_optuna_sweep_summary(lab, capsys, monkeypatch):
    sweep = lab["out"] / "optuna"
    rc, out, err = compare(capsys, sweep, "--format", "json")  # from the repo: the storage is found above the sweep
    assert rc == 0, err
    (s,) = json.loads(out)["sweeps"]
    assert s["study"] == "t" and s["direction"] == "maximize"
    assert s["trials"] == {"complete": 3, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}
    jobs = [read_json(p) for p in sweep.glob("*/metrics.json")]
    assert s["best"]["value"] == max(m["best_val_acc"] for m in jobs)
    assert set(s["best"]["params"]) == {"model.depth", "optimizer.lr"}
    assert set(s["importances"]) == {"model.depth", "optimizer.lr"}
    assert sum(s["importances"].values()) == pytest.approx(1.0)

    monkeypatch.chdir(lab["tmp"])
    rc, out, _ = compare(capsys, "outputs/optuna")
    assert "study 't'" in out and "trials: 3 complete, 0 pruned, 0 failed" in out and "importance:" in out


def _png(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 10_000
    img = mpimg.imread(path)
    assert img[..., :3].std() > 0.05  # something drawn, not a blank canvas
    return img.shape[1], img.shape[0]


@pytest.mark.slow
def test_plots(lab, tmp_path, capsys):
    out = lab["out"]
    rc, _, err = compare(capsys, out / "grid", out / "seed", "--plot", tmp_path / "curves.png")
    assert rc == 0 and "learning curves of 6 runs" in err
    assert _png(tmp_path / "curves.png") == (1200, 600)

    rc, _, err = compare(capsys, out / "grid", "--plot", tmp_path / "param.png", "--x", "model.n_heads")
    assert rc == 0 and "against model.n_heads for 2 runs" in err
    assert _png(tmp_path / "param.png") == (800, 500)

    rc, _, err = compare(capsys, out / "seed", "--plot", tmp_path / "cat.png", "--x", "model", "--y", "best_val_acc")
    assert rc == 0 and _png(tmp_path / "cat.png") == (800, 500)

    rc, _, err = compare(capsys, out / "optuna", "--plot", tmp_path / "history.png", "--history")
    assert rc == 0 and "3 trials" in err
    assert _png(tmp_path / "history.png") == (900, 500)

    rc, _, err = compare(capsys, out / "grid", "--plot", tmp_path / "none.png", "--history")
    assert rc == 2 and "no Optuna study" in err and not (tmp_path / "none.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no runs under"),
        (["--where", "model.n_heads"], "expected KEY=VALUE"),
        (["--sort", "no_such_key"], "unknown key"),
        (["--where", "model.n_heads=99"], "no run matches"),
        (["--columns", "path,bogus"], "unknown column"),
    ],
)
def test_errors_are_one_line_and_exit_2(lab, tmp_path, args, message):
    target = [str(tmp_path)] if not args else [str(lab["out"] / "grid")]
    proc = run_module("vit_lab.compare", *target, *args)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_summary_resolves_interpolated_study_name_and_counts_states(tmp_path, capsys):
    """hydra.yaml is saved unresolved (study_name: vit_optuna-${data.name}); pruned and failed trials count."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(
        study_name="vit_optuna-mnist",
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for i in range(6):
        trial = study.ask()
        depth = trial.suggest_int("model.depth", 1, 6)
        lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True)
        state = {4: TrialState.PRUNED, 5: TrialState.FAIL}.get(i, TrialState.COMPLETE)
        study.tell(trial, depth / 10 + lr if state == TrialState.COMPLETE else None, state=state)
    sweep = tmp_path / "sweep"
    job = make_run(
        sweep / "0",
        {"status": "pruned", "reason": "pruned at epoch 1"},
        config={"model": {}, "data": {"name": "mnist"}, "trainer": {}, "optimizer": {}},
    )
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper",
                        "storage": storage,
                        "study_name": "vit_optuna-${data.name}",
                        "direction": "maximize",
                    },
                    "runtime": {"choices": {"model": "vit"}},
                    "overrides": {"task": []},
                }
            }
        )
    )
    (sweep / "optimization_results.yaml").write_text("name: optuna\n")
    rc, out, err = compare(capsys, sweep, "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["runs"][0]["status"] == "pruned"
    (s,) = doc["sweeps"]
    assert s["study"] == "vit_optuna-mnist"
    assert (s["trials"]["complete"], s["trials"]["pruned"], s["trials"]["fail"]) == (4, 1, 1)
    assert s["best"]["trial"] == study.best_trial.number and s["best"]["value"] == study.best_value
    assert set(s["importances"]) == {"model.depth", "optimizer.lr"}
    rc, out, _ = compare(capsys, sweep, "--width", "80")
    assert "trials: 4 complete, 1 pruned, 1 failed" in out and all(len(line) <= 80 for line in out.splitlines())


# --------------------------------------------------------------------------- groups and statistics (hand-made runs)


def make_seed_runs(root: Path) -> dict[str, list[dict]]:
    """Runs of two models x four seeds with made-up metrics, one of them failed (it must not count)."""
    made: dict[str, list[dict]] = {"vit": [], "cnn": []}
    accs = {"vit": [0.9904, 0.9921, 0.9913, 0.9880], "cnn": [0.9934, 0.9929, 0.9941, 0.9937]}
    for model, values in accs.items():
        for seed, acc in enumerate(values):
            status = "failed" if (model, seed) == ("vit", 3) else "completed"
            m = {
                "status": status,
                "test_acc": acc,
                "best_val_acc": acc + 0.0005,
                "test_loss": 0.04 - acc / 30,
                "n_params": 1000 if model == "vit" else 500,
                "train_seconds": 300.0 + 7 * seed,
                "epochs": 15,
                "epochs_completed": 15,
            }
            run = make_run(
                root / model / f"seed{seed}",
                m,
                config={
                    "model": {"_target_": "x"},
                    "data": {"name": "mnist"},
                    "trainer": {"seed": seed},
                    "optimizer": {"lr": 0.1},
                },
            )
            (run / ".hydra" / "hydra.yaml").write_text(
                yaml.safe_dump(
                    {
                        "hydra": {
                            "runtime": {"choices": {"model": model}},
                            "overrides": {"task": [f"trainer.seed={seed}"]},
                        }
                    }
                )
            )
            if status == "completed":
                made[model].append(m)
    return made


def test_group_statistics_equal_direct_numbers(tmp_path, capsys):
    import statistics

    from scipy import stats

    made = make_seed_runs(tmp_path)
    rc, out, err = compare(
        capsys, tmp_path, "--group-by", "model", "--stats", "test_acc,test_loss,params", "--test", "--format", "json"
    )
    assert rc == 0, err
    doc = json.loads(out)
    groups = {g["values"]["model"]: g for g in doc["groups"]}
    assert list(groups) == ["cnn", "vit"] and len(groups["vit"]["runs"]) == 4
    for model, runs in made.items():
        for metric in ("test_acc", "test_loss"):
            values = [m[metric] for m in runs]
            st = groups[model]["stats"][metric]
            n, mean, sd = len(values), statistics.mean(values), statistics.stdev(values)
            half = stats.t.ppf(0.975, n - 1) * sd / n**0.5
            assert st["n"] == n == (3 if model == "vit" else 4)
            assert st["values"] == values
            assert st["mean"] == pytest.approx(mean, rel=1e-12) and st["std"] == pytest.approx(sd, rel=1e-12)
            assert (st["ci_low"], st["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-12)
        assert groups[model]["stats"]["n_params"] == {
            "n": len(runs),
            "mean": runs[0]["n_params"],
            "std": 0.0,
            "ci_low": runs[0]["n_params"],
            "ci_high": runs[0]["n_params"],
            "values": [runs[0]["n_params"]] * len(runs),
        }
    (test,) = doc["tests"]
    a, b = [m["test_acc"] for m in made["cnn"]], [m["test_acc"] for m in made["vit"]]
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert (test["a"], test["b"], test["n_a"], test["n_b"]) == ("model=cnn", "model=vit", 4, 3)
    assert test["t"] == ref.statistic and test["p"] == ref.pvalue and test["df"] == ref.df
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3  # Welch-Satterthwaite, by hand
    assert test["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2), rel=1e-9)
    assert test["diff"] == pytest.approx(statistics.mean(b) - statistics.mean(a), rel=1e-12)

    rc, out, _ = compare(capsys, tmp_path, "--group-by", "model", "--test", "--format", "markdown")
    header, rows = markdown_table(out)
    cnn = groups["cnn"]["stats"]["test_acc"]
    assert header[:4] == ["model", "n", "test acc (mean ± 95% CI)", "test acc sd"]
    assert rows[0][:4] == [
        "cnn",
        "4",
        f"{100 * cnn['mean']:.2f}% ± {100 * (cnn['ci_high'] - cnn['mean']):.2f}",
        f"{100 * cnn['std']:.2f}",
    ]
    assert rows[1][1] == "3 of 4"  # the failed run is listed but not counted
    assert f"{ref.pvalue:.2g}" in out.split("Welch")[1]


def test_diff_of_run_folders_is_a_welch_test(tmp_path, capsys):
    from scipy import stats

    made = make_seed_runs(tmp_path)
    rc, out, err = compare(capsys, "diff", tmp_path / "vit", tmp_path / "cnn", "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["runs_a"]) == 4 and len(doc["runs_b"]) == 4
    for metric in ("test_acc", "best_val_acc", "test_loss"):
        a, b = [m[metric] for m in made["vit"]], [m[metric] for m in made["cnn"]]
        ref = stats.ttest_ind(b, a, equal_var=False)
        w = doc["metrics"][metric]["welch"]
        assert (w["t"], w["p"], w["df"]) == (ref.statistic, ref.pvalue, ref.df)
        assert (w["ci_low"], w["ci_high"]) == tuple(ref.confidence_interval(0.95))
        assert doc["metrics"][metric]["a"]["n"] == 3
    rc, out, _ = compare(capsys, "diff", tmp_path / "vit", tmp_path / "cnn")
    assert "Welch's t-test, B - A" in out and "pp" in out


def test_sweep_jobs_in_trial_order(tmp_path, capsys):
    for job in range(12):
        make_run(tmp_path / "sweep" / str(job), {"status": "completed", "test_acc": job / 100})
    rc, out, _ = compare(capsys, tmp_path / "sweep", "--format", "csv")
    assert [Path(r["path"]).name for r in csv.DictReader(io.StringIO(out))] == [str(j) for j in range(12)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--test"], "go with --group-by"),
        (["--group-by", "nope"], "no run has this key"),
        (["--group-by", "model", "--stats", "model"], "pick numeric metrics"),
        (["--group-by", "model", "--test", "device"], "pick a numeric metric"),
    ],
)
def test_group_errors_are_one_line(tmp_path, capsys, args, message):
    make_seed_runs(tmp_path)
    rc, out, err = compare(capsys, tmp_path, *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def _multi_objective_sweep(tmp_path: Path):
    """A two-objective study made with Optuna's API (maximise val_acc, minimise seconds_per_epoch) and a sweep
    folder whose hydra.yaml points at it, as a multi-objective vit_optuna sweep leaves them."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(
        study_name="pareto-mnist",
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_metric_names(["val_acc", "seconds_per_epoch"])
    points = [(0.90, 1.0), (0.95, 2.0), (0.93, 3.0), (0.97, 5.0), (0.96, 5.0), (0.80, 0.5), None, (0.95, 2.5)]
    for p in points:
        trial = study.ask()
        trial.suggest_int("model.depth", 1, 6)
        trial.suggest_categorical("model.patch_size", [4, 7])
        study.tell(trial, list(p) if p else None, state=TrialState.COMPLETE if p else TrialState.FAIL)
    sweep = tmp_path / "sweep"
    job = make_run(
        sweep / "0",
        {"status": "completed", "best_val_acc": 0.9, "test_acc": 0.9},
        config={"model": {}, "data": {"name": "mnist"}, "trainer": {}, "optimizer": {}},
    )
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "hydra_plugins.vit_lab_sweeper.vit_optuna_sweeper.VitOptunaSweeper",
                        "storage": storage,
                        "study_name": "pareto-${data.name}",
                        "direction": ["maximize", "minimize"],
                    },
                    "runtime": {"choices": {"model": "vit"}},
                    "overrides": {"task": []},
                }
            }
        )
    )
    # what hydra-optuna-sweeper writes for a multi-objective study: the Pareto front as `solutions`
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump(
            {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials]}
        )
    )
    return study, sweep, points


def test_multi_objective_sweep_summary_lists_the_pareto_front(tmp_path, capsys):
    study, sweep, points = _multi_objective_sweep(tmp_path)
    done = {i: p for i, p in enumerate(points) if p}
    # non-dominated by hand: no other trial at least as accurate and at most as costly, and better in one
    front = {
        i
        for i, (a, c) in done.items()
        if not any(a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in done.values())
    }
    assert front == {0, 1, 3, 5}
    rc, out, err = compare(capsys, sweep, "--format", "json")
    assert rc == 0, err
    (s,) = json.loads(out)["sweeps"]
    assert s["study"] == "pareto-mnist" and s["direction"] == "maximize, minimize"
    assert s["objectives"] == [
        {"name": "val_acc", "direction": "maximize"},
        {"name": "seconds_per_epoch", "direction": "minimize"},
    ]
    assert s["trials"]["complete"] == 7 and s["trials"]["fail"] == 1 and s.get("best") is None
    assert [p["trial"] for p in s["pareto"]] == [3, 1, 0, 5]  # most accurate first
    assert s["pareto"][0]["values"] == {"val_acc": 0.97, "seconds_per_epoch": 5.0}
    assert s["pareto"][0]["params"] == study.trials[3].params
    assert set(s["importances_by_objective"]) == {"val_acc", "seconds_per_epoch"}
    for imp in s["importances_by_objective"].values():
        assert set(imp) == {"model.depth", "model.patch_size"} and sum(imp.values()) == pytest.approx(1.0)

    rc, out, _ = compare(capsys, sweep, "--format", "markdown")  # not wrapped to a terminal
    assert rc == 0
    assert "study 'pareto-mnist'" in out and "maximize val_acc, minimize seconds_per_epoch" in out
    assert "Pareto front (trials no other trial beats in every objective): 4" in out
    assert "trial 3: val_acc 0.97, seconds_per_epoch 5" in out and "importance for val_acc:" in out
    rc, out, _ = compare(capsys, sweep, "--width", "80")
    assert rc == 0 and all(len(line) <= 80 for line in out.splitlines())

    (tmp_path / "optuna.db").rename(tmp_path / "moved.db")  # the storage is gone: the front from the results file
    rc, out, err = compare(capsys, sweep, "--format", "json")
    (s,) = json.loads(out)["sweeps"]
    assert rc == 0 and "not found" in s["note"]
    assert sorted(p["values"]["objective 0"] for p in s["pareto"]) == [0.8, 0.9, 0.95, 0.97]


def test_pareto_and_history_plots_of_a_multi_objective_study(tmp_path, capsys):
    _, sweep, _ = _multi_objective_sweep(tmp_path)
    rc, _, err = compare(capsys, sweep, "--plot", tmp_path / "pareto.png", "--pareto")
    assert rc == 0, err
    assert "Pareto front (4 Pareto-optimal trials)" in err
    assert _png(tmp_path / "pareto.png") == (800, 600)
    rc, _, err = compare(capsys, sweep, "--plot", tmp_path / "history.png", "--history")  # its first objective
    assert rc == 0 and "7 trials" in err and _png(tmp_path / "history.png") == (900, 500)
    rc, _, err = compare(capsys, sweep, "--pareto")
    assert rc == 2 and "go with --plot" in err


def test_pareto_plot_of_a_single_objective_sweep_is_one_line(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="single", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    job = make_run(tmp_path / "sweep" / "0", {"status": "completed", "best_val_acc": 0.5, "test_acc": 0.5})
    (job / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {
                        "_target_": "x.OptunaSweeper",
                        "storage": storage,
                        "study_name": "single",
                        "direction": "maximize",
                    },
                    "runtime": {"choices": {}},
                    "overrides": {"task": []},
                }
            }
        )
    )
    proc = run_module("vit_lab.compare", str(tmp_path / "sweep"), "--plot", str(tmp_path / "p.png"), "--pareto")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "no multi-objective Optuna study" in proc.stderr and not (tmp_path / "p.png").exists()
