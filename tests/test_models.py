"""The ViT against plain loop references of the tutorial, its shapes and its errors; the CNN baseline."""

import math

import pytest
import torch
import torch.nn.functional as F

from vit_lab.errors import ShapeError
from vit_lab.models import MyMSA, MyViT, MyViTBlock, SimpleCNN, get_positional_embeddings, patchify
from vit_lab.models import vit as vit_module
from vit_lab.models.cpu_attention import cpu_attention, softmax2


def loop_patchify(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """The tutorial's patchify, loops and all."""
    n, c, h, w = images.shape
    rows, cols = h // ph, w // pw
    patches = torch.zeros(n, rows * cols, c * ph * pw)
    for idx, image in enumerate(images):
        for i in range(rows):
            for j in range(cols):
                patch = image[:, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw]
                patches[idx, i * cols + j] = patch.flatten()
    return patches


@pytest.mark.parametrize(
    "shape,patch",
    [
        ((2, 1, 28, 28), 4),
        ((2, 1, 28, 28), 7),
        ((3, 3, 12, 8), 4),
        ((1, 2, 6, 9), (3, 3)),
        ((2, 3, 8, 12), (4, 6)),
        ((1, 1, 5, 5), 1),
    ],
)
def test_patchify_matches_tutorial_loop(shape, patch):
    x = torch.randn(shape)
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    assert torch.equal(patchify(x, patch), loop_patchify(x, ph, pw))


def test_patchify_rejects_non_divisor():
    with pytest.raises(ShapeError, match="5"):
        patchify(torch.zeros(1, 1, 28, 28), 5)


def test_positional_table_values():
    table = get_positional_embeddings(50, 8)
    assert table.shape == (50, 8)
    for i in (0, 1, 7, 49):
        for j in range(8):
            expected = math.sin(i / 10000 ** (j / 8)) if j % 2 == 0 else math.cos(i / 10000 ** ((j - 1) / 8))
            assert table[i, j].item() == pytest.approx(expected, abs=1e-6)


def loop_tutorial_msa(msa: MyMSA, x: torch.Tensor) -> torch.Tensor:
    """The tutorial's MSA: loops over sequences and heads, each head with its own q, k, v on its slice."""
    dh = msa.d_head
    out = []
    for seq in x:
        heads = []
        for h in range(msa.n_heads):
            w, b = msa.qkv_weight[h], msa.qkv_bias[h]
            s = seq[:, h * dh : (h + 1) * dh]
            q, k, v = (s @ w[i].T + b[i] for i in range(3))
            attn = torch.softmax(q @ k.T / dh**0.5, dim=-1)
            heads.append(attn @ v)
        out.append(torch.hstack(heads))
    return torch.stack(out)


def loop_fused_msa(msa: MyMSA, x: torch.Tensor) -> torch.Tensor:
    """Standard attention, one head at a time."""
    dh = msa.d_head
    qkv = msa.qkv(x)
    q, k, v = qkv.split(msa.d, dim=-1)
    heads = []
    for h in range(msa.n_heads):
        sl = slice(h * dh, (h + 1) * dh)
        attn = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / dh**0.5, dim=-1)
        heads.append(attn @ v[..., sl])
    return msa.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("d,heads", [(8, 2), (12, 3), (16, 1), (16, 16)])
def test_tutorial_attention_matches_loop(d, heads):
    torch.manual_seed(0)
    msa = MyMSA(d, heads, style="tutorial").eval()
    x = torch.randn(3, 50, d)
    assert torch.allclose(msa(x), loop_tutorial_msa(msa, x), atol=1e-5)


@pytest.mark.parametrize("d,heads", [(8, 2), (64, 4), (12, 3)])
def test_fused_attention_matches_loop(d, heads):
    torch.manual_seed(0)
    msa = MyMSA(d, heads, style="fused").eval()
    x = torch.randn(2, 17, d)
    assert torch.allclose(msa(x), loop_fused_msa(msa, x), atol=1e-5)


