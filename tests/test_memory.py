"""``estimate_memory``: the meta-device estimate agrees with a real step on the CPU.

The CPU measurement below is written independently of ``zooadapt.memory``: storages are
told apart by their real addresses (``data_ptr``), which the meta device does not have,
and the optimizer state is read from ``state_dict()``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zooadapt as za
from zooadapt.errors import AdaptError, FreezeError, OptimizerError
from zooadapt.memory import (
    MemoryEstimate,
    StepMemory,
    estimate_memory,
    format_bytes,
    max_batch_size,
    measure_step,
    parse_bytes,
)

FIELDS = ("params", "grads", "optimizer_state", "activations", "transient")
NUM_CLASSES = 10

# (model, freeze, input side, two batch sizes): small inputs keep the CPU steps fast;
# torchvision's ViT only takes its own 224.
CASES = [
    ("resnet50", None, 64, (2, 4)),
    ("resnet50", "backbone", 64, (2, 4)),
    ("densenet121", None, 64, (2, 4)),
    ("vgg16", None, 32, (2, 4)),
    ("vit_b_16", None, 224, (1, 2)),
]


# -- an independent measurement on the CPU ---------------------------------------------------


def cpu_model(name: str, freeze: str | None) -> nn.Module:
    """The model with real CPU tensors; constant values (no random init) keep it fast."""
    model = za.adapt(name, num_classes=NUM_CLASSES, pretrained=False, device="meta")
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.01)
        for buffer in model.buffers():
            buffer.fill_(1 if buffer.is_floating_point() else 0)
    model.train()
    if freeze is not None:
        za.freeze(model, freeze)
    return model


def unique_bytes(tensors) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def saved_and_backward(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes saved for backward, by storage address, excluding the model's own tensors."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    held = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            held[storage.data_ptr()] = storage  # held: no address is reused meanwhile
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x).mean()
    saved = sum(storage.nbytes() for storage in held.values())
    held.clear()
    if loss.requires_grad:
        loss.backward()
    return saved


def largest_layer(model: nn.Module, x: torch.Tensor) -> int:
    """The largest input + output bytes of any leaf module in one forward."""
    sizes = [0]

    def hook(module, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        tensors = [t for t in (*inputs, *outputs) if isinstance(t, torch.Tensor)]
        sizes.append(unique_bytes(tensors))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return max(sizes)


def measure_on_cpu(name: str, freeze: str | None, size: int, batches) -> dict[int, dict]:
    """Each field at each batch size; one optimizer step (its state does not depend on it).

    AdamW runs fused (fast on the CPU); it keeps exactly the tensors the default does.
    """
    model = cpu_model(name, freeze)
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    found = {}
    for batch in batches:
        model.zero_grad(set_to_none=True)
        x = torch.randn(batch, 3, size, size)
        activations = saved_and_backward(model, x)
        grads = unique_bytes(p.grad for p in trainable)
        found[batch] = {"params": params, "grads": grads, "activations": activations}
        found[batch]["transient"] = largest_layer(model, x)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    optimizer.step()
    state = optimizer.state_dict()["state"].values()
    state_bytes = unique_bytes(t for entry in state for t in entry.values())
    for fields in found.values():
        fields["optimizer_state"] = state_bytes
    return found


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def agreement(request):
    name, freeze, size, batches = request.param
    real = measure_on_cpu(name, freeze, size, batches)
    estimates = {
        batch: estimate_memory(
            name, batch_size=batch, input_size=size, freeze=freeze, num_classes=NUM_CLASSES
        )
        for batch in batches
    }
    return real, estimates


def test_estimate_agrees_with_a_real_cpu_step_within_5_percent(agreement):
    real, estimates = agreement
    for batch, measured in real.items():
        for field in FIELDS:
            estimated = getattr(estimates[batch], field)
            assert estimated == pytest.approx(measured[field], rel=0.05), (batch, field)
    small, large = sorted(real)
    assert estimates[large].activations > estimates[small].activations


def test_measure_step_counts_the_same_on_the_cpu_as_on_meta():
    model = cpu_model("resnet18", None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    measured = measure_step(model, torch.randn(2, 3, 64, 64), optimizer)
    estimated = estimate_memory("resnet18", batch_size=2, input_size=64, num_classes=10)
    assert isinstance(measured, StepMemory)
    assert {f: getattr(measured, f) for f in FIELDS} == {f: getattr(estimated, f) for f in FIELDS}
    assert all(p.grad is None for p in model.parameters())


# -- what freezing changes -------------------------------------------------------------------


def test_a_frozen_backbone_keeps_gradients_and_state_for_the_head_only():
    full = estimate_memory("resnet50", batch_size=8, input_size=128)
    head = estimate_memory("resnet50", batch_size=8, input_size=128, freeze="backbone")
    head_bytes = (2048 * 1000 + 1000) * 4
    assert head.params == full.params
    assert head.grads == head_bytes
    assert head.optimizer_state == 2 * head_bytes + 2 * 4  # exp_avg, exp_avg_sq, step
    assert head.activations < 0.05 * full.activations
    assert head.trainable_params == 2048 * 1000 + 1000 < full.trainable_params
    assert head.total < full.total


def test_frozen_batchnorm_and_partial_freezing_sit_in_between():
    full = estimate_memory("resnet18", batch_size=4, input_size=64)
    part = estimate_memory("resnet18", batch_size=4, input_size=64, freeze="layer2")
    head = estimate_memory("resnet18", batch_size=4, input_size=64, freeze="backbone")
    for field in ("grads", "optimizer_state", "activations"):
        assert getattr(head, field) < getattr(part, field) < getattr(full, field)


# -- max_batch_size --------------------------------------------------------------------------


def test_max_batch_size_is_the_largest_batch_that_fits():
    options = {"input_size": 64, "freeze": "layer2"}
    budget = "180MiB"
    answer = max_batch_size("resnet18", budget, **options)
    assert answer > 4
    assert estimate_memory("resnet18", batch_size=answer, **options).fits(budget)
    assert not estimate_memory("resnet18", batch_size=answer + 1, **options).fits(budget)


def test_max_batch_size_is_zero_when_even_one_sample_does_not_fit():
    one = estimate_memory("resnet18", batch_size=1, input_size=64)
    assert max_batch_size("resnet18", one.total - 1, input_size=64) == 0
    assert max_batch_size("resnet18", one.total, input_size=64) == 1


def test_max_batch_size_steps_down_where_memory_grows_faster_than_measured(monkeypatch):
    from zooadapt import memory

    def estimate(setup, batch_size):  # affine up to 10 samples, steeper beyond
        total = 1000 + 100 * batch_size + 50 * max(0, batch_size - 10)
        return StepMemory(params=total, grads=0, optimizer_state=0, activations=0, transient=0)

    monkeypatch.setattr(memory, "_estimate", estimate)
    assert max_batch_size("resnet18", 3000, input_size=64) == 16  # 2900 fits, 17: 3050


def test_aux_heads_are_trained_too():
    with_aux = estimate_memory("googlenet", batch_size=2, input_size=224, aux_logits=True)
    without = estimate_memory("googlenet", batch_size=2, input_size=224, aux_logits=False)
    assert with_aux.activations > without.activations
    assert with_aux.grads > without.grads


# -- precision, optimizers, zoos ---------------------------------------------------------------


def test_amp_shrinks_activations_and_keeps_float32_weights_gradients_and_state():
    fp32 = estimate_memory("resnet50", batch_size=8, input_size=128)
    amp = estimate_memory("resnet50", batch_size=8, input_size=128, amp="bf16")
    for field in ("params", "grads", "optimizer_state"):
        assert getattr(amp, field) == getattr(fp32, field)
    assert amp.activations < 0.75 * fp32.activations
    assert (amp.dtype, amp.amp) == ("float32", "bf16")


def test_amp_agrees_with_real_cpu_autocast_weight_copies_included():
    # At this small size autocast's bfloat16 copies of the weights, which convolutions save
    # for backward, outweigh the halving of the activations.
    model = cpu_model("resnet18", None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = saved_and_backward(model, torch.randn(4, 3, 64, 64))
    amp = estimate_memory("resnet18", batch_size=4, input_size=64, num_classes=10, amp="bf16")
    fp32 = estimate_memory("resnet18", batch_size=4, input_size=64, num_classes=10)
    assert amp.activations == pytest.approx(real, rel=0.05)
    assert amp.activations > fp32.activations


def test_a_bfloat16_model_halves_everything_but_step_counts():
    fp32 = estimate_memory("resnet18", batch_size=4, input_size=64)
    bf16 = estimate_memory("resnet18", batch_size=4, input_size=64, dtype=torch.bfloat16)
    assert bf16.params < 0.51 * fp32.params  # num_batches_tracked stays int64
    assert bf16.grads == fp32.grads // 2
    assert bf16.activations < 0.55 * fp32.activations
    assert bf16.dtype == "bfloat16"


def test_optimizer_state_follows_the_optimizer():
    sgd = estimate_memory("resnet18", batch_size=2, input_size=64, opt="sgd")
    momentum = estimate_memory(
        "resnet18",
        batch_size=2,
        input_size=64,
        opt=torch.optim.SGD,
        opt_kwargs={"momentum": 0.9},
    )
    assert sgd.optimizer_state == 0
    assert momentum.optimizer_state == momentum.grads
    assert momentum.opt == "SGD"


def test_an_optimizer_that_reads_values_is_stepped_on_cpu_stand_ins():
    adafactor = estimate_memory("resnet18", batch_size=2, input_size=64, opt="adafactor")
    assert 0 < adafactor.optimizer_state < adafactor.grads  # factored second moments


def test_a_timm_model_defaults_to_its_own_input_size():
    estimate = estimate_memory("timm/resnet18", batch_size=2, num_classes=NUM_CLASSES)
    model = za.adapt("timm/resnet18", num_classes=NUM_CLASSES, pretrained=False, device="meta")
    assert estimate.input_size == tuple(model.pretrained_cfg["input_size"][1:])
    assert estimate.params == sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    assert estimate.grads == sum(p.nbytes for p in model.parameters())
    assert estimate.activations > 0 and estimate.model == "timm/resnet18"


def test_in_chans_and_model_kwargs_reach_the_model():
    gray = estimate_memory("resnet18", batch_size=2, input_size=64, in_chans=1)
    small_vit = estimate_memory("vit_b_16", batch_size=1, input_size=64, image_size=64)
    assert gray.in_chans == 1
    assert small_vit.input_size == (64, 64)


# -- a module argument -----------------------------------------------------------------------


def test_a_module_argument_is_estimated_on_a_copy_and_left_unchanged():
    model = za.adapt("resnet18", num_classes=NUM_CLASSES, pretrained=False, freeze="layer2")
    before = {n: (p.device, p.requires_grad, p.clone()) for n, p in model.named_parameters()}
    copy = estimate_memory(model, batch_size=2, input_size=64, freeze="backbone", num_classes=3)
    by_name = estimate_memory(
        "resnet18", batch_size=2, input_size=64, freeze="backbone", num_classes=3
    )
    assert [getattr(copy, f) for f in FIELDS] == [getattr(by_name, f) for f in FIELDS]
    assert copy.model == "torchvision/resnet18"
    assert model.fc.out_features == NUM_CLASSES
    for name, param in model.named_parameters():
        device, requires_grad, value = before[name]
        assert (param.device, param.requires_grad) == (device, requires_grad)
        assert torch.equal(param, value) and param.grad is None


def test_a_module_keeps_its_own_freezing_when_no_spec_is_given():
    model = za.freeze(za.adapt("resnet18", pretrained=False, device="meta"), "backbone")
    estimate = estimate_memory(model, batch_size=2, input_size=64)
    assert estimate.trainable_params == 512 * 1000 + 1000
    assert all(p.is_meta for p in model.parameters())


# -- the result --------------------------------------------------------------------------------


def test_the_result_reads_well():
    estimate = estimate_memory("resnet18", batch_size=2, input_size=(64, 48), freeze="backbone")
    assert isinstance(estimate, MemoryEstimate)
    assert estimate.total == sum(getattr(estimate, f) for f in FIELDS)
    assert estimate.input_size == (64, 48)
    line = str(estimate)
    assert "\n" not in line and line.startswith("resnet18 batch 2 at 3x64x48")
    assert "freeze='backbone'" in line and "MiB" in line
    table = estimate.table()
    assert table.count("\n") == 6 and "activations" in table and "transient" in table
    data = estimate.as_dict()
    assert data["total"] == estimate.total and data["model"] == "resnet18"
    assert estimate.fits(estimate.total) and not estimate.fits(estimate.total - 1)
    assert estimate.fits("1TiB")


def test_format_bytes():
    assert format_bytes(3 * 2**30 // 2) == "1.50 GiB"
    assert format_bytes(5 * 2**20) == "5.0 MiB"
    assert format_bytes(80 * 1024) == "80.0 KiB"


# -- parse_bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 2**30),
        ("24gib", 24 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("1.5 GiB", 3 * 2**29),
        (" 512 MiB ", 512 * 2**20),
        ("16KiB", 16384),
        ("2TiB", 2 * 2**40),
        ("80GB", 80 * 10**9),
        ("0.1 GB", 10**8),
        ("1.5mb", 1_500_000),
        ("3kB", 3000),
        ("1TB", 10**12),
        ("100B", 100),
        ("1000", 1000),
        (".5KiB", 512),
        (2048, 2048),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text", ["", "GiB", "24 GiBs", "24G", "-1GiB", "1,5GiB", "1e9", "lots", None]
)
def test_parse_bytes_rejects_what_it_cannot_read(text):
    with pytest.raises(AdaptError, match="cannot read .* as a size in bytes.*KiB, MiB, GiB"):
        parse_bytes(text)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True, "8"])
def test_a_bad_batch_size_is_refused(batch_size):
    with pytest.raises(AdaptError, match="batch_size must be a positive int"):
        estimate_memory("resnet18", batch_size=batch_size, input_size=64)


@pytest.mark.parametrize("input_size", [0, (64,), (64, -1), "64", 64.0])
def test_a_malformed_input_size_is_refused(input_size):
    with pytest.raises(AdaptError, match="input_size must be a positive int or"):
        estimate_memory("resnet18", batch_size=2, input_size=input_size)


@pytest.mark.parametrize(
    ("name", "size", "complaint"),
    [("vit_b_16", 100, "Wrong image height"), ("vgg16", 16, "Output size is too small")],
)
def test_an_input_the_model_cannot_take_names_model_size_and_cause(name, size, complaint):
    pattern = rf"{name} cannot train on inputs .* {size}x{size}.*{complaint}"
    with pytest.raises(AdaptError, match=pattern):
        estimate_memory(name, batch_size=2, input_size=size)


def test_an_unknown_optimizer_fails_as_za_optimizer_does():
    with pytest.raises(OptimizerError, match="unknown optimizer 'adamx'; torch.optim has: .*AdamW"):
        estimate_memory("resnet18", batch_size=2, input_size=64, opt="adamx")


def test_an_optimizer_that_cannot_step_is_named():
    with pytest.raises(AdaptError, match="optimizer LBFGS cannot step on resnet18"):
        estimate_memory("resnet18", batch_size=2, input_size=64, opt="lbfgs")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amp": "fp8"}, "amp must be one of"),
        ({"dtype": torch.int8}, "dtype must be a floating-point torch.dtype"),
        ({"amp": "bf16", "dtype": torch.float16}, "cannot be combined with dtype"),
        ({"freeze": "no_such_group"}, "unknown freeze group 'no_such_group'"),
    ],
)
def test_other_bad_arguments_are_refused(kwargs, message):
    with pytest.raises((AdaptError, FreezeError), match=message):
        estimate_memory("resnet18", batch_size=2, input_size=64, **kwargs)
