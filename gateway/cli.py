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
