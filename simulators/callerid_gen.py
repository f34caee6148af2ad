"""Caller-ID line signals for the simulators and the tests: FSK (Bell 202, V.23) and DTMF.

Written from the standards independently of ``drivers/dsp/`` (nothing is imported from there), so a
misreading of a spec cannot hide on both the sending and the receiving side of a test:

* message builders: Telcordia GR-30-CORE SDMF/MDMF (type, length, data, two's-complement checksum),
  ETSI EN 300 659-3 MDMF-style messages, NTT number display frames (DLE SOH header, 7-bit data with even
  parity, DLE doubling, CRC-16/KERMIT) and the ETSI EN 300 659-1 Annex B DTMF digit strings;
* line coding: channel seizure, mark run, async characters, continuous-phase FSK;
* DTMF synthesis (ITU-T Q.23 frequency pairs), white noise, and a G.711 µ-law round trip.

Samples are float64 with full scale 1.0 (a 0 dBm0 sine has amplitude 10^(-3.17/20), G.711).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "DTMF_FREQS",
    "async_bits",
    "callerid_burst",
    "class_message",
    "dtmf_callerid_digits",
    "dtmf_waveform",
    "even_parity",
    "fsk_waveform",
    "gb2312_name",
    "jis_x0201_name",
    "kermit_crc",
    "level_to_amplitude",
    "mdmf_callerid",
    "mdmf_message_waiting",
    "ntt_callerid",
    "ntt_frame",
    "sdmf_callerid",
    "sdmf_message_waiting",
    "ulaw_decode",
    "ulaw_encode",
    "ulaw_roundtrip",
    "white_noise",
]

SAMPLE_RATE = 8000
# Tone pairs in Hz: (mark = binary 1, space = binary 0).
BELL202_TONES = (1200.0, 2200.0)  # Bell 202, Telcordia GR-30-CORE
V23_TONES = (1300.0, 2100.0)  # ITU-T V.23 mode 2, ETSI EN 300 659-1, NTT number display
BAUD = 1200.0

DLE, SOH, STX, ETX = 0x10, 0x01, 0x02, 0x03


def level_to_amplitude(level_dbm0: float) -> float:
    """Peak amplitude of a sine at ``level_dbm0`` (G.711: 0 dBm0 is 3.17 dB below full scale)."""
    return 10.0 ** ((level_dbm0 - 3.17) / 20.0)


# ------------------------------------------------------------------------------------------------ FSK
def async_bits(data: bytes, *, stop_bits: int = 1) -> list[int]:
    """Async characters on the line: start bit 0, 8 data bits LSB first, ``stop_bits`` ones."""
    bits: list[int] = []
    for octet in data:
        bits.append(0)
        bits.extend((octet >> k) & 1 for k in range(8))
        bits.extend([1] * stop_bits)
    return bits


def fsk_waveform(
    bits: Sequence[int],
    *,
    tones: tuple[float, float] = BELL202_TONES,
    baud: float = BAUD,
    level_dbm0: float = -13.0,
    sample_rate: int = SAMPLE_RATE,
    phase: float = 0.0,
) -> np.ndarray:
    """Continuous-phase FSK: the instantaneous frequency follows the bit in force at each sample time
    (bit boundaries fall between samples at 8 kHz), and the phase is its running integral."""
    bit_arr = np.asarray(bits, dtype=np.int8)
    n = int(np.ceil(bit_arr.size * sample_rate / baud))
    which = np.minimum((np.arange(n) * baud / sample_rate).astype(np.int64), bit_arr.size - 1)
    freq = np.where(bit_arr[which] == 1, tones[0], tones[1])
    ph = phase + 2.0 * np.pi * np.cumsum(freq) / sample_rate
    return level_to_amplitude(level_dbm0) * np.sin(ph)


StandardName = Literal["bell202", "etsi", "ntt"]


def callerid_burst(
    message: bytes,
    *,
    standard: StandardName = "bell202",
    seizure: bool | None = None,
    mark_bits: int | None = None,
    stop_bits: int | None = None,
    trailing_mark_bits: int = 10,
    level_dbm0: float = -13.0,
    lead_silence_ms: float = 100.0,
    tail_silence_ms: float = 100.0,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """A whole FSK caller-ID transmission with silence around it.

    Defaults per standard: GR-30-CORE / EN 300 659-1 send a channel seizure of 30 x 0x55 (300 alternating
    bits, starting with a 0 as a start bit) then 180 mark bits (80 for call-waiting CID: pass
    ``seizure=False, mark_bits=80``); NTT sends no seizure and a mark run (75 bits here, as spandsp's
    JCLIP transmitter) and 4 stop bits per character.
    """
    ntt = standard == "ntt"
    if seizure is None:
        seizure = not ntt
    if mark_bits is None:
        mark_bits = 75 if ntt else 180
    if stop_bits is None:
        stop_bits = 4 if ntt else 1
    bits: list[int] = []
    if seizure:
        bits.extend([0, 1] * 150)
    bits.extend([1] * mark_bits)
    bits.extend(async_bits(message, stop_bits=stop_bits))
    bits.extend([1] * trailing_mark_bits)
    tones = BELL202_TONES if standard == "bell202" else V23_TONES
    body = fsk_waveform(bits, tones=tones, level_dbm0=level_dbm0, sample_rate=sample_rate)
    lead = np.zeros(int(round(lead_silence_ms * sample_rate / 1000.0)))
    tail = np.zeros(int(round(tail_silence_ms * sample_rate / 1000.0)))
    return np.concatenate((lead, body, tail))


def burst_message_end(
    message: bytes,
    *,
    standard: StandardName = "bell202",
    seizure: bool | None = None,
    mark_bits: int | None = None,
    stop_bits: int | None = None,
    lead_silence_ms: float = 100.0,
    sample_rate: int = SAMPLE_RATE,
) -> float:
    """Seconds from the start of ``callerid_burst(...)`` to the end of the last byte's first stop bit."""
    ntt = standard == "ntt"
    seizure = (not ntt) if seizure is None else seizure
    mark_bits = (75 if ntt else 180) if mark_bits is None else mark_bits
    stop_bits = (4 if ntt else 1) if stop_bits is None else stop_bits
    n_bits = (300 if seizure else 0) + mark_bits + len(message) * (9 + stop_bits) - (stop_bits - 1)
    lead = int(round(lead_silence_ms * sample_rate / 1000.0)) / sample_rate
    return lead + n_bits / BAUD


