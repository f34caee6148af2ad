"""ITU-T V.253 voice modems, sans-IO: the DLE-shielded stream codec, voice AT commands, capability parsers.

No I/O and no clock in here (the trio driver owns the port and the time, in the style of h11):

* :class:`DleDecoder` turns what the modem sends into events: ``Audio`` (unescaped), ``EndOfStream``,
  ``CommandText`` (AT response bytes outside a stream) and the line events of
  :mod:`drivers.voice.events` (ring, DTMF, tones, hook, loop...). A DLE pair split across two reads is
  joined; unknown codes become :class:`~drivers.voice.events.UnknownDleCode`, never an exception.
* :func:`escape` / :class:`PlaybackEncoder` build what the host sends while playing (V.253 §8.3).
* AT command builders for the voice command set (V.253 §9, support commands) with argument checks.
* Parsers for ``AT+VSM=?``, ``AT+VLS=?``, range answers (``AT-STE=?``, ``AT+VTD=?``), identity
  (``ATI``, ``+FMI``, ``+FMM``), and :func:`choose_format`, which picks the sample format from what
  the modem lists instead of hard-coding a compression id (ids differ between chipsets).

Clause numbers are those of ITU-T V.253 (02/98): §7.3 ``<DLE>`` codes sent to the DTE, §7.5 DTMF event
report sequence, §8.3 ``<DLE>`` codes sent to the DCE. Chipset facts come from the Conexant command
reference 100722A (Tables 6-2, 6-3, 6-6), the USRobotics 56K command reference (Table 6-2, +VSM),
Silicon Labs AN93 (Table 112), ZyXEL manuals and mgetty/vgetty ``voice/libvoice/IS_101.c``; see
docs/voice-modems.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from drivers.voice.callerid_text import callerid_enable_commands
from drivers.voice.events import (
    DtmfDigit,
    DtmfToneEnd,
    DtmfToneStart,
    Handset,
    LineEvent,
    LoopBreak,
    Overrun,
    PolarityReversal,
    Ring,
    ToneEvent,
    Underrun,
    UnknownDleCode,
)

__all__ = [
    "ABORT_RECEIVE",
    "ABORT_TRANSMIT",
    "CLEAR_TRANSMIT",
    "DCE_CODES",
    "DLE",
    "END_TRANSMIT",
    "EVENT_NAMES",
    "Audio",
    "CommandText",
    "ComplexEvent",
    "DleDecoder",
    "EndOfStream",
    "FamilyProfile",
    "IntRanges",
    "LineSelectOption",
    "ModemIdentity",
    "NoUsableVoiceFormat",
    "PlaybackEncoder",
    "StreamNotice",
    "VoiceCommandError",
    "VoiceFormat",
    "VoiceProtocolError",
    "VsmCapabilities",
    "VsmOption",
    "choose_format",
    "encode_command",
    "escape",
    "family_profile",
    "identify_family",
    "parse_fclass",
    "parse_identity",
    "parse_ranges",
    "parse_vls_options",
    "parse_vsm_options",
]

# T.50 control characters used by the shielding (V.253 §7.3, §8.3).
DLE = 0x10
ETX = 0x03
SUB = 0x1A
CAN = 0x18

# ---------------------------------------------------------------------------------- host -> modem
# V.253 §8.3 (Conexant 100722A Table 6-3): <DLE><ETX> ends voice transmit after the buffered audio
# has played ("stream command"); <DLE><CAN> clears the transmit buffer ("immediate command");
# <DLE>! aborts a voice receive. vgetty interrupts playback with <DLE><CAN><DLE><ETX>.
END_TRANSMIT = bytes((DLE, ETX))
CLEAR_TRANSMIT = bytes((DLE, CAN))
ABORT_TRANSMIT = CLEAR_TRANSMIT + END_TRANSMIT
ABORT_RECEIVE = bytes((DLE, ord("!")))
PAUSE_TRANSMIT = bytes((DLE, ord("p")))  # §8.3.2
RESUME_TRANSMIT = bytes((DLE, ord("r")))  # §8.3.2
VOLUME_UP = bytes((DLE, ord("u")))  # §8.3.1
VOLUME_DOWN = bytes((DLE, ord("d")))  # §8.3.1


class VoiceProtocolError(Exception):
    """The host asked the codec for something the protocol does not allow (e.g. audio after the end)."""


class VoiceCommandError(ValueError):
    """A voice AT command argument is out of range; the message names the command and the limit."""


class NoUsableVoiceFormat(LookupError):
    """The modem lists no sample format this gateway can play and record."""


# ---------------------------------------------------------------------------------- stream events
@dataclass(frozen=True, slots=True)
class Audio:
    """Voice samples received (DLE shielding removed), in the format selected with +VSM."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """``<DLE><ETX>``: the modem ended the voice data state (V.253 §7.3)."""


@dataclass(frozen=True, slots=True)
class CommandText:
    """Bytes outside a voice stream: AT responses (``OK``, ``VCON``, ``RING``, caller-ID lines)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ComplexEvent:
    """``<DLE>X … <DLE>.``: a complex event report (V.253 §7.1.2); Si ISOmodems put caller ID and
    distinctive ring in it (AN93 Table 112). ``complete`` is False when it was cut off."""

    payload: bytes
    complete: bool = True


