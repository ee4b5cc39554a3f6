"""FeatureCache: the head trained on cached features equals the head trained through the
frozen backbone; disk caches reopen, stream and survive interruptions; clear refusals."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import zooadapt as za
from zooadapt.errors import AdaptError, CheckpointError
from zooadapt.features import INDEX, FeatureCache, extract_features
from zooadapt.freeze import HOLD

Data = list[tuple[torch.Tensor, torch.Tensor]]
MakeOptimizer = Callable[[object], torch.optim.Optimizer]


def make_data(sizes=(4, 4, 3), px=32, classes=5, seed=0) -> Data:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(n, 3, px, px, generator=generator), torch.randint(0, classes, (n,)))
        for n in sizes
    ]


def frozen(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return za.adapt(name, num_classes=5, pretrained=False, freeze="backbone", **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only spins, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet(one_thread) -> nn.Module:
    return frozen("resnet18")


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)


def head_of(model: nn.Module) -> nn.Module:
    (path,) = za.anatomy(model).head
    return model.get_submodule(path)


def step(optimizer: torch.optim.Optimizer, output: torch.Tensor, targets: torch.Tensor) -> None:
    loss = F.cross_entropy(output, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def train_through_backbone(model: nn.Module, batches, make_optimizer, epochs=2) -> nn.Module:
    model.eval()
    optimizer = make_optimizer(head_of(model).parameters())
    for _ in range(epochs):
        for inputs, targets in batches():
            step(optimizer, model(inputs), targets)
    return head_of(model)


def train_on_cache(model: nn.Module, cache: FeatureCache, batches, make_optimizer, epochs=2):
    classifier = cache.classifier(model)
    optimizer = make_optimizer(cache.head(model).parameters())
    for _ in range(epochs):
        for features, targets in batches():
            step(optimizer, classifier(features), targets)
    return cache.head(model)


def assert_same_heads(a: nn.Module, b: nn.Module, start: nn.Module) -> None:
    params = zip(a.named_parameters(), b.parameters(), start.parameters(), strict=True)
    for (name, pa), pb, p0 in params:
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0, msg=name)
        assert not torch.allclose(pa, p0), f"{name} did not train"


def check_equal_training(model, data, make_optimizer, **cache_kwargs) -> FeatureCache:
    start = copy.deepcopy(head_of(model))
    through = copy.deepcopy(model)
    cached = copy.deepcopy(model)
    cache = FeatureCache(cached, data, **cache_kwargs)
    a = train_through_backbone(through, lambda: data, make_optimizer)
    b = train_on_cache(cached, cache, lambda: cache.batches(), make_optimizer)
    assert_same_heads(a, b, start)
    return cache


# -- 1. training on the cache is training through the frozen backbone -----------------------


@pytest.mark.parametrize("make_optimizer", [sgd, adamw], ids=["sgd", "adamw"])
@pytest.mark.parametrize("where", ["memory", "disk"])
def test_head_trained_on_cache_equals_head_trained_through_backbone(
    resnet, data, make_optimizer, where, tmp_path
):
    path = tmp_path / "cache" if where == "disk" else None
    cache = check_equal_training(resnet, data, make_optimizer, path=path, shard_bytes=4096)
    if where == "disk":
        assert len(list(path.glob("features-*.safetensors"))) == 3  # batches of 4, 4 and 3
        cache = FeatureCache.load(path)
        b = train_on_cache(copy.deepcopy(resnet), cache, lambda: cache.batches(), make_optimizer)
        a = train_through_backbone(copy.deepcopy(resnet), lambda: data, make_optimizer)
        assert_same_heads(a, b, head_of(resnet))


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_shuffled_batches_are_a_seeded_permutation_of_the_samples(resnet, data, where, tmp_path):
    path = tmp_path / "cache" if where == "disk" else None
    cached, through = copy.deepcopy(resnet), copy.deepcopy(resnet)
    cache = FeatureCache(cached, data, path=path, shard_bytes=4096)
    inputs = torch.cat([x for x, _ in data])
    targets = torch.cat([y for _, y in data])

    def shuffled():  # what a DataLoader(shuffle=True, batch_size=5) with that generator gives
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(7))
        return [(inputs[i], targets[i]) for i in order.split(5)]

    def cached_batches():
        generator = torch.Generator().manual_seed(7)
        return cache.batches(5, shuffle=True, generator=generator)

    a = train_through_backbone(through, shuffled, sgd)
    b = train_on_cache(cached, cache, cached_batches, sgd)
    assert_same_heads(a, b, head_of(resnet))
    assert [len(y) for _, y in cached_batches()] == [5, 5, 1]


# -- 2. disk caches -------------------------------------------------------------------------


def test_disk_cache_reopens_without_the_model_and_holds_the_memory_cache(resnet, data, tmp_path):
    memory = FeatureCache(resnet, data)
    built = FeatureCache(resnet, data, path=tmp_path / "c", shard_bytes=10_000)
    cache = FeatureCache.load(tmp_path / "c")
    assert cache.path == tmp_path / "c" and memory.path is None
    for other in (built, cache):
        for a, b in zip(memory.tensors(), other.tensors(), strict=True):
            assert torch.equal(a, b)
        for (fa, ta), (fb, tb) in zip(memory.batches(), other.batches(), strict=True):
            assert torch.equal(fa, fb) and torch.equal(ta, tb)
    assert (len(cache), cache.batch_sizes, cache.feature_shape) == (11, [4, 4, 3], (512,))
    assert (cache.model_name, cache.head_path) == ("torchvision/resnet18", "fc")
    info = json.loads((tmp_path / "c" / INDEX).read_text())
    assert info == cache.metadata == built.metadata
    assert info["num_samples"] == 11 and info["feature_dtype"] == "float32"
    assert [s["samples"] for s in info["shards"]] == [8, 3]  # a shard closes at 10 kB
    first = safetensors.torch.load_file(tmp_path / "c" / "features-00000.safetensors")
    assert set(first) == {"features", "targets"} and first["features"].shape == (8, 512)
    assert "11 samples" in repr(cache) and "resnet18" in repr(cache)


def test_a_dataloader_is_replayed_batch_for_batch(resnet, tmp_path):
    inputs, targets = torch.rand(11, 3, 32, 32), torch.arange(11)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    cache = FeatureCache(resnet, loader, path=tmp_path / "c", progress=True)
    assert cache.batch_sizes == [4, 4, 3]
    replayed = [y for _, y in FeatureCache.load(tmp_path / "c").batches()]
    assert [y.tolist() for y in replayed] == [y.tolist() for _, y in loader]


def test_batches_rebatch_copy_and_move(resnet, data, tmp_path):
    cache = FeatureCache(resnet, data, path=tmp_path / "c", shard_bytes=1)  # one batch a shard
    features, targets = cache.tensors()
    assert [len(y) for _, y in cache.batches(3)] == [3, 3, 3, 2]
    assert [len(y) for _, y in cache.batches(3, drop_last=True)] == [3, 3, 3]
    assert [len(y) for _, y in cache.batches(drop_last=True)] == [4, 4]
    assert torch.equal(torch.cat([f for f, _ in cache.batches(6)]), features)  # across shards
    assert torch.equal(torch.cat([y for _, y in cache.batches(6, device="cpu")]), targets)
    for batch_features, _ in cache:
        batch_features.zero_()  # a batch is a copy: the cache is unchanged
    assert torch.equal(cache.tensors()[0], features)
    with pytest.raises(AdaptError, match="batch_size must be a positive int"):
        cache.batches(0)


class Interrupted(RuntimeError):
    pass


def test_interrupted_write_leaves_no_partial_shard_and_no_cache(
    resnet, data, tmp_path, monkeypatch
):
    calls = []
    original = safetensors.torch.save_file

    def dies_on_the_second_shard(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as handle:
                handle.write(b"half a shard")
            raise Interrupted("disk full")
        original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dies_on_the_second_shard)
    with pytest.raises(Interrupted):
        FeatureCache(resnet, data, path=tmp_path / "c", shard_bytes=1)
    assert list((tmp_path / "c").iterdir()) == []  # no partial shard, no temporary, no index
    with pytest.raises(CheckpointError, match="holds no feature cache"):
        FeatureCache.load(tmp_path / "c")


def test_data_failing_midway_leaves_no_cache_and_the_model_as_it_was(resnet, tmp_path):
    model = copy.deepcopy(resnet).train()
    modes = [m.training for m in model.modules()]

    def failing():
        yield from make_data(sizes=(4, 4))
        raise Interrupted("worker died")

    with pytest.raises(Interrupted):
        FeatureCache(model, failing(), path=tmp_path / "c", shard_bytes=1)
    assert list((tmp_path / "c").iterdir()) == []
    assert [m.training for m in model.modules()] == modes
    assert not model.fc._forward_pre_hooks and HOLD not in vars(model.fc)


def test_leftovers_of_a_killed_run_are_incomplete_and_replaced(resnet, data, tmp_path):
    FeatureCache(resnet, data, path=tmp_path / "c", shard_bytes=1)
    (tmp_path / "c" / INDEX).unlink()  # as if killed before the index was written
    (tmp_path / "c" / ".features-00007.safetensors.123.tmp").write_bytes(b"partial")
    (tmp_path / "c" / ".features.json.123.tmp").write_bytes(b"{")
    with pytest.raises(CheckpointError, match="incomplete feature cache .*interrupted"):
        FeatureCache.load(tmp_path / "c")
    FeatureCache(resnet, data[:1], path=tmp_path / "c")  # no overwrite needed
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["features-00000.safetensors", INDEX]
    assert len(FeatureCache.load(tmp_path / "c")) == 4


def test_existing_cache_is_kept_unless_overwrite(resnet, data, tmp_path):
    FeatureCache(resnet, data, path=tmp_path / "c", shard_bytes=1)
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already holds a feature cache.*overwrite=True"):
        FeatureCache(resnet, data[:1], path=tmp_path / "c")
    assert len(FeatureCache.load(tmp_path / "c")) == 11
    FeatureCache(resnet, data[:1], path=tmp_path / "c", overwrite=True)
    assert len(FeatureCache.load(tmp_path / "c")) == 4
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["features-00000.safetensors", INDEX, "notes.txt"]


def test_foreign_or_damaged_files_are_refused(resnet, data, tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / INDEX).write_text('{"something": "else"}')
    with pytest.raises(CheckpointError, match="not a zooadapt feature cache"):
        FeatureCache(resnet, data, path=tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / INDEX).exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        FeatureCache(resnet, data, path=tmp_path / "file")
    FeatureCache(resnet, data, path=tmp_path / "c")
    shard = tmp_path / "c" / "features-00000.safetensors"
    safetensors.torch.save_file({"features": torch.zeros(11, 3), "targets": torch.zeros(11)}, shard)
    with pytest.raises(CheckpointError, match="damaged"):
        FeatureCache.load(tmp_path / "c")
    with pytest.raises(CheckpointError, match="does not exist"):
        FeatureCache.load(tmp_path / "missing")


# -- 3. other zoos and 1x1 convolution heads -----------------------------------------------


def test_timm_model(data):
    model = frozen("timm/resnet18")
    cache = check_equal_training(model, data, sgd)
    assert cache.model_name == "timm/resnet18" and cache.feature_shape == (512,)


def test_squeezenet_conv_head_keeps_4d_features_and_trains_identically():
    model = frozen("squeezenet1_1")
    data = make_data(px=48)
    cache = check_equal_training(model, data, sgd)
    assert cache.head_path == "classifier.1" and cache.feature_shape == (512, 2, 2)
    assert isinstance(cache.head(model), nn.Conv2d)
    features, _ = next(iter(cache))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cache.classifier(model)(features), model(data[0][0]))


# -- 4. refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "heads"),
    [("googlenet", "fc, aux1.fc2, aux2.fc2"), ("timm/deit_tiny_distilled_patch16_224", "head, ")],
)
def test_models_with_several_heads_are_refused(name, heads):
    model = frozen(name)
    with pytest.raises(AdaptError, match=f"needs a model with one head.*{heads}"):
        FeatureCache(model, make_data(sizes=(2,)))


@pytest.mark.parametrize(
    ("freeze", "first"), [(None, "'conv1.weight'"), ("layer3", "'layer4.0.conv1.weight'")]
)
def test_trainable_backbone_is_refused(freeze, first, data):
    torch.manual_seed(0)
    model = za.adapt("resnet18", num_classes=5, pretrained=False, freeze=freeze)
    match = rf"fully frozen backbone.*trainable parameter.*{first}.*za\.freeze\(model\) first"
    with pytest.raises(AdaptError, match=match):
        FeatureCache(model, data)


def test_empty_data_and_malformed_batches_are_refused(resnet, tmp_path):
    for empty in ([], iter([])):
        with pytest.raises(AdaptError, match="holds no batches"):
            FeatureCache(resnet, empty, path=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(AdaptError, match="batch 0 is a Tensor, not a pair"):
        FeatureCache(resnet, [x])
    with pytest.raises(AdaptError, match="3 targets for 2 samples"):
        FeatureCache(resnet, [(x, torch.zeros(3))])
    with pytest.raises(AdaptError, match="targets of batch 0 are not a tensor"):
        FeatureCache(resnet, [(x, ["cat", "dog"])])
    with pytest.raises(AdaptError, match="shard_bytes must be a positive int"):
        FeatureCache(resnet, [(x, torch.zeros(2))], shard_bytes=0)
    with pytest.raises(AdaptError, match="storage_device='cuda' is for memory caches"):
        FeatureCache(resnet, [(x, torch.zeros(2))], path=tmp_path / "c", storage_device="cuda")


def test_inconsistent_feature_shapes_are_refused():
    model = frozen("squeezenet1_1")
    with pytest.raises(AdaptError, match="batch 1 gives features of shape"):
        FeatureCache(model, make_data(sizes=(2,), px=48) + make_data(sizes=(2,), px=64))


def test_head_of_another_model_is_refused(resnet, data):
    cache = FeatureCache(resnet, data[:1])
    with pytest.raises(AdaptError, match="features of torchvision/resnet18, not of .*resnet34"):
        cache.head(frozen("resnet34"))
    with pytest.raises(AdaptError, match="not of torchvision/mobilenet_v3_small"):
        cache.classifier(frozen("mobilenet_v3_small"))
    assert cache.head(copy.deepcopy(resnet)) is not resnet.fc  # another instance is fine


# -- 5. the backbone runs once, the head never during extraction ---------------------------


def test_backbone_runs_once_per_batch_and_never_while_training(resnet, data):
    model = copy.deepcopy(resnet).train()
    modes = [m.training for m in model.modules()]
    calls = {"backbone": 0, "head": 0, "head pre-hook": 0}

    def count(key):
        return lambda *_: calls.__setitem__(key, calls[key] + 1)

    model.layer4.register_forward_hook(count("backbone"))
    model.fc.register_forward_hook(count("head"))
    model.fc.register_forward_pre_hook(count("head pre-hook"))  # the capture hook runs first
    cache = extract_features(model, data)
    assert calls == {"backbone": 3, "head": 0, "head pre-hook": 0}
    assert [m.training for m in model.modules()] == modes
    train_on_cache(model, cache, lambda: cache.batches(), sgd, epochs=3)
    assert calls == {"backbone": 3, "head": 9, "head pre-hook": 9}


def test_stderr_progress_without_tqdm(resnet, data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    FeatureCache(resnet, data, progress=True)
    assert "extracting features: 3/3 batches" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extraction_on_cuda_moves_the_model_back(resnet, data):
    model = copy.deepcopy(resnet)
    cache = FeatureCache(model, data, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert cache.tensors()[0].device.type == "cpu"
    torch.testing.assert_close(cache.tensors()[0], FeatureCache(model, data).tensors()[0])
    on_gpu = FeatureCache(model, data, device="cuda", storage_device="cuda")
    assert on_gpu.tensors()[0].device.type == "cuda"
    features, _ = next(on_gpu.batches(5, shuffle=True))
    assert features.device.type == "cuda"
