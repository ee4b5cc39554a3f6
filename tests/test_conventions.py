"""A zoo's own conventions, declared by its family: ``Family.sync`` and ``Family.call``.

``KeywordNet`` behaves like a Hugging Face classifier: it takes ``pixel_values=``, returns
an output object with ``.logits``, checks its input against ``config.num_channels`` and
keeps its class names in ``config.id2label``. Nothing in zooadapt's core knows it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import zooadapt as za
from zooadapt.testing import check_family


class Config:
    """A model configuration whose ``num_labels`` setter resets ``id2label``, as HF's does."""

    def __init__(self, num_labels: int, num_channels: int) -> None:
        self.num_channels = num_channels
        self.num_labels = num_labels

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if getattr(self, "id2label", None) is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(value)}


@dataclass
class Output:
    logits: torch.Tensor


class KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = Config(num_labels=4, num_channels=3)
        self.config.id2label = {0: "cat", 1: "dog", 2: "owl", 3: "fox"}
        self.embed = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 4)

    def forward(self, pixel_values: torch.Tensor) -> Output:
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError("Make sure that the channel dimension of the pixel values match")
        features = self.norm(self.embed(pixel_values)).relu().mean((2, 3))
        return Output(logits=self.classifier(features))


def _sync(model: nn.Module, change: za.Adaptation) -> dict[str, object]:
    names = change.labels or [f"LABEL_{i}" for i in range(change.num_classes)]
    return {
        "config.num_labels": change.num_classes,
        "config.id2label": dict(enumerate(names)),
        "config.num_channels": change.in_chans,
    }


KEYWORD = za.Family(
    name="keyword",
    classes=(f"{__name__}.KeywordNet",),
    head="classifier",
    stem="embed",
    groups={"embed": r"^(embed|norm)\.", "head": r"^classifier\."},
    labels=lambda model: [model.config.id2label[i] for i in range(model.config.num_labels)],
    sync=_sync,
    call=lambda model, images: model(pixel_values=images).logits,
)


def keyword_net() -> KeywordNet:
    torch.manual_seed(0)
    return KeywordNet()


def test_the_models_own_config_follows_the_adaptation():
    model = za.adapt(keyword_net(), family=KEYWORD, in_chans=1, classes=["owl", "cat", "newt"])
    assert model.config.num_channels == 1 and model.config.num_labels == 3
    assert model.config.id2label == {0: "owl", 1: "cat", 2: "newt"}
    assert za.labels(model) == ("owl", "cat", "newt")
    assert model(pixel_values=torch.rand(2, 1, 16, 16)).logits.shape == (2, 3)


def test_a_failed_adaptation_restores_the_config(tmp_path: Path):
    model = keyword_net()
    before = (model.config.num_channels, dict(model.config.id2label))
    bad = {k: v for k, v in keyword_net().state_dict().items() if not k.startswith("norm.")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(za.CheckpointError, match="missing"):
        za.adapt(model, family=KEYWORD, num_classes=2, in_chans=1, pretrained=tmp_path / "bad.pth")
    assert (model.config.num_channels, model.config.id2label) == before
    assert model.classifier.out_features == 4 and model.embed.in_channels == 3


def test_a_sync_path_that_does_not_exist_names_the_plugin():
    family = za.Family(**{**vars(KEYWORD), "sync": lambda m, c: {"config.missing.x": 1}})
    model = keyword_net()
    with pytest.raises(za.PluginError, match=r"sync path 'config.missing.x'"):
        za.adapt(model, family=family, num_classes=2)
    assert model.classifier.out_features == 4


def test_every_function_that_runs_the_model_uses_its_call():
    model = za.adapt(keyword_net(), family=KEYWORD, in_chans=1, num_classes=3)
    images = [torch.rand(1, 20, 20) for _ in range(3)]
    config = za.DataConfig((1, 16, 16), (0.5,), (0.25,), crop_pct=1.0)
    ranked = za.predict(model, images, top_k=2, transform=za.transforms(config=config))
    assert len(ranked) == 3 and all(len(r) == 2 for r in ranked)
    estimate = za.estimate_memory(model, batch_size=4, input_size=16)
    assert estimate.total > estimate.params > 0
    results = za.bench(
        model, settings="backbone", num_classes=3, batch_size=2, input_size=16, warmup=0, steps=1
    )
    assert results and results[0].trainable == 8 * 3 + 3 and results[0].step_ms > 0
    loader = [(torch.rand(4, 1, 16, 16), torch.arange(4) % 3) for _ in range(2)]
    frozen = za.freeze(model, "backbone")
    cache = za.FeatureCache(frozen, loader)
    head = cache.classifier(frozen)
    features, _ = cache.tensors()
    inputs = torch.cat([x for x, _ in loader])
    with torch.no_grad():
        frozen.eval()
        torch.testing.assert_close(head(features), frozen(pixel_values=inputs).logits)


def test_the_conformance_kit_runs_the_model_through_its_call():
    report = check_family(KEYWORD, keyword_net, input_shape=(2, 3, 16, 16))
    assert report.ok, str(report)
    plain = za.Family(**{**vars(KEYWORD), "call": None})
    broken = za.testing.family_report(plain, keyword_net, input_shape=(2, 3, 16, 16))
    assert not broken.ok  # without it the output object is not logits


def test_za_load_names_the_restored_labels_in_the_config(tmp_path: Path):
    from zooadapt import hookimpl

    class Plugin:
        @hookimpl
        def zooadapt_families(self):
            return [KEYWORD]

        @hookimpl
        def zooadapt_zoos(self):
            build = lambda arch, weights=None, **kw: keyword_net()  # noqa: E731
            return [za.Zoo(name="kw", models=lambda: ["keyword_net"], build=build)]

    pm = za.make_plugin_manager(Plugin())
    model = za.adapt("kw/keyword_net", classes=["fox", "eel"], pretrained=False, plugin_manager=pm)
    loaded = za.load(za.save(model, tmp_path / "kw.safetensors"), plugin_manager=pm)
    assert loaded.config.id2label == {0: "fox", 1: "eel"} and za.labels(loaded) == ("fox", "eel")
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    copied = copy.deepcopy(loaded)
    assert za.labels(copied) == ("fox", "eel")
