"""`hcrm-gateway ivr validate|schema|graph`: check an IVR call-flow tree before it goes live.

``validate FILE`` prints every problem as ``FILE:LINE:COL: message`` (warnings marked ``warning:``), exit 0
when there is no error, 1 when there are errors (or warnings with ``--strict``), 2 on a usage error (bad
arguments, FILE or --prompts DIR not found). ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gateway.ivr.loader import validate_file
from gateway.ivr.model import tree_graph
from gateway.ivr.schema import ivr_json_schema_text

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ivr",
        help="validate IVR call-flow trees; print their JSON Schema",
        description="Tools for the IVR call-flow tree (YAML).",
    )
    actions = parser.add_subparsers(dest="ivr_action", metavar="ACTION")
    actions.required = True

    val = actions.add_parser(
        "validate",
        help="check a tree: structure, targets, reachability, cycles, prompt files",
        description="Print every problem as FILE:LINE:COL: message. Exit 0 valid, 1 problems, 2 usage.",
    )
    val.add_argument("file", metavar="FILE", help="the tree (YAML)")
    val.add_argument("--prompts", metavar="DIR", help="prompt directory (default: the directory of FILE)")
    val.add_argument("--json", action="store_true", help="one JSON object on stdout")
    val.add_argument("--strict", action="store_true", help="warnings (e.g. unreachable nodes) fail too")
    val.set_defaults(func=_validate)

    sch = actions.add_parser("schema", help="print the JSON Schema of the tree format (for editors)")
    sch.set_defaults(func=_schema)

    gra = actions.add_parser("graph", help="print the tree's nodes and edges as JSON (for drawing)")
    gra.add_argument("file", metavar="FILE")
    gra.add_argument("--prompts", metavar="DIR", help="prompt directory (default: the directory of FILE)")
    gra.set_defaults(func=_graph)


def _usage(message: str) -> int:
    sys.stderr.write(f"hcrm-gateway ivr: error: {message}\n")
    return EXIT_USAGE


def _check_paths(args: argparse.Namespace) -> str | None:
    if not Path(args.file).is_file():
        return f"{args.file}: no such file"
    if args.prompts is not None and not Path(args.prompts).is_dir():
        return f"--prompts {args.prompts}: no such directory"
    return None


def _validate(args: argparse.Namespace) -> int:
    if (message := _check_paths(args)) is not None:
        return _usage(message)
    result = validate_file(args.file, prompts_dir=args.prompts)
    failed = bool(result.errors) or (args.strict and bool(result.warnings))
    try:
        _print_report(args, result, failed)
    except BrokenPipeError:  # `| head`: the reader has gone, the exit code still tells the result
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_PROBLEMS if failed else EXIT_OK


def _print_report(args: argparse.Namespace, result, failed: bool) -> None:
    if args.json:
        report = {
            "file": args.file,
            "valid": not failed,
            "errors": len(result.errors),
            "warnings": len(result.warnings),
            "problems": [p.to_json() for p in result.problems],
        }
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
    else:
        for problem in result.problems:
            sys.stdout.write(" ".join(str(problem).split("\n")) + "\n")
        counts = f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
        if failed:
            sys.stdout.write(f"{args.file}: invalid: {counts}\n")
        else:
            nodes = len(result.tree.nodes) if result.tree else 0
            sys.stdout.write(f"{args.file}: ok ({nodes} nodes, {counts})\n")


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(ivr_json_schema_text())
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    if (message := _check_paths(args)) is not None:
        return _usage(message)
    result = validate_file(args.file, prompts_dir=args.prompts)
    if result.tree is None or result.errors:
        for problem in result.errors:
            sys.stderr.write(f"{problem}\n")
        return EXIT_PROBLEMS
    sys.stdout.write(json.dumps(tree_graph(result.tree).to_json(), ensure_ascii=False) + "\n")
    return EXIT_OK
