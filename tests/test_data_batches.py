"""Tests for vit_lab.data.batches: tensor-side batching, normalisation and exact mid-epoch resume."""

from __future__ import annotations

import pytest
import torch

from vit_lab.data import Augment, Batches
from vit_lab.errors import ConfigError


def grid(n: int = 23, c: int = 2, h: int = 5, w: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels are distinct per sample; labels = sample index (to trace order)."""
    x = (torch.arange(n * c * h * w) % 251).to(torch.uint8).reshape(n, c, h, w)
    return x, torch.arange(n)


AUG = Augment(enabled=True, max_shift=0.1, degrees=20, scale=(0.9, 1.1), crop_padding=1)


def test_batches_cover_epoch_once_and_drop_last():
    x, y = grid()
    b = Batches(
        x, y, 5, mean=[0, 0], std=[1, 1], normalize=False, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(b) == 5
    ys = [yb for _, yb in b]
    assert [len(t) for t in ys] == [5, 5, 5, 5, 3]
    order = torch.cat(ys)
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    for xb, yb in b:  # images travel with their labels
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xb, x[yb].float() / 255)
    d = Batches(x, y, 5, mean=[0, 0], std=[1, 1], drop_last=True)
    assert len(d) == 4 and [len(t) for _, t in d] == [5] * 4
    assert torch.cat([t for _, t in d]).tolist() == list(range(20)) and d.permutation() is None


def test_normalisation_values():
    x = torch.zeros(2, 2, 3, 3, dtype=torch.uint8)
    x[1] = 255
    ((xb, _),) = Batches(x, torch.zeros(2, dtype=torch.long), 4, mean=[0.5, 0.1], std=[0.25, 0.2])
    assert torch.allclose(xb[0, 0], torch.full((3, 3), -2.0)) and torch.allclose(xb[0, 1], torch.full((3, 3), -0.5))
    assert torch.allclose(xb[1, 0], torch.full((3, 3), 2.0)) and torch.allclose(xb[1, 1], torch.full((3, 3), 4.5))
    ((raw, _),) = Batches(x, torch.zeros(2, dtype=torch.long), 4, mean=[0.5, 0.1], std=[0.25, 0.2], normalize=False)
    assert raw.min() == 0 and raw.max() == 1


@pytest.mark.parametrize("augment", [None, AUG])
def test_iter_from_resumes_exactly(augment):
    """The trainer's protocol: seed, permutation(), save (perm, generator state) mid-epoch, restore, iter_from(k,
    perm)."""
    x, y = grid()
    g = torch.Generator()
    b = Batches(x, y, 4, mean=[0.5, 0.5], std=[0.3, 0.3], shuffle=True, augment=augment, generator=g)
    g.manual_seed(11)
    perm = b.permutation()
    state = g.get_state()
    full = list(b.iter_from(0, perm))
    assert torch.equal(torch.cat([t for _, t in full]), perm)
    assert torch.equal(g.get_state(), state)  # iterating does not advance the generator
    g.manual_seed(99)  # whatever happened in between
    g.set_state(state)
    tail = list(b.iter_from(3, perm))
    g.manual_seed(11)
    plain = list(b)  # __iter__ == permutation() + iter_from(0, perm)
    g.manual_seed(11)
    tail2 = list(b.iter_from(3))
    assert len(tail) == len(full) - 3 == len(tail2) and len(plain) == len(full)
    for (xa, ya), (xb, yb) in zip(full, plain):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb), (xc, yc) in zip(full[3:], tail, tail2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(xa, xc) and torch.equal(ya, yc)
    g.manual_seed(12)
    assert not torch.equal(torch.cat([t for _, t in b]), perm)


def test_unshuffled_augmentation_differs_per_epoch():
    x, y = grid()
    g = torch.Generator().manual_seed(0)
    b = Batches(x, y, 8, mean=[0, 0], std=[1, 1], augment=AUG, generator=g)
    e1, e2 = list(b), list(b)
    assert (
        [t.tolist() for _, t in e1]
        == [t.tolist() for _, t in e2]
        == [list(range(i, min(i + 8, 23))) for i in (0, 8, 16)]
    )
    assert not torch.equal(e1[0][0], e2[0][0])
    g.manual_seed(0)
    assert torch.equal(next(iter(b))[0], e1[0][0])


def test_same_seed_same_augmented_batches():
    x, y = grid()

    def epoch(seed):
        return list(
            Batches(
                x,
                y,
                8,
                mean=[0, 0],
                std=[1, 1],
                shuffle=True,
                augment=AUG,
                generator=torch.Generator().manual_seed(seed),
            )
        )

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # augmentation changed something, but not the label order that the permutation fixed
    plain = list(Batches(x, y, 8, mean=[0, 0], std=[1, 1], shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, plain)) and not torch.equal(a[0][0], plain[0][0])


def test_batches_rejects_bad_input():
    x, y = grid()
    with pytest.raises(ConfigError):
        Batches(x, y, 0, mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError):
        Batches(x.float(), y, 2, mean=[0, 0], std=[1, 1])
    with pytest.raises(ValueError):
        Batches(x, y[:-1], 2, mean=[0, 0], std=[1, 1])
    with pytest.raises(ConfigError):
        Batches(x, y, 2, mean=[0, 0, 0], std=[1, 1, 1])
