"""User-facing errors.

Anything a user can fix (a bad override, missing data, an impossible shape, an absent device) raises a
subclass of :class:`UserError`. The entry points print its message as one line and exit non-zero, so
the message must name the offending value and the fix.
"""


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
