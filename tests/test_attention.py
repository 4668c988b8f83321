"""The attention side path (MyMSA.attention_probs, MyViT.forward_with_attention), rollout, masking, the deletion
test and `python -m vit_lab.attention` figures."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pytest
import torch
import torch.nn.functional as F
from conftest import run_module
from fake_runs import CNN, fake_run

from vit_lab.attention import attention_maps, mask_patches, rollout, to_pixels, token_attention
from vit_lab.models.vit import MyMSA, MyViT

STYLES = ("fused", "tutorial")
KERNELS = ("explicit", "cpu", "sdpa")


def vit(style: str = "fused", kernel: str = "explicit", pool: str = "cls", **kw) -> MyViT:
    torch.manual_seed(0)
    return MyViT(
        (1, 28, 28), patch_size=7, depth=3, hidden_d=16, n_heads=4, attention=style, attn_kernel=kernel, pool=pool, **kw
    ).eval()


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_probabilities_are_the_kernels_softmax(style, kernel):
    """probs @ v (then the output projection) reproduces MyMSA's output under every kernel: the side path computes
    the probabilities each kernel uses without materialising them."""
    torch.manual_seed(1)
    msa = MyMSA(16, 4, style=style, kernel=kernel).eval()
    x = torch.randn(5, 17, 16) * 3
    probs = msa.attention_probs(x)
    assert probs.shape == (5, 4, 17, 17)
    assert torch.allclose(probs.sum(-1), torch.ones(5, 4, 17), atol=1e-6)
    w, b = msa.qkv_params()
    v = F.linear(x, w[32:], b[32:]).reshape(5, 17, 4, 4).transpose(1, 2)  # (B, h, N, dh)
    out = (probs @ v).transpose(1, 2).reshape(5, 17, 16)
    if style == "fused":
        out = msa.proj(out)
    with torch.no_grad():
        assert torch.allclose(out, msa(x), atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("pool", ("cls", "mean"))
def test_forward_with_attention_matches_forward(style, pool):
    model = vit(style, "cpu", pool)
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        logits, maps = attention_maps(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5)  # forward() skips all but the class row of the last block
    n = 16 + (pool == "cls")
    assert maps.shape == (6, 3, 4, n, n)
    assert torch.allclose(maps.sum(-1), torch.ones(6, 3, 4, n), atol=1e-6)
    tok = token_attention(maps, pool)
    assert tok.shape == (6, 3, 4, 16)
    expected = maps[..., 0, 1:] if pool == "cls" else maps.mean(-2)
    assert torch.equal(tok, expected)


def test_training_never_takes_the_side_path(monkeypatch):
    def refuse(self, x):
        raise AssertionError("attention_probs called during training")

    monkeypatch.setattr(MyMSA, "attention_probs", refuse)
    model = vit(kernel="auto").train()
    loss = F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    with pytest.raises(AssertionError, match="attention_probs"):
        model.forward_with_attention(torch.randn(1, 1, 28, 28))


def _rollout_by_hand(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """Abnar and Zuidema's recipe written out per image and layer, in float64."""
    out = []
    for img in maps.double():
        r = None
        for layer in img:
            a = layer.mean(0) + torch.eye(layer.shape[-1], dtype=torch.float64)
            a = a / a.sum(-1, keepdim=True)
            r = a if r is None else a @ r
        row = r[0, 1:] if pool == "cls" else r.mean(0)
        out.append(row / row.sum())
    return torch.stack(out)


@pytest.mark.parametrize("pool", ("cls", "mean"))
def test_rollout(pool):
    model = vit(pool=pool)
    with torch.no_grad():
        _, maps = attention_maps(model, torch.randn(3, 1, 28, 28))
    r = rollout(maps, pool)
    assert r.shape == (3, 16) and torch.allclose(r.sum(-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(r.double(), _rollout_by_hand(maps, pool), atol=1e-6)
    grid = to_pixels(model, r)
    assert grid.shape == (3, 28, 28)
    assert torch.equal(grid[:, ::7, ::7].reshape(3, 16), r)  # the (H/p)x(W/p) grid, each patch over its 7x7 pixels
    uniform = torch.full((1, 2, 4, 17, 17), 1 / 17) if pool == "cls" else torch.full((1, 2, 4, 16, 16), 1 / 16)
    assert torch.allclose(rollout(uniform, pool), torch.full((1, 16), 1 / 16))


def test_mask_patches_masks_exactly_the_chosen_patches():
    model = vit()
    x = torch.randn(2, 1, 28, 28)
    masked = mask_patches(model, x, torch.tensor([[0, 5], [15, 3]]), torch.tensor([-9.0]))
    changed = (masked != x)[:, 0]
    assert changed.sum().item() == 4 * 49
    assert changed[0, :7, :7].all() and changed[0, 7:14, 7:14].all()  # patch 5 is row 1, column 1
    assert changed[1, 21:, 21:].all() and changed[1, :7, 21:].all()
    assert (masked[changed.unsqueeze(1)] == -9).all()


def test_cli_figures_and_deletion(tmp_path):
    run, _ = fake_run(tmp_path / "vit", "model.depth=2", "model.n_heads=2")
    for args, name, size in (
        ([], "attention.png", (1280, 225)),
        (["--layers"], "attention_layers.png", None),
        (["--heads"], "attention_heads.png", None),
    ):
        proc = run_module("vit_lab.attention", str(run), "--images", "8", *args)
        assert proc.returncode == 0, proc.stderr
        img = mpimg.imread(run / name)
        assert img[..., :3].std() > 0.05  # something drawn
        if size:
            assert (img.shape[1], img.shape[0]) == size
    proc = run_module("vit_lab.attention", str(run), "--deletion", "40", "--fraction", "0.25", "--draws", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((run / "deletion.json").read_text())
    assert doc["n"] == 40 and doc["patches_masked"] == 4 and doc["patches"] == 16
    for key in ("prob_true_original", "prob_true_top_masked", "prob_true_random_masked", "share_top_lower"):
        assert 0 <= doc[key] <= 1
    assert doc["drop_top"] == pytest.approx(doc["prob_true_original"] - doc["prob_true_top_masked"], abs=1e-6)
    assert "top rollout" in proc.stdout


def test_cli_errors_are_one_line(tmp_path):
    cnn, _ = fake_run(tmp_path / "cnn", base=CNN)
    proc = run_module("vit_lab.attention", str(cnn))
    assert proc.returncode == 2 and "need a ViT run" in proc.stderr and "SimpleCNN" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = run_module("vit_lab.attention", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_ink_share_of_uniform_attention_is_the_share_of_ink_patches(tmp_path):
    """With the query projection zeroed every logit is equal: attention is uniform, so each head, layer and the
    rollout put exactly the share of patches that hold ink on ink."""
    from vit_lab.attention import ink_attention
    from vit_lab.evaluate import load

    run = load(fake_run(tmp_path / "vit", "model.depth=2", "model.n_heads=2")[0])
    with torch.no_grad():
        for block in run.model.blocks:
            block.mhsa.qkv.weight[:16].zero_()
            block.mhsa.qkv.bias[:16].zero_()
    doc = ink_attention(run, 30)
    share = doc["ink_patch_share"]
    assert 0.1 < share < 0.9 and doc["n"] == 30
    assert torch.allclose(torch.tensor(doc["layers"]), torch.full((2, 2), share), atol=1e-5)
    assert doc["rollout"] == pytest.approx(share, abs=1e-5)
    assert doc["cls_self"] == pytest.approx([1 / 17, 1 / 17], abs=1e-6)
