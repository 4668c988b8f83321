"""Atomic file writes: a reader (or a SIGKILL) never sees a half-written file."""

from __future__ import annotations

import atexit
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vit_lab.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write through ``write(fileobj)`` into a temp file in the same folder, fsync, then rename over ``path``.
    A path that cannot be written raises OutputError (one line for the entry points), the old file left as it was."""
    path = Path(path)
    try:
        return _atomic_write(path, write, mode)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        blocker = next((a for a in path.parents if a.exists()), None)
        why = e.strerror or type(e).__name__
        if blocker is not None and not blocker.is_dir():
            why = f"{blocker} is a file, not a folder"
        raise OutputError(f"cannot write {path} ({why}); choose a path in a folder you can write to") from e


def save_png(fig: Any, out: str | os.PathLike, dpi: int = 100) -> Path:
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=dpi, format="png"), mode="wb")
    finally:
        plt.close(fig)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


_HELD: dict[Path, Any] = {}  # this process's locks


@atexit.register
def _release_all() -> None:
    """Close locks still held at exit (the OS would drop them, with a ResourceWarning)."""
    for path in list(_HELD):
        release_dir(path)


def claim_dir(path: str | os.PathLike, note: str = "") -> str | None:
    """Take this process's exclusive lock on ``path/.lock`` (held until :func:`release_dir` or exit).

    Returns None when the lock is ours, else what the lock file says about its holder ("pid N on host" + its
    ``note``) when another live process holds it. Where ``fcntl`` is missing (Windows) it always returns None.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = Path(path)
    if path in _HELD:
        return None
    f = open(path / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return holder
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}{note}\n")
    f.flush()
    _HELD[path] = f
    return None


def dir_is_held(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``path`` (taken by :func:`claim_dir`)."""
    return Path(path) in _HELD


def release_dir(path: str | os.PathLike) -> None:
    """Release a lock taken by :func:`claim_dir` (closing the file releases it)."""
    f = _HELD.pop(Path(path), None)
    if f is not None:
        f.close()
