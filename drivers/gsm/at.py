"""Sans-IO AT command framing (V.250 / 3GPP TS 27.007 / TS 27.005), in the style of h11.

`AtConnection.send(command)` returns the bytes to write; `receive_data(bytes)` buffers what the modem sent;
`next_event()` returns typed events one at a time, or None when more bytes are needed. No I/O, no clock.

What the modem sends is split into:
- `InformationLine`: a line belonging to the command in flight (its `+XXX:` prefix at line start, or a plain
  line such as the manufacturer name); for +CMGR/+CMGL the following PDU line is attached.
- `FinalResult`: OK, ERROR, +CME ERROR, +CMS ERROR (numeric or verbose), NO CARRIER, BUSY...: ends it.
- `Prompt`: the `> ` of +CMGS/+CMGW, which arrives without a line terminator (TS 27.005 §3.5.1).
- `UnsolicitedResult`: URCs, kept apart from responses even when they arrive in the middle of one; +CMT, +CDS
  and +CBM carry their PDU line (TS 27.005 §3.4.1).
- `StaleLine`: a line nobody asked for (late answer to an abandoned command, unexpected final, garbage).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Literal

from drivers.gsm.errors import AtProtocolError

# A PDU line is at most 2 * (12 SCA octets + 164 TPDU octets) hex digits; other lines are far shorter.
# Beyond this the buffer holds garbage (wrong baud rate, binary noise) and is discarded.
MAX_LINE_BYTES = 4096

CTRL_Z = b"\x1a"  # TS 27.005 §3.5.1: ends the PDU after the prompt
ESCAPE = b"\x1b"  # TS 27.005 §3.5.1: aborts the send after the prompt

FinalKind = Literal["ok", "error", "cme", "cms", "no_carrier", "busy", "no_answer", "no_dialtone", "connect"]

_FINALS_PLAIN: dict[str, FinalKind] = {
    "OK": "ok",
    "ERROR": "error",
    # Huawei and ZTE firmware answer unknown or malformed commands with these instead of ERROR.
    "COMMAND NOT SUPPORT": "error",
    "TOO MANY PARAMETERS": "error",
    "NO CARRIER": "no_carrier",
    "BUSY": "busy",
    "NO ANSWER": "no_answer",
    "NO DIALTONE": "no_dialtone",
    "NO DIAL TONE": "no_dialtone",
}

# Verbose +CME ERROR texts (AT+CMEE=2), TS 27.007 §9.2.1, mapped back to their numeric codes.
_CME_VERBOSE = {
    "phone failure": 0,
    "no connection to phone": 1,
    "operation not allowed": 3,
    "operation not supported": 4,
    "ph-sim pin required": 5,
    "sim not inserted": 10,
    "sim pin required": 11,
    "sim puk required": 12,
    "sim failure": 13,
    "sim busy": 14,
    "sim wrong": 15,
    "incorrect password": 16,
    "sim pin2 required": 17,
    "sim puk2 required": 18,
    "memory full": 20,
    "invalid index": 21,
    "not found": 22,
    "memory failure": 23,
    "no network service": 30,
    "network timeout": 31,
    "network not allowed - emergency calls only": 32,
    "unknown": 100,
}

# Verbose +CMS ERROR texts seen for the TS 27.005 §3.2.5 codes.
_CMS_VERBOSE = {
    "me failure": 300,
    "sms service of me reserved": 301,
    "operation not allowed": 302,
    "operation not supported": 303,
    "invalid pdu mode parameter": 304,
    "invalid text mode parameter": 305,
    "sim not inserted": 310,
    "sim pin required": 311,
    "ph-sim pin required": 312,
    "sim failure": 313,
    "sim busy": 314,
    "sim wrong": 315,
    "sim puk required": 316,
    "sim pin2 required": 317,
    "sim puk2 required": 318,
    "memory failure": 320,
    "invalid memory index": 321,
    "memory full": 322,
    "smsc address unknown": 330,
    "no network service": 331,
    "network timeout": 332,
    "no +cnma acknowledgement expected": 340,
    "unknown error": 500,
}

# URCs followed by a PDU line in PDU mode (TS 27.005 §3.4.1, AT+CMGF=0).
_URC_WITH_PDU = frozenset({"+CMT", "+CDS", "+CBM"})
# URCs without a + or ^ prefix (V.250 RING; SIMCom and Quectel boot banners).
_PLAIN_URCS = frozenset(
    {"RING", "RDY", "CALL READY", "SMS READY", "PB DONE", "NORMAL POWER DOWN", "POWERED DOWN"}
)
# Responses with a PDU line after each prefixed line: +CMGR (TS 27.005 §3.4.3), +CMGL (§3.4.2).
_PREFIXES_WITH_PDU = frozenset({"+CMGR:", "+CMGL:"})
# Commands answered with the `> ` prompt before the PDU: +CMGS (§3.5.1), +CMGW (§3.5.3).
_PROMPTING = frozenset({"+CMGS", "+CMGW"})

_HEX_LINE = re.compile(r"[0-9A-Fa-f]+")
_COMMAND_NAME = re.compile(r"^AT([+^$%*#][A-Z0-9]+)", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Command:
    """One AT command line. Build it with `Command.of("AT+CMGR=3")` to derive the response rules."""

    text: str
    response_prefix: str | None = None  # e.g. "+CMGR:"; matched only at line start
    pdu_follows_prefix: bool = False  # a PDU line follows each prefixed line (+CMGR, +CMGL)
    expects_prompt: bool = False  # the modem answers with "> " and waits for the PDU (+CMGS, +CMGW)

    @classmethod
    def of(cls, text: str) -> Command:
        text = text.strip()
        match = _COMMAND_NAME.match(text)
        if not match:
            return cls(text)
        name = match.group(1).upper()
        prefix = name + ":"
        return cls(
            text,
            response_prefix=prefix,
            pdu_follows_prefix=prefix in _PREFIXES_WITH_PDU,
            expects_prompt=name in _PROMPTING,
        )


@dataclass(frozen=True)
class InformationLine:
    command: str
    text: str
    pdu: str | None = None  # the PDU line after a +CMGR/+CMGL header


@dataclass(frozen=True)
class FinalResult:
    command: str
    kind: FinalKind
    code: int | None
    text: str  # the line as received, e.g. "+CMS ERROR: 500"

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


@dataclass(frozen=True)
class Prompt:
    command: str


@dataclass(frozen=True)
class UnsolicitedResult:
    name: str  # "+CMTI", "^RSSI", "RING", "+QIND" ...
    text: str  # the whole header line
    pdu: str | None = None  # +CMT / +CDS / +CBM: the PDU line that followed

    @property
    def arguments(self) -> list[str]:
        """Comma-separated fields after the colon, quotes removed."""
        _, _, rest = self.text.partition(":")
        return parse_arguments(rest)


@dataclass(frozen=True)
class StaleLine:
    text: str
    reason: Literal["stale", "unexpected", "garbage"]


AtEvent = InformationLine | FinalResult | Prompt | UnsolicitedResult | StaleLine


def parse_arguments(text: str) -> list[str]:
    """Split `"SM",3,,"+8190"` into ['SM', '3', '', '+8190']: commas inside quotes do not split."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text.strip():
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            fields.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if current or fields:
        fields.append("".join(current).strip())
    return fields


