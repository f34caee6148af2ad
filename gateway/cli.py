"""`hcrm-gateway` command line: the composition root for every sub-command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# The line DSP multiplies small matrices every 20 ms tick: a multi-threaded BLAS only adds hand-offs (and
# stalls of ~5 ms per call were measured on a busy 2-core box). Set before anything imports numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Sub-command modules, each with register(subparsers). Kept in one list so `--help` shows them in order.
COMMAND_MODULES = (
    "gateway.commands.run",
    "gateway.commands.check_config",
    "gateway.commands.pdu",
    "gateway.commands.dsp",
    "gateway.commands.ivr",
    "gateway.commands.backup",
    "gateway.commands.token",
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
    _register_simulators(sub)
    return parser


def _register_simulators(sub: argparse._SubParsersAction) -> None:
    """`hcrm-gateway sim ...`: simulated devices any outside client can talk to (the composition root is
    the only place in gateway/ that knows the simulators)."""
    from simulators import gsm_modem

    sim = sub.add_parser("sim", help="run a simulated device standalone")
    kinds = sim.add_subparsers(dest="device", metavar="DEVICE")
    kinds.required = True
    gsm = kinds.add_parser("gsm", help="a GSM modem on a pseudo-terminal (AT commands, PDU and text mode)")
    gsm.add_argument("--link", required=True, metavar="PATH",
                     help="symlink to create for the modem's pty (open it like /dev/ttyUSB0)")
    gsm_modem.add_cli_options(gsm)
    gsm.set_defaults(func=_run_gsm_simulator)
    _add_sim_call(kinds)


def _add_sim_call(kinds: argparse._SubParsersAction) -> None:
    call = kinds.add_parser(
        "call", help="place a simulated incoming call into a running demo (hcrm-gateway demo)",
        description="Ring one of the demo's simulated lines from the simulated telephone network, with "
                    "caller ID in the chosen standard; watch call.incoming arrive on /v1/events. Uses the "
                    "demo-only endpoint POST /v1/demo/calls, which exists only when the daemon runs "
                    "simulators.")
    call.add_argument("--url", required=True, help="the demo's API URL, e.g. http://127.0.0.1:8080")
    call.add_argument("--token", required=True, help="an API token with calls:write (the demo token)")
    call.add_argument("--line", required=True, help="line number or name (1 = USB box, 2 = voice modem)")
    call.add_argument("--from", dest="from_", required=True, metavar="NUMBER", help="the caller's number")
    call.add_argument("--name", default=None, help="the caller's name in the caller ID")
    call.add_argument("--standard", choices=["bell202", "v23_etsi", "v23_ntt", "dtmf", "none"], default=None,
                      help="caller-ID standard (default: the line's country: v23_ntt in Japan)")
    call.add_argument("--private", action="store_true", help="withhold the number (reason P)")
    call.add_argument("--press", default="", help="keys to press once answered, comma-separated: 1,2")
    call.add_argument("--answer-after", type=int, default=8, metavar="N",
                      help="rings the caller lets the line ring before hanging up (default 8)")
    call.set_defaults(func=_run_sim_call)


def _run_sim_call(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    body = {"line": args.line, "from": args.from_, "name": args.name, "standard": args.standard,
            "private": args.private, "press": [k for k in args.press.split(",") if k],
            "answer_after": args.answer_after}
    request = urllib.request.Request(
        args.url.rstrip("/") + "/v1/demo/calls", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode())
        return 0
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("detail", detail)
        except ValueError:
            pass
        hint = " (is this a demo daemon? the endpoint exists only there)" if exc.code == 404 else ""
        print(f"hcrm-gateway sim call: {exc.code}: {detail}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hcrm-gateway sim call: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


def _run_gsm_simulator(args: argparse.Namespace) -> int:
    import functools

    import trio

    from simulators import gsm_modem

    options = gsm_modem.options_from_args(args)
    try:
        trio.run(functools.partial(gsm_modem.serve_standalone, args.link, **options))
    except OSError as exc:
        print(f"hcrm-gateway sim gsm: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
