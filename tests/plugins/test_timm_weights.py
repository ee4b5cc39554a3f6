"""timm names, pretrained weights from the Hugging Face cache, and local checkpoints.

No network: a private Hugging Face cache is filled with checkpoints of randomly
initialised models, laid out the way ``huggingface_hub`` writes them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants
from safetensors.torch import save_file

import zooadapt as za


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo: str, filename: str, state: dict) -> Path:
    """Store ``state`` as huggingface_hub does: a snapshot per commit, ``refs/main``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    file = folder / "snapshots" / commit / filename
    file.parent.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in state.items()}
    if filename.endswith(".safetensors"):
        save_file(state, file)
    else:
        torch.save(state, file)
    return file


def _random_state(arch: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(arch).state_dict()


# -- names -------------------------------------------------------------------------------


def test_names_resolve_by_zoo_order_and_qualified_names_win():
    assert "torchvision/resnet18" in za.list_models("*resnet18")
    assert "timm/resnet18" in za.list_models("*resnet18")
    unqualified = za.adapt("resnet18", pretrained=False, device="meta")
    assert type(unqualified).__module__.startswith("torchvision")
    qualified = za.adapt("timm/resnet18", pretrained=False, device="meta")
    assert type(qualified).__module__.startswith("timm")
    only_in_timm = za.adapt("convnext_atto", pretrained=False, device="meta")
    assert za.anatomy(only_in_timm).family == "timm.convnext"


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(za.ModelNotFoundError, match="timm/convnext_atto"):
        za.adapt("timm/convnext_attto", pretrained=False)


# -- pretrained weights from the Hugging Face cache ---------------------------------------


def test_default_tag_loads_from_the_hub_cache_through_timm(hf_cache):
    state = _random_state("resnet18")
    put_in_cache(hf_cache, "timm/resnet18.a1_in1k", "model.safetensors", state)
    model = za.adapt("timm/resnet18", num_classes=10, in_chans=1)
    adapted = model.state_dict()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    for key, tensor in state.items():
        if key == "conv1.weight":  # "sum", folded from timm's per-channel statistics
            pixel = tensor / std
            torch.testing.assert_close(adapted[key], pixel.sum(1, keepdim=True) * std.mean())
            offset = (pixel.sum(1) * mean.mean() - (pixel * mean).sum(1)).sum((1, 2))
            torch.testing.assert_close(adapted["conv1.bias"], offset)
        elif not key.startswith("fc."):
            assert torch.equal(adapted[key], tensor), key
    assert adapted["fc.weight"].shape == (10, 512)
    assert "state_dict" not in model.pretrained_cfg, "the checkpoint is not kept alive"


def test_name_tag_selects_weights_and_a_bin_file_is_found(hf_cache):
    state = _random_state("resnet18")
    put_in_cache(hf_cache, "timm/resnet18.tv_in1k", "pytorch_model.bin", state)
    model = za.adapt("timm/resnet18.tv_in1k")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_missing_weights_name_the_hub_repo_file_and_cache(hf_cache, offline):
    put_in_cache(hf_cache, "timm/resnet18.a1_in1k", "model.safetensors", _random_state("resnet18"))
    with pytest.raises(za.WeightsNotAvailableError) as caught:
        za.adapt("timm/resnet18.a2_in1k")
    message = str(caught.value)
    assert "Hugging Face Hub repo timm/resnet18.a2_in1k" in message
    assert "model.safetensors or pytorch_model.bin" in message
    assert str(hf_cache / "models--timm--resnet18.a2_in1k") in message
    assert "https://huggingface.co/timm/resnet18.a2_in1k/resolve/main/model.safetensors" in message
    assert "pretrained='a1_in1k'" in message, "names the weights that are cached"


def test_download_falls_back_to_the_bin_file(hf_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    state = _random_state("resnet18")
    asked = []

    def fake_download(repo, filename, revision=None):
        asked.append(filename)
        if filename.endswith(".safetensors"):
            raise EntryNotFoundError("no safetensors in this repo")
        return str(put_in_cache(hf_cache, repo, filename, state))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    # the hub counts as reachable: no connection is attempted from the tests
    monkeypatch.setattr("zooadapt._core.pretrained.unreachable", lambda url, timeout=3.0: "")
    model = za.adapt("timm/resnet18.a3_in1k")
    assert asked == ["model.safetensors", "pytorch_model.bin"]
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_a_timm_model_without_pretrained_weights_says_so():
    with pytest.raises(za.WeightsNotAvailableError, match="no default weights"):
        za.adapt("timm/levit_384_s8")


# -- local checkpoints through zooadapt's loader ------------------------------------------


def test_a_torchvision_resnet_checkpoint_loads_into_timm_resnet(
    tmp_path, logits, normalise, equal_means
):
    torch.manual_seed(0)
    original = torchvision.models.resnet18().eval()
    path = tmp_path / "torchvision_resnet18.pth"
    torch.save(original.state_dict(), path)
    model = za.adapt("timm/resnet18", pretrained=path, **equal_means)
    za.adapt(model, in_chans=1)
    config = za.data_config(model)
    gray = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    expected = logits(original, normalise(gray.expand(-1, 3, -1, -1), **equal_means))
    actual = logits(model, normalise(gray, config.mean, config.std))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def test_original_convnext_checkpoint_is_renamed_by_the_rules(tmp_path, convnext_original_key):
    state = _random_state("convnext_atto")
    path = tmp_path / "convnext_atto_original.pth"
    torch.save({convnext_original_key(k): v for k, v in state.items()}, path)
    model = timm.create_model("convnext_atto")
    report = za.load_weights(model, path)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.renamed) == len(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# -- headless models ----------------------------------------------------------------------


def test_a_headless_model_gets_a_real_head_on_its_device_and_dtype():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0).double()
    assert isinstance(model.head, torch.nn.Identity)
    za.adapt(model, num_classes=5)
    assert isinstance(model.head, torch.nn.Linear) and model.head.weight.dtype == torch.float64
    out = model.eval()(torch.rand(1, 3, 224, 224, dtype=torch.float64))
    assert out.shape == (1, 5)
    assert za.anatomy(model).groups["head"] == ["head.weight", "head.bias"]


def test_a_failed_adapt_restores_the_headless_model(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong)
    with pytest.raises(za.CheckpointError):
        za.adapt(model, num_classes=5, pretrained=wrong)
    assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
    assert model.state_dict().keys() == before.keys()


def test_an_encoder_without_classifier_refuses_num_classes():
    with pytest.raises(za.AdaptError, match="has no classifier head"):
        za.adapt("timm/mobilenetv5_300m_enc", num_classes=3, pretrained=False, device="meta")


# -- freezing by timm stages and layer-wise lr decay --------------------------------------


def test_freeze_by_stage_and_layer_decay_follow_timm_stages():
    model = za.adapt("timm/convnext_atto", num_classes=4, pretrained=False)
    assert list(za.anatomy(model).groups) == [
        "stem",
        "stages.0",
        "stages.1",
        "stages.2",
        "stages.3",
        "neck",
        "head",
    ]
    za.freeze(model, "stages.1")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.match(r"stages\.[23]\.|head\.", n) for n in trainable)
    groups = za.param_groups(model, lr=1e-3, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"stages.2": 1e-3 / 8, "stages.3": 1e-3 / 4, "neck": 1e-3 / 2, "head": 1e-3}
