"""``za.bench`` and ``zooadapt bench``: fields that mean what they say, errors that are clear.

Timings are not asserted (they belong in benchmarks/); what is asserted is what each freeze
setting trains, holds and saves, which does not depend on the machine.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

import zooadapt as za
from zooadapt.report import markdown_table, save_json, save_plot

bench_module = importlib.import_module("zooadapt.bench")

SMALL = {"batch_size": 2, "input_size": 32, "warmup": 0, "steps": 2, "progress": False}


@pytest.fixture(scope="module")
def resnet_results():
    return za.bench(["resnet18"], settings=["none", "last", "layer2", "backbone"], **SMALL)


def test_each_setting_trains_what_it_says(resnet_results):
    by = {r.setting: r for r in resnet_results}
    model = za.adapt("resnet18", num_classes=10, pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    groups = za.anatomy(model).groups
    params = dict(model.named_parameters())
    count = lambda names: sum(params[n].numel() for n in names)  # noqa: E731
    assert by["none"].trainable == by["none"].total == total
    assert by["last"].trainable == count(groups["layer4"]) + count(groups["head"])
    assert by["layer2"].trainable == count(groups["layer3"] + groups["layer4"] + groups["head"])
    assert by["backbone"].trainable == count(groups["head"]) == 512 * 10 + 10


def test_optimizer_state_and_memory_shrink_with_freezing(resnet_results):
    by = {r.setting: r for r in resnet_results}
    # AdamW holds two moments (and a step count) per trainable parameter.
    for result in resnet_results:
        assert 8 * result.trainable <= result.optimizer_state_bytes <= 8 * result.trainable + 4096
    order = ["none", "layer2", "last", "backbone"]
    accounted = [by[s].accounted_bytes for s in order]
    assert accounted == sorted(accounted, reverse=True)
    assert by["backbone"].training_bytes < 0.01 * by["none"].training_bytes
    for result in resnet_results:
        assert result.step_ms > 0 and result.inference_ms > 0 and result.ratio > 0
        assert result.samples_per_s == pytest.approx(2 / (result.step_ms / 1e3))
        assert result.peak_bytes is None and result.peak_rss_bytes > 0 and not result.error


def test_a_timm_model_benches_too():
    (result,) = za.bench(["timm/resnet18"], settings=["backbone"], **SMALL)
    assert result.trainable == 512 * 10 + 10 and not result.error


def test_out_of_memory_is_reported_not_raised(monkeypatch):
    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bench_module, "_run_case", boom)
    results = za.bench(["resnet18"], settings=["none", "backbone"], **SMALL)
    assert [r.error for r in results] == [
        "out of memory at batch size 2: CUDA out of memory. Tried to allocate 2.00 GiB"
    ] * 2
    assert "out of memory at batch size 2" in markdown_table(results)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"input_size": 16, "models": ["vit_b_16"]}, "vit_b_16 cannot take 16x16 inputs"),
        ({"amp": "fp8"}, "amp must be one of"),
        ({"settings": ["no_such_group"]}, "unknown freeze group 'no_such_group'"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    models = kwargs.pop("models", ["resnet18"])
    with pytest.raises(za.ZooAdaptError, match=message):
        za.bench(models, **{**SMALL, **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(za.AdaptError, match="CUDA is not available on this machine"):
        za.bench(["resnet18"], device="cuda", **SMALL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_is_measured_per_case():
    results = za.bench(["resnet18"], settings=["none", "backbone"], device="cuda", **SMALL)
    by = {r.setting: r for r in results}
    assert by["none"].peak_bytes > by["backbone"].peak_bytes > 0


def test_json_and_plot_are_written(resnet_results, tmp_path):
    save_json(resnet_results, tmp_path / "out.json")
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert [row["setting"] for row in loaded] == ["none", "last", "layer2", "backbone"]
    pytest.importorskip("matplotlib")
    save_plot(resnet_results, tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_line_writes_a_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "zooadapt.cli", "bench", "resnet18", "--settings", "none,backbone"]
        + ["--batch-size", "2", "--input-size", "32", "--warmup", "0", "--steps", "1"]
        + ["--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "resnet18" in result.stdout and "backbone" in result.stdout
    assert [row["setting"] for row in json.loads(out.read_text())] == ["none", "backbone"]