# ---------------------------------------------------------------------------------- CLASS / ETSI
def class_message(msg_type: int, body: bytes) -> bytes:
    """type, length, body, checksum: the two's complement of the mod-256 sum of the other bytes
    (GR-30-CORE; EN 300 659-3 uses the same checksum)."""
    if len(body) > 255:
        raise ValueError(f"message body of {len(body)} bytes exceeds the 255-byte length field")
    head = bytes((msg_type & 0xFF, len(body)))
    total = sum(head) + sum(body)
    return head + body + bytes(((0x100 - (total & 0xFF)) & 0xFF,))


def _tlv(params: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in params:
        if len(value) > 255:
            raise ValueError(f"parameter 0x{code:02X} value is longer than 255 bytes")
        out += bytes((code, len(value))) + value
    return bytes(out)


def sdmf_callerid(datetime_mmddhhmm: str, number: str | None = None, *, reason: str | None = None) -> bytes:
    """SDMF (type 0x04): 8 ASCII date/time digits then the number, or a single 'O'/'P'."""
    tail = number if number is not None else (reason or "O")
    return class_message(0x04, (datetime_mmddhhmm + tail).encode("ascii"))


def sdmf_message_waiting(active: bool) -> bytes:
    """SDMF message waiting (type 0x06): three 0x42 to switch the indicator on, three 0x6F off."""
    return class_message(0x06, bytes([0x42 if active else 0x6F] * 3))


def mdmf_callerid(
    *,
    datetime_mmddhhmm: str | None = None,
    number: str | None = None,
    name: bytes | str | None = None,
    reason_absent: str | None = None,
    name_absent: str | None = None,
    extra: Sequence[tuple[int, bytes]] = (),
    msg_type: int = 0x80,
) -> bytes:
    """MDMF call set-up (0x80) with parameters 0x01 date/time, 0x02 number, 0x04 number absent,
    0x07 name, 0x08 name absent (GR-30-CORE; EN 300 659-3 uses the same codes)."""
    params: list[tuple[int, bytes]] = []
    if datetime_mmddhhmm is not None:
        params.append((0x01, datetime_mmddhhmm.encode("ascii")))
    if number is not None:
        params.append((0x02, number.encode("ascii")))
    if reason_absent is not None:
        params.append((0x04, reason_absent.encode("ascii")))
    if name is not None:
        params.append((0x07, name.encode("ascii") if isinstance(name, str) else name))
    if name_absent is not None:
        params.append((0x08, name_absent.encode("ascii")))
    params.extend(extra)
    return class_message(msg_type, _tlv(params))


def mdmf_message_waiting(active: bool, *, datetime_mmddhhmm: str | None = None) -> bytes:
    """MDMF message waiting (0x82) with the visual indicator parameter 0x0B: 0xFF on, 0x00 off."""
    params: list[tuple[int, bytes]] = []
    if datetime_mmddhhmm is not None:
        params.append((0x01, datetime_mmddhhmm.encode("ascii")))
    params.append((0x0B, bytes((0xFF if active else 0x00,))))
    return class_message(0x82, _tlv(params))


# ------------------------------------------------------------------------------------------- NTT
def even_parity(byte7: int) -> int:
    """7-bit character with the even-parity bit in bit 7."""
    b = byte7 & 0x7F
    return b | (0x80 if bin(b).count("1") % 2 else 0)


def kermit_crc(data: bytes) -> int:
    """CRC-16/KERMIT: poly x^16+x^12+x^5+1 processed LSB first (0x8408), init 0, no final XOR."""
    crc = 0
    for octet in data:
        crc ^= octet
        for _ in range(8):
            crc = (crc >> 1) ^ (0x8408 if crc & 1 else 0)
    return crc


def ntt_frame(
    message_type: int,
    params: Sequence[tuple[int, bytes]],
    *,
    header: int = 0x07,
    length_counts_stuffing: bool = False,
) -> bytes:
    """NTT number display frame: DLE SOH header DLE STX type len params DLE ETX CRClo CRChi.

    Every byte up to ETX is 7-bit with even parity; a DLE inside length or data is sent twice; the
    CRC-16/KERMIT covers header .. ETX as sent (parity bits and doubled DLEs included), low byte first
    (spandsp ``adsi.c``, Asterisk ``callerid.c``). The length counts the message bytes without the
    doubling unless ``length_counts_stuffing``.
    """
    body = _tlv(params)

    def stuff(raw: bytes) -> bytes:
        return b"".join(bytes((c, c)) if c == DLE else bytes((c,)) for c in raw)

    stuffed_body = stuff(body)
    length = len(stuffed_body) if length_counts_stuffing else len(body)
    if length > 0x7F:
        raise ValueError(f"NTT message of {length} bytes does not fit the 7-bit length field")
    plain = bytes((DLE, SOH, header, DLE, STX)) + stuff(bytes((message_type, length))) + stuffed_body
    plain += bytes((DLE, ETX))
    wire = bytes(even_parity(c) for c in plain)
    crc = kermit_crc(wire[2:])
    return wire + bytes((crc & 0xFF, crc >> 8))


def ntt_callerid(
    number: str | None = None,
    *,
    reason_absent: str | None = None,
    number_type: tuple[int, int] | None = None,
    dialled_number: str | None = None,
    name: bytes | None = None,
    message_type: int = 0x40,
) -> bytes:
    """Type 0x40 caller-number delivery: 0x02 number, 0x21 (type, plan), 0x04 reason (P/O/C/S),
    0x09 dialled number, 0x07 name (JIS X 0201 7-bit with SO/SI, see ``jis_x0201_name``)."""
    params: list[tuple[int, bytes]] = []
    if number is not None:
        params.append((0x02, number.encode("ascii")))
    if number_type is not None:
        params.append((0x21, bytes(number_type)))
    if reason_absent is not None:
        params.append((0x04, reason_absent.encode("ascii")))
    if dialled_number is not None:
        params.append((0x09, dialled_number.encode("ascii")))
    if name is not None:
        params.append((0x07, name))
    return ntt_frame(message_type, params)


# ------------------------------------------------------------------------------------------ names
SO, SI = 0x0E, 0x0F


def jis_x0201_name(text: str) -> bytes:
    """7-bit JIS X 0201: half-width katakana (U+FF61..U+FF9F) after SO as 0x21..0x5F, Roman after SI
    (ISO/IEC 2022 shift convention)."""
    out = bytearray()
    kana = False
    for ch in text:
        cp = ord(ch)
        if 0xFF61 <= cp <= 0xFF9F:
            if not kana:
                out.append(SO)
                kana = True
            out.append(cp - 0xFF61 + 0x21)
        elif cp < 0x80:
            if kana:
                out.append(SI)
                kana = False
            out.append(cp)
        else:
            raise ValueError(f"{ch!r} is not in JIS X 0201")
    if kana:
        out.append(SI)
    return bytes(out)


def gb2312_name(text: str) -> bytes:
    """China: YD/T 1277.1 references GB 2312 for names (EUC-CN bytes)."""
    return text.encode("gb2312")


# ------------------------------------------------------------------------------------------- DTMF
# ITU-T Q.23 keypad: row (low group) and column (high group) frequencies.
DTMF_FREQS: dict[str, tuple[float, float]] = {}
for _r, _row in enumerate(("123A", "456B", "789C", "*0#D")):
    for _c, _key in enumerate(_row):
        DTMF_FREQS[_key] = ((697.0, 770.0, 852.0, 941.0)[_r], (1209.0, 1336.0, 1477.0, 1633.0)[_c])

DtmfVariant = Literal["A-C", "A-#", "D-C", "#"]


def dtmf_callerid_digits(
    number: str | None = None,
    *,
    variant: DtmfVariant = "A-C",
    reason: str | None = None,
    redirect: str | None = None,
) -> str:
    """Digit strings of ETSI EN 300 659-1 Annex B (formats as listed in spandsp ``adsi.h``):

    * ``A-C``: ``A<number>[D<redirect>][B<code>]C``; code 00 = unavailable ('O'), 10 = restricted ('P');
    * ``A-#``: ``A<number>#``, or ``D1#`` restricted ('P'), ``D2#`` international ('I'), ``D3#`` technical
      reasons ('O');
    * ``D-C``: ``D<number>C`` (Taiwan, Kuwait);
    * ``#``: ``<number>#`` with no start digit (Denmark, Netherlands).
    """
    if variant == "A-C":
        s = "A" + (number or "")
        if redirect:
            s += "D" + redirect
        if reason is not None:
            s += "B" + {"O": "00", "P": "10"}[reason]
        return s + "C"
    if variant == "A-#":
        if reason is not None:
            return "D" + {"P": "1", "I": "2", "O": "3"}[reason] + "#"
        return "A" + (number or "") + "#"
    if variant == "D-C":
        return "D" + (number or "") + "C"
    if variant == "#":
        return (number or "") + "#"
    raise ValueError(f"unknown DTMF caller-ID variant {variant!r}")


def dtmf_waveform(
    digits: str,
    *,
    on_ms: float = 70.0,
    off_ms: float = 70.0,
    level_dbm0: float = -10.0,
    twist_db: float = 0.0,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Tone pairs per digit (``level_dbm0`` per tone, high group ``twist_db`` above the low group),
    each followed by ``off_ms`` of silence."""
    on = int(round(on_ms * sample_rate / 1000.0))
    off = int(round(off_ms * sample_rate / 1000.0))
    t = np.arange(on) / sample_rate
    a_low = level_to_amplitude(level_dbm0)
    a_high = level_to_amplitude(level_dbm0 + twist_db)
    pieces = []
    for d in digits:
        if d not in DTMF_FREQS:
            raise ValueError(f"{d!r} is not a DTMF digit")
        lo, hi = DTMF_FREQS[d]
        pieces.append(a_low * np.sin(2 * np.pi * lo * t) + a_high * np.sin(2 * np.pi * hi * t))
        pieces.append(np.zeros(off))
    return np.concatenate(pieces) if pieces else np.zeros(0)


# ---------------------------------------------------------------------------------- line impairments
def white_noise(n: int, level_dbm0: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise whose total power is ``level_dbm0``."""
    power = 0.5 * level_to_amplitude(level_dbm0) ** 2
    return rng.standard_normal(n) * np.sqrt(power)


def ulaw_encode(x: np.ndarray) -> np.ndarray:
    """ITU-T G.711 µ-law: 14-bit magnitude + bias 33, 8 segments of 16 steps, bits inverted."""
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 8192.0), -8192, 8191).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0x00)
    mag = np.minimum(np.abs(pcm), 8158) + 33  # 33 .. 8191
    seg = np.floor(np.log2(mag)).astype(np.int32) - 5  # 0 .. 7
    mant = (mag >> (seg + 1)) & 0x0F
    return (~(sign | (seg << 4) | mant) & 0xFF).astype(np.uint8)


def ulaw_decode(codes: np.ndarray) -> np.ndarray:
    c = ~np.asarray(codes, dtype=np.int32) & 0xFF
    seg = (c >> 4) & 0x07
    mant = c & 0x0F
    mag = (((mant << 1) + 33) << seg) - 33
    return np.where(c & 0x80, -mag, mag) / 8192.0


def ulaw_roundtrip(x: np.ndarray) -> np.ndarray:
    return ulaw_decode(ulaw_encode(x))
