"""Small value checks shared by the data modules (config values arrive as plain Python or OmegaConf)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool)


def is_md5(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdefABCDEF" for c in v)


def one_line(text: Any) -> str:
    """Collapse whitespace so an error message stays on one line."""
    return " ".join(str(text).split())


def plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes to a target) -> plain dicts/lists; anything else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def invalid(key: str, value: Any, why: str) -> ConfigError:
    """The one-line error for a bad ``data.<key>`` value."""
    return ConfigError(f"data.{key}={value!r} {why}")
