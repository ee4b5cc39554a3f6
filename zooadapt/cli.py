"""The ``zooadapt`` command line: list, info, adapt, predict, weights, plugins, bench, memory."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooadapt.errors import (
    AdaptError,
    AdaptWarning,
    CheckpointError,
    ModelNotFoundError,
    PluginWarning,
    ZooAdaptError,
)

if TYPE_CHECKING:  # torch and the library are imported once a command runs
    from torch import nn

    from zooadapt._core.plugins import PluginManager
    from zooadapt.freeze import FreezeSpec
    from zooadapt.types import Weights

__all__ = ["main"]

EPILOG = """examples:
  zooadapt list 'resnet*' --zoo torchvision
  zooadapt info resnet50 --num-classes 10 --freeze backbone
  zooadapt adapt resnet152 --num-classes 10 --in-chans 1 --pretrained none
  zooadapt adapt resnet50 --num-classes 10 --freeze backbone --out resnet50-10.safetensors
  zooadapt adapt mobilenet_v2 --classes tabby,espresso,moped --out three.safetensors
  zooadapt predict three.safetensors cat.jpg coffee.png --top-k 2
  zooadapt weights timm/convnext_tiny
  zooadapt plugins --json
  zooadapt bench resnet50 --settings none,last,backbone --batch-size 16 --input-size 128
  zooadapt memory vit_b_16 --settings none,backbone --batch-size 32 --budget 24GiB

