"""Property-based tests (hypothesis): patchify and the ViT over random shapes, the IDX reader over random corruptions.

Valid shapes must work and round-trip; invalid ones must raise the lab's one-line ShapeError, never an error
from deep inside torch. A corrupted IDX file must be a one-line DataError or exactly the original data.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vit_lab.data import IDXDataset, read_idx
from vit_lab.errors import DataError, ShapeError
from vit_lab.models import MyViT, patchify
from vit_lab.models.vit import check_vit_shape

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def unpatchify(tokens: torch.Tensor, chw: tuple[int, int, int], ph: int, pw: int) -> torch.Tensor:
    """The inverse of patchify: (B, N, C*ph*pw) -> (B, C, H, W)."""
    c, h, w = chw
    b = tokens.shape[0]
    x = tokens.reshape(b, h // ph, w // pw, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


# ------------------------------------------------------------------------------------------------ patchify


@st.composite
def patch_shapes(draw):
    c = draw(st.integers(1, 4))
    ph, pw = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    nh, nw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    square = draw(st.booleans())
    if square:
        pw = ph
    return c, nh * ph, nw * pw, (ph if square else (ph, pw)), ph, pw


@SETTINGS
@given(patch_shapes(), st.integers(1, 3))
def test_patchify_round_trip(shape, b):
    c, h, w, patch, ph, pw = shape
    x = torch.randn(b, c, h, w)
    tokens = patchify(x, patch)
    assert tokens.shape == (b, (h // ph) * (w // pw), c * ph * pw)
    assert torch.equal(unpatchify(tokens, (c, h, w), ph, pw), x)
    # token i * (W/pw) + j is patch (i, j), flattened channel-major: the tutorial's order
    i, j = (h // ph) - 1, 0
    assert torch.equal(
        tokens[:, i * (w // pw) + j], x[:, :, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].reshape(b, -1)
    )


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 30), st.integers(1, 30), st.integers(1, 12), st.integers(1, 12))
def test_patchify_non_divisor_is_a_shape_error(c, h, w, ph, pw):
    assume(h % ph or w % pw)
    with pytest.raises(ShapeError) as e:
        patchify(torch.zeros(1, c, h, w), (ph, pw))
    assert "\n" not in str(e.value) and f"{h}x{w}" in str(e.value)


# ------------------------------------------------------------------------------------------------ the model

MODEL_OPTIONS = dict(
    attention=st.sampled_from(["fused", "tutorial"]),
    pool=st.sampled_from(["cls", "mean"]),
    pos_embed=st.sampled_from(["learned", "sinusoidal"]),
)


@st.composite
def valid_vits(draw):
    c, h, w, patch, ph, pw = draw(patch_shapes())
    heads = draw(st.integers(1, 4))
    width = heads * draw(st.integers(1, 4))
    return dict(
        chw=(c, h, w),
        patch_size=patch,
        hidden_d=width,
        n_heads=heads,
        depth=draw(st.integers(1, 2)),
        out_d=draw(st.integers(1, 11)),
        mlp_ratio=draw(st.sampled_from([1.0, 1.5, 2.0])),
        **{k: draw(v) for k, v in MODEL_OPTIONS.items()},
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # the slowest property
@given(valid_vits(), st.integers(1, 3))
def test_valid_vit_shapes_work(kwargs, b):
    torch.manual_seed(0)
    model = MyViT(**kwargs)
    x = torch.randn(b, *kwargs["chw"])
    out = model(x)
    assert out.shape == (b, kwargs["out_d"]) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(1, 16),
    st.integers(1, 16),
    st.integers(-1, 9),
    st.integers(-1, 9),
    st.integers(-2, 12),
    st.integers(-1, 6),
    st.integers(-1, 2),
    st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
)
def test_any_vit_shape_builds_or_raises_shape_error(c, h, w, ph, pw, width, heads, depth, mlp_ratio):
    """Random, mostly invalid combinations: a ShapeError naming a model key, or a model that runs."""
    kwargs = dict(chw=(c, h, w), patch_size=(ph, pw), hidden_d=width, n_heads=heads, depth=depth, mlp_ratio=mlp_ratio)
    try:
        check_vit_shape((c, h, w), (ph, pw), width, heads, depth, mlp_ratio)
    except ShapeError as e:
        assert "\n" not in str(e) and "model." in str(e)
        with pytest.raises(ShapeError):
            MyViT(**kwargs)
        return
    assert ph >= 1 and pw >= 1 and h % ph == 0 and w % pw == 0 and width % heads == 0 and depth >= 1
    assert mlp_ratio > 0 and round(mlp_ratio * width) >= 1
    assert MyViT(**kwargs)(torch.randn(2, c, h, w)).shape == (2, 10)


@SETTINGS
@given(valid_vits(), st.integers(0, 2), st.integers(-2, 4))
def test_wrong_input_shape_is_a_shape_error(kwargs, axis, delta):
    """Images that do not match the model's (C, H, W) fail with a clear ShapeError, not a torch broadcast error."""
    chw = list(kwargs["chw"])
    chw[axis] += delta
    assume(delta != 0 and chw[axis] >= 1)
    model = MyViT(**kwargs)
    with pytest.raises(ShapeError) as e:
        model(torch.randn(2, *chw))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ IDX reader


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


