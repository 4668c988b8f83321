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
    if isinstance(ex, ValueError) and _frames_under(ex, "hydra_plugins"):  # e.g. a bad hydra.sweeper.params range
        return f"invalid sweep configuration (hydra.sweeper.params): {one_line(str(ex))}"
    return None


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
    with one_line_errors():
        main()
