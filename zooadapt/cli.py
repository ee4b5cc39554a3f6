"""The ``zooadapt`` command line: list models, inspect them, adapt them, list plugins."""

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
