"""`hcrm-gateway pdu decode|encode`: the SMS PDU codec for operators, one JSON object on stdout.

Errors (a malformed PDU, a bad number) print one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from drivers.gsm import pdu


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pdu",
        help="decode or encode SMS PDUs (3GPP TS 23.040)",
        description="Decode an SMS PDU as a modem shows it in PDU mode, or encode an SMS-SUBMIT.",
    )
    actions = parser.add_subparsers(dest="pdu_action", metavar="ACTION")
    actions.required = True

    dec = actions.add_parser("decode", help="decode one PDU (hex) to JSON")
    dec.add_argument("hex", metavar="HEX", help="the PDU in hex, as printed by +CMGR/+CMGL/+CMT/+CDS")
    dec.add_argument(
        "--no-smsc",
        action="store_true",
        help="the hex starts with the TPDU (no SMSC address prefix)",
    )
    dec.add_argument(
        "--tpdu-length",
        type=int,
        metavar="N",
        help="the <length> the modem reported with the PDU; repairs a wrong SMSC length octet",
    )
    dec.set_defaults(func=_decode)

    enc = actions.add_parser("encode", help="encode an SMS-SUBMIT to one hex PDU per part")
    enc.add_argument("--to", required=True, metavar="NUMBER", help="'+' prefix = international, else unknown")
    enc.add_argument("--text", required=True, metavar="TEXT")
    enc.add_argument("--report", action="store_true", help="request a status report (TP-SRR)")
    enc.add_argument("--smsc", metavar="NUMBER", help="SMSC address; default: the one stored in the modem")
    enc.add_argument("--validity", type=int, metavar="MINUTES", help="relative validity period")
    enc.add_argument("--encoding", choices=("auto", "gsm7", "ucs2"), default="auto")
    enc.add_argument("--concat-ref", type=int, default=0, metavar="REF", help="concatenation reference")
    enc.add_argument("--ref16", action="store_true", help="16-bit concatenation reference (IEI 0x08)")
    enc.set_defaults(func=_encode)


def _print_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _fail(action: str, exc: Exception) -> int:
    message = " ".join(str(exc).split())  # always one line
    sys.stderr.write(f"hcrm-gateway pdu {action}: error: {message}\n")
    return 1


def _decode(args: argparse.Namespace) -> int:
    try:
        decoded = pdu.decode(args.hex, has_smsc=not args.no_smsc, tpdu_length=args.tpdu_length)
    except pdu.PduError as exc:
        return _fail("decode", exc)
    _print_json(decoded.to_json())
    return 0


def _encode(args: argparse.Namespace) -> int:
    try:
        encoded = pdu.encode_submit(
            args.to,
            args.text,
            smsc=args.smsc,
            request_report=args.report,
            validity_minutes=args.validity,
            concat_ref=args.concat_ref,
            ref16=args.ref16,
            encoding=args.encoding,
        )
    except ValueError as exc:  # EncodeError, TooManyParts, Gsm7Error
        return _fail("encode", exc)
    _print_json(
        {
            "segments": [s.hex for s in encoded.segments],
            "encoding": encoded.encoding,
            "parts": encoded.parts,
            "tpdu_lengths": [s.tpdu_length for s in encoded.segments],
        }
    )
    return 0
