"""A simulated GSM modem (Quectel-like) on a real pseudo-terminal, for tests, demos and client debugging.

It answers the AT command set of ITU-T V.250, 3GPP TS 27.007 (general) and TS 27.005 (SMS) that SMS
clients use (gammu, python-gsmmodem, minicom, our own driver), keeps SIM/ME message storages, sends with a
realistic latency, produces status reports, and can misbehave on purpose (faults) so a driver can be tested
against the failures seen in the field (see /work/shared/notes/sms.md §4–§5).

Layout: :class:`AtFramer` is the sans-IO input side (bytes -> command lines / prompt text, plus the echo);
:class:`SimulatedGsmModem` holds the state and runs the commands; :mod:`simulators.pty_port` moves bytes.
All output goes through one ordered queue so URCs never split a response unless a fault asks for it.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import signal
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Literal

import trio

from simulators import sms_pdu
from simulators.pty_port import PortUnplugged, PtyPort

__all__ = [
    "AtFramer",
    "CommandLine",
    "PromptAbort",
    "PromptText",
    "SentMessage",
    "SimulatedGsmModem",
    "StorageFull",
    "StoredMessage",
    "add_cli_options",
    "options_from_args",
    "serve_standalone",
]

log = logging.getLogger("hcrm.simulators.gsm")

JST = timezone(timedelta(hours=9), "JST")
CTRL_Z = 0x1A
ESC = 0x1B
BACKSPACE = 0x08
MAX_LINE = 2048  # V.250 §5.2.1 asks for at least 40 characters; real modules take 500-4000.

# ---------------------------------------------------------------------------------------------------------
# Input framing (sans-IO)


@dataclass(frozen=True)
class CommandLine:
    text: str  # without the terminating CR


@dataclass(frozen=True)
class PromptText:
    data: bytes  # everything typed after "> " up to Ctrl-Z (excluded)


@dataclass(frozen=True)
class PromptAbort:
    """ESC in the prompt: the message is discarded (TS 27.005 §3.5.1)."""


FramerEvent = CommandLine | PromptText | PromptAbort


class AtFramer:
    """Splits the byte stream into command lines (ended by S3 = CR) or, in prompt mode, message text.

    ``next_event()`` consumes input one event at a time, so the caller can switch to prompt mode right
    after ``AT+CMGS=..`` even when the PDU arrived in the same read. It also returns the bytes to echo
    (V.250 §6.2.4 ATE): every consumed byte except Ctrl-Z/ESC, so interactive typing is echoed at once.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._line = bytearray()
        self.prompt_mode = False

    def receive_data(self, data: bytes) -> None:
        self._pending += data

    def enter_prompt(self) -> None:
        self.prompt_mode = True
        self._line.clear()

    def reset(self) -> None:
        self._pending.clear()
        self._line.clear()
        self.prompt_mode = False

    def next_event(self) -> tuple[bytes, FramerEvent | None]:
        echo = bytearray()
        while self._pending:
            byte = self._pending.pop(0)
            if self.prompt_mode:
                if byte == CTRL_Z:
                    data = bytes(self._line)
                    self._line.clear()
                    self.prompt_mode = False
                    return bytes(echo), PromptText(data)
                if byte == ESC:
                    self._line.clear()
                    self.prompt_mode = False
                    return bytes(echo), PromptAbort()
                echo.append(byte)
                if byte == 0x0D:
                    echo += b"\n> "  # TS 27.005 §3.5.1: each CR inside the text gets a new prompt
                self._line.append(byte)
                continue
            echo.append(byte)
            if byte == 0x0D:
                text = self._line.decode("latin-1")
                self._line.clear()
                return bytes(echo), CommandLine(text)
            if byte == 0x0A and not self._line:
                continue  # the LF of a client's CR LF
            if byte in (BACKSPACE, 0x7F):
                if self._line:
                    self._line.pop()
                continue
            if len(self._line) < MAX_LINE:
                self._line.append(byte)
        return bytes(echo), None


# ---------------------------------------------------------------------------------------------------------
# Command line parsing (V.250 §5.2-§5.4)


@dataclass(frozen=True)
class AtCommand:
    name: str  # upper case: "E", "Z", "&F", "+CMGS", "^CURC"
    form: Literal["exec", "read", "test", "set"]
    args: tuple[str | None, ...] = ()  # quotes removed; None for an omitted parameter
    quoted: tuple[bool, ...] = ()


class _SyntaxError(Exception):
    pass


def _split_params(text: str) -> tuple[tuple[str | None, ...], tuple[bool, ...]]:
    args: list[str | None] = []
    quoted: list[bool] = []
    current: list[str] = []
    in_quotes = was_quoted = False
    for ch in text:
        if ch == '"':
            in_quotes = not in_quotes
            was_quoted = True
        elif ch == "," and not in_quotes:
            value = "".join(current)
            args.append(value if (value.strip() or was_quoted) else None)
            quoted.append(was_quoted)
            current, was_quoted = [], False
        else:
            current.append(ch)
    if in_quotes:
        raise _SyntaxError("unterminated string")
    value = "".join(current)
    args.append(value if (value.strip() or was_quoted) else None)
    quoted.append(was_quoted)
    args = [a if (a is None or q) else a.strip() for a, q in zip(args, quoted, strict=True)]
    return tuple(args), tuple(quoted)


def parse_command_line(line: str) -> list[AtCommand] | None:
    """Commands in one line after the ``AT`` prefix; None when the line is not a command (no AT)."""
    stripped = line.strip()
    if stripped[:2].upper() != "AT":
        return None
    body = stripped[2:]
    commands: list[AtCommand] = []
    pos = 0
    while pos < len(body):
        ch = body[pos]
        if ch in " ;":
            pos += 1
            continue
        if ch in "+^$%*#":  # extended command: runs to an unquoted ';' (V.250 §5.4.1)
            end, in_quotes = pos, False
            while end < len(body) and (body[end] != ";" or in_quotes):
                if body[end] == '"':
                    in_quotes = not in_quotes
                end += 1
            commands.append(_parse_extended(body[pos:end]))
            pos = end
            continue
        if ch == "&":
            name = body[pos : pos + 2].upper()
            pos += 2
        elif ch.upper() == "S" and pos + 1 < len(body) and body[pos + 1].isdigit():
            end = pos + 1
            while end < len(body) and body[end].isdigit():
                end += 1
            name = body[pos:end].upper()
            pos = end
            if pos < len(body) and body[pos] == "?":
                commands.append(AtCommand(name, "read"))
                pos += 1
                continue
            if pos < len(body) and body[pos] == "=":
                end = pos + 1
                while end < len(body) and body[end].isdigit():
                    end += 1
                commands.append(AtCommand(name, "set", (body[pos + 1 : end],), (False,)))
                pos = end
                continue
            commands.append(AtCommand(name, "exec"))
            continue
        elif ch.isalpha():
            name = ch.upper()
            pos += 1
        else:
            raise _SyntaxError(f"unexpected character {ch!r}")
        end = pos
        while end < len(body) and body[end].isdigit():
            end += 1
        number = body[pos:end]
        pos = end
        commands.append(AtCommand(name, "set" if number else "exec", (number,) if number else (), ()))
    return commands


def _parse_extended(text: str) -> AtCommand:
    text = text.strip()
    if text.endswith("=?"):
        return AtCommand(text[:-2].upper(), "test")
    if "=" in text:
        name, _, params = text.partition("=")
        args, quoted = _split_params(params)
        return AtCommand(name.strip().upper(), "set", args, quoted)
    if text.endswith("?"):
        return AtCommand(text[:-1].upper(), "read")
    return AtCommand(text.upper(), "exec")


# ---------------------------------------------------------------------------------------------------------
# Errors as the TE sees them


