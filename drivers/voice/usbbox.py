"""USB voice box driver: line status and audio from a box, DSP on the audio, line events to the gateway.

Layers
======
* :class:`LineMonitor` (sans-IO, no clock): status reports and audio in, events and hook commands out.
  Its time is the box's sample clock (audio received, plus audio lost in sequence gaps), so caller-ID
  handshakes and cadences are judged on line time, not on when the host got round to reading.
* :class:`UsbVoiceBox` (trio): finds the box with pyusb (``backend=`` for tests), runs every blocking
  pyusb call in a thread: writes one at a time under a ``trio.Lock`` in ``trio.to_thread.run_sync``, and
  beside them a reader task per input stream whose reads go through a thread of their own
  (:class:`drivers.voice.read_pump.ReadPump`); and hot-plug: a failed transfer ends the session with
  :class:`DeviceLost`, the box is looked for again by vendor/product id (and serial) at once when the
  kernel reports a USB device arriving (a
  ``drivers.hotplug.DeviceWatch``: pyusb itself has no hot-plug callbacks), else on a bounded backoff, and
  :class:`DeviceReady` says it is back.

Profile interface (how a vendor box is added)
=============================================
A *profile* knows one family of boxes; the driver knows none.  It is any object with::

    name: str                                   # "hcrm-open-box", "qnv-cc301", ...
    def matches(self, vendor_id: int, product_id: int) -> bool
    def open(self, device) -> ProfileSession    # blocking: set configuration, claim, find endpoints

and the session it returns has::

    streams: tuple[str, ...]                    # independent inputs, one reader task each
    def read(self, stream: str) -> bytes        # blocking, one transfer; raise usb.core.USBError
    def write(self, data: bytes) -> None        # blocking, one transfer
    def parse(self, stream: str, data: bytes) -> list[StatusReport | AudioIn | AudioLost]   # pure
    def encode(self, command: Command) -> bytes | None     # pure; None = the box cannot do it
    def encode_audio(self, pcm: np.ndarray) -> bytes | None
    def close(self) -> None
    can_shift_phase: bool                       # optional: the box takes FramePhase (moves its frames)

``parse`` turns the box's own bytes into the three driver inputs below, so a HID box (status in
interrupt reports on one stream, audio on another) needs a profile, never a new driver.  A
``usb.core.USBTimeoutError`` from ``read`` means "nothing yet"; any other ``USBError`` means the device
is gone.  :class:`OpenBoxProfile` is the profile of ``docs/usb-box-protocol.md``.
"""

from __future__ import annotations

import errno
import functools
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
import trio
import usb.core
import usb.util

from drivers.dsp import events as dsp
from drivers.dsp.pipeline import LineAnalyzer
from drivers.hotplug import DeviceWatch
from drivers.voice.events import (
    DeviceLost,
    DeviceReady,
    DtmfDigit,
    Handset,
    LoopBreak,
    Overrun,
    PolarityReversal,
    Ring,
    ToneEvent,
)
from drivers.voice.read_pump import ReadPump
from drivers.voice.shared_dsp import SharedLine, SharedLineDsp
from drivers.voice.usbbox_protocol import (
    Command,
    Dial,
    Flash,
    FramePhase,
    Hook,
    InboundDecoder,
    InFrame,
    LineStatus,
    OutboundEncoder,
    Resync,
    RingHandset,
    Route,
    SequenceGap,
)

__all__ = [
    "AudioIn",
    "AudioLost",
    "BoxUnavailable",
    "DeviceReady",
    "LineAudio",
    "LineMonitor",
    "OpenBoxProfile",
    "Profile",
    "ProfileSession",
    "StatusReport",
    "UsbVoiceBox",
]

SAMPLE_RATE = 8000
_TONE_NAMES = {"busy": "busy", "congestion": "reorder", "ringback": "ringback", "dialtone": "dialtone",
               "silence": "silence", "voice": "voice"}


# ------------------------------------------------------------------------------ profile inputs
@dataclass(frozen=True, slots=True)
class StatusReport:
    status: LineStatus


