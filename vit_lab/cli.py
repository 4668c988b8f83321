"""Command-line entry point: Hydra's main, with every user error reported as one line.

Hydra reports errors from its own machinery (an unknown key or group option, an override it cannot parse,
a sweeper parameter it cannot read, an output directory it cannot create) in `run_and_report`, as several
lines or a traceback. :func:`cli` runs the Hydra main with a stand-in for that reporter which prints such
errors as one line (``vit_lab: error: ...``) and exits 2; anything else (a real bug) is reported by Hydra
as usual. ``HYDRA_FULL_ERROR=1`` keeps Hydra's behaviour untouched: full tracebacks, for debugging.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from vit_lab.errors import UserError

EXIT_USER_ERROR = 2


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


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
        return msg
    if isinstance(ex, OmegaConfBaseException):
        return one_line(str(ex))
    if isinstance(ex, HydraException) and "sweeper" in str(ex).lower():
        return one_line(str(ex))
    if _in_own_code(ex):  # raised by the lab's own code: a bug, keep Hydra's report (job traceback)
        return None
    if isinstance(ex, OSError) and ex.filename is not None:  # e.g. an output directory that cannot be created
        return (f"cannot create or write {ex.filename}: {ex.strerror or type(ex).__name__}; "
                "choose another hydra.run.dir / hydra.sweep.dir")
    if _from_sqlalchemy(ex):  # the Optuna storage: an unreachable server, a SQLite file in a missing folder
        cause = getattr(ex, "orig", None) or ex
        return (f"cannot use the Optuna storage (hydra.sweeper.storage): {one_line(str(cause))}; check the URL, "
                "that the server is up, or that a SQLite file's folder exists")
    if isinstance(ex, ValueError) and _frames_named(ex, _PARAM_PARSERS):  # e.g. a bad hydra.sweeper.params range
        return f"invalid sweep configuration (hydra.sweeper.params): {one_line(str(ex))}"
    if isinstance(ex, ValueError) and _frames_named(ex, ("best_trial", "best_trials", "best_value", "best_params")):
        return ("no trial of the sweep completed, so there is no best trial; each failed trial's error is logged "
                "above and in its run folder's metrics.json")
    return None


# Functions of hydra-optuna-sweeper that parse `hydra.sweeper.params` (a ValueError there is the user's space).
_PARAM_PARSERS = ("create_optuna_distribution_from_override", "create_params_from_overrides",
                  "_parse_sweeper_params_config", "_process_searchspace_config")


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


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Replace Hydra's error reporter while the Hydra main runs."""
    from hydra._internal import utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        if _full_error():
            return original(func)
        try:
            return func()
        except Exception as ex:  # noqa: BLE001 - filtered by describe(); the rest goes to Hydra's reporter
            msg = describe(ex)
            if msg is None:
                return original(functools.partial(_reraise, ex))
            print(f"vit_lab: error: {msg}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def _reraise(ex: BaseException) -> Any:
    raise ex


def cli(main: Callable[[], Any]) -> None:
    """Run a Hydra main with one-line user errors: ``python -m vit_lab.train`` runs ``cli(main)``.

    Pass the decorated function of the module run as ``__main__``: Hydra finds ``config_path="../conf"``
    relative to that file (imported as ``vit_lab.train`` it would look for a Python package ``conf``).
    """
    from vit_lab.data import pin_data_env

    pin_data_env()  # before Hydra starts any job: every launcher and worker inherits the absolute path
    with one_line_errors():
        main()
