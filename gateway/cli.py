"""`hcrm-gateway` command line: the composition root for every sub-command."""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, each with register(subparsers). Kept in one list so `--help` shows them in order.
COMMAND_MODULES = (
    "gateway.commands.run",
    "gateway.commands.check_config",
    "gateway.commands.pdu",
    "gateway.commands.dsp",
    "gateway.commands.sim",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcrm-gateway",
        description="Telephony and SMS gateway for hospital patient-relations centres.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # pragma: no cover - only while a module is being written
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