@dataclass(frozen=True, slots=True)
class StreamNotice:
    """Codes about the stream itself, not the line: ``timing_mark`` (T), ``invalid_voice_format`` (E),
    ``lost_data`` (Y), ``xon`` (Q), ``xoff`` (S) (vgetty IS_101.c; V.253 event 30/31)."""

    kind: str


StreamEvent = Audio | EndOfStream | CommandText | ComplexEvent | StreamNotice | LineEvent


# ------------------------------------------------------------------------------- modem -> host codes
@dataclass(frozen=True)
class DleCode:
    code: int
    meaning: str
    source: str  # where the code is defined
    make: Callable[[], object] | None  # None: handled by the decoder itself


def _tone(name: str) -> Callable[[], ToneEvent]:
    return lambda: ToneEvent(name)


def _codes() -> dict[int, DleCode]:
    v253 = "V.253 §7.3"
    table: list[tuple[str | int, str, str, Callable[[], object] | None]] = [
        (DLE, "data byte 0x10", v253, None),
        (SUB, "two data bytes 0x10 0x10", "V.253 §7.3; AN93 Table 112", None),
        (ETX, "end of voice stream", v253, None),
        ("X", "complex event report begins", "V.253 §7.1.2; AN93 Table 112", None),
        (".", "complex event report ends", "V.253 §7.1.2; AN93 Table 112", None),
        ("/", "DTMF tone began (shielding start)", "V.253 §7.5", None),
        ("~", "DTMF tone ended (0x7E)", "V.253 §7.5", None),
        (0x7F, "DTMF tone ended (0x7F)", "AN93 Table 112", None),
        ("R", "ring", v253, Ring),
        ("b", "busy", v253, _tone("busy")),
        ("K", "busy (USR)", "vgetty IS_101.c", _tone("busy")),
        ("d", "dial tone", v253, _tone("dialtone")),
        ("i", "dial tone (alternate)", "vgetty IS_101.c", _tone("dialtone")),
        ("r", "ringback", v253, _tone("ringback")),
        ("s", "silence: no voice energy since the start (presumed hang-up)", v253, _tone("silence")),
        ("q", "quiet: voice then silence (presumed end of message)", v253, _tone("quiet")),
        ("c", "fax calling tone (1100 Hz)", v253, _tone("fax_calling")),
        ("m", "fax calling tone (alternate)", "vgetty IS_101.c", _tone("fax_calling")),
        ("e", "data calling tone (1300 Hz)", v253, _tone("data_calling")),
        ("a", "fax or data answer tone (2100 Hz)", v253, _tone("answer_tone")),
        ("f", "data answer tone (2225 Hz)", "V.253 §7.3; USR Table 6-2", _tone("data_answer")),
        ("J", "special information tone", v253, _tone("sit")),
        ("$", "bong tone", v253, _tone("bong")),
        ("w", "call waiting beep", v253, _tone("call_waiting")),
        ("v", "voice detected", "vgetty IS_101.c", _tone("voice")),
        ("V", "voice detected (alternate)", "vgetty IS_101.c", _tone("voice")),
        ("t", "TDD (V.18 Baudot) detected", v253, _tone("tdd")),
        ("h", "local handset on hook", v253, lambda: Handset("down", "local")),
        ("H", "local handset off hook", v253, lambda: Handset("up", "local")),
        ("p", "extension phone on hook", "V.253 event 24; Conexant", lambda: Handset("down", "extension")),
        ("P", "extension phone off hook", "V.253 event 24; Conexant", lambda: Handset("up", "extension")),
        ("l", "loop current interruption", v253, LoopBreak),
        ("L", "loop current polarity reversal", v253, PolarityReversal),
        ("u", "transmit buffer underrun", v253, Underrun),
        ("o", "receive buffer overrun", v253, Overrun),
        ("T", "timing mark", "V.253 §5.4", lambda: StreamNotice("timing_mark")),
        ("E", "invalid voice data format", "V.253 event 30", lambda: StreamNotice("invalid_voice_format")),
        ("Y", "lost data", "V.253 event 31; vgetty", lambda: StreamNotice("lost_data")),
        ("Q", "XON", "vgetty IS_101.c", lambda: StreamNotice("xon")),
        ("S", "XOFF", "vgetty IS_101.c", lambda: StreamNotice("xoff")),
    ]
    for digit in "0123456789*#ABCD":
        table.append((digit, f"DTMF {digit}", v253, None))
    out: dict[int, DleCode] = {}
    for key, meaning, source, make in table:
        code = key if isinstance(key, int) else ord(key)
        out[code] = DleCode(code, meaning, source, make)
    return out


DCE_CODES: dict[int, DleCode] = _codes()
_DTMF = frozenset(b"0123456789*#ABCD")
_DTMF_END = frozenset((0x7E, 0x7F))  # '~' in V.253; AN93 lists 0x7F: accept both
MAX_COMPLEX_EVENT = 512  # a CID packet is < 300 bytes; beyond this the packet terminator was lost


