"""`python -m vit_lab.predict`: PNGs written from test images get the in-process model's classes; conversions;
bad files are one line each while the other files are still answered."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_module
from fake_runs import compose, fake_run
from torchvision.io import write_jpeg, write_png

from vit_lab.device import autocast
from vit_lab.evaluate import load, normalise, probabilities
from vit_lab.predict import read_image

# the tests write files with torchvision.io's encoders, deprecated in torchvision 0.29 (predict silences its own)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def digits():
    """The first 20 MNIST test images (uint8, (20, 1, 28, 28)) and labels, through the lab's loader."""
    from vit_lab.config import build

    data = build(compose().data, _convert_="all").load()
    return data.test_images[:20], data.test_labels[:20]


def write_pngs(folder, images) -> list[str]:
    folder.mkdir(exist_ok=True)
    files = []
    for i, img in enumerate(images):
        files.append(str(folder / f"{i}.png"))
        write_png(img, files[-1])
    return files


def test_predict_gives_the_in_process_classes(tmp_path, digits):
    images, _ = digits
    run, _ = fake_run(tmp_path / "run")
    files = write_pngs(tmp_path / "png", images)
    proc = run_module("vit_lab.predict", str(run), *files, "--format", "json", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    loaded = load(run)
    with torch.no_grad(), autocast(loaded.device, loaded.precision):  # as predict computes (auto: bf16?)
        p = probabilities(loaded.model, loaded.model(normalise(loaded, images)))
    assert [r["file"] for r in records] == files
    assert [r["class"] for r in records] == p.argmax(1).tolist()
    assert [r["probability"] for r in records] == pytest.approx(p.max(1).values.tolist(), abs=1e-5)
    assert all(len(r["top"]) == 3 and r["top"][0] == [r["class"], r["probability"]] for r in records)

    proc = run_module("vit_lab.predict", str(run), files[0], files[1])
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].startswith(f"{files[1]}: {p[1].argmax().item()} (")


def test_conversions(tmp_path, digits):
    """RGB files become grayscale, other sizes are resized, --invert flips dark ink on light paper back."""
    img = digits[0][0]
    write_png(img.expand(3, -1, -1).contiguous(), str(tmp_path / "rgb.png"))
    assert (read_image(tmp_path / "rgb.png", (1, 28, 28)).int() - img.int()).abs().max() <= 1
    big = img.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 56x56, each pixel doubled
    write_png(big, str(tmp_path / "big.png"))
    small = read_image(tmp_path / "big.png", (1, 28, 28))
    assert small.shape == (1, 28, 28) and (small.int() - img.int()).abs().float().mean() < 8  # antialiasing blurs
    assert torch.corrcoef(torch.stack([small.flatten().float(), img.flatten().float()]))[0, 1] > 0.98
    write_png(255 - img, str(tmp_path / "paper.png"))
    assert torch.equal(read_image(tmp_path / "paper.png", (1, 28, 28), invert=True), img)
    write_png(img, str(tmp_path / "gray.png"))
    assert read_image(tmp_path / "gray.png", (3, 28, 28)).shape == (3, 28, 28)  # gray -> RGB for 3-channel models
    write_jpeg(img.expand(3, -1, -1).contiguous(), str(tmp_path / "d.jpg"), quality=95)
    assert (read_image(tmp_path / "d.jpg", (1, 28, 28)).int() - img.int()).abs().float().mean() < 4


def test_bad_files_are_one_line_each_and_the_rest_answered(tmp_path, digits):
    run, _ = fake_run(tmp_path / "run")
    good = write_pngs(tmp_path / "png", digits[0][:2])
    (tmp_path / "text.png").write_text("not an image")
    files = [good[0], str(tmp_path / "text.png"), str(tmp_path / "missing.png"), good[1]]
    proc = run_module("vit_lab.predict", str(run), *files)
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == [good[0], good[1]]
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in proc.stderr
    assert "text.png: not a readable PNG" in errors[0] and "missing.png: no such file" in errors[1]

    two, _ = fake_run(tmp_path / "two", "data.channels=2", "data.mean=[0.5,0.5]", "data.std=[0.25,0.25]")
    proc = run_module("vit_lab.predict", str(two), good[0], "--format", "json")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "has 1 channels, but the model takes 2-channel images" in proc.stderr
    assert "has 1 channels" in json.loads(proc.stdout)[0]["error"]

    proc = run_module("vit_lab.predict", str(tmp_path / "png"), good[0])  # not a run folder
    assert proc.returncode == 2 and "not a run directory" in proc.stderr and proc.stdout == ""
