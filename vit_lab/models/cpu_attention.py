"""softmax(q k^T * scale) v for the CPU, forward and backward by hand, for ViT-sized heads (4-16 dims, ~50 tokens).

Two costs of torch's CPU kernels at these shapes decide its form (measured in benchmarks/README.md, "What was
optimised"):

- ``exp`` (and so ``softmax``) is much slower than ``exp2`` on the CPU build measured, so the softmax here is
  ``exp2(s * log2 e)``, normalised: the same function (to ~1e-7). Unshifted, it is exact while row sums stay in
  [2^-60, 2^64]; a batch beyond that subtracts each (image, head) block's maximum (a block-wise ``amax`` is far
  cheaper than a row-wise one), and a row ~60 binary orders below its block's maximum sends the batch to
  ``torch.softmax``.
- MKL's batched GEMM is faster when a narrow head dimension indexes the *rows* of the product's output ((dh, N)
  instead of (N, dh)), and slower from 16 on, so products whose output has a head-dim side are computed
  transposed for head dims below 16.

Inputs are the projections' outputs, token-major as ``F.linear`` writes them; the gradients come back in that
layout, so autograd adds no permute/stack copies around the kernel.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

_LOG2E = 1.0 / math.log(2.0)
_TINY, _HUGE = 2.0**-60, 2.0**64  # softmax2 needs every row sum of exp2(logits) in this range
_TRANSPOSE_BELOW = 16  # head dims below this compute products with a head-dim side transposed (see above)


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    """(B, N, h*dh) -> (B*h, N, dh), contiguous: the one copy per input."""
    b, n, d = t.shape
    return t.reshape(b, n, h, d // h).transpose(1, 2).reshape(b * h, n, d // h)


def _tokens(t: torch.Tensor, b: int, h: int, transposed: bool) -> torch.Tensor:
    """(B*h, N, dh), or (B*h, dh, N) if ``transposed`` -> (B, N, h*dh), contiguous (heads concatenated per token)."""
    if transposed:
        _, dh, n = t.shape
        return t.view(b, h, dh, n).permute(0, 3, 1, 2).contiguous().view(b, n, h * dh)
    _, n, dh = t.shape
    return t.view(b, h, n, dh).transpose(1, 2).contiguous().view(b, n, h * dh)


def _mm(a: torch.Tensor, b: torch.Tensor, transposed: bool, alpha: float = 1.0) -> torch.Tensor:
    """alpha * a @ b, computed as (b^T @ a^T) and returned in that (transposed) layout if ``transposed``."""
    if transposed:
        a, b = b.transpose(1, 2), a.transpose(1, 2)
    return torch.baddbmm(a.new_empty(()), a, b, beta=0.0, alpha=alpha) if alpha != 1.0 else torch.bmm(a, b)


def _sums_in_range(z: torch.Tensor) -> bool:
    lo, hi = torch.aminmax(z)
    return bool((lo >= _TINY) & (hi <= _HUGE))  # false for inf and nan too


def softmax2(s: torch.Tensor) -> torch.Tensor:
    """softmax(s * ln 2) over the last dim of a contiguous (G, R, C) tensor: ``s`` holds logits in base-2 units.

    No maximum is subtracted: exp2 of the raw logits is exact while every row sum stays within [2^-60, 2^64]
    (base-2 logits of about -60 to +64), which spares a block maximum and a subtraction over the whole map.
    Beyond that, each (image, head) block's maximum is subtracted; beyond that too, torch's exact softmax."""
    p = torch.exp2(s)
    z = p.sum(-1, keepdim=True)
    if not _sums_in_range(z):
        p = torch.sub(s, s.amax(dim=(1, 2), keepdim=True)).exp2_()  # every exponent <= 0 now
        z = p.sum(-1, keepdim=True)
        if not _sums_in_range(z):  # a row far below its block's maximum, or inf/nan: torch's exact path
            return torch.softmax(s * math.log(2.0), dim=-1)
    return p.mul_(z.reciprocal_())


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, kv: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
        b, nq, d = q.shape
        n = kv.shape[1]
        h = n_heads
        qh = _heads(q, h)  # (Bh, nq, dh)
        kh = _heads(kv[..., :d], h)  # (Bh, N, dh)
        vh = _heads(kv[..., d:], h)
        # logits in base-2 units: softmax(x) = softmax2(x * log2 e), and the factor rides on the product
        s = _mm(qh, kh.transpose(1, 2), False, alpha=scale * _LOG2E)  # (Bh, nq, N)
        p = softmax2(s)
        t = kh.shape[-1] < _TRANSPOSE_BELOW
        out = _mm(p, vh, t)  # (Bh, nq, dh), or its transpose
        ctx.save_for_backward(qh, kh, vh, p)
        ctx.shape, ctx.scale = (b, nq, n, d, h), scale
        return _tokens(out, b, h, t)  # (B, nq, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qh, kh, vh, p = ctx.saved_tensors
        b, nq, n, d, h = ctx.shape
        t = kh.shape[-1] < _TRANSPOSE_BELOW
        g = _heads(grad, h)  # (Bh, nq, dh)
        dp = _mm(g, vh.transpose(1, 2), False)  # (Bh, nq, N)
        dv = _mm(p.transpose(1, 2), g, t)  # (Bh, N, dh), or its transpose
        # d loss / d logits = p * (dp - sum(dp * p)), (Bh, nq, N); in place over dp, which is not needed again
        ds = dp.mul_(p)
        ds.addcmul_(p, ds.sum(-1, keepdim=True), value=-1.0)
        dq = _mm(ds, kh, t, alpha=ctx.scale)
        dk = _mm(ds.transpose(1, 2), qh, t, alpha=ctx.scale)
        dkv = grad.new_empty(b, n, 2 * d)
        dkv[..., :d] = _tokens(dk, b, h, t)
        dkv[..., d:] = _tokens(dv, b, h, t)
        return _tokens(dq, b, h, t), dkv, None, None


def cpu_attention(q: torch.Tensor, kv: torch.Tensor, n_heads: int, scale: float) -> torch.Tensor:
    """q (B, nq, d), kv (B, N, 2d) = [k | v], heads interleaved as d = h*dh -> (B, nq, d), heads concatenated."""
    return _Attention.apply(q, kv, n_heads, scale)
