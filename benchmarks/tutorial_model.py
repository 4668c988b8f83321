"""The seed tutorial's ViT, loops and all: the baseline the throughput benchmark measures vit_lab against.

Written from the description in ``shared/notes/reference.md`` (section 1), not copied:

- patchify loops in Python over images and over the grid of patches, flattening each patch channel-major;
- the patch embedding is ``Linear(C*ph*pw, hidden_d)``; a learned class token (``torch.rand``) is prepended;
- positions are the fixed 1-D sinusoidal table (a buffer);
- blocks are pre-norm, ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` with MLP = Linear, GELU, Linear;
- attention loops over sequences and heads; head ``h`` takes its own ``d/h`` slice of each token and has its
  own q, k, v ``Linear(d/h, d/h)``; heads are concatenated, with no output projection;
- the head is ``Linear(hidden_d, out_d)`` followed by ``Softmax`` (the double-softmax bug when fed to
  CrossEntropyLoss).

``copy_into_vit_lab`` copies the weights into a ``vit_lab.models.MyViT(attention="tutorial",
pos_embed="sinusoidal", pool="cls", head_softmax=True)`` so the two can be checked against each other.
"""

from __future__ import annotations

import torch
from torch import nn


def loop_patchify(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C*ph*pw), one image and one patch at a time."""
    n, c, h, w = images.shape
    rows, cols = h // ph, w // pw
    patches = torch.zeros(n, rows * cols, c * ph * pw, device=images.device, dtype=images.dtype)
    for idx, image in enumerate(images):
        for i in range(rows):
            for j in range(cols):
                patches[idx, i * cols + j] = image[:, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw].flatten()
    return patches


def sinusoidal_table(sequence_length: int, d: int) -> torch.Tensor:
    """sin(i / 10000^(j/d)) at even j, cos(i / 10000^((j-1)/d)) at odd j, filled entry by entry as in the tutorial."""
    table = torch.ones(sequence_length, d)
    for i in range(sequence_length):
        for j in range(d):
            table[i, j] = (
                torch.sin(torch.tensor(i / 10000 ** (j / d)))
                if j % 2 == 0
                else torch.cos(torch.tensor(i / 10000 ** ((j - 1) / d)))
            )
    return table


class LoopMSA(nn.Module):
    """Per-head q, k, v Linear(d/h, d/h) on the head's own slice; loops over sequences and heads."""

    def __init__(self, d: int, n_heads: int = 2) -> None:
        super().__init__()
        assert d % n_heads == 0, f"n_heads={n_heads} must divide d={d}"
        self.d, self.n_heads, self.d_head = d, n_heads, d // n_heads
        self.q_mappings = nn.ModuleList(nn.Linear(self.d_head, self.d_head) for _ in range(n_heads))
        self.k_mappings = nn.ModuleList(nn.Linear(self.d_head, self.d_head) for _ in range(n_heads))
        self.v_mappings = nn.ModuleList(nn.Linear(self.d_head, self.d_head) for _ in range(n_heads))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        dh = self.d_head
        result = []
        for sequence in sequences:
            seq_result = []
            for head in range(self.n_heads):
                seq = sequence[:, head * dh : (head + 1) * dh]
                q, k, v = self.q_mappings[head](seq), self.k_mappings[head](seq), self.v_mappings[head](seq)
                attention = self.softmax(q @ k.T / dh**0.5)
                seq_result.append(attention @ v)
            result.append(torch.hstack(seq_result))
        return torch.cat([torch.unsqueeze(r, dim=0) for r in result])


class LoopViTBlock(nn.Module):
    def __init__(self, hidden_d: int, n_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_d)
        self.mhsa = LoopMSA(hidden_d, n_heads)
        self.norm2 = nn.LayerNorm(hidden_d)
        hidden = int(round(mlp_ratio * hidden_d))
        self.mlp = nn.Sequential(nn.Linear(hidden_d, hidden), nn.GELU(), nn.Linear(hidden, hidden_d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.mhsa(self.norm1(x))
        return out + self.mlp(self.norm2(out))


class TutorialViT(nn.Module):
    """``TutorialViT((1, 28, 28), n_patches=7, n_blocks=2, hidden_d=8, n_heads=2, out_d=10)``: 1,642 parameters."""

    positional_embeddings: torch.Tensor  # a buffer: register_buffer() sets it

    def __init__(
        self,
        chw=(1, 28, 28),
        n_patches: int = 7,
        n_blocks: int = 2,
        hidden_d: int = 8,
        n_heads: int = 2,
        out_d: int = 10,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        c, h, w = chw
        assert h % n_patches == 0 and w % n_patches == 0, "n_patches must divide the image size"
        self.chw, self.n_patches, self.n_blocks, self.n_heads = (c, h, w), n_patches, n_blocks, n_heads
        self.patch_size = (h // n_patches, w // n_patches)
        self.input_d = c * self.patch_size[0] * self.patch_size[1]
        self.linear_mapper = nn.Linear(self.input_d, hidden_d)
        self.class_token = nn.Parameter(torch.rand(1, hidden_d))
        self.register_buffer("positional_embeddings", sinusoidal_table(n_patches**2 + 1, hidden_d), persistent=False)
        self.blocks = nn.ModuleList(LoopViTBlock(hidden_d, n_heads, mlp_ratio) for _ in range(n_blocks))
        self.mlp = nn.Sequential(nn.Linear(hidden_d, out_d), nn.Softmax(dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        patches = loop_patchify(images, *self.patch_size)
        tokens = self.linear_mapper(patches)
        tokens = torch.cat((self.class_token.expand(n, 1, -1), tokens), dim=1)
        out = tokens + self.positional_embeddings.repeat(n, 1, 1)
        for block in self.blocks:
            out = block(out)
        return self.mlp(out[:, 0])


def from_size(size: dict, chw=(1, 28, 28), classes: int = 10) -> TutorialViT:
    """The loop model at a benchmark size (patch, width, depth, heads, mlp_ratio)."""
    return TutorialViT(
        chw,
        out_d=classes,
        n_patches=chw[1] // size["patch"],
        n_blocks=size["depth"],
        hidden_d=size["width"],
        n_heads=size["heads"],
        mlp_ratio=size["mlp_ratio"],
    )


@torch.no_grad()
def copy_into_vit_lab(tutorial: TutorialViT, model: nn.Module) -> nn.Module:
    """Copy the loop model's weights into a tutorial-style ``MyViT`` (attention="tutorial", head_softmax=True)."""
    theirs = tutorial.state_dict()
    same = ("linear_mapper.weight", "linear_mapper.bias", "class_token")
    mine = {k: theirs[k] for k in same} | {"mlp.weight": theirs["mlp.0.weight"], "mlp.bias": theirs["mlp.0.bias"]}
    for b in range(tutorial.n_blocks):
        p = f"blocks.{b}."
        mine |= {p + k: theirs[p + k] for k in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")}
        mine |= {f"{p}mlp.{i}.{k}": theirs[f"{p}mlp.{j}.{k}"] for i, j in ((0, 0), (3, 2)) for k in ("weight", "bias")}
        for k in ("weight", "bias"):  # (heads, q/k/v, ...): head h's own q, k and v Linear
            per_head = [[theirs[f"{p}mhsa.{m}_mappings.{h}.{k}"] for m in "qkv"] for h in range(tutorial.n_heads)]
            mine[f"{p}mhsa.qkv_{k}"] = torch.stack([torch.stack(qkv) for qkv in per_head])
    model.load_state_dict(mine)  # strict: every parameter of the ViT gets a tutorial weight
    return model
