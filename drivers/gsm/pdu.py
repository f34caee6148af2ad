"""SMS PDU codec: SMS-SUBMIT encoding; SMS-DELIVER / SMS-SUBMIT / SMS-STATUS-REPORT decoding.

Pure and sans-IO: bytes or hex in, values out (3GPP TS 23.040 for the TPDUs, TS 23.038 for alphabets
and TP-DCS, TS 27.005 §3 for the SMSC address prefix seen in AT PDU mode).

TP-MTI is read the way a modem hands PDUs to us over AT (`+CMGR`, `+CMGL`, `+CMT`, `+CDS`): 00 is an
SMS-DELIVER (received), 01 an SMS-SUBMIT (a stored outgoing message), 10 an SMS-STATUS-REPORT.

Lenient decoding. Real modems and SMSCs produce PDUs that break the letter of the spec. Where the
meaning is still unambiguous we decode and append a note to ``DecodedPdu.lenient``:

- a status report cut short after TP-SCTS or TP-DT (seen from ZTE modems): missing TP-DT / TP-ST are
  returned as None;
- an SMSC length octet that disagrees with the TPDU length the modem announced (``tpdu_length``, the
  ``<length>`` of ``+CMGR``/``+CMT``/``+CDS``, which TS 27.005 defines as the TPDU octets): the AT
  length wins;
- a timestamp with impossible BCD values (returned as None; the message itself is intact);
- reserved TP-DCS values (treated as the GSM 7-bit default alphabet, as TS 23.038 §4 prescribes);
- a malformed or out-of-range UDH information element (ignored, as TS 23.040 §9.2.3.24 prescribes);
- UCS2 text with a lone surrogate or an odd octet (U+FFFD in its place);
- octets after the declared user data (ignored).

Anything else that does not parse raises ``PduError`` with the field and the octet offset.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal

from drivers.gsm import gsm7

__all__ = [
    "Concat",
    "DecodedPdu",
    "EncodeError",
    "Encoded",
    "PduError",
    "Segment",
    "TooManyParts",
    "count_parts",
    "decode",
    "encode_submit",
    "relative_validity_minutes",
    "relative_validity_octet",
]


class PduError(ValueError):
    """A malformed PDU. The message says what is wrong and at which octet offset."""

    def __init__(self, message: str, *, offset: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.field = field


class EncodeError(ValueError):
    """Invalid input to the encoder (number, text, option)."""


class TooManyParts(EncodeError):
    """The text needs more parts than allowed (``max_parts``, or 255, the TS 23.040 concat limit)."""

    def __init__(self, parts: int, limit: int, encoding: str) -> None:
        super().__init__(f"text needs {parts} {encoding} parts, more than the limit of {limit}")
        self.parts = parts
        self.limit = limit
        self.encoding = encoding


# ---------------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concat:
    """Concatenated-SM information element (TS 23.040 §9.2.3.24.1 / .8). seq is 1-based."""

    ref: int
    total: int
    seq: int
    ref_bits: int  # 8 (IEI 0x00) or 16 (IEI 0x08)


@dataclass(frozen=True)
class DecodedPdu:
    type: Literal["deliver", "submit", "status_report"]
    smsc: str | None
    number: str | None
    number_type: int
    text: str | None
    encoding: Literal["gsm7", "ucs2", "8bit"] | None
    data: bytes | None
    timestamp: datetime | None
    reference: int | None
    status: int | None
    discharge_time: datetime | None
    concat: Concat | None
    validity: int | str | None
    request_report: bool
    lenient: list[str]
    # Extras beyond the architecture contract.
    pid: int | None = None
    dcs: int | None = None
    message_class: int | None = None
    message_waiting: dict | None = None  # {"active": bool, "kind": str, "store": bool} for DCS 0xC0-0xEF
    udh: list[tuple[int, bytes]] = field(default_factory=list)  # every IE as (IEI, data)

    def to_json(self) -> dict:
        """The object `hcrm-gateway pdu decode` prints: JSON types only."""
        return {
            "type": self.type,
            "smsc": self.smsc,
            "number": self.number,
            "number_type": self.number_type,
            "text": self.text,
            "encoding": self.encoding,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "reference": self.reference,
            "status": self.status,
            "discharge_time": self.discharge_time.isoformat() if self.discharge_time else None,
            "concat": (
                {"ref": self.concat.ref, "total": self.concat.total, "seq": self.concat.seq}
                if self.concat
                else None
            ),
            "concat_ref_bits": self.concat.ref_bits if self.concat else None,
            "validity": self.validity,
            "request_report": self.request_report,
            "pid": self.pid,
            "dcs": self.dcs,
            "message_class": self.message_class,
            "message_waiting": self.message_waiting,
            "udh": [{"iei": iei, "data": data.hex().upper()} for iei, data in self.udh],
            "data_hex": self.data.hex().upper() if self.data is not None else None,
            "lenient": list(self.lenient),
        }


@dataclass(frozen=True)
class Segment:
    hex: str  # includes the SCA field ("00" = use the SMSC stored in the modem)
    tpdu_length: int  # octets excluding the SCA: the <length> of AT+CMGS
    seq: int
    total: int


@dataclass(frozen=True)
class Encoded:
    segments: list[Segment]
    encoding: str
    parts: int


# ---------------------------------------------------------------------------------------------------
# Shared field codecs
# ---------------------------------------------------------------------------------------------------

# TS 23.040 §9.1.2.3 / TS 24.008 table 10.5.118: BCD semi-octets 0xA-0xE are "*", "#", "a", "b", "c";
# 0xF fills an odd count.
_BCD_DIGITS = "0123456789*#abc"
_DIGIT_VALUE = {c: i for i, c in enumerate(_BCD_DIGITS)}

TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
_TON_INTERNATIONAL = 0x10  # bits 6-4 of the TOA (TS 23.040 §9.1.2.5)
_TON_ALPHANUMERIC = 0x50

# TS 23.040 §9.2.3.12.1, relative TP-VP: the period (minutes) each octet value stands for.
_RELATIVE_VP_MINUTES = tuple(
    (vp + 1) * 5
    if vp <= 143
    else 12 * 60 + (vp - 143) * 30
    if vp <= 167
    else (vp - 166) * 24 * 60
    if vp <= 196
    else (vp - 192) * 7 * 24 * 60
    for vp in range(256)
)


def relative_validity_minutes(octet: int) -> int:
    """Decode a relative TP-VP octet to minutes (TS 23.040 §9.2.3.12.1)."""
    return _RELATIVE_VP_MINUTES[octet]


def relative_validity_octet(minutes: int) -> int:
    """Smallest relative TP-VP whose period is at least `minutes` (never expires earlier than asked).

    5 minutes to 63 weeks. Periods the table cannot express exactly round up to the next step (e.g. 6 min
    -> 10 min, 25 h -> 2 days).
    """
    if minutes < 1:
        raise EncodeError(f"validity must be at least 1 minute, got {minutes}")
    if minutes > _RELATIVE_VP_MINUTES[-1]:
        raise EncodeError(f"validity {minutes} min exceeds the relative maximum of 63 weeks (635040 min)")
    return bisect.bisect_left(_RELATIVE_VP_MINUTES, minutes)


def _bcd_digits(raw: bytes, count: int) -> str:
    out = []
    for b in raw:
        out.append(_BCD_DIGITS[b & 0x0F] if (b & 0x0F) != 0x0F else "")
        out.append(_BCD_DIGITS[b >> 4] if (b >> 4) != 0x0F else "")
    return "".join(out[:count])


def _encode_number(number: str, what: str) -> tuple[int, int, bytes]:
    """(digit count, TOA, swapped BCD) for a number given as "+8190..." (international) or digits."""
    if not isinstance(number, str) or not number:
        raise EncodeError(f"{what} number is empty")
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits:
        raise EncodeError(f"{what} number {number!r} has no digits")
    bad = next((c for c in digits if c not in "0123456789*#"), None)
    if bad is not None:
        raise EncodeError(
            f"{what} number {number!r} contains {bad!r}; use digits, '*' or '#', with an optional leading '+'"
        )
    if len(digits) > 20:  # TS 23.040 §9.1.2.5: at most 10 octets of digits
        raise EncodeError(f"{what} number {number!r} has {len(digits)} digits, the maximum is 20")
    padded = digits + ("F" if len(digits) % 2 else "")
    bcd = bytearray()
    for i in range(0, len(padded), 2):
        low = _DIGIT_VALUE[padded[i]]
        high = 0x0F if padded[i + 1] == "F" else _DIGIT_VALUE[padded[i + 1]]
        bcd.append(low | (high << 4))
    return len(digits), TOA_INTERNATIONAL if international else TOA_UNKNOWN, bytes(bcd)


def _format_number(toa: int, digits: str) -> str | None:
    if not digits:
        return None
    return "+" + digits if (toa & 0x70) == _TON_INTERNATIONAL else digits


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------

_NON_HEX = re.compile(r"[^0-9A-Fa-f]")
_WHITESPACE = re.compile(r"\s+")


def _to_bytes(hex_or_bytes: str | bytes | bytearray) -> bytes:
    if isinstance(hex_or_bytes, (bytes, bytearray)):
        data = bytes(hex_or_bytes)
    elif isinstance(hex_or_bytes, str):
        text = _WHITESPACE.sub("", hex_or_bytes)
        bad = _NON_HEX.search(text)
        if bad:
            raise PduError(f"non-hex character {bad.group()!r} at position {bad.start()} of the PDU")
        if len(text) % 2:
            raise PduError(f"odd number of hex digits ({len(text)}): a PDU is a whole number of octets")
        data = bytes.fromhex(text)
    else:
        raise PduError(f"PDU must be hex text or bytes, not {type(hex_or_bytes).__name__}")
    if not data:
        raise PduError("empty PDU")
    return data


class _Reader:
    """Cursor over the PDU octets; every read names its field so errors say what was truncated."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def octet(self, name: str) -> int:
        return self.take(1, name)[0]

    def take(self, n: int, name: str) -> bytes:
        if n > self.remaining:
            raise PduError(
                f"truncated {name} at offset {self.pos}: needs {n} octet{'s' if n != 1 else ''}, "
                f"{self.remaining} left",
                offset=self.pos,
                field=name,
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def _read_address(r: _Reader, name: str) -> tuple[str | None, int]:
    """TP-OA / TP-DA / TP-RA (TS 23.040 §9.1.2.5): length in semi-octets, TOA, value."""
    semi_octets = r.octet(f"{name} length")
    toa = r.octet(f"{name} type of address")
    raw = r.take((semi_octets + 1) // 2, name)
    if (toa & 0x70) == _TON_ALPHANUMERIC:
        # §9.1.2.5: alphanumeric, GSM 7-bit packed; the length counts the semi-octets actually used.
        septets = gsm7.unpack_septets(raw, semi_octets * 4 // 7)
        return gsm7.decode(septets) or None, toa
    return _format_number(toa, _bcd_digits(raw, semi_octets)), toa


def _parse_timestamp(raw: bytes, name: str, offset: int, notes: list[str]) -> datetime | None:
    """TP-SCTS / TP-DT / absolute TP-VP (TS 23.040 §9.2.3.11): 7 swapped-BCD octets.

    The 7th octet is the offset from UTC in quarter hours; bit 3 of its low nibble (the tens digit) is
    the sign. Two-digit years 70-99 are 19xx (warthog618/sms timestamp tests), the rest 20xx.
    """
    try:
        fields = []
        for b in raw[:6]:
            low, high = b & 0x0F, b >> 4
            if low > 9 or high > 9:
                raise ValueError(f"non-decimal octet 0x{b:02X}")
            fields.append(low * 10 + high)
        tz_octet = raw[6]
        if tz_octet >> 4 > 9:
            raise ValueError(f"non-decimal time zone octet 0x{tz_octet:02X}")
        quarters = (tz_octet & 0x07) * 10 + (tz_octet >> 4)
        if tz_octet & 0x08:
            quarters = -quarters
        yy, month, day, hour, minute, second = fields
        year = 1900 + yy if yy >= 70 else 2000 + yy
        return datetime(
            year, month, day, hour, minute, second, tzinfo=timezone(timedelta(minutes=15 * quarters))
        )
    except ValueError as exc:
        notes.append(f"{name} at offset {offset} is not a valid time ({raw.hex().upper()}: {exc}); ignored")
        return None


def _read_timestamp(r: _Reader, name: str, notes: list[str]) -> datetime | None:
    offset = r.pos
    return _parse_timestamp(r.take(7, name), name, offset, notes)


_MWI_KINDS = ("voicemail", "fax", "email", "other")


@dataclass(frozen=True)
class _Coding:
    alphabet: Literal["gsm7", "ucs2", "8bit"]
    message_class: int | None
    compressed: bool
    message_waiting: dict | None


def _parse_dcs(dcs: int, notes: list[str]) -> _Coding:
    """TP-DCS coding groups (TS 23.038 §4)."""
    alphabets: tuple[Literal["gsm7", "8bit", "ucs2"], ...] = ("gsm7", "8bit", "ucs2")
    if dcs < 0x80:  # 00xx xxxx general data coding, 01xx xxxx the same with automatic deletion
        bits = (dcs >> 2) & 0x03
        if bits == 3:
            notes.append(f"TP-DCS 0x{dcs:02X} has the reserved alphabet 11; read as GSM 7-bit (TS 23.038 §4)")
            bits = 0
        return _Coding(alphabets[bits], dcs & 0x03 if dcs & 0x10 else None, bool(dcs & 0x20), None)
    if dcs < 0xC0:
        notes.append(f"TP-DCS 0x{dcs:02X} is a reserved coding group; read as GSM 7-bit (TS 23.038 §4)")
        return _Coding("gsm7", None, False, None)
    if dcs < 0xF0:  # message waiting indication groups: 1100 discard, 1101 store (GSM 7), 1110 store (UCS2)
        group = dcs >> 4
        mwi = {"active": bool(dcs & 0x08), "kind": _MWI_KINDS[dcs & 0x03], "store": group != 0x0C}
        return _Coding("ucs2" if group == 0x0E else "gsm7", None, False, mwi)
    # 1111: data coding / message class; bit 2 selects 8-bit data, bit 3 is reserved.
    return _Coding("8bit" if dcs & 0x04 else "gsm7", dcs & 0x03, False, None)


@dataclass
class _UserData:
    text: str | None = None
    data: bytes | None = None
    encoding: Literal["gsm7", "ucs2", "8bit"] | None = None
    concat: Concat | None = None
    udh: list[tuple[int, bytes]] = field(default_factory=list)


def _parse_udh(header: bytes, offset: int, notes: list[str]) -> tuple[list[tuple[int, bytes]], Concat | None]:
    """Information elements of a User Data Header (TS 23.040 §9.2.3.24); `header` excludes the UDHL."""
    ies: list[tuple[int, bytes]] = []
    concat: Concat | None = None
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            notes.append(f"UDH at offset {offset + i} ends inside an IE header; rest of the UDH ignored")
            break
        iei, length = header[i], header[i + 1]
        body = header[i + 2 : i + 2 + length]
        if len(body) < length:
            notes.append(
                f"UDH IE 0x{iei:02X} at offset {offset + i} claims {length} octets, "
                f"{len(body)} left in the header; ignored"
            )
            break
        ies.append((iei, bytes(body)))
        if iei in (0x00, 0x08):
            expected = 3 if iei == 0x00 else 4
            if length != expected:
                notes.append(f"concat IE 0x{iei:02X} at offset {offset + i} has length {length}; ignored")
            else:
                ref = body[0] if iei == 0x00 else (body[0] << 8) | body[1]
                total, seq = body[-2], body[-1]
                # §9.2.3.24.1: total 0, seq 0 or seq > total -> ignore the whole IE. A repeated IE: the
                # last occurrence counts.
                if total == 0 or seq == 0 or seq > total:
                    notes.append(
                        f"concat IE at offset {offset + i} has seq {seq} of {total}; ignored (TS 23.040 "
                        "§9.2.3.24.1)"
                    )
                else:
                    concat = Concat(ref=ref, total=total, seq=seq, ref_bits=8 if iei == 0x00 else 16)
        i += 2 + length
    return ies, concat


def _read_user_data(r: _Reader, coding: _Coding, udhi: bool, notes: list[str]) -> _UserData:
    """TP-UDL and TP-UD (TS 23.040 §9.2.3.16 / §9.2.3.24)."""
    udl_offset = r.pos
    udl = r.octet("TP-UDL")
    gsm = coding.alphabet == "gsm7" and not coding.compressed
    n_octets = gsm7.packed_length(udl) if gsm else udl
    if n_octets > r.remaining:
        size = f"{udl} septets ({n_octets} octets)" if gsm else f"{udl} octets"
        raise PduError(
            f"TP-UDL at offset {udl_offset} says {size} but only {r.remaining} octets of user data follow",
            offset=udl_offset,
            field="TP-UDL",
        )
    if udl > (160 if gsm else 140):
        notes.append(f"TP-UDL {udl} exceeds the TS 23.040 maximum for this alphabet; decoded anyway")
    ud_offset = r.pos
    ud = r.take(n_octets, "TP-UD")
    out = _UserData()
    header_octets = 0
    if udhi and udl == 0:
        notes.append("TP-UDHI is set but the user data is empty; no header read")
    elif udhi:
        udhl = ud[0]
        header_octets = udhl + 1
        if header_octets > len(ud):
            raise PduError(
                f"UDH length {udhl} at offset {ud_offset} runs past the {len(ud)} octets of user data",
                offset=ud_offset,
                field="TP-UDHL",
            )
        out.udh, out.concat = _parse_udh(ud[1:header_octets], ud_offset + 1, notes)

    if gsm:
        out.encoding = "gsm7"
        # Septets are packed continuously from the start of TP-UD: the header occupies the first
        # ceil(8*octets/7) septets (its fill bits included), the text the rest.
        header_septets = (header_octets * 8 + 6) // 7
        if header_septets > udl:
            raise PduError(
                f"TP-UDL {udl} septets at offset {udl_offset} is shorter than the {header_octets}-octet UDH",
                offset=udl_offset,
                field="TP-UDL",
            )
        out.text = gsm7.decode(gsm7.unpack_septets(ud, udl)[header_septets:])
        return out

    body = ud[header_octets:]
    if coding.compressed:
        notes.append("user data is compressed (TS 23.042), which is not supported; raw data returned")
        out.encoding = "8bit"
        out.data = body
    elif coding.alphabet == "ucs2":
        out.encoding = "ucs2"
        if len(body) % 2:
            notes.append(f"UCS2 user data has an odd octet count ({len(body)}); last octet shown as U+FFFD")
        # UTF-16BE covers UCS2 and surrogate pairs; a lone surrogate becomes U+FFFD.
        out.text = body.decode("utf-16-be", errors="replace")
        if _has_lone_surrogate(body):
            notes.append("UCS2 user data holds a lone surrogate; replaced by U+FFFD")
    else:
        out.encoding = "8bit"
        out.data = body
    return out


def _has_lone_surrogate(utf16be: bytes) -> bool:
    expect_low = False
    for i in range(0, len(utf16be) - 1, 2):
        high_byte = utf16be[i]
        is_high, is_low = 0xD8 <= high_byte <= 0xDB, 0xDC <= high_byte <= 0xDF
        if is_low != expect_low:
            return True
        expect_low = is_high
    return expect_low


def _read_validity(r: _Reader, vpf: int, notes: list[str]) -> int | str | None:
    """TP-VP of an SMS-SUBMIT by TP-VPF (TS 23.040 §9.2.3.12)."""
    if vpf == 0b00:
        return None
    if vpf == 0b10:  # relative
        return relative_validity_minutes(r.octet("TP-VP"))
    if vpf == 0b11:  # absolute
        ts = _read_timestamp(r, "TP-VP (absolute)", notes)
        return ts.isoformat() if ts else None
    # 0b01 enhanced (§9.2.3.12.3): functionality indicator(s) then the period, 7 octets in all.
    offset = r.pos
    raw = r.take(7, "TP-VP (enhanced)")
    fi_count = 1
    while fi_count < 7 and raw[fi_count - 1] & 0x80:  # bit 7: another indicator octet follows
        fi_count += 1
    fmt = raw[0] & 0x07
    rest = raw[fi_count:]
    if fmt == 0b000:
        return None
    if fmt == 0b001 and rest:
        return relative_validity_minutes(rest[0])
    if fmt == 0b010 and rest:
        return f"PT{rest[0]}S"
    if fmt == 0b011 and len(rest) >= 3:
        digits = _bcd_digits(rest[:3], 6)
        if digits.isdigit() and len(digits) == 6:
            return f"PT{int(digits[0:2])}H{int(digits[2:4])}M{int(digits[4:6])}S"
    notes.append(f"enhanced TP-VP at offset {offset} ({raw.hex().upper()}) has a reserved format; ignored")
    return None


def _read_smsc(data: bytes, tpdu_length: int | None, notes: list[str]) -> tuple[str | None, int]:
    """The SCA prefix of AT PDU mode (TS 27.005 §3.1 <pdu>): length octet (incl. TOA), TOA, BCD."""
    declared = data[0]
    length = declared
    if tpdu_length is not None:
        implied = len(data) - tpdu_length - 1
        if implied != declared and 0 <= implied <= 11:
            notes.append(
                f"SMSC length octet says {declared} but the modem's TPDU length {tpdu_length} implies "
                f"{implied}; used {implied}"
            )
            length = implied
    if length > 11:  # TS 24.011 §8.2.5.2: at most 1 TOA octet + 10 digit octets
        raise PduError(
            f"SMSC address length {length} at offset 0 exceeds 11 octets (wrong --no-smsc choice?)",
            offset=0,
            field="SCA length",
        )
    if length + 1 > len(data):
        raise PduError(
            f"truncated SMSC address at offset 1: needs {length} octets, {len(data) - 1} left",
            offset=1,
            field="SCA",
        )
    if length == 0:
        return None, 1
    toa = data[1]
    digits = _bcd_digits(data[2 : 1 + length], 2 * (length - 1))
    return _format_number(toa, digits), 1 + length


def decode(
    hex_or_bytes: str | bytes | bytearray, *, has_smsc: bool = True, tpdu_length: int | None = None
) -> DecodedPdu:
    """Decode one PDU as a modem shows it in PDU mode.

    has_smsc: the PDU starts with the SMSC address field (true for every AT PDU-mode read).
    tpdu_length: the ``<length>`` the modem reported with the PDU, if known; used to repair a wrong SMSC
    length octet (see the module docstring).
    """
    data = _to_bytes(hex_or_bytes)
    notes: list[str] = []
    smsc, start = _read_smsc(data, tpdu_length, notes) if has_smsc else (None, 0)
    r = _Reader(data, start)
    fo = r.octet("first octet")
    mti = fo & 0x03
    udhi = bool(fo & 0x40)
    if mti == 0b00:
        result = _decode_deliver(r, fo, udhi, smsc, notes)
    elif mti == 0b01:
        result = _decode_submit(r, fo, udhi, smsc, notes)
    elif mti == 0b10:
        result = _decode_status_report(r, fo, udhi, smsc, notes)
    else:
        raise PduError(
            f"first octet 0x{fo:02X} at offset {start} has the reserved TP-MTI 11",
            offset=start,
            field="TP-MTI",
        )
    if r.remaining:
        notes.append(f"{r.remaining} octet(s) after the end of the TPDU at offset {r.pos}; ignored")
    return result


def _decode_deliver(r: _Reader, fo: int, udhi: bool, smsc: str | None, notes: list[str]) -> DecodedPdu:
    # TS 23.040 §9.2.2.1
    number, toa = _read_address(r, "TP-OA")
    pid = r.octet("TP-PID")
    dcs = r.octet("TP-DCS")
    timestamp = _read_timestamp(r, "TP-SCTS", notes)
    coding = _parse_dcs(dcs, notes)
    ud = _read_user_data(r, coding, udhi, notes)
    return DecodedPdu(
        type="deliver", smsc=smsc, number=number, number_type=toa, text=ud.text, encoding=ud.encoding,
        data=ud.data, timestamp=timestamp, reference=None, status=None, discharge_time=None,
        concat=ud.concat, validity=None, request_report=bool(fo & 0x20), lenient=notes, pid=pid, dcs=dcs,
        message_class=coding.message_class, message_waiting=coding.message_waiting, udh=ud.udh,
    )  # fmt: skip


def _decode_submit(r: _Reader, fo: int, udhi: bool, smsc: str | None, notes: list[str]) -> DecodedPdu:
    # TS 23.040 §9.2.2.2
    mr = r.octet("TP-MR")
    number, toa = _read_address(r, "TP-DA")
    pid = r.octet("TP-PID")
    dcs = r.octet("TP-DCS")
    validity = _read_validity(r, (fo >> 3) & 0x03, notes)
    coding = _parse_dcs(dcs, notes)
    ud = _read_user_data(r, coding, udhi, notes)
    return DecodedPdu(
        type="submit", smsc=smsc, number=number, number_type=toa, text=ud.text, encoding=ud.encoding,
        data=ud.data, timestamp=None, reference=mr, status=None, discharge_time=None, concat=ud.concat,
        validity=validity, request_report=bool(fo & 0x20), lenient=notes, pid=pid, dcs=dcs,
        message_class=coding.message_class, message_waiting=coding.message_waiting, udh=ud.udh,
    )  # fmt: skip


def _decode_status_report(
    r: _Reader, fo: int, udhi: bool, smsc: str | None, notes: list[str]
) -> DecodedPdu:
    # TS 23.040 §9.2.2.3: MR, RA, SCTS, DT, ST, then optional PI and the fields it announces.
    mr = r.octet("TP-MR")
    number, toa = _read_address(r, "TP-RA")
    timestamp = _read_timestamp(r, "TP-SCTS", notes)
    discharge: datetime | None = None
    status: int | None = None
    if r.remaining == 0:
        notes.append("status report ends after TP-SCTS: TP-DT and TP-ST missing (truncated report)")
    else:
        if r.remaining < 7:
            raise PduError(
                f"truncated TP-DT at offset {r.pos}: needs 7 octets, {r.remaining} left",
                offset=r.pos,
                field="TP-DT",
            )
        discharge = _read_timestamp(r, "TP-DT", notes)
        if r.remaining == 0:
            notes.append("status report ends after TP-DT: TP-ST missing (truncated report)")
        else:
            status = r.octet("TP-ST")
    pid = dcs = None
    ud = _UserData()
    coding = _parse_dcs(0x00, notes)
    if r.remaining:
        # §9.2.3.27 TP-PI: bit 0 PID, bit 1 DCS, bit 2 UDL; bit 7 extends to another PI octet.
        pi = r.octet("TP-PI")
        ext = pi
        while ext & 0x80 and r.remaining:
            ext = r.octet("TP-PI extension")
        if pi & 0x01:
            pid = r.octet("TP-PID")
        if pi & 0x02:
            dcs = r.octet("TP-DCS")
            coding = _parse_dcs(dcs, notes)
        if pi & 0x04:
            # §9.2.3.27: no TP-DCS but TP-UDL present -> assume DCS 0x00.
            ud = _read_user_data(r, coding, udhi, notes)
    return DecodedPdu(
        type="status_report", smsc=smsc, number=number, number_type=toa, text=ud.text,
        encoding=ud.encoding, data=ud.data, timestamp=timestamp, reference=mr, status=status,
        discharge_time=discharge, concat=ud.concat, validity=None, request_report=False, lenient=notes,
        pid=pid, dcs=dcs, message_class=coding.message_class if dcs is not None else None,
        message_waiting=coding.message_waiting if dcs is not None else None, udh=ud.udh,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Encoding (SMS-SUBMIT, TS 23.040 §9.2.2.2)
# ---------------------------------------------------------------------------------------------------

MAX_CONCAT_PARTS = 255  # one octet for the part count in the concat IE
_GSM7_SINGLE, _UCS2_SINGLE_OCTETS = 160, 140
# Per-part payload with a concat UDH: 6-octet UDH (8-bit ref) or 7-octet (16-bit ref) out of 140 octets.
_GSM7_PART = {False: 153, True: 152}  # septets; (140 - 6) * 8 // 7 = 153, (140 - 7) * 8 // 7 = 152
_UCS2_PART_OCTETS = {False: 134, True: 132}  # 67 / 66 UTF-16 code units


def _split_gsm7(text: str, ref16: bool) -> list[list[int]] | None:
    """Septets per part, never splitting ESC+code; None when the text is not GSM 7-bit encodable."""
    septets_for = gsm7.septets_for
    units: list[tuple[int, ...]] = []
    total = 0
    for c in text:
        unit = septets_for(c)
        if unit is None:
            return None
        units.append(unit)
        total += len(unit)
    if total <= _GSM7_SINGLE:
        return [[s for unit in units for s in unit]]
    limit = _GSM7_PART[ref16]
    parts: list[list[int]] = []
    current: list[int] = []
    for unit in units:
        if len(current) + len(unit) > limit:
            parts.append(current)
            current = []
        current.extend(unit)
    parts.append(current)
    return parts


def _split_ucs2(text: str, ref16: bool) -> list[bytes]:
    """UTF-16BE octets per part, never splitting a surrogate pair."""
    try:
        raw = text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        raise EncodeError(
            f"text holds a lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}; it cannot "
            "be sent"
        ) from None
    if len(raw) <= _UCS2_SINGLE_OCTETS:
        return [raw]
    limit = _UCS2_PART_OCTETS[ref16]
    parts: list[bytes] = []
    start = 0
    while len(raw) - start > limit:
        end = start + limit
        if 0xD8 <= raw[end - 2] <= 0xDB:  # last unit is a high surrogate: keep the pair together
            end -= 2
        parts.append(raw[start:end])
        start = end
    parts.append(raw[start:])
    return parts


def _plan(text: str, encoding: str, ref16: bool) -> tuple[str, list]:
    if not isinstance(text, str):
        raise EncodeError(f"text must be a string, not {type(text).__name__}")
    if encoding not in ("auto", "gsm7", "ucs2"):
        raise EncodeError(f"unknown encoding {encoding!r}; use auto, gsm7 or ucs2")
    if encoding in ("auto", "gsm7"):
        parts = _split_gsm7(text, ref16)
        if parts is not None:
            return "gsm7", parts
        if encoding == "gsm7":
            gsm7.septet_length(text)  # raises Gsm7Error naming the character
    return "ucs2", _split_ucs2(text, ref16)


def count_parts(text: str, *, encoding: str = "auto", ref16: bool = False) -> tuple[str, int]:
    """(encoding, number of parts) that encode_submit would produce. Cheap: no PDU is built."""
    chosen, parts = _plan(text, encoding, ref16)
    return chosen, len(parts)


def encode_submit(
    to: str,
    text: str,
    *,
    smsc: str | None = None,
    request_report: bool = False,
    validity_minutes: int | None = None,
    concat_ref: int = 0,
    ref16: bool = False,
    encoding: str = "auto",
    max_parts: int | None = None,
) -> Encoded:
    """Encode `text` to `to` as one SMS-SUBMIT per part (TS 23.040 §9.2.2.2).

    Encoding "auto" picks GSM 7-bit when every character is in the default alphabet or its extension
    table, else UCS2 (UTF-16BE). More than one part adds a concat UDH (IEI 0x00 8-bit ref, or 0x08 16-bit
    with ref16) and splits at 153/152 septets or 67/66 UTF-16 units. TP-MR is 0 (the modem assigns it).
    Raises EncodeError (a ValueError) for bad input and TooManyParts when over `max_parts` or 255.
    """
    da_digits, da_toa, da_bcd = _encode_number(to, "destination")
    if smsc:
        _, sca_toa, sca_bcd = _encode_number(smsc, "SMSC")
        sca = bytes([1 + len(sca_bcd), sca_toa]) + sca_bcd
    else:
        sca = b"\x00"  # use the SMSC stored in the modem / SIM
    vp = relative_validity_octet(validity_minutes) if validity_minutes is not None else None
    max_ref = 0xFFFF if ref16 else 0xFF
    if not 0 <= concat_ref <= max_ref:
        bits = 16 if ref16 else 8
        raise EncodeError(f"concat_ref {concat_ref} out of range 0..{max_ref} for a {bits}-bit reference")
    if max_parts is not None and max_parts < 1:
        raise EncodeError(f"max_parts must be at least 1, got {max_parts}")

    chosen, payloads = _plan(text, encoding, ref16)
    total = len(payloads)
    limit = min(MAX_CONCAT_PARTS, max_parts) if max_parts is not None else MAX_CONCAT_PARTS
    if total > limit:
        raise TooManyParts(total, limit, chosen)

    # First octet: MTI 01 SUBMIT, TP-VPF 10 relative, TP-SRR, TP-UDHI (TS 23.040 §9.2.2.2).
    fo = 0x01 | (0x10 if vp is not None else 0) | (0x20 if request_report else 0) | (0x40 if total > 1 else 0)
    head = bytes([fo, 0x00, da_digits, da_toa]) + da_bcd + bytes([0x00, 0x00 if chosen == "gsm7" else 0x08])
    if vp is not None:
        head += bytes([vp])
    sca_hex = sca.hex().upper()

    segments = []
    for seq, payload in enumerate(payloads, start=1):
        if total > 1:
            if ref16:
                udh = bytes([6, 0x08, 4, concat_ref >> 8, concat_ref & 0xFF, total, seq])
            else:
                udh = bytes([5, 0x00, 3, concat_ref, total, seq])
        else:
            udh = b""
        if chosen == "gsm7":
            # TS 23.040 §9.2.3.24: the text starts on a septet boundary after the UDH (fill bits), and
            # TP-UDL counts septets of header + fill + text.
            header_septets = (len(udh) * 8 + 6) // 7
            fill = header_septets * 7 - len(udh) * 8
            ud = udh + gsm7.pack_septets(payload, fill)
            udl = header_septets + len(payload)
        else:
            ud = udh + payload
            udl = len(ud)
        tpdu = head + bytes([udl]) + ud
        segments.append(
            Segment(hex=sca_hex + tpdu.hex().upper(), tpdu_length=len(tpdu), seq=seq, total=total)
        )
    return Encoded(segments=segments, encoding=chosen, parts=total)
