"""LoRA on the roles each transformer family declares, on small real models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision

import zooadapt as za

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from hf_models import tiny_vit  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

from zooadapt.lora import is_adapter, lora_base_name  # noqa: E402


def tv_vit() -> torch.nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    )  # fmt: skip


def tv_swin() -> torch.nn.Module:
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=[2, 2], num_classes=5,
    )  # fmt: skip


def tv_maxvit() -> torch.nn.Module:
    return torchvision.models.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
        block_layers=[1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=5,
    )  # fmt: skip


def timm_vit() -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=5
    )


MODELS = {"vit": tv_vit, "swin": tv_swin, "maxvit": tv_maxvit, "timm": timm_vit, "hf": tiny_vit}
#: The roles each family declares for these models.
ROLES = {
    "vit": {"qkv", "mlp"},
    "swin": {"qkv", "attn_out", "mlp"},  # attention reads qkv and proj weights functionally
    "maxvit": {"qkv", "attn_out", "mlp", "conv"},
    "timm": {"qkv", "attn_out", "mlp"},
    "hf": {"q", "k", "v", "attn_out", "mlp"},
}


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    output = model(pixel_values=x) if hasattr(model, "config") else model(x)
    return getattr(output, "logits", output)


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MODELS[kind]().eval()


def image(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_each_family_declares_the_roles_its_layers_play(kind):
    model = build(kind)
    for role in ("qkv", "q", "k", "v", "attn_out", "mlp", "conv"):
        if role in ROLES[kind]:
            assert za.lora_targets(model, role), role
        else:
            with pytest.raises(za.AdaptError, match=f"declares no '{role}' role"):
                za.lora_targets(model, role)


@pytest.mark.parametrize("targets", ["attention", "all"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_adapters_keep_the_logits_learn_and_leave_the_base_bit_identical(kind, targets):
    model = build(kind)
    x = image()
    with torch.no_grad():
        expected = run(model, x)
    base = {n: t.clone() for n, t in model.state_dict().items()}
    za.lora(model, r=4, targets=targets)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), expected, rtol=0, atol=0)  # B starts at 0
    adapters = set(za.adapter_names(model))
    head = set(za.anatomy(model).groups["head"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and trainable == adapters | head
    optimizer = za.optimizer(model, "adamw", lr=1e-2)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in trainable}
    grads = dict.fromkeys(adapters, False)
    model.train()
    for step in range(3):  # the zero-initialised ViT heads first, then B, must move
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(run(model, image(step)), torch.tensor([0, 3])).backward()
        for name, param in model.named_parameters():
            if name in grads and param.grad is not None:
                grads[name] |= bool(param.grad.abs().sum() > 0)
        optimizer.step()
    assert all(grads.values()), [n for n, got in grads.items() if not got]
    after = {_base_name(n): t for n, t in model.state_dict().items() if "lora_" not in n}
    for name, tensor in base.items():
        if name in head:
            continue
        assert torch.equal(after[name], tensor), name  # MHA's too: updated out of place


def _base_name(name: str) -> str:
    """A wrapped layer's tensor under its original name (``.base_layer`` dropped)."""
    return name.replace(".base_layer", "")


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_merging_gives_the_same_logits_with_the_zoos_own_modules(kind):
    model = build(kind)
    keys = set(model.state_dict())
    za.lora(model, r=4, targets="all")
    optimizer = za.optimizer(model, "adamw", lr=5e-2)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(run(model, image(step)), torch.tensor([1, 2])).backward()
        optimizer.step()
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved  # the update folded in below is not zero
    model.eval()
    x = image(5)
    with torch.no_grad():
        adapted = run(model, x)
        za.merge_lora(model)
        merged = run(model, x)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert set(model.state_dict()) == keys
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def _folded_by_hand(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict with ``alpha / r * B @ A`` added once to each adapted weight."""
    state = model.state_dict()
    settings = za.lora_settings(model)
    scale = settings["alpha"] / settings["r"]
    plain = {lora_base_name(k): v.clone() for k, v in state.items() if not is_adapter(k)}
    for key in state:
        if not key.endswith(".lora_A.default.weight"):
            continue
        layer = key.removesuffix(".lora_A.default.weight")
        down, up = state[key].flatten(1), state[f"{layer}.lora_B.default.weight"].flatten(1)
        target = next(
            lora_base_name(f"{layer}.base_layer.{w}")
            for w in ("weight", "in_proj_weight")
            if f"{layer}.base_layer.{w}" in state
        )
        plain[target] += (scale * up @ down).view_as(plain[target])
    return plain


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_adapted_logits_are_the_base_with_each_update_added_once(kind):
    """Against a plain model holding ``W + alpha/r B A``: PEFT 0.21's own
    ``nn.MultiheadAttention`` layer adds the output projection's update twice."""
    model = za.lora(build(kind), r=4, alpha=8, targets="all")
    _train(model)
    reference = build(kind)
    reference.load_state_dict(_folded_by_hand(model))
    x = image(7)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), run(reference.eval(), x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "target"),
    [("vit", r"encoder\.layers\.encoder_layer_\d\.self_attention\.out_proj"),
     ("swin", r"features\.\d\.\d\.attn\.(qkv|proj)")],
)  # fmt: skip
def test_adapters_on_weights_read_functionally_learn_and_count(kind, target):
    """nn.MultiheadAttention reads out_proj.weight, Swin attn.qkv/proj.weight, as tensors:
    PEFT's own adapters there never get a gradient; zooadapt's Linear gives the adapted
    weight to the reader."""
    model = za.lora(build(kind), r=4, targets=target)
    _train(model)
    moved = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert sorted(moved) == sorted(n for n in za.adapter_names(model) if "lora_B" in n)
    reference = build(kind)
    reference.load_state_dict(_folded_by_hand(model))
    x = image(7)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), run(reference.eval(), x), rtol=1e-4, atol=1e-5)


