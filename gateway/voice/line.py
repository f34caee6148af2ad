"""The state of one analogue line, as a pure machine: line events and our own commands in, notices out.

No I/O and no clock inside (like h11): every call passes ``now`` (seconds on any monotonic clock) and
:meth:`LineMachine.deadline` says when :meth:`LineMachine.tick` must be called next.

States: ``idle`` → ``ringing`` (rings, or caller ID before the first ring) → ``offhook`` (we seized the line)
→ ``dialling`` → ``connected``; ``down`` while the device is absent.

Incoming caller ID is announced (:class:`Announce`) as early as the line gives it: at once when it comes
before the first ring (ETSI EN 300 659-1 §5.2 line reversal + V.23, DTMF, NTT Number Display), after the
first ring for Bell 202 (GR-30-CORE §3: data between the first and second ring). When no caller ID came
before the second ring the caller is announced without one. Ringing that stops for ``ring_gap_s`` without
an answer is a missed call. Japan's CAR bursts never reach here as rings: the device layer answers them
silently (NTT "Number Display" interface spec, telephony.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.dsp.events import CallerId
from drivers.voice.events import (
    CallerIdText,
    DeviceLost,
    DeviceReady,
    DtmfDigit,
    Handset,
    LoopBreak,
    PolarityReversal,
    Ring,
    ToneEvent,
)
from gateway.numbers import DEFAULT_REGION, to_e164_or_none

STATES = ("idle", "ringing", "offhook", "dialling", "connected", "down")
_HANGUP_TONES = {"busy": "far_end_busy", "reorder": "far_end_busy", "dialtone": "far_end_dialtone"}


@dataclass(frozen=True)
class Caller:
    raw: str | None
    e164: str | None
    name: str | None
    reason_absent: str | None  # "P" private, "O" unavailable, "C" public phone, "S" congestion
    standard: str | None  # bell202 | v23_etsi | v23_ntt | dtmf | modem (decoded by a voice modem)

    def to_json(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "e164": self.e164,
            "name": self.name,
            "reason_absent": self.reason_absent,
            "standard": self.standard,
        }


def caller_from_event(event: CallerId | CallerIdText, region: str = DEFAULT_REGION) -> Caller:
    standard = event.standard if isinstance(event, CallerId) else "modem"
    number = event.number or None
    return Caller(number, to_e164_or_none(number, region), event.name or None, event.reason_absent, standard)


# ------------------------------------------------------------------------------------------------ notices
@dataclass(frozen=True)
class StateChanged:
    old: str
    new: str


@dataclass(frozen=True)
class Announce:
    """A new incoming call is known to the CRM: ``caller`` is None when the line gave no caller ID."""

    caller: Caller | None
    rings: int


@dataclass(frozen=True)
class CallerUpdated:
    """Caller ID arrived after the call was announced without one."""

    caller: Caller


@dataclass(frozen=True)
class RingCounted:
    rings: int


@dataclass(frozen=True)
class RingingStopped:
    """The caller gave up (or another phone answered) before we answered: a missed call."""

    rings: int
    answered_elsewhere: bool = False


@dataclass(frozen=True)
class Digit:
    digit: str


@dataclass(frozen=True)
class ToneHeard:
    """A call-progress tone, loop or polarity signal while dialling (the dialer interprets it)."""

    signal: str  # a ToneEvent name, "polarity_reversal" or "loop_break"


@dataclass(frozen=True)
class FarEndGone:
    cause: str  # far_end_busy | far_end_dialtone | loop_break | polarity


@dataclass(frozen=True)
class Waiting:
    """Caller ID of a second caller during a call (call waiting): reported, the call goes on."""

    caller: Caller


@dataclass(frozen=True)
class DeviceGone:
    reason: str


@dataclass(frozen=True)
class DeviceBack:
    profile: str


Notice = (
    StateChanged
    | Announce
    | CallerUpdated
    | RingCounted
    | RingingStopped
    | Digit
    | ToneHeard
    | FarEndGone
    | Waiting
    | DeviceGone
    | DeviceBack
)


class LineMachine:
    """``ring_gap_s``: no ring for this long ends the ringing (longest cadence gap: 4 s, CN/US/ETSI, plus a
    margin). ``polarity_guard_s``: a reversal this soon after the answer is answer supervision, not a clear.
    """

    def __init__(
        self,
        name: str,
        *,
        region: str = DEFAULT_REGION,
        ring_gap_s: float = 6.5,
        polarity_guard_s: float = 1.0,
        present: bool = False,
    ) -> None:
        self.name = name
        self.region = region
        self.ring_gap_s = ring_gap_s
        self.polarity_guard_s = polarity_guard_s
        self.state = "idle" if present else "down"
        self.rings = 0
        self.caller: Caller | None = None
        self.announced = False
        self._ring_deadline: float | None = None
        self._connected_at = 0.0
        self.held = False  # reserved for the dialler between outbound attempts (see hold())
        self._released_while_held = False
        self.held_ring_quiet_at: float | None = None  # when ringing heard while held counts as over

    # -- time
    def deadline(self) -> float | None:
        return self._ring_deadline if self.state == "ringing" else None

    def tick(self, now: float) -> list[Notice]:
        if self.state == "ringing" and self._ring_deadline is not None and now >= self._ring_deadline:
            return [RingingStopped(self.rings), *self._to("idle")]
        return []

    # -- line events
    def feed(self, event: object, now: float) -> list[Notice]:
        if isinstance(event, DeviceLost):
            return [DeviceGone(event.reason), *self._to("down")]
        if isinstance(event, DeviceReady):
            return [DeviceBack(event.profile), *self._to("idle")] if self.state == "down" else []
        if self.state == "down":
            return []
        if self.held and isinstance(event, Ring | CallerId | CallerIdText):
            # Reserved for the dialler: a ring is not a new call (going off hook now would answer it, so
            # the dialler waits for ``held_ring_quiet_at`` before it seizes the line again).
            self.held_ring_quiet_at = now + self.ring_gap_s
            return []
        if isinstance(event, Ring):
            return self._ring(now)
        if isinstance(event, CallerId | CallerIdText):
            return self._caller_id(caller_from_event(event, self.region), now)
        if isinstance(event, Handset) and event.state == "up" and self.state == "ringing":
            return [RingingStopped(self.rings, answered_elsewhere=True), *self._to("idle")]
        if self.state in ("offhook", "dialling"):
            return self._progress(event)
        if self.state == "connected":
            return self._in_call(event, now)
        return []

    def _ring(self, now: float) -> list[Notice]:
        if self.state not in ("idle", "ringing"):
            return []  # a ring while we hold the line: the exchange's business, not a new call
        out: list[Notice] = self._to("ringing")
        self.rings += 1
        self._ring_deadline = now + self.ring_gap_s
        out.append(RingCounted(self.rings))
        if not self.announced and (self.caller is not None or self.rings >= 2):
            out.append(self._announce())
        return out

    def _caller_id(self, caller: Caller, now: float) -> list[Notice]:
        if self.state == "connected":
            return [Waiting(caller)]
        if self.state not in ("idle", "ringing"):
            return []
        out: list[Notice] = self._to("ringing")
        if self._ring_deadline is None or self.rings == 0:
            self._ring_deadline = now + self.ring_gap_s  # caller ID first: rings must follow
        if self.announced:
            if self.caller is None:
                self.caller = caller
                out.append(CallerUpdated(caller))
            return out
        self.caller = caller
        out.append(self._announce())
        return out

    def _announce(self) -> Announce:
        self.announced = True
        return Announce(self.caller, self.rings)

    def _progress(self, event: object) -> list[Notice]:
        if isinstance(event, ToneEvent):
            return [ToneHeard(event.tone)]
        if isinstance(event, PolarityReversal):
            return [ToneHeard("polarity_reversal")]
        if isinstance(event, LoopBreak):
            return [ToneHeard("loop_break")]
        return []

    def _in_call(self, event: object, now: float) -> list[Notice]:
        if isinstance(event, DtmfDigit):
            return [Digit(event.digit)]
        if isinstance(event, ToneEvent) and event.tone in _HANGUP_TONES:
            return [FarEndGone(_HANGUP_TONES[event.tone])]
        if isinstance(event, LoopBreak):
            return [FarEndGone("loop_break")]
        if isinstance(event, PolarityReversal) and now - self._connected_at >= self.polarity_guard_s:
            return [FarEndGone("polarity")]
        return []

    # -- our own commands
    def seized(self) -> list[Notice]:
        """We went off hook (to answer, or to dial)."""
        self._released_while_held = False
        return self._to("offhook")

    def hold(self) -> list[Notice]:
        """Reserve the line for an outbound sequence: until :meth:`unhold`, rings and caller ID are not
        taken as a new call and going on hook between attempts does not make the line ``idle``."""
        self.held, self._released_while_held, self.held_ring_quiet_at = True, False, None
        return []

    def unhold(self) -> list[Notice]:
        """The outbound sequence is over (answered, given up or cancelled)."""
        was_released = self.held and self._released_while_held
        self.held, self._released_while_held, self.held_ring_quiet_at = False, False, None
        return self.released() if was_released else []

    def dialling(self) -> list[Notice]:
        return self._to("dialling")

    def connected(self, now: float) -> list[Notice]:
        self._connected_at = now
        return self._to("connected")

    def released(self) -> list[Notice]:
        """We went on hook: the line is free again (unless the device is gone, or it is held)."""
        if self.held:
            self._released_while_held = True
            return []
        return [] if self.state == "down" else self._to("idle")

    def _to(self, new: str) -> list[Notice]:
        old, self.state = self.state, new
        if new in ("idle", "down"):
            self.rings, self.caller, self.announced, self._ring_deadline = 0, None, False, None
        return [StateChanged(old, new)] if old != new else []
