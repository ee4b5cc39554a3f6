"""The ``hf`` zoo offline: tiny random-config models written in the Hugging Face cache layout.

Every test works in a temporary ``HF_HOME`` with downloads disabled, so names resolve
through the same cache files a real ``hf download`` writes (sha256-named blobs, snapshot
links, ``refs/main``).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

import zooadapt as za
from zooadapt._core.names import resolve_name
from zooadapt._core.pretrained import available_weights
from zooadapt.cli import main
from zooadapt.memory import measure_step

transformers = pytest.importorskip("transformers")
from hf_models import NAMES, tiny_resnet, tiny_vit  # noqa: E402

VIT = "tiny-org/vit-tiny"
RESNET = "tiny-org/resnet-tiny"
PROCESSOR = {"image_mean": [0.45, 0.45, 0.45], "image_std": [0.2, 0.25, 0.3], "resample": 3}


@pytest.fixture
def published(cache_repo, tmp_path: Path) -> dict[str, torch.nn.Module]:
    """A tiny ViT (squash resize) and ResNet (ConvNeXt-style crop_pct) in the cache."""
    models = {VIT: tiny_vit(), RESNET: tiny_resnet()}
    vit = transformers.ViTImageProcessor(size={"height": 32, "width": 32}, **PROCESSOR)
    resnet = transformers.ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.875, **PROCESSOR
    )
    for repo, processor in ((VIT, vit), (RESNET, resnet)):
        models[repo].save_pretrained(tmp_path / repo)
        processor.save_pretrained(tmp_path / repo)
        cache_repo(repo, tmp_path / repo)
    return models


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.double().eval()(pixel_values=x).logits


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- names and the cache ---------------------------------------------------------------


def test_the_cached_classifiers_are_listed_and_nothing_else(published, cache_repo, tmp_path):
    backbone = tmp_path / "backbone"
    transformers.ViTModel(published[VIT].config).save_pretrained(backbone)
    cache_repo("tiny-org/vit-backbone", backbone)  # not a classifier
    timm_like = tmp_path / "timm"
    timm_like.mkdir()
    (timm_like / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    cache_repo("timm/resnet18.tv_in1k", timm_like)
    assert za.list_models("hf/*") == [f"hf/{RESNET}", f"hf/{VIT}"]
    assert za.list_models("vit-*") == []  # the bare name is the repository id
    assert za.list_models("tiny-org/vit*") == [f"hf/{VIT}"]


def test_a_cached_repository_loads_its_weights_labels_and_processor(published):
    model = za.adapt(f"hf/{VIT}")
    assert type(model) is transformers.ViTForImageClassification
    x = rand(2, 3, 32, 32)
    torch.testing.assert_close(hf_logits(model, x), hf_logits(published[VIT], x), rtol=0, atol=0)
    assert za.labels(model) == ("cat", "dog", "owl", "fox")
    config = za.data_config(model)
    assert (config.mean, config.std) == ((0.45,) * 3, (0.2, 0.25, 0.3))
    assert (config.crop_mode, config.resize, config.interpolation) == (
        "squash",
        (32, 32),
        "bicubic",
    )
    assert za.anatomy(model).input_size == (32, 32)
    resnet = za.data_config(za.adapt(f"hf/{RESNET}", device="meta"))
    assert (resnet.crop_mode, resnet.resize, resnet.crop_pct) == ("center", (36,), 0.875)


def test_a_cached_revision_is_chosen_by_pretrained(published, cache_repo, tmp_path):
    torch.manual_seed(5)
    newer = transformers.ViTForImageClassification(published[VIT].config).eval()
    newer.save_pretrained(tmp_path / "v2")
    cache_repo(VIT, tmp_path / "v2", commit="b" * 40, ref="v2")
    ref = resolve_name(f"hf/{VIT}", za.get_plugin_manager())
    assert [(w.tag, w.default, w.cached) for w in available_weights(ref)] == [
        ("main", True, True),
        ("v2", False, True),
    ]
    x = rand(2, 3, 32, 32)
    chosen = za.adapt(f"hf/{VIT}", pretrained="v2")
    torch.testing.assert_close(hf_logits(chosen, x), hf_logits(newer, x), rtol=0, atol=0)


def test_an_unqualified_listed_name_and_an_unknown_one(published):
    assert za.anatomy(za.adapt(VIT, device="meta")).family == "hf"
    with pytest.raises(za.ModelNotFoundError, match="no zoo is named 'nobody'"):
        za.adapt("nobody/vit", device="meta")
    with pytest.raises(za.ModelNotFoundError, match="not a Hugging Face repository id"):
        za.adapt("hf/just-a-name", device="meta")


def test_offline_a_missing_repository_names_the_repo_files_and_cache(published, hf_hub):
    with pytest.raises(za.WeightsNotAvailableError) as missing:
        za.adapt("hf/nobody/missing")
    message = str(missing.value)
    for part in ("nobody/missing", "config.json", "model.safetensors", "offline", str(hf_hub)):
        assert part in message
    with pytest.raises(za.WeightsNotAvailableError, match="config.json is not in the Hugging"):
        za.adapt("hf/nobody/missing", device="meta")


def test_cached_config_without_weights_says_where_the_weights_go(published, hf_hub):
    snapshot = next((hf_hub / f"models--{VIT.replace('/', '--')}" / "snapshots").iterdir())
    (snapshot / "model.safetensors").unlink()
    assert za.anatomy(za.adapt(f"hf/{VIT}", device="meta")).num_classes == 4
    with pytest.raises(za.WeightsNotAvailableError) as missing:
        za.adapt(f"hf/{VIT}")
    assert f"cache dir: {snapshot}" in str(missing.value)


def test_a_corrupt_cached_blob_is_refused_by_its_sha256(published, hf_hub):
    snapshot = next((hf_hub / f"models--{VIT.replace('/', '--')}" / "snapshots").iterdir())
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(za.CheckpointError, match="sha256"):
        za.adapt(f"hf/{VIT}")


def test_without_transformers_the_zoo_says_how_to_install_it(published, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert za.list_models("hf/*")  # listing reads JSON alone
    with pytest.raises(za.AdaptError, match=r"pip install 'zooadapt\[hf\]'"):
        za.adapt(f"hf/{VIT}", device="meta")


# -- adaptation through names ----------------------------------------------------------


@pytest.mark.parametrize("repo", [VIT, RESNET])
def test_sum_folds_the_processor_statistics_into_the_pretrained_filters(
    published, repo, assert_same_logits, normalise
):
    gray = za.adapt(f"hf/{repo}", in_chans=1)
    assert gray.config.num_channels == 1
    image = rand(2, 1, 32, 32)
    config = za.data_config(gray)
    expected = hf_logits(
        published[repo], normalise(image.expand(-1, 3, -1, -1), PROCESSOR["image_mean"],
                                   PROCESSOR["image_std"])
    )  # fmt: skip
    assert_same_logits(hf_logits(gray, normalise(image, config.mean, config.std)), expected)


@pytest.mark.parametrize(
    ("in_chans", "stem_init", "feed"),
    [
        (4, "zeros", lambda x: torch.cat([x, rand(2, 1, 32, 32, seed=9)], 1)),
        (6, "repeat", lambda x: x.repeat(1, 2, 1, 1)),  # each filter shared by two copies
        (3, [2, 1, 0], lambda x: x.flip(1)),
    ],
)
def test_every_other_stem_init_keeps_the_rgb_logits(
    published, in_chans, stem_init, feed, assert_same_logits
):
    model = za.adapt(f"hf/{VIT}", in_chans=in_chans, stem_init=stem_init)
    image = rand(2, 3, 32, 32, seed=2)
    assert model.config.num_channels == in_chans
    assert_same_logits(hf_logits(model, feed(image)), hf_logits(published[VIT], image))


def test_classes_keep_the_pretrained_rows_named_by_id2label(published):
    model = za.adapt(f"hf/{VIT}", classes=["owl", "cat", "newt"])
    original = published[VIT].classifier
    assert torch.equal(model.classifier.weight[:2], original.weight[[2, 0]])
    assert torch.equal(model.classifier.bias[:2], original.bias[[2, 0]])
    assert model.config.id2label == {0: "owl", 1: "cat", 2: "newt"}
    assert model.config.num_labels == 3 and za.labels(model) == ("owl", "cat", "newt")


def test_a_frozen_backbone_step_changes_the_head_alone(published):
    model = za.adapt(f"hf/{RESNET}", num_classes=3, in_chans=1, freeze="backbone")
    before = {n: p.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    optimizer = za.optimizer(model, "adamw", lr=1e-2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.1.weight", "classifier.1.bias"}
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in trainable}
    model.train()
    labels = torch.tensor([0, 1, 2, 0])
    model(pixel_values=torch.rand(4, 1, 32, 32), labels=labels).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != (name in trainable), name
    assert all(torch.equal(dict(model.named_buffers())[n], b) for n, b in buffers.items())


def test_the_memory_estimate_equals_a_measured_step(published):
    model = za.adapt(f"hf/{VIT}", num_classes=3, in_chans=1, freeze=2)
    estimate = za.estimate_memory(model, batch_size=2)  # the input size from config.image_size
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    measured = measure_step(model, torch.rand(2, 1, 32, 32), optimizer)
    fields = ("params", "grads", "optimizer_state", "activations")
    assert {f: getattr(measured, f) for f in fields} == {f: getattr(estimate, f) for f in fields}


def test_a_feature_cache_head_gives_the_models_logits(published):
    model = za.adapt(f"hf/{VIT}", num_classes=3, freeze="backbone")
    loader = [(torch.rand(4, 3, 32, 32), torch.arange(4) % 3) for _ in range(2)]
    features, _ = (cache := za.FeatureCache(model, loader)).tensors()
    with torch.no_grad():
        expected = model.eval()(pixel_values=torch.cat([x for x, _ in loader])).logits
        torch.testing.assert_close(cache.classifier(model)(features), expected)


# -- round trips ----------------------------------------------------------------------


def test_save_then_load_gives_the_same_logits_labels_and_config(published, tmp_path):
    model = za.adapt(f"hf/{VIT}", in_chans=1, classes=["owl", "newt"])
    za.save(model, tmp_path / "gray.safetensors")
    loaded = za.load(tmp_path / "gray.safetensors")
    x = rand(2, 1, 32, 32)
    torch.testing.assert_close(hf_logits(loaded, x), hf_logits(model, x), rtol=0, atol=0)
    assert za.labels(loaded) == ("owl", "newt") and loaded.config.id2label == {0: "owl", 1: "newt"}
    assert za.data_config(loaded) == za.data_config(model)
    assert loaded.config.num_channels == 1


def test_a_lora_model_saves_whole_and_adapters_only_and_loads_with_the_same_logits(
    published, tmp_path
):
    pytest.importorskip("peft")
    model = za.adapt(f"hf/{VIT}", classes=["owl", "newt"], lora={"r": 2, "targets": "all"})
    optimizer = za.optimizer(model, "adamw", lr=5e-2)
    for step in range(2):
        optimizer.zero_grad()
        logits = model.train()(pixel_values=rand(2, 3, 32, 32, seed=step).float()).logits
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
        optimizer.step()
    whole = za.save(model, tmp_path / "whole.safetensors")
    small = za.save(model, tmp_path / "small.safetensors", adapters_only=True)
    assert small.stat().st_size < whole.stat().st_size / 2  # the stem rides along
    x = rand(2, 3, 32, 32)
    expected = hf_logits(model.eval(), x)
    for path in (whole, small):
        loaded = za.load(path).eval()
        torch.testing.assert_close(hf_logits(loaded, x), expected, rtol=0, atol=0)
        assert za.adapter_names(loaded) == za.adapter_names(model)
        assert za.labels(loaded) == ("owl", "newt")


def test_save_pretrained_is_read_by_transformers_and_by_adapt(published, tmp_path):
    model = za.adapt(f"hf/{VIT}", in_chans=1, classes=["owl", "newt"])
    model.save_pretrained(tmp_path / "gray")
    x = rand(2, 1, 32, 32)
    expected = hf_logits(copy.deepcopy(model), x)
    auto = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "gray")
    torch.testing.assert_close(hf_logits(auto, x), expected, rtol=0, atol=0)
    for name in (str(tmp_path / "gray"), f"hf/{tmp_path / 'gray'}"):
        again = za.adapt(name)
        torch.testing.assert_close(hf_logits(again, x), expected, rtol=0, atol=0)
        assert za.labels(again) == ("owl", "newt")


def test_a_model_from_a_directory_saves_and_loads_by_its_path(published, tmp_path):
    published[VIT].save_pretrained(tmp_path / "mine")
    model = za.adapt(str(tmp_path / "mine"), num_classes=2)
    za.save(model, tmp_path / "mine.safetensors")
    x = rand(2, 3, 32, 32)
    loaded = za.load(tmp_path / "mine.safetensors")
    torch.testing.assert_close(hf_logits(loaded, x), hf_logits(model, x), rtol=0, atol=0)


def test_a_backbone_checkpoint_loads_into_the_classifier_by_the_prefix_rule(published, tmp_path):
    from safetensors.torch import save_file

    backbone = published[VIT].vit
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, tmp_path / "b.st")
    model = za.adapt(f"hf/{VIT}", pretrained=False)
    report = za.load_weights(model, tmp_path / "b.st", strict=False)
    assert report.renamed["embeddings.cls_token"][0] == "vit.embeddings.cls_token"
    assert sorted(report.missing) == ["classifier.bias", "classifier.weight"]
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(model.state_dict()[f"vit.{name}"], tensor), name


def test_the_cli_lists_describes_and_predicts_with_cached_repositories(published, capsys, tmp_path):
    from PIL import Image

    assert main(["list", "hf/*"]) == 0
    assert capsys.readouterr().out.split() == [f"hf/{RESNET}", f"hf/{VIT}"]
    assert main(["info", f"hf/{VIT}"]) == 0
    out = capsys.readouterr().out
    assert "hf" in out and "bicubic" in out and "owl" in out
    assert main(["weights", f"hf/{VIT}"]) == 0
    assert "* main  (cached, sha256 " in capsys.readouterr().out
    pixels = torch.randint(0, 256, (48, 40, 3), generator=torch.Generator().manual_seed(3))
    Image.fromarray(pixels.to(torch.uint8).numpy()).save(tmp_path / "photo.png")
    assert main(["predict", f"hf/{VIT}", str(tmp_path / "photo.png"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model = za.adapt(f"hf/{VIT}")
    batch = za.transforms(model)(Image.open(tmp_path / "photo.png"))[None]
    with torch.no_grad():
        best = model(pixel_values=batch).logits[0].argmax().item()
    assert printed[0]["top"][0]["label"] == NAMES[best]


# -- the image processor config --------------------------------------------------------

PROCESSORS = {
    "ViT": {},
    "DeiT": {},
    "Beit": {},
    "ConvNext": {"size": {"shortest_edge": 224}},
    "ConvNext-384": {"size": {"shortest_edge": 384}},
    "MobileNetV2": {},
    "Bit": {},
    "Levit": {},
    "EfficientNet": {},
    "EfficientNet-offset": {"rescale_offset": True, "rescale_factor": 1 / 127.5},
}
#: Center crops whose margin is odd on the rocket photo (256x383 -> 224): torchvision puts
#: the crop at round(79.5) = 80, transformers at int(79.5) = 79, one pixel apart.
ODD_MARGIN = {"ConvNext", "MobileNetV2", "Bit", "Levit"}


@pytest.mark.parametrize("kind", sorted(PROCESSORS))
def test_transforms_match_the_image_processor(kind):
    """za.transforms of the processor's config gives the processor's pixel values."""
    from PIL import Image
    from skimage import data as photos
    from zooadapt_plugins._hf_hub import processor_config

    name = kind.partition("-")[0]
    processor = getattr(transformers, f"{name}ImageProcessor")(**PROCESSORS[kind])
    config = processor_config(json.loads(processor.to_json_string()), kind)
    pipeline = za.transforms(config=config)
    for photo in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(photos, photo)())
        expected = processor(image, return_tensors="pt").pixel_values[0]
        difference = (pipeline(image) - expected).abs().mean().item()
        shifted = photo == "rocket" and name in ODD_MARGIN
        assert difference < (0.07 if shifted else 2e-4), (photo, difference)
