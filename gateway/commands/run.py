"""`hcrm-gateway run --config FILE` and `hcrm-gateway demo`: the daemon in the foreground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the gateway daemon with a config file")
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (see examples/)")
    p.set_defaults(func=run)

    d = sub.add_parser("demo", help="run the gateway on simulated devices (what `make run` starts)")
    d.add_argument("--port", type=int, default=8080, help="API port (default 8080; 0 picks a free one)")
    d.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    d.add_argument("--token", default=None, help="API token with every scope (generated unless given)")
    d.add_argument("--data", type=Path, default=Path("./var"), metavar="DIR",
                   help="where the SQLite store and device links live (default ./var/)")
    d.add_argument("--latency", type=float, default=3.0,
                   help="simulated modems' send latency in seconds (default 3, as real modems)")
    d.set_defaults(func=demo)


def run(args: argparse.Namespace) -> int:
    from gateway.daemon import main_blocking

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    return main_blocking(config)


def demo(args: argparse.Namespace) -> int:
    from gateway.daemon import main_blocking
    from gateway.demo import DemoRoutes, demo_config

    if args.token is not None and len(args.token) < 8:
        print("demo: --token must be at least 8 characters", file=sys.stderr)
        return 2
    config, token = demo_config(args.data, host=args.host, port=args.port, token=args.token,
                                latency=args.latency)

    def announce(url: str) -> None:
        print(f"hcrm-gateway demo: API at {url}  token: {token}  (every scope)", flush=True)
        print(f"  try: curl -s -H 'Authorization: Bearer {token}' {url}/v1/modems", flush=True)

    return main_blocking(config, on_ready=announce, extra_routes=[DemoRoutes])
