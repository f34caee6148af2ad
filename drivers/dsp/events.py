"""Events that the DSP detectors return from ``feed()``.

Every detector is a small streaming class in the spandsp shape: construct it with its parameters,
``feed(samples)`` any number of 8 kHz samples (float, full scale = 1.0), get back the events completed
inside that frame. ``t`` is seconds from the first sample the detector was fed (its own sample clock),
so the events of a file or a line are reproducible and independent of wall time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    t: float  # onset, seconds from the detector's first sample
    digit: str  # one of 0-9 * # A-D
    duration_ms: int
    type: str = field(default="dtmf", init=False)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CallerId:
    t: float  # time the last byte of the message (or the DTMF end digit) was received
    standard: str  # bell202 | v23_etsi | v23_ntt | dtmf
    number: str | None
    name: str | None = None
    reason_absent: str | None = None  # "P" private, "O" unavailable, "C" public phone, "S" congestion
    name_absent: str | None = None
    datetime: str | None = None  # "MM-DDTHH:MM" as sent (no year on the line)
    message_type: int | None = None
    message_waiting: bool | None = None
    dialled_number: str | None = None
    number_type: int | None = None  # NTT 0x21 type/plan, when present
    checksum_ok: bool = True
    number_plan: int | None = None  # NTT 0x21 numbering plan (0 unknown, 1 E.164, 8 domestic, 9 private)
    redirecting_number: str | None = None  # DTMF A..D<number>..C, ETSI parameter 0x1A
    type: str = field(default="callerid", init=False)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Tone:
    t: float  # when the cadence was confirmed
    name: str  # busy | ringback | congestion | dialtone | silence | voice
    confidence: float  # 0..1
    type: str = field(default="tone", init=False)

    def to_json(self) -> dict:
        return asdict(self)
