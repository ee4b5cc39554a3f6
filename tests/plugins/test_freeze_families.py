"""``za.freeze`` on one representative model of every torchvision and major timm family.

After ``freeze(model)`` only the head group trains; one real optimizer step in train mode
leaves every frozen tensor and every frozen BatchNorm statistic bit-identical.
"""

from __future__ import annotations

import pytest
import torch

import zooadapt as za

#: representative architecture -> input side. Inception v3 needs 299 px in train mode: its
#: aux branch pools Mixed_6e with a 5x5 window (smaller inputs fail in torchvision itself).
REPRESENTATIVES = {
    "alexnet": 64,
    "convnext_tiny": 32,
    "densenet121": 32,
    "efficientnet_b0": 32,
    "googlenet": 32,
    "inception_v3": 299,
    "maxvit_t": 224,
    "mnasnet0_5": 32,
    "mobilenet_v2": 32,
    "mobilenet_v3_small": 32,
    "regnet_x_400mf": 32,
    "resnet18": 32,
    "shufflenet_v2_x0_5": 32,
    "squeezenet1_1": 48,
    "swin_t": 32,
    "vgg11_bn": 32,
    "vit_b_32": 224,
    # timm: the representatives of test_timm_function.py
    "timm/resnet18": 64,
    "timm/convnext_atto": 64,
    "timm/convnextv2_atto": 64,
    "timm/efficientnet_b0": 64,
    "timm/mobilenetv3_small_050": 64,
    "timm/mobilenetv4_conv_small": 64,
    "timm/regnetx_002": 64,
    "timm/vit_tiny_patch16_224": 224,
    "timm/deit_tiny_distilled_patch16_224": 224,
    "timm/swin_tiny_patch4_window7_224": 224,
    "timm/eva02_tiny_patch14_224": 224,
    "timm/coatnet_nano_rw_224": 224,
    "timm/maxxvit_rmlp_nano_rw_256": 256,
    "timm/fastvit_t8": 64,
    "timm/vit_small_resnet26d_224": 224,
    "timm/mobilevit_xxs": 64,
    "timm/tresnet_m": 64,
    "timm/crossvit_tiny_240": 240,
}


def _loss(output) -> torch.Tensor:
    """Sum of all logits, aux heads included (GoogLeNet / Inception return tuples)."""
    outputs = output if isinstance(output, tuple) else (output,)
    return sum(o.float().square().mean() for o in outputs if o is not None)


def _frozen_batchnorm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    held = set(za.freeze_state(model)["norms"])
    return {
        f"{name}.{buffer_name}": buffer.clone()
        for name, module in model.named_modules()
        if name in held
        for buffer_name, buffer in module.named_buffers(recurse=False)
    }


@pytest.mark.parametrize("arch", sorted(REPRESENTATIVES))
def test_one_step_after_freeze_changes_only_the_head(arch):
    torch.manual_seed(0)
    model = za.adapt(arch, num_classes=3, pretrained=False)
    groups = za.anatomy(model).groups
    head = set(list(groups.values())[-1])
    za.freeze(model)

    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == head
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(za.freeze_state(model)["norms"]) == len(batchnorms)

    frozen = {n: p.detach().clone() for n, p in params.items() if n not in head}
    buffers = _frozen_batchnorm_buffers(model)
    before_head = {n: params[n].detach().clone() for n in head}
    opt = za.optimizer(model, lr=1e-2)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(params[n]) for n in head}

    model.train()
    size = REPRESENTATIVES[arch]
    _loss(model(torch.rand(2, 3, size, size))).backward()
    opt.step()

    for name, value in frozen.items():
        assert params[name].grad is None, name
        assert torch.equal(params[name], value), name
    for name, value in buffers.items():
        assert torch.equal(model.get_buffer(name), value), name
    assert all(not torch.equal(params[n], before_head[n]) for n in head)
