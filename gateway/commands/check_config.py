"""`hcrm-gateway check-config FILE`: report every problem in a config file with its line and column."""

from __future__ import annotations

import argparse
import sys

from gateway.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-config", help="validate a config file; every problem with its YAML line:column")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(config.modems)} modem(s), {len(config.api.tokens)} token(s))")
    return 0
