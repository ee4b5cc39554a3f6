"""``za.summary``: a readable table of a model's freeze groups."""

from __future__ import annotations

from torch import nn

from zooadapt._core.anatomy import anatomy
from zooadapt._core.plugins import PluginManager
from zooadapt.lora import adapter_names, lora_settings
from zooadapt.types import Family

__all__ = ["summary"]


def summary(
    model: nn.Module,
    *,
    family: str | Family | None = None,
    plugin_manager: PluginManager | None = None,
) -> str:
    """A table of the model's groups: parameters, trainable and frozen counts.

    Args:
        model: A model instance.
        family: Force a family by name, or pass a :class:`Family`.
        plugin_manager: Defaults to the shared manager with every installed plugin.

    Returns:
        A multi-line string, one row per group plus a total, and a LoRA line for a model
        with adapters (:func:`zooadapt.lora`).
    """
    anat = anatomy(model, family=family, plugin_manager=plugin_manager)
    params = dict(model.named_parameters())
    rows = []
    for group, names in anat.groups.items():
        total = sum(params[n].numel() for n in names)
        trainable = sum(params[n].numel() for n in names if params[n].requires_grad)
        rows.append((group, total, trainable))
    width = max([len("group"), *(len(r[0]) for r in rows)])
    header = f"{'group':<{width}}  {'parameters':>12}  {'trainable':>12}  {'frozen':>12}"
    lines = [
        f"{type(model).__name__} (family {anat.family!r}, plugin {anat.plugin!r})",
        f"head: {', '.join(anat.head)}    stem: {', '.join(anat.stems) or None}",
        f"classes: {anat.num_classes}    input: {anat.in_chans} channels, "
        f"{'x'.join(str(v) for v in anat.input_size)}",
        header,
        "-" * len(header),
    ]
    for group, total, trainable in rows:
        lines.append(f"{group:<{width}}  {total:>12,}  {trainable:>12,}  {total - trainable:>12,}")
    total = sum(r[1] for r in rows)
    trainable = sum(r[2] for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}}  {total:>12,}  {trainable:>12,}  {total - trainable:>12,}")
    settings = lora_settings(model)
    if settings is not None:
        adapters = sum(params[n].numel() for n in adapter_names(model))
        lines.append(
            f"LoRA: r={settings['r']}, alpha={settings['alpha']}, on "
            f"{len(settings['targets'])} modules, {adapters:,} adapter parameters"
        )
    return "\n".join(lines)
