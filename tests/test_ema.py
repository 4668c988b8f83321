"""vit_lab.ema: the moving average of the weights equals a hand-computed one, and a run with it resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_epoch_cfg, train_interrupted_at
from omegaconf import OmegaConf

from vit_lab.ema import EMA, build_ema, warmup_decay
from vit_lab.errors import ConfigError


def test_warmup_decay_is_short_at_first_then_the_configured_decay():
    assert warmup_decay(0.999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warmup_decay(0.5, 8) == 0.5  # 9/18 = 0.5: from here on, the decay itself
    assert warmup_decay(0.5, 1000) == 0.5


def test_ema_equals_a_hand_computed_average_and_differs_from_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    decay = 0.2  # update 1 (k=1) uses min(0.2, 2/11) = 0.18..., update 2 (k=2) uses min(0.2, 3/12) = 0.2
    ema = EMA(model, decay)
    names = [n for n, _ in model.named_parameters()] + ["2.running_mean", "2.running_var"]
    expected: dict[str, torch.Tensor] = {}
    for step in range(3):
        loss = model(torch.randn(8, 3)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        now = {n: t.detach().clone() for n, t in model.state_dict().items() if n in names}
        if step == 0:  # the first update copies the weights
            expected = now
        else:
            d = min(decay, (1 + step) / (10 + step))
            expected = {n: d * expected[n] + (1 - d) * now[n] for n in names}
    averaged = ema.module.state_dict()
    for n in names:
        torch.testing.assert_close(averaged[n], expected[n], rtol=1e-6, atol=1e-7)
        assert not torch.equal(averaged[n], model.state_dict()[n]), n
    assert int(ema.n_averaged) == 3
    assert averaged["2.num_batches_tracked"] == 3  # an integer buffer follows the model's


@pytest.mark.parametrize("decay", [1.0, -0.1, True, "0.9"])
def test_bad_decay_is_a_config_error(decay):
    with pytest.raises(ConfigError, match="trainer.ema_decay"):
        build_ema(torch.nn.Linear(2, 2), decay)


def test_no_decay_no_average():
    assert build_ema(torch.nn.Linear(2, 2), None) is None


# ----------------------------------------------------------------------------------------------- in a run

EMA_RUN = ("trainer.epochs=3", "trainer.checkpoint=true", "trainer.ema_decay=0.8", "logger=none")  # 16 steps/epoch


def results(run_dir) -> tuple:
    m = json.loads((run_dir / "metrics.json").read_text())
    h = json.loads((run_dir / "history.json").read_text())
    curve = [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in h]
    return m["status"], m["test_acc"], m["test_loss"], m["best_val_acc"], m["best_epoch"], curve


@pytest.mark.slow
def test_run_with_ema_resumes_exactly_and_tests_and_keeps_the_average(mnist_root, tmp_path, monkeypatch):
    """SIGINT at step 20 (epoch 2, step 4), resume: the final metrics equal an uninterrupted run's exactly; the
    average is what was validated (best.pt), tested and what `vit_lab.evaluate` reloads."""
    import vit_lab.train as T
    from vit_lab import evaluate as E

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    T.train(one_epoch_cfg(*EMA_RUN), tmp_path / "ref")
    train_interrupted_at(monkeypatch, one_epoch_cfg(*EMA_RUN), tmp_path / "a", step=20)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], int(ckpt["ema"]["n_averaged"])) == (1, 4, 20)
    cfg = one_epoch_cfg(*EMA_RUN, f"resume={tmp_path / 'a'}")
    T.train(cfg, tmp_path / "b")
    assert results(tmp_path / "b") == results(tmp_path / "ref")  # exactly

    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    average = E.tested_weights(ckpt)
    assert average.keys() == ckpt["model"].keys()
    assert any(not torch.equal(average[k], ckpt["model"][k]) for k in average)  # the average, not the weights
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=True)
    if best["epoch"] == 3:
        assert all(torch.equal(best["model"][k], average[k]) for k in average)  # best.pt holds what was validated
    (tmp_path / "b" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / "b" / ".hydra" / "config.yaml")  # what Hydra writes for a command-line run
    doc = E.evaluate_run(E.load(tmp_path / "b"))
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (doc["accuracy"], doc["loss"]) == (m["test_acc"], m["test_loss"])
