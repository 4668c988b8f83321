"""DeiT-style distillation (vit_lab/distill.py): the losses against a direct computation, the teacher loaded as
`vit_lab.evaluate` loads a run and checked against the student's inputs, attention with the distillation token, and
real runs: a CNN teacher trained, a ViT student distilled from it, resumed exactly, and bad teachers as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, one_epoch_cfg, run_train, train_interrupted_at
from fake_runs import CNN, compose, fake_run

from vit_lab import distill
from vit_lab.errors import ConfigError, UserError
from vit_lab.models import MyViT, SimpleCNN


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def batch(seed: int = 0, b: int = 6, k: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    cls, dist, teacher = (3 * torch.randn(b, k, generator=g) for _ in range(3))
    return cls, dist, teacher, torch.randint(0, k, (b,), generator=g)


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross-entropy with label smoothing written out: (1-eps) -log p_y + eps * mean over classes of -log p_c."""
    logp = logits.log_softmax(dim=1)
    return ((1 - eps) * -logp[torch.arange(len(y)), y] + eps * -logp.mean(dim=1)).mean()


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_hard_loss_is_deits(alpha):
    cls, dist, teacher, y = batch()
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = distill.hard_loss(cls, dist, teacher, y, ce, alpha)
    teacher_class = teacher.argmax(dim=1)
    assert not torch.equal(teacher_class, y)  # the two targets differ, so the two terms are told apart
    direct = (1 - alpha) * smoothed_ce(cls, y, 0.1) + alpha * smoothed_ce(dist, teacher_class, 0.0)
    assert torch.allclose(loss, direct, atol=1e-6)
    if alpha == 0.5:  # the paper's 1/2 CE(class head, y) + 1/2 CE(distillation head, teacher's class)
        half = 0.5 * ce(cls, y) + 0.5 * F.cross_entropy(dist, teacher_class)
        assert torch.allclose(loss, half, atol=1e-6)


@pytest.mark.parametrize("alpha,tau", [(0.5, 1.0), (0.7, 3.0)])
def test_soft_loss_is_temperature_scaled_kl_to_the_teacher(alpha, tau):
    cls, dist, teacher, y = batch(1)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = distill.soft_loss(cls, dist, teacher, y, ce, alpha, tau)
    p_t, p_s = (teacher / tau).softmax(dim=1), (dist / tau).softmax(dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()  # KL(teacher || student) of each image, averaged
    assert kl > 0
    direct = (1 - alpha) * smoothed_ce(cls, y, 0.1) + alpha * tau**2 * kl
    assert torch.allclose(loss, direct, atol=1e-5)
    assert torch.allclose(distill.soft_loss(teacher, teacher, teacher, y, ce, 1.0, tau), torch.zeros(()), atol=1e-6)


def test_distiller_runs_a_frozen_teacher_and_teaches_each_head():
    torch.manual_seed(0)
    teacher = SimpleCNN((1, 28, 28), width=4).eval().requires_grad_(False)
    ce = torch.nn.CrossEntropyLoss()
    d = distill.Distiller(teacher, ce, "hard", 0.5, 1.0, {})
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        t = teacher(x)
    cls, dist = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    loss, pred = d(x, (cls, dist), y)
    assert torch.allclose(loss, distill.hard_loss(cls, dist, t, y, ce, 0.5)) and torch.equal(pred, (cls + dist) / 2)
    loss.backward()
    assert cls.grad is not None and dist.grad is not None and all(p.grad is None for p in teacher.parameters())
    loss, pred = d(x, cls, y)  # a student without a distillation token: its one head learns both targets
    assert torch.allclose(loss, distill.hard_loss(cls, cls, t, y, ce, 0.5)) and torch.equal(pred, cls)
    soft = distill.Distiller(teacher, ce, "soft", 0.5, 2.0, {})
    assert torch.allclose(soft(x, (cls, dist), y)[0], distill.soft_loss(cls, dist, t, y, ce, 0.5, 2.0))


def test_a_softmax_headed_teacher_teaches_its_log_probabilities():
    """The tutorial's model answers probabilities; their logarithms are logits of the same distribution."""
    torch.manual_seed(0)
    teacher = MyViT((1, 28, 28), patch_size=7, hidden_d=8, n_heads=2, head_softmax=True).eval()
    x = torch.randn(3, 1, 28, 28)
    logits = distill.Distiller(teacher, None, "soft", 1.0, 1.0, {}).teacher_logits(x)
    assert torch.allclose(logits.softmax(dim=1), teacher(x).detach(), atol=1e-6)


def test_teacher_is_the_evaluated_run_frozen_and_recorded(tmp_path):
    run, model = fake_run(tmp_path / "cnn", base=CNN)
    (run / "metrics.json").write_text(json.dumps({"status": "completed", "test_acc": 0.5}))
    spec = distill_spec()
    teacher, record = distill.load_teacher(run, "last", spec)
    assert isinstance(teacher, SimpleCNN) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), model.state_dict().values()))
    assert record == {
        "teacher": str(run),
        "weights": "last",
        "teacher_epoch": 0,
        "teacher_model": "SimpleCNN",
        "teacher_status": "completed",
        "teacher_test_acc": 0.5,
    }


