"""The data side: data configs that follow the adaptation, transforms, labels, classes=."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import zooadapt as za
from zooadapt.data import IMAGENET_MEAN, IMAGENET_STD

skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina")


def photo(name: str) -> np.ndarray:
    image = getattr(skimage_data, name)()
    return image[0] if isinstance(image, tuple) else image


def pil(name: str):
    from PIL import Image

    return Image.fromarray(photo(name))


def gray_crops(count: int) -> list:
    """``count`` gray PIL crops of various sizes and places from scikit-image's photos."""
    from PIL import Image

    sources = [Image.fromarray(photo(n)).convert("L") for n in (*PHOTOS, "camera", "moon")]
    sources += [Image.fromarray(photo(n)) for n in ("coins", "clock", "grass", "brick")]
    generator = torch.Generator().manual_seed(0)
    crops = []
    for i in range(count):
        image = sources[i % len(sources)]
        width, height = image.size
        side = int(
            torch.randint(
                min(width, height) // 3, min(width, height) + 1, (1,), generator=generator
            )
        )
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        crops.append(image.crop((left, top, left + side, top + side)))
    return crops


def logits(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.stack(batch[i : i + 40])) for i in range(0, len(batch), 40)])


# -- the real ImageNet MobileNetV2 -----------------------------------------------------------


def test_transforms_equal_torchvisions_own_for_the_unadapted_model(cached_mobilenet, offline):
    from torchvision.models import MobileNet_V2_Weights

    model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    ours, theirs = za.transforms(model), MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    for name in PHOTOS:
        image = pil(name)
        tensor = torch.from_numpy(photo(name).copy()).permute(2, 0, 1)
        torch.testing.assert_close(ours(image), theirs(image), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours(tensor), theirs(tensor), rtol=0, atol=1e-6)
    config = za.data_config(model)
    assert (config.input_size, config.resize, config.interpolation) == (
        (3, 224, 224),
        (256,),
        "bilinear",
    )
    assert (config.mean, config.std) == (IMAGENET_MEAN, IMAGENET_STD)