def test_attention_adapters_keep_the_base_parameters_the_same_objects():
    model = za.lora(build("vit"), r=2, targets="qkv")
    before = {n: id(p) for n, p in model.named_parameters()}
    model.state_dict()
    list(model.modules())
    assert {n: id(p) for n, p in model.named_parameters()} == before
    assert list(dict(model.named_parameters())) == list(before)  # order kept too


@pytest.mark.parametrize("kind", ["timm", "hf", "mobilenet"])
def test_roles_are_the_same_once_adapters_are_on(kind):
    """Roles computed from the layout see a layer holding adapters as the layer itself."""
    if kind == "mobilenet":
        model = za.adapt("mobilenet_v2", pretrained=False, num_classes=3)
    else:
        model = build(kind)
    before = za.lora_roles(model)
    first = sorted(before)[0]
    za.lora(model, r=2, targets=first)
    assert za.lora_roles(model) == before
    with pytest.raises(za.AdaptError, match="already holds LoRA adapters on .* in one za.lora"):
        za.lora(model, r=2, targets=first)  # a second call: settings of two would be lost


def test_adapters_sit_in_the_freeze_group_of_their_block():
    model = za.lora(build("timm"), r=4, targets="qkv")
    groups = za.anatomy(model).groups
    owner = {name: group for group, names in groups.items() for name in names}
    for name in za.adapter_names(model):
        assert owner[name] == f"blocks.{name.split('.')[1]}", name
    optimizer = za.optimizer(model, "adamw", lr=1e-2, weight_decay=0.05, layer_decay=0.5)
    rates = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert rates == {
        "blocks.0.lora": (1e-2 * 0.5**2, 0.05), "blocks.1.lora": (1e-2 * 0.5, 0.05),
        "head": (1e-2, 0.05), "head.no_decay": (1e-2, 0.0),
    }  # fmt: skip


