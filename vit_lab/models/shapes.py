"""The checks a ViT's shape must pass before it is built (shared by the model, the sweeps and the tests): each
failure names the value and the fix."""

from __future__ import annotations

from collections.abc import Sequence

from vit_lab.errors import ShapeError


def check_vit_shape(
    chw: Sequence[int],
    patch_size: int | Sequence[int],
    hidden_d: int,
    n_heads: int,
    depth: int = 1,
    mlp_ratio: float = 4.0,
) -> None:
    """Raise ShapeError, naming the values and the fix, for any combination that cannot build a ViT."""
    c, h, w = (int(v) for v in chw)
    sizes = list(patch_size) if isinstance(patch_size, Sequence) else [patch_size]
    for name, value, ints in (
        ("model.patch_size", patch_size, sizes),
        ("model.depth", depth, [depth]),
        ("model.hidden_d", hidden_d, [hidden_d]),
        ("model.n_heads", n_heads, [n_heads]),
    ):
        if not ints or any(isinstance(v, bool) or not isinstance(v, int) for v in ints):
            raise ShapeError(f"{name}={value!r} must be an integer")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
        raise ShapeError(f"model.mlp_ratio={mlp_ratio!r} must be a number")
    ph, pw = as_pair(patch_size)
    for name, value in (
        ("model.patch_size", min(ph, pw)),
        ("model.hidden_d", hidden_d),
        ("model.n_heads", n_heads),
        ("model.depth", depth),
    ):
        if value < 1:
            raise ShapeError(f"{name}={value} must be a positive integer")
    if mlp_ratio <= 0:
        raise ShapeError(f"model.mlp_ratio={mlp_ratio} must be > 0")
    if int(round(mlp_ratio * hidden_d)) < 1:
        raise ShapeError(
            f"model.mlp_ratio={mlp_ratio} with model.hidden_d={hidden_d} leaves the MLP no hidden units; "
            "raise model.mlp_ratio"
        )
    if h % ph or w % pw:
        divisors = sorted(set(_divisors(h)) & set(_divisors(w)))
        raise ShapeError(f"model.patch_size={_fmt(ph, pw)} does not divide the {h}x{w} image; use one of {divisors}")
    if hidden_d % n_heads:
        raise ShapeError(
            f"model.n_heads={n_heads} does not divide model.hidden_d={hidden_d}; use n_heads in {_divisors(hidden_d)}"
        )


def as_pair(p: int | Sequence[int]) -> tuple[int, int]:
    """A patch size as (height, width): 4 -> (4, 4), [4] -> (4, 4), [4, 2] -> (4, 2)."""
    if isinstance(p, int):
        return p, p
    p = tuple(int(v) for v in p)
    return (p[0], p[0]) if len(p) == 1 else (p[0], p[1])


def _fmt(ph: int, pw: int) -> str:
    return str(ph) if ph == pw else f"[{ph},{pw}]"


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]