def gray_agreement(cached_mobilenet) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Top-1 agreement with the RGB model on 240 gray crops: folded ``sum``, averaged stats."""
    from torchvision.models import MobileNet_V2_Weights

    crops = gray_crops(240)
    rgb = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    reference = logits(
        rgb, [MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(c.convert("RGB")) for c in crops]
    )
    gray = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", in_chans=1)
    folded = logits(gray, [za.transforms(gray)(c) for c in crops])
    # The usual recipe: filters summed, one averaged mean and std for the gray channel.
    averaged = copy.deepcopy(rgb)
    stem = averaged.features[0][0]
    stem.weight = nn.Parameter(stem.weight.sum(1, keepdim=True))
    stem.in_channels = 1
    config = za.DataConfig(
        (1, 224, 224), (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,), resize_size=(256,)
    )
    recipe = logits(averaged, [za.transforms(config=config)(c) for c in crops])
    top = reference.argmax(1)
    agree = lambda out: (out.argmax(1) == top).float().mean().item()  # noqa: E731
    return agree(folded), agree(recipe), folded, reference


def test_gray_sum_model_agrees_with_the_rgb_model_on_normalised_input(cached_mobilenet, offline):
    folded, averaged, ours, reference = gray_agreement(cached_mobilenet)
    print(f"top-1 agreement on 240 gray crops: folded {folded:.4f}, averaged {averaged:.4f}")
    assert folded >= 0.98  # only zero padding at the borders differs
    assert averaged <= folded - 0.05
    assert (ours - reference).abs().max() < 0.5


def test_gray_sum_stem_is_exact_away_from_the_borders(cached_mobilenet, offline):
    from torchvision.models import MobileNet_V2_Weights

    crop = gray_crops(1)[0]
    rgb = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    gray = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", in_chans=1)
    with torch.no_grad():
        want = rgb.features[0][0](
            MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(crop.convert("RGB"))[None]
        )
        got = gray.features[0][0](za.transforms(gray)(crop)[None])
    torch.testing.assert_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, want, atol=1e-3)  # the borders do differ: zero padding
    assert za.data_config(gray).mean == (pytest.approx(sum(IMAGENET_MEAN) / 3),)


def test_classes_keep_the_pretrained_rows_and_predict_without_training(cached_mobilenet, offline):
    rgb = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    names = za.labels(rgb)
    model = za.adapt(
        "mobilenet_v2", pretrained="IMAGENET1K_V1", classes=["space shuttle", "tabby", 967, "moped"]
    )
    assert za.labels(model) == ("space shuttle", "tabby", "espresso", "moped")
    rows = [names.index("space shuttle"), names.index("tabby"), 967, names.index("moped")]
    assert torch.equal(model.classifier[1].weight, rgb.classifier[1].weight[rows])
    assert torch.equal(model.classifier[1].bias, rgb.classifier[1].bias[rows])
    images = [pil("rocket"), pil("chelsea"), pil("coffee"), Path(__file__)]  # a path too
    images[3] = _motorcycle()
    top = [ranked[0].label for ranked in za.predict(model, images, top_k=2)]
    assert top == ["space shuttle", "tabby", "espresso", "moped"]


def _motorcycle():
    from PIL import Image

    return Image.fromarray(skimage_data.stereo_motorcycle()[0])


def test_a_new_class_gets_a_fresh_row_among_kept_ones(cached_mobilenet, offline):
    rgb = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1")
    torch.manual_seed(0)
    model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", classes=["tabby", "my own cat"])
    assert torch.equal(
        model.classifier[1].weight[0], rgb.classifier[1].weight[za.labels(rgb).index("tabby")]
    )
    fresh = model.classifier[1].weight[1]
    assert not any(torch.equal(fresh, row) for row in rgb.classifier[1].weight)
    assert za.labels(model) == ("tabby", "my own cat")


def test_a_class_name_one_typo_from_a_pretrained_one_warns_at_the_callers_line(
    cached_mobilenet, offline
):
    import warnings

    with pytest.warns(za.AdaptWarning) as caught:
        model = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", classes=["Tabby", "mopedd"])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and {w.filename for w in caught} == {__file__}
    assert "'Tabby' is not one of the 1000 pretrained classes" in messages[0]
    assert "did you mean 'tabby'?" in messages[0] and "did you mean 'moped'?" in messages[1]
    assert za.labels(model) == ("Tabby", "mopedd")  # carried out: new rows, as asked
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact names and names far from any: no warning
        za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", classes=["tabby", "road", "cat"])


def test_a_checkpoint_file_folds_the_stem_like_the_zoo_weights(
    cached_mobilenet, real_mobilenet_file, offline
):
    from_zoo = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", in_chans=1)
    from_file = za.adapt("mobilenet_v2", pretrained=real_mobilenet_file, in_chans=1)
    loaded = za.adapt("mobilenet_v2", pretrained=False, in_chans=1)
    za.load_weights(loaded, real_mobilenet_file)
    for other in (from_file, loaded):
        state = other.state_dict()
        for key, tensor in from_zoo.state_dict().items():
            torch.testing.assert_close(state[key], tensor, rtol=1e-6, atol=1e-6, msg=key)


def test_save_and_load_keep_labels_data_config_and_the_folded_stem(
    cached_mobilenet, offline, tmp_path
):
    model = za.adapt(
        "mobilenet_v2",
        pretrained="IMAGENET1K_V1",
        in_chans=4,
        stem_init=[0, 1, 2, None],
        mean=(None, None, None, 0.3),
        std=(None, None, None, 0.1),
        classes=["tabby", "espresso"],
    )
    path = za.save(model, tmp_path / "nir.safetensors")
    loaded = za.load(path)
    assert za.labels(loaded) == ("tabby", "espresso")
    assert za.data_config(loaded) == za.data_config(model)
    assert za.data_config(loaded).mean == (*IMAGENET_MEAN, 0.3)
    assert za.data_config(loaded).source == za.data_config(model).source
    gray = za.adapt("mobilenet_v2", pretrained="IMAGENET1K_V1", in_chans=1)
    again = za.load(za.save(gray, tmp_path / "gray.safetensors"))
    assert "features.0.0.bias" in again.state_dict()
    for key, tensor in gray.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key
    assert za.data_config(again) == za.data_config(gray)


# -- statistics follow every stem_init -------------------------------------------------------


class TinyNet(nn.Module):
    """A conv stem (bias optional) and a linear head: fast real forward passes."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.body = nn.Sequential(
            nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