def distill_spec(*overrides: str):
    from vit_lab.config import build

    return build(compose(*overrides).data, _convert_="all")


@pytest.mark.parametrize(
    "teacher_overrides,words",
    [
        (["data.image_size=[14,14]"], ["chw (1, 14, 14) vs (1, 28, 28)", "same data config"]),
        (["data=fashion_mnist"], ["mean [0.286", "std [0.353"]),
        (["data.normalize=false"], ["normalize False vs True"]),
    ],
)
def test_a_teacher_of_other_inputs_is_refused(tmp_path, teacher_overrides, words):
    run, _ = fake_run(tmp_path / "cnn", *teacher_overrides, base=CNN)
    with pytest.raises(ConfigError) as err:
        distill.load_teacher(run, "last", distill_spec())
    assert "\n" not in str(err.value) and str(err.value).startswith(f"distill.teacher={run} was trained on other")
    for word in words:
        assert word in str(err.value)


def test_missing_teachers_and_bad_keys_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^distill.teacher: .*nowhere: no such directory"):
        distill.load_teacher(tmp_path / "nowhere", "last", distill_spec())
    run, _ = fake_run(tmp_path / "cnn", base=CNN)
    with pytest.raises(UserError, match=r"^distill.teacher: .*has no best.pt.*try --weights last"):
        distill.load_teacher(run, "best", distill_spec())
    (run / "checkpoint.pt").unlink()
    with pytest.raises(UserError, match=r"has no checkpoint.pt, so no last weights"):
        distill.load_teacher(run, "last", distill_spec())
    for overrides, match in (
        ([], "distill.teacher is not set"),
        ([f"distill.teacher={run}", "distill.alpha=1.5"], r"distill.alpha=1.5 must be in \[0, 1\]"),
        ([f"distill.teacher={run}", "distill.tau=0"], "distill.tau=0.0 must be > 0"),
    ):
        with pytest.raises(ConfigError, match=match):
            distill.check(compose("distill=soft", *overrides).distill)


def test_from_config_reads_the_student_and_leaves_it_unchanged(tmp_path):
    run, _ = fake_run(tmp_path / "cnn", base=CNN)
    cfg = compose("experiment=deit_cpu", f"distill.teacher={run}", *MICRO)
    assert cfg.distill.kind == "hard" and cfg.model.distill_token
    student = MyViT((1, 28, 28), patch_size=7, hidden_d=8, n_heads=2, distill_token=True)
    d = distill.from_config(cfg, distill_spec(), student, None, torch.device("cpu"))
    assert d is not None and not student.distilled_training and d.record["distill_token"] is True
    assert (d.record["kind"], d.record["alpha"], d.record["teacher_status"]) == ("hard", 0.5, None)
    assert distill.from_config(compose(), distill_spec(), student, None, torch.device("cpu")) is None


def test_attention_skips_the_distillation_token(tmp_path):
    """Uniform attention (queries zeroed): the class token's attention over the patches, each layer's and the
    rollout's, puts exactly the share of ink patches on ink, and keeps 1/18 for itself (16 patches, 2 tokens)."""
    from vit_lab.attention import attention_maps, figure, ink_attention, rollout, token_attention
    from vit_lab.evaluate import load

    run = load(fake_run(tmp_path / "vit", "model.depth=2", "model.n_heads=2", "model.distill_token=true")[0])
    model = run.model
    assert isinstance(model, MyViT) and model.n_prefix == 2
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        logits, maps = attention_maps(model, x)
        assert torch.allclose(logits, model(x), atol=1e-5) and maps.shape == (4, 2, 2, 18, 18)
        assert torch.equal(token_attention(maps, "cls", 2), maps[..., 0, 2:])
        assert rollout(maps, "cls", 2).shape == (4, 16)
        for block in model.blocks:
            block.mhsa.qkv.weight[:16].zero_()
            block.mhsa.qkv.bias[:16].zero_()
    doc = ink_attention(run, 20)
    share = doc["ink_patch_share"]
    assert torch.allclose(torch.tensor(doc["layers"]), torch.full((2, 2), share), atol=1e-5)
    assert doc["rollout"] == pytest.approx(share, abs=1e-5)
    assert doc["cls_self"] == pytest.approx([1 / 18, 1 / 18], abs=1e-6)
    assert figure(run, 2, tmp_path / "a.png").stat().st_size > 1000


