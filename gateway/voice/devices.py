"""One :class:`LineDevice` shape for every voice box (architecture.md "Voice contracts").

* :class:`UsbBoxLine` wraps :class:`drivers.voice.usbbox.UsbVoiceBox`: full duplex, continuous 20 ms audio
  frames, an operator headset port. Its line clock is the box's sample clock (the audio it delivers), so
  playback is paced on line time: a chunk is written when it is at most ``playback_lead`` ahead of what the
  box has played, and ``play`` returns when the line has had time to play the last sample.
* :class:`ModemLine` wraps :class:`drivers.voice.v253_modem.VoiceModem`: half duplex (V.253 ``+VTX`` and
  ``+VRX`` take turns on one command channel), so while a prompt plays no audio is received; the modem
  decodes caller ID and DTMF itself. It has no headset port.

Errors of either driver become :class:`DeviceUnavailable` with the driver's message.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import contextmanager
from typing import Literal, Protocol

import numpy as np
import structlog
import trio

from drivers.voice.usbbox import BoxUnavailable, UsbVoiceBox
from drivers.voice.v253_modem import VoiceModem, VoiceModemError

RATE = 8000
log = structlog.get_logger("voice.devices")


class DeviceUnavailable(RuntimeError):
    """The box is absent, or it refused or failed a command; the message names the line and why."""


class LineDevice(Protocol):
    name: str
    events: trio.MemoryReceiveChannel
    has_headset: bool

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None: ...
    async def off_hook(self) -> None: ...
    async def on_hook(self) -> None: ...
    async def flash(self) -> None: ...
    async def dial(self, digits: str) -> None: ...
    async def send_dtmf(self, digits: str) -> None: ...
    async def play(self, samples: np.ndarray) -> None: ...
    def audio(self) -> AsyncIterator[np.ndarray]: ...
    async def route(self, target: Literal["line", "headset"]) -> None: ...


@contextmanager
def _translated(name: str):
    try:
        yield
    except (BoxUnavailable, VoiceModemError) as exc:
        raise DeviceUnavailable(str(exc)) from None
    except ValueError as exc:  # a dial string the device cannot send
        raise DeviceUnavailable(f"{name}: {exc}") from None


class AudioTap:
    """Received audio frames for one reader (async iterator); frames are dropped, and counted, when the
    reader falls ``size`` frames behind, so a slow consumer never holds up the line."""

    def __init__(self, taps: set[AudioTap], size: int = 250) -> None:
        self._taps = taps
        self._send, self._receive = trio.open_memory_channel[np.ndarray](size)
        self.dropped = 0
        taps.add(self)

    def offer(self, frame: np.ndarray) -> None:
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        self._taps.discard(self)
        self._send.close()

    def __aiter__(self) -> AudioTap:
        return self

    async def __anext__(self) -> np.ndarray:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class UsbBoxLine:
    has_headset = True

    def __init__(self, box: UsbVoiceBox, *, playback_lead: float = 0.2, chunk_s: float = 0.1) -> None:
        if box.audio is None:
            raise ValueError(f"{box.name}: create the UsbVoiceBox with audio_queue > 0 to use it as a line")
        self.box = box
        self.name = box.name
        self.events = box.events
        self.playback_lead = playback_lead
        self.chunk = int(chunk_s * RATE)
        self.line_time = 0.0  # seconds of line audio the box has delivered
        self._frame_seen = trio.Event()
        self._taps: set[AudioTap] = set()
        self._off_hook = False

    @property
    def present(self) -> bool:
        return self.box.state == "ready"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.box.run)
            nursery.start_soon(self._pump)
            task_status.started()

    async def _pump(self) -> None:
        async for chunk in self.box.audio:
            self.line_time = chunk.t + chunk.samples.size / RATE
            self._frame_seen.set()
            self._frame_seen = trio.Event()
            if self._off_hook:
                for tap in list(self._taps):
                    tap.offer(chunk.samples)

    async def _line_time_reaches(self, t: float) -> None:
        while self.line_time < t:
            await self._frame_seen.wait()

    async def off_hook(self) -> None:
        with _translated(self.name):
            await self.box.hook(True)
        self._off_hook = True

    async def on_hook(self) -> None:
        self._off_hook = False
        with _translated(self.name):
            await self.box.hook(False)

    async def flash(self) -> None:
        with _translated(self.name):
            await self.box.flash()

    async def dial(self, digits: str) -> None:
        with _translated(self.name):
            await self.box.dial(digits)

    async def send_dtmf(self, digits: str) -> None:
        with _translated(self.name):
            await self.box.dial(digits)  # the box's DTMF generator: same tones off hook

    async def play(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32)
        start = self.line_time
        with _translated(self.name):
            for k in range(0, x.size, self.chunk):
                await self._line_time_reaches(start + k / RATE - self.playback_lead)
                await self.box.play(x[k : k + self.chunk])
        # The box has no "flush" command: a cancelled play leaves at most playback_lead queued in it.
        await self._line_time_reaches(start + x.size / RATE)

    def audio(self) -> AudioTap:
        return AudioTap(self._taps)

    async def route(self, target: Literal["line", "headset"]) -> None:
        with _translated(self.name):
            await self.box.route(target)


class ModemLine:
    has_headset = False

    def __init__(self, modem: VoiceModem, *, chunk_s: float = 0.2) -> None:
        self.modem = modem
        self.name = modem.name
        self.events = modem.events
        self.chunk_s = chunk_s
        self._taps: set[AudioTap] = set()
        self._off_hook = False
        self._wanted = trio.Event()

    @property
    def present(self) -> bool:
        return self.modem.state == "ready"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.modem.run)
            nursery.start_soon(self._receiver)
            task_status.started()

    async def _receiver(self) -> None:
        """``+VRX`` in ``chunk_s`` pieces while someone listens and the line is off hook; between pieces the
        modem's lock lets a waiting ``play`` or command in (trio.Lock is fair)."""
        while True:
            await self._wanted.wait()
            while self._off_hook and self._taps:
                try:
                    recording = await self.modem.record(self.chunk_s)
                except VoiceModemError as exc:
                    log.warning("modem_receive_failed", line=self.name, error=str(exc))
                    break  # lost or refused: the line events say what happened
                frame = recording.samples().astype(np.float32)
                for tap in list(self._taps):
                    tap.offer(frame)
            self._wanted = trio.Event()

    def _want(self) -> None:
        if self._off_hook and self._taps:
            self._wanted.set()

    async def off_hook(self) -> None:
        with _translated(self.name):
            await self.modem.off_hook()
        self._off_hook = True
        self._want()

    async def on_hook(self) -> None:
        self._off_hook = False
        with _translated(self.name):
            await self.modem.on_hook()

    async def flash(self) -> None:
        with _translated(self.name):
            await self.modem.dial("!")  # V.250 §6.3.1.x: "!" in a dial string is a hook flash

    async def dial(self, digits: str) -> None:
        with _translated(self.name):
            await self.modem.dial(digits)
        self._off_hook = True

    async def send_dtmf(self, digits: str) -> None:
        with _translated(self.name):
            await self.modem.send_dtmf(digits)

    async def play(self, samples: np.ndarray) -> None:
        with _translated(self.name):
            await self.modem.play(np.asarray(samples, dtype=np.float32))

    def audio(self) -> AudioTap:
        tap = AudioTap(self._taps, size=max(10, math.ceil(5.0 / self.chunk_s)))
        self._want()
        return tap

    async def route(self, target: Literal["line", "headset"]) -> None:
        if target != "line":
            raise DeviceUnavailable(f"{self.name}: a voice modem has no operator headset port")