add --json to list, info, predict, weights, plugins and memory for output a script can parse;
--debug (before the command) shows tracebacks.
"""

FREEZE_HELP = (
    "none, backbone (all but the head), last (last stage and head trainable), a group name "
    "(frozen up to and including it), an int (the first n groups, -2: all but the last two), "
    "or comma-separated groups (exactly those)"
)
SUFFIX = ".safetensors"


def _pretrained(value: str) -> bool | str:
    lowered = value.lower()
    if lowered in ("none", "false", "random"):
        return False
    return True if lowered in ("default", "true") else value


def _lora(value: str) -> dict[str, Any]:
    """Parse ``--lora r=8,alpha=16,dropout=0.1,targets=qkv+mlp``."""
    kinds: dict[str, Any] = {"r": int, "alpha": float, "dropout": float, "targets": str}
    settings: dict[str, Any] = {}
    for item in _settings(value):
        key, equals, text = item.partition("=")
        if not equals or key not in kinds:
            raise argparse.ArgumentTypeError(
                f"{item!r}: --lora takes {', '.join(f'{k}=' for k in kinds)} (comma-separated)"
            )
        try:
            settings[key] = kinds[key](text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {key} must be a number") from None
    if "targets" in settings and "+" in settings["targets"]:
        settings["targets"] = settings["targets"].split("+")
    return settings


def _freeze(value: str) -> FreezeSpec:
    """Parse ``--freeze``: none, backbone, last, an int, a group or comma-separated groups."""
    items = _settings(value)
    if not items:
        raise argparse.ArgumentTypeError(f"empty freeze spec; use {FREEZE_HELP}")
    if len(items) > 1:
        return items
    item = items[0]
    if item.lower() == "none":
        return None
    try:
        return int(item)
    except ValueError:
        return item


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


# -- list ------------------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace) -> None:
    from zooadapt._core.names import list_models
    from zooadapt._core.plugins import get_plugin_manager

    if args.zoo is not None:
        _check_zoo(args.zoo, get_plugin_manager())
    names = list_models(args.pattern)
    if args.zoo is not None:
        names = [name for name in names if name.startswith(f"{args.zoo}/")]
    if args.json:
        _print_json(names)
    elif names:
        print("\n".join(names))
    print(f"{len(names)} models", file=sys.stderr)


def _check_zoo(zoo: str, pm: PluginManager) -> None:
    zoos = [declared.item.name for declared in pm.zoos()]
    if zoo not in zoos:
        known = ", ".join(zoos) or "none installed"
        raise ModelNotFoundError(f"unknown zoo {zoo!r}; zoos: {known}")


# -- info ------------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> None:
    from zooadapt._core.names import resolve_name
    from zooadapt._core.plugins import get_plugin_manager
    from zooadapt._core.pretrained import available_weights
    from zooadapt.adapt import adapt

    ref = resolve_name(args.model, get_plugin_manager())
    model = adapt(
        args.model,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        freeze=args.freeze,
        lora=args.lora,
        device="meta",  # nothing is loaded; the default weights' data config and labels are read
    )
    info = _describe(model)
    info = {"model": ref.qualified, **info, "weights": _weights_dicts(available_weights(ref))}
    if args.json:
        _print_json(info)
        return
    print(f"{args.model}: family {info['family']!r} (plugin {info['plugin']!r}), {info['class']}")
    print(f"head: {', '.join(info['head'])}\nstem: {', '.join(info['stems']) or None}")
    size = "x".join(str(v) for v in info["input_size"])
    print(f"classes: {info['num_classes']}  input: {info['in_chans']} channels, {size}")
    print("\n".join(_data_lines(info)))
    print("\n".join(_group_lines(info)))
    print("\n".join(_lora_lines(info)))
    print("\n".join(_weights_lines(ref.qualified, info["weights"])))


def _describe(model: nn.Module) -> dict[str, Any]:
    """Family, plugin, head, stems and per-group parameter counts of ``model``."""
    from zooadapt._core.anatomy import anatomy
    from zooadapt.data import data_config
    from zooadapt.labels import labels
    from zooadapt.lora import adapter_names, lora_roles, lora_settings

    anat = anatomy(model)
    class_names = labels(model)
    params = dict(model.named_parameters())
    groups = []
    for group, names in anat.groups.items():
        total = sum(params[n].numel() for n in names)
        trainable = sum(params[n].numel() for n in names if params[n].requires_grad)
        flag = "yes" if trainable == total else "no" if trainable == 0 else "partly"
        groups.append(
            {
                "name": group,
                "parameters": total,
                "trainable_parameters": trainable,
                "trainable": flag,
            }
        )
    settings = lora_settings(model)
    adapters = sum(params[n].numel() for n in adapter_names(model))
    return {
        "class": type(model).__name__,
        "family": anat.family,
        "plugin": anat.plugin,
        "head": list(anat.head),
        "stems": list(anat.stems),
        "num_classes": anat.num_classes,
        "in_chans": anat.in_chans,
        "spatial_dims": anat.spatial_dims,
        "input_size": list(anat.input_size),
        "data_config": data_config(model).as_dict(),
        "labels": None if class_names is None else list(class_names),
        "groups": groups,
        "parameters": sum(g["parameters"] for g in groups),
        "trainable_parameters": sum(g["trainable_parameters"] for g in groups),
        "roles": lora_roles(model),
        "lora": None if settings is None else {**settings, "parameters": adapters},
    }


#: Class names that ``info`` prints before summarising the rest.
SHOWN_LABELS = 5


def _data_lines(info: dict[str, Any]) -> list[str]:
    """The data config and the labels, as ``info`` prints them."""
    from zooadapt.types import DataConfig

    config = DataConfig.from_dict(info["data_config"])
    numbers = lambda values: ", ".join(f"{v:.4g}" for v in values)  # noqa: E731
    sizes = lambda values: "x".join(str(v) for v in values)  # noqa: E731
    names = info["labels"]
    if names is None:
        shown = "unknown (predictions print class indices)"
    else:
        more = f", ... ({len(names) - SHOWN_LABELS} more)" if len(names) > SHOWN_LABELS else ""
        shown = f"{len(names)}: " + ", ".join(names[:SHOWN_LABELS]) + more
    return [
        f"data: mean ({numbers(config.mean)})  std ({numbers(config.std)})",
        f"      {config.interpolation}, resize {sizes(config.resize)} (crop_pct "
        f"{config.crop_pct:.4g}), {config.crop_mode} crop {sizes(config.spatial_size)}",
        f"      from {config.source}",
        f"labels: {shown}",
    ]


def _group_lines(info: dict[str, Any]) -> list[str]:
    width = max([len("total"), *(len(g["name"]) for g in info["groups"])])
    lines = [f"  {'group':<{width}}  {'parameters':>12}  trainable"]
    for group in info["groups"]:
        lines.append(
            f"  {group['name']:<{width}}  {group['parameters']:>12,}  {group['trainable']}"
        )
    total, trainable = info["parameters"], info["trainable_parameters"]
    lines.append(f"  {'total':<{width}}  {total:>12,}  {trainable:,} trainable")
    return lines


def _lora_lines(info: dict[str, Any]) -> list[str]:
    """The family's LoRA roles, and the adapters when ``--lora`` put some on."""
    roles = ", ".join(f"{role} ({len(names)})" for role, names in info["roles"].items())
    lines = [f"LoRA roles: {roles or 'none declared (target module-name regexes)'}"]
    if info["lora"] is not None:
        lora = info["lora"]
        lines.append(
            f"LoRA: r={lora['r']}, alpha={lora['alpha']:g}, on {len(lora['targets'])} modules, "
            f"{lora['parameters']:,} adapter parameters"
        )
    return lines