class CommandError(Exception):
    """Final result of a failed command: ERROR, +CME ERROR or +CMS ERROR per AT+CMEE."""

    def __init__(self, family: Literal["plain", "cme", "cms"], code: int = 0) -> None:
        super().__init__(f"{family} {code}")
        self.family = family
        self.code = code


def _cme(code: int) -> CommandError:
    return CommandError("cme", code)


def _cms(code: int) -> CommandError:
    return CommandError("cms", code)


# TS 27.007 §9.2 and TS 27.005 §3.2.5 texts for AT+CMEE=2.
CME_TEXT = {
    3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted", 11: "SIM PIN required",
    12: "SIM PUK required", 13: "SIM failure", 14: "SIM busy", 16: "incorrect password", 21: "invalid index",
    30: "no network service", 50: "incorrect parameters", 100: "unknown",
}
CMS_TEXT = {
    38: "network out of order", 41: "temporary failure", 42: "congestion", 300: "ME failure",
    302: "operation not allowed", 303: "operation not supported", 304: "invalid PDU mode parameter",
    305: "invalid text mode parameter", 310: "SIM not inserted", 311: "SIM PIN required", 313: "SIM failure",
    314: "SIM busy", 320: "memory failure", 321: "invalid memory index", 322: "memory full",
    330: "SMSC address unknown", 331: "no network service", 332: "network timeout",
    340: "no +CNMA acknowledgement expected", 500: "unknown error",
}

# ---------------------------------------------------------------------------------------------------------
# Message storage (TS 27.005 §3.1 <mem1..3>, <stat>)

STAT_TEXT = {0: "REC UNREAD", 1: "REC READ", 2: "STO UNSENT", 3: "STO SENT", 4: "ALL"}
TEXT_STAT = {v: k for k, v in STAT_TEXT.items()}
STORAGES = ("SM", "ME", "MT", "SR")


class StorageFull(Exception):
    """The storage chosen for an incoming message has no free slot."""


@dataclass
class StoredMessage:
    kind: Literal["deliver", "submit", "status_report"]
    stat: int
    pdu_hex: str
    tpdu_length: int
    number: str  # originator, destination or recipient
    text: str | None = None
    encoding: str | None = None
    timestamp: datetime | None = None  # SCTS
    reference: int | None = None  # status report TP-MR
    status: int | None = None  # TP-ST
    discharged: datetime | None = None


class _Storage:
    def __init__(self, name: str, capacity: int, index_base: int) -> None:
        self.name, self.capacity, self.base = name, capacity, index_base
        self.slots: dict[int, StoredMessage] = {}

    @property
    def used(self) -> int:
        return len(self.slots)

    def in_range(self, index: int) -> bool:
        return self.base <= index < self.base + self.capacity

    def store(self, message: StoredMessage) -> int:
        for index in range(self.base, self.base + self.capacity):
            if index not in self.slots:
                self.slots[index] = message
                return index
        raise StorageFull(f"storage {self.name} is full ({self.capacity} messages)")


@dataclass(frozen=True)
class SentMessage:
    """One SMS-SUBMIT the simulated network accepted (one record per part)."""

    destination: str
    text: str | None
    encoding: str
    mr: int
    concat: sms_pdu.Concat | None
    time: float  # trio.current_time() when +CMGS/+CMSS was answered
    request_report: bool
    mode: Literal["pdu", "text"]
    pdu_hex: str  # the SUBMIT as sent, with the SCA field
    validity: int | bytes | None = None

    @property
    def part(self) -> tuple[int, int]:
        """(seq, total), (1, 1) for a single-part message."""
        return (self.concat.seq, self.concat.total) if self.concat else (1, 1)


@dataclass
class _Settings:
    """Volatile settings, back to factory values on ATZ, AT&F, AT+CFUN=1,1 and replug."""

    echo: bool = True
    cmee: int = 0
    cmgf: int = 0
    creg_n: int = 0
    cnmi: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    csms: int = 0
    cscs: str = "GSM"
    csmp: list[int] = field(default_factory=lambda: [17, 167, 0, 0])
    csdh: int = 0
    cmms: int = 0
    cops_format: int = 0
    mem: list[str] = field(default_factory=lambda: ["SM", "SM", "SM"])


@dataclass
class _Unacknowledged:
    """A +CMT/+CDS sent under AT+CSMS=1 that waits for AT+CNMA (TS 27.005 §3.4.4)."""

    message: StoredMessage
    storage: str
    acked: trio.Event = field(default_factory=trio.Event)


# ---------------------------------------------------------------------------------------------------------
# The modem