class DleDecoder:
    """Modem → host byte stream to events (V.253 §7.3), in and out of the voice data state.

    Call :meth:`start_stream` when the modem answered ``CONNECT`` to ``AT+VRX``: from then on bytes are
    audio until ``<DLE><ETX>``, after which they are command text again (the ``OK`` or ``VCON`` that
    follows may arrive in the same read). Outside a stream the modem still reports events with DLE
    codes (voice command mode), which are decoded the same way.

    DTMF: with ``AT-STE``/``+VTD`` edge reporting the modem sends ``<DLE>/ <DLE>digit … <DLE>~``
    (V.253 §7.5); repeats inside the edges are one press. Firmware without edges repeats
    ``<DLE>digit`` about every 70 ms while the key is held (vgetty IS_101.c; thess/callattendant #13):
    a repeat of the same digit less than ``dtmf_repeat_gap`` seconds after the previous report is the
    same press. The time comes from the audio sample clock during a stream (``bytes_per_second``), or
    from ``now`` passed to :meth:`feed`; without either, every unshielded report counts as a press.

    ``ignore_while_streaming``: codes to drop during a stream (USR reports spurious ``<DLE>d`` while
    playing or recording; vgetty US_Robotics.c ignores it). They are counted in :attr:`ignored`.
    """

    def __init__(
        self,
        *,
        bytes_per_second: int | None = None,
        dtmf_repeat_gap: float = 0.1,
        ignore_while_streaming: Iterable[int] = (),
    ) -> None:
        self.bytes_per_second = bytes_per_second
        self.dtmf_repeat_gap = dtmf_repeat_gap
        self._ignore = frozenset(ignore_while_streaming)
        self.streaming = False
        self.audio_bytes = 0  # unescaped audio bytes since start_stream(): exact recording accounting
        self.ignored = 0
        self._after_dle = False
        self._packet: bytearray | None = None
        self._shielded = False  # between <DLE>/ and <DLE>~
        self._digit: str | None = None  # the press in progress
        self._digit_time: float | None = None

    # -- control ---------------------------------------------------------------------------------------
    def start_stream(self, *, bytes_per_second: int | None = None) -> None:
        """The modem entered the voice receive state (``CONNECT`` after ``AT+VRX``)."""
        if bytes_per_second is not None:
            self.bytes_per_second = bytes_per_second
        self.streaming = True
        self.audio_bytes = 0

    def stop_stream(self) -> None:
        """Leave the stream without a ``<DLE><ETX>`` (the port was reset or the modem was lost)."""
        self.streaming = False

    @property
    def recorded_seconds(self) -> float | None:
        if not self.bytes_per_second:
            return None
        return self.audio_bytes / self.bytes_per_second

    # -- decoding --------------------------------------------------------------------------------------
    def feed(self, data: bytes, now: float | None = None) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        plain = bytearray()  # audio or text not yet emitted, kept in order with the events
        pos, end = 0, len(data)
        if self._after_dle and end:
            self._after_dle = False
            self._code(data[0], plain, out, now)
            pos = 1
        while pos < end:
            hit = data.find(DLE, pos)
            stop = end if hit < 0 else hit
            if stop > pos:
                self._plain(data[pos:stop], plain)
            if hit < 0:
                break
            if hit + 1 == end:
                self._after_dle = True  # the code byte comes in the next read
                break
            self._code(data[hit + 1], plain, out, now)
            pos = hit + 2
        self._flush_plain(plain, out)
        return out

    def _plain(self, chunk: bytes | bytearray, plain: bytearray) -> None:
        if self._packet is not None:
            self._packet += chunk
            if len(self._packet) > MAX_COMPLEX_EVENT:
                # Terminator lost: give the packet up rather than swallow the stream.
                self._packet = None
            return
        plain += chunk
        if self.streaming:
            self.audio_bytes += len(chunk)

    def _flush_plain(self, plain: bytearray, out: list[StreamEvent]) -> None:
        if plain:
            out.append(Audio(bytes(plain)) if self.streaming else CommandText(bytes(plain)))
            plain.clear()

    def _clock(self, now: float | None) -> float | None:
        if self.streaming and self.bytes_per_second:
            return self.audio_bytes / self.bytes_per_second
        return now

    def _code(self, code: int, plain: bytearray, out: list[StreamEvent], now: float | None) -> None:
        if code == DLE:
            self._plain(b"\x10", plain)
            return
        if code == SUB:  # Conexant/AN93: <DLE><SUB> stands for two data DLEs
            self._plain(b"\x10\x10", plain)
            return
        if self._packet is not None and code == ord("."):
            self._flush_plain(plain, out)
            out.append(ComplexEvent(bytes(self._packet)))
            self._packet = None
            return
        if self.streaming and code in self._ignore:
            self.ignored += 1
            return
        # Every other code is an event: emit the audio before it so order is kept.
        self._flush_plain(plain, out)
        if code == ETX:
            if self._packet is not None:
                out.append(ComplexEvent(bytes(self._packet), complete=False))
                self._packet = None
            self.streaming = False
            out.append(EndOfStream())
            return
        if code == ord("X"):
            self._packet = bytearray()
            return
        if code in _DTMF:
            event = self._dtmf(chr(code), self._clock(now))
            if event is not None:
                out.append(event)
            return
        if code == ord("/"):
            self._shielded = True
            self._digit = None
            out.append(DtmfToneStart())
            return
        if code in _DTMF_END:
            out.append(DtmfToneEnd(self._digit))
            self._shielded = False
            self._digit = None
            return
        entry = DCE_CODES.get(code)
        if entry is None or entry.make is None:
            out.append(UnknownDleCode(code))
            return
        out.append(entry.make())  # type: ignore[arg-type]

    def _dtmf(self, digit: str, t: float | None) -> DtmfDigit | None:
        same = digit == self._digit
        if same and self._shielded:
            repeat = True
        elif same and t is not None and self._digit_time is not None:
            repeat = t - self._digit_time < self.dtmf_repeat_gap
        else:
            repeat = False
        self._digit = digit
        self._digit_time = t
        return None if repeat else DtmfDigit(digit)


