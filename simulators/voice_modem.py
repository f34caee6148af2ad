"""A simulated V.253 voice modem (USR 5637- or Conexant CX93001-like) on a real pseudo-terminal.

For tests, demos and driver debugging. It answers the voice AT command set (ITU-T V.253) that vgetty,
NCID, callattendant and our driver use, streams 8 kHz audio in ``AT+VRX`` with DLE shielding, plays
(records) what the host sends in ``AT+VTX``, and reports line events as ``<DLE>`` codes.

Written from the specs on its own: it never imports drivers/, gateway/ or api/ (only other simulator
modules), so a misreading of V.253 in the driver cannot hide in its simulator too.

Control API for tests (all from the same trio run as :meth:`SimulatedVoiceModem.run`):

* ``await modem.ring(caller_id, format=..., rings=...)``: RING (text or ``<DLE>R``) with caller-ID
  text after the first ring (or before it, as NTT lines do) when the host enabled caller ID.
* ``modem.press(digit, repeats=...)``: a key press as ``<DLE>/ <DLE>d … <DLE>~`` (edges on) or
  repeated ``<DLE>d`` (the firmware behaviour that turns one press into "000").
* ``modem.line_event("b")``: any ``<DLE>`` code (busy, dial tone, silence, loop break...).
* ``modem.set_audio_source(fn)``: ``fn(n)`` returns ``n`` float samples (8 kHz, full scale 1.0)
  that the modem "hears" on the line; a PSTN line simulator plugs in here.
* ``modem.transmitted_audio``: the bytes the host played (shielding removed), in the +VSM format.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from simulators.callerid_gen import mdmf_callerid
from simulators.pty_port import PortUnplugged, PtyPort
from simulators.signals import alaw_encode, mulaw_encode

__all__ = ["PERSONAS", "AudioSource", "ModemPersona", "SimulatedVoiceModem"]

log = logging.getLogger("hcrm.simulators.voice")

AudioSource = Callable[[int], np.ndarray]

_DLE, _ETX, _SUB, _CAN = 0x10, 0x03, 0x1A, 0x18
RATE = 8000
FRAME_SAMPLES = 160  # 20 ms per streaming tick
DTMF_REPEAT_SAMPLES = 560  # IS-101 firmware repeats <DLE>digit about every 70 ms (vgetty IS_101.c)
TX_BUFFER_LIMIT = 2 * RATE * 2  # two seconds of 16-bit audio; beyond it the modem stops reading

# +VLS=? of a Multitech/Conexant-class modem (mgetty voice/libvoice/Multitech_5634ZPX.c comment):
# label, devices (T line, L local phone, S speaker, M microphone), event masks.
_VLS_LINES = (
    '0,"",B0000000,B0000000,B0000000',
    '1,"T",0BC01800,0BC01800,0BC01800',
    '2,"L",00000000,00000000,B0000000',
    '3,"LT",0BC01800,0BC01800,0BC01800',
    '4,"S",00000000,00000000,B0000000',
    '5,"ST",0BC01800,0BC01800,0BC01800',
    '6,"M",00000000,00000000,B0000000',
    '7,"MST",0BC01800,0BC01800,0BC01800',
)
_VLS_DEVICES = {0: "", 1: "T", 2: "L", 3: "LT", 4: "S", 5: "ST", 6: "M", 7: "MST"}


@dataclass(frozen=True)
class ModemPersona:
    """Identity and capability answers of one real modem family."""

    family: str
    ati0: str
    ati3: str
    fmi: str
    fmm: str
    vsm_lines: tuple[str, ...]
    encodings: dict[int, str]  # cml -> encoding the simulator can produce
    rates: dict[int, tuple[int, ...]]
    default_cml: int
    rx_abort_sends_etx: bool  # USR answers <DLE>! with <DLE><ETX> before OK
    rx_abort_codes: frozenset[int] = field(default_factory=lambda: frozenset({ord("!")}))


PERSONAS: dict[str, ModemPersona] = {
    # NCID ncidd.log of a USR 5637 (ncid docs), also the mgetty Multitech 5634ZPX comment.
    "usr": ModemPersona(
        family="usr",
        ati0="5601",
        ati3="U.S. Robotics 56K FAX USB V1.2.23",
        fmi="U.S. Robotics",
        fmm="USR5637",
        vsm_lines=(
            '128,"8-BIT LINEAR",(7200,8000,11025)',
            '129,"16-BIT LINEAR",(7200,8000,11025)',
            '130,"8-BIT ALAW",(8000)',
            '131,"8-BIT ULAW",(8000)',
            '132,"IMA ADPCM",(7200,8000,11025)',
        ),
        encodings={128: "u8", 129: "s16le", 130: "alaw", 131: "ulaw"},
        rates={
            128: (7200, 8000, 11025),
            129: (7200, 8000, 11025),
            130: (8000,),
            131: (8000,),
            132: (7200, 8000, 11025),
        },
        default_cml=128,
        rx_abort_sends_etx=True,
    ),
    # NCID ncidd.log of an LB-Link USB modem, Conexant CX93001 (the chip in Zoom 3095-class modems).
    "conexant": ModemPersona(
        family="conexant",
        ati0="56000",
        ati3="CX93001-EIS_V0.2013-V92",
        fmi="CONEXANT",
        fmm="CX93001-EIS_V0.2013-V92",
        vsm_lines=(
            '0,"SIGNED PCM",8,0,8000,0,0',
            '1,"UNSIGNED PCM",8,0,8000,0,0',
            '129,"IMA ADPCM",4,0,8000,0,0',
            '130,"UNSIGNED PCM",8,0,8000,0,0',
            '131,"Mu-Law",8,0,8000,0,0',
            '132,"A-Law",8,0,8000,0,0',
            '133,"14 bit PCM",14,0,8000,0,0',
        ),
        encodings={0: "s8", 1: "u8", 130: "u8", 131: "ulaw", 132: "alaw"},
        rates={0: (8000,), 1: (8000,), 129: (8000,), 130: (8000,), 131: (8000,), 132: (8000,), 133: (8000,)},
        default_cml=130,
        rx_abort_sends_etx=False,
        rx_abort_codes=frozenset({ord("!"), ord("^")}),  # Zoom firmware takes <DLE>^ too
    ),
}

_BYTES_PER_SAMPLE = {"u8": 1, "s8": 1, "ulaw": 1, "alaw": 1, "s16le": 2}


def _encode_samples(x: np.ndarray, encoding: str) -> bytes:
    """Float samples (full scale 1.0) to the wire format of the selected +VSM method."""
    x = np.clip(np.asarray(x, dtype=float), -1.0, 1.0)
    if encoding == "u8":
        return (np.round(x * 127.0) + 128).astype(np.uint8).tobytes()
    if encoding == "s8":
        return np.round(x * 127.0).astype(np.int8).tobytes()
    if encoding == "s16le":
        return np.round(x * 32767.0).astype("<i2").tobytes()
    if encoding == "ulaw":
        return mulaw_encode(x).tobytes()
    if encoding == "alaw":
        return alaw_encode(x).tobytes()
    raise ValueError(f"the simulator cannot produce {encoding!r} audio")


def _shield(data: bytes) -> bytes:
    return data.replace(b"\x10", b"\x10\x10")


def _silence(n: int) -> np.ndarray:
    return np.zeros(n)


# V.253 +VTS elements: a DTMF character, [f1,f2,duration] or {digit,duration}, comma separated.
_VTS_STRING = re.compile(r"(\s*([0-9A-D*#!]|\[\d*,\d*,\d*\]|\{[0-9A-D*#],\d+\})\s*,?)+", re.I)


class _CommandError(Exception):
    pass


@dataclass
class _Connect:
    mode: str  # "receive" | "transmit"


class SimulatedVoiceModem:
    def __init__(
        self,
        family: str = "conexant",
        *,
        link: str | None = None,
        pace: bool = True,  # False: play the host's audio as fast as it arrives (no underrun reports)
        dtmf_edges: bool = True,
        dtmf_end_code: int = 0x7E,
        dtmf_repeats: int = 0,
        ring_report: str = "text",
        audio_source: AudioSource | None = None,
    ) -> None:
        if family not in PERSONAS:
            raise ValueError(f"unknown family {family!r}; expected one of {', '.join(PERSONAS)}")
        if dtmf_end_code not in (0x7E, 0x7F):
            raise ValueError("dtmf_end_code must be 0x7E ('~', V.253) or 0x7F (Si AN93)")
        if ring_report not in ("text", "dle"):
            raise ValueError("ring_report must be 'text' (RING) or 'dle' (<DLE>R in voice mode)")
        self.persona = PERSONAS[family]
        self.port = PtyPort(link)
        self.pace = pace
        self.dtmf_edges = dtmf_edges
        self.dtmf_end_code = dtmf_end_code
        self.dtmf_repeats = dtmf_repeats
        self.ring_report = ring_report
        self._audio_source: AudioSource = audio_source or _silence
        self.commands: list[str] = []  # every command line received, for assertions
        self.dialled: list[str] = []  # ATD dial strings, for assertions
        self._generation = 0  # bumped by unplug()/replug(): a reader of an older pty stops
        self.played_tones: list[str] = []  # +VTS arguments
        self._transmitted = bytearray()
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](math.inf)
        self._nursery: trio.Nursery | None = None
        self._line = bytearray()
        self._reset_state()

    # ------------------------------------------------------------------------------- state
    def _reset_state(self) -> None:
        """Power-on / ATZ defaults. Caller ID is off again: Conexant forgets +VCID on ATZ."""
        self.echo = True
        self.fclass = "0"
        self.vls = 0
        self.cml = self.persona.default_cml
        self.rate = RATE
        self.vcid = 0
        self.ste = 0
        self.settings: dict[str, str] = {}
        self.mode = "command"
        self._rx_scope: trio.CancelScope | None = None
        self._rx_position = 0
        self._rx_pending: list[tuple[int, bytes]] = []
        self._rx_after_dle = False
        self._tx_buffer = bytearray()
        self._tx_after_dle = False
        self._tx_ending = False
        self._tx_wakeup = trio.Event()
        self._tx_space = trio.Event()

    @property
    def path(self) -> str | None:
        return self.port.path

    @property
    def transmitted_audio(self) -> bytes:
        """Audio the host sent in +VTX and the modem played, DLE shielding removed."""
        return bytes(self._transmitted)

    @property
    def encoding(self) -> str | None:
        return self.persona.encodings.get(self.cml)

    def set_audio_source(self, source: AudioSource) -> None:
        """``source(n)`` returns the next ``n`` samples heard on the line (float, full scale 1.0)."""
        self._audio_source = source

    # ------------------------------------------------------------------------------- running
    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the pty, then serve until cancelled; ``task_status.started`` gets the port path."""
        path = self.port.open()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._reader, self._generation)
                task_status.started(path)
        finally:
            self._nursery = None
            self.port.close()

    async def _writer(self) -> None:
        async for chunk in self._out_recv:
            if not await self.port.send_all(chunk):
                log.debug("voice modem output dropped (%d bytes): nobody reads the port", len(chunk))

    def _send(self, data: bytes) -> None:
        self._out_send.send_nowait(data)

    def _result(self, *lines: str) -> None:
        self._send(b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines))

    def unplug(self) -> None:
        """The USB modem is pulled out: the pty closes (the host reads EIO or EOF), the symlink goes."""
        self._generation += 1
        self._stop_streams()
        self._tx_space.set()  # a reader waiting for transmit buffer space must not hang
        self.port.unplug()

    def replug(self) -> str:
        """Plugged back: a new pty behind the same symlink and power-on settings (caller ID off again)."""
        if self._nursery is None:
            raise RuntimeError("the simulated voice modem is not running; start run() first")
        self.unplug()
        path = self.port.open()
        self._line.clear()
        self._reset_state()
        self._nursery.start_soon(self._reader, self._generation)
        return path

    async def _reader(self, generation: int) -> None:
        while generation == self._generation:
            try:
                data = await self.port.receive_some()
            except PortUnplugged:
                return
            await self._handle_input(data)

    async def _handle_input(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self.mode == "transmit":
                pos = self._transmit_input(data, pos)
                while len(self._tx_buffer) > TX_BUFFER_LIMIT and self.mode == "transmit":
                    self._tx_space = trio.Event()
                    await self._tx_space.wait()  # like a modem dropping CTS: stop reading the port
            elif self.mode == "receive":
                pos = self._receive_input(data, pos)
            else:
                pos = self._command_input(data, pos)

    # ------------------------------------------------------------------------------- command mode
    def _command_input(self, data: bytes, pos: int) -> int:
        end = data.find(b"\r", pos)
        chunk = data[pos : len(data) if end < 0 else end + 1]
        if self.echo:
            self._send(chunk)
        self._line += chunk.replace(b"\n", b"")
        if end < 0:
            return len(data)
        line = self._line[:-1].decode("latin-1").strip()
        self._line.clear()
        if line:
            self._execute(line)
        return end + 1

    def _execute(self, line: str) -> None:
        self.commands.append(line)
        if not line.upper().startswith("AT"):
            self._result("ERROR")
            return
        info: list[str] = []
        try:
            connect = self._run_commands(line[2:], info)
        except _CommandError as exc:
            log.debug("voice modem: %s -> ERROR (%s)", line, exc)
            self._result(*info, "ERROR")
            return
        if connect is not None:
            self._result(*info, "CONNECT")
            self._enter(connect.mode)
        else:
            self._result(*info, "OK")

    def _run_commands(self, body: str, info: list[str]) -> _Connect | None:
        i = 0
        while i < len(body):
            ch = body[i]
            if ch == " ":
                i += 1
            elif ch in "+#-%":
                j = body.find(";", i)
                command = body[i : len(body) if j < 0 else j]
                i = len(body) if j < 0 else j + 1
                result = self._extended(command, info)
                if isinstance(result, _Connect):
                    return result  # voice data state: the rest of the line is not executed
            elif ch == ";":
                i += 1
            elif ch.upper() == "D":
                # V.250 §6.3.1 dial: the rest of the line up to ";" is the dial string; ";" (voice, V.253)
                # keeps the modem in command mode after dialling.
                j = body.find(";", i)
                self.dialled.append(body[i + 1 : len(body) if j < 0 else j])
                i = len(body) if j < 0 else j + 1
            elif ch.isalpha() or ch == "&":
                name = ch.upper()
                i += 1
                if name == "&" and i < len(body):
                    name += body[i].upper()
                    i += 1
                match = re.match(r"\d*(=\d*|\?)?", body[i:])
                arg = match.group(0) if match else ""
                i += len(arg)
                self._basic(name, arg, info)
            else:
                raise _CommandError(f"unexpected {ch!r}")
        return None

    def _basic(self, name: str, arg: str, info: list[str]) -> None:
        if name == "E":
            self.echo = arg != "0"
        elif name == "Z" or name == "&F":
            self._stop_streams()
            self._reset_state()
        elif name == "H":
            self._stop_streams()
            self.vls = 0
        elif name == "I":
            code = arg or "0"
            if code == "0":
                info.append(self.persona.ati0)
            elif code == "3":
                info.append(self.persona.ati3)
        elif name in ("V", "Q", "X", "M", "L", "S", "&C", "&D", "&K", "W"):
            pass  # accepted, no effect on the simulation
        else:
            raise _CommandError(f"basic command {name} not supported")

    def _extended(self, command: str, info: list[str]) -> _Connect | None:
        match = re.fullmatch(r"([+#\-%][A-Za-z]+)(=\?|\?|=(.*))?", command)
        if match is None:
            raise _CommandError(f"malformed extended command {command!r}")
        name = match.group(1).upper()
        op = match.group(2) or ""
        value = match.group(3)
        if name in ("+FMI", "+GMI"):
            info.append(self.persona.fmi)
            return None
        if name in ("+FMM", "+GMM"):
            info.append(self.persona.fmm)
            return None
        if name in ("+FMR", "+GMR"):
            info.append("1.0 (simulated)")
            return None
        if name == "+FCLASS":
            return self._fclass(op, value, info)
        if name in ("+VCID", "#CID"):
            return self._number_setting(op, value, info, "vcid", (0, 2))
        if name == "-STE":
            return self._number_setting(op, value, info, "ste", (0, 7))
        if name in ("+IFC", "+FLO", "-SCID", "+VCDT"):
            return None
        if not name.startswith("+V"):
            raise _CommandError(f"{name} not supported")
        if self.fclass != "8":
            raise _CommandError(f"{name} needs voice mode (+FCLASS=8)")
        if name == "+VSM":
            return self._vsm(op, value, info)
        if name == "+VLS":
            return self._vls(op, value, info)
        if name == "+VRX":
            if self.vls == 0 or self.encoding is None:
                raise _CommandError("+VRX needs an input device (+VLS) and a supported format")
            return _Connect("receive")
        if name == "+VTX":
            if self.vls == 0 or self.encoding is None:
                raise _CommandError("+VTX needs an output device (+VLS) and a supported format")
            return _Connect("transmit")
        if name == "+VTS":
            if not value or not _VTS_STRING.fullmatch(value):
                raise _CommandError(f"bad +VTS string {value!r}")
            self.played_tones.append(value)
            return None
        if name in ("+VTD", "+VIT", "+VSD", "+VGT", "+VGR", "+VRA", "+VRN", "+VEM", "+VNH", "+VDR", "+VRID"):
            if op == "=?":
                info.append("(0-255)")
            elif op == "?":
                info.append(self.settings.get(name, "0"))
            elif value is not None:
                if not re.fullmatch(r"[0-9A-Fa-f]+(,[0-9A-Fa-f]+)*", value):
                    raise _CommandError(f"bad {name} value {value!r}")
                self.settings[name] = value
            return None
        raise _CommandError(f"{name} not supported")

    def _fclass(self, op: str, value: str | None, info: list[str]) -> None:
        if op == "=?":
            info.append("0,1,1.0,2,8")
        elif op == "?":
            info.append(self.fclass)
        elif value in ("0", "1", "1.0", "2", "8"):
            if value != "8":
                self._stop_streams()
                self.vls = 0
            self.fclass = value
        else:
            raise _CommandError(f"+FCLASS={value} not supported")

    def _number_setting(self, op: str, value: str | None, info: list[str], attr: str, bounds) -> None:
        low, high = bounds
        if op == "=?":
            info.append(f"({low}-{high})")
        elif op == "?":
            info.append(str(getattr(self, attr)))
        elif value is not None and value.isdigit() and low <= int(value) <= high:
            setattr(self, attr, int(value))
        else:
            raise _CommandError(f"value {value!r} outside {low}-{high}")

    def _vsm(self, op: str, value: str | None, info: list[str]) -> None:
        if op == "=?":
            info.extend(self.persona.vsm_lines)
            return
        if op == "?":
            info.append(f"{self.cml},{self.rate},0,0")
            return
        parts = (value or "").split(",")
        if not parts[0].isdigit() or int(parts[0]) not in self.persona.rates:
            raise _CommandError(f"compression method {parts[0]!r} not listed")
        cml = int(parts[0])
        rate = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else self.persona.rates[cml][0]
        if rate not in self.persona.rates[cml]:
            raise _CommandError(f"rate {rate} not offered for method {cml}")
        if cml not in self.persona.encodings or rate != RATE:
            raise _CommandError(f"the simulator streams only 8000 Hz PCM/G.711, not method {cml} at {rate}")
        self.cml, self.rate = cml, rate

    def _vls(self, op: str, value: str | None, info: list[str]) -> None:
        if op == "=?":
            info.extend(_VLS_LINES)
        elif op == "?":
            info.append(str(self.vls))
        elif value is not None and value.isdigit() and int(value) in _VLS_DEVICES:
            self.vls = int(value)
            if self.vls == 0:
                self._stop_streams()
        else:
            raise _CommandError(f"+VLS={value} not listed")

    # ------------------------------------------------------------------------------- voice data states
    def _enter(self, mode: str) -> None:
        assert self._nursery is not None
        self.mode = mode
        if mode == "receive":
            self._rx_position = 0
            self._rx_scope = trio.CancelScope()
            self._nursery.start_soon(self._stream_receive, self._rx_scope)
        else:
            self._tx_buffer.clear()
            self._tx_after_dle = False
            self._tx_ending = False
            self._nursery.start_soon(self._play_transmit)

    def _stop_streams(self) -> None:
        if self._rx_scope is not None:
            self._rx_scope.cancel()
            self._rx_scope = None
        if self.mode == "transmit":
            self._tx_buffer.clear()
            self._tx_ending = True
            self._tx_wakeup.set()
        self.mode = "command"

    def _receive_input(self, data: bytes, pos: int) -> int:
        """In voice receive the host only sends <DLE>! (Zoom also <DLE>^) to stop; other bytes are
        ignored, as by the real modems."""
        if self._rx_after_dle:
            self._rx_after_dle = False
            index, code = pos - 1, data[pos]
        else:
            index = data.find(bytes((_DLE,)), pos)
            if index < 0:
                return len(data)
            if index + 1 >= len(data):
                self._rx_after_dle = True  # the code arrives in the next read
                return len(data)
            code = data[index + 1]
        if code in self.persona.rx_abort_codes:
            if self._rx_scope is not None:
                self._rx_scope.cancel()
                self._rx_scope = None
            self.mode = "command"
            self._flush_rx_pending()
            if self.persona.rx_abort_sends_etx:
                self._send(bytes((_DLE, _ETX)))
            self._result("OK")
        return index + 2

    async def _stream_receive(self, scope: trio.CancelScope) -> None:
        with scope:
            encoding = self.encoding
            assert encoding is not None
            width = _BYTES_PER_SAMPLE[encoding]
            start = trio.current_time()
            while True:
                samples = np.asarray(self._audio_source(FRAME_SAMPLES), dtype=float)
                if samples.shape != (FRAME_SAMPLES,):
                    raise ValueError(f"audio source gave shape {samples.shape}, expected ({FRAME_SAMPLES},)")
                frame = _encode_samples(samples, encoding)
                first = self._rx_position
                cut = 0
                out = bytearray()
                self._rx_pending.sort(key=lambda item: item[0])
                while self._rx_pending and self._rx_pending[0][0] < first + FRAME_SAMPLES:
                    due, code = self._rx_pending.pop(0)
                    offset = max(0, due - first) * width
                    out += _shield(frame[cut:offset]) + code
                    cut = offset
                out += _shield(frame[cut:])
                self._rx_position += FRAME_SAMPLES
                self._send(bytes(out))
                # Always on the sample clock: the stream never outruns the port, like a real modem.
                await trio.sleep_until(start + self._rx_position / RATE)

    def _flush_rx_pending(self) -> None:
        self._rx_pending.sort(key=lambda item: item[0])
        for _, code in self._rx_pending:
            self._send(code)
        self._rx_pending.clear()

    def _transmit_input(self, data: bytes, pos: int) -> int:
        """Un-shield the host's audio (V.253 §8.3): <DLE><DLE> data, <DLE><SUB> two DLEs, <DLE><ETX>
        end after playing the buffer, <DLE><CAN> drop the buffer, p/r/u/d accepted."""
        buffer = self._tx_buffer
        i = pos
        while i < len(data):
            if self._tx_after_dle:
                self._tx_after_dle = False
                code = data[i]
                i += 1
                if code == _DLE:
                    buffer.append(_DLE)
                elif code == _SUB:
                    buffer += b"\x10\x10"
                elif code == _ETX:
                    self._tx_ending = True
                    self._tx_wakeup.set()
                    self.mode = "transmit-ending"
                    return i
                elif code == _CAN:
                    buffer.clear()
                else:
                    log.debug("voice modem: <DLE> 0x%02X in voice transmit accepted without effect", code)
                continue
            index = data.find(bytes((_DLE,)), i)
            stop = len(data) if index < 0 else index
            buffer += data[i:stop]
            if index < 0:
                i = len(data)
            else:
                self._tx_after_dle = True
                i = index + 1
        self._tx_wakeup.set()
        return i

    async def _play_transmit(self) -> None:
        """Plays the buffer at the sample clock into :attr:`transmitted_audio`; reports underrun
        (<DLE>u) when it runs dry before <DLE><ETX>; answers OK when the stream is over."""
        encoding = self.encoding
        assert encoding is not None
        frame_bytes = FRAME_SAMPLES * _BYTES_PER_SAMPLE[encoding]
        next_tick = trio.current_time()
        had_audio = underrun_sent = False
        while True:
            if self.pace:
                next_tick += FRAME_SAMPLES / RATE
                await trio.sleep_until(next_tick)
            else:
                await self._tx_wakeup.wait()
                self._tx_wakeup = trio.Event()
            take = frame_bytes if self.pace else len(self._tx_buffer)
            chunk = bytes(self._tx_buffer[:take])
            del self._tx_buffer[:take]
            self._transmitted += chunk
            self._tx_space.set()
            if chunk:
                had_audio, underrun_sent = True, False
            if self._tx_ending and not self._tx_buffer:
                if self.mode == "transmit-ending":
                    self.mode = "command"
                    self._result("OK")
                return
            if self.pace and not chunk and had_audio and not underrun_sent:
                self._send(bytes((_DLE, ord("u"))))
                underrun_sent = True

    # ------------------------------------------------------------------------------- control API
    async def ring(
        self,
        caller_id: dict | None = None,
        *,
        format: str = "spaced",
        rings: int = 1,
        interval: float = 0.0,
        caller_id_first: bool = False,
    ) -> None:
        """Ring ``rings`` times. ``caller_id`` (keys date "MMDD", time "HHMM", number, name; "P"/"O"
        for private/unavailable) is printed after the first ring, or before it with
        ``caller_id_first`` (NTT Number Display), if the host enabled it with +VCID / #CID.
        ``format``: "spaced" (``NMBR = …``), "compact" (``NMBR=…``), "mesg" (the name only inside a
        ``MESG`` hex line of MDMF parameters), "frame" (``MESG`` with the whole MDMF frame)."""
        if format not in ("spaced", "compact", "mesg", "frame"):
            raise ValueError(f"unknown caller ID format {format!r}")
        for n in range(rings):
            if n == 0 and caller_id_first and caller_id:
                self._send_caller_id(caller_id, format)
            if self.ring_report == "dle" and self.fclass == "8":
                self._send(bytes((_DLE, ord("R"))))
            else:
                self._result("RING")
            if n == 0 and not caller_id_first and caller_id:
                self._send_caller_id(caller_id, format)
            if interval and n + 1 < rings:
                await trio.sleep(interval)

    def _send_caller_id(self, cid: dict, style: str) -> None:
        if self.vcid == 0:
            return
        number, name = cid.get("number"), cid.get("name")
        when = None
        if cid.get("date") and cid.get("time"):
            when = f"{cid['date']}{cid['time']}"
        frame = mdmf_callerid(
            datetime_mmddhhmm=when,
            number=None if number in (None, "P", "O") else number,
            reason_absent=number if number in ("P", "O") else None,
            name=None if name in (None, "P", "O") else name,
            name_absent=name if name in ("P", "O") else None,
        )
        if self.vcid == 2:  # raw: the frame as one hex line
            self._send(b"\r\n" + frame.hex().upper().encode() + b"\r\n")
            return
        sep = " = " if style in ("spaced", "mesg", "frame") else "="
        lines = []
        if cid.get("date"):
            lines.append(f"DATE{sep}{cid['date']}")
        if cid.get("time"):
            lines.append(f"TIME{sep}{cid['time']}")
        if number is not None:
            lines.append(f"NMBR{sep}{number}")
        if style == "mesg" and name is not None:
            named = mdmf_callerid(name=None if name in ("P", "O") else name,
                                  name_absent=name if name in ("P", "O") else None)
            lines.append(f"MESG{sep}{named[2:-1].hex().upper()}")  # the bare parameters
        elif style == "frame":
            lines.append(f"MESG{sep}{frame.hex().upper()}")
        elif name is not None:
            lines.append(f"NAME{sep}{name}")
        self._send(b"\r\n" + b"".join(line.encode("latin-1") + b"\r\n" for line in lines) + b"\r\n")

    def press(self, digit: str, *, repeats: int | None = None, duration: float = 0.1) -> None:
        """A key press on the far end. With DTMF edges: ``<DLE>/ <DLE>digit [repeats] <DLE>~``;
        without: ``<DLE>digit`` repeated ``repeats`` more times, 70 ms apart in a stream."""
        if len(digit) != 1 or digit.upper() not in "0123456789*#ABCD":
            raise ValueError(f"{digit!r} is not a DTMF key")
        code = bytes((_DLE, ord(digit.upper())))
        repeats = self.dtmf_repeats if repeats is None else repeats
        events: list[tuple[int, bytes]] = []
        if self.dtmf_edges:
            events.append((0, bytes((_DLE, ord("/")))))
        events.append((0, code))
        events += [((k + 1) * DTMF_REPEAT_SAMPLES, code) for k in range(repeats)]
        if self.dtmf_edges:
            end = max(int(duration * RATE), repeats * DTMF_REPEAT_SAMPLES + 1)
            events.append((end, bytes((_DLE, self.dtmf_end_code))))
        self._schedule(events)

    def line_event(self, code: str) -> None:
        """Report any single-character event code, e.g. "b" busy, "d" dial tone, "s" silence,
        "q" quiet, "l" loop break, "L" polarity reversal, "H"/"h" handset, "P"/"p" extension."""
        if len(code) != 1:
            raise ValueError(f"an event code is one character, got {code!r}")
        self._schedule([(0, bytes((_DLE, ord(code))))])

    def _schedule(self, events: list[tuple[int, bytes]]) -> None:
        if self.mode == "receive":
            base = self._rx_position
            self._rx_pending += [(base + offset, code) for offset, code in events]
        else:
            for _, code in events:
                self._send(code)
