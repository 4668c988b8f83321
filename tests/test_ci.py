"""CI runs the README's test command as the README prints it, so the two cannot drift apart."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def readme_command(which: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "readme_command.py"), which], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_ci_runs_the_readme_test_command():
    cmd = readme_command("test")
    assert cmd.startswith("python3 -m venv .venv") and cmd.endswith("python -m pytest -q -n 2")
    checks = [cmd.index(c) for c in ("ruff check .", "ruff format --check .", "&& mypy &&", "pytest")]
    assert checks == sorted(checks)  # lint, format and type checks before the tests
    assert "VIT_LAB_DATA=../shared/data" in cmd and f"    {cmd}\n" in (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_command.py test" in ci and 'bash -c "$cmd"' in ci


def test_readme_main_command_runs_the_main_job():
    cmd = readme_command("main")
    assert cmd.endswith("python -m vit_lab.train") and "pip install -e" in cmd


def test_collection_is_the_same_in_every_process(request):
    """xdist refuses to run when its workers collect different test ids, so no id may hang on the clock or hash seed."""
    config = request.config
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *config.args]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=config.invocation_params.dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    later = [line for line in proc.stdout.splitlines() if "::" in line]
    here = [item.nodeid for item in request.session.items]
    chosen = set(here)
    assert not chosen - set(later), sorted(chosen - set(later))[:5]  # ids that hang on time or hash seed
    if not (config.getoption("failedfirst", False) or config.getoption("newfirst", False)):  # these reorder
        assert [i for i in later if i in chosen] == here  # xdist also refuses another order
    narrowed = config.option.keyword or config.option.markexpr or config.getoption("deselect", None)
    if not (narrowed or config.getoption("lf", False)):
        assert chosen == set(later)
