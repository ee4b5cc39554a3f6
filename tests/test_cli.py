"""The ``zooadapt`` console script, driven in a subprocess as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zooadapt as za

#: The script installed beside this interpreter (the venv's), else the one on PATH.
BESIDE = Path(sys.executable).with_name("zooadapt")
EXE = str(BESIDE) if BESIDE.exists() else shutil.which("zooadapt")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert EXE, "the zooadapt console script is installed by `pip install -e .`"
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=120)


def test_adapt_prints_the_summary():
    result = run(
        "adapt", "resnet18", "--num-classes", "10", "--in-chans", "1", "--pretrained", "none"
    )
    assert result.returncode == 0, result.stderr
    assert "family 'resnet'" in result.stdout
    head = next(line for line in result.stdout.splitlines() if line.startswith("head "))
    assert head.split()[1] == "5,130"  # 512 * 10 + 10


def test_errors_are_one_line_and_exit_non_zero():
    result = run("adapt", "resnet1888", "--pretrained", "none")
    assert result.returncode == 1
    assert result.stderr.startswith("zooadapt: error: unknown model 'resnet1888'")
    assert "torchvision/resnet18" in result.stderr and "Traceback" not in result.stderr


def test_list_counts_and_filters():
    result = run("list", "vit_b_*")
    assert result.stdout.split() == ["torchvision/vit_b_16", "torchvision/vit_b_32"]
    assert "2 models" in result.stderr


def test_info_shows_family_head_stem_and_groups():
    result = run("info", "densenet121")
    assert result.returncode == 0, result.stderr
    assert "family 'densenet'" in result.stdout and "stem: features.conv0" in result.stdout
    assert "block4" in result.stdout


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_plugins_lists_every_builtin(flag):
    result = run("plugins", *flag)
    assert result.returncode == 0, result.stderr
    if flag:
        data = json.loads(result.stdout)
        names = {p["name"] for p in data["plugins"]}
        assert {"torchvision", "resnet", "generic"} <= names and data["failed"] == []
        resnet = next(p for p in data["plugins"] if p["name"] == "resnet")
        assert resnet["families"] == ["resnet"] and resnet["hooks"] == ["zooadapt_families"]
    else:
        assert "torchvision" in result.stdout and "googlenet, inception_v3" in result.stdout


def test_memory_prints_each_setting_and_the_largest_batch_in_a_budget():
    result = run("memory", "resnet18", "--freeze", "none,backbone", "--input-size", "64")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "none" in lines[0] and "backbone" in lines[1]

    budget = run(
        "memory",
        "resnet18",
        "--freeze",
        "none,backbone",
        "--input-size",
        "64",
        "--budget",
        "1GiB",
        "--json",
    )
    rows = json.loads(budget.stdout)
    full, frozen = (row["max_batch_size"] for row in rows)
    assert 0 < full < frozen
    for row in rows:
        per_batch = za.estimate_memory(
            "resnet18",
            batch_size=row["max_batch_size"],
            input_size=64,
            freeze=None if row["freeze"] == "none" else "backbone",
        )
        assert per_batch.total <= 2**30


def test_memory_and_bench_reject_bad_input_in_one_line():
    cases = [
        (("memory", "resnet18", "--budget", "24 parsecs"), "24 parsecs"),
        (("memory", "resnet18", "--batch-size", "0"), "batch_size"),
        (("bench", "resnet18", "--device", "cuda"), "CUDA is not available"),
        (("bench", "vit_b_16", "--input-size", "100"), "vit_b_16 cannot take 100x100"),
    ]
    for args, message in cases:
        if args[-1] == "cuda" and torch.cuda.is_available():
            continue
        result = run(*args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
