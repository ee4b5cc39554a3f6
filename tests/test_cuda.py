"""CUDA paths; they run wherever a GPU is present (CI has none)."""

from __future__ import annotations

import pytest
import torch

import zooadapt as za

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_adapt_to_cuda_and_train_one_frozen_step():
    model = za.adapt(
        "resnet18", num_classes=3, in_chans=1, pretrained=False, device="cuda", freeze="backbone"
    )
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    opt = za.optimizer(model, lr=1e-3)
    before = model.layer1[0].bn1.running_mean.clone()
    model.train()
    loss = model(torch.rand(2, 1, 32, 32, device="cuda")).sum()
    loss.backward()
    opt.step()
    assert torch.equal(model.layer1[0].bn1.running_mean, before)


def test_cpu_checkpoint_loads_into_a_cuda_model(tmp_path):
    source = za.adapt("resnet18", num_classes=3, pretrained=False)
    za.save(source, tmp_path / "m.safetensors")
    target = za.adapt("resnet18", num_classes=3, pretrained=False, device="cuda")
    za.load_weights(target, tmp_path / "m.safetensors")
    assert torch.equal(target.fc.weight.cpu(), source.fc.weight)
    assert za.load(tmp_path / "m.safetensors", device="cuda").fc.weight.is_cuda


def test_predict_on_cuda_matches_the_cpu_and_runs_in_bf16():
    import copy

    torch.manual_seed(0)
    cpu = za.adapt("resnet18", in_chans=1, classes=["a", "b", "c"], pretrained=False)
    gpu = za.adapt(copy.deepcopy(cpu), device="cuda")
    images = [torch.rand(1, 80, 96) for _ in range(3)]
    on_cpu, on_gpu = za.predict(cpu, images, top_k=3), za.predict(gpu, images, top_k=3)
    for want, got in zip(on_cpu, on_gpu, strict=True):
        assert [p.probability for p in got] == pytest.approx(
            [p.probability for p in want], abs=1e-3
        )
    half = za.predict(gpu.to(torch.bfloat16), images, top_k=3)
    assert all(sum(p.probability for p in ranked) == pytest.approx(1, abs=1e-2) for ranked in half)
