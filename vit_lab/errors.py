"""User-facing errors, and the exceptions that end a run with a status.

Anything a user can fix (a bad override, missing data, an impossible shape, an absent device) raises a
subclass of :class:`UserError`. The entry points print its message as one line and exit non-zero, so
the message must name the offending value and the fix.
"""

import os
import signal


class UserError(Exception):
    """An error caused by input the user controls; printed as one line, no traceback."""


class ConfigError(UserError, ValueError):
    """An invalid configuration value (also a ValueError, so plain-Python callers can catch it)."""


class ShapeError(ConfigError):
    """A model shape that cannot work, e.g. a patch size that does not divide the image."""


class DataError(UserError):
    """Missing, truncated or corrupt data files."""


class DeviceError(UserError):
    """A requested device that this machine does not have."""


class OutputError(UserError, OSError):
    """A file that cannot be written where asked (a missing or read-only folder, a path under a file, a full disk);
    also an OSError, so callers that tolerate a failed write (a cache) still catch it."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; in the loop, a checkpoint is saved at the step boundary first.

    A BaseException, like KeyboardInterrupt: outside the loop the signal handler raises it wherever the signal lands,
    and a library's ``except Exception`` there (OmegaConf's) would otherwise rebuild or swallow it.
    """

    def __init__(self, signum: int, run_dir: str | os.PathLike | None = None, saved: bool = True) -> None:
        name = signal.Signals(signum).name
        if saved:
            how = f"checkpoint saved; resume with resume={run_dir or '<this run dir>'} (same overrides)"
        else:
            how = "no checkpoint was saved, nothing to resume; run the command again"
        super().__init__(f"interrupted by {name}; {how}")
        self.signum, self.run_dir, self.saved = signum, run_dir, saved

    def __reduce__(self):  # launchers pickle job results: rebuild from the signal, not the message
        return type(self), (self.signum, self.run_dir, self.saved)


class Diverged(UserError):
    """The loss became NaN or infinite: stop instead of burning the rest of the budget."""


class RunDirBusy(UserError):
    """Another live process is writing into this run directory (e.g. two runs started in the same second)."""


class RunStopped(Exception):
    """Raised by an epoch callback to end a run early with a status of its own (e.g. ``pruned``)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status

    def __reduce__(self):
        return type(self), (self.status, str(self))