@pytest.mark.parametrize("style", ["fused", "tutorial"])
@pytest.mark.parametrize("n_queries", [None, 1, 4])
@pytest.mark.parametrize("kernel", ["explicit", "cpu"])
@pytest.mark.parametrize("d,heads", [(16, 4), (8, 2), (32, 2)])  # head dims 4 and 16: both product layouts
def test_attention_kernels_agree_in_values_and_gradients(style, n_queries, kernel, d, heads):
    """Every CPU kernel computes what SDPA computes, forward and backward (so 'auto' changes speed only)."""
    torch.manual_seed(0)
    a = MyMSA(d, heads, style=style, kernel="sdpa")
    b = MyMSA(d, heads, style=style, kernel=kernel)
    b.load_state_dict(a.state_dict())
    x = (3 * torch.randn(3, 11, d)).requires_grad_()  # logits of a few units: a softmax far from uniform
    x2 = x.detach().clone().requires_grad_()
    ya, yb = a(x, n_queries), b(x2, n_queries)
    assert torch.allclose(ya, yb, atol=2e-6)
    g = torch.randn_like(ya)
    ya.backward(g), yb.backward(g)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-4, atol=2e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=2e-5), name


@pytest.mark.parametrize("d,h,nq", [(8, 2, 50), (8, 2, 1), (64, 4, 50), (96, 4, 7)])
def test_cpu_attention_matches_float64_reference(d, h, nq):
    """Against softmax(q k^T / sqrt(dh)) v in float64 (torch's own ops), values and all three input gradients."""
    torch.manual_seed(1)
    b, n = 4, 50
    q = torch.randn(b, nq, d, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(b, n, 2 * d, dtype=torch.float64, requires_grad=True)

    def reference(q, kv):
        qh = q.unflatten(-1, (h, d // h)).transpose(1, 2)
        k, v = (t.unflatten(-1, (h, d // h)).transpose(1, 2) for t in kv.split(d, -1))
        att = (qh @ k.transpose(-2, -1) * (d // h) ** -0.5).softmax(-1)
        return (att @ v).transpose(1, 2).flatten(2)

    ref = reference(q, kv)
    g = torch.randn_like(ref)
    dq, dkv = torch.autograd.grad(ref, (q, kv), g)
    q32, kv32 = q.detach().float().requires_grad_(), kv.detach().float().requires_grad_()
    out = cpu_attention(q32, kv32, h, (d // h) ** -0.5)
    out.backward(g.float())
    assert out.shape == (b, nq, d) and out.is_contiguous()
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.allclose(q32.grad.double(), dq, atol=1e-5)
    assert torch.allclose(kv32.grad.double(), dkv, atol=1e-5)


def test_softmax2_equals_softmax_on_each_of_its_three_paths(monkeypatch):
    """Unshifted exp2 (row sums in range), shifted by the block maximum (sums beyond 2^64), torch.softmax (a row
    ~500 binary orders below its block's maximum): each gives softmax, and each is taken where it should be."""
    shifted, exact = [], []
    real_amax, real_softmax = torch.Tensor.amax, torch.softmax
    monkeypatch.setattr(torch.Tensor, "amax", lambda t, *a, **k: shifted.append(1) or real_amax(t, *a, **k))
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: exact.append(1) or real_softmax(*a, **k))
    torch.manual_seed(0)

    def check(s):
        out = softmax2(s.clone())
        assert torch.isfinite(out).all()
        assert torch.allclose(out, real_softmax(s * math.log(2.0), -1), atol=1e-6)

    s = torch.randn(6, 5, 50) * 10  # base-2 logits within about +-45: in range
    check(s)
    assert (shifted, exact) == ([], [])
    check(s + 100)  # every row sum ~2^145: float32 would overflow unshifted
    assert (len(shifted), exact) == (1, [])
    s[2, 3] -= 500  # 500 binary orders below its block's maximum: 0/0 even when shifted
    check(s)
    assert (len(shifted), len(exact)) == (2, 1)
    s[0, 0, 0] = float("inf")
    assert torch.equal(softmax2(s.clone()).isnan(), real_softmax(s, -1).isnan())  # as torch defines it


def test_auto_kernel_uses_sdpa_off_the_cpu_only(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kw):
        calls.append(q.device.type)
        return real(q, *args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    MyMSA(8, 2, kernel="auto")(torch.randn(2, 5, 8))
    assert calls == []  # CPU: the cpu kernel
    MyMSA(8, 2, kernel="sdpa")(torch.randn(2, 5, 8))
    assert calls == ["cpu"]
    MyMSA(8, 2, kernel="auto").to("meta")(torch.randn(2, 5, 8, device="meta"))  # any accelerator: SDPA
    assert calls == ["cpu", "meta"]


def _count_cpu_kernel_calls(monkeypatch) -> list:
    calls = []
    real = vit_module.cpu_attention
    monkeypatch.setattr(vit_module, "cpu_attention", lambda *a: calls.append(1) or real(*a))
    return calls


def test_cpu_kernel_runs_where_it_applies_and_falls_back_to_explicit_elsewhere(monkeypatch):
    calls = _count_cpu_kernel_calls(monkeypatch)
    x = torch.randn(2, 9, 8)
    MyMSA(8, 2, kernel="auto")(x)
    assert len(calls) == 1  # eager fp32 on the CPU
    drop = MyMSA(8, 2, dropout=0.5, kernel="cpu")
    drop.eval()(x)
    assert len(calls) == 2  # dropout only acts in training
    drop.train()(x)
    assert len(calls) == 2  # attention dropout: explicit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = MyMSA(8, 2, kernel="cpu")(x)
    assert len(calls) == 2 and y.dtype == torch.bfloat16  # mixed precision: explicit
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    MyMSA(8, 2, kernel="auto")(x)
    assert len(calls) == 2  # under torch.compile, auto leaves attention to inductor


def test_attention_dropout_acts_in_training_only():
    torch.manual_seed(0)
    msa = MyMSA(8, 2, dropout=0.5, kernel="explicit")
    x = torch.randn(2, 9, 8)
    assert not torch.allclose(msa.train()(x), msa.eval()(x))
    assert torch.equal(msa.eval()(x), msa.eval()(x))


def test_unknown_attention_kernel_is_a_shape_error():
    with pytest.raises(ShapeError, match="model.attn_kernel='flash'"):
        MyMSA(8, 2, kernel="flash")


def test_tutorial_attention_has_no_output_projection_and_per_head_params():
    msa = MyMSA(8, 2, style="tutorial")
    assert not hasattr(msa, "proj")
    assert sum(p.numel() for p in msa.parameters()) == 2 * 3 * (4 * 4 + 4)


def test_block_is_prenorm_residual():
    torch.manual_seed(0)
    block = MyViTBlock(8, 2).eval()
    x = torch.randn(2, 5, 8)
    h = x + block.mhsa(block.norm1(x))
    assert torch.allclose(block(x), h + block.mlp(block.norm2(h)), atol=1e-6)


def test_tutorial_model_parameter_count():
    model = MyViT((1, 28, 28), patch_size=4, depth=2, hidden_d=8, n_heads=2, out_d=10, attention="tutorial")
    assert sum(p.numel() for p in model.parameters()) == 1642


@pytest.mark.parametrize(
    "chw,patch,pool,pos",
    [
        ((1, 28, 28), 4, "cls", "sinusoidal"),
        ((1, 28, 28), 7, "mean", "learned"),
        ((3, 32, 32), 8, "cls", "learned"),
        ((3, 12, 20), (4, 5), "mean", "sinusoidal"),
        ((2, 9, 9), 3, "cls", "sinusoidal"),
    ],
)
@pytest.mark.parametrize("attention", ["fused", "tutorial"])
def test_shapes_and_backward(chw, patch, pool, pos, attention):
    model = MyViT(
        chw,
        patch_size=patch,
        depth=2,
        hidden_d=12,
        n_heads=3,
        out_d=7,
        pool=pool,
        pos_embed=pos,
        attention=attention,
        dropout=0.1,
    )
    out = model(torch.randn(4, *chw))
    assert out.shape == (4, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_returns_logits_unless_tutorial_bug_requested():
    x = torch.randn(4, 1, 28, 28)
    model = MyViT(hidden_d=8, n_heads=2)
    logits = model(x)
    assert not torch.allclose(logits.sum(1), torch.ones(4))
    buggy = MyViT(hidden_d=8, n_heads=2, head_softmax=True)
    buggy.load_state_dict(model.state_dict())
    probs = buggy(x)
    assert torch.allclose(probs, logits.softmax(-1), atol=1e-6)


def test_double_softmax_floor():
    """The tutorial's bug: cross-entropy on softmax outputs cannot fall below ln(1 + 9/e)."""
    probs = F.one_hot(torch.tensor([3]), 10).float()  # a perfectly confident, correct model
    assert F.cross_entropy(probs, torch.tensor([3])).item() == pytest.approx(math.log(1 + 9 / math.e), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(patch_size=5), ["patch_size=5", "28x28", "[1, 2, 4, 7, 14, 28]"]),
        (dict(patch_size=(4, 6)), ["patch_size=[4,6]"]),
        (dict(hidden_d=10, n_heads=4), ["n_heads=4", "hidden_d=10", "[1, 2, 5, 10]"]),
        (dict(depth=0), ["depth=0"]),
        (dict(pool="max"), ["pool"]),
        (dict(attention="linear"), ["linear"]),
        (dict(stem="resnet"), ["model.stem='resnet'", "'conv'"]),
    ],
)
def test_shape_errors_name_the_values(kwargs, words):
    with pytest.raises(ShapeError) as err:
        MyViT((1, 28, 28), **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_cnn_baseline_any_shape():
    for chw in [(1, 28, 28), (3, 32, 16), (2, 5, 7)]:
        model = SimpleCNN(chw, out_d=4)
        assert model(torch.randn(3, *chw)).shape == (3, 4)
    with pytest.raises(ShapeError):
        SimpleCNN((1, 2, 2))


def _reference_forward(model: MyViT, x: torch.Tensor) -> torch.Tensor:
    """The ViT's forward as it was before the distillation token, written out: every block over every token."""
    t = model.linear_mapper(patchify(x, model.patch_size))
    if model.pool == "cls":
        t = torch.cat([model.class_token.expand(len(x), 1, -1), t], dim=1)
    t = t + model.pos_embed
    for block in model.blocks:
        t = block(t)
    return model.mlp(t[:, 0] if model.pool == "cls" else model.norm(t.mean(dim=1)))


@pytest.mark.parametrize("kw", [dict(pos_embed="learned"), dict(pos_embed="sinusoidal"), dict(pool="mean")])
def test_without_distillation_token_the_model_is_unchanged(kw):
    """model.distill_token=false (the default): the same random draws, the state-dict keys existing checkpoints
    hold, and the same outputs as the forward before the token existed."""
    torch.manual_seed(0)
    default = MyViT((1, 28, 28), patch_size=7, depth=1, hidden_d=8, n_heads=2, **kw).eval()
    torch.manual_seed(0)
    off = MyViT((1, 28, 28), patch_size=7, depth=1, hidden_d=8, n_heads=2, distill_token=False, **kw).eval()
    block = [f"blocks.0.{k}" for k in vit_module.MyViTBlock(8, 2).state_dict()]
    keys = ["class_token"] * (kw.get("pool") != "mean") + ["pos_embed"] * (kw.get("pos_embed") == "learned")
    norm = ["norm.weight", "norm.bias"] if kw.get("pool") == "mean" else []
    assert list(off.state_dict()) == [
        *keys,
        "linear_mapper.weight",
        "linear_mapper.bias",
        *block,
        *norm,
        "mlp.weight",
        "mlp.bias",
    ]
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), off.state_dict().values()))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(off(x), default(x))
        assert torch.allclose(off(x), _reference_forward(off, x), atol=1e-6)
    assert off.n_prefix == (kw.get("pool") != "mean") and off.dist_token is None and off.head_dist is None


@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_distillation_token_adds_a_token_a_position_and_a_head(pos):
    """DeiT's token: hidden_d token weights, a (hidden_d x classes + classes) head, and hidden_d more learned positions;
    eval answers the mean of both heads, distilled training returns both, plain training the mean."""
    d, classes = 8, 10
    base = MyViT((1, 28, 28), patch_size=7, depth=2, hidden_d=d, n_heads=2, pos_embed=pos)
    torch.manual_seed(0)
    model = MyViT((1, 28, 28), patch_size=7, depth=2, hidden_d=d, n_heads=2, pos_embed=pos, distill_token=True)
    grown = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in base.parameters())
    assert grown == d + (d * classes + classes) + (d if pos == "learned" else 0)
    assert model.n_prefix == 2 and model.pos_embed.shape == (2 + 16, d)
    x = torch.randn(3, 1, 28, 28)
    t = torch.cat([model.class_token.expand(3, 1, -1), model.dist_token.expand(3, 1, -1)], dim=1)
    t = torch.cat([t, model.linear_mapper(patchify(x, 7))], dim=1) + model.pos_embed
    for block in model.blocks:  # every token through every block: the last-block shortcut must not change a thing
        t = block(t)
    cls, dist = model.mlp(t[:, 0]), model.head_dist(t[:, 1])
    assert torch.allclose(model.eval()(x), (cls + dist) / 2, atol=1e-6)
    assert torch.allclose(model.train()(x), (cls + dist) / 2, atol=1e-6)  # no teacher: one output, the mean
    model.set_distilled_training()
    pair = model(x)
    assert (
        isinstance(pair, tuple) and torch.allclose(pair[0], cls, atol=1e-6) and torch.allclose(pair[1], dist, atol=1e-6)
    )
    (pair[0].sum() + pair[1].sum()).backward()
    assert model.dist_token.grad is not None and model.dist_token.grad.abs().sum() > 0
    assert torch.equal(model.eval()(x), (pair[0] + pair[1]).detach() / 2)  # eval ignores distilled_training
    plain = MyViT((1, 28, 28), patch_size=7, hidden_d=d, n_heads=2)
    plain.set_distilled_training()  # no distillation head: nothing to turn on, one output still
    assert not plain.distilled_training and isinstance(plain.train()(x), torch.Tensor)
    with pytest.raises(ShapeError, match="pool=cls"):
        MyViT((1, 28, 28), patch_size=7, hidden_d=d, n_heads=2, pool="mean", distill_token=True)


@pytest.mark.parametrize("chw,patch,stride", [((1, 28, 28), 4, 2), ((1, 28, 28), 7, 1), ((3, 12, 8), (4, 2), 2)])
def test_conv_stem_tokens_are_the_patches_of_a_3x3_convolution(chw, patch, stride):
    """model.stem=conv: token i is the embedding of patch i (patchify's row-major order) of the 3x3 convolution's GELU
    output, written out by hand (the convolution strides 2 where both patch sides are even); the rest of the model is
    unchanged and trains end to end."""
    c, d = chw[0], 16
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    torch.manual_seed(0)
    model = MyViT(chw, patch_size=patch, depth=2, hidden_d=d, n_heads=2, pos_embed="learned", stem="conv")
    x = torch.randn(2, *chw)
    conv1, conv2 = model.conv_stem[0], model.conv_stem[2]
    features = F.gelu(F.conv2d(x, conv1.weight, conv1.bias, stride=stride, padding=1))
    assert features.shape == (2, d // 2, chw[1] // stride, chw[2] // stride)
    tokens = patchify(features, (ph // stride, pw // stride)) @ conv2.weight.reshape(d, -1).T + conv2.bias
    assert tokens.shape == (2, (chw[1] // ph) * (chw[2] // pw), d)
    t = torch.cat([model.class_token.expand(2, 1, -1), tokens], dim=1) + model.pos_embed
    for block in model.blocks:
        t = block(t)
    assert torch.allclose(model(x), model.mlp(t[:, 0]), atol=1e-5)
    assert "linear_mapper.weight" not in model.state_dict()
    linear = MyViT(chw, patch_size=patch, depth=2, hidden_d=d, n_heads=2, pos_embed="learned")
    grown = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in linear.parameters())
    conv2_in = (d // 2) * (ph // stride) * (pw // stride)
    assert grown == (c * 9 + 1) * (d // 2) + conv2_in * d - c * ph * pw * d  # the 3x3 conv; the embedding's new input
    model(x).sum().backward()
    assert conv1.weight.grad is not None and conv1.weight.grad.abs().sum() > 0


def test_keep_random_draws_distinct_tokens_per_image():
    torch.manual_seed(0)
    x = torch.arange(4 * 9, dtype=torch.float).view(4, 9, 1).expand(4, 9, 3)  # token j of image i: 9 i + j
    kept = vit_module.keep_random(x, 5)
    assert kept.shape == (4, 5, 3) and torch.equal(kept[..., 0], kept[..., 2])
    for i, row in enumerate(kept[..., 0]):
        assert len(set(row.tolist())) == 5 and all(9 * i <= v < 9 * i + 9 for v in row.tolist())
    assert len({tuple(sorted(r % 9 for r in row.tolist())) for row in kept[..., 0]}) > 1  # drawn per image


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_patch_dropout_trains_on_a_random_share_of_the_positioned_patches(pool):
    """Training forward = the blocks on [class token,] k of the positioned patch tokens, drawn as keep_random draws
    them; evaluation (and drop_patches off) sees every patch, exactly as a model without patch dropout."""
    d, kw = 16, dict(patch_size=7, depth=2, n_heads=2, pos_embed="learned", pool=pool)
    torch.manual_seed(0)
    model = MyViT((1, 28, 28), hidden_d=d, patch_dropout=0.5, **kw)
    torch.manual_seed(0)
    plain = MyViT((1, 28, 28), hidden_d=d, **kw)
    assert str(model.state_dict()) == str(plain.state_dict())  # no parameters, no random draws at build
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(model.eval()(x), plain.eval()(x), atol=1e-6)
    model.train()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    n = model.n_prefix
    patches = vit_module.keep_random(model.linear_mapper(patchify(x, 7)) + model.pos_embed[n:], 8)  # round(16 / 2)
    t = torch.cat([(model.class_token + model.pos_embed[:1]).expand(3, 1, -1), patches], 1) if n else patches
    for block in model.blocks:
        t = block(t)
    expect = model.mlp(t[:, 0] if pool == "cls" else model.norm(t.mean(dim=1)))
    assert torch.allclose(out, expect, atol=1e-5)
    out.sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    model.drop_patches = False
    assert torch.allclose(model(x), plain.train()(x), atol=1e-6)


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "half"])
def test_patch_dropout_is_a_share_below_one(bad):
    with pytest.raises(ShapeError, match=r"model.patch_dropout=.* must be a number in \[0, 1\)"):
        MyViT((1, 28, 28), patch_size=7, hidden_d=8, n_heads=2, patch_dropout=bad)
