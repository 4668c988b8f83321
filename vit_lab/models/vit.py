"""The Vision Transformer, vectorised, with the seed tutorial's public names.

`MyViT`, `MyViTBlock`, `MyMSA`, `patchify` and `get_positional_embeddings` keep the names of the seed
("Vision Transformers from Scratch"), but nothing loops in Python over images, patches or heads:
patchify is one reshape, and attention is batched over images and heads (`F.scaled_dot_product_attention`
on accelerators; on the CPU, `cpu_attention`, written for these sizes, since torch's kernels are slow there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vit_lab.errors import ShapeError
from vit_lab.models.common import decay_groups
from vit_lab.models.cpu_attention import cpu_attention
from vit_lab.models.shapes import as_pair, check_vit_shape

__all__ = ["MyMSA", "MyViT", "MyViTBlock", "check_vit_shape", "get_positional_embeddings", "patchify"]


def patchify(images: torch.Tensor, patch_size: int | Sequence[int]) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*ph*pw), patches in row-major grid order, each flattened channel-major.

    This is exactly the tutorial's order: patch (i, j) is token ``i * W/pw + j`` and holds
    ``image[:, i*ph:(i+1)*ph, j*pw:(j+1)*pw].flatten()``.
    """
    ph, pw = as_pair(patch_size)
    b, c, h, w = images.shape
    if h % ph or w % pw:
        raise ShapeError(f"patch size {ph}x{pw} does not divide the image size {h}x{w}; choose a divisor of both")
    x = images.reshape(b, c, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, C, ph, pw)
    return x.reshape(b, (h // ph) * (w // pw), c * ph * pw)


def get_positional_embeddings(sequence_length: int, d: int) -> torch.Tensor:
    """The tutorial's fixed 1-D sinusoidal table: sin(i / 10000^(j/d)) at even j, cos(i / 10000^((j-1)/d)) at odd j."""
    i = torch.arange(sequence_length, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)[None, :]
    even = (j - j % 2) / d  # j for even j, j-1 for odd j
    angle = i / torch.pow(10000.0, even)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


def conv_stem(c: int, d: int, patch: tuple[int, int]) -> nn.Sequential:
    """(B, c, H, W) -> (B, d, H/ph, W/pw): a 3x3 convolution to d/2 channels and GELU, then a convolution with the rest
    of the patch as kernel and stride. The 3x3 one strides 2 where both patch sides are even (a quarter of the
    positions: on the CPU a full-resolution convolution costs more than the transformer at patch 7)."""
    s = 2 if patch[0] % 2 == 0 and patch[1] % 2 == 0 else 1
    width = max(1, d // 2)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, stride=s, padding=1),
        nn.GELU(),
        nn.Conv2d(width, d, (patch[0] // s, patch[1] // s), stride=(patch[0] // s, patch[1] // s)),
    )


def keep_random(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, d) -> (B, k, d): k of each row's N tokens, drawn without replacement, independently per image."""
    idx = torch.rand(tokens.shape[:2], device=tokens.device).argsort(dim=1)[:, :k]
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class MyMSA(nn.Module):
    """Multi-head self-attention, in one of two styles.

    ``style="fused"`` is the standard layout (one qkv projection over the whole width, then an output
    projection). ``style="tutorial"`` is the seed's: head h takes its own d/h slice of each token and
    has its own q, k, v Linear(d/h, d/h); heads are concatenated with no output projection. Both are
    computed for all heads at once.

    ``kernel`` picks how softmax(q k^T / sqrt(dh)) v is computed: ``sdpa`` (PyTorch's fused kernels),
    ``explicit`` (scaled q @ k^T, softmax, @ v: three batched ops), ``cpu`` (`cpu_attention`: forward and
    backward by hand, laid out for MKL, with an exp2 softmax) or ``auto``: sdpa on accelerators; on the CPU, cpu
    in eager mode (torch's flash kernel scales poorly to a second thread at 50 tokens of 4-16 dims, and its
    softmax pays for a slow exp; benchmarks/README.md) and explicit under torch.compile (inductor fuses it).
    ``cpu`` needs fp32 and no attention dropout; otherwise it runs as ``explicit``.
    """

    KERNELS = ("auto", "sdpa", "explicit", "cpu")

    def __init__(
        self, d: int, n_heads: int = 2, style: str = "fused", dropout: float = 0.0, kernel: str = "auto"
    ) -> None:
        super().__init__()
        if n_heads < 1 or d % n_heads:
            raise ShapeError(
                f"n_heads={n_heads} does not divide hidden_d={d}; choose n_heads among the divisors of {d}"
            )
        if style not in ("fused", "tutorial"):
            raise ShapeError(f"attention style {style!r} is unknown; use 'fused' or 'tutorial'")
        if kernel not in self.KERNELS:
            raise ShapeError(f"model.attn_kernel={kernel!r} is unknown; use one of {', '.join(self.KERNELS)}")
        self.d, self.n_heads, self.d_head, self.style, self.dropout = d, n_heads, d // n_heads, style, dropout
        self.kernel, self.scale = kernel, self.d_head**-0.5
        if style == "fused":
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.proj_drop = nn.Dropout(dropout)
        else:
            # per head: q, k, v weights (out, in) and biases; qkv_params() lays them out block-diagonally
            dh = self.d_head
            bound = 1 / math.sqrt(dh)  # nn.Linear's default init
            self.qkv_weight = nn.Parameter(torch.empty(n_heads, 3, dh, dh).uniform_(-bound, bound))
            self.qkv_bias = nn.Parameter(torch.empty(n_heads, 3, dh).uniform_(-bound, bound))

    def qkv_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (3d, d) weight and (3d,) bias of one fused q/k/v projection; rows are [q | k | v], head-major.

        The tutorial style's per-head weights become a block-diagonal matrix (head h reads only its own slice),
        so both styles run one matrix product instead of a batched product over heads: h times the multiply-adds,
        but at the tutorial's 2 heads of 4 dims the einsum's copies cost more (benchmarks/README.md)."""
        if self.style == "fused":
            return self.qkv.weight, self.qkv.bias
        h, dh = self.n_heads, self.d_head
        idx = torch.arange(h, device=self.qkv_weight.device)
        w = self.qkv_weight.new_zeros(h, h, 3, dh, dh)  # (head out, head in, q/k/v, dh out, dh in)
        w[idx, idx] = self.qkv_weight
        return w.permute(2, 0, 3, 1, 4).reshape(3 * self.d, self.d), self.qkv_bias.permute(1, 0, 2).reshape(3 * self.d)

    def forward(self, x: torch.Tensor, n_queries: int | None = None) -> torch.Tensor:
        """(B, N, d) -> (B, N, d); with ``n_queries=q``, only the first q tokens attend (keys and values still
        come from all N tokens) and the result is (B, q, d): exactly those rows of the full output, for less work."""
        b, n, d = x.shape
        h, dh = self.n_heads, self.d_head
        nq = n if n_queries is None else int(n_queries)
        w, bias = self.qkv_params()
        p_drop = self.dropout if self.training else 0.0
        kernel = self.kernel
        if kernel == "auto":
            kernel = "sdpa" if x.device.type != "cpu" else "explicit" if torch.compiler.is_compiling() else "cpu"
        if (
            kernel == "cpu"
            and p_drop == 0
            and x.dtype == torch.float32
            and not torch.is_autocast_enabled(x.device.type)
        ):
            q = F.linear(x if nq == n else x[:, :nq], w[:d], bias[:d])  # (B, nq, d)
            out = cpu_attention(q, F.linear(x, w[d:], bias[d:]), h, self.scale)  # (B, nq, d), heads concatenated
            return self.proj_drop(self.proj(out)) if self.style == "fused" else out
        if nq == n:
            q, k, v = F.linear(x, w, bias).reshape(b, n, 3, h, dh).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, dh)
        else:  # project queries for the first nq tokens only
            q = F.linear(x[:, :nq], w[:d], bias[:d]).reshape(b, nq, h, dh).transpose(1, 2)
            k, v = F.linear(x, w[d:], bias[d:]).reshape(b, n, 2, h, dh).permute(2, 0, 3, 1, 4)
        if kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, nq, N)
            out = F.dropout(attn.softmax(dim=-1), p_drop, training=p_drop > 0) @ v  # (B, h, nq, dh)
        out = out.transpose(1, 2).reshape(b, nq, d)  # concatenate heads
        return self.proj_drop(self.proj(out)) if self.style == "fused" else out

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> softmax(q k^T / sqrt(dh)) of every head, (B, h, N, N), in fp32: the probabilities every
        kernel uses. A side path for inspection (the cpu and sdpa kernels never materialise them): forward()
        does not call it, so training pays nothing for it."""
        b, n, d = x.shape
        w, bias = self.qkv_params()
        q, k = F.linear(x, w[: 2 * d], bias[: 2 * d]).reshape(b, n, 2, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        return ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)


class MyViTBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        hidden_d: int,
        n_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention: str = "fused",
        attn_kernel: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_d)
        self.mhsa = MyMSA(hidden_d, n_heads, style=attention, dropout=dropout, kernel=attn_kernel)
        self.norm2 = nn.LayerNorm(hidden_d)
        hidden = int(round(mlp_ratio * hidden_d))
        self.mlp = nn.Sequential(
            nn.Linear(hidden_d, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden_d),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, n_queries: int | None = None) -> torch.Tensor:
        """(B, N, d) -> (B, N, d); with ``n_queries=q`` only the first q tokens' outputs are computed, (B, q, d)."""
        if n_queries is None:
            x = x + self.mhsa(self.norm1(x))
        else:
            x = x[:, :n_queries] + self.mhsa(self.norm1(x), n_queries)
        return x + self.mlp(self.norm2(x))


class MyViT(nn.Module):
    """ViT classifier for (C, H, W) images. Returns logits, unless ``head_softmax`` recreates the tutorial's bug.

    The tutorial ends its head with a Softmax and then applies CrossEntropyLoss, which softmaxes twice;
    ``head_softmax=True`` keeps that only so its cost can be measured.

    ``stem="conv"`` puts a 3x3 convolution (width hidden_d/2, GELU; `conv_stem`) before the patch embedding, which
    becomes a convolution with the rest of the patch as kernel and stride: the hybrid ViT of Dosovitskiy et al.
    (2021, section 3.1) in its smallest form, the convolutional stem that Xiao et al. (2021) found to make ViTs
    train faster and steadier.

    ``patch_dropout=r`` trains on a random (1-r) share of each image's patch tokens, positioned before they are
    dropped (PatchDropout, Liu et al. 2023): fewer tokens per step for every block; evaluation sees them all. The
    trainer turns it off for the last epochs (``drop_patches``, ``trainer.patch_dropout_epochs``).

    ``distill_token=True`` adds DeiT's distillation token, position and head (Touvron et al. 2021): the model answers
    both heads' mean logits, and in training with ``distilled_training`` set (``set_distilled_training``, which the
    trainer calls when it has a teacher) both logits.
    """

    distilled_training: bool = False
    drop_patches: bool = True  # with patch_dropout > 0: drop in training (the trainer clears it for the last epochs)

    def __init__(
        self,
        chw: Sequence[int] = (1, 28, 28),
        patch_size: int | Sequence[int] = 4,
        depth: int = 2,
        hidden_d: int = 8,
        n_heads: int = 2,
        out_d: int = 10,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention: str = "fused",
        attn_kernel: str = "auto",
        pos_embed: str = "sinusoidal",
        pool: str = "cls",
        head_softmax: bool = False,
        distill_token: bool = False,
        stem: str = "linear",
        patch_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in chw)
        ph, pw = as_pair(patch_size)
        check_vit_shape((c, h, w), (ph, pw), hidden_d, n_heads, depth=depth, mlp_ratio=mlp_ratio)
        if pos_embed not in ("sinusoidal", "learned"):
            raise ShapeError(f"model.pos_embed={pos_embed!r} is unknown; use 'sinusoidal' or 'learned'")
        if pool not in ("cls", "mean"):
            raise ShapeError(f"model.pool={pool!r} is unknown; use 'cls' or 'mean'")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ShapeError(f"model.dropout={dropout!r} must be a number in [0, 1)")
        if isinstance(patch_dropout, bool) or not isinstance(patch_dropout, (int, float)) or not 0 <= patch_dropout < 1:
            raise ShapeError(f"model.patch_dropout={patch_dropout!r} must be a number in [0, 1) (the share dropped)")
        if stem not in ("linear", "conv"):
            raise ShapeError(f"model.stem={stem!r} is unknown; use 'linear' or 'conv'")
        if distill_token and (pool != "cls" or head_softmax):
            raise ShapeError("model.distill_token=true needs model.pool=cls and model.head_softmax=false")
        self.chw, self.patch_size, self.pool, self.head_softmax = (c, h, w), (ph, pw), pool, head_softmax
        self.stem, self.patch_dropout = stem, float(patch_dropout)
        self.n_patches = (h // ph) * (w // pw)
        self.n_prefix = int(pool == "cls") + int(distill_token)  # tokens before the patches: class, distillation
        n_tokens = self.n_patches + self.n_prefix

        if stem == "linear":
            self.linear_mapper = nn.Linear(c * ph * pw, hidden_d)  # the tutorial's patch embedding
        else:
            self.conv_stem = conv_stem(c, hidden_d, (ph, pw))
        self.class_token = nn.Parameter(torch.rand(1, hidden_d)) if pool == "cls" else None
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.randn(n_tokens, hidden_d) * 0.02)
        else:
            self.register_buffer("pos_embed", get_positional_embeddings(n_tokens, hidden_d), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            MyViTBlock(hidden_d, n_heads, mlp_ratio, dropout, attention, attn_kernel) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_d) if pool == "mean" else nn.Identity()
        self.mlp = nn.Linear(hidden_d, out_d)  # the tutorial's classification head
        # created last, and only when asked for: without it the parameters, their keys and the RNG draws are unchanged
        self.dist_token = nn.Parameter(torch.randn(1, hidden_d) * 0.02) if distill_token else None
        self.head_dist = nn.Linear(hidden_d, out_d) if distill_token else None

    def param_groups(self, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups: weight matrices decay; norms, biases, positions and the class and
        distillation tokens do not."""
        return decay_groups(self, weight_decay, no_decay=("pos_embed", "class_token", "dist_token"))

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training forwards return (class logits, distillation logits) for a distillation loss (timm's name)."""
        self.distilled_training = enable and self.head_dist is not None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the first block's input (B, n_prefix + N, d): [class, distillation,] patches, positioned."""
        if self.stem == "linear":
            tokens = self.linear_mapper(patchify(images, self.patch_size))  # (B, N, d)
        else:  # the convolution's (B, d, H/ph, W/pw) grid, read in patchify's row-major order
            tokens = self.conv_stem(images).flatten(2).transpose(1, 2)
        tokens = tokens + self.pos_embed[self.n_prefix :]
        if self.training and self.drop_patches and self.patch_dropout > 0:
            tokens = keep_random(tokens, max(1, round(self.n_patches * (1 - self.patch_dropout))))
        prefix: list[torch.Tensor] = [t for t in (self.class_token, self.dist_token) if t is not None]
        if prefix:
            prefix_tokens = torch.cat(prefix) + self.pos_embed[: self.n_prefix]
            tokens = torch.cat([prefix_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.drop(tokens)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last block's output -> the class head's logits and the distillation head's (None without one)."""
        logits = self.mlp(x[:, 0] if self.pool == "cls" else self.norm(x.mean(dim=1)))
        return logits, None if self.head_dist is None else self.head_dist(x[:, 1])

    def predict(self, logits: torch.Tensor, dist: torch.Tensor | None) -> torch.Tensor:
        """What the model answers: DeiT's mean of both heads' logits, else the logits (the tutorial: softmaxed)."""
        if dist is not None:
            return (logits + dist) / 2
        return logits.softmax(dim=-1) if self.head_softmax else logits

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.chw:  # not a broadcast error from deep inside torch
            raise ShapeError(
                f"MyViT built for (C,H,W)={self.chw} got images of shape {tuple(images.shape)}; "
                "match data.channels/data.image_size to the model"
            )
        x = self.embed(images)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            # cls pooling reads only the class (and distillation) token: the last block computes just those rows (its
            # keys and values still span all tokens), which gives the same logits and gradients for less work
            x = block(x, self.n_prefix) if i == last and self.pool == "cls" else block(x)
        logits, dist = self.heads(x)
        if dist is not None and self.training and self.distilled_training:
            return logits, dist  # the distillation loss trains each head on its own target
        return self.predict(logits, dist)

    def forward_with_attention(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """forward()'s output and each block's attention probabilities, (B, h, N, N) per block (tokens before
        ``n_prefix`` are the class and distillation tokens). Every block computes every token here (no last-block
        shortcut); a side path for inspection, which forward() and training never take."""
        x = self.embed(images)
        maps = []
        for block in cast("list[MyViTBlock]", self.blocks):  # nn.ModuleList is not generic: its items type as Module
            maps.append(block.mhsa.attention_probs(block.norm1(x)))
            x = block(x)
        return self.predict(*self.heads(x)), maps