def parse_final(text: str) -> tuple[FinalKind, int | None] | None:
    """Final result code of a line (V.250 §5.7.1, TS 27.007 §9.2, TS 27.005 §3.2.5), or None."""
    upper = text.upper()
    if upper in _FINALS_PLAIN:
        return _FINALS_PLAIN[upper], None
    if upper == "CONNECT" or upper.startswith("CONNECT "):
        return "connect", None
    match = _ERROR_LINE.match(text)
    if not match:
        return None
    family, detail = match.group(1).upper(), match.group(2).strip()
    kind: FinalKind = "cme" if family == "CME" else "cms"
    if detail.isdigit():
        return kind, int(detail)
    table = _CME_VERBOSE if kind == "cme" else _CMS_VERBOSE
    return kind, table.get(detail.lower())


def _urc_name(text: str) -> str | None:
    """Name of a line that can only be unsolicited or a response: +XXX / ^XXX prefixed, or a known banner."""
    if text[0] in "+^":
        head, colon, _ = text.partition(":")
        name = head.strip().upper()
        return name if colon or " " not in name else None
    if text.upper() in _PLAIN_URCS:
        return text.upper()
    return None


def _is_pdu_line(text: str) -> bool:
    return len(text) >= 2 and len(text) % 2 == 0 and _HEX_LINE.fullmatch(text) is not None


def _clean(raw: bytes) -> str:
    """Drop NUL and other control bytes and undecodable garbage; keep valid UTF-8 text."""
    kept = bytes(b for b in raw if b >= 0x20 and b != 0x7F)
    return kept.decode("utf-8", errors="ignore").strip()


