"""Line events that every voice driver reports (V.253 modems now, USB voice boxes later).

One vocabulary for the gateway's line/call logic, whatever the device: a V.253 modem says ``<DLE>b``,
a USB box sets a status bit, a DSP detector hears the cadence; all three become ``ToneEvent("busy")``.
Every event is a frozen dataclass with a ``type`` tag and ``to_json()`` (the journal/API shape), like
the detector events in :mod:`drivers.dsp.events`.

Stream-level events of one protocol (audio bytes, end of stream) live with that protocol's codec
(:mod:`drivers.voice.v253`); only what the call logic reasons about is here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

__all__ = [
    "CallerIdText",
    "DeviceLost",
    "DtmfDigit",
    "DtmfToneEnd",
    "DtmfToneStart",
    "Handset",
    "LineEvent",
    "LoopBreak",
    "Overrun",
    "PolarityReversal",
    "Ring",
    "TONES",
    "ToneEvent",
    "Underrun",
    "UnknownDleCode",
]

ToneName = Literal[
    "busy",
    "dialtone",
    "ringback",
    "silence",  # no voice energy since the stream began (V.253 "presumed hangup")
    "quiet",  # voice energy, then silence (V.253 "presumed end of message")
    "fax_calling",  # T.30 CNG 1100 Hz
    "data_calling",  # V.25 calling tone 1300 Hz
    "answer_tone",  # fax or data answer 2100 Hz
    "data_answer",  # Bell 2225 Hz
    "sit",  # special information tone
    "bong",
    "call_waiting",
    "voice",
    "tdd",
    "reorder",
]
TONES: frozenset[str] = frozenset(ToneName.__args__)  # type: ignore[attr-defined]


class _Json:
    __slots__ = ()

    def to_json(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class Ring(_Json):
    """One ring burst (``RING`` text or ``<DLE>R``)."""

    type: str = field(default="ring", init=False)


@dataclass(frozen=True, slots=True)
class CallerIdText(_Json):
    """Caller ID as a modem prints it (``+VCID=1`` / ``#CID=1`` lines), assembled into one event.

    ``datetime`` is "MM-DDTHH:MM" (no year on the line) when DATE and TIME are valid; ``date``/``time``
    keep what the modem printed. ``reason_absent``: "P" private, "O" unavailable (GR-30-CORE), also
    "C" public phone / "S" congestion (NTT). ``message`` holds the bytes of a ``MESG`` line (hex on the
    wire) and ``notes`` says what could not be understood, so nothing is silently dropped."""

    number: str | None = None
    name: str | None = None
    reason_absent: str | None = None
    name_absent: str | None = None
    datetime: str | None = None
    date: str | None = None
    time: str | None = None
    dialled_number: str | None = None
    message: bytes | None = None
    lines: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    type: str = field(default="callerid_text", init=False)

    def to_json(self) -> dict:
        out = asdict(self)
        out["message"] = self.message.hex().upper() if self.message is not None else None
        out["lines"] = list(self.lines)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True, slots=True)
class DtmfDigit(_Json):
    """One key press (reported once, however often the firmware repeats the code while it is held)."""

    digit: str  # 0-9 * # A-D
    type: str = field(default="dtmf", init=False)


@dataclass(frozen=True, slots=True)
class DtmfToneStart(_Json):
    """A DTMF tone began (V.253 ``<DLE>/``, sent before the digit code when DTMF edges are on)."""

    type: str = field(default="dtmf_start", init=False)


@dataclass(frozen=True, slots=True)
class DtmfToneEnd(_Json):
    """The DTMF tone stopped (V.253 ``<DLE>~``); ``digit`` is the press it ends, if one was seen."""

    digit: str | None
    type: str = field(default="dtmf_end", init=False)


@dataclass(frozen=True, slots=True)
class ToneEvent(_Json):
    tone: str  # one of TONES

    type: str = field(default="tone", init=False)

    def __post_init__(self) -> None:
        if self.tone not in TONES:
            raise ValueError(f"unknown tone {self.tone!r}; expected one of {', '.join(sorted(TONES))}")


@dataclass(frozen=True, slots=True)
class Handset(_Json):
    """A telephone on the same line went off hook ("up") or back on hook ("down").

    ``phone`` = "local" (the set plugged into the modem's PHONE jack, V.253 ``h``/``H``) or
    "extension" (a parallel set elsewhere on the line, ``p``/``P``)."""

    state: Literal["up", "down"]
    phone: Literal["local", "extension"] = "local"
    type: str = field(default="handset", init=False)


@dataclass(frozen=True, slots=True)
class LoopBreak(_Json):
    """Loop current interrupted: often the far end hung up (V.253 ``<DLE>l``)."""

    type: str = field(default="loop_break", init=False)


@dataclass(frozen=True, slots=True)
class PolarityReversal(_Json):
    """Loop current polarity reversed: answer or hang-up supervision (V.253 ``<DLE>L``)."""

    type: str = field(default="polarity_reversal", init=False)


@dataclass(frozen=True, slots=True)
class Underrun(_Json):
    """The device ran out of audio to play before the end of stream (V.253 ``<DLE>u``)."""

    type: str = field(default="underrun", init=False)


@dataclass(frozen=True, slots=True)
class Overrun(_Json):
    """The device dropped received audio because the host did not read it in time (``<DLE>o``)."""

    type: str = field(default="overrun", init=False)


@dataclass(frozen=True, slots=True)
class DeviceLost(_Json):
    """The device disappeared (unplugged, port closed, no answer); ``reason`` says how it was noticed."""

    reason: str
    type: str = field(default="device_lost", init=False)


@dataclass(frozen=True, slots=True)
class DeviceReady(_Json):
    """The device was found and opened (at start, or again after it was lost); ``profile`` names the box
    profile or the voice-modem family."""

    serial: str | None
    profile: str
    type: str = field(default="device_ready", init=False)


@dataclass(frozen=True, slots=True)
class UnknownDleCode(_Json):
    """A ``<DLE>`` code this codec does not know: reported, never fatal."""

    code: int  # the byte after DLE
    type: str = field(default="unknown_dle_code", init=False)

    def to_json(self) -> dict:
        char = chr(self.code) if 0x20 <= self.code < 0x7F else None
        return {"code": self.code, "char": char, "type": self.type}


LineEvent = (
    Ring
    | CallerIdText
    | DtmfDigit
    | DtmfToneStart
    | DtmfToneEnd
    | ToneEvent
    | Handset
    | LoopBreak
    | PolarityReversal
    | Underrun
    | Overrun
    | DeviceLost
    | UnknownDleCode
)
