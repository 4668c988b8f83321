"""Cells: numbers and config values as short strings for the tables, and values made JSON-safe."""

from __future__ import annotations

import math
from typing import Any


def is_number(x: Any) -> bool:
    """A finite int or float (bools are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nan(x: Any) -> str:
    """A non-finite number reads as nan/inf (a diverged run), anything else missing as an empty cell."""
    return str(x) if isinstance(x, float) and not math.isfinite(x) else ""


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if is_number(x) else _nan(x)


# (below this, divide by, format): the first row whose limit the value is under; the last row takes the rest
_PARAMS = ((1e3, 1, "{:.0f}"), (1e4, 1e3, "{:.1f}k"), (1e6, 1e3, "{:.0f}k"), (math.inf, 1e6, "{:.1f}M"))
_SECONDS = ((60, 1, "{:.1f}s"), (3600, 60, "{:.1f}min"), (math.inf, 3600, "{:.1f}h"))


def _scaled(x: Any, steps: tuple[tuple[float, float, str], ...]) -> str:
    if not is_number(x):
        return ""
    _, divisor, fmt = next(step for step in steps if float(x) < step[0])
    return fmt.format(float(x) / divisor)


def fmt_params(n: Any) -> str:
    """A parameter count: 950, 9.5k, 95k, 1.2M."""
    return _scaled(n, _PARAMS)


def fmt_seconds(s: Any) -> str:
    """A duration: 42.0s, 3.5min, 1.2h."""
    return _scaled(s, _SECONDS)


def fmt_rate(r: Any) -> str:
    return f"{r:,.0f}" if is_number(r) else _nan(r)


def fmt_float(x: Any) -> str:
    return f"{x:.3f}" if is_number(x) else _nan(x)


def fmt_value(v: Any) -> str:
    """A config value as a short cell: null -> '-', lists as [a, b], floats as %g."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def jsonable(v: Any) -> Any:
    """NaN -> null and infinities -> "inf"/"-inf", recursively, so the JSON output is standard JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v
