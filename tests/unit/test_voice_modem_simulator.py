"""The simulated V.253 voice modem over its real pty, driven with raw bytes (no driver in between).

Where it helps, the bytes are also run through the independent sans-IO codec in drivers/voice to
check that the two sides agree."""

from __future__ import annotations

import errno
import os
import tty

import numpy as np
import pytest
import trio

from drivers.voice.callerid_text import parse_callerid_lines
from drivers.voice.events import DtmfDigit, DtmfToneEnd, DtmfToneStart
from drivers.voice.v253 import Audio, DleDecoder, EndOfStream, choose_format, escape, parse_vsm_options
from simulators.voice_modem import SimulatedVoiceModem

TIMEOUT = 5.0


class RawClient:
    """The host side of the pty: raw mode, non-blocking reads through trio."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buffer = bytearray()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)

    async def _fill(self) -> None:
        await trio.lowlevel.wait_readable(self.fd)
        try:
            self.buffer += os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise

    async def read_until(self, marker: bytes) -> bytes:
        with trio.fail_after(TIMEOUT):
            while marker not in self.buffer:
                await self._fill()
        end = self.buffer.index(marker) + len(marker)
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out

    async def read_at_least(self, count: int) -> bytes:
        with trio.fail_after(TIMEOUT):
            while len(self.buffer) < count:
                await self._fill()
        out = bytes(self.buffer)
        self.buffer.clear()
        return out

    async def command(self, line: str, final: bytes = b"OK\r\n") -> str:
        await self.send(line.encode() + b"\r")
        return (await self.read_until(final)).decode("latin-1")


@pytest.fixture
async def started(nursery):
    async def start(family: str = "conexant", **options):
        modem = SimulatedVoiceModem(family, **options)
        path = await nursery.start(modem.run)
        client = RawClient(path)
        return modem, client

    return start


async def voice_ready(client: RawClient, *, echo_off: bool = True) -> None:
    if echo_off:
        assert (await client.command("ATE0")).endswith("\r\nOK\r\n")
    await client.command("AT+FCLASS=8")


async def test_echo_ok_and_identity(started):
    modem, client = await started("conexant")
    assert await client.command("AT") == "AT\r\r\nOK\r\n"  # echo on, as after power-on
    assert await client.command("ATE0") == "ATE0\r\r\nOK\r\n"
    assert await client.command("ATI3") == "\r\nCX93001-EIS_V0.2013-V92\r\n\r\nOK\r\n"
    assert await client.command("AT+FMI?") == "\r\nCONEXANT\r\n\r\nOK\r\n"
    assert await client.command("ATI0") == "\r\n56000\r\n\r\nOK\r\n"
    assert await client.command("AT+FCLASS=?") == "\r\n0,1,1.0,2,8\r\n\r\nOK\r\n"
    assert await client.command("ATX9Q0") == "\r\nOK\r\n"
    assert await client.command("AT$$", b"ERROR\r\n") == "\r\nERROR\r\n"
    assert modem.commands == ["AT", "ATE0", "ATI3", "AT+FMI?", "ATI0", "AT+FCLASS=?", "ATX9Q0", "AT$$"]
    client.close()


async def test_usr_identity_and_vsm_list(started):
    _, client = await started("usr")
    await voice_ready(client)
    assert await client.command("ATI0") == "\r\n5601\r\n\r\nOK\r\n"
    answer = await client.command("AT+VSM=?")
    caps = parse_vsm_options(answer)
    assert [o.cml for o in caps.options] == [128, 129, 130, 131, 132]
    fmt = choose_format(caps)
    assert (await client.command(fmt.vsm_command())).endswith("OK\r\n")
    assert await client.command("AT+VSM?") == "\r\n129,8000,0,0\r\n\r\nOK\r\n"
    assert (await client.command("AT+VSM=132,8000", b"ERROR\r\n")).endswith("ERROR\r\n")  # no ADPCM encoder
    assert (await client.command("AT+VSM=131,7200", b"ERROR\r\n")).endswith("ERROR\r\n")  # not offered
    client.close()


async def test_voice_commands_need_voice_mode_and_atz_forgets_caller_id(started):
    modem, client = await started("conexant")
    await client.command("ATE0")
    assert await client.command("AT+VLS=1", b"ERROR\r\n") == "\r\nERROR\r\n"
    await client.command("AT+FCLASS=8;+VCID=1")
    assert modem.vcid == 1 and modem.fclass == "8"
    assert await client.command("AT+VCID?") == "\r\n1\r\n\r\nOK\r\n"
    await client.command("ATZ")
    assert modem.vcid == 0 and modem.fclass == "0" and modem.echo
    assert await client.command("AT-STE=?") == "AT-STE=?\r\r\n(0-7)\r\n\r\nOK\r\n"
    client.close()


async def test_vls_and_vts(started):
    modem, client = await started("conexant")
    await voice_ready(client)
    answer = await client.command("AT+VLS=?")
    assert '1,"T",0BC01800,0BC01800,0BC01800' in answer
    await client.command("AT+VTS=1,2,[440,480,100],{5,20}")
    assert modem.played_tones == ["1,2,[440,480,100],{5,20}"]
    assert (await client.command("AT+VTS=[x]", b"ERROR\r\n")).endswith("ERROR\r\n")
    assert (await client.command("AT+VRX", b"ERROR\r\n")).endswith("ERROR\r\n")  # on hook: no input
    client.close()


CALLER = {"date": "1127", "time": "1405", "number": "0312345678", "name": "TANAKA"}


@pytest.mark.parametrize(
    "style,expected_lines",
    [
        ("spaced", ["DATE = 1127", "TIME = 1405", "NMBR = 0312345678", "NAME = TANAKA"]),
        ("compact", ["DATE=1127", "TIME=1405", "NMBR=0312345678", "NAME=TANAKA"]),
        ("mesg", ["DATE = 1127", "TIME = 1405", "NMBR = 0312345678", "MESG = 070654414E414B41"]),
    ],
)
async def test_ring_with_caller_id_text(started, style, expected_lines):
    modem, client = await started("conexant")
    await voice_ready(client)
    await client.command("AT+VCID=1")
    await modem.ring(CALLER, format=style)
    block = "".join(line + "\r\n" for line in expected_lines)
    expected = f"\r\nRING\r\n\r\n{block}\r\n".encode()
    assert await client.read_until(expected_lines[-1].encode() + b"\r\n\r\n") == expected
    (cid,) = parse_callerid_lines(expected.decode())
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "11-27T14:05")
    client.close()


async def test_raw_hex_and_whole_frame_caller_id(started):
    modem, client = await started("usr")
    await voice_ready(client)
    await client.command("AT#CID=2")
    await modem.ring(CALLER)
    lines = (await _drain(client)).decode().split("\r\n")
    assert lines[:3] == ["", "RING", ""]
    hex_line = lines[3]
    assert hex_line.startswith("801E")  # MDMF, 30 data bytes
    (cid,) = parse_callerid_lines([hex_line])
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "11-27T14:05")
    await client.command("AT+VCID=1")
    await modem.ring({"number": "P", "name": "O"}, format="frame")
    text = (await client.read_until(b"\r\n\r\n")).decode()  # RING
    text += (await client.read_until(b"\r\n\r\n")).decode()
    (cid,) = parse_callerid_lines(text)
    assert cid.reason_absent == "P" and cid.name_absent == "O" and cid.message is not None
    client.close()


async def test_no_caller_id_unless_enabled_and_ring_as_dle(started):
    modem, client = await started("conexant", ring_report="dle")
    await voice_ready(client)
    await modem.ring(CALLER, rings=2)
    assert await _drain(client) == b"\x10R\x10R"  # caller ID was never enabled
    await client.command("AT+VCID=1")
    await modem.ring({"number": "0312345678"}, caller_id_first=True)
    assert await _drain(client) == b"\r\nNMBR = 0312345678\r\n\r\n\x10R"
    client.close()


async def test_events_and_dtmf_in_command_mode(started):
    modem, client = await started("conexant", dtmf_edges=False, dtmf_repeats=2)
    await voice_ready(client)
    modem.press("7")
    modem.line_event("b")
    assert await _drain(client) == b"\x107\x107\x107\x10b"
    modem.dtmf_edges, modem.dtmf_end_code = True, 0x7F
    modem.press("9", repeats=0)
    assert await _drain(client) == b"\x10/\x109\x10\x7f"
    with pytest.raises(ValueError, match="not a DTMF key"):
        modem.press("X")
    client.close()


def _u8(x: np.ndarray) -> bytes:
    """The test's own unsigned 8-bit encoding (offset 128)."""
    return (np.round(np.clip(x, -1, 1) * 127) + 128).astype(np.uint8).tobytes()