arrays = st.lists(st.integers(0, 5), min_size=1, max_size=4).flatmap(
    lambda dims: st.binary(min_size=int(np.prod(dims)), max_size=int(np.prod(dims))).map(
        lambda b: np.frombuffer(b, dtype=np.uint8).reshape(dims)
    )
)


@st.composite
def corruptions(draw, content: bytes):
    """One random corruption of ``content``: truncate, append, insert, delete, overwrite or replace bytes."""
    kind = draw(st.sampled_from(["truncate", "append", "insert", "delete", "overwrite", "replace"]))
    n = len(content)
    if kind == "truncate":
        return kind, content[: draw(st.integers(0, n - 1))]
    if kind == "append":
        return kind, content + draw(st.binary(min_size=1, max_size=16))
    if kind == "replace":
        return kind, draw(st.binary(max_size=64))
    i = draw(st.integers(0, n - 1))
    if kind == "insert":
        return kind, content[:i] + draw(st.binary(min_size=1, max_size=8)) + content[i:]
    if kind == "delete":
        return kind, content[:i] + content[i + draw(st.integers(1, 8)) :]
    new = draw(st.binary(min_size=1, max_size=4))
    return kind, content[:i] + new + content[i + len(new) :]


def _write(content: bytes) -> Path:
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".idx")
    f.write(content)
    f.close()
    return Path(f.name)


@SETTINGS
@given(arrays, st.booleans(), st.data())
def test_corrupted_idx_is_a_data_error_or_the_exact_data(arr, gz, data):
    good = idx_bytes(arr)
    content = gzip.compress(good, mtime=0) if gz else good
    kind, bad = data.draw(corruptions(content))
    assume(bad != content)
    path = _write(bad)
    try:
        # 1. the plain reader: any exception is a one-line DataError
        try:
            t = read_idx(path)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            # gzip has a CRC; a raw file's size is checked against its header. Only a same-length change of a raw
            # file can still parse (IDX has no checksum): that is what data.md5 is for, checked below.
            if gz or kind in ("truncate", "append"):
                assert t.shape == arr.shape and np.array_equal(t.numpy(), arr), kind
        # 2. the dataset's reader, with the md5 of the good content (as conf/data/*.yaml has): error or exact data
        spec = IDXDataset(
            name="t",
            root=None,
            subdir="",
            files={},
            md5={"train_images": hashlib.md5(good).hexdigest()},
            channels=1,
            image_size=[1, 1],
            num_classes=10,
            mean=[0.0],
            std=[1.0],
        )
        try:
            t = spec._read("train_images", path)
        except DataError as e:
            assert "\n" not in str(e)
        else:
            assert t.shape == arr.shape and np.array_equal(t.numpy(), arr), kind
    finally:
        path.unlink()


@SETTINGS
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_never_crash_the_reader(blob, gz):
    path = _write(gzip.compress(blob, mtime=0) if gz else blob)
    try:
        t = read_idx(path)
    except DataError as e:
        assert "\n" not in str(e)
    else:  # random bytes that happen to be a valid IDX file: the header describes exactly the payload
        raw = blob
        ndim = raw[3]
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        assert tuple(t.shape) == dims and t.numpy().tobytes() == raw[4 + 4 * ndim :]
    finally:
        path.unlink()