# -- weights ---------------------------------------------------------------------------------


def _weights_dicts(weights: Sequence[Weights]) -> list[dict[str, Any]]:
    return [
        {
            "tag": w.tag,
            "default": w.default,
            "cached": w.cached,
            "file": str(w.file),
            "url": w.url,
            "sha256": w.sha256,
            "source": w.source,
            "num_classes": w.num_classes,
        }
        for w in weights
    ]


def _weights_lines(model: str, weights: Sequence[dict[str, Any]]) -> list[str]:
    if not weights:
        return [f"{model}: no pretrained weights known; use --pretrained none or a file"]
    lines = [f"pretrained weights of {model} (* = default):"]
    for w in weights:
        sha = f"sha256 {w['sha256'][:16]}" if w["sha256"] else "sha256 unknown"
        cached = "cached" if w["cached"] else "not cached"
        lines.append(f"{'*' if w['default'] else ' '} {w['tag']}  ({cached}, {sha})")
        lines.append(f"      file:   {w['file']}")
        lines.append(f"      url:    {w['url']}")
        if w["source"]:
            lines.append(f"      source: {w['source']}")
    return lines


def _offline_lines(model: str, weights: Sequence[dict[str, Any]]) -> list[str]:
    if not weights:
        return []
    chosen = next((w for w in weights if w["default"]), weights[0])
    lines = [
        "offline: put a file at its 'file' path above and nothing is downloaded "
        "(ZOOADAPT_OFFLINE=1 forbids downloads),",
        f"  or pass the file itself: zooadapt adapt {model} "
        f"--pretrained /path/to/{Path(chosen['file']).name}",
    ]
    if chosen["url"].startswith("https://huggingface.co/"):
        lines += [
            "  these files live in the Hugging Face hub cache (HF_HUB_CACHE); copying a repo "
            "folder such as",
            f"  {_hub_folder(Path(chosen['file']))} from a machine that downloaded it works too",
        ]
    return lines


def _hub_folder(file: Path) -> Path:
    """The ``models--owner--repo`` folder of a Hugging Face cache file."""
    for parent in file.parents:
        if parent.name.startswith("models--"):
            return parent
    return file.parent


def _cmd_weights(args: argparse.Namespace) -> None:
    from zooadapt._core.names import resolve_name
    from zooadapt._core.plugins import get_plugin_manager
    from zooadapt._core.pretrained import available_weights

    ref = resolve_name(args.model, get_plugin_manager())
    weights = _weights_dicts(available_weights(ref))
    if args.json:
        _print_json({"model": ref.qualified, "weights": weights})
        return
    print(
        "\n".join(_weights_lines(ref.qualified, weights) + _offline_lines(ref.qualified, weights))
    )


# -- adapt -----------------------------------------------------------------------------------


def _cmd_adapt(args: argparse.Namespace) -> None:
    from zooadapt.adapt import adapt
    from zooadapt.loading import load_report
    from zooadapt.summary import summary

    out = _check_out(args.out) if args.out is not None else None
    classes = _classes(args.classes, args.classes_file)
    model = adapt(
        args.model,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        stem_init=args.stem_init,
        inflate=args.inflate,
        classes=classes,
        mean=args.mean,
        std=args.std,
        pretrained=_pretrained(args.pretrained),
        freeze=args.freeze,
        lora=args.lora,
        trust_pickle=args.trust_pickle,
    )
    print(summary(model))
    report = load_report(model)
    if report is not None:
        print(f"weights: {report}")
    if out is not None:
        print(f"saved {_save(model, out)}")


def _classes(listed: list[str | int] | None, file: str | None) -> list[str | int] | None:
    """``--classes`` or the lines of ``--classes-file`` (not both)."""
    if listed is not None and file is not None:
        raise AdaptError("give --classes or --classes-file, not both")
    if file is None:
        return listed
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AdaptError(f"--classes-file {file}: cannot read it ({err})") from err
    entries = [_class(line.strip()) for line in text.splitlines() if line.strip()]
    if not entries:
        raise AdaptError(f"--classes-file {file} lists no classes (one name per line)")
    return entries


def _class(value: str) -> str | int:
    """A class index when all digits, else a class name."""
    return int(value) if value.isdigit() else value


