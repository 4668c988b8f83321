"""vit_lab/cli.py without Hydra internals, the console scripts of pyproject.toml, and Hydra's tab completion.

The scripts are run through the same wrapper pip writes for ``[project.scripts]`` (``from <module> import <func>;
sys.exit(<func>())``, named like the script), so the tests need no install; CI's ``pip install -e .`` puts the real
ones on PATH.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, data_root

from vit_lab.cli import cli, full_error
from vit_lab.errors import ConfigError

SCRIPTS = (
    "vit-lab-train",
    "vit-lab-compare",
    "vit-lab-evaluate",
    "vit-lab-ensemble",
    "vit-lab-predict",
    "vit-lab-attention",
)


def project_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name -> "module:function"."""
    text = (REPO / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.S | re.M).group(1)
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))


def install_scripts(folder: Path) -> Path:
    """pip's console-script wrappers for every entry of [project.scripts], in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in project_scripts().items():
        module, func = target.split(":")
        path = folder / name
        path.write_text(
            f"#!{sys.executable}\nimport re, sys\nfrom {module} import {func}\n"
            f"if __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            f"    sys.exit({func}())\n"
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def script_env(bin_dir: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIT_LAB_DATA": str(data_root()),
        "MPLBACKEND": "Agg",
        **extra,
    }
    env.pop("HYDRA_FULL_ERROR", None)
    return env


# ----------------------------------------------------------------------------------------------- cli()


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def main():
        raise ConfigError("trainer.epochs=0 must be > 0\n(second line)")

    with pytest.raises(SystemExit) as ex:
        cli(main)
    assert ex.value.code == 2
    assert capsys.readouterr().err == "vit_lab: error: trainer.epochs=0 must be > 0; (second line)\n"
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored after the run


def test_a_bug_propagates_with_its_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    seen = {}

    def main():  # Hydra's reporter re-raises while cli() runs: what a job sees of the environment
        seen.update(hydra=os.environ.get("HYDRA_FULL_ERROR"), user=full_error())
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        cli(main)
    assert seen == {"hydra": "1", "user": False}  # set for Hydra, but a job still reports user errors as one line
    assert "HYDRA_FULL_ERROR" not in os.environ and not full_error()


def test_the_user_s_hydra_full_error_keeps_tracebacks(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert full_error()

    def main():
        raise ConfigError("trainer.epochs=0 must be > 0")

    with pytest.raises(ConfigError):
        cli(main)
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_cli_uses_no_private_hydra_api():
    source = (REPO / "vit_lab" / "cli.py").read_text()
    assert "hydra._internal" not in source and "run_and_report" not in source.replace("`run_and_report`", "")


# ----------------------------------------------------------------------------------------------- console scripts


def test_project_scripts_are_importable_callables():
    scripts = project_scripts()
    assert set(scripts) == set(SCRIPTS)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,usage",
    [
        ("vit-lab-compare", "usage:"),
        ("vit-lab-evaluate", "usage:"),
        ("vit-lab-ensemble", "usage:"),
        ("vit-lab-predict", "usage:"),
        ("vit-lab-attention", "usage:"),
    ],
)
def test_argparse_scripts_answer_help(tmp_path, name, usage):
    bin_dir = install_scripts(tmp_path / "bin")
    proc = subprocess.run(
        [name, "--help"], env=script_env(bin_dir), cwd=tmp_path, text=True, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(usage), proc.stdout


@pytest.mark.slow
def test_vit_lab_train_script_runs_hydra_with_one_line_errors(tmp_path):
    """Launched from another folder, as an installed command: Hydra finds conf/ and bad input is one line."""
    bin_dir = install_scripts(tmp_path / "bin")
    env = script_env(bin_dir)
    shown = subprocess.run(
        ["vit-lab-train", "--cfg", "job", "model=cnn"],
        env=env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert shown.returncode == 0 and "_target_: vit_lab.models.SimpleCNN" in shown.stdout, shown.stderr
    bad = subprocess.run(
        ["vit-lab-train", "trainer.epochz=3"], env=env, cwd=tmp_path, text=True, capture_output=True, timeout=120
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("vit_lab: error: ")]
    assert len(errors) == 1 and "trainer.epochz" in errors[0], bad.stderr


# ----------------------------------------------------------------------------------------------- completion


@pytest.mark.slow
def test_completion_lists_groups_and_options(tmp_path):
    bin_dir = install_scripts(tmp_path / "bin")

    def query(line: str) -> list[str]:
        proc = subprocess.run(
            ["vit-lab-train", "-sc", "query=bash"],
            env=script_env(bin_dir, COMP_LINE=line),
            cwd=tmp_path,
            text=True,
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert {"model=vit", "model=cnn"} <= set(query("vit-lab-train model="))
    groups = set(query("vit-lab-train "))
    assert {"model=", "data=", "trainer=", "optimizer=", "scheduler=", "device=", "experiment="} <= groups, groups
    assert {"trainer.epochs=", "trainer.batch_size="} <= set(query("vit-lab-train trainer."))


@pytest.mark.slow
def test_bash_completion_install_completes_model_options(tmp_path):
    """The README's install line in a real bash: Tab after ``model=`` offers vit and cnn."""
    bin_dir = install_scripts(tmp_path / "bin")
    script = (
        'eval "$(vit-lab-train --shell-completion install=bash)"\n'
        'COMP_LINE="vit-lab-train model="; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1\n'
        'hydra_bash_completion\nprintf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "-c", script], env=script_env(bin_dir), cwd=tmp_path, text=True, capture_output=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    assert {"model=vit", "model=cnn"} <= set(proc.stdout.split()), (proc.stdout, proc.stderr)