STUDENT = [
    "trainer.epochs=2",
    "trainer.checkpoint=true",
    "logger=none",
    "data.train_limit=512",
    "distill=hard",
    "model.distill_token=true",
]


def test_the_trainer_turns_on_a_distilled_students_two_outputs(mnist_root, tmp_path, monkeypatch):
    """With a teacher, the student's training forward answers both heads; without one, their mean."""
    import vit_lab.train as T

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    teacher, _ = fake_run(tmp_path / "teacher", base=CNN)
    for overrides, distilled in (
        ((*STUDENT, f"distill.teacher={teacher}"), True),
        ([o for o in STUDENT if o != "distill=hard"], False),
    ):
        job = T.setup(one_epoch_cfg(*overrides), tmp_path / f"run_{distilled}")
        assert isinstance(job.model, MyViT) and job.model.distilled_training is distilled
        out = job.model.train()(torch.zeros(2, 1, 28, 28))
        assert isinstance(out, tuple) is distilled


@pytest.mark.slow
def test_distilled_run_resumes_exactly_with_the_teacher_reloaded(mnist_root, tmp_path, monkeypatch):
    """SIGINT mid-run, resume: the same metrics as an uninterrupted run; the checkpoint holds the student only."""
    import vit_lab.train as T

    monkeypatch.setenv("VIT_LAB_DATA", str(mnist_root))
    teacher, _ = fake_run(tmp_path / "teacher", base=CNN)
    overrides = (*STUDENT, f"distill.teacher={teacher}")
    T.train(one_epoch_cfg(*overrides), tmp_path / "ref")
    train_interrupted_at(monkeypatch, one_epoch_cfg(*overrides), tmp_path / "a", step=10)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    student = MyViT((1, 28, 28), patch_size=7, depth=1, hidden_d=16, n_heads=4, pos_embed="learned", distill_token=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2) and list(ckpt["model"]) == list(student.state_dict())
    T.train(one_epoch_cfg(*overrides, f"resume={tmp_path / 'a'}"), tmp_path / "b")
    ref, resumed = read(tmp_path / "ref" / "metrics.json"), read(tmp_path / "b" / "metrics.json")
    assert resumed["status"] == "completed" and resumed["distill"]["teacher"] == str(teacher)
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):
        assert resumed[key] == ref[key], key
    assert (
        read(tmp_path / "b" / "history.json")[1]["train_loss"]
        == read(tmp_path / "ref" / "history.json")[1]["train_loss"]
    )


@pytest.mark.slow
def test_cnn_teacher_then_distilled_vit_student(tmp_path):
    """The README's two commands on a tiny budget: a CNN teacher trained for real, then experiment=deit_cpu from it;
    metrics.json records the teacher, and the student evaluates again to its own test accuracy."""
    from vit_lab import evaluate as E

    teacher, student = tmp_path / "cnn", tmp_path / "student"
    tiny = [*MICRO, "trainer.epochs=1"]
    proc = run_train(
        *[o for o in tiny if not o.startswith("model.")], "model=cnn", "model.width=4", f"hydra.run.dir={teacher}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_train("experiment=deit_cpu", f"distill.teacher={teacher}", *tiny, f"hydra.run.dir={student}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m, t = read(student / "metrics.json"), read(teacher / "metrics.json")
    assert m["status"] == "completed" and m["model"] == "MyViT"
    assert m["distill"] == {
        "teacher": str(teacher),
        "weights": "last",
        "teacher_epoch": 1,
        "teacher_model": "SimpleCNN",
        "teacher_status": "completed",
        "teacher_test_acc": t["test_acc"],
        "kind": "hard",
        "alpha": 0.5,
        "tau": 1.0,
        "distill_token": True,
    }
    assert "hard distillation from" in (student / "train.log").read_text()
    doc = E.evaluate_run(E.load(student))  # the student alone, its prediction the mean of its two heads
    assert doc["accuracy"] == m["test_acc"] and doc["loss"] == pytest.approx(m["test_loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["missing", "shape"])
def test_a_bad_teacher_is_one_line_and_exit_2(tmp_path, bad):
    teacher = tmp_path / "nowhere"
    if bad == "shape":
        teacher, _ = fake_run(tmp_path / "cnn14", "data.image_size=[14,14]", base=CNN)
    proc = run_train("distill=hard", f"distill.teacher={teacher}", *MICRO, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vit_lab: error: distill.teacher")
    assert ("no such directory" if bad == "missing" else "chw (1, 14, 14) vs (1, 28, 28)") in lines[0]
    assert read(tmp_path / "run" / "metrics.json")["status"] == "failed"