def _class_list(value: str) -> list[str | int]:
    entries = [_class(item.strip()) for item in value.split(",") if item.strip()]
    if not entries:
        raise argparse.ArgumentTypeError("empty class list; give names or indices: tabby,cup,3")
    return entries


def _floats(value: str) -> list[float | None]:
    """``0.485,0.456,0.406,0.3``; an empty entry keeps the derived value (``,,,0.3``)."""
    try:
        return [float(v) if v.strip() else None for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not comma-separated numbers") from None


def _check_out(out: str) -> Path:
    """Fail before building the model if ``--out`` cannot be written."""
    from zooadapt._core.files import check_writable

    path = Path(out)
    if path.suffix != SUFFIX:
        raise AdaptError(f"--out {out}: the file name must end in {SUFFIX}")
    try:
        return check_writable(path)
    except CheckpointError as err:
        raise CheckpointError(f"--out {out}: {err}") from None


def _save(model: nn.Module, path: Path) -> Path:
    from zooadapt.saving import save

    try:
        return save(model, path)
    except ZooAdaptError:
        raise
    except Exception as err:  # noqa: BLE001 - OSError, safetensors' own error, ...
        raise CheckpointError(f"cannot write {path}: {err}") from err


# -- predict ---------------------------------------------------------------------------------


def _cmd_predict(args: argparse.Namespace) -> None:
    from zooadapt.labels import labels
    from zooadapt.predict import predict, read_image

    if args.top_k < 1:
        raise AdaptError(f"--top-k must be positive, got {args.top_k}")
    images = [read_image(path) for path in args.images]  # every file before the model
    model = _predictor(args.model, args.pretrained)
    if labels(model) is None:
        print(f"zooadapt: {args.model} has no class names; printing class indices", file=sys.stderr)
    results = predict(model, images, top_k=args.top_k)
    if args.json:
        _print_json(
            [
                {"image": path, "top": [vars(p) for p in ranked]}
                for path, ranked in zip(args.images, results, strict=True)
            ]
        )
        return
    for path, ranked in zip(args.images, results, strict=True):
        print(f"{path}:")
        for p in ranked:
            print(f"  {p.probability:7.2%}  {p.name}")


def _predictor(source: str, pretrained: str) -> nn.Module:
    """A saved checkpoint (a path) or a registry model with its pretrained weights."""
    from zooadapt.adapt import adapt
    from zooadapt.saving import load

    if source.endswith(SUFFIX) or Path(source).is_file():
        return load(source)
    return adapt(source, pretrained=_pretrained(pretrained))


# -- plugins ---------------------------------------------------------------------------------


def _cmd_plugins(args: argparse.Namespace) -> None:
    from zooadapt._core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    info = pm.plugin_info()
    failed = [vars(f) for f in pm.failed]
    if args.json:
        _print_json({"plugins": info, "failed": failed})
        return
    if not info:
        print("no plugins found; did you `pip install -e .`?")
    width = max([len("plugin"), *(len(p["name"]) for p in [*info, *failed])])
    dist_width = max([len("distribution"), *(len(p["dist"]) for p in [*info, *failed])])
    print(f"{'plugin':<{width}}  {'distribution':<{dist_width}}  hooks; declares")
    for plugin in info:
        hooks = ", ".join(plugin["hooks"]) or "none"
        print(
            f"{plugin['name']:<{width}}  {plugin['dist']:<{dist_width}}  {hooks}{_declared(plugin)}"
        )
    for entry in failed:
        print(f"{entry['name']:<{width}}  {entry['dist']:<{dist_width}}  FAILED: {entry['error']}")


def _declared(plugin: dict[str, Any]) -> str:
    parts = [f"{kind} {', '.join(plugin[kind])}" for kind in ("zoos", "families") if plugin[kind]]
    return "; " + "; ".join(parts) if parts else ""


# -- bench and memory ------------------------------------------------------------------------


def _input_size(value: str) -> int | tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not 224, 224,160 or 96,96,96") from None
    if any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"{value!r}: sizes must be positive")
    return sizes[0] if len(sizes) == 1 else sizes


