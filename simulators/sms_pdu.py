"""The GSM modem simulator's own minimal SMS PDU codec.

Written from 3GPP TS 23.040 (TPDU layouts) and TS 23.038 (alphabets) independently of
``drivers/gsm/pdu.py``, so that one misreading of the specs cannot hide on both sides of a test.
It covers what a modem needs: parse an SMS-SUBMIT handed over by ``AT+CMGS``/``AT+CMGW``, build
SMS-SUBMIT for text-mode writes, build SMS-DELIVER (multipart with a concatenation UDH) and
SMS-STATUS-REPORT. Every PDU here carries the SMSC address field (SCA) first, as over AT in PDU mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

__all__ = [
    "Concat",
    "PduPart",
    "SimPduError",
    "SubmitPdu",
    "build_deliver_parts",
    "build_status_report",
    "build_submit",
    "choose_encoding",
    "decode_gsm7",
    "encode_gsm7",
    "gsm7_encodable",
    "pack_septets",
    "parse_submit",
    "parse_scts",
    "scts_octets",
    "unpack_septets",
]

Encoding = Literal["gsm7", "8bit", "ucs2"]


class SimPduError(ValueError):
    """A PDU the simulated modem cannot accept; the message says what and at which octet."""


# TS 23.038 §6.2.1: GSM 7-bit default alphabet, septet value = index in this string.
_GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# TS 23.038 §6.2.1.1: extension table, reached through ESC (0x1B); each costs two septets.
_GSM7_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_GSM7_ESC = 0x1B
_TO_SEPTET = {ch: i for i, ch in enumerate(_GSM7_BASIC) if i != _GSM7_ESC}
_TO_EXTENSION = {ch: code for code, ch in _GSM7_EXTENSION.items()}

assert len(_GSM7_BASIC) == 128


def gsm7_encodable(text: str) -> bool:
    """True when every character exists in the default alphabet or its extension table."""
    return all(ch in _TO_SEPTET or ch in _TO_EXTENSION for ch in text)


def encode_gsm7(text: str) -> list[int]:
    """Text to septet values (extension characters become ESC + code)."""
    septets: list[int] = []
    for pos, ch in enumerate(text):
        if ch in _TO_SEPTET:
            septets.append(_TO_SEPTET[ch])
        elif ch in _TO_EXTENSION:
            septets.extend((_GSM7_ESC, _TO_EXTENSION[ch]))
        else:
            raise SimPduError(f"character {ch!r} at position {pos} is not in the GSM 7-bit alphabet")
    return septets


def decode_gsm7(septets: list[int]) -> str:
    """Septet values to text; an unknown extension code reads as its basic character (TS 23.038 §6.2.1.1)."""
    out: list[str] = []
    escaped = False
    for value in septets:
        if escaped:
            out.append(_GSM7_EXTENSION.get(value, _GSM7_BASIC[value]))
            escaped = False
        elif value == _GSM7_ESC:
            escaped = True
        else:
            out.append(_GSM7_BASIC[value])
    if escaped:  # a trailing ESC is shown as a space, as the spec asks for an undefined extension
        out.append(" ")
    return "".join(out)


def pack_septets(septets: list[int], *, fill_bits: int = 0) -> bytes:
    """Pack septets LSB-first into octets after `fill_bits` zero bits (TS 23.038 §6.1.2.1.1)."""
    value = 0
    for i, septet in enumerate(septets):
        value |= (septet & 0x7F) << (7 * i)
    value <<= fill_bits
    n_octets = math.ceil((len(septets) * 7 + fill_bits) / 8)
    return value.to_bytes(n_octets, "little")


def unpack_septets(data: bytes, count: int, *, fill_bits: int = 0) -> list[int]:
    """Inverse of :func:`pack_septets`: `count` septets after `fill_bits` bits."""
    value = int.from_bytes(data, "little") >> fill_bits
    return [(value >> (7 * i)) & 0x7F for i in range(count)]


# ---------------------------------------------------------------------------------------------------------
# Addresses (TS 23.040 §9.1.2.5) and timestamps (§9.2.3.11)

_BCD_DIGITS = "0123456789*#abc"


def _swap_bcd(digits: str) -> bytes:
    nibbles = [_BCD_DIGITS.index(d) for d in digits.lower()]
    if len(nibbles) % 2:
        nibbles.append(0xF)
    return bytes(nibbles[i] | (nibbles[i + 1] << 4) for i in range(0, len(nibbles), 2))


def _unswap_bcd(data: bytes, n_digits: int) -> str:
    out = []
    for octet in data:
        for nibble in (octet & 0x0F, octet >> 4):
            if nibble == 0xF:
                continue
            out.append(_BCD_DIGITS[nibble] if nibble < len(_BCD_DIGITS) else "?")
    return "".join(out)[:n_digits]


def _split_number(number: str, toa: int | None) -> tuple[str, int]:
    number = number.strip()
    if number.startswith("+"):
        digits = number[1:]
        return digits, 0x91 if toa is None else toa
    return number, 0x81 if toa is None else toa


def _encode_address(number: str, toa: int | None = None) -> bytes:
    """TP-OA/DA/RA: length in useful semi-octets, TOA, swapped BCD (or packed GSM-7 when TOA is 0xD0)."""
    if toa is not None and (toa & 0x70) == 0x50:  # type of number 101: alphanumeric
        packed = pack_septets(encode_gsm7(number))
        semi_octets = math.ceil(len(encode_gsm7(number)) * 7 / 4)
        return bytes([semi_octets, toa]) + packed
    digits, toa = _split_number(number, toa)
    if not all(d in _BCD_DIGITS for d in digits.lower()):
        raise SimPduError(f"address {number!r} has a character that is not a BCD digit")
    return bytes([len(digits), toa]) + _swap_bcd(digits)


def _encode_sca(smsc: str | None) -> bytes:
    """SMSC address field: length in octets including TOA; 00 means 'use the stored SMSC'."""
    if not smsc:
        return b"\x00"
    digits, toa = _split_number(smsc, None)
    body = bytes([toa]) + _swap_bcd(digits)
    return bytes([len(body)]) + body


def _format_number(digits: str, toa: int) -> str:
    return f"+{digits}" if (toa & 0x70) == 0x10 else digits


def scts_octets(moment: datetime) -> bytes:
    """TP-SCTS / TP-DT: seven swapped-BCD octets YY MM DD hh mm ss TZ (TS 23.040 §9.2.3.11).

    TZ is the offset in quarter hours; bit 3 of the 7th octet (the tens nibble once swapped) is the sign.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise SimPduError("a service centre timestamp needs a timezone-aware datetime")
    offset = moment.utcoffset()
    assert offset is not None
    quarters = int(offset / timedelta(minutes=15))
    fields = [moment.year % 100, moment.month, moment.day, moment.hour, moment.minute, moment.second]
    out = bytearray((v % 10) << 4 | (v // 10) for v in fields)
    tz = abs(quarters)
    octet = (tz % 10) << 4 | (tz // 10)
    if quarters < 0:
        octet |= 0x08
    out.append(octet)
    return bytes(out)


def parse_scts(data: bytes) -> datetime:
    """Inverse of :func:`scts_octets` (years taken as 20YY)."""
    def two(octet: int) -> int:
        return (octet & 0x0F) * 10 + (octet >> 4)

    year, month, day, hour, minute, second = (two(o) for o in data[:6])
    tz_octet = data[6]
    quarters = (tz_octet & 0x07) * 10 + (tz_octet >> 4)
    if tz_octet & 0x08:
        quarters = -quarters
    return datetime(2000 + year, month, day, hour, minute, second,
                    tzinfo=timezone(timedelta(minutes=15 * quarters)))


# ---------------------------------------------------------------------------------------------------------
# SMS-SUBMIT parsing (TS 23.040 §9.2.2.2)


@dataclass(frozen=True)
class Concat:
    """Concatenated-SMS information element (TS 23.040 §9.2.3.24.1 IEI 0x00, §9.2.3.24.8 IEI 0x08)."""

    ref: int
    total: int
    seq: int
    ref_bits: int  # 8 or 16


@dataclass(frozen=True)
class SubmitPdu:
    smsc: str | None
    tpdu_length: int  # octets after the SCA field: what AT+CMGS=<n> must say
    reference: int  # TP-MR as written by the TE (the modem assigns its own)
    destination: str
    destination_toa: int
    pid: int
    dcs: int
    validity: int | bytes | None  # relative octet, 7 raw octets (absolute/enhanced), or None
    request_report: bool
    reject_duplicates: bool
    encoding: Encoding
    text: str | None  # None for 8-bit data
    data: bytes  # user data without the UDH (octets; for GSM-7 the septet values)
    concat: Concat | None


class _Reader:
    """Cursor over PDU octets that names the field when the PDU ends too early."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise SimPduError(
                f"PDU ends inside {field}: needs {n} octet(s) at octet {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def octet(self, field: str) -> int:
        return self.take(1, field)[0]


def _alphabet(dcs: int) -> Encoding:
    """Character set from TP-DCS (TS 23.038 §4)."""
    group = dcs >> 4
    if group <= 0x7:  # 00xx / 01xx: general data coding (01xx = automatic deletion)
        if dcs & 0x20:
            raise SimPduError(f"TP-DCS 0x{dcs:02X} announces compressed text, which is not supported")
        alphabet = (dcs >> 2) & 0x03
        if alphabet == 0x03:
            raise SimPduError(f"TP-DCS 0x{dcs:02X} uses the reserved alphabet value 11")
        return ("gsm7", "8bit", "ucs2")[alphabet]  # type: ignore[return-value]
    if group in (0xC, 0xD):  # message waiting, discard / store, GSM-7
        return "gsm7"
    if group == 0xE:  # message waiting, store, UCS2
        return "ucs2"
    if group == 0xF:  # data coding / message class: bit 2 selects 8-bit
        return "8bit" if dcs & 0x04 else "gsm7"
    raise SimPduError(f"TP-DCS 0x{dcs:02X} is in a reserved coding group")


def _parse_udh(udh: bytes) -> Concat | None:
    concat = None
    pos = 0
    while pos < len(udh):
        if pos + 2 > len(udh):
            raise SimPduError(f"user data header is truncated at octet {pos}")
        iei, iel = udh[pos], udh[pos + 1]
        body = udh[pos + 2 : pos + 2 + iel]
        if len(body) != iel:
            raise SimPduError(f"information element 0x{iei:02X} claims {iel} octets, only {len(body)} left")
        if iei == 0x00 and iel == 3:
            concat = Concat(ref=body[0], total=body[1], seq=body[2], ref_bits=8)
        elif iei == 0x08 and iel == 4:
            concat = Concat(ref=body[0] << 8 | body[1], total=body[2], seq=body[3], ref_bits=16)
        pos += 2 + iel
    if concat is not None and not (1 <= concat.seq <= concat.total):
        raise SimPduError(f"concatenation part {concat.seq} of {concat.total} is out of range")
    return concat


def _decode_ucs2(data: bytes) -> str:
    # UTF-16BE so that surrogate pairs (emoji) decode; a lone surrogate becomes U+FFFD.
    return data.decode("utf-16-be", errors="replace")


def parse_submit(pdu: str | bytes, *, has_sca: bool = True) -> SubmitPdu:
    """Parse an SMS-SUBMIT as handed to ``AT+CMGS`` in PDU mode (hex string or raw octets)."""
    if isinstance(pdu, str):
        cleaned = "".join(pdu.split())
        try:
            raw = bytes.fromhex(cleaned)
        except ValueError:
            raise SimPduError("PDU is not a hexadecimal string") from None
    else:
        raw = bytes(pdu)
    reader = _Reader(raw)
    smsc = None
    if has_sca:
        sca_len = reader.octet("SMSC address length")
        if sca_len:
            sca = reader.take(sca_len, "SMSC address")
            smsc = _format_number(_unswap_bcd(sca[1:], 2 * (sca_len - 1)), sca[0])
    tpdu_start = reader.pos
    first = reader.octet("first octet")
    if first & 0x03 != 0x01:
        raise SimPduError(f"first octet 0x{first:02X} is not an SMS-SUBMIT (TP-MTI must be 01)")
    vpf = (first >> 3) & 0x03
    reference = reader.octet("TP-MR")
    da_digits = reader.octet("TP-DA length")
    da_toa = reader.octet("TP-DA type of address")
    da_raw = reader.take(math.ceil(da_digits / 2), "TP-DA digits")
    if (da_toa & 0x70) == 0x50:
        destination = decode_gsm7(unpack_septets(da_raw, da_digits * 4 // 7))
    else:
        destination = _format_number(_unswap_bcd(da_raw, da_digits), da_toa)
    pid = reader.octet("TP-PID")
    dcs = reader.octet("TP-DCS")
    encoding = _alphabet(dcs)
    validity: int | bytes | None
    if vpf == 0b10:  # TS 23.040 §9.2.3.3: relative, one octet
        validity = reader.octet("TP-VP (relative)")
    elif vpf in (0b01, 0b11):  # enhanced or absolute, seven octets
        validity = reader.take(7, "TP-VP")
    else:
        validity = None
    udl = reader.octet("TP-UDL")
    udhi = bool(first & 0x40)
    ud_octets = math.ceil(udl * 7 / 8) if encoding == "gsm7" else udl
    if encoding != "gsm7" and udl > 140:
        raise SimPduError(f"TP-UDL {udl} exceeds 140 octets")
    if encoding == "gsm7" and udl > 160:
        raise SimPduError(f"TP-UDL {udl} exceeds 160 septets")
    ud = reader.take(ud_octets, "TP-UD")
    if reader.pos != len(raw):
        raise SimPduError(f"{len(raw) - reader.pos} octet(s) follow the user data announced by TP-UDL {udl}")
    concat = None
    header_octets = 0
    if udhi:
        if not ud:
            raise SimPduError("TP-UDHI is set but the user data is empty")
        header_octets = ud[0] + 1
        if header_octets > len(ud):
            raise SimPduError(f"UDHL {ud[0]} is longer than the user data")
        concat = _parse_udh(ud[1:header_octets])
    text: str | None
    if encoding == "gsm7":
        header_septets = math.ceil(header_octets * 8 / 7)
        fill = header_septets * 7 - header_octets * 8
        n_septets = udl - header_septets
        if n_septets < 0:
            raise SimPduError(f"TP-UDL {udl} septets is shorter than the {header_octets}-octet header")
        septets = unpack_septets(ud[header_octets:], n_septets, fill_bits=fill)
        text, data = decode_gsm7(septets), bytes(septets)
    else:
        data = ud[header_octets:]
        text = _decode_ucs2(data) if encoding == "ucs2" else None
    return SubmitPdu(
        smsc=smsc,
        tpdu_length=len(raw) - tpdu_start,
        reference=reference,
        destination=destination,
        destination_toa=da_toa,
        pid=pid,
        dcs=dcs,
        validity=validity,
        request_report=bool(first & 0x20),
        reject_duplicates=bool(first & 0x04),
        encoding=encoding,
        text=text,
        data=data,
        concat=concat,
    )


# ---------------------------------------------------------------------------------------------------------
# Building PDUs


@dataclass(frozen=True)
class PduPart:
    hex: str  # upper-case hex including the SCA field
    tpdu_length: int  # octets after the SCA: the <length> in +CMT/+CMGR/+CMGL/+CDS
    seq: int
    total: int


def choose_encoding(text: str) -> Encoding:
    """GSM-7 when every character fits the default alphabet, otherwise UCS2 (TS 23.038 §6.2.3)."""
    return "gsm7" if gsm7_encodable(text) else "ucs2"


def _units(text: str, encoding: Encoding) -> list[bytes | list[int]]:
    """Indivisible units: GSM-7 septet groups (ESC+code kept together) or UTF-16BE code points (pairs)."""
    if encoding == "gsm7":
        return [encode_gsm7(ch) for ch in text]
    return [ch.encode("utf-16-be", "surrogatepass") for ch in text]  # lone surrogates kept as-is


def _split(text: str, encoding: Encoding, capacity: int) -> list[list[bytes | list[int]]]:
    """Greedy split into parts of at most `capacity` septets (GSM-7) or octets (UCS2)."""
    parts: list[list[bytes | list[int]]] = [[]]
    used = 0
    for unit in _units(text, encoding):
        if used + len(unit) > capacity:
            parts.append([])
            used = 0
        parts[-1].append(unit)
        used += len(unit)
    return parts


# TS 23.040 §9.2.3.24: 140 octets of UD. Capacities per part with no header / with the concat header.
_SINGLE_CAPACITY = {"gsm7": 160, "ucs2": 140}
_MULTI_CAPACITY = {("gsm7", 8): 153, ("gsm7", 16): 152, ("ucs2", 8): 134, ("ucs2", 16): 132}


def _user_data(units: list[bytes | list[int]], encoding: Encoding, udh: bytes) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) for the units with an optional header; GSM-7 septets start on a septet boundary."""
    if encoding == "gsm7":
        septets = [s for unit in units for s in unit]  # type: ignore[union-attr]
        header_septets = math.ceil(len(udh) * 8 / 7)
        fill = header_septets * 7 - len(udh) * 8
        return header_septets + len(septets), udh + pack_septets(septets, fill_bits=fill)
    body = b"".join(units)  # type: ignore[arg-type]
    return len(udh) + len(body), udh + body


def _concat_header(ref: int, total: int, seq: int, ref16: bool) -> bytes:
    if ref16:  # IEI 0x08, 16-bit reference (TS 23.040 §9.2.3.24.8)
        return bytes([6, 0x08, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq])
    return bytes([5, 0x00, 3, ref & 0xFF, total, seq])  # IEI 0x00, 8-bit reference (§9.2.3.24.1)


def _finish(sca: bytes, tpdu: bytes, seq: int, total: int) -> PduPart:
    return PduPart(hex=(sca + tpdu).hex().upper(), tpdu_length=len(tpdu), seq=seq, total=total)


def build_deliver_parts(
    sender: str,
    text: str,
    *,
    timestamp: datetime,
    smsc: str | None = None,
    sender_toa: int | None = None,
    encoding: Encoding | None = None,
    concat_ref: int = 0,
    ref16: bool = False,
    pid: int = 0x00,
    status_report_indication: bool = False,
) -> list[PduPart]:
    """SMS-DELIVER PDU(s) for `text` from `sender` (TS 23.040 §9.2.2.1), split with a concat UDH if long.

    A sender that is not a number (letters) is encoded as an alphanumeric address (TOA 0xD0).
    """
    encoding = encoding or choose_encoding(text)
    if encoding == "8bit":
        raise SimPduError("the simulator builds text messages only (GSM-7 or UCS2)")
    if sender_toa is None and not sender.lstrip("+").isdigit():
        sender_toa = 0xD0
    address = _encode_address(sender, sender_toa)
    sca = _encode_sca(smsc)
    dcs = 0x00 if encoding == "gsm7" else 0x08
    whole = _split(text, encoding, _SINGLE_CAPACITY[encoding])
    multi_capacity = _MULTI_CAPACITY[(encoding, 16 if ref16 else 8)]
    chunks = whole if len(whole) == 1 else _split(text, encoding, multi_capacity)
    total = len(chunks)
    if total > 255:
        raise SimPduError(f"text needs {total} parts; a concatenated message has at most 255")
    parts = []
    for seq, units in enumerate(chunks, start=1):
        udh = _concat_header(concat_ref, total, seq, ref16) if total > 1 else b""
        udl, ud = _user_data(units, encoding, udh)
        # First octet: MTI 00, bit 2 TP-MMS=1 (no more messages), bit 5 TP-SRI, bit 6 TP-UDHI.
        first = 0x04 | (0x20 if status_report_indication else 0) | (0x40 if udh else 0)
        tpdu = bytes([first]) + address + bytes([pid, dcs]) + scts_octets(timestamp) + bytes([udl]) + ud
        parts.append(_finish(sca, tpdu, seq, total))
    return parts


def build_submit(
    destination: str,
    text: str,
    *,
    smsc: str | None = None,
    reference: int = 0,
    request_report: bool = False,
    validity: int | None = 0xA7,
    encoding: Encoding | None = None,
    pid: int = 0x00,
    destination_toa: int | None = None,
) -> PduPart:
    """One single-part SMS-SUBMIT (TS 23.040 §9.2.2.2), e.g. for a text-mode ``AT+CMGW``."""
    encoding = encoding or choose_encoding(text)
    if encoding == "8bit":
        raise SimPduError("the simulator builds text messages only (GSM-7 or UCS2)")
    units = _units(text, encoding)
    size = sum(len(u) for u in units)
    if size > _SINGLE_CAPACITY[encoding]:
        unit = "septets" if encoding == "gsm7" else "octets"
        raise SimPduError(f"text needs {size} {unit}; one part holds {_SINGLE_CAPACITY[encoding]}")
    udl, ud = _user_data(units, encoding, b"")
    # First octet: MTI 01, TP-VPF 10 (relative) when a validity is given, bit 5 TP-SRR.
    first = 0x01 | (0x10 if validity is not None else 0) | (0x20 if request_report else 0)
    vp = bytes([validity]) if validity is not None else b""
    dcs = 0x00 if encoding == "gsm7" else 0x08
    tpdu = (bytes([first, reference & 0xFF]) + _encode_address(destination, destination_toa)
            + bytes([pid, dcs]) + vp + bytes([udl]) + ud)
    return _finish(_encode_sca(smsc), tpdu, 1, 1)


def build_status_report(
    reference: int,
    recipient: str,
    *,
    submitted: datetime,
    discharged: datetime,
    status: int,
    smsc: str | None = None,
    recipient_toa: int | None = None,
) -> PduPart:
    """SMS-STATUS-REPORT (TS 23.040 §9.2.2.3) without the optional TP-PI and what it announces.

    First octet 0x06: MTI 10, TP-MMS=1, TP-SRQ=0 (the report answers an SMS-SUBMIT).
    """
    if not 0 <= status <= 0xFF:
        raise SimPduError(f"TP-ST {status} does not fit one octet")
    tpdu = (bytes([0x06, reference & 0xFF]) + _encode_address(recipient, recipient_toa)
            + scts_octets(submitted) + scts_octets(discharged) + bytes([status]))
    return _finish(_encode_sca(smsc), tpdu, 1, 1)