def test_unknown_roles_and_targets_are_refused_and_change_nothing():
    model = build("vit")
    keys = list(model.state_dict())
    with pytest.raises(za.AdaptError, match=r"declares no 'attn_out' role .*\['mlp', 'qkv'\]"):
        za.lora(model, targets="attn_out")
    with pytest.raises(za.AdaptError, match="matches no module"):
        za.lora(model, targets=r"encoder\.nothing")
    with pytest.raises(za.AdaptError, match="nor a valid module-name regex: missing \\)"):
        za.lora(model, targets=["qkv", r"encoder\.("])
    with pytest.raises(za.AdaptError, match="rank r must be a positive int"):
        za.lora(model, r=0)
    layer_norm = r"encoder\.layers\.encoder_layer_1\.ln_1"  # after a layer PEFT can adapt
    with pytest.raises(za.AdaptError, match="PEFT cannot put LoRA adapters .* not supported"):
        za.lora(model, targets=["qkv", layer_norm])
    assert list(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert za.lora_settings(model) is None and "peft_config" not in vars(model)


def test_a_family_with_an_invalid_role_regex_is_refused_naming_it():
    import dataclasses
    import re

    family = next(d.item for d in za.get_plugin_manager().families() if d.item.name == "vit")
    with pytest.raises(re.error):  # as data: at construction, so the plugin is skipped
        dataclasses.replace(family, roles={"qkv": r"encoder\.("})
    computed = dataclasses.replace(family, roles=lambda model: {"qkv": r"encoder\.("})
    model = build("vit")
    with pytest.raises(za.PluginError, match=r"family 'vit' \(roles\): error\('missing \)"):
        za.lora(model, family=computed)
    assert not za.adapter_names(model) and all(p.requires_grad for p in model.parameters())


def test_module_regexes_target_layers_no_role_names():
    model = za.lora(build("vit"), r=2, targets=[r"encoder\.layers\.encoder_layer_1\.mlp\.0"])
    assert za.adapter_names(model) == [
        "encoder.layers.encoder_layer_1.mlp.0.lora_A.default.weight",
        "encoder.layers.encoder_layer_1.mlp.0.lora_B.default.weight",
    ]


def test_adapt_injects_lora_in_the_same_call():
    model = za.adapt(tv_vit(), num_classes=3, lora={"r": 2, "targets": "mlp"})
    assert model.heads.head.out_features == 3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(za.adapter_names(model)) | {"heads.head.weight", "heads.head.bias"}
    assert all(".mlp." in n for n in za.adapter_names(model))
    with pytest.raises(za.AdaptError, match="lora= takes the arguments of za.lora"):
        za.adapt(tv_vit(), lora=8)


# -- checkpoints ---------------------------------------------------------------------------


def _train(model: torch.nn.Module, steps: int = 3, channels: int = 3) -> None:
    optimizer = za.optimizer(model, "adamw", lr=5e-2)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        x = image(step)[:, :channels]
        torch.nn.functional.cross_entropy(run(model, x), torch.tensor([1, 2])).backward()
        optimizer.step()
    model.eval()


def test_a_saved_lora_model_loads_with_its_adapters_and_the_same_logits(tmp_path):
    small = {"img_size": 32, "patch_size": 8, "depth": 2}
    model = za.adapt(
        "timm/vit_tiny_patch16_224", pretrained=False, num_classes=3, lora={"r": 4}, **small
    )
    _train(model)
    za.save(model, tmp_path / "lora.safetensors")
    loaded = za.load(tmp_path / "lora.safetensors").eval()
    x = image(7)
    with torch.no_grad():
        torch.testing.assert_close(run(loaded, x), run(model, x), rtol=0, atol=0)
    assert za.adapter_names(loaded) == za.adapter_names(model)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(za.CheckpointError, match="zoo weights"):
        za.save(model, tmp_path / "small.safetensors", adapters_only=True)  # random base


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_saved_lora_model_of_each_family_loads_into_the_same_build(kind, tmp_path):
    """Models built from a constructor: build, za.lora, then za.load_weights the file."""
    model = za.lora(build(kind), r=4, targets="all")
    _train(model)
    za.save(model, tmp_path / "lora.safetensors")
    torch.manual_seed(1)  # another base: every tensor must come from the file
    again = za.lora(MODELS[kind]().eval(), r=4, targets="all")
    report = za.load_weights(again, tmp_path / "lora.safetensors")
    assert not report.missing and not report.unexpected
    x = image(7)
    with torch.no_grad():
        torch.testing.assert_close(run(again, x), run(model, x), rtol=0, atol=0)


def test_an_adapters_only_file_holds_adapters_head_and_stem_and_rebuilds_the_base(
    tmp_path, cached_mobilenet, offline
):
    targets = [r"features\.17\.conv\.2", r"features\.18\.0"]  # pointwise convs, by regex
    model = za.adapt(
        "mobilenet_v2", pretrained="IMAGENET1K_V1", num_classes=3, in_chans=1,
        lora={"r": 2, "targets": targets},
    )  # fmt: skip
    _train(model, steps=2, channels=1)
    whole = za.save(model, tmp_path / "whole.safetensors")
    small = za.save(model, tmp_path / "small.safetensors", adapters_only=True)
    keys = set(za.read_state_dict(small))
    assert keys == {
        *(k for k in model.state_dict() if "lora_" in k),
        "classifier.1.weight", "classifier.1.bias", "features.0.0.weight", "features.0.0.bias",
    }  # fmt: skip
    assert small.stat().st_size < whole.stat().st_size / 20
    loaded = za.load(small).eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(za.CheckpointError, match="has no LoRA adapters"):
        za.save(za.adapt("mobilenet_v2", pretrained=False), tmp_path / "x.safetensors",
                adapters_only=True)  # fmt: skip


def test_the_cli_adapts_with_lora_and_the_summary_shows_the_adapters(capsys):
    from zooadapt.cli import main

    argv = ["adapt", "timm/vit_tiny_patch16_224", "--pretrained", "none", "--num-classes", "3"]
    assert main([*argv, "--lora", "r=2,alpha=4,targets=qkv+mlp"]) == 0
    out = capsys.readouterr().out
    assert "LoRA: r=2, alpha=4.0, on 36 modules" in out  # 12 blocks x (qkv, fc1, fc2)
    with pytest.raises(SystemExit):
        main([*argv, "--lora", "rank=2"])
    assert "--lora takes r=, alpha=, dropout=, targets=" in capsys.readouterr().err


# -- memory and benchmarks -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vit", "timm", "hf", "swin"])
def test_the_lora_memory_estimate_equals_a_measured_step(kind):
    from zooadapt.memory import measure_step

    model = build(kind)
    targets = "attention"
    estimate = za.estimate_memory(
        model, batch_size=2, input_size=32, lora={"r": 4, "targets": targets}
    )
    za.lora(model, r=4, targets=targets)
    full = za.estimate_memory(build(kind), batch_size=2, input_size=32)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    model.train()
    measured = measure_step(model, image(), optimizer)
    fields = ("params", "grads", "optimizer_state", "activations")
    assert {f: getattr(measured, f) for f in fields} == {f: getattr(estimate, f) for f in fields}
    assert estimate.grads < full.grads / 5 and estimate.trainable_params < full.trainable_params


def test_bench_and_the_cli_take_a_lora_setting(capsys):
    import json

    from zooadapt.cli import main

    results = za.bench(build("timm"), settings=["lora", "backbone"], batch_size=2, steps=1,
                       warmup=1, input_size=32, progress=False)  # fmt: skip
    lora_run, frozen = results
    assert lora_run.setting == "lora" and lora_run.trainable > frozen.trainable > 0
    argv = ["memory", "timm/vit_tiny_patch16_224", "--settings", "none,lora", "--json"]
    assert main([*argv, "--batch-size", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["grads"] > rows[1]["grads"] > 0


def test_info_shows_the_roles_and_the_adapters_lora_puts_on(capsys):
    import json

    from zooadapt.cli import main

    argv = ["info", "timm/vit_tiny_patch16_224", "--num-classes", "3"]
    assert main([*argv, "--lora", "r=4,alpha=8,targets=qkv+mlp"]) == 0
    text = capsys.readouterr().out
    assert "LoRA roles: qkv (12), attn_out (12), mlp (24)" in text
    assert main([*argv, "--lora", "r=4,alpha=8,targets=qkv+mlp", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["roles"]["qkv"] == [f"blocks.{i}.attn.qkv" for i in range(12)]
    lora = info["lora"]
    assert (lora["r"], lora["alpha"], len(lora["targets"])) == (4, 8, 36)
    # qkv: 4 * (192 + 576); mlp: fc1 4 * (192 + 768), fc2 4 * (768 + 192); per block
    assert lora["parameters"] == 12 * 4 * ((192 + 576) + 2 * (192 + 768))
    assert f"LoRA: r=4, alpha=8, on 36 modules, {lora['parameters']:,} adapter" in text
    assert info["trainable_parameters"] == lora["parameters"] + 192 * 3 + 3  # and the head
    assert main(["info", "timm/vit_tiny_patch16_224", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lora"] is None


# -- the conformance kit ---------------------------------------------------------------------


def test_the_kit_checks_that_every_role_matches_and_every_adapter_learns():
    import dataclasses

    from zooadapt.testing import check_family, family_report

    for kind in ("vit", "swin", "timm"):  # the built-in roles pass, on real models
        check_family(za.anatomy(build(kind)).family, MODELS[kind], input_shape=(2, 3, 32, 32))
    swin = za.get_plugin_manager().families()
    family = next(d.item for d in swin if d.item.name == "swin")
    unused = dataclasses.replace(
        family,
        roles={"qkv": r"features\.\d+\.\d+\.attn\.spare", "mlp": r"features\.\d+\.\d+\.mlp\.0",
               "attn_out": r"nothing\.here"},
    )  # fmt: skip
    report = family_report(unused, swin_with_a_spare_layer, input_shape=(2, 3, 32, 32))
    problems = "\n".join(str(p) for p in report.problems)
    assert "role 'attn_out' ('nothing\\\\.here') matches no module" in problems
    assert "received no gradient" in problems and "attn.spare" in problems
    assert "mlp.0" not in problems


def swin_with_a_spare_layer() -> torch.nn.Module:
    """A Swin whose attention blocks hold a linear layer their forward never uses."""
    model = tv_swin()
    for stage in model.features[1::2]:
        for block in stage:
            block.attn.spare = torch.nn.Linear(4, 4)
    return model


def test_training_with_adapters_resumes_exactly(tmp_path):
    small = {"img_size": 32, "patch_size": 8, "depth": 2}

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = za.adapt(
            "timm/vit_tiny_patch16_224", pretrained=False, num_classes=3, lora={"r": 4}, **small
        )
        return model, za.optimizer(model, "adamw", lr=1e-2)

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(image(seed)), torch.tensor([0, 2])).backward()
        optimizer.step()

    model, optimizer = fresh()
    step(model, optimizer, 0)
    za.save_training(model, tmp_path / "run.pt", optimizer)
    step(model, optimizer, 1)
    resumed = za.load_training(tmp_path / "run.pt")  # rebuilt: base, adapters, state
    step(resumed.model, resumed.optimizer, 1)
    assert set(za.adapter_names(resumed.model)) == set(za.adapter_names(model))
    for (name, expected), got in zip(
        model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(got, expected), name
    assert za.freeze_state(resumed.model)["frozen"] == za.freeze_state(model)["frozen"]


# -- a sample of timm and transformers architectures, on meta ------------------------------

TIMM_SAMPLE = ["deit_tiny_patch16_224", "beit_base_patch16_224", "eva02_tiny_patch14_224",
               "swin_tiny_patch4_window7_224", "cait_xxs24_224", "levit_128s",
               "maxvit_tiny_tf_224", "coatnet_0_224", "tnt_s_patch16_224",
               "efficientformer_l1", "efficientformerv2_s0", "fastvit_sa12",
               "mobilenetv4_hybrid_medium", "efficientvit_m0", "mobilevitv2_050"]  # fmt: skip
HF_SAMPLE = {
    "DeiT": {}, "Beit": {}, "Dinov2": {}, "Swin": {"embed_dim": 16, "depths": [1, 1],
    "num_heads": [1, 1]},
}  # fmt: skip


@pytest.mark.parametrize("arch", TIMM_SAMPLE)
def test_timm_transformers_get_attention_adapters_on_meta(arch):
    model = za.adapt(f"timm/{arch}", pretrained=False, num_classes=3, device="meta")
    targets = za.lora_targets(model, "attention")
    za.lora(model, r=4)
    adapted = {n.split(".lora_")[0] for n in za.adapter_names(model)}
    assert adapted == set(targets) and len(adapted) >= 2
    assert all(
        n in set().union(*za.anatomy(model).groups.values()) for n in za.adapter_names(model)
    )


#: Small configurations of the timm sample, for real steps.
TIMM_SMALL = {
    "deit_tiny_patch16_224": {"patch_size": 8, "depth": 2},
    "beit_base_patch16_224": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    "eva02_tiny_patch14_224": {"patch_size": 8, "depth": 2},
    "swin_tiny_patch4_window7_224": {"window_size": 2, "embed_dim": 16, "depths": (1, 1),
                                     "num_heads": (1, 1)},
    "cait_xxs24_224": {"patch_size": 8, "depth": 2, "depth_token_only": 1},
    "levit_128s": {},  # LinearNorm layers: the adapters go on their .linear
    "coatnet_nano_rw_224": {},  # 2-D attention: its qkv is a 1x1 convolution
    "tnt_s_patch16_224": {"patch_size": 8, "depth": 2},  # fused qk: v, proj and mlp only
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(TIMM_SMALL))
def test_the_timm_sample_trains_its_adapters_only_saves_and_merges(arch, tmp_path):
    def fresh(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        kwargs = {"img_size": 32, **TIMM_SMALL[arch]}
        model = timm.create_model(arch, num_classes=3, **kwargs).eval()
        for module in model.modules():  # LeViT starts each residual branch's BN at 0:
            if isinstance(module, torch.nn.BatchNorm1d):  # frozen, no gradient gets in
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
        return model

    lora_cycle(fresh, "all", tmp_path)


def lora_cycle(fresh: Callable[[int], torch.nn.Module], targets: object, tmp_path) -> None:
    """Inject, train, save, load into another build and merge, checking each step."""
    model = fresh(0)
    x = image(7)
    with torch.no_grad():
        expected = run(model, x)
    base = {n: t.clone() for n, t in model.state_dict().items()}
    za.lora(model, r=4, targets=targets)
    with torch.no_grad():
        torch.testing.assert_close(run(model, x), expected, rtol=0, atol=0)
    _train(model)
    adapters = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert adapters and all(model.get_parameter(n).abs().sum() > 0 for n in adapters)
    head = set(za.anatomy(model).groups["head"])
    after = {lora_base_name(k): v for k, v in model.state_dict().items() if not is_adapter(k)}
    assert all(torch.equal(after[n], t) for n, t in base.items() if n not in head)
    za.save(model, tmp_path / "lora.safetensors")
    again = za.lora(fresh(1), r=4, targets=targets)
    za.load_weights(again, tmp_path / "lora.safetensors")
    with torch.no_grad():
        adapted = run(model, x)
        torch.testing.assert_close(run(again, x), adapted, rtol=0, atol=0)
        za.merge_lora(model)
        torch.testing.assert_close(run(model, x), adapted, rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == set(base)


@pytest.mark.parametrize("kind", sorted(HF_SAMPLE))
def test_transformers_classifiers_get_q_k_v_adapters(kind, tmp_path):
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "image_size": 32, "patch_size": 8}  # fmt: skip
    if kind == "Swin":
        small = {"image_size": 32, "patch_size": 4, "window_size": 2}
    config = getattr(transformers, f"{kind}Config")(**{**small, **HF_SAMPLE[kind]}, num_labels=3)

    def fresh(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return getattr(transformers, f"{kind}ForImageClassification")(config).eval()

    model = za.lora(fresh(0), r=4, targets=["q", "k", "v"])
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in za.adapter_names(model)} <= {
        "q_proj", "k_proj", "v_proj", "query", "key", "value"
    }  # fmt: skip
    lora_cycle(fresh, ["q", "k", "v"], tmp_path)
