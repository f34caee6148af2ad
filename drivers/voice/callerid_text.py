"""Caller ID as voice modems print it, turned into one :class:`CallerIdText` per call (sans-IO).

With ``AT+VCID=1`` (V.253, formatted) or the older ``AT#CID=1`` the modem decodes the FSK burst
itself and prints one tagged line per field between the first and second ring (or before the ring
on lines that send caller ID first, e.g. NTT Number Display)::

    DATE = 1127          DATE=1127            (month, day)
    TIME = 1405          TIME=1405            (hour, minute)
    NMBR = 0312345678    NMBR=P / NMBR=O      (private / unavailable, GR-30-CORE reason codes)
    NAME = TANAKA        NAME=O
    MESG = 080150        (parameters the modem did not understand, as hex)

Spacing around ``=`` varies by firmware; ZyXEL prints ``CALLER NUMBER: …`` (mgetty ``cnd.c`` lists the
variants). ``AT+VCID=2`` prints the whole frame as one hex line, which is decoded here too.

A block ends at a blank line, at ``RING``, when a tag repeats (a second call's block), or when the
driver calls :meth:`CallerIdTextParser.flush` after its own timeout (the parser has no clock): the
driver arms a ``trio.move_on_after`` while :attr:`CallerIdTextParser.pending` is true.

Caller ID has to be re-enabled after every reset: Conexant firmware forgets ``+VCID`` on ``ATZ``
(home-assistant/core #57765). :func:`callerid_enable_commands` gives the commands per modem family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from drivers.dsp.callerid import CallerIdFrameError, decode_class_frame
from drivers.voice.events import CallerIdText

__all__ = [
    "CALLERID_ENABLE",
    "CallerIdTextParser",
    "callerid_enable_commands",
    "parse_callerid_lines",
]

# Commands that switch on formatted caller ID, per modem family (see drivers.voice.v253.identify_family).
# V.253 defines +VCID; Rockwell-era and many Conexant firmwares still accept #CID.
CALLERID_ENABLE: dict[str, tuple[str, ...]] = {
    "conexant": ("AT+VCID=1",),  # CX93001 / CX93010 (Zoom 3095, LB-Link): +VCID=1, lost after ATZ
    "usr": ("AT+VCID=1",),  # USR 5637 (Conexant inside); older USR Sportster used #CID=1
    "silabs": ("AT+VCID=1",),  # Si24xx ISOmodem (AN93); +VCDT selects the line's CID scheme
    "generic": ("AT+VCID=1", "AT#CID=1"),  # try V.253 first, then the Rockwell command
}

_TAG_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z_' ]*?)\s*(?:=|:)\s*(.*?)\s*$")
_HEX_LINE = re.compile(r"^[0-9A-Fa-f]{6,}$")

# Tag spellings → field. mgetty cnd.c lists the ZyXEL and other variants.
_TAGS = {
    "DATE": "date",
    "TIME": "time",
    "NMBR": "number",
    "NUMBER": "number",
    "CALLER NUMBER": "number",
    "CALLER'S NUMBER": "number",
    "NAME": "name",
    "CALLER NAME": "name",
    "REASON FOR NO CALLER NUMBER": "reason_absent",
    "REASON FOR NO CALLER NAME": "name_absent",
    "DDN_NMBR": "dialled_number",
    "NDID": "dialled_number",
    "MESG": "message",
}

# Absence words some firmware prints instead of the GR-30-CORE letters.
_ABSENT_WORDS = {
    "P": "P",
    "PRIVATE": "P",
    "ANONYMOUS": "P",
    "BLOCKED": "P",
    "O": "O",
    "OUT OF AREA": "O",
    "OUT-OF-AREA": "O",
    "UNAVAILABLE": "O",
    "UNKNOWN": "O",
    "C": "C",  # NTT: public phone (公衆電話)
    "S": "S",  # NTT: service congestion
}


def callerid_enable_commands(family: str) -> tuple[str, ...]:
    """Commands to switch formatted caller ID on for ``family``; re-send them after every reset.

    For "generic" the driver sends them in order and keeps the first one answered with OK."""
    try:
        return CALLERID_ENABLE[family]
    except KeyError:
        raise ValueError(
            f"unknown modem family {family!r}; expected one of {', '.join(sorted(CALLERID_ENABLE))}"
        ) from None


def _mmdd(value: str) -> tuple[str, str] | None:
    if len(value) != 4 or not value.isdigit():
        return None
    month, day = int(value[:2]), int(value[2:])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return value[:2], value[2:]


def _hhmm(value: str) -> tuple[str, str] | None:
    if len(value) != 4 or not value.isdigit():
        return None
    if int(value[:2]) > 23 or int(value[2:]) > 59:
        return None
    return value[:2], value[2:]


def _class_frame_from_params(body: bytes) -> bytes:
    """Wrap bare MDMF parameters in a 0x80 frame with a correct checksum so the shared decoder reads them."""
    head = bytes((0x80, len(body)))
    return head + body + bytes(((-(sum(head) + sum(body))) & 0xFF,))


@dataclass
class _Block:
    values: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    message: bytes | None = None
    frame: object | None = None  # drivers.dsp.events.CallerId decoded from hex
    notes: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not self.lines


class CallerIdTextParser:
    """Feed modem lines one at a time; get a :class:`CallerIdText` when a block is complete.

    Lines that are not caller ID (``OK``, ``CONNECT``...) are ignored and do not end a block, so the
    driver may pass every line it reads. ``charset`` is used for names inside hex frames."""

    def __init__(self, *, charset: str = "auto") -> None:
        self._charset = charset
        self._block = _Block()

    @property
    def pending(self) -> bool:
        """A block has started: the driver should flush it after its timeout if nothing ends it."""
        return not self._block.empty()

    def feed_line(self, line: str) -> list[CallerIdText]:
        """One line from the modem (with or without its CR LF); returns the blocks it completed."""
        text = line.strip("\r\n\x00 ")
        upper = text.upper()
        if not text or upper == "RING" or upper.startswith("RING "):
            return self._flushed()
        if _HEX_LINE.match(text) and len(text) % 2 == 0:
            return self._hex_frame(text)
        match = _TAG_LINE.match(text)
        if match is None:
            return []
        key = _TAGS.get(" ".join(match.group(1).upper().split()))
        if key is None:
            return []
        out = []
        if key in self._block.values or (key == "message" and self._block.message is not None):
            out = self._flushed()  # a repeated tag begins the next call's block
        self._block.lines.append(text)
        value = match.group(2)
        if key == "message":
            self._message(value)
        else:
            self._block.values[key] = value
        return out

    def feed_lines(self, lines: list[str] | tuple[str, ...]) -> list[CallerIdText]:
        out: list[CallerIdText] = []
        for line in lines:
            out.extend(self.feed_line(line))
        return out

    def flush(self) -> CallerIdText | None:
        """End the current block now (blank line, RING, or the driver's timeout)."""
        block, self._block = self._block, _Block()
        if block.empty():
            return None
        return self._build(block)

    def _flushed(self) -> list[CallerIdText]:
        event = self.flush()
        return [] if event is None else [event]

    # ------------------------------------------------------------------------------------------------
    def _hex_frame(self, text: str) -> list[CallerIdText]:
        """``+VCID=2``: the whole SDMF/MDMF frame as one hex line; it stands alone, so it ends any
        open block first."""
        raw = bytes.fromhex(text)
        try:
            decoded = decode_class_frame(raw, lenient=True, charset=self._charset)
        except CallerIdFrameError:
            return []  # a bare number that happens to be hex, or noise: not a frame
        out = self._flushed()
        block = _Block(lines=[text], message=raw, frame=decoded)
        if decoded is None:
            block.notes.append(f"frame type 0x{raw[0]:02X} carries no caller ID")
        elif not decoded.checksum_ok:
            block.notes.append("checksum error in the raw frame (kept: line noise likely)")
        out.append(self._build(block))
        return out

    def _message(self, value: str) -> None:
        compact = value.replace(" ", "")
        if not compact or len(compact) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", compact):
            self._block.notes.append(f"MESG {value!r} is not hex")
            return
        raw = bytes.fromhex(compact)
        self._block.message = raw
        # Either a whole SDMF/MDMF frame (type, length, data, checksum) or bare MDMF parameters.
        for candidate in (raw, _class_frame_from_params(raw)):
            try:
                decoded = decode_class_frame(candidate, lenient=candidate is raw, charset=self._charset)
            except CallerIdFrameError:
                continue
            if decoded is not None:
                self._block.frame = decoded
                return
        self._block.notes.append(f"MESG {compact.upper()} is neither a caller-ID frame nor MDMF parameters")

    def _build(self, block: _Block) -> CallerIdText:
        v = block.values
        notes = list(block.notes)
        fields: dict = {}
        number = v.get("number")
        if number is not None:
            absent = _ABSENT_WORDS.get(number.upper())
            if absent is not None:
                fields["reason_absent"] = absent
            elif number:
                fields["number"] = number
        name = v.get("name")
        if name is not None:
            if len(name) == 1 and name.upper() in _ABSENT_WORDS:
                fields["name_absent"] = _ABSENT_WORDS[name.upper()]
            elif name:
                fields["name"] = name
        for key in ("reason_absent", "name_absent"):
            if key in v:
                word = v[key].upper()
                fields[key] = _ABSENT_WORDS.get(word, v[key])
        if "dialled_number" in v:
            fields["dialled_number"] = v["dialled_number"]
        date, time = v.get("date"), v.get("time")
        fields["date"], fields["time"] = date, time
        md = _mmdd(date) if date is not None else None
        hm = _hhmm(time) if time is not None else None
        if date is not None and md is None:
            notes.append(f"DATE {date!r} is not MMDD")
        if time is not None and hm is None:
            notes.append(f"TIME {time!r} is not HHMM")
        if md and hm:
            fields["datetime"] = f"{md[0]}-{md[1]}T{hm[0]}:{hm[1]}"
        frame = block.frame
        if frame is not None:
            # Fill what the text lines did not give from the decoded frame (MESG or +VCID=2).
            for key in ("number", "name", "reason_absent", "name_absent", "datetime", "dialled_number"):
                value = getattr(frame, key, None)
                if value is not None and fields.get(key) is None:
                    fields[key] = value
        return CallerIdText(
            message=block.message, lines=tuple(block.lines), notes=tuple(notes), **fields
        )


def parse_callerid_lines(
    lines: list[str] | tuple[str, ...] | str, *, charset: str = "auto"
) -> list[CallerIdText]:
    """Every caller-ID block in ``lines`` (a list, or text with line breaks), the last one flushed.

    Also the reader for Si ISOmodem complex event packets (``<DLE>X … <DLE>.``), whose payload is the
    same tagged text (Silicon Labs AN93 §7.1.4)."""
    if isinstance(lines, str):
        lines = lines.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    parser = CallerIdTextParser(charset=charset)
    out = parser.feed_lines(list(lines))
    last = parser.flush()
    if last is not None:
        out.append(last)
    return out