@dataclass
class _InFlight:
    command: Command
    prompted: bool = False
    echo_seen: bool = False
    pdu_echo: str | None = None  # hex written after the prompt, echoed back when echo is on


class AtConnection:
    """State of one AT dialogue. Not thread-safe; one per serial port."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._events: deque[AtEvent] = deque()
        self._in_flight: _InFlight | None = None
        self._stale = False  # after abandon(): late lines of the dropped command may still arrive
        self._stale_prefix: str | None = None  # response prefix of the dropped command
        self._echo_on = False  # the last completed command was echoed
        self._held_urc: str | None = None  # +CMT/+CDS header waiting for its PDU line
        self._held_info: str | None = None  # +CMGR/+CMGL header waiting for its PDU line

    # ---- commands ---------------------------------------------------------------------------------------
    @property
    def command_in_flight(self) -> Command | None:
        return self._in_flight.command if self._in_flight else None

    @property
    def echo_on(self) -> bool:
        return self._echo_on

    def send(self, command: Command | str) -> bytes:
        """Start a command; returns the bytes to write (the command line ends with CR, V.250 §5.2.1)."""
        if isinstance(command, str):
            command = Command.of(command)
        if self._in_flight is not None:
            raise AtProtocolError(
                f"cannot send {command.text!r}: {self._in_flight.command.text!r} still awaits its answer"
            )
        if not command.text.upper().startswith("AT"):
            raise AtProtocolError(f"not an AT command line: {command.text!r}")
        try:
            line = command.text.encode("ascii")
        except UnicodeEncodeError:
            raise AtProtocolError(f"AT command lines are ASCII only: {command.text!r}") from None
        self._in_flight = _InFlight(command)
        return line + b"\r"

    def send_pdu(self, pdu_hex: str) -> bytes:
        """After the `> ` prompt: the PDU in hex followed by Ctrl-Z (TS 27.005 §3.5.1)."""
        flight = self._in_flight
        if flight is None or not flight.command.expects_prompt:
            raise AtProtocolError("a PDU can only follow AT+CMGS/AT+CMGW")
        if not flight.prompted:
            raise AtProtocolError(f"{flight.command.text!r}: the modem has not sent the '> ' prompt yet")
        if not _is_pdu_line(pdu_hex):
            raise AtProtocolError("the PDU must be an even number of hex digits")
        flight.pdu_echo = pdu_hex.upper()
        return pdu_hex.upper().encode("ascii") + CTRL_Z

    def cancel_prompt(self) -> bytes:
        """Abort a send at the prompt (ESC, TS 27.005 §3.5.1); the modem still answers with a final result."""
        flight = self._in_flight
        if flight is None or not flight.command.expects_prompt:
            raise AtProtocolError("no AT+CMGS/AT+CMGW prompt to cancel")
        return ESCAPE

    def abandon(self) -> Command | None:
        """Drop the command in flight after a timeout: its late lines are reported as stale until the next
        command's echo or response starts. Returns the dropped command."""
        flight = self._in_flight
        self._in_flight = None
        self._held_info = None
        if flight is not None:
            self._stale = True
            self._stale_prefix = flight.command.response_prefix
        return flight.command if flight else None

    # ---- receiving --------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self._buffer += data
        self._parse()

    def next_event(self) -> AtEvent | None:
        return self._events.popleft() if self._events else None

    def _parse(self) -> None:
        buffer = self._buffer
        while True:
            start = 0
            while start < len(buffer) and buffer[start] in b"\r\n\x00":
                start += 1
            if start:
                del buffer[:start]
            flight = self._in_flight
            if (
                buffer[:1] == b">"
                and flight is not None
                and flight.command.expects_prompt
                and not flight.prompted
            ):
                # The prompt is "\r\n> " with no terminator after it; a line never starts with ">" otherwise.
                del buffer[:1]
                flight.prompted = True
                self._flush_held()
                self._events.append(Prompt(flight.command.text))
                continue
            ends = [i for i in (buffer.find(b"\r"), buffer.find(b"\n")) if i >= 0]
            if not ends:
                if len(buffer) > MAX_LINE_BYTES:
                    self._events.append(StaleLine(_clean(bytes(buffer[:80])), "garbage"))
                    buffer.clear()
                return
            end = min(ends)
            raw = bytes(buffer[:end])
            del buffer[: end + 1]
            text = _clean(raw)
            if text:
                self._line(text)

    def _flush_held(self) -> None:
        if self._held_urc is not None:
            header, self._held_urc = self._held_urc, None
            self._events.append(UnsolicitedResult(_urc_name(header) or header, header, None))
        if self._held_info is not None and self._in_flight is not None:
            header, self._held_info = self._held_info, None
            self._events.append(InformationLine(self._in_flight.command.text, header, None))

    def _interleaved_urc(self, text: str) -> bool:
        """A single-line URC between a header and its PDU line (Huawei ^RSSI/^BOOT: faucamp #40): report it
        and keep waiting for the PDU. A PDU line never starts with + or ^."""
        name = _urc_name(text)
        if name is None or name in _URC_WITH_PDU or parse_final(text) is not None:
            return False
        flight = self._in_flight
        prefix = flight.command.response_prefix if flight else None
        if prefix is not None and text.upper().startswith(prefix):
            return False
        self._events.append(UnsolicitedResult(name, text))
        return True

    def _line(self, text: str) -> None:
        if (self._held_urc is not None or self._held_info is not None) and self._interleaved_urc(text):
            return
        if self._held_urc is not None:
            header, self._held_urc = self._held_urc, None
            if _is_pdu_line(text):
                self._events.append(UnsolicitedResult(_urc_name(header) or header, header, text.upper()))
                return
            self._events.append(UnsolicitedResult(_urc_name(header) or header, header, None))
        flight = self._in_flight
        if self._held_info is not None:
            header, self._held_info = self._held_info, None
            if flight is not None and _is_pdu_line(text):
                self._events.append(InformationLine(flight.command.text, header, text.upper()))
                return
            if flight is not None:
                self._events.append(InformationLine(flight.command.text, header, None))
        if flight is None:
            self._unsolicited_or_stale(text)
            return
        command = flight.command
        upper = text.upper()
        if upper == command.text.upper() or (flight.pdu_echo is not None and upper == flight.pdu_echo):
            flight.echo_seen = True
            self._end_stale()
            return
        final = parse_final(text)
        if final is not None:
            if self._stale and self._echo_on and not flight.echo_seen:
                # Echo is on, so this command's own answer comes after its echo: this one is late.
                self._events.append(StaleLine(text, "stale"))
                return
            kind, code = final
            self._in_flight = None
            self._end_stale()
            self._echo_on = flight.echo_seen
            if kind == "ok" and command.text.upper() in ("ATE0", "ATE1"):  # V.250 §6.2.4
                self._echo_on = command.text.upper() == "ATE1"
            self._events.append(FinalResult(command.text, kind, code, text))
            return
        prefix = command.response_prefix
        if prefix is not None and upper.startswith(prefix):
            self._end_stale()
            if command.pdu_follows_prefix:
                self._held_info = text
            else:
                self._events.append(InformationLine(command.text, text))
            return
        if _urc_name(text) is not None:
            self._unsolicited_or_stale(text)
            return
        if self._stale:
            self._events.append(StaleLine(text, "stale"))
            return
        self._events.append(InformationLine(command.text, text))

    def _end_stale(self) -> None:
        self._stale = False
        self._stale_prefix = None

    def _unsolicited_or_stale(self, text: str) -> None:
        if self._stale and self._stale_prefix is not None and text.upper().startswith(self._stale_prefix):
            self._events.append(StaleLine(text, "stale"))  # the dropped command's answer, arriving late
            return
        name = _urc_name(text)
        if name is None:
            if text.upper() == "NO CARRIER":  # a call ended while no command was running (V.250 §6.3.1)
                self._events.append(UnsolicitedResult("NO CARRIER", text))
                return
            self._events.append(StaleLine(text, "stale" if self._stale else "unexpected"))
            return
        if name in ("+CME ERROR", "+CMS ERROR"):
            self._events.append(StaleLine(text, "stale" if self._stale else "unexpected"))
            return
        if name in _URC_WITH_PDU:
            self._held_urc = text
            return
        self._events.append(UnsolicitedResult(name, text))


def pdu_message_type(pdu_hex: str) -> Literal["deliver", "submit", "status_report", "unknown"]:
    """TP-MTI of a PDU line starting with the SCA field (TS 23.040 §9.2.3.1: bits 1-0 of the first octet)."""
    try:
        sca_length = int(pdu_hex[0:2], 16)
        first_octet = int(pdu_hex[2 + 2 * sca_length : 4 + 2 * sca_length], 16)
    except ValueError:
        return "unknown"
    return {0: "deliver", 1: "submit", 2: "status_report"}.get(first_octet & 0x03, "unknown")
