"""Caller ID on analogue lines: FSK message framing and parsing (GR-30-CORE, ETSI EN 300 659, NTT),
DTMF caller ID (EN 300 659-1 Annex B), and the ``CallerIdDetector`` that runs them all in parallel.

Layers, each usable alone:

* ``decode_class_frame(bytes)`` / ``decode_ntt_frame(bytes)``: one complete frame as sent on the line
  -> ``CallerId`` (or ``None`` for a valid frame that carries no caller ID), ``CallerIdFrameError`` on
  a malformed frame. Also the entry point for modems that hand over raw frames (V.253 ``+VCID=2``).
* ``ClassFrameAssembler`` / ``NttFrameAssembler``: delimit frames in the ``UartByte`` stream of
  ``drivers.dsp.fsk.FskReceiver``.
* ``DtmfCallerIdParser``: pure state machine over DTMF digit events.
* ``CallerIdDetector(mode)``: audio in, ``CallerId`` events out; ``CallerIdDetectorBank`` for many lines.

Integrity policy: a frame with a checksum, CRC or parity error is dropped and counted in ``stats``;
with ``lenient=True`` it is emitted with ``checksum_ok=False`` instead (diagnostics, poor lines). A
frame whose structure does not parse is always dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from drivers.dsp.charsets import decode_name
from drivers.dsp.events import CallerId, DtmfDigit
from drivers.dsp.fsk import (
    BELL202,
    V23,
    CarrierLost,
    FskGate,
    FskReceiver,
    FskReceiverBank,
    FskSpec,
    UartByte,
)
from drivers.dsp.goertzel import channel_rows

__all__ = [
    "CallerIdDetector",
    "CallerIdDetectorBank",
    "CallerIdFrameError",
    "ClassFrameAssembler",
    "DtmfCallerIdParser",
    "NttFrameAssembler",
    "RawFrame",
    "crc16_kermit",
    "decode_class_frame",
    "decode_ntt_frame",
    "parse_dtmf_callerid",
]


class CallerIdFrameError(ValueError):
    """A caller-ID frame that cannot be accepted; the message says what is wrong and where.

    ``kind`` is ``"integrity"`` (checksum, CRC, parity: the line corrupted it) or ``"format"``."""

    def __init__(self, message: str, kind: str = "format") -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------- shared fields
def _datetime(value: bytes) -> str | None:
    """MMDDHHMM (GR-30-CORE SDMF / parameter 0x01; EN 300 659-3 date and time parameter) -> "MM-DDTHH:MM"."""
    if len(value) != 8 or not value.isdigit():
        return None
    s = value.decode("ascii")
    month, day, hour, minute = int(s[0:2]), int(s[2:4]), int(s[4:6]), int(s[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59):
        return None
    return f"{s[0:2]}-{s[2:4]}T{s[4:6]}:{s[6:8]}"


def _text(value: bytes) -> str:
    return value.decode("ascii", errors="replace")


def _tlv(body: bytes, where: str) -> list[tuple[int, bytes]]:
    """Parameter type, length, value ... covering ``body`` exactly."""
    params: list[tuple[int, bytes]] = []
    i = 0
    while i < len(body):
        if i + 2 > len(body):
            raise CallerIdFrameError(f"{where}: parameter header cut short at byte {i} of {len(body)}")
        code, length = body[i], body[i + 1]
        if i + 2 + length > len(body):
            raise CallerIdFrameError(
                f"{where}: parameter 0x{code:02X} at byte {i} claims {length} bytes, "
                f"only {len(body) - i - 2} remain"
            )
        params.append((code, body[i + 2 : i + 2 + length]))
        i += 2 + length
    return params


# --------------------------------------------------------------------------------- CLASS / ETSI
# GR-30-CORE message types (spandsp adsi.h CLASS_*): 0x04 SDMF caller ID, 0x06 SDMF message waiting,
# 0x80 MDMF caller ID, 0x82 MDMF message waiting. EN 300 659-3 adds 0x86 advice of charge and
# 0x89 short message service: framed and checked, but not caller ID.
CLASS_TYPES = frozenset({0x04, 0x06, 0x80, 0x82})
ETSI_TYPES = frozenset({0x04, 0x80, 0x82, 0x86, 0x89})
_REASONS = {"O", "P"}  # GR-30-CORE / EN 300 659-3 reason for absence: 'O' unavailable, 'P' private


def decode_class_frame(
    frame: bytes,
    *,
    standard: str = "bell202",
    t: float = 0.0,
    lenient: bool = False,
    charset: str = "auto",
) -> CallerId | None:
    """Decode ``type length data... checksum`` (GR-30-CORE; EN 300 659-3 presentation layer).
    Returns ``None`` for a valid message that is not about a call or message waiting (0x86 charge,
    0x89 SMS, unknown types)."""
    if len(frame) < 3:
        raise CallerIdFrameError(f"{len(frame)}-byte frame is shorter than type, length and checksum")
    msg_type, length = frame[0], frame[1]
    if length != len(frame) - 3:
        raise CallerIdFrameError(f"length byte says {length} data bytes, the frame carries {len(frame) - 3}")
    total = sum(frame) & 0xFF
    checksum_ok = total == 0  # two's complement checksum: sum of all bytes = 0 mod 256
    if not checksum_ok and not lenient:
        raise CallerIdFrameError(
            f"checksum error: bytes sum to 0x{total:02X} mod 256, expected 0x00", "integrity"
        )
    body = frame[2:-1]
    common = dict(t=t, standard=standard, message_type=msg_type, checksum_ok=checksum_ok)
    if msg_type == 0x04:  # SDMF caller ID: MMDDHHMM then the number or 'O' / 'P'
        if len(body) < 9:
            raise CallerIdFrameError(f"SDMF body of {len(body)} bytes: needs 8 date digits and a number")
        when, rest = body[:8], body[8:]
        if not when.isdigit():
            raise CallerIdFrameError(f"SDMF date/time {when!r} is not 8 digits")
        text = _text(rest)
        if text in _REASONS:
            return CallerId(number=None, reason_absent=text, datetime=_datetime(when), **common)
        return CallerId(number=text, datetime=_datetime(when), **common)
    if msg_type == 0x06:  # SDMF message waiting: 0x42 x3 on, 0x6F x3 off (GR-30-CORE VMWI)
        if body == b"\x42\x42\x42":
            return CallerId(number=None, message_waiting=True, **common)
        if body == b"\x6f\x6f\x6f":
            return CallerId(number=None, message_waiting=False, **common)
        raise CallerIdFrameError(f"SDMF message-waiting body {body.hex()} is neither 424242 nor 6f6f6f")
    if msg_type in (0x80, 0x82):
        return _mdmf(_tlv(body, f"MDMF 0x{msg_type:02X}"), msg_type, common, charset)
    return None


def _mdmf(params: list[tuple[int, bytes]], msg_type: int, common: dict, charset: str) -> CallerId:
    fields: dict = {"number": None}
    for code, value in params:
        if code == 0x01:
            fields["datetime"] = _datetime(value)
        elif code == 0x02:
            fields["number"] = _text(value)
        elif code == 0x03:
            fields["dialled_number"] = _text(value)
        elif code == 0x04:
            fields["reason_absent"] = _text(value)
        elif code == 0x07:
            fields["name"] = decode_name(value, charset)
        elif code == 0x08:
            fields["name_absent"] = _text(value)
        elif code == 0x0B and len(value) == 1:
            # Visual indicator: 0xFF on, 0x00 off (GR-30-CORE; EN 300 659-3 visual indicator)
            fields["message_waiting"] = value[0] != 0x00
        elif code == 0x1A:  # EN 300 659-3 redirecting number
            fields["redirecting_number"] = _text(value)
    if msg_type == 0x82 and "message_waiting" not in fields:
        raise CallerIdFrameError("MDMF message-waiting message without a visual indicator (0x0B)")
    return CallerId(**fields, **common)


# --------------------------------------------------------------------------------------------- NTT
_DLE, _SOH, _STX, _ETX = 0x10, 0x01, 0x02, 0x03
NTT_CALLER_ID = 0x40  # 発信者番号通知 (caller-number delivery)
NTT_NO_RING_NOTICE = 0x42  # 無鳴動情報通知: not caller ID (Murata NCU_ND.C; FANET T-340)
_NTT_REASONS = {"P", "O", "C", "S"}  # private, unavailable, public phone, congestion


def _kermit_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_KERMIT = _kermit_table()


def crc16_kermit(data: bytes, crc: int = 0) -> int:
    """CRC-16/KERMIT (reflected 0x1021 = 0x8408, init 0, no final XOR); check("123456789") = 0x2189."""
    for b in data:
        crc = (crc >> 8) ^ _KERMIT[(crc ^ b) & 0xFF]
    return crc


def _parity_ok(byte: int) -> bool:
    return bin(byte).count("1") % 2 == 0  # 7 data bits + even parity in bit 7


def decode_ntt_frame(
    frame: bytes, *, t: float = 0.0, lenient: bool = False, charset: str = "jis7"
) -> CallerId | None:
    """Decode ``DLE SOH hdr DLE STX type len params DLE ETX CRClo CRChi`` (NTT 「電話サービスのインタ
    フェース」 第5分冊 number display; spandsp adsi.c, Asterisk callerid_feed_jp). Bytes up to ETX carry
    even parity in bit 7; a DLE inside is doubled; CRC-16/KERMIT over header..ETX as sent. Returns
    ``None`` for valid frames that are not caller ID (type 0x42 no-ring notice, others)."""
    if len(frame) < 11:
        raise CallerIdFrameError(f"{len(frame)}-byte NTT frame is shorter than the 11-byte minimum")
    if (frame[0] & 0x7F, frame[1] & 0x7F) != (_DLE, _SOH):
        raise CallerIdFrameError(f"NTT frame starts {frame[:2].hex()}, expected DLE SOH (90 81)")
    wire = frame[:-2]
    bad = [i for i, b in enumerate(wire) if not _parity_ok(b)]
    crc_ok = crc16_kermit(frame[2:]) == 0  # CRC over header..CRC is zero when intact
    checksum_ok = crc_ok and not bad
    if not checksum_ok and not lenient:
        if bad:
            where = ", ".join(map(str, bad))
            raise CallerIdFrameError(f"parity error in byte(s) {where} of the NTT frame", "integrity")
        got = frame[-2] | frame[-1] << 8
        raise CallerIdFrameError(
            f"CRC error: frame carries 0x{got:04X}, header..ETX gives 0x{crc16_kermit(frame[2:-2]):04X}",
            "integrity",
        )
    plain = bytes(b & 0x7F for b in wire)
    # Unstuff from the header byte: DLE DLE -> DLE, DLE STX / DLE ETX are controls.
    out = bytearray()
    controls: list[tuple[int, int]] = []  # (position in out, control byte)
    i = 2
    while i < len(plain):
        b = plain[i]
        if b == _DLE:
            if i + 1 >= len(plain):
                raise CallerIdFrameError("NTT frame ends in a lone DLE")
            nxt = plain[i + 1]
            if nxt == _DLE:
                out.append(_DLE)
            elif nxt in (_STX, _ETX):
                controls.append((len(out), nxt))
            else:
                raise CallerIdFrameError(f"DLE followed by 0x{nxt:02X} at byte {i + 1}")
            i += 2
        else:
            out.append(b)
            i += 1
    if [c for _, c in controls] != [_STX, _ETX] or controls[0][0] != 1 or controls[1][0] != len(out):
        raise CallerIdFrameError("NTT frame is not header, DLE STX, message, DLE ETX")
    message = bytes(out[1:])
    if len(message) < 2:
        raise CallerIdFrameError("NTT message has no type and length")
    msg_type, length = message[0], message[1]
    body = message[2:]
    stuffed = len(body) + body.count(_DLE)
    # The length counts the message bytes; spandsp's transmitter counts the doubled DLEs too: accept both.
    if length not in (len(body), stuffed):
        raise CallerIdFrameError(f"NTT length byte says {length}, the message carries {len(body)} bytes")
    if msg_type != NTT_CALLER_ID:
        return None
    fields: dict = {"number": None}
    for code, value in _tlv(body, "NTT 0x40"):
        if code == 0x02:
            fields["number"] = _text(value)
        elif code == 0x21 and len(value) >= 1:
            fields["number_type"] = value[0]
            if len(value) >= 2:
                fields["number_plan"] = value[1]
        elif code == 0x04:
            fields["reason_absent"] = _text(value)
        elif code == 0x09:
            fields["dialled_number"] = _text(value)
        elif code == 0x01:
            fields["datetime"] = _datetime(value)
        elif code == 0x07:
            fields["name"] = decode_name(value, charset)
        elif code == 0x08:
            fields["name_absent"] = _text(value)
    return CallerId(t=t, standard="v23_ntt", message_type=msg_type, checksum_ok=checksum_ok, **fields)


# ----------------------------------------------------------------------------- frame assemblers
@dataclass(frozen=True, slots=True)
class RawFrame:
    data: bytes
    end_sample: float  # input sample index where the last byte's stop bit ends


class ClassFrameAssembler:
    """Delimits GR-30-CORE / EN 300 659-3 frames in the byte stream of one FSK receiver.

    A frame starts with a known message type that follows at least ``min_idle_bits`` of mark (the
    "carrier signal"/mark period after the channel seizure: 180 bits, 80 for call waiting, GR-30-CORE;
    spandsp restarts acquisition after > 10 ones) whose tone is within ``max_mark_offset_hz`` of the
    receiver's mark, and ends after type + length + data + checksum bytes. A framing error, a gap of more
    than ``max_gap_bits`` between bytes or a lost carrier abandons it.
    """

    def __init__(
        self,
        types: frozenset[int] = CLASS_TYPES,
        *,
        min_idle_bits: float = 10.0,
        max_gap_bits: float = 20.0,
        max_mark_offset_hz: float = 50.0,
    ) -> None:
        self.types = types
        self.min_idle_bits = min_idle_bits
        self.max_gap_bits = max_gap_bits
        self.max_mark_offset_hz = max_mark_offset_hz
        self.abandoned = 0
        self._buf = bytearray()

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, item: UartByte | CarrierLost) -> RawFrame | None:
        if isinstance(item, CarrierLost):
            self._abandon()
            return None
        if self._buf:
            if not item.framing_ok or item.idle_bits > self.max_gap_bits:
                self._abandon()
            else:
                self._buf.append(item.value)
                if len(self._buf) >= 2 and len(self._buf) == self._buf[1] + 3:
                    frame = bytes(self._buf)
                    self._buf.clear()
                    return RawFrame(frame, item.end_sample)
                return None
        if (
            item.framing_ok
            and item.value in self.types
            and item.idle_bits >= self.min_idle_bits
            and item.mark_offset_hz is not None
            and abs(item.mark_offset_hz) <= self.max_mark_offset_hz
        ):
            self._buf.append(item.value)
        return None

    def _abandon(self) -> None:
        if self._buf:
            self.abandoned += 1
            self._buf.clear()


class NttFrameAssembler:
    """Delimits NTT frames: starts at DLE (0x90 with parity) after a mark run, expects SOH next, ends at
    an unstuffed DLE ETX plus the two CRC bytes. Integrity is judged by ``decode_ntt_frame``."""

    MAX_FRAME = 300

    def __init__(
        self, *, min_idle_bits: float = 10.0, max_gap_bits: float = 20.0, max_mark_offset_hz: float = 50.0
    ) -> None:
        self.min_idle_bits = min_idle_bits
        self.max_gap_bits = max_gap_bits
        self.max_mark_offset_hz = max_mark_offset_hz
        self.abandoned = 0
        self._buf = bytearray()
        self._dle = False
        self._crc_left = -1  # bytes of CRC still to come once DLE ETX was seen

    def reset(self) -> None:
        self._buf.clear()
        self._dle = False
        self._crc_left = -1

    def feed(self, item: UartByte | CarrierLost) -> RawFrame | None:
        if isinstance(item, CarrierLost):
            self._abandon()
            return None
        if not self._buf:
            if (
                item.framing_ok
                and item.value & 0x7F == _DLE
                and item.idle_bits >= self.min_idle_bits
                and item.mark_offset_hz is not None
                and abs(item.mark_offset_hz) <= self.max_mark_offset_hz
            ):
                self._buf.append(item.value)
            return None
        if not item.framing_ok or item.idle_bits > self.max_gap_bits or len(self._buf) >= self.MAX_FRAME:
            self._abandon()
            return None
        self._buf.append(item.value)
        if len(self._buf) == 2:
            if item.value & 0x7F != _SOH:
                self._abandon()
            return None
        if self._crc_left > 0:
            self._crc_left -= 1
            if self._crc_left == 0:
                frame = bytes(self._buf)
                self.reset()
                return RawFrame(frame, item.end_sample)
            return None
        b = item.value & 0x7F
        if self._dle:
            self._dle = False
            if b == _ETX:
                self._crc_left = 2
        elif b == _DLE:
            self._dle = True
        return None

    def _abandon(self) -> None:
        if self._buf:
            self.abandoned += 1
        self.reset()


# ------------------------------------------------------------------------------------ DTMF caller ID
_DTMF_DIGITS = frozenset("0123456789*#ABCD")


def parse_dtmf_callerid(digits: str, *, allow_unmarked: bool = True) -> dict | None:
    """Fields of a complete DTMF caller-ID string (ETSI EN 300 659-1 Annex B; formats as listed in
    spandsp adsi.h), keyed on the format since the variant numbering differs between sources:

    * ``A<number>[D<redirect>][B<code>]C`` (also ``B<code>C``): B00 unavailable 'O', B10 restricted 'P';
    * ``A<number>#``; ``D1#`` restricted 'P', ``D2#`` international 'I', ``D3#`` technical reasons 'O';
    * ``D<number>C`` (Taiwan, Kuwait; a leading D with end C is read as this, not as a lone redirect);
    * ``<number>#`` with no start digit (Denmark, Netherlands).

    Returns ``{"number", "reason_absent", "redirecting_number"}`` or ``None`` if it matches none.
    ``allow_unmarked=False`` refuses the last format (any digits then # would otherwise qualify).
    """
    if len(digits) < 2 or digits[-1] not in "#C" or "*" in digits:
        return None
    body, end = digits[:-1], digits[-1]
    if any(c in "#C" for c in body):
        return None
    fields: dict = {"number": None, "reason_absent": None, "redirecting_number": None}
    first = body[0]
    if end == "C" and first in "AB":
        seen: set[str] = set()
        i = 0
        while i < len(body):
            tag = body[i]
            if tag not in "ABD" or tag in seen:
                return None
            seen.add(tag)
            j = i + 1
            while j < len(body) and body[j].isdigit():
                j += 1
            value = body[i + 1 : j]
            if tag == "A":
                fields["number"] = value or None
            elif tag == "D":
                fields["redirecting_number"] = value or None
            else:
                reason = {"00": "O", "10": "P"}.get(value)
                if reason is None:
                    return None
                fields["reason_absent"] = reason
            i = j
    elif end == "C" and first == "D":
        if not body[1:].isdigit():
            return None
        fields["number"] = body[1:]
    elif end == "#" and first == "A":
        if not body[1:].isdigit():
            return None
        fields["number"] = body[1:]
    elif end == "#" and first == "D":
        reason = {"1": "P", "2": "I", "3": "O"}.get(body[1:])
        if reason is None:
            return None
        fields["reason_absent"] = reason
    elif end == "#" and body.isdigit() and allow_unmarked:
        fields["number"] = body
    else:
        return None
    if fields["number"] is None and fields["reason_absent"] is None:
        return None
    return fields


class DtmfCallerIdParser:
    """DTMF digits -> ``CallerId``: a message opens with A, B, D or a decimal digit and closes with C or
    #. A gap of more than ``inter_digit_timeout`` seconds discards the digits collected so far (spandsp
    uses a 10 s message timeout; digits of one caller ID are sent ~70 ms apart, so 1 s is generous).

    Only run it while the line is idle or ringing: ``<number>#`` has no start marker, so digits keyed in
    a call would parse as caller ID.
    """

    def __init__(
        self, *, inter_digit_timeout: float = 1.0, max_digits: int = 40, allow_unmarked: bool = True
    ) -> None:
        if inter_digit_timeout <= 0:
            raise ValueError(f"inter_digit_timeout must be positive, got {inter_digit_timeout}")
        self.inter_digit_timeout = inter_digit_timeout
        self.allow_unmarked = allow_unmarked
        self.max_digits = max_digits
        self._digits: list[str] = []
        self._last_t = 0.0

    @property
    def pending(self) -> str:
        return "".join(self._digits)

    @property
    def idle(self) -> bool:
        """No partial message held (digits collected after a start digit, waiting for C or #)."""
        return not self._digits

    def idle_at(self, t: float) -> bool:
        """Idle at time ``t``: nothing held, or what is held is older than the inter-digit timeout (the next
        digit or ``feed_time`` discards it)."""
        return not self._digits or t - self._last_t > self.inter_digit_timeout

    def reset(self) -> None:
        self._digits.clear()

    def feed_time(self, t: float) -> None:
        """Let the clock run to ``t``: digits older than the inter-digit timeout are discarded."""
        if self._digits and t - self._last_t > self.inter_digit_timeout:
            self._digits.clear()

    def feed_digit(self, digit: str, t: float) -> CallerId | None:
        """One received digit at time ``t`` (seconds, the end of the tone is a good choice)."""
        if digit not in _DTMF_DIGITS:
            raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
        self.feed_time(t)
        self._last_t = t
        if not self._digits:
            if digit in "ABD" or (digit.isdigit() and self.allow_unmarked):
                self._digits.append(digit)
            return None
        if digit in "#C":
            text = "".join(self._digits) + digit
            self._digits.clear()
            fields = parse_dtmf_callerid(text, allow_unmarked=self.allow_unmarked)
            if fields is None:
                return None
            return CallerId(t=t, standard="dtmf", **fields)
        if digit == "A" or digit == "*":
            self._digits = ["A"] if digit == "A" else []  # a new start marker restarts the message
            return None
        self._digits.append(digit)
        if len(self._digits) > self.max_digits:
            self._digits.clear()
        return None


# ------------------------------------------------------------------------------------- the detector
Mode = Literal["auto", "bell202", "v23", "ntt", "dtmf"]
MODES = ("auto", "bell202", "v23", "ntt", "dtmf")


_FrameDecoder = Callable[[bytes, float], CallerId | None]


@dataclass
class _FskPath:
    receiver: FskReceiver | None  # None on a bank line: the bank demodulates
    assemblers: list[tuple[ClassFrameAssembler | NttFrameAssembler, _FrameDecoder]]


class CallerIdDetector:
    """Caller ID from line audio: ``feed(samples) -> [CallerId]``.

    ``mode``: ``auto`` runs the Bell 202 receiver (GR-30-CORE SDMF/MDMF; China per YD/T 1277.1), the V.23
    receiver (ETSI frames and NTT frames, told apart by framing: DLE SOH header vs message type) and DTMF
    caller ID in parallel; ``bell202``, ``v23`` (ETSI), ``ntt`` and ``dtmf`` run one. ``CallerId.t`` is the
    time, from the first sample fed, at which the last byte's stop bit (or the DTMF end digit) ended.

    Names decode with ``name_charset`` (Bell 202 / ETSI, default ``auto``) and ``ntt_name_charset``
    (default ``jis7``). ``dtmf=False`` leaves DTMF out (digits can still come in through ``feed_digit``
    when the caller already runs a DTMF detector on the line).
    """

    def __init__(
        self,
        mode: Mode = "auto",
        sample_rate: int = 8000,
        *,
        lenient: bool = False,
        name_charset: str = "auto",
        ntt_name_charset: str = "jis7",
        min_level_dbm0: float = -43.0,
        silence_dbm0: float = -50.0,
        dtmf: bool = True,
        dtmf_twist: str = "att",
        dtmf_inter_digit_timeout: float = 1.0,
        dtmf_allow_unmarked: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown caller-ID mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        self.sample_rate = int(sample_rate)
        self.lenient = lenient
        self.stats = {"frames": 0, "emitted": 0, "integrity_errors": 0, "format_errors": 0, "ignored": 0}
        rx = dict(min_level_dbm0=min_level_dbm0, silence_dbm0=silence_dbm0)
        self._paths: list[_FskPath] = []
        if mode in ("auto", "bell202"):
            recv = self._receiver(BELL202, rx)
            self._paths.append(_FskPath(recv, [(ClassFrameAssembler(CLASS_TYPES), self._class("bell202"))]))
        if mode in ("auto", "v23", "ntt"):
            recv = self._receiver(V23, rx)
            assemblers: list = []
            if mode != "ntt":
                assemblers.append((ClassFrameAssembler(ETSI_TYPES), self._class("v23_etsi")))
            if mode != "v23":
                assemblers.append((NttFrameAssembler(), self._ntt))
            self._paths.append(_FskPath(recv, assemblers))
        self._name_charset = name_charset
        self._ntt_name_charset = ntt_name_charset
        self._dtmf_parser = DtmfCallerIdParser(
            inter_digit_timeout=dtmf_inter_digit_timeout, allow_unmarked=dtmf_allow_unmarked
        )
        self._dtmf_detector = None
        if mode in ("auto", "dtmf") and dtmf:
            from drivers.dsp.dtmf import DtmfDetector  # the DTMF receiver of this package

            self._dtmf_detector = DtmfDetector(twist=dtmf_twist, sample_rate=self.sample_rate)
        self._samples = 0
        self.last_error: str | None = None  # why the latest frame was dropped

    def _receiver(self, spec: FskSpec, options: dict) -> FskReceiver:
        return FskReceiver(spec, self.sample_rate, **options)

    # ---------------------------------------------------------------------------- frame decoding
    def _class(self, standard: str) -> Callable[[bytes, float], CallerId | None]:
        def decode(frame: bytes, t: float) -> CallerId | None:
            return decode_class_frame(
                frame, standard=standard, t=t, lenient=self.lenient, charset=self._name_charset
            )

        return decode

    def _ntt(self, frame: bytes, t: float) -> CallerId | None:
        return decode_ntt_frame(frame, t=t, lenient=self.lenient, charset=self._ntt_name_charset)

    def _decode(self, decode: Callable[[bytes, float], CallerId | None], frame: RawFrame) -> CallerId | None:
        self.stats["frames"] += 1
        try:
            event = decode(frame.data, round(float(frame.end_sample) / self.sample_rate, 4))
        except CallerIdFrameError as exc:
            self.stats[f"{exc.kind}_errors"] += 1
            self.last_error = str(exc)
            return None
        if event is None:
            self.stats["ignored"] += 1
        return event

    # ---------------------------------------------------------------------------------- streaming
    @property
    def busy(self) -> bool:
        """True while an FSK carrier is present (the caller must keep feeding real samples)."""
        return any(p.receiver.busy for p in self._paths)

    @property
    def samples_seen(self) -> int:
        return self._samples

    def feed(self, samples: np.ndarray) -> list[CallerId]:
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        self._samples += x.size
        events: list[CallerId] = []
        for path in self._paths:
            for item in path.receiver.feed(x):
                events.extend(self._assemble(path, item))
        if self._dtmf_detector is not None:
            for digit in self._dtmf_detector.feed(x):
                event = self.feed_digit(digit)
                if event is not None:
                    events.append(event)
        if events:
            self.stats["emitted"] += len(events)
            events.sort(key=lambda e: e.t)
        return events

    def _assemble(self, path: _FskPath, item: UartByte | CarrierLost) -> list[CallerId]:
        out = []
        for assembler, decode in path.assemblers:
            frame = assembler.feed(item)
            if frame is not None:
                event = self._decode(decode, frame)
                if event is not None:
                    out.append(event)
        return out

    def feed_digit(self, digit: DtmfDigit) -> CallerId | None:
        """A DTMF digit detected elsewhere on this line (its ``t`` on this detector's clock)."""
        end = round(float(digit.t) + digit.duration_ms / 1000.0, 4)
        return self._dtmf_parser.feed_digit(digit.digit, end)

    def skip(self, count: int) -> None:
        """``count`` samples of silence that need no analysis (FSK state restarts; DTMF not told)."""
        self._samples += int(count)
        for path in self._paths:
            path.receiver.skip(count)
            for assembler, _ in path.assemblers:
                assembler.reset()

    def flush(self) -> list[CallerId]:
        """End of input: process samples held back for block gathering."""
        events: list[CallerId] = []
        for path in self._paths:
            for item in path.receiver.flush():
                events.extend(self._assemble(path, item))
        if self._dtmf_detector is not None:
            for digit in self._dtmf_detector.flush():
                event = self.feed_digit(digit)
                if event is not None:
                    events.append(event)
        self.stats["emitted"] += len(events)
        return sorted(events, key=lambda e: e.t)


class _BankLine(CallerIdDetector):
    """One line of a ``CallerIdDetectorBank``: framing, decoding, stats and DTMF caller ID are its own;
    the FSK demodulation runs batched in the bank, so audio goes in through the bank only."""

    def __init__(
        self, bank: CallerIdDetectorBank, channel: int, mode: Mode, sample_rate: int, **options
    ) -> None:
        self._bank = bank
        self._channel = channel
        super().__init__(mode, sample_rate, dtmf=False, **options)

    def _receiver(self, spec: FskSpec, options: dict) -> None:
        return None  # demodulated by the bank's FskReceiverBank for this standard

    @property
    def busy(self) -> bool:
        return bool(self._bank._busy[self._channel])

    @property
    def samples_seen(self) -> int:
        return int(self._bank._fed[self._channel])

    def feed(self, samples: np.ndarray) -> list[CallerId]:
        raise TypeError(f"line {self._channel} belongs to a CallerIdDetectorBank: feed the bank's frames")

    def skip(self, count: int) -> None:
        raise TypeError(f"line {self._channel} belongs to a CallerIdDetectorBank: the bank keeps its clock")

    def flush(self) -> list[CallerId]:
        return []  # the bank holds no samples back


class CallerIdDetectorBank:
    """Caller ID for ``n_channels`` lines fed as ``(C, N)`` frames: ``feed(frames) -> [(channel, CallerId)]``.

    FSK costs almost nothing on a line that is not sending caller ID: one ``FskGate`` matrix product per
    10 ms looks at every line for the channel seizure or mark run that opens each transmission, and only
    lines that show it for 20 ms get receivers, batched over lines in one ``FskReceiverBank`` per
    standard. A receiver starts on the line's last ``PREROLL_MS`` of audio (kept for every line), so it
    sees the seizure and mark run it needs before the first byte, and stops once its carrier is gone and
    the gate has been quiet for ``GATE_HOLD_MS``. Events are those of a ``CallerIdDetector`` per line
    (``detector(channel)`` is that line's framing, stats and DTMF caller ID; audio goes in through the bank).

    DTMF caller ID is fed from outside with ``feed_digit(channel, digit)`` (the pipeline already runs a
    vectorised DTMF bank on every line), or internally with ``dtmf=True`` through one ``DtmfBank``.
    """

    # The shortest mark run before a first byte is ~40 bits (33 ms): two 10 ms blocks fit in any of them.
    GATE_OPEN_BLOCKS = 2
    GATE_HOLD_MS = 50.0
    # Audio kept for every line so that a receiver started when the gate opens (>= 20 ms into the
    # pattern, more when noise or talk hides its start) still sees the whole mark run.
    PREROLL_MS = 100.0

    def __init__(
        self,
        n_channels: int,
        mode: Mode = "auto",
        sample_rate: int = 8000,
        *,
        dtmf: bool = False,
        dtmf_twist: str = "att",
        silence_dbm0: float = -50.0,
        **options,
    ) -> None:
        if n_channels < 1:
            raise ValueError(f"a detector bank needs at least one channel, got {n_channels}")
        self.n_channels = n_channels
        self.sample_rate = int(sample_rate)
        self._mode = mode
        self._line_options = dict(silence_dbm0=silence_dbm0, **options)
        self._dets = [
            _BankLine(self, ch, mode, self.sample_rate, **self._line_options) for ch in range(n_channels)
        ]
        rx = dict(min_level_dbm0=options.get("min_level_dbm0", -43.0), silence_dbm0=silence_dbm0)
        specs = [
            spec
            for spec, modes in ((BELL202, ("auto", "bell202")), (V23, ("auto", "v23", "ntt")))
            if mode in modes
        ]
        self._receivers = [FskReceiverBank(spec, self.sample_rate, **rx) for spec in specs]
        self._gate = None
        if specs:
            self._gate = FskGate(
                n_channels,
                self.sample_rate,
                min_level_dbm0=rx["min_level_dbm0"],
                open_blocks=self.GATE_OPEN_BLOCKS,
                hold_ms=self.GATE_HOLD_MS,
                preroll_ms=self.PREROLL_MS,
            )
        self._open = np.zeros(n_channels, dtype=bool)  # lines with receivers
        self._busy = np.zeros(n_channels, dtype=bool)  # lines with an FSK carrier now
        self._fed = np.zeros(n_channels, dtype=np.int64)  # clock of each line's receivers when last fed
        self._total = 0
        self.open_ticks = 0  # sum over feeds of the lines with receivers (gate-open line-frames)
        self.ticks = 0
        self._dtmf_bank = None
        if dtmf and mode in ("auto", "dtmf"):
            from drivers.dsp.dtmf import DtmfBank, DtmfParams

            params = DtmfParams.for_site(dtmf_twist)
            self._dtmf_bank = DtmfBank(n_channels, params, sample_rate=self.sample_rate)

    def detector(self, channel: int) -> CallerIdDetector:
        return self._dets[channel]

    @property
    def open_lines(self) -> np.ndarray:
        """Lines whose FSK receivers are running."""
        return np.flatnonzero(self._open)

    # -- re-use of a channel for another line -------------------------------------------------------
    def quiet_channels(self) -> np.ndarray:
        """Per channel (bool): nothing in progress that :meth:`reset_channels` would lose.

        A channel is busy while its FSK receivers are open (``_open``: from the gate opening on a seizure or
        mark run until the carrier is gone and the gate has been quiet for ``GATE_HOLD_MS``; their framers
        may hold part of a message), while an FSK carrier is present (``_busy``), while the gate's latest
        10 ms block passed (a run that opens receivers on the next block may be starting), while its DTMF
        caller-ID parser holds a partial message (digits after a start digit, younger than the inter-digit
        timeout) and, with ``dtmf=True``, while the internal DTMF bank has a digit or candidate.
        """
        quiet = ~self._open & ~self._busy
        if self._gate is not None:
            quiet &= ~self._gate.passing
        now = self._total / self.sample_rate
        quiet &= np.fromiter((d._dtmf_parser.idle_at(now) for d in self._dets), bool, self.n_channels)
        if self._dtmf_bank is not None:
            quiet &= self._dtmf_bank.quiet_channels()
        return quiet

    def reset_channels(self, channels: np.ndarray | list[int]) -> None:
        """Give ``channels`` to new lines: each is as a freshly constructed bank's channel started at the
        current clock (``t`` keeps counting on the bank's clock).

        Each gets a new per-line detector (framers, DTMF caller-ID parser, stats, ``last_error``), its gate
        row restarts (no passing run, quiet, pre-roll history and partial block zeroed: a receiver opened
        soon after the reset sees silence before it), its receiver clock is the current one, and with
        ``dtmf=True`` its internal DTMF channel is reset. Other channels are untouched. A channel with
        open FSK receivers cannot be reset (``ValueError``, nothing changed): wait for
        :meth:`quiet_channels`.
        """
        rows = channel_rows(channels, self.n_channels)
        held = np.unique(rows[self._open[rows]])
        if held.size:
            names = ", ".join(str(int(ch)) for ch in held)
            raise ValueError(
                f"channel(s) {names} of the caller-ID bank have FSK receivers open: "
                "reset a channel once quiet_channels() says it is quiet"
            )
        self._busy[rows] = False
        self._fed[rows] = self._total
        for ch in rows.tolist():
            self._dets[ch] = _BankLine(self, ch, self._mode, self.sample_rate, **self._line_options)
        if self._gate is not None:
            self._gate.reset_rows(rows)
        if self._dtmf_bank is not None:
            self._dtmf_bank.reset_channels(rows)

    def feed(self, frames: np.ndarray) -> list[tuple[int, CallerId]]:
        x = np.asarray(frames)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_channels:
            raise ValueError(f"expected frames shaped ({self.n_channels}, N), got {x.shape}")
        n = x.shape[1]
        out: list[tuple[int, CallerId]] = []
        if n == 0:
            return out
        if self._gate is not None:
            out = self._feed_fsk(x)
        if self._dtmf_bank is not None:
            for ch, digit in self._dtmf_bank.feed(x.astype(np.float32)):
                event = self.feed_digit(ch, digit)
                if event is not None:
                    out.append((ch, event))
        self._total += n
        self.ticks += 1
        return out

    def _feed_fsk(self, x: np.ndarray) -> list[tuple[int, CallerId]]:
        gate = self._gate
        start, quiet = gate.update(x)
        items: list[tuple[int, int, UartByte | CarrierLost]] = []  # (path, line, item)
        new = np.flatnonzero(start & ~self._open)
        if new.size:
            preroll = gate.preroll(new)
            for path, receivers in enumerate(self._receivers):
                items += [(path, ch, item) for ch, item in receivers.add(new, preroll)]
            self._open[new] = True
        gate.remember(x)
        lines = self._receivers[0].lines
        if lines.size:
            block = x[lines].astype(np.float64)
            busy = np.zeros(lines.size, dtype=bool)
            for path, receivers in enumerate(self._receivers):
                items += [(path, ch, item) for ch, item in receivers.feed(block)]
                busy |= receivers.busy
            self._fed[lines] = self._total + x.shape[1]
            self._busy[:] = False
            self._busy[lines] = busy
            self.open_ticks += lines.size
            done = ~busy & quiet[lines]
            if done.any():
                for receivers in self._receivers:
                    receivers.remove(done)
                self._open[lines[done]] = False
        else:
            for receivers in self._receivers:
                receivers.advance(x.shape[1])
        if not items:
            return []
        events: dict[int, list[CallerId]] = {}
        for path, ch, item in items:
            det = self._dets[ch]
            found = det._assemble(det._paths[path], item)
            if found:
                events.setdefault(ch, []).extend(found)
        out = []
        for ch in sorted(events):
            found = sorted(events[ch], key=lambda e: e.t)
            self._dets[ch].stats["emitted"] += len(found)
            out.extend((ch, e) for e in found)
        return out

    def feed_digit(self, channel: int, digit: DtmfDigit) -> CallerId | None:
        return self._dets[channel].feed_digit(digit)

    def flush(self) -> list[tuple[int, CallerId]]:
        """End of input: DTMF digits still sounding (the FSK receivers hold no samples back)."""
        out: list[tuple[int, CallerId]] = []
        if self._dtmf_bank is not None:
            for ch, digit in self._dtmf_bank.flush():
                event = self.feed_digit(ch, digit)
                if event is not None:
                    out.append((ch, event))
        return out
