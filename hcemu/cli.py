"""The ``hcemu`` command. Each subcommand lives in ``hcemu/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

# module names under hcemu.commands, in the order `hcemu --help` lists them
COMMANDS = ("fetch", "compile", "inspect", "run", "demo", "eval", "compare", "serve-sim", "economics",
            "validate", "kernels")


def build_parser() -> argparse.ArgumentParser:
    from hcemu import __version__

    parser = argparse.ArgumentParser(
        prog="hcemu", description="Emulate hard-coded LLM inference chips: bit-exact integer execution, "
                                  "silicon, GPU and cost models.")
    parser.add_argument("--version", action="version", version=f"hcemu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"hcemu.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"hcemu {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hcemu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
