"""Trio driver for one GSM modem: owns the serial port, runs the sans-IO `AtConnection`, reconnects.

Life cycle of `GsmModem.run()`:
    open port -> initialise (ATE0, CMEE, identity -> quirks, CPIN, CMGF=0, CSCA, CPMS, CSMS, CNMI, CMGL=4)
    -> ready: monitor (CSQ, CREG, COPS) + URC handling, until a command goes unanswered
    -> flush (bare AT, drain) and re-initialise; 3 failed initialisations -> "down", port closed, reopened
       with backoff; port vanished (EIO, file gone) -> "absent", retried until it comes back.
Every AT command is serialised by one `trio.Lock`. Stored messages are deleted only by `acknowledge()`, after
the gateway committed them (faucamp/python-gsmmodem #42), and only by index (babca/python-gsmmodem #53).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import structlog
import trio

from drivers.gsm.at import (
    AtConnection,
    Command,
    FinalResult,
    InformationLine,
    Prompt,
    StaleLine,
    UnsolicitedResult,
    parse_arguments,
    pdu_message_type,
)
from drivers.gsm.errors import ModemUnavailable, SendError, classify_cme, classify_cms
from drivers.gsm.quirks import GENERIC, ModemQuirks, quirks_named, select_quirks
from drivers.hotplug import DeviceWatch
from drivers.serial_port import PortError, PortGone, SerialPort

__all__ = [
    "GsmModem",
    "IncomingSms",
    "ModemEvent",
    "ModemStatus",
    "ModemUnavailable",
    "SendError",
    "StatusReport",
    "mask_number",
]

ModemState = Literal["initializing", "ready", "down", "absent"]

# TS 27.007 §7.2 +CREG <stat>.
_REGISTRATION = {
    "0": "not_registered",
    "1": "home",
    "2": "searching",
    "3": "denied",
    "4": "unknown",
    "5": "roaming",
}
PROMPT_TIMEOUT = 5.0  # seconds for "> " after AT+CMGS (python-gsmmodem uses 5 s)
FLUSH_TIMEOUT = 2.0  # seconds for the bare AT of a flush
DRAIN_SECONDS = 0.5  # quiet time after a flush: late lines of the dropped command are discarded
MAX_INIT_FAILURES = 3  # consecutive failed initialisations before the port is closed ("down")
RESET_ANSWER_TIMEOUT = 15.0  # AT+CFUN=1,1 may take seconds before OK (or the port drops first)
RESET_SETTLE_SECONDS = 5.0  # reboot time after AT+CFUN=1,1 before the first AT of the re-initialisation
SIM_RETRY_SECONDS = 2.0  # pause between AT+CPIN? polls while the SIM is busy (faucamp #10: ready after ~7 s)


@dataclass(frozen=True)
class ModemStatus:
    name: str
    state: ModemState = "initializing"
    signal_dbm: int | None = None
    rssi: int | None = None
    registration: str | None = None
    operator: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    imei: str | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class IncomingSms:
    modem: str
    pdu_hex: str
    storage: str | None  # None: routed directly (+CMT), nothing to delete
    index: int | None


@dataclass(frozen=True)
class StatusReport:
    modem: str
    pdu_hex: str
    storage: str | None  # None: routed directly (+CDS)
    index: int | None


ModemEvent = ModemStatus | IncomingSms | StatusReport


def mask_number(number: str | None) -> str:
    """'+819012345678' -> '+8190****5678': enough to tell numbers apart in logs, not enough to dial."""
    if not number:
        return ""
    if len(number) <= 6:
        return "*" * len(number)
    return number[:5] + "*" * (len(number) - 9 if len(number) > 9 else 1) + number[-4:]


class _NoAnswer(Exception):
    """A command got no final result in time (watchdog)."""


class _InitFailed(Exception):
    """Initialisation cannot succeed without outside help (SIM, PIN, unsupported modem)."""


@dataclass
class _Reply:
    command: str
    lines: list[InformationLine] = field(default_factory=list)
    final: FinalResult | None = None

    @property
    def ok(self) -> bool:
        return self.final is not None and self.final.ok

    def first(self, prefix: str) -> list[str] | None:
        """Arguments of the first line starting with `prefix` (e.g. "+CSQ:"), else None."""
        for line in self.lines:
            if line.text.upper().startswith(prefix):
                return parse_arguments(line.text[len(prefix) :])
        return None

    def plain_text(self) -> str | None:
        """First line of a prefix-less answer (+CGMI/+CGMM/+CGSN), an optional "+CGMI:" prefix removed."""
        for line in self.lines:
            text = line.text
            if text.startswith("+") and ":" in text:
                text = text.split(":", 1)[1].strip().strip('"')
            if text:
                return text
        return None

    def describe(self) -> str:
        return self.final.text if self.final else "no answer"


@dataclass
class _Pending:
    command: Command
    reply: _Reply
    done: trio.Event = field(default_factory=trio.Event)  # final result (or session lost)
    answered: trio.Event = field(default_factory=trio.Event)  # prompt or final result (or session lost)
    prompted: bool = False
    lost: bool = False  # the session ended (port gone or closed) before the answer


class GsmModem:
    """One GSM modem on one serial port. See the module docstring for the life cycle."""

    def __init__(
        self,
        name: str,
        port: str,
        *,
        baudrate: int = 115200,
        pin: str | None = None,
        smsc: str | None = None,
        quirks: str = "auto",
        command_timeout: float = 10.0,
        send_timeout: float = 60.0,
        init_retry_backoff: tuple[float, ...] = (1, 2, 5, 10, 30),
        monitor_interval: float = 30.0,
        event_buffer: int = 100,
        reset_settle: float = RESET_SETTLE_SECONDS,
        device_watch: DeviceWatch | None = None,
    ) -> None:
        if not init_retry_backoff:
            raise ValueError("init_retry_backoff needs at least one delay")
        self.name = name
        self.port = port
        self._baudrate = baudrate
        self._pin = pin
        self._smsc = smsc
        self._quirks_setting = quirks
        self.quirks: ModemQuirks = GENERIC if quirks == "auto" else quirks_named(quirks)
        self._command_timeout = command_timeout
        self._send_timeout = send_timeout
        self._backoff = tuple(init_retry_backoff)
        # device_watch: an absent modem is retried at once when udev reports a port arriving (hotplug.py).
        self._device_watch = device_watch
        self._monitor_interval = monitor_interval
        self._event_send, self.events = trio.open_memory_channel[ModemEvent](event_buffer)
        self.status = ModemStatus(name=name)
        self._log = structlog.get_logger(__name__).bind(modem=name)
        self._lock = trio.Lock()
        self._conn = AtConnection()
        self._port: SerialPort | None = None
        self._pending: _Pending | None = None
        self._session_scope: trio.CancelScope | None = None
        self._gone: str | None = None
        self._unresponsive = trio.Event()
        self._stop_requested = False
        self._stop_event = trio.Event()
        self._storage = "SM"  # <mem1> of AT+CPMS: where CMGR/CMGL/CMGD act
        self._cnma_required = False  # AT+CSMS=1: +CMT/+CDS must be acknowledged with AT+CNMA
        # Stored messages already emitted and not yet acknowledged: (storage, index) -> PDU.
        self._outstanding: dict[tuple[str, int], str] = {}
        self._urc_send: trio.MemorySendChannel[UnsolicitedResult] | None = None
        self._session_was_ready = False
        self._reset_settle = reset_settle
        self._settle_after_serve = False  # the next re-initialisation waits for the reboot first

    # ---- public API ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the command in flight, then return from run()."""
        self._stop_requested = True
        self._stop_event.set()

    def request_reinit(self, reason: str = "re-initialisation requested") -> None:
        """Run the initialisation again on the open port (the same path as after a command timeout). Does
        nothing unless the modem is ready: an initialising, down or absent modem initialises anyway."""
        if self.status.state != "ready" or self._port is None or self._stop_requested:
            return
        self._log.info("reinit_requested", reason=reason)
        self._set_status(state="initializing", last_error=reason)
        self._unresponsive.set()

    async def reset(self) -> None:
        """Restart the modem with AT+CFUN=1,1, then initialise it again.

        TS 27.007 §8.2: ``<fun>=1`` full functionality, ``<rst>=1`` reset the MT before setting it. The MT
        forgets every volatile setting (echo, CMEE, CNMI, CPMS ...) and may lock the SIM again, so the whole
        initialisation runs after a settle time for the reboot. A USB modem usually drops its port while it
        reboots: the read loop then ends the session like an unplug ("absent") and the port is reopened with
        the usual backoff. Some firmwares reboot without answering OK; that is treated as accepted.
        Raises ModemUnavailable when the modem is not ready, and SendError(kind="config") when the modem
        refuses the command (the session is re-initialised anyway).
        """
        self._require_ready()
        async with self._lock:
            self._require_ready()
            try:
                reply = await self._exchange("AT+CFUN=1,1", limit=RESET_ANSWER_TIMEOUT, watchdog=False)
            except _NoAnswer:
                reply = None  # rebooted before answering
            except ModemUnavailable:
                if self._gone is None:
                    raise
                self._log.info("modem_reset", answered=False, port="gone")
                return  # the port dropped for the reboot: the run loop reopens it when it is back
            refused = reply is not None and not reply.ok
            if refused:
                self._log.warning("reset_refused", answer=reply.describe())
            else:
                self._log.info("modem_reset", answered=reply is not None)
                self._settle_after_serve = True
            self.request_reinit("reset (AT+CFUN=1,1)" if not refused else "reset refused; re-initialising")
        if refused:
            final = reply.final
            raise SendError(
                final.code if final is not None else None,
                "config",
                f"modem {self.name} refused AT+CFUN=1,1: {reply.describe()}",
            )

    async def send_pdu(self, pdu_hex: str, tpdu_length: int) -> int:
        """AT+CMGS=<tpdu_length>, the PDU after "> ", then +CMGS: <mr>. Returns TP-MR (TS 27.005 §3.5.1)."""
        if tpdu_length <= 0 or len(pdu_hex) < 2 * tpdu_length:
            raise ValueError(f"tpdu_length {tpdu_length} does not fit a PDU of {len(pdu_hex) // 2} octets")
        self._require_ready()
        async with self._lock:
            self._require_ready()
            return await self._submit(pdu_hex, tpdu_length)

    async def acknowledge(self, item: IncomingSms | StatusReport) -> None:
        """Call after the gateway committed `item`: AT+CMGD=<index> if stored, AT+CNMA if routed."""
        self._require_ready()
        async with self._lock:
            self._require_ready()
            if item.storage is not None and item.index is not None:
                await self._delete(item.storage, item.index)
            elif self._cnma_required:
                reply = await self._exchange("AT+CNMA")
                # TS 27.005 §3.2.5: 340 = no +CNMA acknowledgement expected (already timed out or not needed).
                final = reply.final
                if not reply.ok and not (final and final.kind == "cms" and final.code == 340):
                    self._log.warning("cnma_failed", answer=reply.describe())

    # ---- run loop --------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the port until cancelled or stopped. Signals started once the first attempt settled (ready,
        down or absent), so a caller never waits for a modem that is unplugged."""
        started = False

        def mark_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        failures = 0
        try:
            while not self._stop_requested:
                try:
                    port = SerialPort(self.port, self._baudrate)
                except PortGone as exc:
                    if self.status.state != "absent":
                        self._outstanding.clear()  # another device may come back on this path
                        self._log.warning("modem_absent", reason=str(exc))
                    self._set_status(state="absent", last_error=str(exc))
                    mark_started()
                    await self._pause(self._delay(failures), until_device=True)
                    failures += 1
                    continue
                except PortError as exc:
                    self._log.error("modem_port_error", reason=str(exc))
                    self._set_status(state="down", last_error=str(exc))
                    mark_started()
                    await self._pause(self._delay(failures))
                    failures += 1
                    continue
                self._log.info("port_opened", port=self.port)
                try:
                    outcome = await self._session(port, mark_started)
                finally:
                    port.close()
                mark_started()
                if outcome == "stopped":
                    break
                if self._session_was_ready:
                    failures = 0
                if outcome == "gone":
                    self._log.warning("modem_absent", reason=self._gone)
                    self._outstanding.clear()
                    self._set_status(state="absent", last_error=self._gone)
                    await self._pause(self._delay(failures), until_device=True)
                else:
                    self._set_status(state="down")
                    self._log.error("modem_down", reason=self.status.last_error, retry=self._delay(failures))
                    await self._pause(self._delay(failures))
                failures += 1
            mark_started()  # stopped before the first attempt: nursery.start() must still return
        finally:
            self._event_send.close()
            self._log.info("modem_stopped")

    def _delay(self, failures: int) -> float:
        return self._backoff[min(failures, len(self._backoff) - 1)]

    async def _pause(self, seconds: float, *, until_device: bool = False) -> None:
        """Wait ``seconds``; less when stopped, or (``until_device`` with a watch) when a port arrives."""
        with trio.move_on_after(seconds):
            if not until_device or self._device_watch is None:
                await self._stop_event.wait()
                return
            async with trio.open_nursery() as nursery:
                async def wake_on(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wake_on, self._stop_event.wait)
                nursery.start_soon(wake_on, partial(self._device_watch.wait_retry, seconds))

    async def _session(self, port: SerialPort, mark_started) -> str:
        """One open port until "stopped", "gone" (unplugged) or "down" (initialisation kept failing)."""
        self._conn = AtConnection()
        self._port = port
        self._gone = None
        self._unresponsive = trio.Event()
        self._session_was_ready = False
        self._settle_after_serve = False
        urc_send, urc_receive = trio.open_memory_channel[UnsolicitedResult](256)
        self._urc_send = urc_send
        try:
            async with trio.open_nursery() as nursery:
                self._session_scope = nursery.cancel_scope
                nursery.start_soon(self._read_loop, port)
                nursery.start_soon(self._stop_watch)
                await self._drive(urc_receive, mark_started)
                nursery.cancel_scope.cancel()
        finally:
            self._session_scope = None
            self._port = None
            self._urc_send = None
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.lost = True
                pending.done.set()
                pending.answered.set()
        if self._stop_requested:
            return "stopped"
        return "gone" if self._gone is not None else "down"

    async def _stop_watch(self) -> None:
        await self._stop_event.wait()
        async with self._lock:  # the command in flight completes first
            if self._session_scope is not None:
                self._session_scope.cancel()

    async def _read_loop(self, port: SerialPort) -> None:
        try:
            while True:
                data = await port.read()
                self._conn.receive_data(data)
                while (event := self._conn.next_event()) is not None:
                    self._dispatch(event)
        except PortGone as exc:
            self._lose_session(str(exc))

    def _lose_session(self, reason: str) -> None:
        if self._gone is None:
            self._gone = reason
        if self._session_scope is not None:
            self._session_scope.cancel()

    def _dispatch(self, event) -> None:
        pending = self._pending
        if isinstance(event, InformationLine):
            if pending is not None:
                pending.reply.lines.append(event)
        elif isinstance(event, FinalResult):
            if pending is not None:
                pending.reply.final = event
                pending.done.set()
                pending.answered.set()
        elif isinstance(event, Prompt):
            if pending is not None:
                pending.prompted = True
                pending.answered.set()
        elif isinstance(event, UnsolicitedResult):
            self._log.debug("urc", name=event.name)
            if self._urc_send is not None:
                try:
                    self._urc_send.send_nowait(event)
                except trio.WouldBlock:
                    # Stored messages stay in the modem and are listed again at the next initialisation.
                    self._log.warning("urc_dropped_queue_full", name=event.name)
        elif isinstance(event, StaleLine):
            self._log.debug("stale_line", reason=event.reason, length=len(event.text))

    async def _drive(self, urc_receive, mark_started) -> None:
        """Initialise, serve, and on a watchdog trip flush and initialise again; returns when it gives up."""
        init_failures = 0
        while True:
            self._set_status(state="initializing")
            try:
                await self._initialize()
            except _NoAnswer as exc:
                init_failures += 1
                self._set_status(last_error=str(exc))
                self._log.warning("init_no_answer", reason=str(exc), attempt=init_failures)
                if init_failures >= MAX_INIT_FAILURES:
                    return
                await self._flush()
                continue
            except _InitFailed as exc:
                self._set_status(last_error=str(exc))
                self._log.error("init_failed", reason=str(exc))
                return
            except ModemUnavailable:
                return  # the port closed; _session reports why
            init_failures = 0
            self._session_was_ready = True
            self._set_status(state="ready", last_error=None)
            self._log.info(
                "modem_ready",
                manufacturer=self.status.manufacturer,
                model=self.status.model,
                quirks=self.quirks.name,
            )
            mark_started()
            await self._serve(urc_receive)
            self._log.warning("watchdog_reinit", reason=self.status.last_error)
            if self._settle_after_serve:
                # After AT+CFUN=1,1: let the MT reboot (a USB port that drops ends the session meanwhile).
                self._settle_after_serve = False
                await self._pause(self._reset_settle)
            await self._flush()

    async def _serve(self, urc_receive) -> None:
        """Ready phase: stored messages, URCs and monitoring until a command goes unanswered."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._urc_loop, urc_receive)
            nursery.start_soon(self._process_stored, nursery)
            await self._unresponsive.wait()
            nursery.cancel_scope.cancel()
        self._unresponsive = trio.Event()

    async def _flush(self) -> None:
        """After a timeout: bare AT until one is answered, then let late lines drain (notes/sms.md §5.5)."""
        for _ in range(3):
            try:
                async with self._lock:
                    reply = await self._exchange("AT", limit=FLUSH_TIMEOUT, watchdog=False)
            except _NoAnswer:
                continue
            if reply.final is not None:
                break
        await trio.sleep(DRAIN_SECONDS)

    # ---- commands --------------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if self._stop_requested:
            raise ModemUnavailable(f"modem {self.name} is stopping")
        if self.status.state != "ready" or self._port is None:
            detail = f": {self.status.last_error}" if self.status.last_error else ""
            raise ModemUnavailable(f"modem {self.name} is {self.status.state}{detail}")

    async def _command(self, text: str, *, limit: float | None = None) -> _Reply:
        async with self._lock:
            return await self._exchange(text, limit=limit)

    async def _exchange(self, text: str, *, limit: float | None = None, watchdog: bool = True) -> _Reply:
        """Send one command and wait for its final result. The caller holds the lock."""
        port = self._port
        if port is None:
            raise ModemUnavailable(f"modem {self.name}: port is closed")
        if watchdog and self._unresponsive.is_set():
            raise _NoAnswer(f"modem {self.name} is being re-initialised")
        command = Command.of(text)
        pending = _Pending(command, _Reply(text))
        data = self._conn.send(command)
        self._pending = pending
        shown = "AT+CPIN=<hidden>" if text.upper().startswith("AT+CPIN=") else text
        self._log.debug("at_command", command=shown)
        try:
            await self._write(port, data)
            limit = self._command_timeout if limit is None else limit
            with trio.move_on_after(limit):
                await pending.done.wait()
        finally:
            self._release(pending)
        if pending.lost:
            raise ModemUnavailable(f"modem {self.name}: the port closed during {shown}")
        if pending.reply.final is None:
            self._no_answer(f"no answer to {shown} within {limit:g} s", watchdog)
        return pending.reply

    def _release(self, pending: _Pending) -> None:
        """The waiter is leaving (answered, timed out or cancelled): an unanswered command is abandoned so its
        late lines are treated as stale and the next command can be sent."""
        if self._pending is pending:
            self._pending = None
        if self._conn.command_in_flight is pending.command:
            self._conn.abandon()

    def _no_answer(self, reason: str, watchdog: bool) -> None:
        self._log.warning("command_timeout", reason=reason)
        if watchdog and self.status.state == "ready":
            self._set_status(state="initializing", last_error=reason)
            self._unresponsive.set()
        raise _NoAnswer(reason)

    async def _write(self, port: SerialPort, data: bytes) -> None:
        try:
            await port.write(data)
        except PortGone as exc:
            self._lose_session(str(exc))
            raise ModemUnavailable(f"modem {self.name}: {exc}") from None

    async def _submit(self, pdu_hex: str, tpdu_length: int) -> int:
        port = self._port
        assert port is not None  # _require_ready checked it under the lock
        text = f"AT+CMGS={tpdu_length}"
        command = Command.of(text)
        pending = _Pending(command, _Reply(text))
        data = self._conn.send(command)
        self._pending = pending
        try:
            await self._write(port, data)
            with trio.move_on_after(PROMPT_TIMEOUT):
                await pending.answered.wait()
            if pending.lost:
                raise ModemUnavailable(f"modem {self.name}: the port closed while sending")
            if pending.reply.final is not None:
                raise self._send_error(pending.reply.final)
            if not pending.prompted:
                # Nothing was transmitted: the message can safely go out later or on another modem.
                await self._write(port, self._conn.cancel_prompt())
                try:
                    self._no_answer(f"no '> ' prompt after {text} within {PROMPT_TIMEOUT:g} s", True)
                except _NoAnswer as exc:
                    raise ModemUnavailable(str(exc)) from None
            await self._write(port, self._conn.send_pdu(pdu_hex))
            with trio.move_on_after(self._send_timeout):
                await pending.done.wait()
        finally:
            self._release(pending)
        if pending.lost:
            raise SendError(None, "temporary", "the port closed after the PDU was written; it may be sent")
        final = pending.reply.final
        if final is None:
            try:
                self._no_answer(f"no +CMGS answer within {self._send_timeout:g} s", True)
            except _NoAnswer as exc:
                raise SendError(None, "temporary", f"{exc}; the message may have been sent") from None
        if not final.ok:
            raise self._send_error(final)
        arguments = pending.reply.first("+CMGS:")
        if not arguments or not arguments[0].isdigit():
            raise SendError(None, "temporary", f"the modem answered {final.text} without a +CMGS reference")
        reference = int(arguments[0])
        self._log.info("sms_submitted", reference=reference, octets=tpdu_length)
        return reference

    def _send_error(self, final: FinalResult) -> SendError:
        if final.kind == "cms":
            kind = classify_cms(final.code, extra_temporary=self.quirks.temporary_send_errors)
        elif final.kind == "cme":
            kind = classify_cme(final.code)
        else:
            kind = "temporary"
        self._log.warning("sms_submit_failed", answer=final.text, kind=kind)
        return SendError(final.code, kind, f"modem {self.name} refused the message: {final.text}")

    # ---- initialisation --------------------------------------------------------------------------
    async def _initialize(self) -> None:
        await self._setup("ATE0")  # V.250 §6.2.4: echo off (the AtConnection copes either way)
        await self._setup("AT+CMEE=1")  # TS 27.007 §9.1: numeric +CME ERROR codes
        await self._identify()
        for extra in self.quirks.init_commands:
            reply = await self._command(extra)
            if not reply.ok:
                self._log.warning("quirk_command_failed", command=extra, answer=reply.describe())
        await self._unlock_sim()
        await self._setup("AT+CMGF=0", busy_retry=True)  # TS 27.005 §3.2.3: PDU mode
        await self._check_smsc()
        await self._select_storage()
        await self._query_csms()
        await self._set_indications()

    async def _setup(self, text: str, *, busy_retry: bool = False) -> _Reply:
        """A set-up command that must succeed; retried while the firmware reports itself busy."""
        deadline = trio.current_time() + self.quirks.startup_grace_seconds
        while True:
            reply = await self._command(text)
            if reply.ok:
                return reply
            if busy_retry and self._is_startup_busy(reply) and trio.current_time() < deadline:
                await trio.sleep(SIM_RETRY_SECONDS)
                continue
            raise _InitFailed(f"{text} failed: {reply.describe()}")

    def _is_startup_busy(self, reply: _Reply) -> bool:
        final = reply.final
        return final is not None and (final.kind, final.code) in self.quirks.startup_busy_errors

    async def _identify(self) -> None:
        values: dict[str, str | None] = {}
        for text in ("AT+CGMI", "AT+CGMM", "AT+CGSN"):
            reply = await self._command(text)
            if not reply.ok and reply.final is not None and reply.final.code == 100:
                # SIMCom SIM800C answers probes with +CME ERROR: 100 shortly after boot (babca #64).
                await trio.sleep(1.0)
                reply = await self._command(text)
            values[text] = reply.plain_text() if reply.ok else None
        manufacturer, model, imei = values["AT+CGMI"], values["AT+CGMM"], values["AT+CGSN"]
        if self._quirks_setting == "auto":
            self.quirks = select_quirks(manufacturer, model)
        self._set_status(manufacturer=manufacturer, model=model, imei=imei)

    async def _unlock_sim(self) -> None:
        """AT+CPIN? until READY (TS 27.007 §8.3); the configured PIN is sent at most once per attempt."""
        deadline = trio.current_time() + self.quirks.startup_grace_seconds
        pin_sent = False
        while True:
            reply = await self._command("AT+CPIN?")
            if reply.ok:
                arguments = reply.first("+CPIN:")
                state = (arguments[0] if arguments else "").upper()
                if state == "READY":
                    return
                if state == "SIM PIN":
                    if self._pin is None:
                        raise _InitFailed("the SIM asks for a PIN and no pin is configured")
                    if pin_sent:
                        raise _InitFailed("the SIM still asks for a PIN after accepting the configured PIN")
                    answer = await self._command(f'AT+CPIN="{self._pin}"')
                    if not answer.ok:
                        # Never retry a wrong PIN: three failures lock the SIM behind its PUK.
                        raise _InitFailed(f"the SIM rejected the configured PIN ({answer.describe()})")
                    pin_sent = True
                    continue
                raise _InitFailed(f"the SIM is locked ({state or 'unknown state'}); unlock it by hand")
            if self._is_startup_busy(reply) and trio.current_time() < deadline:
                await trio.sleep(SIM_RETRY_SECONDS)
                continue
            final = reply.final
            if final is not None and final.kind == "cme" and final.code == 10:
                raise _InitFailed("no SIM card inserted (+CME ERROR: 10)")
            raise _InitFailed(f"SIM not ready: {reply.describe()}")

    async def _check_smsc(self) -> None:
        """AT+CSCA? (TS 27.005 §3.3.1); set the configured SMSC when the SIM holds another or none."""
        reply = await self._command("AT+CSCA?")
        arguments = reply.first("+CSCA:") if reply.ok else None
        current = arguments[0] if arguments else ""
        if self._smsc and current != self._smsc:
            toa = 145 if self._smsc.startswith("+") else 129
            answer = await self._command(f'AT+CSCA="{self._smsc}",{toa}')
            if not answer.ok:
                raise _InitFailed(f"cannot set the SMSC {mask_number(self._smsc)}: {answer.describe()}")
            self._log.info("smsc_set", smsc=mask_number(self._smsc))
        elif not current:
            self._log.warning("smsc_unknown", hint="sends will fail with +CMS ERROR: 330; configure smsc")

    async def _select_storage(self) -> None:
        """AT+CPMS (TS 27.005 §3.2.2): SIM storage, ME as fallback, else whatever the modem has."""
        for storage in ("SM", "ME"):
            reply = await self._command(f'AT+CPMS="{storage}","{storage}","{storage}"')
            if reply.ok:
                self._storage = storage
                return
        reply = await self._command("AT+CPMS?")
        arguments = reply.first("+CPMS:") if reply.ok else None
        if not arguments:
            raise _InitFailed(f"the modem accepts no message storage (AT+CPMS?: {reply.describe()})")
        self._storage = arguments[0]

    async def _query_csms(self) -> None:
        """AT+CSMS? <service> 1 means routed +CMT/+CDS must be acknowledged by AT+CNMA (TS 27.005 §3.2.1)."""
        reply = await self._command("AT+CSMS?")
        arguments = reply.first("+CSMS:") if reply.ok else None
        self._cnma_required = bool(arguments) and arguments[0] == "1"

    async def _set_indications(self) -> None:
        """AT+CNMI=<mode>,<mt>,<bm>,<ds>,<bfr> (TS 27.005 §3.4.1): mt=1 -> +CMTI, ds per quirk."""
        ds = self.quirks.status_report_ds
        candidates = (f"AT+CNMI=2,1,0,{ds},0", f"AT+CNMI=2,1,0,{ds}", f"AT+CNMI=1,1,0,{ds},0")
        reply: _Reply | None = None
        for text in candidates:
            reply = await self._command(text)
            if reply.ok:
                return
        raise _InitFailed(f"the modem refuses new-message indications ({candidates[-1]}: {reply.describe()})")

    # ---- ready phase -----------------------------------------------------------------------------
    async def _process_stored(self, nursery: trio.Nursery) -> None:
        """AT+CMGL=4 (all, TS 27.005 §3.4.2): emit what the modem stored while nobody listened. Monitoring
        starts once the list is read (not after it is consumed: a slow consumer must not stop the polls)."""
        try:
            async with self._lock:
                reply = await self._exchange("AT+CMGL=4")
            nursery.start_soon(self._monitor_loop)
            if not reply.ok:
                self._log.warning("list_failed", answer=reply.describe())
                return
            for line in reply.lines:
                arguments = parse_arguments(line.text[len("+CMGL:") :])
                if line.pdu is None or not arguments or not arguments[0].isdigit():
                    continue
                await self._emit_stored(self._storage, int(arguments[0]), line.pdu)
        except (_NoAnswer, ModemUnavailable):
            return

    async def _emit_stored(self, storage: str, index: int, pdu_hex: str) -> None:
        key = (storage, index)
        if self._outstanding.get(key) == pdu_hex:
            return  # already handed to the gateway, waiting for acknowledge()
        self._outstanding[key] = pdu_hex
        kind = pdu_message_type(pdu_hex)
        if kind == "status_report":
            await self._emit(StatusReport(self.name, pdu_hex, storage, index))
        elif kind == "deliver":
            await self._emit(IncomingSms(self.name, pdu_hex, storage, index))
        else:
            # SUBMIT copies (sent/unsent drafts) are not ours to report; leave them in storage.
            self._outstanding.pop(key, None)
            self._log.info("stored_pdu_ignored", storage=storage, index=index, kind=kind)

    async def _urc_loop(self, urc_receive) -> None:
        try:
            async for urc in urc_receive:
                await self._handle_urc(urc)
        except (_NoAnswer, ModemUnavailable):
            return

    async def _handle_urc(self, urc: UnsolicitedResult) -> None:
        name, arguments = urc.name, urc.arguments
        if name in ("+CMTI", "+CDSI") and len(arguments) >= 2 and arguments[1].isdigit():
            storage = arguments[0] or self._storage
            if name == "+CDSI":
                # Quectel EC2x announces "SM" for a report kept in "SR" (asterisk-chan-quectel PR #75).
                storage = self.quirks.report_storage_override.get(storage, storage)
            await self._read_stored(storage, int(arguments[1]))
        elif name == "+CMT" and urc.pdu is not None:
            await self._emit(IncomingSms(self.name, urc.pdu, None, None))
        elif name == "+CDS" and urc.pdu is not None:
            await self._emit(StatusReport(self.name, urc.pdu, None, None))
        elif name in ("+CREG", "+CGREG", "+CEREG") and arguments:
            # Unsolicited form "+CREG: <stat>[,<lac>,<ci>]" (TS 27.007 §7.2).
            if name == "+CREG":
                self._set_status(registration=_REGISTRATION.get(arguments[0], "unknown"))
        elif name == "^RSSI" and arguments and arguments[0].isdigit():
            self._apply_rssi(int(arguments[0]))
        else:
            self._log.debug("urc_ignored", name=name)

    async def _read_stored(self, storage: str, index: int) -> None:
        """AT+CMGR=<index> (TS 27.005 §3.4.3) in `storage`, switching <mem1> with AT+CPMS when needed."""
        async with self._lock:
            switched = storage != self._storage
            if switched:
                reply = await self._exchange(f'AT+CPMS="{storage}"')
                if not reply.ok:
                    self._log.warning("storage_switch_failed", storage=storage, answer=reply.describe())
                    return
            reply = await self._exchange(f"AT+CMGR={index}")
            if switched:  # after a timeout the re-initialisation restores <mem1> instead
                await self._exchange(f'AT+CPMS="{self._storage}"')
        line = next((line for line in reply.lines if line.pdu is not None), None)
        if not reply.ok or line is None:
            self._log.warning("stored_unreadable", storage=storage, index=index, answer=reply.describe())
            return
        await self._emit_stored(storage, index, line.pdu)

    async def _delete(self, storage: str, index: int) -> None:
        """AT+CMGD=<index> (TS 27.005 §3.5.4), one index at a time: never a flag that hits unread ones."""
        switched = storage != self._storage
        if switched:
            reply = await self._exchange(f'AT+CPMS="{storage}"')
            if not reply.ok:
                raise ModemUnavailable(f"cannot select {storage} to delete #{index}: {reply.describe()}")
        try:
            reply = await self._exchange(f"AT+CMGD={index}")
            if switched:
                await self._exchange(f'AT+CPMS="{self._storage}"')
        except _NoAnswer as exc:
            raise ModemUnavailable(str(exc)) from None
        if reply.ok or (reply.final and reply.final.kind == "cms" and reply.final.code == 321):
            self._outstanding.pop((storage, index), None)  # 321 invalid index: already gone
            self._log.info("stored_message_deleted", storage=storage, index=index)
            return
        raise ModemUnavailable(f"modem {self.name} could not delete {storage} #{index}: {reply.describe()}")

    async def _monitor_loop(self) -> None:
        """Periodic poll of signal, registration and operator (TS 27.007 §8.5, §7.2, §7.3)."""
        try:
            while True:
                await self._poll_network()
                await trio.sleep(self._monitor_interval)
        except (_NoAnswer, ModemUnavailable):
            return

    async def _poll_network(self) -> None:
        reply = await self._command("AT+CSQ")
        arguments = reply.first("+CSQ:") if reply.ok else None
        if arguments and arguments[0].isdigit():
            self._apply_rssi(int(arguments[0]))
        reply = await self._command("AT+CREG?")
        arguments = reply.first("+CREG:") if reply.ok else None
        if arguments and len(arguments) >= 2:
            self._set_status(registration=_REGISTRATION.get(arguments[1], "unknown"))
        reply = await self._command("AT+COPS?")
        arguments = reply.first("+COPS:") if reply.ok else None
        if arguments:
            self._set_status(operator=arguments[2] if len(arguments) >= 3 and arguments[2] else None)

    def _apply_rssi(self, rssi: int) -> None:
        # TS 27.007 §8.5: 0 -> -113 dBm ... 31 -> -51 dBm or more, 99 not known.
        dbm = -113 + 2 * rssi if 0 <= rssi <= 31 else None
        self._set_status(rssi=None if rssi == 99 else rssi, signal_dbm=dbm)

    # ---- events ----------------------------------------------------------------------------------
    async def _emit(self, event: IncomingSms | StatusReport) -> None:
        """Messages wait for room in the channel (backpressure); they stay stored in the modem meanwhile."""
        self._log.info("message_received", kind=type(event).__name__, storage=event.storage, at=event.index)
        await self._event_send.send(event)

    def _set_status(self, **changes) -> None:
        updated = replace(self.status, **changes)
        if updated == self.status:
            return
        self.status = updated
        try:
            self._event_send.send_nowait(updated)
        except trio.WouldBlock:
            # Status is a snapshot: a consumer that fell behind reads `modem.status` for the latest one.
            self._log.warning("status_event_dropped", state=updated.state)
        except trio.ClosedResourceError:
            pass

