"""The ``zooadapt`` command line: list, inspect, adapt, benchmark, estimate memory."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from zooadapt.adapt import adapt
from zooadapt.anatomy import anatomy
from zooadapt.errors import ZooAdaptError
from zooadapt.manager import get_plugin_manager
from zooadapt.names import list_models
from zooadapt.summary import summary

__all__ = ["main"]

EPILOG = """examples:
  zooadapt list 'resnet*'
  zooadapt info resnet50
  zooadapt adapt resnet152 --num-classes 10 --in-chans 1 --pretrained none
  zooadapt plugins --json
  zooadapt bench resnet50 --freeze none,last,backbone --batch-size 16 --input-size 128
  zooadapt memory vit_b_16 --freeze none,backbone --batch-size 32 --budget 24GiB
"""


def _pretrained(value: str) -> bool | str:
    lowered = value.lower()
    if lowered in ("none", "false", "random"):
        return False
    return True if lowered in ("default", "true") else value


def _cmd_list(args: argparse.Namespace) -> None:
    names = list_models(args.pattern)
    print("\n".join(names))
    print(f"{len(names)} models", file=sys.stderr)


def _cmd_info(args: argparse.Namespace) -> None:
    model = adapt(args.model, pretrained=False, device="meta")
    info = anatomy(model)
    print(f"{args.model}: family {info.family!r} (plugin {info.plugin!r})")
    print(f"head: {', '.join(info.head)}\nstem: {', '.join(info.stems) or None}")
    for group, names in info.groups.items():
        print(f"  {group:<12} {len(names):>4} tensors")


def _cmd_adapt(args: argparse.Namespace) -> None:
    model = adapt(
        args.model,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        stem_init=args.stem_init,
        pretrained=_pretrained(args.pretrained),
    )
    print(summary(model))


def _cmd_plugins(args: argparse.Namespace) -> None:
    pm = get_plugin_manager()
    info = pm.plugin_info()
    failed = [vars(f) for f in pm.failed]
    if args.json:
        print(json.dumps({"plugins": info, "failed": failed}, indent=2))
        return
    if not info:
        print("no plugins found; did you `pip install -e .`?")
    for plugin in info:
        declared = ", ".join(plugin["zoos"] + plugin["families"])
        print(f"{plugin['name']:<14} {plugin['dist']:<24} {declared}")
    for entry in failed:
        print(f"{entry['name']:<14} FAILED: {entry['error']}")


def _settings(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _cmd_bench(args: argparse.Namespace) -> None:
    from zooadapt.benchmark import bench
    from zooadapt.report import print_table, save_json, save_plot

    results = bench(
        args.models,
        freeze=args.freeze,
        batch_size=args.batch_size,
        input_size=args.input_size,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        optimizer=args.optimizer,
        warmup=args.warmup,
        steps=args.steps,
    )
    print_table(results)
    if args.json:
        save_json(results, args.json)
    if args.plot:
        save_plot(results, args.plot)


def _cmd_memory(args: argparse.Namespace) -> None:
    from zooadapt.benchmark import freeze_spec
    from zooadapt.memory import estimate_memory, max_batch_size, parse_bytes

    budget = parse_bytes(args.budget) if args.budget else None
    rows = []
    for name in args.models:
        for setting in args.freeze:
            options = {
                "input_size": args.input_size,
                "freeze": freeze_spec(setting),
                "optimizer": args.optimizer,
                "amp": args.amp,
            }
            estimate = estimate_memory(name, batch_size=args.batch_size, **options)
            row = {**estimate.as_dict(), "model": name, "freeze": setting}
            if budget is not None:
                row["max_batch_size"] = max_batch_size(name, budget, **options)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        line = f"{row['model']:<24} {row['freeze']:<10} batch {args.batch_size}: " + "  ".join(
            f"{k} {_gib(row[k])}" for k in _MEMORY_FIELDS
        )
        if budget is not None:
            line += f"  | largest batch in {args.budget}: {row['max_batch_size']}"
        print(line)


_MEMORY_FIELDS = ("params", "grads", "optimizer_state", "activations", "total")


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}GiB" if value >= 2**30 else f"{value / 2**20:.1f}MiB"


def _add_training_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument(
        "--freeze",
        type=_settings,
        default=["none", "last", "backbone"],
        help="comma-separated: none, last (last stage + head), backbone, or group names",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--amp", choices=("bf16", "fp16"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zooadapt",
        description="Make pretrained vision models fine-tune-ready.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list model names, e.g. zooadapt list 'vit*'")
    listing.add_argument("pattern", nargs="?", default="*")
    listing.set_defaults(run=_cmd_list)

    info = commands.add_parser("info", help="family, head, stem and groups of a model")
    info.add_argument("model")
    info.set_defaults(run=_cmd_info)

    adapting = commands.add_parser("adapt", help="adapt a model and print its summary")
    adapting.add_argument("model")
    adapting.add_argument("--num-classes", type=int)
    adapting.add_argument("--in-chans", type=int)
    adapting.add_argument("--stem-init", choices=("sum", "repeat", "zeros"))
    adapting.add_argument(
        "--pretrained", default="default", help="default, none, a weights tag, or a file"
    )
    adapting.set_defaults(run=_cmd_adapt)

    plugins = commands.add_parser("plugins", help="installed plugins and what they declare")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(run=_cmd_plugins)

    benching = commands.add_parser("bench", help="time and memory of fine-tuning per freeze")
    _add_training_options(benching, batch_size=32)
    benching.add_argument("--device", default="auto", help="cpu, cuda or auto")
    benching.add_argument("--channels-last", action="store_true")
    benching.add_argument("--warmup", type=int, default=3)
    benching.add_argument("--steps", type=int, default=10, help="timed steps")
    benching.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    benching.add_argument("--plot", metavar="FILE.png", help="also plot time and memory")
    benching.set_defaults(run=_cmd_bench)

    memory = commands.add_parser("memory", help="estimate fine-tuning memory, no GPU needed")
    _add_training_options(memory, batch_size=32)
    memory.add_argument("--budget", help="e.g. 24GiB: print the largest batch that fits")
    memory.add_argument("--json", action="store_true", help="print JSON")
    memory.set_defaults(run=_cmd_memory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except ZooAdaptError as err:
        if args.debug:
            raise
        print(f"zooadapt: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