TINY = za.Family(
    name="tiny",
    classes=(f"{__name__}.TinyNet",),
    head="head",
    stem="stem",
    groups={"stem": r"^stem\.", "body": r"^body\.", "head": r"^head\."},
    data_config=za.DataConfig((3, 32, 32), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), crop_pct=1.0),
)


def tiny(bias: bool = False) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(bias).eval()
    model.body[0].running_mean.uniform_(-1, 1)
    return model


def rgb_images(count: int = 4) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("gray_stats", [None, (0.7, 0.4)])
def test_sum_holds_on_normalised_input_for_any_gray_statistics(bias, gray_stats):
    rgb = tiny(bias)
    pixels = rgb_images()[:, :1]  # gray images in [0, 1]
    config = TINY.data_config
    want = rgb.stem(za.transforms(config=config)(pixels.expand(-1, 3, -1, -1)))
    mean, std = (None, None) if gray_stats is None else ([gray_stats[0]], [gray_stats[1]])
    gray = za.adapt(copy.deepcopy(rgb), in_chans=1, family=TINY, mean=mean, std=std)
    got = gray.stem(za.transforms(gray)(pixels))
    torch.testing.assert_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    expected = gray_stats or (sum(config.mean) / 3, sum(config.std) / 3)
    assert za.data_config(gray).mean == pytest.approx(expected[:1])
    assert za.data_config(gray).std == pytest.approx(expected[1:])
    assert gray.stem.bias is not None  # the means differ: the offsets became a bias


