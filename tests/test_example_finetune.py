"""examples/finetune.py runs end to end as a script (tiny configs on the digits)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zooadapt as za

pytest.importorskip("sklearn")
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
TINY = ["--model", "resnet18", "--pretrained", "none", "--dataset", "digits", "--size", "32"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZOOADAPT_OFFLINE": "1", "WORLD_SIZE": "1"}
    command = [sys.executable, str(SCRIPT), *TINY, "--limit", "200", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def accuracy(result: subprocess.CompletedProcess[str]) -> float:
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"^test accuracy: (\d\.\d{4}) \(200 images, resnet18\)$", result.stdout, re.M)
    assert match, result.stdout
    return float(match.group(1))


def test_finetune_unfreezes_and_saves(tmp_path: Path) -> None:
    out = tmp_path / "tuned.safetensors"
    result = run("--epochs", "2", "--unfreeze-at", "1:layer4", "--out", str(out))
    assert 0.0 <= accuracy(result) <= 1.0
    assert "epoch 1: loss" in result.stdout
    model = za.load(out)
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1


def test_finetune_on_feature_cache() -> None:
    result = run("--epochs", "2", "--feature-cache", "--lr", "1e-2")
    assert 0.0 <= accuracy(result) <= 1.0
    assert "(cached features)" in result.stdout


def test_feature_cache_needs_a_frozen_backbone() -> None:
    result = run("--feature-cache", "--unfreeze-at", "1:layer4")
    assert result.returncode == 2
    assert "--feature-cache needs --freeze backbone" in result.stderr


def test_finetune_on_an_image_folder_saves_its_class_names(tmp_path: Path) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for name in ("tabby", "road", "water"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(5):
            pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(tmp_path / "photos" / name / f"{i}.png")
    out = tmp_path / "folder.safetensors"
    command = [*TINY[:4], "--data", str(tmp_path / "photos"), "--epochs", "1", "--out", str(out)]
    env = {**os.environ, "ZOOADAPT_OFFLINE": "1", "WORLD_SIZE": "1"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *command, "--size", "32", "--batch-size", "4"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(3 images, resnet18)" in result.stdout  # 20% of 15 held out
    model = za.load(out)
    assert za.labels(model) == ("road", "tabby", "water")
    assert za.data_config(model).mean == (0.485, 0.456, 0.406)


def test_finetune_with_lora_adapters_saves_them(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "lora.safetensors"
    result = run("--epochs", "1", "--lora", "2", "--lora-targets", r"layer4\.\d+\.conv2",
                 "--out", str(out))  # fmt: skip
    assert 0.0 <= accuracy(result) <= 1.0
    model = za.load(out)
    expected = {f"layer4.{b}.conv2.lora_{side}.default.weight" for b in (0, 1) for side in "AB"}
    assert set(za.adapter_names(model)) == expected