@dataclass(frozen=True, slots=True)
class AudioIn:
    samples: np.ndarray  # float32, full scale 1.0, at the box's sample rate


@dataclass(frozen=True, slots=True)
class AudioLost:
    samples: int  # how much line time went missing (sequence gap)


BoxInput = StatusReport | AudioIn | AudioLost


# ------------------------------------------------------------------------------ driver events


@dataclass(frozen=True, slots=True)
class LineAudio:
    t: float  # line time of the first sample
    samples: np.ndarray


class BoxUnavailable(RuntimeError):
    """A command was given while the box is absent or it failed on the wire; the message says which
    (``errno``: the USB error's, when the write failed)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


# ------------------------------------------------------------------------------ sans-IO line logic
class LineMonitor:
    """Status and audio of one line -> line events (and the hook commands of the NTT handshake).

    * Ring: one :class:`Ring` per ring burst.  With ``ntt_handshake`` (Japan) a burst is first
      classified: NTT Number Display alerts with CAR, 0.5 s on / 0.5 s off, and the terminal must not
      ring on it (telephony.md §3); normal ringing (IR) is 1 s on.  A burst still on after
      ``car_max_s`` is IR (reported then); a shorter one is CAR: close the loop silently (primary
      response), take the V.23 caller ID, open the loop (reception complete), then the exchange rings.
    * Caller ID of every standard at once (Bell 202, ETSI V.23, NTT V.23, DTMF), from the DSP.
    * DTMF digits and call-progress tones only while the box is off hook and not dialling or in the
      handshake (on hook they are caller-ID digits or nothing the call logic needs).
    """

    def __init__(
        self,
        *,
        tones: str = "jp",
        cid: str | None = "auto",
        ntt_handshake: bool | None = None,
        car_max_s: float = 0.75,
        ntt_cid_wait_s: float = 5.0,
        sample_rate: int = SAMPLE_RATE,
        analyse: bool = True,
    ) -> None:
        # analyse=False: the DSP runs elsewhere (a SharedLineDsp) and audio comes with its events.
        self.analyzer = LineAnalyzer(tones=tones, cid=cid, sample_rate=sample_rate) if analyse else None
        self.ntt_handshake = tones == "jp" if ntt_handshake is None else ntt_handshake
        self.car_max_s = car_max_s
        self.ntt_cid_wait_s = ntt_cid_wait_s  # Murata NCU_ND.C waits 5 s for the V.23 carrier
        self.sample_rate = sample_rate
        self.t = 0.0
        self._status = LineStatus()
        self._ring_start: float | None = None
        self._ring_end: float | None = None  # line time the last ring burst stopped
        self._ring_reported = False
        self._handshake_until: float | None = None
        self._own_hook = False  # True while the monitor holds the loop closed for the handshake
        # The hook state the monitor last asked for, until a status report shows the box in it: the driver
        # writes the command beside the reads, so a frame or two may still show the old state.
        self._hook_asked: bool | None = None

    def hook_commanded(self, off_hook: bool) -> None:
        """The driver sent a hook command of its own (the API's answer or hang-up): the line is judged by
        it, not by the handshake's last one, once the box reports it."""
        self._hook_asked = off_hook

    @property
    def in_handshake(self) -> bool:
        return self._handshake_until is not None

    # Ring cadences pause up to 4 s (GR-506-CORE, NTT); FSK caller ID comes between the first two rings.
    IDLE_AFTER_RING_S = 6.0

    @property
    def idle(self) -> bool:
        """On hook, not ringing for ``IDLE_AFTER_RING_S``, no handshake: nothing on the line a DSP restart
        could cut into (the shared DSP may move an idle line to another bank, see shared_dsp.py)."""
        st = self._status
        recent_ring = self._ring_end is not None and self.t - self._ring_end < self.IDLE_AFTER_RING_S
        return not (st.off_hook or st.ring or st.dialing or self.in_handshake or recent_ring)

    @staticmethod
    def audio_of(item: BoxInput) -> np.ndarray | None:
        """The samples the DSP must analyse for ``item`` (zeros for a gap: the detectors' clock stays on
        line time), or None for a status report."""
        if isinstance(item, AudioIn):
            return np.asarray(item.samples, dtype=np.float32)
        if isinstance(item, AudioLost):
            return np.zeros(item.samples, dtype=np.float32)
        return None

    def feed(self, item: BoxInput, events: list | None = None) -> list[Any]:
        """``events``: what the DSP found in ``audio_of(item)`` when it ran elsewhere (``analyse=False``)."""
        if isinstance(item, StatusReport):
            return self._on_status(item.status)
        if isinstance(item, AudioIn):
            return self._on_audio(self.audio_of(item), events)
        if isinstance(item, AudioLost):
            out: list[Any] = [Overrun()]
            if item.samples:
                out.extend(self._on_audio(self.audio_of(item), events, report=False))
            return out
        raise TypeError(f"not a box input: {item!r}")

    def _on_status(self, st: LineStatus) -> list[Any]:
        old, self._status = self._status, st
        out: list[Any] = []
        if self._hook_asked is not None and st.off_hook == self._hook_asked:
            self._hook_asked = None
        if old.ring and not st.ring:
            self._ring_end = self.t
        if st.ring and not old.ring:
            self._ring_start, self._ring_reported = self.t, False
            if not self.ntt_handshake or self.in_handshake:
                self._ring_reported = True
                out.append(Ring())
        elif st.ring and not self._ring_reported and self.t - self._ring_start > self.car_max_s:
            self._ring_reported = True
            out.append(Ring())  # long burst: normal ringing (IR), not CAR
        elif old.ring and not st.ring and not self._ring_reported and not st.off_hook:
            # CAR: primary response (一次応答), silent off hook, then wait for the V.23 frame.
            self._handshake_until = self.t + self.ntt_cid_wait_s
            self._own_hook = True
            self._hook_asked = True
            out.append(Hook(True))
        if st.polarity_reversed != old.polarity_reversed:
            out.append(PolarityReversal())
        if st.handset_off_hook != old.handset_off_hook:
            out.append(Handset("up" if st.handset_off_hook else "down", "local"))
        if (old.loop_current and not st.loop_current and st.off_hook and old.off_hook
                and not st.dialing and not self.in_handshake and self._hook_asked is None):
            out.append(LoopBreak())
        return out

    def _on_audio(self, x: np.ndarray, events: list | None, *, report: bool = True) -> list[Any]:
        if events is None:
            if self.analyzer is None:
                raise ValueError("this LineMonitor does not analyse audio: pass the DSP's events")
            events = self.analyzer.feed(x) if x.size else []
        self.t += x.size / self.sample_rate
        out: list[Any] = []
        st = self._status
        # Not while the box has yet to act on the handshake's last hook command (on hook after it).
        in_call = st.off_hook and not st.dialing and not self.in_handshake and self._hook_asked is None
        for ev in events:
            if isinstance(ev, dsp.CallerId):
                out.append(ev)
                if self.in_handshake:
                    out.extend(self._release())
            elif isinstance(ev, dsp.DtmfDigit):
                if in_call and report:
                    out.append(DtmfDigit(ev.digit))
            elif isinstance(ev, dsp.Tone):
                if in_call and report and ev.name in _TONE_NAMES:
                    out.append(ToneEvent(_TONE_NAMES[ev.name]))
        if self._handshake_until is not None and self.t >= self._handshake_until:
            out.extend(self._release())  # no V.23 frame came: give the line back, let it ring
        return out

    def _release(self) -> list[Any]:
        """Reception complete (受信完了): open the loop; the exchange then sends normal ringing."""
        self._handshake_until = None
        if self._own_hook:
            self._own_hook = False
            self._hook_asked = False
            return [Hook(False)]
        return []


# ------------------------------------------------------------------------------ the open box profile
class OpenBoxProfile:
    """``docs/usb-box-protocol.md``: bulk IN 0x81 line frames, bulk OUT 0x02 audio and commands."""

    name = "hcrm-open-box"
    ids = ((0x1D50, 0x6120),)
    ep_in, ep_out = 0x81, 0x02
    read_size = 4096
    timeout_ms = 200

    def matches(self, vendor_id: int, product_id: int) -> bool:
        return (vendor_id, product_id) in self.ids

    def open(self, device) -> _OpenBoxSession:
        device.set_configuration()
        usb.util.claim_interface(device, 0)
        return _OpenBoxSession(self, device)


class _OpenBoxSession:
    streams = ("line",)
    frame_samples = 160  # 20 ms frames at 8 kHz: what a sequence gap costs in line time
    can_shift_phase = True  # FRAME_PHASE: the shared DSP lines up the boxes' frames (usb-box-protocol.md)

    def __init__(self, profile: OpenBoxProfile, device) -> None:
        self.profile = profile
        self.device = device
        self.decoder = InboundDecoder()
        self.encoder = OutboundEncoder()
        self.notes: list[str] = []  # resynchronisations, for diagnostics

    def read(self, stream: str) -> bytes:
        return bytes(self.device.read(self.profile.ep_in, self.profile.read_size, self.profile.timeout_ms))

    def write(self, data: bytes) -> None:
        self.device.write(self.profile.ep_out, data, self.profile.timeout_ms)

    def parse(self, stream: str, data: bytes) -> list[BoxInput]:
        out: list[BoxInput] = []
        gap = False
        for ev in self.decoder.feed(data):
            if isinstance(ev, InFrame):
                if ev.status.overrun and not gap:  # flagged, but no gap to measure (first frame)
                    out.append(AudioLost(0))
                out.append(StatusReport(ev.status))
                out.append(AudioIn(ev.samples))
                gap = False
            elif isinstance(ev, SequenceGap):
                out.append(AudioLost(ev.missing * self.frame_samples))
                gap = True
            elif isinstance(ev, Resync):
                self.notes.append(f"skipped {ev.skipped} bytes: {ev.reason}")
        return out

    def encode(self, command: Command) -> bytes | None:
        return self.encoder.command(command)

    def encode_audio(self, pcm: np.ndarray) -> bytes | None:
        return self.encoder.audio(pcm)

    def close(self) -> None:
        usb.util.dispose_resources(self.device)


class ProfileSession(Protocol):
    streams: tuple[str, ...]

    def read(self, stream: str) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def parse(self, stream: str, data: bytes) -> list[BoxInput]: ...

    def encode(self, command: Command) -> bytes | None: ...

    def encode_audio(self, pcm: np.ndarray) -> bytes | None: ...

    def close(self) -> None: ...


class Profile(Protocol):
    name: str

    def matches(self, vendor_id: int, product_id: int) -> bool: ...

    def open(self, device) -> ProfileSession: ...


# ------------------------------------------------------------------------------ trio driver
class _DeviceGone(Exception):
    pass


class UsbVoiceBox:
    """One USB voice box on one analogue line. ``events`` carries :mod:`drivers.voice.events` line events,
    :class:`drivers.dsp.events.CallerId`, :class:`DeviceReady`; ``audio`` (when ``audio_queue`` > 0)
    carries :class:`LineAudio` (dropped, and counted in ``audio_dropped``, when nobody reads it)."""

    def __init__(
        self,
        name: str,
        *,
        profile: Profile | None = None,
        serial: str | None = None,
        backend=None,
        tones: str = "jp",
        cid: str | None = "auto",
        ntt_handshake: bool | None = None,
        reconnect_backoff: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
        event_queue: int = 1000,
        audio_queue: int = 0,
        dsp: SharedLineDsp | None = None,
        device_watch: DeviceWatch | None = None,
    ) -> None:
        self.name = name
        # device_watch: retry at once when the system reports a USB device arriving (drivers/hotplug.py).
        self.device_watch = device_watch
        # dsp: analyse this line in the process's shared batched DSP instead of a LineAnalyzer of its own.
        self.dsp = dsp
        # Registered now, so that the shared DSP's first cohort waits for every box of the process.
        self._dsp_line: SharedLine | None = dsp.line(tones=tones, cid=cid) if dsp is not None else None
        self.profile = profile or OpenBoxProfile()
        self.serial = serial
        self.backend = backend
        self._monitor_options = dict(tones=tones, cid=cid, ntt_handshake=ntt_handshake, analyse=dsp is None)
        self.monitor = LineMonitor(**self._monitor_options)
        self.reconnect_backoff = reconnect_backoff
        # Writes go one at a time (commands and audio in order); a read runs beside them (another endpoint:
        # libusb takes transfers from several threads), so a hook command or a prompt chunk never waits for
        # the 20 ms read in flight. The writes' threads are the box's own, not tokens of trio's default
        # limiter shared with the rest of the process (each reader has a thread of its own: ReadPump).
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(4)
        # The handshake's hook commands (see _reader): decided by the input in hand (_deciding), held for the
        # next analysed frame (_held), then queued for the command writer (_handshake); a command sent
        # through the API writes all of them out first.
        self._deciding: list[Command] = []
        self._held: list[Command] = []
        self._handshake: deque[Command] = deque()
        self._send_event, self.events = trio.open_memory_channel(event_queue)
        self._send_audio, self.audio = trio.open_memory_channel(audio_queue) if audio_queue else (None, None)
        self.audio_dropped = 0
        # A box that stalled FRAME_PHASE (firmware without it) is not asked again, even after replugging.
        self.frame_phase_refused = False
        self.state = "absent"  # absent | ready
        self._session = None
        self._log = structlog.get_logger(__name__).bind(box=name)

    async def _wait_retry(self, delay: float) -> None:
        if self.device_watch is None:
            await trio.sleep(delay)
        else:
            await self.device_watch.wait_retry(delay)

    # -- discovery
    def _find(self):
        def match(dev) -> bool:
            if not self.profile.matches(dev.idVendor, dev.idProduct):
                return False
            if self.serial is None:
                return True
            try:
                return dev.serial_number == self.serial
            except (usb.core.USBError, ValueError):
                return False

        return usb.core.find(backend=self.backend, custom_match=match)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Own the box until cancelled: find, open, read; on loss report it and look again."""
        started = False
        attempt = 0
        while True:
            session = None
            try:
                device = await trio.to_thread.run_sync(self._find)
                if device is not None:
                    session = await trio.to_thread.run_sync(self.profile.open, device)
            except usb.core.USBError as exc:
                self._log.warning("usb_box_open_failed", error=str(exc))
            if session is None:
                if not started:
                    started = True
                    task_status.started()
                await self._wait_retry(self.reconnect_backoff[min(attempt, len(self.reconnect_backoff) - 1)])
                attempt += 1
                continue
            attempt = 0
            try:
                reason = await self._serve(session, device, started, task_status)
            finally:
                started = True
                self._session, self.state = None, "absent"
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._close_quietly, session)
            self._log.warning("usb_box_lost", reason=reason)
            await self._send_event.send(DeviceLost(reason))

    async def _serve(self, session, device, started: bool, task_status) -> str:
        self.monitor = LineMonitor(**self._monitor_options)  # line state is unknown after (re)plugging
        if self.dsp is not None and self._dsp_line is None:  # replugged: a fresh channel
            opts = self._monitor_options
            self._dsp_line = self.dsp.line(tones=opts["tones"], cid=opts["cid"])
        if self._dsp_line is not None:
            self._dsp_line.can_shift_phase = (getattr(session, "can_shift_phase", False)
                                              and not self.frame_phase_refused)
        self._session, self.state = session, "ready"
        serial = await trio.to_thread.run_sync(self._serial_of, device)
        self._log.info("usb_box_ready", serial=serial, profile=self.profile.name)
        await self._send_event.send(DeviceReady(serial, self.profile.name))
        if not started:
            task_status.started()
        lost: list[str] = []
        # The monitor's own hook commands (NTT handshake) leave through a task of their own, in order.
        self._deciding.clear()
        self._held.clear()
        self._handshake.clear()
        commands, to_write = trio.open_memory_channel[None](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._command_writer, session, to_write, lost, nursery.cancel_scope)
                for stream in session.streams:
                    nursery.start_soon(self._reader, session, stream, commands, lost, nursery.cancel_scope)
        finally:
            if self._dsp_line is not None:
                self._dsp_line.close()
                self._dsp_line = None
        return lost[0] if lost else "reader stopped"

    @staticmethod
    def _serial_of(device) -> str | None:
        try:
            return device.serial_number
        except (usb.core.USBError, ValueError):
            return None

    @staticmethod
    def _close_quietly(session) -> None:
        try:
            session.close()
        except usb.core.USBError:
            pass

    async def _reader(self, session, stream: str, commands: trio.MemorySendChannel[None], lost: list[str],
                      scope: trio.CancelScope) -> None:
        """Read, analyse, report. The hook commands of the NTT handshake are not written from here but by
        the command writer, and only once this line's next audio has been analysed (``held``): the
        exchange gives the terminal seconds for them, while the next frame's analysis is what a caller ID
        that ended in the last few ms of a frame waits for. Measured (issue 5's screen pop, 32 lines taking
        their caller ID at once): the reader waiting for the release's write (a thread round trip, 15-35 ms
        then) held this line's next frame back, and with a shared DSP the next batch of its whole cohort;
        written at once beside the reads, the 22-odd writes and the boxes' work on them still landed in
        that batch's 20 ms. A hook command from the API (``send``) writes the held ones first, so the
        order in which they were decided is the order on the wire."""
        # Reads go through a thread of the box's own (read_pump.py: 32 boxes' frames of one instant reach
        # their tasks sooner, at less CPU, than through a thread-pool round trip each).
        pump = ReadPump(functools.partial(session.read, stream), name=f"usb-read {self.name}")
        try:
            await self._read_loop(session, stream, pump, commands, lost, scope)
        finally:
            pump.close()

    async def _read_loop(self, session, stream: str, pump: ReadPump[bytes],
                         commands: trio.MemorySendChannel[None], lost: list[str],
                         scope: trio.CancelScope) -> None:
        while True:
            try:
                read_started = trio.current_time()  # the shared DSP learns the box's frame clock
                data = await pump.read()
            except usb.core.USBTimeoutError:
                continue
            except usb.core.USBError as exc:
                lost.append(f"USB read failed: {_describe(exc)}")
                scope.cancel()
                return
            for item in session.parse(stream, data):
                await self._handle(session, item, lost, scope, read_started)
                if isinstance(item, StatusReport):  # its hooks go once the audio after it is analysed
                    self._held += self._deciding
                    self._deciding = []
                    continue
                read_started = None  # a second frame of the same read was waiting: no timing
                if self._held:  # decided before this audio, which has been analysed now
                    self._handshake.extend(self._held)
                    commands.send_nowait(None)
                self._held, self._deciding = self._deciding, []

    async def _handle(self, session, item: BoxInput, lost: list[str], scope: trio.CancelScope,
                      read_started: float | None = None) -> None:
        """Analyse and report one input; the hook commands it calls for go to ``_deciding`` (``_reader``)."""
        events = None
        if self._dsp_line is not None:
            x = LineMonitor.audio_of(item)
            if x is not None:
                events = await self._dsp_line.analyse(x, read_started=read_started)
                shift = self._dsp_line.take_phase_shift()
                if shift:  # before the next read: the box's next frame is the longer or shorter one
                    await self._frame_phase(session, shift, lost, scope)
        outputs = self.monitor.feed(item, events)
        if self._dsp_line is not None:
            self._dsp_line.movable = self.monitor.idle
        # Hooks first: whoever an event wakes (a CRM answering the screen pop) must find them decided.
        self._deciding += [out for out in outputs if isinstance(out, Hook)]
        for out in outputs:
            if not isinstance(out, Hook):
                await self._send_event.send(out)
        if isinstance(item, AudioIn) and self._send_audio is not None:
            try:
                self._send_audio.send_nowait(LineAudio(self.monitor.t, item.samples))
            except trio.WouldBlock:
                self.audio_dropped += 1

    async def _command_writer(self, session, wake: trio.MemoryReceiveChannel[None], lost: list[str],
                              scope: trio.CancelScope) -> None:
        async for _ in wake:
            try:
                async with self._lock:
                    await self._write_handshake(session)
            except BoxUnavailable as exc:
                lost.append(str(exc))
                scope.cancel()
                return

    async def _write_handshake(self, session) -> None:
        """Write the queued handshake commands, in order (the caller holds ``_lock``)."""
        while self._handshake:
            await self._write_locked(session, session.encode(self._handshake.popleft()))

    async def _frame_phase(self, session, shift: int, lost: list[str], scope: trio.CancelScope) -> None:
        """FRAME_PHASE is an optimisation: a box that stalls it (EPIPE: firmware without the command) is
        not asked again. A stalled OUT endpoint needs the device reset, so this once it is reopened."""
        data = session.encode(FramePhase(shift))
        if data is None:
            return
        try:
            await self._write(session, data)
        except BoxUnavailable as exc:
            if exc.errno == errno.EPIPE:
                self.frame_phase_refused = True
                self._log.warning("usb_box_frame_phase_refused", error=str(exc))
            lost.append(str(exc))
            scope.cancel()

    async def _write(self, session, data: bytes | None) -> None:
        async with self._lock:
            await self._write_locked(session, data)

    async def _write_locked(self, session, data: bytes | None) -> None:
        if data is None:
            raise BoxUnavailable(f"{self.name}: the {self.profile.name} profile cannot do this")
        try:
            await trio.to_thread.run_sync(session.write, data, limiter=self._limiter)
        except usb.core.USBError as exc:
            raise BoxUnavailable(f"{self.name}: USB write failed: {_describe(exc)}", exc.errno) from None

    # -- commands
    async def send(self, command: Command) -> None:
        """Send one command; raises :class:`BoxUnavailable` when the box is absent or the write fails."""
        session = self._session
        if session is None:
            raise BoxUnavailable(f"{self.name}: the voice box is not connected")
        # The handshake's commands decided before this one go first (see _reader).
        self._handshake.extend(self._held + self._deciding)
        self._held.clear()
        self._deciding.clear()
        async with self._lock:
            await self._write_handshake(session)
            await self._write_locked(session, session.encode(command))
        if isinstance(command, Hook):
            self.monitor.hook_commanded(command.off_hook)

    async def hook(self, off_hook: bool) -> None:
        await self.send(Hook(off_hook))

    async def flash(self, ms: int = 100) -> None:
        await self.send(Flash(ms))

    async def dial(self, digits: str, *, tone_ms: int = 80, gap_ms: int = 80) -> None:
        await self.send(Dial(digits, tone_ms, gap_ms))

    async def ring_handset(self, on: bool) -> None:
        await self.send(RingHandset(on))

    async def route(self, target: str) -> None:
        await self.send(Route(target))

    async def play(self, samples: np.ndarray, *, chunk: int = 1600) -> None:
        """Queue audio (8 kHz float, full scale 1.0) in the box, ``chunk`` samples per transfer."""
        session = self._session
        if session is None:
            raise BoxUnavailable(f"{self.name}: the voice box is not connected")
        x = np.asarray(samples, dtype=np.float32)
        for start in range(0, x.size, chunk):
            await self._write(session, session.encode_audio(x[start : start + chunk]))


def _describe(exc: usb.core.USBError) -> str:
    if exc.errno == errno.ENODEV:
        return f"device disconnected ({exc.strerror})"
    return f"[errno {exc.errno}] {exc.strerror}"