def _settings(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _cmd_bench(args: argparse.Namespace) -> None:
    from zooadapt._core.files import check_writable
    from zooadapt.bench import bench, resolve_device
    from zooadapt.report import print_table, save_json, save_plot

    resolve_device(args.device)  # every argument and output path before any work
    for option, value in (("--json", args.json), ("--plot", args.plot)):
        if value is not None:
            try:
                check_writable(value)
            except CheckpointError as err:
                raise CheckpointError(f"{option} {value}: {err}") from None
    results = bench(
        args.models,
        settings=args.settings,
        batch_size=args.batch_size,
        input_size=args.input_size,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        opt=args.opt,
        warmup=args.warmup,
        steps=args.steps,
    )
    print_table(results)
    if args.json:
        save_json(results, args.json)
    if args.plot:
        save_plot(results, args.plot)


def _cmd_memory(args: argparse.Namespace) -> None:
    from zooadapt.bench import setting_options
    from zooadapt.memory import estimate_memory, max_batch_size, parse_bytes

    budget = parse_bytes(args.budget) if args.budget else None
    rows = []
    for name in args.models:
        for setting in args.settings:
            options = {
                "input_size": args.input_size,
                **setting_options(setting),
                "opt": args.opt,
                "amp": args.amp,
            }
            estimate = estimate_memory(name, batch_size=args.batch_size, **options)
            row = {**estimate.as_dict(), "model": name, "setting": setting}
            if budget is not None:
                row["max_batch_size"] = max_batch_size(name, budget, **options)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        line = f"{row['model']:<24} {row['setting']:<10} batch {args.batch_size}: " + "  ".join(
            f"{k} {_gib(row[k])}" for k in _MEMORY_FIELDS
        )
        if budget is not None:
            line += f"  | largest batch in {args.budget}: {row['max_batch_size']}"
        print(line)


_MEMORY_FIELDS = ("params", "grads", "optimizer_state", "activations", "transient", "total")


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}GiB" if value >= 2**30 else f"{value / 2**20:.1f}MiB"