async def _start_receive(client: RawClient, vsm: str) -> None:
    await voice_ready(client)
    await client.command(vsm)
    await client.command("AT+VLS=1")
    assert await client.command("AT+VRX", b"CONNECT\r\n") == "\r\nCONNECT\r\n"


async def test_receive_stream_is_shielded_and_usr_abort_ends_with_etx(started):
    modem, client = await started("usr")
    pattern = np.array([(16 - 128) / 127, 0.0, (16 - 128) / 127, 0.5])  # u8 0x10 0x80 0x10 0xC0
    position = 0

    def source(n: int) -> np.ndarray:
        nonlocal position
        out = pattern[(np.arange(n) + position) % len(pattern)]
        position += n
        return out

    modem.set_audio_source(source)
    await _start_receive(client, "AT+VSM=128,8000")
    raw = await client.read_at_least(1200)
    await client.send(b"\x10!")
    raw += await client.read_until(b"OK\r\n")
    decoder = DleDecoder()
    decoder.start_stream(bytes_per_second=8000)
    events = decoder.feed(raw)
    audio = b"".join(e.data for e in events if isinstance(e, Audio))
    assert len(audio) >= 800 and len(audio) % 160 == 0  # whole 20 ms frames
    assert audio == _u8(pattern[np.arange(len(audio)) % len(pattern)])
    assert EndOfStream() in events  # USR answers <DLE>! with <DLE><ETX>
    assert raw.endswith(b"\x10\x03\r\nOK\r\n")
    assert decoder.audio_bytes == len(audio)
    assert await client.command("AT") == "\r\nOK\r\n"  # back in command mode
    client.close()


