"""The two ways compare refuses: bad command-line input and paths without runs (one line each, exit 2)."""


class UsageError(Exception):
    """Bad command-line input (a --where without an operator, an unknown key); one line, exit 2."""


class NoRunsError(Exception):
    """No run directory under the given paths (or a path that does not exist)."""
