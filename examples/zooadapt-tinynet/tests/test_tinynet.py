"""Tests of the TinyNet plugin, runnable without installing it (``pythonpath = src``).

Every test uses a hermetic plugin manager holding just this plugin, so the results do not
depend on which other plugins are installed.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
import zooadapt as za
from zooadapt.testing import Sample, check_family, check_plugin

import zooadapt_tinynet
from zooadapt_tinynet import TinyNet, build


@pytest.fixture
def pm() -> za.PluginManager:
    """A plugin manager holding only this plugin."""
    return za.make_plugin_manager(zooadapt_tinynet)


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in the layout of the original TinyNet release (the inverse renames)."""
    inverse = [
        (r"^stem\.conv\.", "features.0."),
        (r"^stem\.bn\.", "features.1."),
        (r"^stages\.(\d+)\.conv\.", r"blocks.\1.0."),
        (r"^stages\.(\d+)\.bn\.", r"blocks.\1.1."),
        (r"^classifier\.", "fc."),
    ]
    renamed = {}
    for key, tensor in state.items():
        for pattern, replacement in inverse:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def test_the_family_conforms_and_maps_the_original_layout(pm: za.PluginManager) -> None:
    """Head, stem, groups, renames, adapt + forward and freeze all check out."""
    original_keys = to_original(build("tinynet_m").state_dict())
    assert "features.0.weight" in original_keys
    check_family(
        "tinynet",
        functools.partial(build, "tinynet_m"),
        plugin_manager=pm,
        rules_checkpoint=original_keys,
    )


def test_the_plugin_conforms_on_both_models() -> None:
    """Both zoo models build on meta; the family fits each variant, in any depth."""
    variants = [functools.partial(build, arch) for arch in ("tinynet_s", "tinynet_m")]
    report = check_plugin(
        zooadapt_tinynet,
        {"tinynet": [*variants, Sample(TinyNet(widths=(8, 8)), input_shape=(1, 3, 32, 32))]},
    )
    assert report.ok


def test_the_family_owns_tinynet(pm: za.PluginManager) -> None:
    """za.anatomy describes TinyNet with this plugin's family."""
    anatomy = za.anatomy(build("tinynet_s"), plugin_manager=pm)
    assert (anatomy.family, anatomy.plugin) == ("tinynet", "zooadapt_tinynet")
    assert anatomy.head == ("classifier",)
    assert anatomy.stem == "stem.conv"
    assert list(anatomy.groups) == ["stem", "stage0", "stage1", "head"]


def test_adapt_by_name(pm: za.PluginManager) -> None:
    """The zoo resolves qualified names; the adapted model classifies gray images."""
    model = za.adapt(
        "tinynet/tinynet_m", num_classes=3, in_chans=1, pretrained=False, plugin_manager=pm
    )
    assert isinstance(model, TinyNet)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_an_original_checkpoint_loads_through_the_rename_rules(
    pm: za.PluginManager, tmp_path: Path
) -> None:
    """Every tensor of an original-layout checkpoint lands where it belongs."""
    torch.manual_seed(0)
    trained = build("tinynet_s")
    path = tmp_path / "tinynet_s_original.pth"
    torch.save(to_original(trained.state_dict()), path)
    model = za.adapt("tinynet/tinynet_s", num_classes=3, pretrained=path, plugin_manager=pm)
    for key, tensor in model.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(tensor, trained.state_dict()[key]), key
    assert model.classifier.out_features == 3


def test_the_hook_adds_the_ssl_rule_to_this_family_only(pm: za.PluginManager) -> None:
    """zooadapt_rename_rules adds the 'encoder.' rule after the family's own rules."""
    names = [rule.name for rule in pm.rename_rules(zooadapt_tinynet.FAMILY)]
    assert names[-1] == "tinynet ssl: strip 'encoder.'"
    assert len(names) == len(zooadapt_tinynet.ORIGINAL_LAYOUT) + 1
    other = za.Family(name="resnet", head="fc", stem="conv1", groups={"all": "."})
    assert pm.rename_rules(other) == []