async def test_dtmf_during_receive_collapses_to_one_digit(started):
    modem, client = await started("conexant")
    await _start_receive(client, "AT+VSM=130,8000")
    await client.read_at_least(160)
    modem.press("5", repeats=3)
    raw = await client.read_until(b"\x10~")
    await client.send(b"\x10!")
    raw += await client.read_until(b"OK\r\n")
    assert raw.count(b"\x105") == 4
    decoder = DleDecoder()
    decoder.start_stream(bytes_per_second=8000)
    dtmf = [e for e in decoder.feed(raw) if isinstance(e, (DtmfToneStart, DtmfDigit, DtmfToneEnd))]
    assert dtmf == [DtmfToneStart(), DtmfDigit("5"), DtmfToneEnd("5")]
    assert b"\x10\x03" not in raw[-8:]  # Conexant ends the stream with OK only
    client.close()


async def _start_transmit(client: RawClient) -> None:
    await voice_ready(client)
    await client.command("AT+VSM=130,8000")
    await client.command("AT+VLS=1")
    assert await client.command("AT+VTX", b"CONNECT\r\n") == "\r\nCONNECT\r\n"


async def test_transmit_records_unescaped_audio(started):
    modem, client = await started("conexant", pace=False)
    await _start_transmit(client)
    audio = bytes(range(256)) * 8 + b"\x10\x10\x10"
    await client.send(escape(audio) + b"\x01\x10\x1a\x02" + b"\x10\x03")
    assert await client.read_until(b"OK\r\n") == b"\r\nOK\r\n"
    assert modem.transmitted_audio == audio + b"\x01\x10\x10\x02"
    client.close()


async def test_transmit_abort_drops_the_buffer(started):
    modem, client = await started("conexant", pace=True)
    await _start_transmit(client)
    await client.send(escape(b"\x80" * 8000) + b"\x10\x18\x10\x03")  # 1 s of audio, then CAN ETX
    with trio.fail_after(0.8):  # well before the second of audio could have played
        assert await client.read_until(b"OK\r\n") == b"\r\nOK\r\n"
    assert len(modem.transmitted_audio) < 8000
    client.close()


async def test_transmit_underrun_is_reported(started):
    modem, client = await started("conexant", pace=True)
    await _start_transmit(client)
    await client.send(b"\x80" * 320)  # 40 ms, no end of stream
    assert await client.read_until(b"\x10u") == b"\x10u"
    await client.send(b"\x10\x03")
    assert await client.read_until(b"OK\r\n") == b"\r\nOK\r\n"
    assert modem.transmitted_audio == b"\x80" * 320
    client.close()


async def _drain(client: RawClient) -> bytes:
    """Everything the modem sends until it has been quiet for 0.2 s."""
    while True:
        with trio.move_on_after(0.2) as quiet:
            await client._fill()
        if quiet.cancelled_caught:
            break
    out = bytes(client.buffer)
    client.buffer.clear()
    return out
