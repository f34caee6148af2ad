"""Test doubles for the IVR runtime: a scripted call (CallControl) on the trio clock, an event recorder.

``FakeCall(presses=[(t, keys), ...])``: the caller presses ``keys`` at trio time ``t`` (seconds; one key
after the other, 0.2 s apart). Every prompt file plays ``prompt_seconds``. Keys pressed while nothing reads
them stay buffered (type-ahead), as the CallControl contract says. ``hangup_at``: the far end hangs up then.
No background task: waiting for a key sleeps until that key's time, so MockClock(autojump) runs it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gateway.ivr.runtime import CallEnded

KEY_GAP = 0.2


@dataclass
class FakeCall:
    presses: list[tuple[float, str]] = field(default_factory=list)
    prompt_seconds: float = 1.0
    hangup_at: float = math.inf
    record_seconds: float = 7.5
    id: str = "call-1"
    direction: str = "in"
    line: str = "line-1"
    caller: dict | None = field(default_factory=lambda: {"raw": "0312345678", "e164": "+81312345678"})
    vars: dict[str, Any] = field(default_factory=dict)
    ended: trio.Event = field(default_factory=trio.Event)
    played: list[str] = field(default_factory=list)  # "<parent dir>/<file stem>" of every file played
    log: list[tuple] = field(default_factory=list)  # (time, operation, details)
    suppress_dtmf_events: bool = False
    sensitive_seen: list[bool] = field(default_factory=list)  # suppress flag at every collect

    def __post_init__(self) -> None:
        self._keys: list[tuple[float, str]] = []
        for t, keys in self.presses:
            self._keys += [(t + i * KEY_GAP, k) for i, k in enumerate(keys)]
        self._keys.sort()

    # --- script helpers
    def _now(self) -> float:
        return trio.current_time()

    def _check_alive(self) -> None:
        if self._now() >= self.hangup_at or self.ended.is_set():
            self.ended.set()
            raise CallEnded(f"call {self.id} ended")

    def _buffered(self) -> str | None:
        return self._keys[0][1] if self._keys and self._keys[0][0] <= self._now() else None

    def _next_key_time(self) -> float:
        return self._keys[0][0] if self._keys else math.inf

    async def _sleep_until(self, deadline: float) -> None:
        deadline = min(deadline, self.hangup_at)
        if deadline is math.inf:
            await trio.sleep_forever()
        await trio.sleep_until(max(deadline, self._now()))
        self._check_alive()

    # --- CallControl
    async def play(self, prompts, *, interrupt_keys: str = "") -> str | None:
        for path in prompts:
            self._check_alive()
            p = Path(path)
            self.played.append(f"{p.parent.name}/{p.stem}")
            self.log.append((self._now(), "play", self.played[-1]))
            end = self._now() + self.prompt_seconds
            while True:
                key = self._buffered()
                if key is not None and key in interrupt_keys:
                    self._keys.pop(0)
                    return key
                wake = end if key is not None else min(end, self._next_key_time())
                await self._sleep_until(wake)
                if self._now() >= end:
                    break
        return None

    async def collect(self, *, max_digits, min_digits=1, terminator="#", first_timeout, inter_timeout) -> str:
        self._check_alive()
        self.sensitive_seen.append(self.suppress_dtmf_events)
        self.log.append((self._now(), "collect", (max_digits, terminator, first_timeout, inter_timeout)))
        digits = ""
        deadline = self._now() + first_timeout
        while True:
            key = self._buffered()
            if key is not None:
                self._keys.pop(0)
                if key == terminator:
                    return digits
                digits += key
                if len(digits) >= max_digits:
                    return digits
                deadline = self._now() + inter_timeout
                continue
            if self._next_key_time() > deadline:
                await self._sleep_until(deadline)
                return digits
            await self._sleep_until(self._next_key_time())

    async def record(self, path, *, max_seconds, silence_end_s, beep=True) -> float:
        self._check_alive()
        self.log.append((self._now(), "record", (str(path), max_seconds, silence_end_s, beep)))
        seconds = min(self.record_seconds, max_seconds)
        await self._sleep_until(self._now() + seconds)
        await trio.Path(path).write_bytes(b"RIFF")
        return seconds

    async def bridge(self, position: str) -> None:
        self._check_alive()
        self.log.append((self._now(), "bridge", position))

    async def unbridge(self) -> None:
        self.log.append((self._now(), "unbridge", None))

    async def hangup(self, cause: str = "normal") -> None:
        self.log.append((self._now(), "hangup", cause))
        self.ended.set()


@dataclass
class EventRecorder:
    events: list[tuple[str, dict]] = field(default_factory=list)

    async def publish(self, type_: str, data: dict) -> None:
        self.events.append((type_, data))

    def of(self, type_: str) -> list[dict]:
        return [d for t, d in self.events if t == type_]

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


@dataclass
class AnswerRecorder:
    answers: list = field(default_factory=list)

    async def save_answer(self, answer) -> None:
        self.answers.append(answer)