def test_repeat_copies_statistics_so_a_repeated_image_gives_the_same_logits():
    rgb = tiny()
    six = za.adapt(copy.deepcopy(rgb), in_chans=6, family=TINY)
    config = za.data_config(six)
    assert config.mean == TINY.data_config.mean * 2 and config.std == TINY.data_config.std * 2
    images = rgb_images()
    want = rgb(za.transforms(rgb, family=TINY)(images))
    got = six(za.transforms(six)(images.repeat(1, 2, 1, 1)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert six.stem.bias is None  # nothing to fold


@pytest.mark.parametrize("stem_init", ["zeros", [0, 1, 2, None]])
def test_extra_channels_from_zeros_leave_the_rgb_output_and_take_given_statistics(stem_init):
    rgb = tiny()
    model = za.adapt(
        copy.deepcopy(rgb),
        in_chans=4,
        stem_init=stem_init,
        family=TINY,
        std=[None, None, None, 0.5],
    )
    config = za.data_config(model)
    assert config.mean == (*TINY.data_config.mean, pytest.approx(0.4))  # the average, documented
    assert config.std == (*TINY.data_config.std, 0.5)
    images = rgb_images()
    band = torch.rand(4, 1, 32, 32)
    want = rgb(za.transforms(rgb, family=TINY)(images))
    got = model(za.transforms(model)(torch.cat([images, band], 1)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_channel_map_copies_each_source_channels_statistics():
    model = za.adapt(tiny(), in_chans=3, stem_init=[2, 0, 0], family=TINY)
    assert za.data_config(model).mean == (0.3, 0.5, 0.5)
    assert za.data_config(model).std == (0.3, 0.2, 0.2)


def test_statistics_that_do_not_fit_the_channels_leave_the_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(za.DataError, match="one value .* for each of the 4 input channels"):
        za.adapt(model, in_chans=4, family=TINY, mean=[0.1, 0.2])
    with pytest.raises(za.DataError, match="std"):
        za.adapt(model, family=TINY, std=[0.1, 0.0, 0.2])
    assert model.stem.in_channels == 3 and model.stem.bias is None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


# -- data configs ----------------------------------------------------------------------------


TIMM_ARCHS = [
    "resnet18",
    "vit_tiny_patch16_224",
    "convnext_atto",
    "efficientnet_b0",
    "deit_tiny_patch16_224",
    "inception_v3",
    "mobilevitv2_050",
    "tf_efficientnet_b0",
    "levit_128s",
    "regnety_002",
]


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_a_timm_data_config_is_timms_own_for_rgb_and_adapted_for_other_channels(arch):
    import timm
    from timm.data import resolve_model_data_config

    model = timm.create_model(arch, pretrained=False)
    config, theirs = za.data_config(model), resolve_model_data_config(model)
    assert (config.input_size, config.mean, config.std) == (
        theirs["input_size"],
        theirs["mean"],
        theirs["std"],
    )
    assert (config.interpolation, config.crop_pct, config.crop_mode) == (
        theirs["interpolation"],
        theirs["crop_pct"],
        theirs["crop_mode"],
    )
    assert config.resize == tuple(
        math.floor(v / theirs["crop_pct"]) for v in theirs["input_size"][1:]
    )
    gray = za.adapt(f"timm/{arch}", pretrained=False, in_chans=1, device="meta")
    assert za.data_config(gray).input_size == (1, *theirs["input_size"][1:])
    assert za.data_config(gray).mean == pytest.approx((sum(theirs["mean"]) / 3,))
    four = za.adapt(f"timm/{arch}", pretrained=False, in_chans=4, device="meta")
    assert za.data_config(four).mean == (*theirs["mean"], theirs["mean"][0])


def test_every_crop_mode_of_timm_weights_is_a_pipeline():
    import timm
    from timm.models import get_pretrained_cfg

    seen = {}
    for name in timm.list_pretrained():
        mode = get_pretrained_cfg(name).crop_mode
        seen.setdefault(mode, name)
    assert set(seen) == {"center", "squash", "border"}
    image = pil("coffee")
    for mode, name in seen.items():
        model = za.adapt(f"timm/{name}", pretrained=False, device="meta")
        config = za.data_config(model)
        out = za.transforms(model)(image)
        assert config.crop_mode == mode and out.shape == config.input_size, name


def test_a_timm_model_created_with_one_channel_gets_gray_statistics():
    import timm

    model = timm.create_model("resnet18", pretrained=False, in_chans=1)
    assert za.data_config(model).input_size == (1, 224, 224)
    assert len(za.data_config(model).mean) == 1


def test_torchvision_weights_declare_their_own_transforms():
    import torchvision
    from torchvision.models import get_model_weights

    from zooadapt._core.names import resolve_name
    from zooadapt._core.pretrained import available_weights

    pm = za.get_plugin_manager()
    checked = 0
    for arch in torchvision.models.list_models(module=torchvision.models):
        enum = get_model_weights(arch)
        for weights in available_weights(resolve_name(arch, pm)):
            preset = enum[weights.tag].transforms()
            config = weights.data_config
            assert config.spatial_size == tuple(preset.crop_size * 2), weights.tag
            assert config.resize == tuple(preset.resize_size), weights.tag
            assert (config.mean, config.std) == (tuple(preset.mean), tuple(preset.std))
            assert config.interpolation == preset.interpolation.value
            categories = enum[weights.tag].meta["categories"]  # None: a headless vgg16
            assert weights.labels == (tuple(categories) if categories else None)
            checked += 1
    assert checked > 100


def test_a_module_without_recorded_data_gets_the_imagenet_default_at_its_size():
    import torchvision

    model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True)
    config = za.data_config(model)
    assert config.input_size == (3, 299, 299) and config.mean == IMAGENET_MEAN
    assert config.resize == (math.floor(299 / 0.875),) * 2
    assert za.labels(model) is None


def test_a_data_config_round_trips_and_refuses_bad_values():
    config = za.DataConfig(
        (4, 128, 96), (0.1, 0.2, 0.3, 0.4), (1, 2, 3, 4), "bicubic", 0.9, source="x"
    )
    assert za.DataConfig.from_dict(config.as_dict()) == config
    assert config.resize == (142, 106)
    for bad, message in [
        ({"mean": (0.5,)}, "1 means and 4 stds for 4 channels"),
        ({"std": (1, 2, 0, 4)}, "std .* must be positive"),
        ({"interpolation": "cubic"}, "interpolation 'cubic'"),
        ({"crop_pct": 0}, "crop_pct"),
        ({"crop_mode": "zoom"}, "crop_mode"),
    ]:
        with pytest.raises(za.DataError, match=message):
            za.DataConfig(**{**config.as_dict(), **bad})
    with pytest.raises(za.DataError, match="unknown DataConfig fields"):
        za.DataConfig.from_dict({**config.as_dict(), "colour": "red"})


# -- transforms ------------------------------------------------------------------------------


def test_transforms_take_pil_arrays_and_tensors_and_convert_channels():
    gray = za.adapt("resnet18", pretrained=False, in_chans=1, device="meta")
    rgb = za.adapt("resnet18", pretrained=False, device="meta")
    array = photo("coffee")
    luma = pil("coffee").convert("L")
    for image in (array, torch.from_numpy(array.copy()).permute(2, 0, 1), pil("coffee"), luma):
        assert za.transforms(gray)(image).shape == (1, 224, 224)
        assert za.transforms(rgb)(image).shape == (3, 224, 224)
    replicated = za.transforms(rgb)(luma)
    normalised = (replicated * torch.tensor(IMAGENET_STD)[:, None, None]) + torch.tensor(
        IMAGENET_MEAN
    )[:, None, None]
    torch.testing.assert_close(normalised[0], normalised[2])  # gray replicated to RGB
    with pytest.raises(za.DataError, match="2 channels, the model reads 3"):
        za.transforms(rgb)(torch.rand(2, 64, 64))
    with pytest.raises(za.DataError, match="cannot read a str as an image"):
        za.transforms(rgb)("cat.jpg")


def test_train_transforms_augment_at_the_models_size():
    model = za.adapt("timm/resnet18", pretrained=False, num_classes=3, in_chans=4, device="meta")
    train = za.transforms(model, train=True)
    image = torch.rand(4, 300, 400)
    torch.manual_seed(0)
    first, second = train(image), train(image)
    assert first.shape == second.shape == (4, 224, 224)
    assert not torch.equal(first, second)
    assert "RandomResizedCrop" in repr(train) and "RandomHorizontalFlip" in repr(train)


def test_volumes_are_normalised_per_channel_and_not_resampled():
    config = za.DataConfig((2, 96, 96, 96), (100.0, -5.0), (50.0, 2.0), crop_pct=1.0)
    pipeline = za.transforms(config=config)
    volume = torch.randint(-1000, 1000, (2, 20, 30, 40), dtype=torch.int16)
    out = pipeline(volume)
    assert out.dtype == torch.float32 and out.shape == (2, 20, 30, 40)  # no resize
    expected = (volume.double() - torch.tensor([100.0, -5.0]).view(2, 1, 1, 1)) / torch.tensor(
        [50.0, 2.0]
    ).view(2, 1, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    assert pipeline(volume.numpy()[None]).shape == (1, 2, 20, 30, 40)  # arrays, batches
    with pytest.raises(za.DataError, match="2-channel volumes"):
        pipeline(torch.zeros(3, 8, 8, 8))
    one = za.transforms(config=za.DataConfig((1, 8, 8, 8), (0.0,), (1.0,), crop_pct=1.0))
    assert one(torch.ones(8, 8, 8)).shape == (1, 8, 8, 8)  # DxHxW is one channel


# -- labels and classes= ---------------------------------------------------------------------


def test_an_ambiguous_name_lists_its_indices():
    with pytest.raises(za.AdaptError, match=r"'crane' names classes \[134, 517\]"):
        za.adapt("timm/resnet18", pretrained=False, classes=["crane", "tabby"], device="meta")
    model = za.adapt("timm/resnet18", pretrained=False, classes=[517, "tabby"], device="meta")
    assert za.labels(model) == ("crane", "tabby")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ["tabby", "tabby"]}, r"\['tabby'\] more than once"),
        ({"classes": [281, "tabby"]}, r"\['tabby'\] more than once"),
        ({"classes": [1000]}, r"index 1000 is not a class .* \(0\.\.999\)"),
        ({"classes": "tabby"}, "must be a list"),
        ({"classes": []}, "classes is empty"),
        ({"classes": [None]}, "neither a class name nor an index"),
        ({"classes": ["a", "b"], "num_classes": 3}, "num_classes=3 but classes lists 2"),
    ],
)
def test_bad_classes_leave_the_model_untouched(kwargs, message):
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    head = model.fc.weight.clone()
    with pytest.raises(za.AdaptError, match=message):
        za.adapt(model, **kwargs)
    assert model.fc is not None and torch.equal(model.fc.weight, head)
    assert len(za.labels(model)) == 1000


