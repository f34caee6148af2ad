"""Frame codec of the "hcrm open voice box" USB profile (sans-IO: bytes in, events out; commands in,
bytes out).

The byte tables are in ``docs/usb-box-protocol.md``. In short, all integers little-endian:

* IN (bulk endpoint 0x81, device -> host), one line frame per transfer, every 20 ms:
  ``"HV" | version 1 | type 0x01 | seq u16 | flags u16 | samples u16 | ack u16 | PCM s16le x samples``.
  ``seq`` counts IN frames modulo 2^16: a jump means the device dropped frames (host read too late).
  ``ack`` is the sequence number of the last OUT packet the device has applied.
* OUT (bulk endpoint 0x02, host -> device): ``"HC" | version 1 | type | seq u16 | length u16 | payload``,
  type 0x02 audio (PCM s16le to play) or 0x03 command (opcode + arguments).

No clock and no I/O here: the driver (``drivers/voice/usbbox.py``) moves the bytes.  The simulator
(``simulators/usb_box.py``) has its own packer, written from the document, not from this module.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "FLAG",
    "IN_MAGIC",
    "OUT_MAGIC",
    "Dial",
    "Flash",
    "FrameError",
    "Hook",
    "InFrame",
    "InboundDecoder",
    "LineStatus",
    "OutPacket",
    "OutboundEncoder",
    "Resync",
    "RingHandset",
    "Route",
    "SequenceGap",
    "decode_in_frame",
    "decode_out_packet",
    "encode_in_frame",
    "seq_distance",
]

VERSION = 1
IN_MAGIC = b"HV"
OUT_MAGIC = b"HC"
IN_HEADER = struct.Struct("<2sBBHHHH")  # magic, version, type, seq, flags, samples, ack
OUT_HEADER = struct.Struct("<2sBBHH")  # magic, version, type, seq, payload length
IN_TYPE_LINE = 0x01
OUT_TYPE_AUDIO = 0x02
OUT_TYPE_COMMAND = 0x03
MAX_SAMPLES = 4000  # 500 ms at 8 kHz: a larger count in a header is corruption, not audio
SEQ_MODULO = 1 << 16

# Status flag bits of an IN frame.
FLAG = {
    "off_hook": 1 << 0,  # the box holds the line off hook (its hook relay is closed)
    "ring": 1 << 1,  # ring voltage on the line during this frame
    "polarity_reversed": 1 << 2,  # tip/ring polarity reversed relative to idle
    "loop_current": 1 << 3,  # loop current flows (off hook and the exchange feeds the loop)
    "handset_off_hook": 1 << 4,  # the telephone on the box's PHONE port is off hook
    "route_headset": 1 << 5,  # host audio goes to the headset/handset port, not the line
    "dialing": 1 << 6,  # a DIAL or FLASH command is still being carried out
    "overrun": 1 << 7,  # the device dropped IN frames before this one (see the sequence gap)
    "handset_ringing": 1 << 8,  # the box is ringing its PHONE port
}
_KNOWN_FLAGS = sum(FLAG.values())

# Command opcodes (OUT type 0x03).
OP_HOOK, OP_FLASH, OP_DIAL, OP_RING_HANDSET, OP_ROUTE = 0x01, 0x02, 0x03, 0x04, 0x05
OP_FRAME_PHASE = 0x06
FRAME_SAMPLES = 160  # a line frame: 20 ms at 8 kHz
DIAL_CHARS = frozenset("0123456789*#ABCD,")  # ',' = pause of one second (Hayes dial-string habit)


class FrameError(ValueError):
    """Bytes that are not a valid frame of this profile; the message says which field and why."""


def seq_distance(expected: int, received: int) -> int:
    """Frames missing between ``expected`` and ``received`` (modulo 2^16; 0 = in order)."""
    return (received - expected) % SEQ_MODULO


@dataclass(frozen=True, slots=True)
class LineStatus:
    off_hook: bool = False
    ring: bool = False
    polarity_reversed: bool = False
    loop_current: bool = False
    handset_off_hook: bool = False
    route_headset: bool = False
    dialing: bool = False
    overrun: bool = False
    handset_ringing: bool = False

    @classmethod
    def from_flags(cls, flags: int) -> LineStatus:
        return cls(**{name: bool(flags & bit) for name, bit in FLAG.items()})

    def to_flags(self) -> int:
        return sum(bit for name, bit in FLAG.items() if getattr(self, name))


@dataclass(frozen=True, slots=True)
class InFrame:
    """One 20 ms line frame: status plus the audio the box heard on the line (int16 PCM)."""

    seq: int
    status: LineStatus
    ack: int
    pcm: np.ndarray
    unknown_flags: int = 0  # bits this codec does not know (a newer firmware): kept, never fatal

    @property
    def samples(self) -> np.ndarray:
        """Audio as float32, full scale 1.0 (the DSP detectors' unit)."""
        return self.pcm.astype(np.float32) / 32768.0


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """IN frames were lost between two received frames (device overrun or a dropped transfer)."""

    expected: int
    received: int
    missing: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Bytes skipped to find the next frame start; ``reason`` names what was wrong."""

    skipped: int
    reason: str


def encode_in_frame(seq: int, status: LineStatus, pcm: np.ndarray, *, ack: int = 0) -> bytes:
    """Device side of an IN frame (used by tests and by profiles that re-frame other hardware)."""
    data = np.asarray(pcm, dtype="<i2")
    if data.ndim != 1 or data.size > MAX_SAMPLES:
        raise FrameError(f"a frame carries 1-D PCM of at most {MAX_SAMPLES} samples, got shape {data.shape}")
    head = IN_HEADER.pack(IN_MAGIC, VERSION, IN_TYPE_LINE, seq % SEQ_MODULO, status.to_flags(), data.size,
                          ack % SEQ_MODULO)
    return head + data.tobytes()


def _check_in_header(data: bytes) -> tuple[int, int, int, int]:
    magic, version, kind, seq, flags, samples, ack = IN_HEADER.unpack_from(data)
    if magic != IN_MAGIC:
        raise FrameError(f"IN frame starts with {magic.hex()}, expected magic {IN_MAGIC.hex()} ('HV')")
    if version != VERSION:
        raise FrameError(f"IN frame version {version}, this driver speaks version {VERSION}")
    if kind != IN_TYPE_LINE:
        raise FrameError(f"IN frame type 0x{kind:02X} is unknown (0x01 = line frame)")
    if samples > MAX_SAMPLES:
        raise FrameError(f"IN frame claims {samples} samples, more than the {MAX_SAMPLES} a frame may carry")
    return seq, flags, samples, ack


def decode_in_frame(data: bytes) -> InFrame:
    """Exactly one IN frame -> ``InFrame``; ``FrameError`` says what is wrong."""
    if len(data) < IN_HEADER.size:
        raise FrameError(f"IN frame of {len(data)} bytes is shorter than its {IN_HEADER.size}-byte header")
    seq, flags, samples, ack = _check_in_header(data)
    expected = IN_HEADER.size + 2 * samples
    if len(data) != expected:
        raise FrameError(
            f"IN frame header announces {samples} samples ({expected} bytes), got {len(data)} bytes"
        )
    pcm = np.frombuffer(data, dtype="<i2", count=samples, offset=IN_HEADER.size).astype(np.int16)
    return InFrame(seq, LineStatus.from_flags(flags), ack, pcm, flags & ~_KNOWN_FLAGS & 0xFFFF)


class InboundDecoder:
    """IN byte stream -> ``InFrame`` / ``SequenceGap`` / ``Resync`` events, in order.

    Bulk transfers normally carry one frame each, but the decoder also accepts several frames or a
    frame split across reads, and resynchronises on the magic after corruption.  The first frame sets
    the expected sequence; every later jump is reported once as a ``SequenceGap`` before the frame.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._expected: int | None = None
        self.frames = 0
        self.lost = 0

    def reset(self) -> None:
        """Forget buffered bytes and the sequence (after the device was re-opened)."""
        self._buffer.clear()
        self._expected = None

    def feed(self, data: bytes) -> list[InFrame | SequenceGap | Resync]:
        self._buffer += data
        events: list[InFrame | SequenceGap | Resync] = []
        buf = self._buffer
        while len(buf) >= IN_HEADER.size:
            start = buf.find(IN_MAGIC)
            if start != 0:
                skipped = start if start > 0 else len(buf) - 1
                events.append(Resync(skipped, "no frame magic 'HV' at the start of the data"))
                del buf[:skipped]
                continue
            try:
                seq, flags, samples, ack = _check_in_header(buf)
            except FrameError as exc:
                events.append(Resync(2, str(exc)))
                del buf[:2]
                continue
            size = IN_HEADER.size + 2 * samples
            if len(buf) < size:
                break
            pcm = np.frombuffer(bytes(buf[IN_HEADER.size : size]), dtype="<i2").astype(np.int16)
            del buf[:size]
            if self._expected is not None and seq != self._expected:
                missing = seq_distance(self._expected, seq)
                self.lost += missing
                events.append(SequenceGap(self._expected, seq, missing))
            self._expected = (seq + 1) % SEQ_MODULO
            self.frames += 1
            unknown = flags & ~_KNOWN_FLAGS & 0xFFFF
            events.append(InFrame(seq, LineStatus.from_flags(flags), ack, pcm, unknown))
        return events


# ------------------------------------------------------------------------------------------ commands
@dataclass(frozen=True, slots=True)
class Hook:
    off_hook: bool


@dataclass(frozen=True, slots=True)
class Flash:
    """Hook flash (register recall): the box opens the loop for ``ms`` then closes it again."""

    ms: int = 100


@dataclass(frozen=True, slots=True)
class Dial:
    """The box sends the digits as DTMF (Q.23), ``tone_ms`` on and ``gap_ms`` off each; ',' pauses 1 s."""

    digits: str
    tone_ms: int = 80
    gap_ms: int = 80

    def __post_init__(self) -> None:
        bad = sorted(set(self.digits.upper()) - DIAL_CHARS)
        if bad or not self.digits:
            raise ValueError(f"dial string {self.digits!r}: use 0-9 * # A-D and ',' (bad: {''.join(bad)})")
        if not (40 <= self.tone_ms <= 255 and 40 <= self.gap_ms <= 255):
            raise ValueError("DTMF tone and gap must be 40..255 ms (Q.24: at least 40 ms is always detected)")


@dataclass(frozen=True, slots=True)
class RingHandset:
    on: bool


@dataclass(frozen=True, slots=True)
class Route:
    """Where host audio goes: ``line`` (the call) or ``headset`` (the box's PHONE/headset port)."""

    target: Literal["line", "headset"]


@dataclass(frozen=True, slots=True)
class FramePhase:
    """Move the box's frame boundaries by ``shift`` samples: its next IN frame carries 160 + ``shift``
    samples (later frames 160 again), so every later frame leaves the box ``shift`` / 8 ms later (earlier
    if negative). No sample is lost or repeated: the host lines up the frames of all its boxes (see
    docs/usb-box-protocol.md, "Frame phase")."""

    shift: int

    def __post_init__(self) -> None:
        if not (-FRAME_SAMPLES < self.shift < FRAME_SAMPLES) or self.shift == 0:
            raise ValueError(f"a frame phase shift is -159..159 samples and not 0, got {self.shift}")


Command = Hook | Flash | Dial | RingHandset | Route | FramePhase


def _command_payload(cmd: Command) -> bytes:
    if isinstance(cmd, Hook):
        return bytes((OP_HOOK, int(cmd.off_hook)))
    if isinstance(cmd, Flash):
        if not 10 <= cmd.ms <= 2000:
            raise ValueError(f"flash of {cmd.ms} ms: choose 10..2000 ms")
        return struct.pack("<BH", OP_FLASH, cmd.ms)
    if isinstance(cmd, Dial):
        return bytes((OP_DIAL, cmd.tone_ms, cmd.gap_ms)) + cmd.digits.upper().encode("ascii")
    if isinstance(cmd, RingHandset):
        return bytes((OP_RING_HANDSET, int(cmd.on)))
    if isinstance(cmd, Route):
        return bytes((OP_ROUTE, {"line": 0, "headset": 1}[cmd.target]))
    if isinstance(cmd, FramePhase):
        return struct.pack("<Bh", OP_FRAME_PHASE, cmd.shift)
    raise TypeError(f"not a box command: {cmd!r}")


class OutboundEncoder:
    """Host side: numbers OUT packets and encodes audio and commands."""

    def __init__(self) -> None:
        self.seq = 0

    def _packet(self, kind: int, payload: bytes) -> bytes:
        if len(payload) > 0xFFFF:
            raise FrameError(f"OUT payload of {len(payload)} bytes exceeds the 16-bit length field")
        head = OUT_HEADER.pack(OUT_MAGIC, VERSION, kind, self.seq, len(payload))
        self.seq = (self.seq + 1) % SEQ_MODULO
        return head + payload

    def command(self, cmd: Command) -> bytes:
        return self._packet(OUT_TYPE_COMMAND, _command_payload(cmd))

    def audio(self, pcm: np.ndarray) -> bytes:
        data = np.asarray(pcm)
        if data.dtype.kind == "f":  # float full scale 1.0 -> s16, clipped rather than wrapped
            data = np.clip(np.round(data * 32767.0), -32768, 32767)
        return self._packet(OUT_TYPE_AUDIO, data.astype("<i2").tobytes())


@dataclass(frozen=True, slots=True)
class OutPacket:
    seq: int
    command: Command | None
    pcm: np.ndarray | None


def decode_out_packet(data: bytes) -> OutPacket:
    """Device side of an OUT packet (for tests and for profiles that bridge to other hardware)."""
    if len(data) < OUT_HEADER.size:
        raise FrameError(f"OUT packet of {len(data)} bytes is shorter than its {OUT_HEADER.size}-byte header")
    magic, version, kind, seq, length = OUT_HEADER.unpack_from(data)
    if magic != OUT_MAGIC or version != VERSION:
        raise FrameError(f"OUT packet header {bytes(data[:3]).hex()} is not 'HC' version {VERSION}")
    payload = bytes(data[OUT_HEADER.size :])
    if len(payload) != length:
        raise FrameError(f"OUT packet announces {length} payload bytes, carries {len(payload)}")
    if kind == OUT_TYPE_AUDIO:
        if length % 2:
            raise FrameError(f"OUT audio payload of {length} bytes is not whole 16-bit samples")
        return OutPacket(seq, None, np.frombuffer(payload, dtype="<i2").astype(np.int16))
    if kind != OUT_TYPE_COMMAND or not payload:
        raise FrameError(f"OUT packet type 0x{kind:02X} with {length} bytes is neither audio nor a command")
    op, args = payload[0], payload[1:]
    try:
        if op == OP_HOOK and len(args) == 1:
            return OutPacket(seq, Hook(bool(args[0])), None)
        if op == OP_FLASH and len(args) == 2:
            return OutPacket(seq, Flash(struct.unpack("<H", args)[0]), None)
        if op == OP_DIAL and len(args) >= 3:
            return OutPacket(seq, Dial(args[2:].decode("ascii"), args[0], args[1]), None)
        if op == OP_RING_HANDSET and len(args) == 1:
            return OutPacket(seq, RingHandset(bool(args[0])), None)
        if op == OP_ROUTE and len(args) == 1 and args[0] in (0, 1):
            return OutPacket(seq, Route("headset" if args[0] else "line"), None)
        if op == OP_FRAME_PHASE and len(args) == 2:
            return OutPacket(seq, FramePhase(struct.unpack("<h", args)[0]), None)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"OUT command 0x{op:02X}: {exc}") from None
    raise FrameError(f"OUT command opcode 0x{op:02X} with {len(args)} argument bytes is not known")
