"""MONAI's classification networks through the ``monai`` zoo, on volumes.

Breadth on the meta device (every network of the zoo), behaviour on real forward passes
of small volumes (16^3 to 32^3) with random weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import zooadapt as za
from zooadapt.cli import main
from zooadapt.memory import measure_step

monai = pytest.importorskip("monai")
from zooadapt_plugins.monai import BUILDERS  # noqa: E402

FAMILIES = {
    "densenet": "monai.densenet",
    "resnet": "monai.resnet",
    "senet": "monai.senet",
    "seresne": "monai.senet",
    "efficientnet": "monai.efficientnet",
    "vit": "monai.vit",
}


def _family(arch: str) -> str:
    return next(family for prefix, family in FAMILIES.items() if arch.startswith(prefix))


def volume(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_every_network_is_built_at_size_grouped_and_frozen(arch):
    model = za.adapt(
        f"monai/{arch}", num_classes=3, in_chans=2, pretrained=False, device="meta",
        freeze="backbone",
    )  # fmt: skip
    anat = za.anatomy(model)
    assert (anat.family, anat.num_classes, anat.in_chans) == (_family(arch), 3, 2)
    assert anat.spatial_dims == 3 and model.get_submodule(anat.stem).weight.dim() == 5
    assert len(anat.groups) >= 5 and list(anat.groups)[-1] == "head"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(anat.groups["head"])


def test_in_chans_and_num_classes_reach_monais_own_arguments():
    model = za.adapt("monai/densenet121", num_classes=3, in_chans=2, pretrained=False)
    torch.manual_seed(0)
    same = monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=2, out_channels=3)
    assert type(model) is type(same)
    assert model.features.conv0.in_channels == 2 and model.class_layers.out.out_features == 3
    direct = za.adapt("monai/resnet18", pretrained=False, n_input_channels=4, num_classes=5)
    assert (za.anatomy(direct).in_chans, za.anatomy(direct).num_classes) == (4, 5)


SMALL = {
    "densenet121": ({}, 32),
    "resnet10": ({}, 16),
    "seresnet50": ({"layers": (1, 1, 1, 1)}, 32),
    "efficientnet-b0": ({}, 32),
    "vit": ({"img_size": 16, "patch_size": 8, "hidden_size": 48, "mlp_dim": 64,
             "num_layers": 2, "num_heads": 4}, 16),
}  # fmt: skip


def _small(arch: str, **adapt) -> tuple[torch.nn.Module, int]:
    kwargs, side = SMALL[arch]
    torch.manual_seed(0)
    return za.adapt(f"monai/{arch}", pretrained=False, **adapt, **kwargs), side


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_a_frozen_step_leaves_every_frozen_tensor_and_bn3d_statistic_bit_identical(arch):
    model, side = _small(arch, num_classes=3, in_chans=2, freeze="backbone")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = za.optimizer(model, "adamw", lr=1e-2)
    model.train()  # the frozen BatchNorm3d layers stay in eval mode
    logits = model(volume(2, 2, side, side, side))
    logits = logits[0] if isinstance(logits, tuple) else logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    optimizer.step()
    after = model.state_dict()
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) or arch == "vit"
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor) != (name in trainable), name


@pytest.mark.parametrize(("arch", "batch"), [("densenet121", 2), ("densenet121", 4),
                                              ("resnet10", 2), ("resnet10", 4)])  # fmt: skip
def test_the_memory_estimate_equals_a_measured_cpu_step(arch, batch):
    model, side = _small(arch, num_classes=3, in_chans=2, freeze=2)
    estimate = za.estimate_memory(model, batch_size=batch, input_size=side)
    assert estimate.activations > 0
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    measured = measure_step(model, volume(batch, 2, side, side, side), optimizer)
    fields = ("params", "grads", "optimizer_state", "activations")
    assert {f: getattr(measured, f) for f in fields} == {f: getattr(estimate, f) for f in fields}


def test_save_load_and_a_dataparallel_checkpoint_give_the_same_logits(tmp_path: Path):
    model, side = _small("densenet121", num_classes=3, in_chans=2)
    x = volume(2, 2, side, side, side, seed=4)
    with torch.no_grad():
        expected = model.eval()(x)
    za.save(model, tmp_path / "dense.safetensors")
    loaded = za.load(tmp_path / "dense.safetensors").eval()
    wrapped = {
        f"module.{k}": v for k, v in torch.nn.DataParallel(model).module.state_dict().items()
    }
    torch.save(wrapped, tmp_path / "dp.pth")
    from_dp = za.adapt("monai/densenet121", pretrained=tmp_path / "dp.pth").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(from_dp(x), expected, rtol=0, atol=0)
    assert za.anatomy(from_dp).in_chans == 2 and za.anatomy(from_dp).num_classes == 3


@pytest.mark.parametrize(
    ("in_chans", "stem_init", "feed"),
    [
        (1, "sum", lambda x: x[:, :1]),  # a volume whose channels are equal
        (4, "zeros", lambda x: torch.cat([x, volume(2, 2, 16, 16, 16, seed=9)], 1)),
        (4, "repeat", lambda x: x.repeat(1, 2, 1, 1, 1)),
        (2, [1, 0], lambda x: x.flip(1)),
    ],
)
def test_every_stem_init_on_a_conv3d_stem_keeps_the_logits(in_chans, stem_init, feed):
    original, side = _small("resnet10", in_chans=2, num_classes=3)
    model = za.adapt(copy.deepcopy(original), in_chans=in_chans, stem_init=stem_init)
    x = volume(2, 1, side, side, side, seed=5).expand(-1, 2, -1, -1, -1)
    x = x if stem_init == "sum" else volume(2, 2, side, side, side, seed=6)
    with torch.no_grad():
        expected = original.double().eval()(x.double())
        actual = model.double().eval()(feed(x).double())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)
    assert za.data_config(model).input_size == (in_chans, 96, 96, 96)


def test_the_feature_cache_and_bench_take_volumes():
    model, side = _small("resnet10", num_classes=3, in_chans=2, freeze="backbone")
    loader = [(volume(2, 2, side, side, side, seed=s), torch.tensor([0, 1])) for s in (1, 2)]
    cache = za.FeatureCache(model, loader)
    features, _ = cache.tensors()
    with torch.no_grad():
        expected = model.eval()(torch.cat([x for x, _ in loader]))
        torch.testing.assert_close(cache.classifier(model)(features), expected)
    results = za.bench(model, settings=["backbone"], batch_size=2, input_size=side, steps=1)
    assert results[0].setting == "backbone" and results[0].step_ms > 0


def test_the_vit_is_called_for_its_logits_alone():
    model, side = _small("vit", num_classes=3, in_chans=2)
    output = za.predict(model, volume(1, 2, side, side, side), top_k=1)
    assert output[0][0].index in range(3)
    assert za.anatomy(model).input_size == (16, 16, 16)


def test_the_cli_adapts_and_estimates_volumes(tmp_path: Path, capsys):
    out = tmp_path / "dense.safetensors"
    argv = ["adapt", "monai/densenet121", "--num-classes", "3", "--in-chans", "2"]
    assert main([*argv, "--pretrained", "none", "--out", str(out)]) == 0
    capsys.readouterr()
    assert za.anatomy(za.load(out)).in_chans == 2
    memory = ["memory", "monai/densenet121", "--settings", "none,backbone", "--batch-size", "2"]
    assert main([*memory, "--input-size", "32,32,32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["setting"] for row in rows] == ["none", "backbone"]
    assert rows[0]["total"] > rows[1]["total"]


# -- 2-D to 3-D inflation ------------------------------------------------------------------

#: torchvision's ResNet as MONAI builds it: B shortcuts without bias, a strided stem.
TORCHVISION_RESNET = {"shortcut_type": "B", "bias_downsample": False, "conv1_t_stride": 2}


def _torchvision_file(tmp_path: Path, arch: str) -> tuple[torch.nn.Module, Path]:
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.get_model(arch).eval()
    torch.save(model.state_dict(), tmp_path / f"{arch}.pth")
    return model, tmp_path / f"{arch}.pth"


def _constant_depth(image: torch.Tensor, depth: int) -> torch.Tensor:
    return image.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


@pytest.mark.parametrize(
    ("arch", "kwargs"), [("densenet121", {}), ("resnet18", TORCHVISION_RESNET)]
)
def test_center_inflation_reproduces_the_2d_logits_on_a_depth_constant_volume(
    tmp_path, arch, kwargs
):
    """Every kernel in its centre slice: each depth slice is the 2-D network's input."""
    flat, file = _torchvision_file(tmp_path, arch)
    model = za.adapt(f"monai/{arch}", pretrained=file, inflate="center", **kwargs).eval()
    image = volume(2, 3, 32, 32, seed=7)
    with torch.no_grad():
        expected = flat(image)
        torch.testing.assert_close(
            model(_constant_depth(image, 32)), expected, rtol=1e-4, atol=1e-5
        )