# ---------------------------------------------------------------------------------- host -> modem audio
_DLE_RUN = re.compile(rb"\x10\x10?")


def escape(audio: bytes | bytearray | memoryview, *, pair_with_sub: bool = False) -> bytes:
    """Shield audio for voice transmit: each data 0x10 becomes ``<DLE><DLE>`` (V.253 §8.3).

    ``pair_with_sub``: send two consecutive data 0x10 as ``<DLE><SUB>`` (only for modems that list
    it for the host direction)."""
    data = bytes(audio)
    if not pair_with_sub:
        return data.replace(b"\x10", b"\x10\x10")
    return _DLE_RUN.sub(lambda m: b"\x10\x1a" if len(m.group()) == 2 else b"\x10\x10", data)


class PlaybackEncoder:
    """Splits audio into escaped chunks for flow-controlled writes, and keeps the byte accounting.

    Each chunk carries ``chunk_ms`` of audio (whole samples); the driver writes one chunk at a time
    so cancellation and ``<DLE><CAN>`` take effect within one chunk. ``wire_bytes`` counts what went
    to the port (with the shielding), ``audio_bytes`` the samples."""

    def __init__(self, fmt: VoiceFormat, *, chunk_ms: int = 20, pair_with_sub: bool = False) -> None:
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        self.format = fmt
        self.pair_with_sub = pair_with_sub
        width = fmt.bytes_per_sample
        self.chunk_bytes = max(width, (fmt.rate * chunk_ms // 1000) * width)
        self.audio_bytes = 0
        self.wire_bytes = 0
        self.finished = False

    @property
    def seconds_queued(self) -> float:
        return self.audio_bytes / self.format.bytes_per_second

    def chunks(self, audio: bytes | bytearray | memoryview) -> Iterator[bytes]:
        if self.finished:
            raise VoiceProtocolError("audio after the end of the voice transmit stream")
        view = memoryview(bytes(audio))
        if len(view) % self.format.bytes_per_sample:
            raise VoiceProtocolError(
                f"{len(view)} bytes is not a whole number of {self.format.bytes_per_sample}-byte samples"
            )
        for start in range(0, len(view), self.chunk_bytes):
            raw = view[start : start + self.chunk_bytes]
            wire = escape(raw, pair_with_sub=self.pair_with_sub)
            self.audio_bytes += len(raw)
            self.wire_bytes += len(wire)
            yield wire

    def end(self) -> bytes:
        """``<DLE><ETX>``: play what is buffered, then leave voice transmit (modem answers OK/VCON)."""
        self.finished = True
        self.wire_bytes += len(END_TRANSMIT)
        return END_TRANSMIT

    def abort(self) -> bytes:
        """``<DLE><CAN><DLE><ETX>``: drop the buffered audio and leave voice transmit now."""
        self.finished = True
        self.wire_bytes += len(ABORT_TRANSMIT)
        return ABORT_TRANSMIT


# ---------------------------------------------------------------------------------- AT commands
def encode_command(command: str) -> bytes:
    """``AT…`` text to the bytes to write (terminated by S3 = CR, V.250 §5.2.1)."""
    if not command.upper().startswith("AT"):
        raise VoiceCommandError(f"{command!r} does not start with AT")
    if any(ch in command for ch in "\r\n") or not command.isascii():
        raise VoiceCommandError(f"{command!r} contains a line break or non-ASCII character")
    return command.encode("ascii") + b"\r"


def _check(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VoiceCommandError(f"{name}: {value!r} is outside {low}..{high}")
    return value


def fclass(mode: int | str) -> str:
    """``AT+FCLASS=8`` selects voice mode (V.253; data 0, fax 1/1.0/2/2.0)."""
    if str(mode) not in {"0", "1", "1.0", "2", "2.0", "8"}:
        raise VoiceCommandError(f"+FCLASS: {mode!r} is not one of 0, 1, 1.0, 2, 2.0, 8")
    return f"AT+FCLASS={mode}"


def vls(label: int) -> str:
    """``AT+VLS=<label>``: analogue source/destination (0 on hook, 1 line off hook; see ``+VLS=?``)."""
    return f"AT+VLS={_check('+VLS', label, 0, 255)}"


def vsm(cml: int, rate: int | None = None, sds: int | None = None, sel: int | None = None) -> str:
    """``AT+VSM=<cml>[,<vsr>[,<sds>,<sel>]]``: compression method and sample rate."""
    parts = [str(_check("+VSM cml", cml, 0, 255))]
    if rate is not None:
        parts.append(str(_check("+VSM rate", rate, 1, 65535)))
    if sds is not None or sel is not None:
        if rate is None:
            raise VoiceCommandError("+VSM: silence parameters need the sample rate too")
        parts.append(str(_check("+VSM sds", sds or 0, 0, 255)))
        parts.append(str(_check("+VSM sel", sel or 0, 0, 255)))
    return "AT+VSM=" + ",".join(parts)


def vrx() -> str:
    """Voice receive: the modem answers CONNECT, then streams audio until ``<DLE><ETX>``."""
    return "AT+VRX"


def vtx() -> str:
    """Voice transmit: the modem answers CONNECT, then plays what the host sends until ``<DLE><ETX>``."""
    return "AT+VTX"


_VTS_DIGITS = frozenset("0123456789*#ABCD!")


def vts(*elements: str | tuple[int, int, int] | tuple[str, int]) -> str:
    """``AT+VTS=``: play DTMF and tones (V.253 +VTS). Elements: ``"5"`` (a DTMF digit for the +VTD
    duration), ``(f1, f2, duration)`` → ``[f1,f2,dur]`` (Hz, 0.01 s units), ``("5", duration)`` →
    ``{5,dur}``."""
    if not elements:
        raise VoiceCommandError("+VTS: nothing to play")
    out = []
    for element in elements:
        if isinstance(element, str):
            if len(element) != 1 or element.upper() not in _VTS_DIGITS:
                raise VoiceCommandError(f"+VTS: {element!r} is not one DTMF character 0-9 * # A-D")
            out.append(element.upper())
        elif len(element) == 3:
            f1, f2, duration = element  # type: ignore[misc]
            _check("+VTS frequency", f1, 0, 4000)
            _check("+VTS frequency", f2, 0, 4000)
            _check("+VTS duration", duration, 0, 65535)
            out.append(f"[{f1},{f2},{duration}]")
        elif len(element) == 2 and isinstance(element[0], str):
            digit, duration = element
            if len(digit) != 1 or digit.upper() not in _VTS_DIGITS:
                raise VoiceCommandError(f"+VTS: {digit!r} is not one DTMF character 0-9 * # A-D")
            out.append(f"{{{digit.upper()},{_check('+VTS duration', duration, 0, 65535)}}}")
        else:
            raise VoiceCommandError(f"+VTS: cannot play {element!r}")
    return "AT+VTS=" + ",".join(out)


def vtd(duration: int) -> str:
    """``AT+VTD=<n>``: default DTMF/tone duration in 0.01 s units."""
    return f"AT+VTD={_check('+VTD', duration, 1, 255)}"


def vit(seconds: int) -> str:
    """``AT+VIT=<n>``: DTE/DCE inactivity timer (0 = off); vgetty uses 60, t38modem needs > 0."""
    return f"AT+VIT={_check('+VIT', seconds, 0, 255)}"


def vsd(sensitivity: int, silence_tenths: int) -> str:
    """``AT+VSD=<sds>,<sdi>``: silence detection (sensitivity 128 = nominal, 0.1 s units)."""
    level = _check("+VSD sensitivity", sensitivity, 0, 255)
    return f"AT+VSD={level},{_check('+VSD time', silence_tenths, 0, 255)}"


def vgt(level: int) -> str:
    """``AT+VGT=<n>``: transmit (playback) gain, 128 nominal."""
    return f"AT+VGT={_check('+VGT', level, 0, 255)}"


def vgr(level: int) -> str:
    """``AT+VGR=<n>``: receive (record) gain, 128 nominal."""
    return f"AT+VGR={_check('+VGR', level, 0, 255)}"


def vcid(mode: int) -> str:
    """``AT+VCID=<n>``: caller ID off (0), formatted (1), raw hex (2)."""
    return f"AT+VCID={_check('+VCID', mode, 0, 2)}"


def cid_hash(mode: int) -> str:
    """``AT#CID=<n>``: the Rockwell-era caller ID command (1 formatted, 2 unformatted)."""
    return f"AT#CID={_check('#CID', mode, 0, 2)}"


def vrid(mode: int) -> str:
    """``AT+VRID=<n>``: repeat the last caller ID (0 formatted, 1 raw)."""
    return f"AT+VRID={_check('+VRID', mode, 0, 1)}"


def vem(mask: str) -> str:
    """``AT+VEM=<hex mask>``: event reporting mask, bits numbered as in :data:`EVENT_NAMES`."""
    if not re.fullmatch(r"[0-9A-Fa-f]{1,16}", mask):
        raise VoiceCommandError(f"+VEM: {mask!r} is not a hexadecimal event mask")
    return f"AT+VEM={mask.upper()}"


def vnh(mode: int) -> str:
    """``AT+VNH=<n>``: automatic hang-up control when switching to data/fax (0 normal, 1/2 keep line)."""
    return f"AT+VNH={_check('+VNH', mode, 0, 2)}"


def ste(bits: int) -> str:
    """``AT-STE=<bits>`` (Conexant line awareness): b0 line in use, b1 extension pick-up, b2 remote
    hang-up."""
    return f"AT-STE={_check('-STE', bits, 0, 7)}"


def query_support(name: str) -> str:
    """``AT<name>=?``: what a command supports (``query_support("+VSM")`` → ``AT+VSM=?``)."""
    if not re.fullmatch(r"[+#\-%&][A-Za-z]{1,16}", name):
        raise VoiceCommandError(f"{name!r} is not an extended command name such as +VSM or -STE")
    return f"AT{name.upper()}=?"



# -------------------------------------------------------------------------------- capability parsing
@dataclass(frozen=True)
class IntRanges:
    """A V.250 range answer such as ``(0-7)`` or ``(7200,8000,11025)``, as closed intervals."""

    intervals: tuple[tuple[int, int], ...]

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and any(lo <= value <= hi for lo, hi in self.intervals)

    def values(self, limit: int = 1024) -> list[int]:
        out: list[int] = []
        for lo, hi in self.intervals:
            out.extend(range(lo, min(hi, lo + limit) + 1))
        return out

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.intervals)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside quotes and parentheses."""
    parts, depth, quoted, current = [], 0, False, []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth = max(0, depth - 1)
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _ranges(item: str) -> IntRanges:
    inner = item.strip()
    if inner.startswith("(") and inner.endswith(")"):
        inner = inner[1:-1]
    intervals = []
    for piece in inner.split(","):
        piece = piece.strip()
        if not piece:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", piece)
        if match is None:
            raise ValueError(f"{piece!r} is not a number or a range a-b")
        if match.group(3) is not None:
            value = int(match.group(3))
            intervals.append((value, value))
        else:
            lo, hi = int(match.group(1)), int(match.group(2))
            intervals.append((min(lo, hi), max(lo, hi)))
    return IntRanges(tuple(intervals))


def _strip_prefix(line: str, name: str | None) -> str:
    text = line.strip()
    if name and text.upper().startswith(name.upper() + ":"):
        text = text[len(name) + 1 :].strip()
    return text


def _answer_lines(answer: str | Sequence[str]) -> list[str]:
    if isinstance(answer, str):
        answer = answer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line.strip() for line in answer if line.strip() and line.strip().upper() not in ("OK", "ERROR")
            and not line.strip().upper().startswith("AT")]


def parse_ranges(answer: str | Sequence[str], name: str | None = None) -> list[IntRanges]:
    """``(0-7)`` → [0..7]; ``(5-255),(0-255)`` → two ranges. ``name`` strips an echo prefix like
    ``-STE:``. Raises ValueError naming the bad element."""
    lines = _answer_lines(answer)
    if not lines:
        raise ValueError("empty range answer")
    text = _strip_prefix(lines[0], name)
    try:
        return [_ranges(item) for item in _split_top(text) if item]
    except ValueError as exc:
        raise ValueError(f"cannot read range answer {text!r}: {exc}") from None


def parse_fclass(answer: str | Sequence[str]) -> frozenset[str]:
    """``AT+FCLASS=?`` → the service classes, e.g. {"0", "1", "1.0", "8"}; "8" means voice."""
    lines = _answer_lines(answer)
    if not lines:
        return frozenset()
    text = _strip_prefix(lines[0], "+FCLASS").strip("()")
    return frozenset(item.strip() for item in text.split(",") if item.strip())


# Sample encodings. "u8" unsigned 8-bit (offset 128), "s8" signed 8-bit, "s16le" signed 16-bit
# little-endian, "ulaw"/"alaw" G.711, "ima_adpcm", "adpcm" (vendor ADPCM), "pcm14" (Conexant "14 bit
# PCM": packing undocumented), "celp", "unknown".
_NAME_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"U-?LAW|MU-?LAW|G\.?711\s*U|\bµ-?LAW", re.I), "ulaw"),
    (re.compile(r"A-?LAW|G\.?711\s*A", re.I), "alaw"),
    (re.compile(r"IMA\s*ADPCM", re.I), "ima_adpcm"),
    (re.compile(r"ADPCM", re.I), "adpcm"),
    (re.compile(r"CELP", re.I), "celp"),
    (re.compile(r"UNSIGNED\s*PCM", re.I), "u8"),
    (re.compile(r"SIGNED\s*PCM", re.I), "s8"),
    (re.compile(r"14\s*-?\s*BIT", re.I), "pcm14"),
    (re.compile(r"16\s*-?\s*BIT\s*LINEAR", re.I), "s16le"),
    (re.compile(r"8\s*-?\s*BIT\s*LINEAR", re.I), "u8"),
    (re.compile(r"^\s*LINEAR\s*$", re.I), "linear"),
]
_ENCODING_BITS = {"u8": 8, "s8": 8, "ulaw": 8, "alaw": 8, "s16le": 16, "ima_adpcm": 4, "pcm14": 14}


def _classify(name: str, bits: int | None) -> str:
    for pattern, encoding in _NAME_RULES:
        if pattern.search(name):
            if encoding == "linear":  # USR softmodem: 133,"LINEAR",16,...
                return "s16le" if bits == 16 else ("u8" if bits == 8 else "unknown")
            if encoding in ("u8", "s8") and bits == 16:
                return "s16le"
            return encoding
    return "unknown"


@dataclass(frozen=True)
class VsmOption:
    """One line of ``AT+VSM=?``: ``<cml>,"<name>",<bps>,<tm>,<vsr>,<sds>,<sel>`` (V.253 +VSM; USR
    command reference), or the short USR 5637 form ``<cml>,"<name>",<vsr>``."""

    cml: int
    name: str
    encoding: str
    bits: int | None
    rates: IntRanges
    timing_marks: int | None = None
    raw: str = ""

    def supports_rate(self, rate: int) -> bool:
        return rate in self.rates


@dataclass(frozen=True)
class VsmCapabilities:
    options: tuple[VsmOption, ...]
    unparsed: tuple[str, ...] = ()  # lines that looked like options but could not be read

    def by_cml(self, cml: int) -> VsmOption | None:
        return next((o for o in self.options if o.cml == cml), None)


def _vsm_line(text: str) -> VsmOption:
    body = _strip_prefix(text, "+VSM")
    sep = ";" if ";" in body and '"' not in body and "," not in body.split("(")[0] else ","
    fields = _split_top(body, sep)
    if len(fields) < 3:
        raise ValueError(f"{len(fields)} fields, expected at least cml, name and rates")
    cml = int(fields[0])
    name = fields[1].strip().strip('"')
    bits: int | None = None
    timing: int | None = None
    if len(fields) == 3:  # USR 5637: 128,"8-BIT LINEAR",(7200,8000,11025)
        rates = _ranges(fields[2])
    elif len(fields) == 4:
        bits, rates = int(fields[2]), _ranges(fields[3])
    else:
        bits, timing, rates = int(fields[2]), int(fields[3]), _ranges(fields[4])
    encoding = _classify(name, bits)
    if bits is None:
        bits = _ENCODING_BITS.get(encoding)
    return VsmOption(cml, name, encoding, bits, rates, timing, text.strip())


def parse_vsm_options(answer: str | Sequence[str]) -> VsmCapabilities:
    """Parse the answer to ``AT+VSM=?`` (echo, OK and blank lines are skipped)."""
    options, unparsed = [], []
    for line in _answer_lines(answer):
        try:
            options.append(_vsm_line(line))
        except ValueError:
            unparsed.append(line)
    return VsmCapabilities(tuple(options), tuple(unparsed))


@dataclass(frozen=True)
class VoiceFormat:
    """The chosen sample format: what ``AT+VSM`` selects and how to read the bytes."""

    cml: int
    name: str
    encoding: str  # u8 | s8 | s16le | ulaw | alaw
    bits: int
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.bits == 16 else 1

    @property
    def bytes_per_second(self) -> int:
        return self.rate * self.bytes_per_sample

    @property
    def min_port_bps(self) -> int:
        """Serial speed the stream needs with start and stop bits (vgetty: bits × rate × 10/8)."""
        return self.bytes_per_second * 10

    def vsm_command(self) -> str:
        return vsm(self.cml, self.rate)

    def to_json(self) -> dict:
        return asdict(self)


_PLAYABLE = {"s16le": 16, "ulaw": 8, "alaw": 8, "u8": 8, "s8": 8}


def choose_format(
    capabilities: VsmCapabilities | Sequence[VsmOption],
    *,
    rate: int = 8000,
    prefer_law: str = "ulaw",
) -> VoiceFormat:
    """Pick the best format the modem lists at ``rate``: 16-bit linear, then G.711 (``prefer_law``
    first: µ-law for Japan and North America, A-law for China and Europe), then 8-bit unsigned,
    then 8-bit signed. When two ids offer the same encoding (Conexant 1 and 130 "UNSIGNED PCM"), the
    vendor id (≥ 128) wins: NCID users report those work more reliably."""
    if prefer_law not in ("ulaw", "alaw"):
        raise ValueError(f"prefer_law must be 'ulaw' or 'alaw', got {prefer_law!r}")
    options = capabilities.options if isinstance(capabilities, VsmCapabilities) else tuple(capabilities)
    other_law = "alaw" if prefer_law == "ulaw" else "ulaw"
    order = ["s16le", prefer_law, other_law, "u8", "s8"]
    for encoding in order:
        bits = _PLAYABLE[encoding]
        candidates = [
            o for o in options if o.encoding == encoding and o.bits == bits and o.supports_rate(rate)
        ]
        if candidates:
            best = min(candidates, key=lambda o: (o.cml < 128, o.cml))
            return VoiceFormat(best.cml, best.name, encoding, _PLAYABLE[encoding], rate)
    offered = "; ".join(f"{o.cml} {o.name!r} ({o.encoding}, {o.rates} Hz)" for o in options) or "nothing"
    raise NoUsableVoiceFormat(
        f"the modem offers no 16-bit linear, G.711 or 8-bit PCM format at {rate} Hz; it lists {offered}"
    )


# V.253 event numbers (Conexant 100722A Table 6-6 "Events Detectable in the Voice Mode per V.253"):
# the bit positions of the +VLS=? and +VEM masks, event 0 = most significant bit of the first hex digit.
EVENT_NAMES: dict[int, str] = {
    0: "caller_id",
    1: "did",
    2: "distinctive_ring",
    3: "ring",
    4: "dtmf",
    5: "receive_overrun",
    6: "fax_calling",
    7: "data_calling",
    8: "local_phone_hook",
    9: "silence",
    10: "quiet",
    11: "sit",
    12: "bong",
    13: "loop_interruption",
    14: "polarity_reversal",
    15: "call_waiting",
    16: "distinctive_call_waiting",
    17: "tdd",
    18: "ringback",
    19: "busy",
    20: "dialtone",
    21: "reorder",
    22: "v21_flags",
    23: "transmit_underrun",
    24: "extension_phone_hook",
    25: "answer_tone",
    26: "data_answer",
    27: "voice",
    28: "caller_id_call_waiting",
    29: "stuttered_dialtone",
    30: "invalid_voice_format",
    31: "lost_data",
    32: "fax_answer",
}


def events_in_mask(mask: str) -> frozenset[str]:
    """Hex event mask (``0BC01800``) → event names; event n is bit n counted from the left."""
    if not re.fullmatch(r"[0-9A-Fa-f]*", mask):
        raise ValueError(f"{mask!r} is not a hexadecimal event mask")
    bits = "".join(f"{int(ch, 16):04b}" for ch in mask)
    return frozenset(EVENT_NAMES.get(i, f"event_{i}") for i, bit in enumerate(bits) if bit == "1")


@dataclass(frozen=True)
class LineSelectOption:
    """One line of ``AT+VLS=?``: ``<label>,"<devices>",<mask>,<mask>,<mask>``. Devices: T telephone
    line, L local handset, S speaker, M microphone, H headset; "" = on hook (V.253 +VLS; mgetty
    Multitech_5634ZPX.c)."""

    label: int
    devices: str
    masks: tuple[str, ...] = ()
    raw: str = ""

    @property
    def off_hook(self) -> bool:
        return "T" in self.devices

    def events(self) -> frozenset[str]:
        """Events reportable in this mode: the union of its hex masks (``B0000000`` = caller ID,
        distinctive ring, ring)."""
        out: frozenset[str] = frozenset()
        for mask in self.masks:
            try:
                out |= events_in_mask(mask.strip('"'))
            except ValueError:
                continue
        return out


def parse_vls_options(answer: str | Sequence[str]) -> list[LineSelectOption]:
    """Parse ``AT+VLS=?``. Lines that do not start with a label number are skipped."""
    out = []
    for line in _answer_lines(answer):
        fields = _split_top(_strip_prefix(line, "+VLS"))
        if not fields or not fields[0].isdigit():
            continue
        devices = fields[1].strip('"') if len(fields) > 1 else ""
        out.append(LineSelectOption(int(fields[0]), devices, tuple(fields[2:]), line))
    return out


def line_label(options: Sequence[LineSelectOption], devices: str = "T") -> int:
    """The ``+VLS`` label for exactly ``devices`` ("T" = off hook to the line, "" = on hook)."""
    for option in options:
        if option.devices == devices:
            return option.label
    listed = ", ".join(f'{o.label}="{o.devices}"' for o in options) or "nothing"
    raise LookupError(f'the modem lists no +VLS mode for devices "{devices}"; it lists {listed}')


# ------------------------------------------------------------------------------------ identity, family
@dataclass(frozen=True)
class ModemIdentity:
    manufacturer: str | None
    model: str | None
    revision: str | None
    family: str  # usr | conexant | silabs | generic
    answers: dict[str, str] = field(default_factory=dict)


_FAMILY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"U\.?\s?S\.?\s?ROBOTICS|USROBOTICS|\bUSR\d*", re.I), "usr"),
    (re.compile(r"^5601$"), "usr"),  # ATI0 product code of USR voice modems
    (re.compile(r"CONEXANT|\bCX9\d{3}|ROCKWELL|\bZOOM\b", re.I), "conexant"),
    (re.compile(r"^56000$"), "conexant"),  # ATI0 of Conexant/Rockwell firmware
    (re.compile(r"SILICON\s*LAB|\bSI\s?24\d\d|ISOMODEM", re.I), "silabs"),
]


def identify_family(*answers: str | None) -> str:
    """Modem family from any identity answers (ATI0, ATI3, +FMI, +FMM...); "generic" if unknown.
    USR is tested first: the USR 5637 has a Conexant chip but USR firmware."""
    texts = [a.strip() for a in answers if a]
    for pattern, family in _FAMILY_RULES:
        if any(pattern.search(text) for text in texts):
            return family
    return "generic"


def _first_line(answer: str | Sequence[str] | None, prefix: str | None = None) -> str | None:
    if answer is None:
        return None
    lines = _answer_lines(answer)
    if not lines:
        return None
    text = _strip_prefix(lines[0], prefix).strip().strip('"')
    return text or None


def parse_identity(
    *,
    ati0: str | Sequence[str] | None = None,
    ati3: str | Sequence[str] | None = None,
    fmi: str | Sequence[str] | None = None,
    fmm: str | Sequence[str] | None = None,
    fmr: str | Sequence[str] | None = None,
) -> ModemIdentity:
    """Identity from the raw answers of ``ATI0``, ``ATI3``, ``AT+FMI?``, ``AT+FMM?``, ``AT+FMR?``
    (any may be missing: many modems answer ERROR to some)."""
    answers = {
        key: value
        for key, value in {
            "ATI0": _first_line(ati0),
            "ATI3": _first_line(ati3),
            "+FMI": _first_line(fmi, "+FMI"),
            "+FMM": _first_line(fmm, "+FMM"),
            "+FMR": _first_line(fmr, "+FMR"),
        }.items()
        if value is not None
    }
    family = identify_family(*answers.values())
    return ModemIdentity(
        manufacturer=answers.get("+FMI"),
        model=answers.get("+FMM") or answers.get("ATI3"),
        revision=answers.get("+FMR"),
        family=family,
        answers=answers,
    )


@dataclass(frozen=True)
class FamilyProfile:
    """What differs between modem families, for the driver (see docs/voice-modems.md)."""

    family: str
    callerid_commands: tuple[str, ...]
    abort_receive: bytes = ABORT_RECEIVE
    receive_abort_ends_with_etx: bool = False  # USR answers <DLE>! with <DLE><ETX> before the result
    ignore_while_streaming: frozenset[int] = frozenset()
    line_awareness: str | None = None  # -STE command for extension pick-up / remote hang-up reports


def family_profile(family: str) -> FamilyProfile:
    if family == "usr":
        # vgetty US_Robotics.c ignores the spurious <DLE>d that USR sends while playing/recording.
        return FamilyProfile(
            "usr",
            callerid_enable_commands("usr"),
            receive_abort_ends_with_etx=True,
            ignore_while_streaming=frozenset({ord("d")}),
        )
    if family == "conexant":
        # thess/callattendant enables line awareness with -STE=3 on Conexant; bit 2 adds remote hang-up.
        return FamilyProfile("conexant", callerid_enable_commands("conexant"), line_awareness=ste(7))
    if family in ("silabs", "generic"):
        return FamilyProfile(family, callerid_enable_commands(family))
    raise ValueError(f"unknown modem family {family!r}; expected usr, conexant, silabs or generic")