def test_aux_heads_keep_the_same_rows():
    import torchvision

    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)
    before = {
        path: model.get_submodule(path).weight.clone() for path in ("fc", "aux1.fc2", "aux2.fc2")
    }
    za.adapt(model, classes=[3, 1, "new"])
    for path, weight in before.items():
        new = model.get_submodule(path).weight
        assert new.shape[0] == 3 and torch.equal(new[:2], weight[[3, 1]]), path
    assert za.labels(model) == ("3", "1", "new")


def test_labels_follow_the_head():
    model = za.adapt("timm/resnet18", pretrained=False, device="meta")
    assert len(za.labels(model)) == 1000
    copied = copy.deepcopy(model)
    assert za.labels(copied) == za.labels(model)
    assert za.labels(za.adapt(model, num_classes=10)) is None  # a new head: names unknown
    renamed = za.adapt("timm/resnet18", pretrained=False, classes=["a", "b"], device="meta")
    renamed.fc = nn.Linear(512, 3, device="meta")  # replaced by hand: the names no longer fit
    assert za.labels(renamed) is None


def test_classes_with_a_checkpoint_keep_the_checkpoints_rows(tmp_path):
    torch.manual_seed(0)
    source = za.adapt("resnet18", pretrained=False, num_classes=6)
    path = tmp_path / "six.pth"
    torch.save(source.state_dict(), path)
    model = za.adapt("resnet18", pretrained=path, classes=[5, 2, "extra"])
    assert torch.equal(model.fc.weight[:2], source.fc.weight[[5, 2]])
    assert za.labels(model) == ("5", "2", "extra")
    with pytest.raises(za.AdaptError, match="load it first"):
        za.adapt(za.adapt("resnet18", pretrained=False), pretrained=path, classes=[1])


def test_a_training_checkpoint_keeps_labels_and_data_config(tmp_path):
    model = za.adapt(
        "timm/resnet18", pretrained=False, in_chans=2, classes=["tabby", "new"], device="meta"
    ).to_empty(device="cpu")
    optimizer = za.optimizer(model, lr=1e-3)
    path = za.save_training(model, tmp_path / "run.pt", optimizer)
    resumed = za.load_training(path).model
    assert za.labels(resumed) == ("tabby", "new")
    assert za.data_config(resumed) == za.data_config(model)
    assert za.data_config(resumed).input_size == (2, 224, 224)