class SimulatedGsmModem:
    """A GSM modem on a pty. Configure with keywords; ``await run()`` serves it until cancelled."""

    def __init__(
        self,
        *,
        name: str = "sim0",
        imei: str = "867962040000001",
        imsi: str = "440100000000001",
        manufacturer: str = "SIMULATED",
        model: str = "EC25-SIM",
        revision: str = "EC25SIMR01A01",
        operator: str = "NTT DOCOMO",
        operator_numeric: str = "44010",
        smsc: str = "+819000000000",
        own_number: str = "+819000000001",
        pin: str | None = None,
        rssi: int = 20,
        send_latency: float = 3.0,
        report_delay: float = 2.0,
        report_status: int = 0,
        ack_timeout: float = 15.0,
        storage_sizes: dict[str, int] | None = None,
        index_base: int = 0,
        echo: bool = True,
        initial_mr: int = 0,
        sr_announced_as_sm: bool = False,
        timezone_: timezone = JST,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.name = name
        self.imei, self.imsi = imei, imsi
        self.manufacturer, self.model, self.revision = manufacturer, model, revision
        self.operator, self.operator_numeric = operator, operator_numeric
        self.smsc, self.own_number = smsc, own_number
        self.pin = pin
        self.rssi = rssi
        self.send_latency = send_latency
        self.report_delay = report_delay
        self.report_status = report_status
        self.ack_timeout = ack_timeout
        self.sr_announced_as_sm = sr_announced_as_sm
        self._default_echo = echo
        self._tz = timezone_
        self._now = now or (lambda: datetime.now(self._tz).replace(microsecond=0))
        sizes = {"SM": 30, "ME": 100, "SR": 30} | (storage_sizes or {})
        self._storages = {n: _Storage(n, sizes[n], index_base) for n in ("SM", "ME", "SR")}
        self._index_base = index_base

        self.settings = _Settings(echo=echo)
        self.sent: list[SentMessage] = []
        self._sent_changed = trio.Event()
        self._next_mr = initial_mr & 0xFF
        self._next_concat_ref = 1
        self._sim_ready = pin is None
        self._pin_attempts = 3
        self._cfun = 1
        self._network_stat = 1  # what the network offers; see _registration()

        # faults
        self._no_answer = False
        self._send_failures: deque[int] = deque()
        self._report_plan: deque[tuple[int | None, float | None]] = deque()
        self._garbage_probability = 0.0
        self._rng = random.Random(0)
        self._vendor_urc: str | None = None

        # runtime
        self._port: PtyPort | None = None
        self._nursery: trio.Nursery | None = None
        self._session_scope: trio.CancelScope | None = None
        self._plugged = trio.Event()
        self._generation = 0
        self._out_send, self._out_receive = trio.open_memory_channel[tuple[int, bytes]](math.inf)
        self._busy = False
        self._held_urcs: list[list[str]] = []  # held while a command runs (TS 27.005 §3.4.1 mode 1/2)
        self._buffered_sms_urcs: list[list[str]] = []  # held while AT+CNMI mode is 0
        self._unacked: _Unacknowledged | None = None
        self._ack_backlog: deque[tuple[StoredMessage, str, str]] = deque()
        self._framer = AtFramer()

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        """What a client opens (the symlink when run() got one), None before run()."""
        return self._port.path if self._port else None

    async def run(self, *, link: str | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._port is not None:
            raise RuntimeError(f"simulated modem {self.name} is already running")
        self._port = PtyPort(link)
        path = self._port.open()
        self._plugged.set()
        log.info("modem %s listening on %s (%s)", self.name, path, self._port.slave_path)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_output)
                task_status.started(path)
                await self._serve_sessions()
        finally:
            self._nursery = None
            self._port.close()
            self._port = None

    async def _serve_sessions(self) -> None:
        while True:
            await self._plugged.wait()
            self._framer.reset()
            with trio.CancelScope() as scope:
                self._session_scope = scope
                try:
                    await self._serve_session()
                except PortUnplugged:
                    pass
            self._session_scope = None
            self._busy = False

    async def _serve_session(self) -> None:
        while True:
            event = await self._next_event()
            if isinstance(event, CommandLine):
                await self._execute_line(event.text)
            # prompt text outside a prompt cannot happen: the framer is in prompt mode only inside one

    async def _next_event(self) -> FramerEvent:
        assert self._port is not None
        while True:
            echo, event = self._framer.next_event()
            if echo and self.settings.echo and not self._no_answer:
                self._emit(echo)
            if event is not None:
                return event
            data = await self._port.receive_some()
            log.debug("%s <- %r", self.name, data)
            self._framer.receive_data(data)

    async def _write_output(self) -> None:
        async for generation, data in self._out_receive:
            port = self._port
            if port is None or generation != self._generation or not port.plugged:
                continue
            log.debug("%s -> %r", self.name, data)
            await port.send_all(data)

    def _emit(self, data: bytes) -> None:
        self._out_send.send_nowait((self._generation, data))

    # -- output formatting ------------------------------------------------------------------------------

    def _emit_lines(self, lines: list[str]) -> None:
        """One information response or URC: CR LF, lines joined by CR LF, CR LF (V.250 §5.7.1)."""
        self._emit(("\r\n" + "\r\n".join(lines) + "\r\n").encode("latin-1", "replace"))

    def _junk(self) -> None:
        if self._garbage_probability and self._rng.random() < self._garbage_probability:
            length = self._rng.randint(1, 24)
            junk = bytes(b for b in self._rng.randbytes(length * 2) if b not in (0x0D, 0x0A))[:length]
            self._emit(b"\r\n" + (junk or b"\xff") + b"\r\n")

    def _emit_response(self, groups: list[list[str]], final: str) -> None:
        for lines in groups:
            self._junk()
            if self._vendor_urc is not None:
                # Vendor URC lands between the first line and the rest (faucamp/python-gsmmodem #40).
                self._emit_lines(lines[:1])
                self._emit_lines([self._vendor_urc])
                if lines[1:]:
                    self._emit(("\r\n".join(lines[1:]) + "\r\n").encode("latin-1", "replace"))
            else:
                self._emit_lines(lines)
        if self._vendor_urc is not None and not groups:
            self._emit_lines([self._vendor_urc])
        self._junk()
        self._emit_lines([final])

    def _format_error(self, error: CommandError) -> str:
        # +CME ERROR follows AT+CMEE (TS 27.007 §9.1); +CMS ERROR is a final result code of its own
        # (TS 27.005 §3.2.5), numeric unless AT+CMEE=2 asks for text.
        cmee = self.settings.cmee
        if error.family == "plain" or (error.family == "cme" and cmee == 0):
            return "ERROR"
        prefix = "+CME ERROR: " if error.family == "cme" else "+CMS ERROR: "
        if cmee == 2:
            table = CME_TEXT if error.family == "cme" else CMS_TEXT
            return prefix + table.get(error.code, str(error.code))
        return prefix + str(error.code)

    def _urc(self, lines: list[str], *, sms: bool = False) -> None:
        """Unsolicited result code; held while a command runs (and, for SMS ones, while CNMI mode is 0)."""
        if sms and self.settings.cnmi[0] == 0:
            self._buffered_sms_urcs.append(lines)
        elif self._busy:
            self._held_urcs.append(lines)
        else:
            self._junk()
            self._emit_lines(lines)

    def _release_held_urcs(self) -> None:
        held, self._held_urcs = self._held_urcs, []
        for lines in held:
            self._emit_lines(lines)

    # -- command execution ------------------------------------------------------------------------------

    async def _execute_line(self, line: str) -> None:
        if self._no_answer:
            log.info("%s swallowed %r (no-answer fault)", self.name, line)
            return
        try:
            commands = parse_command_line(line)
        except _SyntaxError as exc:
            log.info("%s: syntax error in %r: %s", self.name, line, exc)
            self._emit_response([], "ERROR")
            return
        if commands is None:
            return  # V.250 §5.2.1: characters before "AT" are ignored
        log.info("%s: AT%s", self.name, line.strip()[2:])
        self._busy = True
        groups: list[list[str]] = []
        final = "OK"
        try:
            for command in commands:
                lines = await self._dispatch(command)
                if lines:
                    groups.append(lines)
        except CommandError as error:
            final = self._format_error(error)
        except (sms_pdu.SimPduError, ValueError, IndexError, KeyError):
            # A simulator bug must not kill the serial line: log it for the developer, answer like a
            # confused module would.
            log.exception("%s: internal error while running %r", self.name, line)
            final = self._format_error(_cme(100))
        self._emit_response(groups, final)
        self._busy = False
        self._release_held_urcs()

    async def _dispatch(self, command: AtCommand) -> list[str]:
        handler = self._HANDLERS.get(command.name)
        if handler is None:
            if command.name[:1] in "&S" and command.name not in ("&F",):
                return []  # &C, &D, &W, S-registers: accepted, no effect here
            raise _cme(100) if self.settings.cmee else CommandError("plain")
        return await handler(self, command)

    # basic commands ----------------------------------------------------------------------------------------

    async def _cmd_echo(self, c: AtCommand) -> list[str]:
        value = _int_arg(c, 0, default=0, allowed=range(2), plain=True)
        self.settings.echo = bool(value)
        return []

    async def _cmd_ok(self, c: AtCommand) -> list[str]:
        return []

    async def _cmd_verbose(self, c: AtCommand) -> list[str]:
        # Only verbose result codes (V1) and results shown (Q0) are simulated.
        wanted = 1 if c.name == "V" else 0
        if _int_arg(c, 0, default=0, plain=True) != wanted:
            raise CommandError("plain")
        return []

    async def _cmd_reset(self, c: AtCommand) -> list[str]:
        self._reset_settings()
        return []

    async def _cmd_ati(self, c: AtCommand) -> list[str]:
        return [self.manufacturer, self.model, f"Revision: {self.revision}"]

    # identification (TS 27.007 §5) ------------------------------------------------------------------------

    def _ident(value_of: Callable[[SimulatedGsmModem], str], needs_sim: bool = False):
        async def handler(self: SimulatedGsmModem, c: AtCommand) -> list[str]:
            if c.form == "test":
                return []
            if needs_sim:
                self._require_sim("cme")
            return [value_of(self)]

        return handler

    _cmd_cgmi = _ident(lambda m: m.manufacturer)
    _cmd_cgmm = _ident(lambda m: m.model)
    _cmd_cgmr = _ident(lambda m: m.revision)
    _cmd_cgsn = _ident(lambda m: m.imei)
    _cmd_cimi = _ident(lambda m: m.imsi, needs_sim=True)
    del _ident

    async def _cmd_gcap(self, c: AtCommand) -> list[str]:
        return ["+GCAP: +CGSM"]

    async def _cmd_clac(self, c: AtCommand) -> list[str]:
        return sorted("AT" + name for name in self._HANDLERS if name.startswith("+"))

    # SIM, network (TS 27.007 §7-§8) ------------------------------------------------------------------------

    def _require_sim(self, family: Literal["cme", "cms"]) -> None:
        if not self._sim_ready:
            if self._pin_attempts == 0:
                raise CommandError(family, 12 if family == "cme" else 316)
            raise CommandError(family, 11 if family == "cme" else 311)

    async def _cmd_cpin(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        if c.form == "read":
            if self._sim_ready:
                return ["+CPIN: READY"]
            return ["+CPIN: SIM PUK" if self._pin_attempts == 0 else "+CPIN: SIM PIN"]
        if c.form != "set" or not c.args or c.args[0] is None:
            raise _cme(50)
        if self._sim_ready:
            raise _cme(3)
        if self._pin_attempts == 0:
            raise _cme(12)
        if c.args[0] != self.pin:
            self._pin_attempts -= 1
            log.info("%s: wrong PIN, %d attempt(s) left", self.name, self._pin_attempts)
            raise _cme(16)
        before = self._registration()
        self._sim_ready = True
        self._pin_attempts = 3
        self._registration_changed(before)
        return []

    async def _cmd_csq(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CSQ: (0-31,99),(0-7,99)"]
        rssi = self.rssi if self._cfun == 1 else 99
        return [f"+CSQ: {rssi},99"]  # rssi 0..31 = -113 + 2*rssi dBm, 99 unknown (TS 27.007 §8.5)

    def _registration(self) -> int:
        """+CREG <stat> (TS 27.007 §7.2): 0 when the radio is off or the SIM is locked."""
        if self._cfun != 1 or not self._sim_ready:
            return 0
        return self._network_stat

    def _registration_changed(self, before: int) -> None:
        after = self._registration()
        if after != before and self.settings.creg_n:
            self._urc([self._creg_line(unsolicited=True)])

    def _creg_line(self, *, unsolicited: bool) -> str:
        stat = self._registration()
        prefix = "+CREG: " if unsolicited else f"+CREG: {self.settings.creg_n},"
        location = ',"1A2B","01C3D4E5"' if self.settings.creg_n == 2 and stat in (1, 5) else ""
        return f"{prefix}{stat}{location}"

    async def _cmd_creg(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CREG: (0-2)"]
        if c.form == "read":
            return [self._creg_line(unsolicited=False)]
        self.settings.creg_n = _int_arg(c, 0, default=0, allowed=range(3))
        return []

    async def _cmd_cops(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            entry = f'(2,"{self.operator}","{self.operator}","{self.operator_numeric}",7)'
            return [f"+COPS: {entry},,(0-4),(0-2)"]
        if c.form == "read":
            if self._registration() not in (1, 5):
                return ["+COPS: 0"]
            fmt = self.settings.cops_format
            name = self.operator_numeric if fmt == 2 else self.operator
            return [f'+COPS: 0,{fmt},"{name}",7']
        mode = _int_arg(c, 0, default=0, allowed=range(5))
        if len(c.args) > 1 and c.args[1] is not None:
            self.settings.cops_format = _int_arg(c, 1, allowed=range(3))
        if mode == 2:
            before = self._registration()
            self._network_stat = 0
            self._registration_changed(before)
        elif mode in (0, 1, 4) and self._network_stat == 0:
            before = self._registration()
            self._network_stat = 1
            self._registration_changed(before)
        return []

    async def _cmd_cmee(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CMEE: (0-2)"]
        if c.form == "read":
            return [f"+CMEE: {self.settings.cmee}"]
        self.settings.cmee = _int_arg(c, 0, default=0, allowed=range(3))
        return []

    async def _cmd_cfun(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CFUN: (0,1,4),(0,1)"]
        if c.form == "read":
            return [f"+CFUN: {self._cfun}"]
        fun = _int_arg(c, 0, allowed=(0, 1, 4))
        reset = _int_arg(c, 1, default=0, allowed=range(2))
        before = self._registration()
        if reset:
            # TS 27.007 §8.2 <rst>=1: reset the MT before setting <fun>; the SIM locks again.
            self._reset_settings()
            self._sim_ready = self.pin is None
            self._cfun = fun
            self._held_urcs.append(["RDY"])
        else:
            self._cfun = fun
        self._registration_changed(before)
        return []

    # SMS configuration (TS 27.005 §3.2-§3.4) -------------------------------------------------------------

    async def _cmd_csms(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CSMS: (0,1)"]
        if c.form == "read":
            return [f"+CSMS: {self.settings.csms},1,1,1"]
        self.settings.csms = _int_arg(c, 0, allowed=range(2))
        return ["+CSMS: 1,1,1"]

    async def _cmd_cmgf(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CMGF: (0,1)"]
        if c.form == "read":
            return [f"+CMGF: {self.settings.cmgf}"]
        self.settings.cmgf = _int_arg(c, 0, default=0, allowed=range(2))
        return []

    async def _cmd_cscs(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ['+CSCS: ("GSM","IRA","UCS2")']
        if c.form == "read":
            return [f'+CSCS: "{self.settings.cscs}"']
        value = (c.args[0] or "").upper() if c.args else ""
        if value not in ("GSM", "IRA", "UCS2"):
            raise _cme(4)
        self.settings.cscs = value
        return []

    async def _cmd_csmp(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        if c.form == "read":
            return ["+CSMP: " + ",".join(str(v) for v in self.settings.csmp)]
        for i in range(min(4, len(c.args))):
            if c.args[i] is not None:
                self.settings.csmp[i] = _int_arg(c, i, allowed=range(256))
        return []

    async def _cmd_csdh(self, c: AtCommand) -> list[str]:
        if c.form == "read":
            return [f"+CSDH: {self.settings.csdh}"]
        if c.form == "set":
            self.settings.csdh = _int_arg(c, 0, default=0, allowed=range(2))
        return [] if c.form != "test" else ["+CSDH: (0,1)"]

    async def _cmd_cmms(self, c: AtCommand) -> list[str]:
        if c.form == "read":
            return [f"+CMMS: {self.settings.cmms}"]
        if c.form == "set":
            self.settings.cmms = _int_arg(c, 0, default=0, allowed=range(3))
        return [] if c.form != "test" else ["+CMMS: (0-2)"]

    async def _cmd_csca(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        self._require_sim("cms")
        if c.form == "read":
            if not self.smsc:
                raise _cms(330)
            toa = 145 if self.smsc.startswith("+") else 129
            return [f'+CSCA: "{self.smsc}",{toa}']
        if not c.args or not c.args[0]:
            raise _cms(304 if self.settings.cmgf == 0 else 305)
        self.smsc = c.args[0]
        return []

    async def _cmd_cnmi(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CNMI: (0-3),(0-3),(0,2),(0-2),(0,1)"]
        if c.form == "read":
            return ["+CNMI: " + ",".join(str(v) for v in self.settings.cnmi)]
        limits = (range(4), range(4), (0, 2), range(3), range(2))
        values = list(self.settings.cnmi)
        for i, allowed in enumerate(limits):
            if i < len(c.args) and c.args[i] is not None:
                values[i] = _int_arg(c, i, allowed=allowed, family="cms", code=303)
        was_buffering = self.settings.cnmi[0] == 0
        self.settings.cnmi = values
        if was_buffering and values[0] != 0:
            buffered, self._buffered_sms_urcs = self._buffered_sms_urcs, []
            if values[4] == 0:  # <bfr>=0: flush the buffered codes to the TE (TS 27.005 §3.4.1)
                self._held_urcs.extend(buffered)
        return []

    def _storage_status(self, name: str) -> tuple[int, int]:
        if name == "MT":
            sm, me = self._storages["SM"], self._storages["ME"]
            return sm.used + me.used, sm.capacity + me.capacity
        storage = self._storages[name]
        return storage.used, storage.capacity

    async def _cmd_cpms(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ['+CPMS: ("SM","ME","MT","SR"),("SM","ME","MT"),("SM","ME","MT")']
        self._require_sim("cms")
        if c.form == "read":
            fields = []
            for name in self.settings.mem:
                used, total = self._storage_status(name)
                fields.append(f'"{name}",{used},{total}')
            return ["+CPMS: " + ",".join(fields)]
        wanted = list(self.settings.mem)
        for i in range(min(3, len(c.args))):
            value = (c.args[i] or "").upper()
            if not value:
                continue
            if value not in STORAGES or (i > 0 and value == "SR"):
                raise _cms(302)
            wanted[i] = value
        self.settings.mem = wanted
        out = []
        for name in wanted:
            used, total = self._storage_status(name)
            out += [str(used), str(total)]
        return ["+CPMS: " + ",".join(out)]

    # storage access ----------------------------------------------------------------------------------------

    def _locate(self, name: str, index: int) -> tuple[_Storage, int]:
        """Map (<mem>, index) to a physical storage; "MT" is SM followed by ME."""
        if name == "MT":
            sm = self._storages["SM"]
            if sm.in_range(index):
                return sm, index
            me = self._storages["ME"]
            local = index - sm.capacity
            if me.in_range(local):
                return me, local
            raise _cms(321)
        storage = self._storages[name]
        if not storage.in_range(index):
            raise _cms(321)
        return storage, index

    def _entries(self, name: str) -> list[tuple[int, _Storage, int, StoredMessage]]:
        """(visible index, storage, local index, message) in index order."""
        if name == "MT":
            sm, me = self._storages["SM"], self._storages["ME"]
            rows = [(i, sm, i, m) for i, m in sorted(sm.slots.items())]
            rows += [(i + sm.capacity, me, i, m) for i, m in sorted(me.slots.items())]
            return rows
        storage = self._storages[name]
        return [(i, storage, i, m) for i, m in sorted(storage.slots.items())]

    def _store(self, name: str, message: StoredMessage) -> int:
        if name == "MT":
            sm = self._storages["SM"]
            try:
                return sm.store(message)
            except StorageFull:
                return self._storages["ME"].store(message) + sm.capacity
        return self._storages[name].store(message)

    def _index_arg(self, c: AtCommand, position: int = 0) -> int:
        return _int_arg(c, position, allowed=None, family="cms", code=321)

    def _sms_ready(self) -> None:
        self._require_sim("cms")

    def _header_lines(self, prefix: str, index: int | None, message: StoredMessage) -> list[str]:
        """+CMGR / +CMGL lines for one message in the current mode (TS 27.005 §3.4.2, §4.1)."""
        head = f"{prefix}: " + (f"{index}," if index is not None else "")
        if self.settings.cmgf == 0:
            return [f"{head}{message.stat},,{message.tpdu_length}", message.pdu_hex]
        stat = f'"{STAT_TEXT[message.stat]}"'
        if message.kind == "status_report":
            assert message.timestamp and message.discharged
            toa = 145 if message.number.startswith("+") else 129
            return [f'{head}{stat},6,{message.reference},"{message.number}",{toa},'
                    f'"{_text_time(message.timestamp)}","{_text_time(message.discharged)}",{message.status}']
        body = self._text_out(message.text or "")
        if message.kind == "deliver":
            assert message.timestamp
            return [f'{head}{stat},"{message.number}",,"{_text_time(message.timestamp)}"', body]
        return [f'{head}{stat},"{message.number}",', body]

    async def _cmd_cmgr(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        self._sms_ready()
        index = self._index_arg(c)
        storage, local = self._locate(self.settings.mem[0], index)
        message = storage.slots.get(local)
        if message is None:
            return []  # an empty slot answers a bare OK, as Quectel and SIMCom modules do
        lines = self._header_lines("+CMGR", None, message)
        if message.stat == 0:
            message.stat = 1
        return lines

    async def _cmd_cmgl(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            if self.settings.cmgf == 0:
                return ["+CMGL: (0-4)"]
            return ["+CMGL: (" + ",".join(f'"{t}"' for t in STAT_TEXT.values()) + ")"]
        self._sms_ready()
        if self.settings.cmgf == 0:
            wanted = _int_arg(c, 0, default=0, allowed=range(5), family="cms", code=304)
        else:
            raw = (c.args[0] if c.args else None) or "REC UNREAD"
            if raw.upper() not in TEXT_STAT:
                raise _cms(305)
            wanted = TEXT_STAT[raw.upper()]
        lines: list[str] = []
        for index, _storage, _local, message in self._entries(self.settings.mem[0]):
            if wanted == 4 or message.stat == wanted:
                lines += self._header_lines("+CMGL", index, message)
                if message.stat == 0:
                    message.stat = 1
        return lines

    async def _cmd_cmgd(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            used = [str(i) for i, *_ in self._entries(self.settings.mem[0])]
            return [f"+CMGD: ({','.join(used)}),(0-4)"]
        self._sms_ready()
        flag = _int_arg(c, 1, default=0, allowed=range(5), family="cms", code=302)
        if flag == 0:
            storage, local = self._locate(self.settings.mem[0], self._index_arg(c))
            storage.slots.pop(local, None)
            return []
        # TS 27.005 §3.5.4 <delflag>: 1 read, 2 read+sent, 3 read+sent+unsent, 4 all; <index> ignored.
        doomed = {1: {1}, 2: {1, 3}, 3: {1, 2, 3}, 4: {0, 1, 2, 3}}[flag]
        for _index, storage, local, message in self._entries(self.settings.mem[0]):
            if message.stat in doomed:
                del storage.slots[local]
        return []

    # sending (TS 27.005 §3.5.1 +CMGS, §3.5.2 +CMSS, §3.5.3 +CMGW) -------------------------------------------

    async def _prompt(self) -> bytes | None:
        """Show "> " and collect the text up to Ctrl-Z; None when ESC aborted it."""
        self._emit(b"\r\n> ")
        self._framer.enter_prompt()
        event = await self._next_event()
        if isinstance(event, PromptAbort):
            return None
        assert isinstance(event, PromptText)
        return event.data

    async def _read_submit_pdu(self, c: AtCommand) -> tuple[sms_pdu.SubmitPdu, str] | None:
        """Prompt for a PDU-mode SUBMIT and check it against <length> (TPDU octets without the SCA)."""
        length = _int_arg(c, 0, allowed=range(1, 177), family="cms", code=304)
        data = await self._prompt()
        if data is None:
            return None
        hex_text = "".join(data.decode("latin-1").split()).upper()
        try:
            submit = sms_pdu.parse_submit(hex_text)
        except sms_pdu.SimPduError as exc:
            log.info("%s: rejected PDU: %s", self.name, exc)
            raise _cms(304) from None
        if submit.tpdu_length != length:
            log.info("%s: <length> %d but the TPDU has %d octets", self.name, length, submit.tpdu_length)
            raise _cms(304)
        return submit, hex_text

    def _text_in(self, data: bytes) -> str:
        """Text typed at the prompt, in the AT+CSCS character set (GSM and IRA taken as ASCII/Latin-1)."""
        raw = data.replace(b"\r", b"\n")
        if self.settings.cscs == "UCS2":
            try:
                return bytes.fromhex(raw.decode("ascii").replace("\n", "")).decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise _cms(305) from None
        return raw.decode("latin-1")

    def _text_out(self, text: str) -> str:
        if self.settings.cscs == "UCS2":
            return text.encode("utf-16-be").hex().upper()
        return text.encode("latin-1", "replace").decode("latin-1")

    def _text_submit(self, destination: str, data: bytes, *, toa: int | None) -> sms_pdu.PduPart:
        text = self._text_in(data)
        fo, vp, pid, dcs = self.settings.csmp
        encoding: sms_pdu.Encoding = "ucs2" if (dcs & 0x0C) == 0x08 else "gsm7"
        if encoding == "gsm7" and not sms_pdu.gsm7_encodable(text):
            raise _cms(305)
        try:
            return sms_pdu.build_submit(
                destination, text, reference=0, request_report=bool(fo & 0x20),
                validity=vp if (fo & 0x18) == 0x10 else None, encoding=encoding, pid=pid,
                destination_toa=toa,
            )
        except sms_pdu.SimPduError:
            raise _cms(305) from None

    async def _cmd_cmgs(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        self._sms_ready()
        if c.form != "set" or not c.args:
            raise _cms(304 if self.settings.cmgf == 0 else 305)
        if self.settings.cmgf == 0:
            received = await self._read_submit_pdu(c)
            if received is None:
                return []
            submit, hex_text = received
            mr = await self._transmit(submit, mode="pdu", pdu_hex=hex_text)
        else:
            destination = c.args[0]
            if not destination or not c.quoted[0]:
                raise _cms(305)  # TS 27.005 §3.5.1: <da> is a string type
            toa = _int_arg(c, 1, default=None, allowed=range(256), family="cms", code=305)
            data = await self._prompt()
            if data is None:
                return []
            part = self._text_submit(destination, data, toa=toa)
            mr = await self._transmit(sms_pdu.parse_submit(part.hex), mode="text", pdu_hex=part.hex)
        return [f"+CMGS: {mr}"]

    async def _cmd_cmgw(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        self._sms_ready()
        if self.settings.cmgf == 0:
            if c.form != "set":
                raise _cms(304)
            stat = _int_arg(c, 1, default=2, allowed=range(4), family="cms", code=304)
            received = await self._read_submit_pdu(c)
            if received is None:
                return []
            submit, hex_text = received
        else:
            destination = c.args[0] if c.args else None
            toa = _int_arg(c, 1, default=None, allowed=range(256), family="cms", code=305)
            raw_stat = (c.args[2] if len(c.args) > 2 else None) or "STO UNSENT"
            if raw_stat.upper() not in TEXT_STAT:
                raise _cms(305)
            stat = TEXT_STAT[raw_stat.upper()]
            typed = await self._prompt()
            if typed is None:
                return []
            part = self._text_submit(destination or "", typed, toa=toa)
            hex_text = part.hex
            submit = sms_pdu.parse_submit(hex_text)
        message = StoredMessage(
            kind="submit", stat=stat, pdu_hex=hex_text, tpdu_length=submit.tpdu_length,
            number=submit.destination, text=submit.text, encoding=submit.encoding,
        )
        try:
            index = self._store(self.settings.mem[1], message)
        except StorageFull:
            raise _cms(322) from None
        return [f"+CMGW: {index}"]

    async def _cmd_cmss(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return []
        self._sms_ready()
        storage, local = self._locate(self.settings.mem[1], self._index_arg(c))
        message = storage.slots.get(local)
        if message is None or message.kind != "submit":
            raise _cms(321)
        submit = sms_pdu.parse_submit(message.pdu_hex)
        if len(c.args) > 1 and c.args[1]:
            submit = _replace_destination(submit, c.args[1])
        mr = await self._transmit(submit, mode="pdu" if self.settings.cmgf == 0 else "text",
                                  pdu_hex=message.pdu_hex)
        message.stat = 3
        return [f"+CMSS: {mr}"]

    async def _transmit(
        self, submit: sms_pdu.SubmitPdu, *, mode: Literal["pdu", "text"], pdu_hex: str
    ) -> int:
        """Hand one SUBMIT to the simulated network; returns the TP-MR the modem assigned."""
        if self._registration() not in (1, 5):
            raise _cms(331)
        if not self.smsc and not submit.smsc:
            raise _cms(330)
        await trio.sleep(self.send_latency)
        if self._send_failures:
            code = self._send_failures.popleft()
            log.info("%s: send to %s fails with +CMS ERROR %d (fault)", self.name, submit.destination, code)
            raise _cms(code)
        if self._registration() not in (1, 5):
            raise _cms(331)  # registration lost while the message was on its way
        mr = self._next_mr
        self._next_mr = (self._next_mr + 1) % 256  # TP-MR wraps 255 -> 0 (TS 23.040 §9.2.3.6)
        record = SentMessage(
            destination=submit.destination, text=submit.text, encoding=submit.encoding, mr=mr,
            concat=submit.concat, time=trio.current_time(), request_report=submit.request_report,
            mode=mode, pdu_hex=pdu_hex, validity=submit.validity,
        )
        self.sent.append(record)
        self._sent_changed.set()
        self._sent_changed = trio.Event()
        log.info("%s: sent %s part %d/%d to %s, mr=%d", self.name, submit.encoding, *record.part,
                 submit.destination, mr)
        if submit.request_report:
            status, delay = self._report_plan.popleft() if self._report_plan else (None, None)
            self._spawn(self._report_later, mr, submit.destination,
                        self.report_status if status is None else status,
                        self.report_delay if delay is None else delay, self._now())
        return mr

    # incoming messages and reports --------------------------------------------------------------------------

    async def _report_later(
        self, mr: int, recipient: str, status: int, delay: float, submitted: datetime
    ) -> None:
        await trio.sleep(delay)
        part = sms_pdu.build_status_report(
            mr, recipient, submitted=submitted, discharged=self._now(), status=status, smsc=self.smsc,
        )
        message = StoredMessage(
            kind="status_report", stat=0, pdu_hex=part.hex, tpdu_length=part.tpdu_length, number=recipient,
            timestamp=submitted, reference=mr, status=status, discharged=self._now(),
        )
        log.info("%s: status report for mr=%d, TP-ST=0x%02X", self.name, mr, status)
        try:
            self._route(message, storage="SR", report=True)
        except StorageFull:
            log.warning("%s: SR storage full, status report for mr=%d lost", self.name, mr)

    def _route(self, message: StoredMessage, *, storage: str, report: bool) -> int | None:
        """Deliver an incoming message or report to the TE per AT+CNMI <mt>/<ds> (TS 27.005 §3.4.1)."""
        setting = self.settings.cnmi[3] if report else self.settings.cnmi[1]
        direct = (setting == 1) if report else (setting == 2)
        if direct and self._port is not None and self._plugged.is_set():
            if self.settings.csms == 1 and self._unacked is not None:
                self._ack_backlog.append((message, storage, "report" if report else "sms"))
                return None
            self._urc(self._direct_lines(message, report), sms=True)
            if self.settings.csms == 1:
                pending = _Unacknowledged(message, storage)
                self._unacked = pending
                self._spawn(self._await_ack, pending)
            return None
        index = self._store(storage, message)
        if setting:
            # mt=1/3 -> +CMTI, ds=2 -> +CDSI; quirk: a report stored in SR but announced as SM.
            announced = "SM" if (report and self.sr_announced_as_sm) else storage
            self._urc([f'{"+CDSI" if report else "+CMTI"}: "{announced}",{index}'], sms=True)
        return index

    def _direct_lines(self, message: StoredMessage, report: bool) -> list[str]:
        if self.settings.cmgf == 0:
            return [f"{'+CDS' if report else '+CMT'}: {'' if report else ','}{message.tpdu_length}",
                    message.pdu_hex]
        if report:
            assert message.timestamp and message.discharged
            toa = 145 if message.number.startswith("+") else 129
            return [f'+CDS: 6,{message.reference},"{message.number}",{toa},"{_text_time(message.timestamp)}",'
                    f'"{_text_time(message.discharged)}",{message.status}']
        assert message.timestamp
        header = f'+CMT: "{message.number}",,"{_text_time(message.timestamp)}"'
        return [header, self._text_out(message.text or "")]

    async def _await_ack(self, pending: _Unacknowledged) -> None:
        with trio.move_on_after(self.ack_timeout):
            await pending.acked.wait()
            return
        # TS 27.005 §3.4.1: no +CNMA in time -> the MT disables routing (<mt>=<ds>=0); the network
        # retries, which lands the message in storage. Everything queued behind it is stored as well.
        log.info("%s: no AT+CNMA within %.1f s; routing to the TE disabled", self.name, self.ack_timeout)
        self.settings.cnmi[1] = self.settings.cnmi[3] = 0
        self._unacked = None
        self._store_quietly(pending.message, pending.storage)
        while self._ack_backlog:
            message, storage, _kind = self._ack_backlog.popleft()
            self._store_quietly(message, storage)

    def _store_quietly(self, message: StoredMessage, storage: str) -> None:
        try:
            self._store(storage, message)
        except StorageFull:
            log.warning("%s: %s full, message from %s lost", self.name, storage, message.number)

    async def _cmd_cnma(self, c: AtCommand) -> list[str]:
        if c.form == "test":
            return ["+CNMA: (0-2)"] if self.settings.cmgf == 0 else []
        pending = self._unacked
        if self.settings.csms != 1 or pending is None:
            raise _cms(340)
        self._unacked = None
        pending.acked.set()
        if c.form == "set" and c.args and c.args[0] == "2":
            self._store_quietly(pending.message, pending.storage)  # RP-ERROR: the network retries later
        if self._ack_backlog:
            message, storage, kind = self._ack_backlog.popleft()
            try:
                self._route(message, storage=storage, report=kind == "report")
            except StorageFull:
                log.warning("%s: %s full, queued message from %s lost", self.name, storage, message.number)
        return []

    _HANDLERS: dict[str, Callable] = {}

    # -- control API: tests and demo ------------------------------------------------------------------------

    def inject_sms(self, sender: str, text: str, *, parts_order: Iterable[int] | None = None,
                   concat_ref16: bool = False, storage: str = "SM") -> list[int | None]:
        """An incoming SMS from `sender`; multipart texts get a concat UDH and arrive in `parts_order`
        (1-based sequence numbers). Returns the storage index of each delivered part (None for +CMT)."""
        if storage not in ("SM", "ME", "MT"):
            raise ValueError(f"incoming messages are stored in SM, ME or MT, not {storage!r}")
        timestamp = self._now()
        ref = self._next_concat_ref
        self._next_concat_ref = (ref + 1) % (65536 if concat_ref16 else 256) or 1
        parts = sms_pdu.build_deliver_parts(sender, text, timestamp=timestamp, smsc=self.smsc,
                                            concat_ref=ref, ref16=concat_ref16)
        order = list(parts_order) if parts_order is not None else list(range(1, len(parts) + 1))
        if not order or any(seq not in range(1, len(parts) + 1) for seq in order):
            # Repeats and omissions are allowed on purpose: duplicate and missing parts are test cases.
            raise ValueError(f"parts_order {order} must name parts among 1..{len(parts)}")
        log.info("%s: incoming SMS from %s in %d part(s), order %s", self.name, sender, len(parts), order)
        indices = []
        for seq in order:
            part = parts[seq - 1]
            message = StoredMessage(kind="deliver", stat=0, pdu_hex=part.hex, tpdu_length=part.tpdu_length,
                                    number=sender, text=text if len(parts) == 1 else None,
                                    timestamp=timestamp)
            if len(parts) > 1:
                message.text = _part_text(part)
            indices.append(self._route(message, storage=storage, report=False))
        return indices

    @property
    def storages(self) -> dict[str, dict[int, StoredMessage]]:
        """Current contents: {"SM": {index: message}, "ME": ..., "SR": ...} (live objects)."""
        return {name: storage.slots for name, storage in self._storages.items()}

    async def wait_sent(self, n: int) -> list[SentMessage]:
        """Wait until at least `n` messages (parts) were sent; returns :attr:`sent`."""
        while len(self.sent) < n:
            await self._sent_changed.wait()
        return self.sent

    def set_no_answer(self, enabled: bool = True) -> None:
        """Swallow every command: no echo, no response (a hung module)."""
        self._no_answer = enabled

    def fail_next_sends(self, code: int, count: int = 1) -> None:
        """The next `count` sends end in ``+CMS ERROR: <code>`` (e.g. 500, 38, 330) after the latency."""
        self._send_failures.extend([code] * count)

    def set_registration(self, stat: int) -> None:
        """Network registration (+CREG <stat>): 1 home, 5 roaming, 0/2/3 lost (sends fail with 331)."""
        if stat not in range(6):
            raise ValueError(f"+CREG stat must be 0..5, not {stat}")
        before = self._registration()
        self._network_stat = stat
        self._registration_changed(before)

    def set_signal(self, rssi: int) -> None:
        self.rssi = rssi

    def set_garbage(self, probability: float, *, seed: int = 0) -> None:
        """Interleave junk lines of random bytes before responses and URCs with this probability."""
        self._garbage_probability = probability
        self._rng = random.Random(seed)

    def emit_garbage(self, data: bytes | None = None) -> None:
        """Write junk now (random bytes unless given), framed as an unsolicited line."""
        junk = data if data is not None else bytes(self._rng.randrange(0x80, 0x100) for _ in range(12))
        self._emit(b"\r\n" + junk + b"\r\n")

    def set_vendor_urc(self, text: str | None = "^RSSI: 18") -> None:
        """Put a vendor URC inside every response (after its first line); None turns it off."""
        self._vendor_urc = text

    def emit_urc(self, line: str) -> None:
        """Send any unsolicited line now (held until the running command finishes)."""
        self._urc([line])

    def queue_report(self, status: int | None = None, *, delay: float | None = None) -> None:
        """TP-ST and/or delay for the status report of the next send that requests one."""
        self._report_plan.append((status, delay))

    def unplug(self) -> None:
        """Close the pty: the client sees EOF/EIO and the symlink disappears. State stays for replug()."""
        if self._port is None:
            raise RuntimeError("the simulated modem is not running")
        log.info("%s: unplugged", self.name)
        self._generation += 1
        self._plugged = trio.Event()
        self._port.unplug()
        if self._session_scope is not None:
            self._session_scope.cancel()

    def replug(self) -> str:
        """A new pty behind the same symlink, settings back to power-on values; returns the path."""
        if self._port is None:
            raise RuntimeError("the simulated modem is not running")
        self._generation += 1
        path = self._port.replug()
        self._reset_settings()
        self._sim_ready = self.pin is None
        self._unacked = None
        self._held_urcs.clear()
        self._plugged.set()
        log.info("%s: replugged at %s (%s)", self.name, path, self._port.slave_path)
        return path

    # -- internals ------------------------------------------------------------------------------------------

    def _reset_settings(self) -> None:
        self.settings = _Settings(echo=self._default_echo)

    def _spawn(self, fn: Callable, *args: object) -> None:
        if self._nursery is None:
            raise RuntimeError("the simulated modem is not running; start run() first")
        self._nursery.start_soon(fn, *args)


def _text_time(moment: datetime) -> str:
    """Text-mode timestamp "yy/MM/dd,hh:mm:ss±zz", zz in quarter hours (TS 27.005 §3.3.1 <scts>)."""
    offset = moment.utcoffset() or timedelta(0)
    quarters = int(offset / timedelta(minutes=15))
    sign = "-" if quarters < 0 else "+"
    return moment.strftime("%y/%m/%d,%H:%M:%S") + f"{sign}{abs(quarters):02d}"


def _part_text(part: sms_pdu.PduPart) -> str:
    """The text of one DELIVER part built by sms_pdu (for text-mode listings)."""
    raw = bytes.fromhex(part.hex)
    pos = raw[0] + 1  # SCA
    first = raw[pos]
    pos += 1
    digits = raw[pos]  # semi-octets, also for an alphanumeric (TOA 0xD0) originator
    pos += 2 + math.ceil(digits / 2)
    dcs = raw[pos + 1]
    pos += 2 + 7  # PID, DCS, SCTS
    udl = raw[pos]
    ud = raw[pos + 1 :]
    header = ud[0] + 1 if first & 0x40 else 0
    if dcs == 0x08:
        return ud[header:].decode("utf-16-be", "replace")
    header_septets = math.ceil(header * 8 / 7)
    fill = header_septets * 7 - header * 8
    septets = sms_pdu.unpack_septets(ud[header:], udl - header_septets, fill_bits=fill)
    return sms_pdu.decode_gsm7(septets)


def _replace_destination(submit: sms_pdu.SubmitPdu, destination: str) -> sms_pdu.SubmitPdu:
    return replace(submit, destination=destination)


def _int_arg(c: AtCommand, position: int, *, default: int | None | object = ..., allowed=None,
             family: Literal["plain", "cme", "cms"] = "cme", code: int = 50, plain: bool = False):
    """Integer parameter `position` of `c`, checked against `allowed`; a bad one is the given error."""
    error = CommandError("plain") if plain else CommandError(family, code)
    raw = c.args[position] if position < len(c.args) else None
    if raw is None or raw == "":
        if default is ...:
            raise error
        return default
    try:
        value = int(raw)
    except ValueError:
        raise error from None
    if allowed is not None and value not in allowed:
        raise error
    return value


SimulatedGsmModem._HANDLERS = {
    "E": SimulatedGsmModem._cmd_echo,
    "Z": SimulatedGsmModem._cmd_reset,
    "&F": SimulatedGsmModem._cmd_reset,
    "I": SimulatedGsmModem._cmd_ati,
    "V": SimulatedGsmModem._cmd_verbose,
    "Q": SimulatedGsmModem._cmd_verbose,
    "H": SimulatedGsmModem._cmd_ok,
    "+CGMI": SimulatedGsmModem._cmd_cgmi,
    "+GMI": SimulatedGsmModem._cmd_cgmi,
    "+CGMM": SimulatedGsmModem._cmd_cgmm,
    "+GMM": SimulatedGsmModem._cmd_cgmm,
    "+CGMR": SimulatedGsmModem._cmd_cgmr,
    "+GMR": SimulatedGsmModem._cmd_cgmr,
    "+CGSN": SimulatedGsmModem._cmd_cgsn,
    "+GSN": SimulatedGsmModem._cmd_cgsn,
    "+CIMI": SimulatedGsmModem._cmd_cimi,
    "+GCAP": SimulatedGsmModem._cmd_gcap,
    "+CLAC": SimulatedGsmModem._cmd_clac,
    "+CPIN": SimulatedGsmModem._cmd_cpin,
    "+CSQ": SimulatedGsmModem._cmd_csq,
    "+CREG": SimulatedGsmModem._cmd_creg,
    "+COPS": SimulatedGsmModem._cmd_cops,
    "+CMEE": SimulatedGsmModem._cmd_cmee,
    "+CFUN": SimulatedGsmModem._cmd_cfun,
    "+CSMS": SimulatedGsmModem._cmd_csms,
    "+CMGF": SimulatedGsmModem._cmd_cmgf,
    "+CSCS": SimulatedGsmModem._cmd_cscs,
    "+CSMP": SimulatedGsmModem._cmd_csmp,
    "+CSDH": SimulatedGsmModem._cmd_csdh,
    "+CMMS": SimulatedGsmModem._cmd_cmms,
    "+CSCA": SimulatedGsmModem._cmd_csca,
    "+CNMI": SimulatedGsmModem._cmd_cnmi,
    "+CPMS": SimulatedGsmModem._cmd_cpms,
    "+CMGR": SimulatedGsmModem._cmd_cmgr,
    "+CMGL": SimulatedGsmModem._cmd_cmgl,
    "+CMGD": SimulatedGsmModem._cmd_cmgd,
    "+CMGS": SimulatedGsmModem._cmd_cmgs,
    "+CMGW": SimulatedGsmModem._cmd_cmgw,
    "+CMSS": SimulatedGsmModem._cmd_cmss,
    "+CNMA": SimulatedGsmModem._cmd_cnma,
}


# ---------------------------------------------------------------------------------------------------------
# Standalone command: `hcrm-gateway sim gsm --link PATH`


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``hcrm-gateway sim gsm`` (the caller adds ``--link`` itself)."""
    parser.add_argument("--name", default="sim0", help="modem name used in logs (default: %(default)s)")
    parser.add_argument("--latency", type=float, default=3.0, metavar="SECONDS",
                        help="time from AT+CMGS to +CMGS: <mr> (default: %(default)s)")
    parser.add_argument("--report-delay", type=float, default=2.0, metavar="SECONDS",
                        help="time from +CMGS to the status report (default: %(default)s)")
    parser.add_argument("--report-status", type=lambda v: int(v, 0), default=0, metavar="TP-ST",
                        help="TP-Status of status reports, e.g. 0 delivered, 0x46 expired (default: 0)")
    parser.add_argument("--pin", default=None, help="require this SIM PIN (AT+CPIN) before SMS commands")
    parser.add_argument("--smsc", default="+819000000000", help="SMSC number (default: %(default)s)")
    parser.add_argument("--operator", default="NTT DOCOMO", help="operator name for AT+COPS?")
    parser.add_argument("--own-number", default="+819000000001", help="the SIM's own number")
    parser.add_argument("--imei", default="867962040000001")
    parser.add_argument("--imsi", default="440100000000001")
    parser.add_argument("--sm-size", type=int, default=30, help="SIM storage slots (default: %(default)s)")
    parser.add_argument("--me-size", type=int, default=100, help="ME storage slots (default: %(default)s)")
    parser.add_argument("--sr-size", type=int, default=30, help="status report slots (default: %(default)s)")
    parser.add_argument("--index-base", type=int, choices=(0, 1), default=0,
                        help="first storage index: 0 like Quectel, 1 like most others (default: 0)")
    parser.add_argument("--quirk-sr-as-sm", action="store_true",
                        help='store reports in "SR" but announce them as +CDSI: "SM",n (Quectel EC25 quirk)')
    parser.add_argument("--verbose", action="store_true", help="log every byte in both directions")


def options_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Keyword arguments for :func:`serve_standalone` from the options of :func:`add_cli_options`."""
    return {
        "name": args.name,
        "send_latency": args.latency,
        "report_delay": args.report_delay,
        "report_status": args.report_status,
        "pin": args.pin,
        "smsc": args.smsc,
        "operator": args.operator,
        "own_number": args.own_number,
        "imei": args.imei,
        "imsi": args.imsi,
        "storage_sizes": {"SM": args.sm_size, "ME": args.me_size, "SR": args.sr_size},
        "index_base": args.index_base,
        "sr_announced_as_sm": args.quirk_sr_as_sm,
        "verbose": args.verbose,
    }


async def serve_standalone(
    link: str, *, verbose: bool = False, task_status=trio.TASK_STATUS_IGNORED, **options: object
) -> None:
    """Run one simulated modem behind `link` until SIGINT or SIGTERM, logging to stderr.

    `task_status` receives the path once the modem answers, for callers that start it in a nursery.
    """
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    modem = SimulatedGsmModem(**options)  # type: ignore[arg-type]
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            path = await nursery.start(partial(modem.run, link=link))
            log.info("simulated GSM modem %s ready at %s; stop with Ctrl-C", modem.name, path)
            task_status.started(path)
            async for signum in signals:
                log.info("%s received, stopping", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
