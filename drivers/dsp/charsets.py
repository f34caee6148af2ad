"""Decoding of caller-ID name fields: ASCII, GB 2312 (China), JIS X 0201 (Japan).

* ETSI EN 300 659-3 and GR-30-CORE names are 8-bit characters, in practice ASCII.
* China: YD/T 1277.1-2003 lists GB 2312 among its normative references; names may arrive as EUC-CN
  byte pairs (both bytes 0xA1..0xFE), so never assume ASCII.
* Japan (NTT number display): 7-bit JIS X 0201 where the half-width katakana set is selected with the
  shift codes SO (0x0E, Shift Out) and SI (0x0F, Shift In) returns to the Roman set (ISO/IEC 2022
  convention; the Murata firmware decoder does the opposite and is marked provisional, so the direction
  can be swapped with ``so_selects_kana=False``). A kana byte 0x21..0x5F is U+FF61..U+FF9F.
  JIS X 0201 Roman differs from ASCII at 0x5C (YEN SIGN) and 0x7E (OVERLINE).

Decoding never raises: bytes that do not decode become U+FFFD, control characters are dropped.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["CHARSETS", "Charset", "decode_name"]

Charset = Literal["auto", "ascii", "latin-1", "gb2312", "jisx0201", "jis7"]
CHARSETS: tuple[str, ...] = ("auto", "ascii", "latin-1", "gb2312", "jisx0201", "jis7")

SO = 0x0E
SI = 0x0F
_KANA_BASE = 0xFF61 - 0x21  # 7-bit kana byte + this = half-width katakana code point
_ROMAN_DIFF = {0x5C: "\u00a5", 0x7E: "\u203e"}  # JIS X 0201 Roman vs ASCII


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")


def _roman(byte: int) -> str:
    return _ROMAN_DIFF.get(byte, chr(byte))


def _decode_jis7(data: bytes, so_selects_kana: bool) -> str:
    kana = False
    out: list[str] = []
    for raw in data:
        b = raw & 0x7F  # the NTT layer strips parity; tolerate it anyway
        if b in (SO, SI):
            kana = (b == SO) == so_selects_kana
            continue
        if b < 0x20 or b == 0x7F:
            continue
        if kana:
            out.append(chr(_KANA_BASE + b) if 0x21 <= b <= 0x5F else "\ufffd")
        else:
            out.append(_roman(b))
    return "".join(out)


def _decode_jisx0201_8bit(data: bytes) -> str:
    out: list[str] = []
    for b in data:
        if 0xA1 <= b <= 0xDF:
            out.append(chr(b - 0xA1 + 0xFF61))
        elif 0x20 <= b < 0x7F:
            out.append(_roman(b))
        elif b >= 0x80:
            out.append("\ufffd")
    return "".join(out)


def decode_name(data: bytes, charset: str = "auto", *, so_selects_kana: bool = True) -> str:
    """Name bytes to text. ``auto``: SO/SI present -> 7-bit JIS X 0201; all bytes < 0x80 -> ASCII;
    valid GB 2312 -> GB 2312; only 0xA1..0xDF high bytes -> 8-bit JIS X 0201; else Latin-1.
    (8-bit kana and GB 2312 overlap: a Japanese site should set ``jisx0201`` or ``jis7``.)"""
    if charset not in CHARSETS:
        raise ValueError(f"unknown name charset {charset!r}; choose one of {', '.join(CHARSETS)}")
    if charset == "auto":
        if any(b in (SO, SI) for b in data):
            charset = "jis7"
        elif all(b < 0x80 for b in data):
            charset = "ascii"
        else:
            try:
                return _printable(data.decode("gb2312"))
            except UnicodeDecodeError:
                pass
            if all(b < 0x80 or 0xA1 <= b <= 0xDF for b in data):
                charset = "jisx0201"
            else:
                charset = "latin-1"
    if charset == "jis7":
        return _decode_jis7(data, so_selects_kana)
    if charset == "jisx0201":
        return _decode_jisx0201_8bit(data)
    if charset == "gb2312":
        return _printable(data.decode("gb2312", errors="replace"))
    if charset == "ascii":
        return _printable(data.decode("ascii", errors="replace"))
    return _printable(data.decode("latin-1"))