def test_spread_inflation_gives_the_2d_stem_output_away_from_the_depth_borders(tmp_path):
    flat, file = _torchvision_file(tmp_path, "densenet121")
    model = za.adapt("monai/densenet121", num_classes=3, in_chans=3, pretrained=False)
    report = za.load_weights(model, file, inflate="spread")
    convs = [k for k, v in flat.state_dict().items() if v.dim() == 4]
    assert len(report.inflated) == len(convs) == 120  # every conv, under MONAI's names
    assert all(model.state_dict()[k].dim() == 5 for k in report.inflated)
    assert "features.conv0.weight" in report.inflated and "inflated" in str(report)
    image = volume(1, 3, 32, 32, seed=8)
    with torch.no_grad():
        flat_out = flat.features.conv0(image)  # kernel 7, stride 2, padding 3
        deep_out = model.features.conv0(_constant_depth(image, 16))
    interior = range(2, 6)  # output slices whose 7 input slices are all inside the volume
    for z in interior:
        torch.testing.assert_close(deep_out[:, :, z], flat_out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(deep_out[:, :, 0], flat_out, atol=1e-3)  # the border differs


def test_inflation_adapts_the_stem_channels_too_and_is_refused_without_inflate(tmp_path):
    flat, file = _torchvision_file(tmp_path, "resnet18")
    with pytest.raises(za.CheckpointError, match="inflate='spread'"):
        za.adapt("monai/resnet18", pretrained=file, **TORCHVISION_RESNET)
    with pytest.raises(za.AdaptError, match="inflate='middle' is not one of"):
        za.adapt("monai/resnet18", pretrained=file, inflate="middle")
    gray = za.adapt(
        "monai/resnet18", pretrained=file, in_chans=1, num_classes=3, inflate="center",
        **TORCHVISION_RESNET,
    ).eval()  # fmt: skip
    report = za.load_report(gray)
    kernels = [k for k, t in flat.state_dict().items() if t.dim() == 4]
    assert sorted(report.inflated) == sorted(kernels) and report.adapted == ["conv1.weight"]
    assert sorted(report.dropped) == ["fc.bias", "fc.weight"] and report.ok
    image = volume(2, 1, 32, 32, seed=9)
    with torch.no_grad():  # the head is new: compare the features, gray as RGB
        features = torch.nn.Sequential(*list(flat.children())[:-1])(image.expand(-1, 3, -1, -1))
        gray.fc = torch.nn.Identity()
        torch.testing.assert_close(
            gray(_constant_depth(image, 16)), features.flatten(1), rtol=1e-4, atol=1e-5
        )


def test_a_registry_reference_is_inflated_from_the_zoos_cached_weights(
    tmp_path, monkeypatch, hf_hub, cache_repo
):
    """``pretrained="timm/resnet18.a1_in1k"``: timm's cached weights, inflated."""
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_hub))
    torch.manual_seed(2)
    flat = timm.create_model("resnet18.a1_in1k").eval()
    (tmp_path / "timm").mkdir()
    save_file(flat.state_dict(), tmp_path / "timm" / "model.safetensors")
    cache_repo("timm/resnet18.a1_in1k", tmp_path / "timm")
    model = za.adapt(
        "monai/resnet18", pretrained="timm/resnet18.a1_in1k", inflate="center",
        **TORCHVISION_RESNET,
    ).eval()  # fmt: skip
    image = volume(2, 3, 32, 32, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(
            model(_constant_depth(image, 16)), flat(image), rtol=1e-4, atol=1e-5
        )


# -- MedicalNet ----------------------------------------------------------------------------


def _publish_medicalnet(tmp_path: Path, cache_repo, depth: int, filename: str):
    """A MedicalNet-layout file: DataParallel keys, a segmentation head, under state_dict."""
    from zooadapt_plugins.monai import medicalnet_arguments

    torch.manual_seed(3)
    net = getattr(monai.networks.nets, f"resnet{depth}")(**medicalnet_arguments(depth))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.rand(32, 512, 3, 3, 3)
    folder = tmp_path / "medicalnet"
    folder.mkdir()
    torch.save({"state_dict": state}, folder / filename)
    cache_repo(f"TencentMedicalNet/MedicalNet-Resnet{depth}", folder)
    return net


def test_medicalnet_weights_load_headless_then_get_a_head_and_channels(tmp_path, cache_repo):
    net = _publish_medicalnet(tmp_path, cache_repo, 10, "resnet_10_23dataset.pth")
    model = za.adapt("monai/resnet10", num_classes=3, in_chans=2, freeze="backbone")
    assert model.fc.out_features == 3 and za.anatomy(model).in_chans == 2
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    for name, tensor in net.state_dict().items():
        if name != "conv1.weight":
            assert torch.equal(model.state_dict()[name], tensor), name
    torch.testing.assert_close(model.conv1.weight, net.conv1.weight.repeat(1, 2, 1, 1, 1) / 2)
    with pytest.raises(za.AdaptError, match="MedicalNet weights need"):
        za.adapt("monai/resnet10", shortcut_type="A")
    features = torch.nn.Sequential(*list(model.children())[:-1])
    x = volume(2, 1, 16, 16, 16, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(
            features.eval()(x.expand(-1, 2, -1, -1, -1)).flatten(1), net.eval()(x)
        )


def test_missing_medicalnet_weights_name_the_repo_file_and_cache(hf_hub):
    with pytest.raises(za.WeightsNotAvailableError) as missing:
        za.adapt("monai/resnet50", num_classes=3)
    message = str(missing.value)
    for part in ("TencentMedicalNet/MedicalNet-Resnet50", "resnet_50_23dataset.pth", str(hf_hub)):
        assert part in message
