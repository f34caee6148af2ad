"""GSM 7-bit default alphabet, its extension table and septet packing (3GPP TS 23.038 §6).

Pure functions, no I/O. Text is mapped to *septets* (ints 0..127); an extension character costs two
septets (ESC 0x1B + code). Septets are packed little-endian into octets (TS 23.038 §6.1.2.1.1), with
optional leading fill bits so that text after a User Data Header starts on a septet boundary
(TS 23.040 §9.2.3.24).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ESC = 0x1B

# TS 23.038 §6.2.1, the GSM 7 bit default alphabet, indexed by septet value. Position 0x1B is the escape
# to the extension table and never maps to a character on its own (placeholder "\x1b" here).
DEFAULT_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(DEFAULT_ALPHABET) == 128

# TS 23.038 §6.2.1.1, the default extension table: code after ESC -> character.
EXTENSION_TABLE = {
    0x0A: "\f",  # page break
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

# Character -> septets, built once. The default table wins for a character present in both (none are).
_ENCODE: dict[str, tuple[int, ...]] = {}
for _code, _char in EXTENSION_TABLE.items():
    _ENCODE[_char] = (ESC, _code)
for _code, _char in enumerate(DEFAULT_ALPHABET):
    if _code != ESC:
        _ENCODE[_char] = (_code,)
del _code, _char

MAX_SEPTETS_SINGLE = 160  # 140 octets of TP-UD (TS 23.040 §9.2.3.16)


class Gsm7Error(ValueError):
    """Text holds a character outside the GSM 7-bit default alphabet and its extension table."""

    def __init__(self, char: str, position: int) -> None:
        self.char = char
        self.position = position
        super().__init__(
            f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the GSM 7-bit "
            "default alphabet or its extension table"
        )


def septets_for(char: str) -> tuple[int, ...] | None:
    """The septets that encode one character (1 or 2 of them), or None when it is not encodable."""
    return _ENCODE.get(char)


def is_encodable(text: str) -> bool:
    """True when every character is in the default alphabet or the extension table."""
    enc = _ENCODE
    return all(c in enc for c in text)


def septet_length(text: str) -> int:
    """Number of septets `text` needs (extension characters count two). Raises Gsm7Error."""
    enc = _ENCODE
    total = 0
    for i, c in enumerate(text):
        s = enc.get(c)
        if s is None:
            raise Gsm7Error(c, i)
        total += len(s)
    return total


def encode(text: str) -> list[int]:
    """Map text to a flat list of septets. Raises Gsm7Error naming the first unencodable character."""
    enc = _ENCODE
    out: list[int] = []
    extend = out.extend
    for i, c in enumerate(text):
        s = enc.get(c)
        if s is None:
            raise Gsm7Error(c, i)
        extend(s)
    return out


def decode(septets: Iterable[int]) -> str:
    """Map septets to text.

    ESC followed by a code missing from the extension table shows the default-table character for that
    code, and ESC ESC shows a space (TS 23.038 §6.2.1.1, notes to the extension table). A lone ESC at
    the very end (a sender that split ESC+code across parts) is dropped.
    """
    out: list[str] = []
    append = out.append
    escaped = False
    for s in septets:
        s &= 0x7F
        if escaped:
            escaped = False
            if s == ESC:
                append(" ")
            else:
                append(EXTENSION_TABLE.get(s) or DEFAULT_ALPHABET[s])
        elif s == ESC:
            escaped = True
        else:
            append(DEFAULT_ALPHABET[s])
    return "".join(out)


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first (TS 23.038 §6.1.2.1.1).

    `fill_bits` zero bits go first, so a header of N octets plus fill ends on a septet boundary
    (TS 23.040 §9.2.3.24). Unused high bits of the last octet are zero: TP-UDL says how many septets are
    real, so no CR padding is needed (that rule, §6.1.2.3.1, is for cell broadcast / USSD).
    """
    out = bytearray()
    acc = 0
    nbits = fill_bits
    for s in septets:
        acc |= (s & 0x7F) << nbits
        nbits += 7
        if nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits > 0:
        out.append(acc & 0xFF)
    return bytes(out)


def packed_length(septet_count: int, fill_bits: int = 0) -> int:
    """Octets that `septet_count` septets occupy after `fill_bits` fill bits."""
    return (septet_count * 7 + fill_bits + 7) // 8


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """Unpack `count` septets from `data`, skipping `fill_bits` leading bits.

    Raises ValueError when `data` is too short for `count` septets.
    """
    needed = packed_length(count, fill_bits)
    if len(data) < needed:
        raise ValueError(f"{count} septets need {needed} octets, only {len(data)} present")
    out: list[int] = []
    append = out.append
    acc = 0
    nbits = 0
    skip = fill_bits
    it = iter(data)
    while len(out) < count:
        if nbits < 7 + skip:
            acc |= next(it) << nbits
            nbits += 8
            continue
        if skip:
            acc >>= skip
            nbits -= skip
            skip = 0
            continue
        append(acc & 0x7F)
        acc >>= 7
        nbits -= 7
    return out
