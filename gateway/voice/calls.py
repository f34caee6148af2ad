"""The call object (``CallControl`` in architecture.md): what the IVR and the REST API drive.

A :class:`Call` lives from the first ring (or the first dialled digit) to the hang-up. Key presses reach it
through :meth:`Call.key_pressed` (the service feeds the line's digits); the ones nobody waits for are kept
(type-ahead) and consumed by the next :meth:`collect` or an interruptible :meth:`play`. Every operation raises
:class:`CallEnded` once the call is over, so an IVR task unwinds at the first await after the caller left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import trio

from gateway.events import format_time, utc_now
from gateway.voice.devices import DeviceUnavailable, LineDevice
from gateway.voice.line import Caller
from gateway.voice.media import PromptCache, RecordingInfo, RecordingWriter, beep, frame_is_loud


class CallEnded(Exception):
    """Raised by call operations once the call is over; ``cause`` says why it ended."""

    def __init__(self, call_id: str, cause: str | None) -> None:
        super().__init__(f"call {call_id} has ended ({cause or 'unknown cause'})")
        self.cause = cause


class CallError(RuntimeError):
    """An operation the call cannot do now (no headset on this line, device refused); message says why."""


class CallControl(Protocol):
    id: str
    direction: Literal["in", "out"]
    line: str
    caller: dict | None
    vars: dict[str, Any]
    ended: trio.Event

    async def play(self, prompts: Sequence[Path], *, interrupt_keys: str = "") -> str | None: ...
    async def collect(
        self,
        *,
        max_digits: int,
        min_digits: int = 1,
        terminator: str | None = "#",
        first_timeout: float,
        inter_timeout: float,
    ) -> str: ...
    async def record(
        self,
        path: Path,
        *,
        max_seconds: float,
        silence_end_s: float | None,
        beep: bool = True,
        finish_keys: str = "#",
    ) -> float: ...
    async def bridge(self, position: str) -> None: ...
    async def unbridge(self) -> None: ...
    async def hangup(self, cause: str = "normal") -> None: ...


@dataclass
class Attempt:
    number: str
    e164: str | None
    result: str | None = None  # answered | busy | congestion | no_answer | no_dialtone | failed
    started_at: str = field(default_factory=lambda: format_time(utc_now()))
    ended_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "e164": self.e164,
            "result": self.result,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class Call:
    """One call on one line. ``on_hangup(call, cause)`` is the service's clean-up (hook, records, events)."""

    def __init__(
        self,
        call_id: str,
        direction: Literal["in", "out"],
        line: str,
        device: LineDevice,
        prompts: PromptCache,
        *,
        caller: Caller | None = None,
        on_hangup: Callable[[Call, str], Awaitable[None]] | None = None,
        headset_position: str | None = None,
    ) -> None:
        self.id = call_id
        self.direction = direction
        self.line = line
        self.device = device
        self.prompts = prompts
        self._caller = caller
        self.vars: dict[str, Any] = {}
        self.ended = trio.Event()
        self.answered = trio.Event()
        self.state = "ringing" if direction == "in" else "dialling"
        self.cause: str | None = None
        self.rings = 0
        self.answered_by: str | None = None
        self.answer_confidence: float | None = None
        self.attempts: list[Attempt] = []
        self.lookup: dict[str, Any] | None = None
        self.started_at = format_time(utc_now())
        self.answered_at: str | None = None
        self.ended_at: str | None = None
        self.duration_s: float | None = None
        self.suppress_dtmf_events = False  # set by the IVR on sensitive nodes: call.dtmf digits redacted
        self.bridged_to: str | None = None
        self.headset_position = headset_position
        self._on_hangup = on_hangup
        self._digits: list[str] = []
        self._digit_arrived = trio.Event()
        self._answered_clock: float | None = None
        self.playing = 0  # playbacks in progress: the far end is listening, its silence is expected

    # -- identity
    @property
    def caller(self) -> dict | None:
        return self._caller.to_json() if self._caller is not None else None

    def set_caller(self, caller: Caller | None) -> None:
        self._caller = caller

    @property
    def number(self) -> str | None:
        """The other party: the caller's number, or the number that answered (else the last dialled)."""
        if self.direction == "in":
            return self._caller.raw if self._caller else None
        answered = [a for a in self.attempts if a.result == "answered"]
        chosen = answered[-1] if answered else (self.attempts[-1] if self.attempts else None)
        return chosen.number if chosen else None

    @property
    def number_e164(self) -> str | None:
        if self.direction == "in":
            return self._caller.e164 if self._caller else None
        for attempt in reversed(self.attempts):
            if attempt.number == self.number:
                return attempt.e164
        return None

    def mark_answered(self, by: str, confidence: float | None = None) -> None:
        self.state = "connected"
        self.answered_by, self.answer_confidence = by, confidence
        self.answered_at = format_time(utc_now())
        self._answered_clock = trio.current_time()
        self.answered.set()

    def mark_ended(self, cause: str) -> bool:
        """Record the end once; returns False when the call had already ended."""
        if self.ended.is_set():
            return False
        self.state, self.cause = "ended", cause
        self.ended_at = format_time(utc_now())
        if self._answered_clock is not None:
            self.duration_s = round(trio.current_time() - self._answered_clock, 3)
        else:
            self.duration_s = 0.0
        self.ended.set()
        self._digit_arrived.set()
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "line": self.line,
            "state": self.state,
            "caller": self.caller,
            "number": self.number,
            "number_e164": self.number_e164,
            "rings": self.rings,
            "answered_by": self.answered_by,
            "answer_confidence": self.answer_confidence,
            "bridged_to": self.bridged_to,
            "cause": self.cause,
            "lookup": self.lookup,
            "attempts": [a.to_json() for a in self.attempts],
            "started_at": self.started_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
        }

    # -- digits
    def key_pressed(self, digit: str) -> None:
        self._digits.append(digit)
        self._digit_arrived.set()
        self._digit_arrived = trio.Event()

    def _check(self) -> None:
        if self.ended.is_set():
            raise CallEnded(self.id, self.cause)

    async def _next_digit(self, keys: str | None = None, *, skip: int = 0) -> str:
        """The first buffered digit (in ``keys`` when given: others stay buffered), waiting for one.
        ``skip``: the first ``skip`` buffered digits are not looked at (pressed before anyone asked)."""
        while True:
            self._check()
            for i, d in enumerate(self._digits):
                if i >= skip and (keys is None or d in keys):
                    return self._digits.pop(i)
            await self._digit_arrived.wait()

    # -- CallControl
    async def play(self, prompts: Sequence[Path], *, interrupt_keys: str = "") -> str | None:
        self._check()
        for prompt in prompts:
            samples = await self.prompts.load(prompt)
            key = await self.play_samples(samples, interrupt_keys=interrupt_keys)
            if key is not None:
                return key
        return None

    async def play_samples(self, samples: np.ndarray, *, interrupt_keys: str = "") -> str | None:
        """Play audio already at the line format; returns the interrupting key, if any."""
        self._check()
        pressed: list[str] = []
        self.playing += 1
        try:
            await self._play_until(samples, interrupt_keys, pressed)
        finally:
            self.playing -= 1
        self._check()
        return pressed[0] if pressed else None

    async def _play_until(self, samples: np.ndarray, interrupt_keys: str, pressed: list[str]) -> None:
        async with trio.open_nursery() as nursery:

            async def playing() -> None:
                try:
                    await self.device.play(samples)
                except DeviceUnavailable:
                    pass  # the line events end the call; CallEnded is raised below
                nursery.cancel_scope.cancel()

            async def keys() -> None:
                try:
                    pressed.append(await self._next_digit(interrupt_keys))
                except CallEnded:
                    pass
                nursery.cancel_scope.cancel()

            async def end() -> None:
                await self.ended.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(playing)
            nursery.start_soon(end)
            if interrupt_keys:
                nursery.start_soon(keys)

    async def collect(
        self,
        *,
        max_digits: int,
        min_digits: int = 1,
        terminator: str | None = "#",
        first_timeout: float,
        inter_timeout: float,
    ) -> str:
        """Digits until ``max_digits``, the terminator (excluded) or a timeout. ``min_digits`` is the IVR's
        to judge: what was typed is returned as it is, possibly ""."""
        got = ""
        timeout = first_timeout
        while len(got) < max_digits:
            with trio.move_on_after(timeout):
                digit = await self._next_digit()
                if terminator and digit == terminator:
                    return got
                got += digit
                timeout = inter_timeout
                continue
            self._check()
            break
        return got

    async def record(
        self,
        path: Path,
        *,
        max_seconds: float,
        silence_end_s: float | None,
        beep: bool = True,
        finish_keys: str = "#",
    ) -> float:
        """Record what the caller says (after a beep) until ``max_seconds``, ``silence_end_s`` of silence,
        a key of ``finish_keys`` or the caller hangs up; returns the seconds recorded (trailing silence
        included). The finishing key is consumed (it is not type-ahead for the next ``collect``); keys
        pressed before the recording started never finish it and stay buffered, as do other keys."""
        self._check()
        if beep:
            await self.play_samples(_BEEP)
        info = RecordingInfo(self.id, self.line, self.direction, self.number, format_time(utc_now()))
        writer = RecordingWriter(Path(path), info)
        tap = self.device.audio()
        typed_before = len(self._digits)
        quiet = 0
        try:
            with trio.move_on_after(max_seconds):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(cancel_when, self.ended, nursery.cancel_scope)
                    if finish_keys:
                        scope = nursery.cancel_scope
                        nursery.start_soon(self._finish_on_key, finish_keys, typed_before, scope)
                    async for frame in tap:
                        await writer.write(frame)
                        quiet = 0 if frame_is_loud(frame) else quiet + frame.size
                        if silence_end_s is not None and quiet >= silence_end_s * 8000:
                            break
                    nursery.cancel_scope.cancel()
        finally:
            tap.close()
            await writer.close()
        return writer.seconds

    async def _finish_on_key(self, keys: str, skip: int, scope: trio.CancelScope) -> None:
        try:
            await self._next_digit(keys, skip=skip)
        except CallEnded:
            pass
        scope.cancel()

    async def bridge(self, position: str) -> None:
        self._check()
        if not self.device.has_headset or position != self.headset_position:
            where = self.headset_position or "none"
            raise CallError(
                f"line {self.line} can only be bridged to its own headset position ({where}), "
                f"not {position!r}"
            )
        try:
            await self.device.route("headset")
        except DeviceUnavailable as exc:
            raise CallError(str(exc)) from None
        self.bridged_to = position

    async def unbridge(self) -> None:
        self._check()
        if self.bridged_to is None:
            return
        try:
            await self.device.route("line")
        except DeviceUnavailable as exc:
            raise CallError(str(exc)) from None
        self.bridged_to = None

    async def send_dtmf(self, digits: str) -> None:
        self._check()
        try:
            await self.device.send_dtmf(digits)
        except DeviceUnavailable as exc:
            raise CallError(str(exc)) from None

    async def hangup(self, cause: str = "normal") -> None:
        if self.ended.is_set():
            return
        if self._on_hangup is not None:
            await self._on_hangup(self, cause)
        else:
            self.mark_ended(cause)


async def cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


_BEEP = beep()
