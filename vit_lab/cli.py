"""Command-line entry point: Hydra's main, with every user error reported as one line.

Hydra reports errors from its own machinery (an unknown key, a wrong type, an unknown group option, an override
it cannot parse, a sweeper parameter it cannot read, an output directory it cannot create) as several lines or a
traceback, and exits 1. :func:`cli` runs the Hydra main with Hydra's documented ``HYDRA_FULL_ERROR=1``, so those
errors reach it, prints each one a user can fix as one line (``vit_lab: error: ...``) and exits 2; anything else
(a real bug) propagates with its full traceback. A user's own ``HYDRA_FULL_ERROR=1`` keeps Hydra's behaviour
untouched: full tracebacks, for debugging.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vit_lab.errors import UserError

EXIT_USER_ERROR = 2
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the config groups, one folder each


def one_line(text: str) -> str:
    """Fold a multi-line Hydra/OmegaConf message into one line; drop the config search path and key dumps."""
    parts: list[str] = []
    listing = False
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("Config search path"):
            break
        if line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        # "Error when parsing index: 0, string: a=[ out of ['a=[', ...every other override...]": keep the culprit
        line = re.sub(r"^(Error when parsing index: \d+, string: .*?) out of \[.*\]\.?$", r"\1", line)
        if listing and raw[:1] in ("\t", " "):  # an indented option under "Available options in ...:"
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
            continue
        listing = line.endswith(":")
        parts.append(line)
    return "; ".join(p.rstrip(".") if i < len(parts) - 1 else p for i, p in enumerate(parts)) or type(text).__name__


def describe(ex: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for anything else (a bug)."""
    from hydra.errors import CompactHydraException, HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(ex, UserError):
        return one_line(str(ex))
    if isinstance(ex, (CompactHydraException, OverrideParseException)):
        msg = one_line(str(ex))
        if isinstance(ex.__cause__, OmegaConfBaseException):
            msg += f" ({one_line(str(ex.__cause__))})"
        return _group_hint(msg) or msg
    if isinstance(ex, OmegaConfBaseException):
        return one_line(str(ex))
    if isinstance(ex, HydraException) and "sweeper" in str(ex).lower():
        return one_line(str(ex))
    if _in_own_code(ex):  # raised by the lab's own code: a bug, keep Hydra's report (job traceback)
        return None
    if isinstance(ex, OSError) and ex.filename is not None:  # e.g. an output directory that cannot be created
        return (
            f"cannot create or write {ex.filename}: {ex.strerror or type(ex).__name__}; "
            "choose another hydra.run.dir / hydra.sweep.dir"
        )
    if _from_sqlalchemy(ex):  # the Optuna storage: an unreachable server, a SQLite file in a missing folder
        cause = getattr(ex, "orig", None) or ex
        return (
            f"cannot use the Optuna storage (hydra.sweeper.storage): {one_line(str(cause))}; check the URL, "
            "that the server is up, or that a SQLite file's folder exists"
        )
    if isinstance(ex, ValueError) and _frames_named(ex, _PARAM_PARSERS):  # e.g. a bad hydra.sweeper.params range
        return f"invalid sweep configuration (hydra.sweeper.params): {one_line(str(ex))}"
    if isinstance(ex, ValueError) and _frames_named(ex, ("best_trial", "best_trials", "best_value", "best_params")):
        return (
            "no trial of the sweep completed, so there is no best trial; each failed trial's error is logged "
            "above and in its run folder's metrics.json"
        )
    return None


def _group_hint(msg: str) -> str | None:
    """'distill.teacher=X' while the distill group is off: Hydra's hint ('+distill.teacher') would be wrong, the fix
    is to pick one of the group's options first."""
    found = re.search(r"Could not override '(\w+)\.([\w.]+)'", msg)
    group = found.group(1) if found else ""
    if not found or f"Key '{group}' is not in struct" not in msg or not (CONF_DIR / group).is_dir():
        return None
    options = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))
    return (
        f"{group}.{found.group(2)} is set but the {group} group is off; choose one of its options too, "
        f"e.g. {group}={options[0]} (options: {', '.join(options)})"
    )


# Functions of hydra-optuna-sweeper that parse `hydra.sweeper.params` (a ValueError there is the user's space).
_PARAM_PARSERS = (
    "create_optuna_distribution_from_override",
    "create_params_from_overrides",
    "_parse_sweeper_params_config",
    "_process_searchspace_config",
)


def _frames_named(ex: BaseException, names: tuple[str, ...]) -> bool:
    """Whether the exception's traceback passes through a function of one of these names."""
    tb = ex.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in names:
            return True
        tb = tb.tb_next
    return False


def _from_sqlalchemy(ex: BaseException) -> bool:
    return any(type(e).__module__.startswith("sqlalchemy") for e in (ex, ex.__cause__, ex.__context__) if e)


def _frames_under(ex: BaseException, folder: str) -> bool:
    """Whether any frame of the exception's traceback runs code from a file under a folder of this name."""
    tb = ex.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if f"{os.sep}{folder}{os.sep}" in name and name != __file__:  # this module only catches and reports
            return True
        tb = tb.tb_next
    return False


def _in_own_code(ex: BaseException) -> bool:
    return _frames_under(ex, "vit_lab")


# Set beside HYDRA_FULL_ERROR when cli(), not the user, set it; launched jobs inherit both and can tell the two apart.
_SET_BY_CLI = "VIT_LAB_CLI_SET_FULL_ERROR"


def full_error() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1``), as opposed to :func:`cli` setting it."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_SET_BY_CLI) != "1"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """While the Hydra main runs, errors reach the caller: a user's error exits 2 with one line, a bug re-raises.

    Hydra's documented ``HYDRA_FULL_ERROR=1`` makes its reporter re-raise instead of printing its own multi-line
    report and exiting 1; the variable is restored afterwards.
    """
    if full_error():
        yield
        return
    saved = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", _SET_BY_CLI)}
    os.environ.update({"HYDRA_FULL_ERROR": "1", _SET_BY_CLI: "1"})
    try:
        yield
    except Exception as ex:  # noqa: BLE001 - filtered by describe(); anything else (a bug) propagates unchanged
        msg = describe(ex)
        if msg is None:
            raise
        print(f"vit_lab: error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli(main: Callable[[], Any]) -> None:
    """Run a Hydra main with one-line user errors: ``vit-lab-train`` and ``python -m vit_lab.train`` run
    ``cli(main)``."""
    from vit_lab.data import pin_data_env

    pin_data_env()  # before Hydra starts any job: every launcher and worker inherits the absolute path
    with one_line_errors():
        main()