def _add_training_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument(
        "--settings",
        type=_settings,
        default=["none", "last", "backbone"],
        help="comma-separated freeze settings: none, last (last stage + head), backbone, "
        "lora (LoRA r=8 on attention + head), or group names (frozen up to and including it)",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument(
        "--input-size",
        type=_input_size,
        help="spatial size: 224, 224,160 or 96,96,96 (default: the model's own)",
    )
    parser.add_argument("--opt", default="adamw", help="a torch.optim name (default adamw)")
    parser.add_argument("--amp", choices=("bf16", "fp16"))


def _add_freeze(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--freeze", type=_freeze, metavar="SPEC", help=FREEZE_HELP)


def _add_lora(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora",
        type=_lora,
        help="LoRA adapters, e.g. r=8,targets=attention (targets: a role, attention, all, or "
        "roles joined by +: qkv+mlp)",
    )


def _add_list(commands: Any) -> None:
    listing = commands.add_parser(
        "list", help="list model names, e.g. zooadapt list 'vit*' --zoo timm"
    )
    listing.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default *)")
    listing.add_argument("--zoo", help="only this zoo's models (torchvision, timm, ...)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(run=_cmd_list)


def _add_info(commands: Any) -> None:
    info = commands.add_parser(
        "info", help="family, plugin, head, stem, groups and weights of a model"
    )
    info.add_argument("model")
    info.add_argument("--num-classes", type=int)
    info.add_argument("--in-chans", type=int)
    _add_freeze(info)
    _add_lora(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_cmd_info)


def _add_adapt(commands: Any) -> None:
    adapting = commands.add_parser(
        "adapt", help="adapt a model, print its summary and optionally save it"
    )
    adapting.add_argument("model")
    adapting.add_argument("--num-classes", type=int)
    adapting.add_argument("--in-chans", type=int)
    adapting.add_argument("--stem-init", choices=("sum", "repeat", "zeros"))
    _add_lora(adapting)
    adapting.add_argument(
        "--inflate",
        choices=("spread", "center"),
        help="load a 2-D --pretrained checkpoint into a 3-D model, each kernel inflated "
        "along depth",
    )
    adapting.add_argument(
        "--pretrained",
        default="default",
        help="default, none, a weights tag, a file, or another model's weights "
        "(torchvision/densenet121)",
    )
    adapting.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle any object in a --pretrained file (only for files you trust)",
    )
    adapting.add_argument(
        "--classes",
        type=_class_list,
        metavar="A,B,C",
        help="class names or indices for the new head; pretrained ones keep their head rows",
    )
    adapting.add_argument("--classes-file", metavar="FILE", help="class names, one per line")
    adapting.add_argument(
        "--mean", type=_floats, metavar="M,...", help="per-channel means of your data (,,,0.3)"
    )
    adapting.add_argument("--std", type=_floats, metavar="S,...", help="per-channel stds")
    _add_freeze(adapting)
    adapting.add_argument(
        "--out", metavar=f"FILE{SUFFIX}", help="write a checkpoint that za.load rebuilds"
    )
    adapting.set_defaults(run=_cmd_adapt)


def _add_predict(commands: Any) -> None:
    predicting = commands.add_parser(
        "predict", help="top-k classes of image files, by a saved checkpoint or a registry model"
    )
    predicting.add_argument("model", metavar="MODEL_OR_FILE", help=f"a name or a {SUFFIX} file")
    predicting.add_argument("images", nargs="+", metavar="IMAGE")
    predicting.add_argument("--top-k", type=int, default=5)
    predicting.add_argument(
        "--pretrained", default="default", help="for a name: default, a weights tag, or a file"
    )
    predicting.add_argument("--json", action="store_true", help="print a JSON list")
    predicting.set_defaults(run=_cmd_predict)


def _add_weights(commands: Any) -> None:
    weights = commands.add_parser(
        "weights", help="where a model's pretrained weights come from and go offline"
    )
    weights.add_argument("model")
    weights.add_argument("--json", action="store_true", help="print one JSON object")
    weights.set_defaults(run=_cmd_weights)


def _add_plugins(commands: Any) -> None:
    plugins = commands.add_parser(
        "plugins", help="installed plugins, their hooks and what they declare"
    )
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(run=_cmd_plugins)


def _add_bench(commands: Any) -> None:
    benching = commands.add_parser("bench", help="time and memory of fine-tuning per freeze")
    _add_training_options(benching, batch_size=32)
    benching.add_argument("--device", default="auto", help="cpu, cuda or auto")
    benching.add_argument("--channels-last", action="store_true")
    benching.add_argument("--warmup", type=int, default=3)
    benching.add_argument("--steps", type=int, default=10, help="timed steps")
    benching.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    benching.add_argument("--plot", metavar="FILE.png", help="also plot time and memory")
    benching.set_defaults(run=_cmd_bench)


def _add_memory(commands: Any) -> None:
    memory = commands.add_parser("memory", help="estimate fine-tuning memory, no GPU needed")
    _add_training_options(memory, batch_size=32)
    memory.add_argument("--budget", help="e.g. 24GiB: print the largest batch that fits")
    memory.add_argument("--json", action="store_true", help="print JSON")
    memory.set_defaults(run=_cmd_memory)


class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error as one line and exit status 1 like every error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print ``prog: error: message`` and where to read the usage, then exit 1."""
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zooadapt",
        description="Make pretrained vision models fine-tune-ready.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"zooadapt {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_list,
        _add_info,
        _add_adapt,
        _add_predict,
        _add_weights,
        _add_plugins,
        _add_bench,
        _add_memory,
    ):
        add(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zooadapt")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


#: Python-syntax advice in library messages, as the command line spells it.
CLI_SYNTAX = (
    ("trust_pickle=True (CLI: --trust-pickle)", "--trust-pickle"),
    ("pretrained=False", "--pretrained none"),
)


def _one_line(err: BaseException) -> str:
    """The error as one line in CLI syntax; a longer report goes to a file it names."""
    text = str(err).strip() or type(err).__name__
    if not isinstance(err, ZooAdaptError):
        text = f"{type(err).__name__}: {text}"
    for python, cli in CLI_SYNTAX:
        text = text.replace(python, cli)
    first, _, rest = text.partition("\n")
    if not rest.strip():
        return first
    import tempfile

    with tempfile.NamedTemporaryFile(
        "w", prefix="zooadapt-error-", suffix=".txt", delete=False, encoding="utf-8"
    ) as report:
        report.write(text + "\n")
    return f"{first.rstrip(':')} (full report: {report.name}; --debug shows the traceback)"


def _show_warning(
    fallback: Callable[..., None], message: Warning | str, category: type[Warning], *args: Any
) -> None:
    """Print a zooadapt warning as one line, like an error; others go to ``fallback``."""
    if issubclass(category, (AdaptWarning, PluginWarning)):
        print(f"zooadapt: warning: {message}", file=sys.stderr)
    else:
        fallback(message, category, *args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 for any error (printed as one line, with the
        full report in a file it names when there is more to say), 130 on Ctrl-C.
    """
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:  # zooadapt's own warnings as one line each, like errors
                warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
            args.run(args)
    except KeyboardInterrupt:
        print("zooadapt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error is one line; --debug re-raises
        if args.debug:
            raise
        print(f"zooadapt: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
