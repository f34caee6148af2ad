"""Trio driver for one V.253 voice modem on one analogue line (USR 5637, Conexant CX930xx, Zoom-class).

Around the sans-IO codec of :mod:`drivers.voice.v253` (the DLE stream) and
:mod:`drivers.voice.callerid_text` (caller ID printed as text). It has the public shape of
:class:`drivers.voice.usbbox.UsbVoiceBox`, so the gateway drives both the same way: ``events`` (line
events of :mod:`drivers.voice.events`, :class:`DeviceReady`, :class:`DeviceLost`), ``run(task_status)``,
``hook``/``off_hook``/``on_hook``, ``dial``, ``send_dtmf``, ``play``, plus ``record`` and ``duplex``.

Life cycle of :meth:`VoiceModem.run`: open the port (pyserial opens and configures it, I/O on the fd
through trio) → initialise: ATZ, ATE0, identity (ATI0/ATI3/+FMI/+FMM/+FMR → family), ``+FCLASS=8``,
``+VSM=?`` → :func:`choose_format` (never a hard-coded id), ``+VLS=?`` (hook labels), ``-STE=?``,
``+VTD=?``, ``+VTR=?``, caller ID on (:func:`callerid_enable_commands`) → ready (:class:`DeviceReady`)
until the port vanishes or a command goes unanswered → :class:`DeviceLost`, port closed, reopened with
backoff. Every initialisation starts with ATZ and ends with caller ID switched on, so caller ID is
re-enabled after every reset (Conexant forgets ``+VCID`` on ATZ: home-assistant/core #57765).

One AT command or voice stream at a time (one ``trio.Lock``); timeouts are cancel scopes. Playback is
paced by the sample clock: chunk *k* is written when the audio already sent is at most ``playback_lead``
seconds ahead of what the modem has played since ``CONNECT`` (a pty has no CTS; on a real port the
write also blocks when the UART's flow control stops it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
import trio

from drivers.hotplug import DeviceWatch
from drivers.serial_port import PortError, PortGone, SerialPort
from drivers.voice.callerid_text import CallerIdTextParser, callerid_enable_commands, parse_callerid_lines
from drivers.voice.events import DeviceLost, DeviceReady, Ring, ToneEvent
from drivers.voice.v253 import (
    ABORT_TRANSMIT,
    DLE,
    END_TRANSMIT,
    Audio,
    CommandText,
    ComplexEvent,
    DleDecoder,
    EndOfStream,
    FamilyProfile,
    IntRanges,
    LineSelectOption,
    ModemIdentity,
    NoUsableVoiceFormat,
    PlaybackEncoder,
    StreamNotice,
    VoiceFormat,
    VsmCapabilities,
    choose_format,
    encode_command,
    family_profile,
    fclass,
    line_label,
    parse_fclass,
    parse_identity,
    parse_ranges,
    parse_vls_options,
    parse_vsm_options,
    vls,
    vtd,
    vts,
)

__all__ = [
    "Capabilities",
    "DeviceReady",
    "ModemUnavailable",
    "Recording",
    "VoiceModem",
    "VoiceModemError",
    "decode_samples",
    "encode_samples",
]

# V.250 §5.7 final result codes, plus the V.253 voice ones (VCON) and dialling outcomes.
_FINAL = re.compile(r"^(OK|ERROR|CONNECT\b.*|VCON|NO CARRIER|BUSY|NO DIAL ?TONE|NO ANSWER|\+CME ERROR:.*)$")
_LAW_FOR_TONES = {"jp": "ulaw", "us": "ulaw", "cn": "alaw", "etsi": "alaw"}
_DIAL_CHARS = frozenset("0123456789*#ABCD,W!")
# Conexant 100498E §5.2.2.3 / USR 56K command reference +VTR: the host leaves voice duplex with <DLE>^;
# the modem ends its stream with <DLE><ETX>, then OK.
END_DUPLEX = bytes((DLE, ord("^")))


class VoiceModemError(RuntimeError):
    """The modem refused or could not do what was asked; the message names the command and the answer."""


class ModemUnavailable(VoiceModemError):
    """The modem is absent, still initialising, or was lost during the operation."""


# ------------------------------------------------------------------------------------ sample formats
def encode_samples(x: np.ndarray, fmt: VoiceFormat) -> bytes:
    """Float samples (full scale 1.0) to the wire bytes of ``fmt`` (G.711 §2 tables for µ/A-law)."""
    v = np.asarray(x, dtype=np.float64)
    if fmt.encoding == "s16le":
        return np.clip(np.round(v * 32767.0), -32768, 32767).astype("<i2").tobytes()
    if fmt.encoding == "u8":  # V.253 "8-bit linear" / "unsigned PCM": offset 128
        return (np.clip(np.round(v * 127.0), -128, 127) + 128).astype(np.uint8).tobytes()
    if fmt.encoding == "s8":
        return np.clip(np.round(v * 127.0), -128, 127).astype(np.int8).tobytes()
    pcm = np.clip(np.round(v * 32768.0), -32768, 32767).astype(np.int64)
    if fmt.encoding == "ulaw":
        # G.711 Table 2a from a 16-bit linear value: bias 132 (33 at 14 bits), 8 chords of 16 steps, inverted.
        negative = pcm < 0
        mag = np.minimum(np.abs(pcm), 32635) + 132
        chord = np.floor(np.log2(mag)).astype(np.int64) - 7
        step = (mag >> (chord + 3)) & 0x0F
        return (~((negative << 7) | (chord << 4) | step) & 0xFF).astype(np.uint8).tobytes()
    if fmt.encoding == "alaw":
        # G.711 Table 1a: 13-bit magnitude, chord 0 and 1 linear, sign bit 1 = positive, even bits inverted.
        positive = pcm >= 0
        mag = np.where(positive, pcm, -pcm - 1) >> 3
        chord = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) - 4)
        step = np.where(chord == 0, mag >> 1, (mag >> np.maximum(chord, 1)) & 0x0F)
        return ((((positive << 7) | (chord << 4) | step) ^ 0x55) & 0xFF).astype(np.uint8).tobytes()
    raise VoiceModemError(f"no sample codec for {fmt.encoding!r}")


def decode_samples(data: bytes, fmt: VoiceFormat) -> np.ndarray:
    """Wire bytes of ``fmt`` to float32 samples (full scale 1.0); the inverse of :func:`encode_samples`."""
    if fmt.encoding == "s16le":
        return (np.frombuffer(data, dtype="<i2") / 32767.0).astype(np.float32)
    if fmt.encoding == "u8":
        return ((np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 127.0).astype(np.float32)
    if fmt.encoding == "s8":
        return (np.frombuffer(data, dtype=np.int8) / 127.0).astype(np.float32)
    code = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if fmt.encoding == "ulaw":
        c = ~code & 0xFF
        mag = ((((c & 0x0F) << 3) + 132) << ((c >> 4) & 7)) - 132
        return (np.where(c & 0x80, -mag, mag) / 32768.0).astype(np.float32)
    if fmt.encoding == "alaw":
        c = code ^ 0x55
        chord, step = (c >> 4) & 7, c & 0x0F
        mag = np.where(chord == 0, (step << 4) + 8, ((step << 4) + 0x108) << np.maximum(chord - 1, 0))
        return (np.where(c & 0x80, mag, -mag) / 32768.0).astype(np.float32)
    raise VoiceModemError(f"no sample codec for {fmt.encoding!r}")


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Capabilities:
    """What the modem said about itself during initialisation."""

    identity: ModemIdentity
    profile: FamilyProfile
    fclasses: frozenset[str]
    formats: VsmCapabilities
    line_modes: tuple[LineSelectOption, ...]
    on_hook_label: int
    off_hook_label: int
    line_awareness: IntRanges | None  # -STE=? (None: not supported)
    tone_duration: IntRanges | None  # +VTD=?
    duplex: bool  # +VTR=? answered OK
    callerid_command: str | None  # the command that switched caller ID on


@dataclass(frozen=True)
class Recording:
    """Audio received in ``format`` (shielding removed), cut exactly where the recording stopped."""

    data: bytes
    format: VoiceFormat
    stopped_by: str  # "duration" | "event" | "modem" (the modem ended the stream) | "timeout"
    event: object | None = None  # the line event that stopped it
    received_bytes: int = 0  # every audio byte streamed, including those after the stop point

    @property
    def seconds(self) -> float:
        return len(self.data) / self.format.bytes_per_second

    def samples(self) -> np.ndarray:
        return decode_samples(self.data, self.format)


@dataclass
class _Pending:
    command: str
    lines: list[str] = field(default_factory=list)
    final: str | None = None
    lost: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def ok(self) -> bool:
        return self.final in ("OK", "VCON")

    def answer(self) -> str:
        return self.final or "no answer"


@dataclass
class _Sink:
    """Where received audio goes while a voice receive (+VRX / +VTR) is active."""

    limit: int | None  # bytes wanted
    until: Callable[[object], bool] | None
    data: bytearray = field(default_factory=bytearray)
    stop_at: int | None = None
    stopped_by: str | None = None
    event: object | None = None
    stop: trio.Event = field(default_factory=trio.Event)  # limit reached, stop event, or stream ended
    ended: bool = False  # <DLE><ETX> (or, after a Conexant abort, its OK) seen
    abort_at: int | None = None  # len(data) when the host asked the modem to stop

    def halt(self, reason: str, at: int, event: object | None = None) -> None:
        if self.stopped_by is None:
            self.stopped_by, self.stop_at, self.event = reason, at, event
        self.stop.set()




class _NoAnswer(Exception):
    pass


class VoiceModem:
    """One voice modem on one line. ``tones`` picks the G.711 law preferred when the modem offers no
    16-bit linear format (µ-law for jp/us, A-law for cn/etsi); ``cid=None`` leaves caller ID off (any
    other value: on, decoded by the modem itself)."""

    def __init__(
        self,
        name: str,
        port: str,
        *,
        tones: str = "jp",
        cid: str | None = "auto",
        baudrate: int = 115200,
        sample_rate: int = 8000,
        prefer_law: str | None = None,
        command_timeout: float = 5.0,
        dial_timeout: float = 60.0,
        callerid_timeout: float = 1.0,
        playback_lead: float = 0.2,
        dtmf_repeat_gap: float = 0.1,
        reconnect_backoff: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
        event_queue: int = 1000,
        device_watch: DeviceWatch | None = None,
    ) -> None:
        if not reconnect_backoff:
            raise ValueError("reconnect_backoff needs at least one delay")
        if playback_lead <= 0:
            raise ValueError(f"playback_lead must be positive, got {playback_lead}")
        self.name = name
        self.port = port
        self.cid = cid
        self.baudrate = baudrate
        self.sample_rate = sample_rate
        self.prefer_law = prefer_law or _LAW_FOR_TONES.get(tones, "ulaw")
        self.command_timeout = command_timeout
        self.dial_timeout = dial_timeout
        self.callerid_timeout = callerid_timeout
        self.playback_lead = playback_lead
        self.dtmf_repeat_gap = dtmf_repeat_gap
        self.reconnect_backoff = reconnect_backoff
        # device_watch: retry at once when udev reports a serial port arriving (drivers/hotplug.py).
        self.device_watch = device_watch
        self._send_event, self.events = trio.open_memory_channel(event_queue)
        self.state = "absent"  # absent | initializing | ready
        self.capabilities: Capabilities | None = None
        self.format: VoiceFormat | None = None
        self.off_hook_now = False
        self._lock = trio.Lock()
        self._port: SerialPort | None = None
        self._session_scope: trio.CancelScope | None = None
        self._lost_reason: str | None = None
        self._pending: _Pending | None = None
        self._sink: _Sink | None = None
        self._transmitting = False
        self._decoder = DleDecoder()
        self._text = bytearray()
        self._skip_lf = False
        self._cid = CallerIdTextParser()
        self._cid_kick = trio.Event()
        self._log = structlog.get_logger(__name__).bind(modem=name)

    # ================================================================================== run loop
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the port until cancelled. ``started`` once the first attempt settled (ready or absent)."""
        started = False

        def mark_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        attempt = 0
        while True:
            try:
                port = SerialPort(self.port, self.baudrate, read_size=65536)
            except (PortGone, PortError) as exc:
                if attempt == 0:
                    self._log.warning("voice_modem_absent", reason=str(exc))
                mark_started()
                await self._wait_retry(attempt)
                attempt += 1
                continue
            try:
                was_ready = await self._session(port, mark_started)
            finally:
                port.close()
                self.state, self._port, self.capabilities = "absent", None, None
            mark_started()
            reason = self._lost_reason or "session ended"
            self._log.warning("voice_modem_lost", reason=reason)
            if was_ready:
                attempt = 0
                await self._send_event.send(DeviceLost(reason))
            await self._wait_retry(attempt)
            attempt += 1

    async def _wait_retry(self, attempt: int) -> None:
        delay = self.reconnect_backoff[min(attempt, len(self.reconnect_backoff) - 1)]
        if self.device_watch is None:
            await trio.sleep(delay)
        else:
            await self.device_watch.wait_retry(delay)

    async def _session(self, port: SerialPort, mark_started: Callable[[], None]) -> bool:
        self._port, self._lost_reason, self.state = port, None, "initializing"
        self._decoder = DleDecoder(dtmf_repeat_gap=self.dtmf_repeat_gap)
        self._text.clear()
        self._skip_lf = False
        self._cid = CallerIdTextParser()
        self.off_hook_now = False
        ready = False
        try:
            async with trio.open_nursery() as nursery:
                self._session_scope = nursery.cancel_scope
                nursery.start_soon(self._read_loop, port)
                nursery.start_soon(self._callerid_flusher)
                try:
                    async with self._lock:
                        await self._initialize()
                except (_NoAnswer, VoiceModemError, NoUsableVoiceFormat, LookupError) as exc:
                    self._lose(f"initialisation failed: {exc}")
                    return False
                self.state, ready = "ready", True
                caps = self.capabilities
                assert caps is not None and self.format is not None
                self._log.info("voice_modem_ready", family=caps.identity.family, model=caps.identity.model,
                               format=self.format.name, rate=self.format.rate)
                await self._send_event.send(DeviceReady(None, f"v253-{caps.identity.family}"))
                mark_started()
                await trio.sleep_forever()
        finally:
            self._session_scope = None
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.lost = True
                pending.done.set()
            if self._sink is not None:
                self._sink.halt("modem", len(self._sink.data))
        return ready

    def _lose(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        if self._session_scope is not None:
            self._session_scope.cancel()

    # ================================================================================== initialisation
    async def _initialize(self) -> None:
        """Reset, identify, probe; every step cites what it relies on. Caller ID comes last (after ATZ)."""
        await self._exchange("AT", require_ok=False)  # sync: a half-typed line from before is discarded
        await self._exchange("ATZ")  # V.250 §6.1.1 reset: Conexant forgets +VCID here
        await self._exchange("ATE0")  # V.250 §6.2.4 echo off
        answers = {}
        for key, text in (("ati0", "ATI0"), ("ati3", "ATI3"), ("fmi", "AT+FMI?"), ("fmm", "AT+FMM?"),
                          ("fmr", "AT+FMR?")):
            reply = await self._exchange(text, require_ok=False)
            answers[key] = reply.lines if reply.ok else None
        identity = parse_identity(**answers)
        profile = family_profile(identity.family)
        classes = parse_fclass((await self._exchange("AT+FCLASS=?")).lines)
        if "8" not in classes:
            raise VoiceModemError(f"{identity.model or 'the modem'} lists no voice class 8 in AT+FCLASS=? "
                                  f"({', '.join(sorted(classes)) or 'nothing'}): not a voice modem")
        await self._exchange(fclass(8))  # V.253 voice mode
        formats = parse_vsm_options((await self._exchange("AT+VSM=?")).lines)
        fmt = choose_format(formats, rate=self.sample_rate, prefer_law=self.prefer_law)
        await self._exchange(fmt.vsm_command())
        modes = tuple(parse_vls_options((await self._exchange("AT+VLS=?")).lines))
        on_label, off_label = line_label(modes, ""), line_label(modes, "T")
        ste_ranges = await self._probe_ranges("AT-STE=?", "-STE")
        if profile.line_awareness and ste_ranges is not None:
            await self._exchange(profile.line_awareness, require_ok=False)
        vtd_ranges = await self._probe_ranges("AT+VTD=?", "+VTD")
        if vtd_ranges is not None and 10 in vtd_ranges:
            await self._exchange(vtd(10), require_ok=False)  # 100 ms DTMF tones (+VTD is in 10 ms units)
        duplex = (await self._exchange("AT+VTR=?", require_ok=False)).ok
        await self._exchange(vls(on_label))  # start on hook whatever state the line was left in
        cid_command = await self._enable_callerid(identity.family) if self.cid is not None else None
        self._decoder = DleDecoder(dtmf_repeat_gap=self.dtmf_repeat_gap,
                                   ignore_while_streaming=profile.ignore_while_streaming)
        self.format = fmt
        self.capabilities = Capabilities(identity, profile, classes, formats, modes, on_label, off_label,
                                         ste_ranges, vtd_ranges, duplex, cid_command)

    async def _probe_ranges(self, text: str, name: str) -> IntRanges | None:
        reply = await self._exchange(text, require_ok=False)
        if not reply.ok:
            return None
        try:
            ranges = parse_ranges(reply.lines, name)
        except ValueError as exc:
            self._log.warning("probe_unreadable", command=text, reason=str(exc))
            return None
        return ranges[0] if ranges else None

    async def _enable_callerid(self, family: str) -> str:
        """The family's commands in order until one is accepted (generic: +VCID=1, then #CID=1)."""
        commands = callerid_enable_commands(family)
        answers = []
        for text in commands:
            reply = await self._exchange(text, require_ok=False)
            if reply.ok:
                return text
            answers.append(f"{text} -> {reply.answer()}")
        raise VoiceModemError(f"caller ID could not be enabled: {'; '.join(answers)}")

    async def reset(self) -> None:
        """ATZ and the whole initialisation again (format, hook, caller ID re-enabled)."""
        self._require_ready()
        async with self._lock:
            self.state = "initializing"
            try:
                await self._initialize()
            except (_NoAnswer, VoiceModemError, NoUsableVoiceFormat, LookupError) as exc:
                self._lose(f"re-initialisation failed: {exc}")
                raise ModemUnavailable(f"{self.name}: re-initialisation failed: {exc}") from None
            self.state = "ready"

    # ================================================================================== reading
    async def _read_loop(self, port: SerialPort) -> None:
        try:
            while True:
                data = await port.read()
                for event in self._decoder.feed(data, now=trio.current_time()):
                    await self._on_stream_event(event)
        except (PortGone, PortError) as exc:
            self._lose(str(exc))

    async def _on_stream_event(self, event: object) -> None:
        if isinstance(event, CommandText):
            rest = await self._on_text(event.data)
            if rest:  # CONNECT began a voice receive inside this read: what follows it is audio
                self._decoder.audio_bytes += len(rest)
                self._on_audio(rest)
        elif isinstance(event, Audio):
            self._on_audio(event.data)
        elif isinstance(event, EndOfStream):
            if self._sink is not None:
                self._sink.ended = True
                self._sink.halt("modem", len(self._sink.data))
        elif isinstance(event, ComplexEvent):
            text = event.payload.decode("latin-1")
            for cid in parse_callerid_lines(text):  # Si ISOmodem caller ID (AN93 Table 112)
                await self._emit(cid)
        elif isinstance(event, StreamNotice):
            self._log.debug("stream_notice", kind=event.kind)
        else:
            if isinstance(event, ToneEvent) and event.tone == "dialtone" and self._transmitting:
                caps = self.capabilities
                if caps is not None and ord("d") in caps.profile.ignore_while_streaming:
                    return  # USR: spurious <DLE>d while playing (vgetty US_Robotics.c)
            sink = self._sink
            if sink is not None and sink.until is not None and sink.stopped_by is None and sink.until(event):
                sink.halt("event", len(sink.data), event)
            await self._emit(event)

    def _on_audio(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            return
        if self._skip_lf and not sink.data and data[:1] == b"\n":
            data = data[1:]  # CONNECT's LF arrived in the next read
            self._decoder.audio_bytes -= 1
        self._skip_lf = False
        sink.data += data
        if sink.limit is not None and len(sink.data) >= sink.limit:
            sink.halt("duration", sink.limit)
        if sink.abort_at is not None and not sink.ended:
            # Conexant answers <DLE>! with OK and no <DLE><ETX> (100722A; vgetty): find the OK in the stream.
            tail = bytes(sink.data[max(0, sink.abort_at - 8) :])
            hit = tail.find(b"OK\r\n")
            if hit >= 0:
                self._decoder.stop_stream()
                sink.ended = True
                self._finish_pending("OK")

    async def _on_text(self, data: bytes) -> bytes:
        """Split command text into lines; returns the bytes after a CONNECT that started a receive."""
        text = self._text
        start = 0
        if self._skip_lf and data[:1] == b"\n":
            start = 1
        self._skip_lf = False
        text += data[start:]
        while True:
            cut = next((i for i, b in enumerate(text) if b in (0x0D, 0x0A)), -1)
            if cut < 0:
                return b""
            line = text[:cut].decode("latin-1").strip()
            skip = 2 if text[cut : cut + 2] == b"\r\n" else 1
            if skip == 1 and text[cut] == 0x0D and cut + 1 == len(text):
                self._skip_lf = True
            del text[: cut + skip]
            if await self._on_line(line) and self._sink is not None:
                rest = bytes(text)
                text.clear()
                return rest

    async def _on_line(self, line: str) -> bool:
        """One line outside a stream. Returns True when it was the CONNECT of a voice receive."""
        for cid in self._cid.feed_line(line):
            await self._emit(cid)
        self._cid_kick.set()
        upper = line.upper()
        if upper == "RING" or upper.startswith("RING "):
            await self._emit(Ring())
            return False
        pending = self._pending
        if pending is None:
            if line:
                self._log.debug("unsolicited_line", line=line)
            return False
        if not line or upper == pending.command.upper():
            return False  # blank line or echo
        if _FINAL.match(upper):
            if upper.startswith("CONNECT") and self._sink is not None:
                rate = self.format.bytes_per_second if self.format else None
                self._decoder.start_stream(bytes_per_second=rate)
                self._finish_pending(upper)
                return True
            self._finish_pending(upper)
        else:
            pending.lines.append(line)
        return False

    def _finish_pending(self, final: str) -> None:
        pending = self._pending
        if pending is not None:
            pending.final = final
            pending.done.set()

    async def _callerid_flusher(self) -> None:
        """End a caller-ID block that no blank line or RING ended ``callerid_timeout`` after its last line."""
        while True:
            await self._cid_kick.wait()
            self._cid_kick = trio.Event()
            if not self._cid.pending:
                continue
            with trio.move_on_after(self.callerid_timeout) as scope:
                await self._cid_kick.wait()
            if scope.cancelled_caught and self._cid.pending:
                event = self._cid.flush()
                if event is not None:
                    await self._emit(event)

    async def _emit(self, event: object) -> None:
        await self._send_event.send(event)

    # ================================================================================== commands
    def _require_ready(self) -> SerialPort:
        port = self._port
        if self.state != "ready" or port is None:
            raise ModemUnavailable(f"{self.name}: the voice modem is {self.state}")
        return port

    async def _exchange(self, text: str, *, require_ok: bool = True, limit: float | None = None,
                        connect: bool = False) -> _Pending:
        """Send one command (the caller holds the lock) and wait for its final result."""
        port = self._port
        if port is None:
            raise ModemUnavailable(f"{self.name}: the port is closed")
        pending = _Pending(text)
        self._pending = pending
        limit = self.command_timeout if limit is None else limit
        try:
            await self._write(port, encode_command(text))
            with trio.move_on_after(limit):
                await pending.done.wait()
        finally:
            if self._pending is pending:
                self._pending = None
        if pending.lost:
            raise ModemUnavailable(f"{self.name}: the modem was lost during {text}")
        if pending.final is None:
            self._lose(f"no answer to {text} within {limit:g} s")
            raise _NoAnswer(f"no answer to {text} within {limit:g} s")
        if connect and not pending.final.startswith("CONNECT"):
            raise VoiceModemError(f"{self.name}: {text} answered {pending.final}, expected CONNECT")
        if require_ok and not connect and not pending.ok:
            raise VoiceModemError(f"{self.name}: {text} answered {pending.answer()}")
        return pending

    async def _write(self, port: SerialPort, data: bytes) -> None:
        try:
            await port.write(data)
        except (PortGone, PortError) as exc:
            self._lose(str(exc))
            raise ModemUnavailable(f"{self.name}: {exc}") from None

    async def _command(self, text: str, *, limit: float | None = None) -> _Pending:
        self._require_ready()
        async with self._lock:
            self._require_ready()
            try:
                return await self._exchange(text, limit=limit)
            except _NoAnswer as exc:
                raise ModemUnavailable(f"{self.name}: {exc}; reconnecting") from None

    # ================================================================================== line control
    async def hook(self, off_hook: bool) -> None:
        """Seize (``+VLS`` mode "T") or release (mode "") the line; labels come from ``+VLS=?``."""
        self._require_ready()
        caps = self.capabilities
        assert caps is not None
        await self._command(vls(caps.off_hook_label if off_hook else caps.on_hook_label))
        self.off_hook_now = off_hook

    async def off_hook(self) -> None:
        await self.hook(True)

    async def on_hook(self) -> None:
        await self.hook(False)

    async def dial(self, digits: str) -> None:
        """``ATD<digits>;`` (V.250 §6.3.1; the ``;`` keeps the modem in voice command mode, V.253).
        Digits 0-9 * # A-D, ``,`` pause, ``W`` wait for dial tone, ``!`` flash."""
        if not digits or any(ch not in _DIAL_CHARS for ch in digits.upper()):
            raise ValueError(f"{digits!r} is not a dial string of 0-9 * # A-D , W !")
        await self._command(f"ATD{digits.upper()};", limit=self.dial_timeout)
        self.off_hook_now = True

    async def send_dtmf(self, digits: str) -> None:
        """DTMF on the line with ``AT+VTS`` (V.253), up to 16 digits per command line."""
        if not digits:
            raise ValueError("send_dtmf needs at least one digit")
        for start in range(0, len(digits), 16):
            part = digits[start : start + 16]
            text = vts(*part)  # checks every digit
            await self._command(text, limit=self.command_timeout + 0.25 * len(part))

    # ================================================================================== audio
    def _audio_bytes(self, audio: np.ndarray | bytes | bytearray | memoryview, fmt: VoiceFormat) -> bytes:
        if isinstance(audio, bytes | bytearray | memoryview):
            data = bytes(audio)
            if len(data) % fmt.bytes_per_sample:
                width = fmt.bytes_per_sample
                raise ValueError(f"{len(data)} bytes is not a whole number of {width}-byte samples")
            return data
        x = np.asarray(audio)
        if x.ndim != 1:
            raise ValueError(f"play takes mono samples (1-D), got shape {x.shape}")
        return encode_samples(x, fmt)

    async def play(self, audio: np.ndarray | bytes) -> float:
        """Play float samples at the line rate (or bytes already in :attr:`format`) with ``AT+VTX``.
        Returns when the modem has played everything (its OK after ``<DLE><ETX>``); returns the seconds
        played. Cancelled: ``<DLE><CAN><DLE><ETX>`` drops the modem's buffer (V.253 §8.3)."""
        port = self._require_ready()
        fmt = self.format
        assert fmt is not None
        data = self._audio_bytes(audio, fmt)
        async with self._lock:
            self._require_ready()
            await self._exchange("AT+VTX", connect=True)
            self._transmitting = True
            try:
                await self._send_paced(port, fmt, data, trio.current_time())
                seconds = len(data) / fmt.bytes_per_second
                await self._end_stream(port, END_TRANSMIT, seconds + self.command_timeout)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._abort_quietly(port, ABORT_TRANSMIT)
                raise
            finally:
                self._transmitting = False
        return len(data) / fmt.bytes_per_second

    async def _send_paced(self, port: SerialPort, fmt: VoiceFormat, data: bytes, start: float) -> None:
        """Chunk k is due when the audio already written is ``playback_lead`` seconds ahead of the modem's
        sample clock (started at CONNECT): due = start + written / bytes_per_second - lead."""
        encoder = PlaybackEncoder(fmt)
        written = 0
        for chunk in encoder.chunks(data):
            await trio.sleep_until(start + written / fmt.bytes_per_second - self.playback_lead)
            await self._write(port, chunk)
            written = encoder.audio_bytes

    async def _end_stream(self, port: SerialPort, code: bytes, limit: float) -> None:
        pending = _Pending(code.hex())
        self._pending = pending
        try:
            await self._write(port, code)
            with trio.move_on_after(limit):
                await pending.done.wait()
        finally:
            if self._pending is pending:
                self._pending = None
        if pending.lost:
            raise ModemUnavailable(f"{self.name}: the modem was lost at the end of a voice stream")
        if pending.final is None:
            self._lose(f"no answer to the end of a voice stream within {limit:g} s")
            raise ModemUnavailable(f"{self.name}: no answer to the end of a voice stream within {limit:g} s")

    async def _abort_quietly(self, port: SerialPort, code: bytes) -> None:
        """Best effort after a cancellation or error: stop the stream, wait briefly for its answer."""
        pending = _Pending(code.hex())
        self._pending = pending
        try:
            with trio.move_on_after(self.command_timeout):
                await port.write(code)
                await pending.done.wait()
        except (PortGone, PortError):
            pass
        finally:
            if self._pending is pending:
                self._pending = None
            if self._decoder.streaming and pending.final is None:
                self._decoder.stop_stream()

    async def record(self, seconds: float | None = None, *, until: Callable[[object], bool] | None = None,
                     max_seconds: float = 600.0) -> Recording:
        """``AT+VRX`` for ``seconds`` (exactly ``round(seconds × rate)`` samples), or until ``until(event)``
        is true for a line event (cut at that event's place in the stream), at most ``max_seconds``.
        The events are still delivered on :attr:`events`."""
        if seconds is None and until is None:
            raise ValueError("record needs seconds, until, or both")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        return await self._receive("AT+VRX", None, seconds, until, max_seconds)

    async def duplex(self, audio: np.ndarray | bytes, *, seconds: float | None = None,
                     until: Callable[[object], bool] | None = None) -> Recording:
        """Full duplex ``AT+VTR`` (Conexant 100498E §5.2.2.3): play ``audio`` while recording, for
        ``seconds`` (default: the length of ``audio``) or until ``until(event)``."""
        caps = self.capabilities
        if caps is not None and not caps.duplex:
            raise VoiceModemError(f"{self.name}: the modem does not support full-duplex AT+VTR")
        fmt = self.format
        if fmt is None:
            raise ModemUnavailable(f"{self.name}: the voice modem is {self.state}")
        data = self._audio_bytes(audio, fmt)
        length = seconds if seconds is not None else len(data) / fmt.bytes_per_second
        return await self._receive("AT+VTR", data, length, until, length + self.command_timeout)

    async def _receive(self, command: str, play: bytes | None, seconds: float | None,
                       until: Callable[[object], bool] | None, max_seconds: float) -> Recording:
        port = self._require_ready()
        fmt, caps = self.format, self.capabilities
        assert fmt is not None and caps is not None
        stop_code = END_DUPLEX if play is not None else caps.profile.abort_receive
        limit = None if seconds is None else round(seconds * fmt.rate) * fmt.bytes_per_sample
        async with self._lock:
            self._require_ready()
            sink = _Sink(limit, until)
            self._sink = sink
            try:
                await self._exchange(command, connect=True)
                # From CONNECT on, the next result line (after <DLE><ETX>, or a Conexant's bare OK) ends it.
                end = _Pending(f"end of {command}")
                self._pending = end
                async with trio.open_nursery() as nursery:
                    if play is not None:
                        nursery.start_soon(self._send_paced, port, fmt, play, trio.current_time())
                    with trio.move_on_after(max_seconds):
                        await sink.stop.wait()
                    nursery.cancel_scope.cancel()
                stopped_by = sink.stopped_by or "timeout"
                if not sink.ended:
                    sink.abort_at = len(sink.data)
                    await self._write(port, stop_code)
                with trio.move_on_after(self.command_timeout):
                    await end.done.wait()
                if end.lost:
                    raise ModemUnavailable(f"{self.name}: the modem was lost during {command}")
                if end.final is None:
                    self._lose(f"no result after stopping {command} within {self.command_timeout:g} s")
                    raise ModemUnavailable(f"{self.name}: no result after stopping {command}; reconnecting")
            except BaseException:
                if self._decoder.streaming:
                    with trio.CancelScope(shield=True):
                        await self._abort_quietly(port, stop_code)
                raise
            finally:
                self._sink = None
                self._pending = None
                self._decoder.stop_stream()
        stop = sink.stop_at if sink.stop_at is not None else len(sink.data)
        if stopped_by == "timeout" and sink.abort_at is not None:
            stop = sink.abort_at
        return Recording(bytes(sink.data[:stop]), fmt, stopped_by, sink.event, self._decoder.audio_bytes)
