"""The trio V.253 voice-modem driver against the simulated modem on a real pty (both families).

Time is trio's MockClock (jumps after 20 ms of real idleness, so pty bytes in flight still arrive before
the clock moves); the simulator paces audio on the same clock, so durations are checked in line time.
Expected audio is computed with the simulator's own G.711 code, never with the driver's."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing

from drivers.voice import v253_modem
from drivers.voice.events import (
    CallerIdText,
    DeviceLost,
    DtmfDigit,
    Ring,
    ToneEvent,
)
from drivers.voice.v253 import VoiceFormat
from drivers.voice.v253_modem import (
    DeviceReady,
    ModemUnavailable,
    VoiceModem,
    VoiceModemError,
    decode_samples,
    encode_samples,
)
from simulators.signals import alaw_decode, mulaw_decode, mulaw_encode
from simulators.voice_modem import SimulatedVoiceModem

TIMEOUT = 10.0
CALLER = {"date": "1127", "time": "1405", "number": "0312345678", "name": "TANAKA"}


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.02)


async def start(nursery, family="conexant", *, link=None, modem_options=None, **sim_options):
    sim = SimulatedVoiceModem(family, link=link, **sim_options)
    path = await nursery.start(sim.run)
    modem = VoiceModem("line1", path, reconnect_backoff=(0.05, 0.1), **(modem_options or {}))
    await nursery.start(modem.run)
    await next_event(modem, DeviceReady)
    return sim, modem


async def next_event(modem: VoiceModem, kind, *, skip=()):
    """The next event of type ``kind``; fails on any other type not listed in ``skip``."""
    with trio.fail_after(TIMEOUT):
        async for event in modem.events:
            if isinstance(event, kind):
                return event
            assert isinstance(event, skip), f"unexpected {event!r} while waiting for {kind.__name__}"
    raise AssertionError("event channel closed")


def pending_events(modem: VoiceModem) -> list:
    out = []
    while True:
        try:
            out.append(modem.events.receive_nowait())
        except trio.WouldBlock:
            return out


# ------------------------------------------------------------------------------------ probing
@pytest.mark.parametrize(
    ("family", "tones", "cml", "encoding"),
    [("usr", "jp", 129, "s16le"), ("conexant", "jp", 131, "ulaw"), ("conexant", "cn", 132, "alaw")],
)
async def test_probe_chooses_the_format_the_modem_lists(nursery, clock, family, tones, cml, encoding):
    sim, modem = await start(nursery, family, modem_options={"tones": tones})
    caps = modem.capabilities
    assert caps is not None and caps.identity.family == family
    assert (modem.format.cml, modem.format.encoding, modem.format.rate) == (cml, encoding, 8000)
    assert (sim.cml, sim.fclass, sim.vcid, sim.vls) == (cml, "8", 1, 0)
    assert (caps.on_hook_label, caps.off_hook_label) == (0, 1)
    assert caps.duplex is False  # the simulator answers ERROR to AT+VTR=?
    for probe in ("ATI0", "AT+FMI?", "AT+FCLASS=?", "AT+VSM=?", "AT+VLS=?", "AT-STE=?", "AT+VTD=?"):
        assert probe in sim.commands
    # Caller ID is switched on after the reset, never before it.
    assert sim.commands.index("AT+VCID=1") > sim.commands.index("ATZ")
    assert sim.ste == (7 if family == "conexant" else 0)  # Conexant line awareness (-STE=7)


async def test_absent_port_is_reported_and_commands_refused(nursery, clock, tmp_path):
    modem = VoiceModem("line1", str(tmp_path / "nothing-here"), reconnect_backoff=(0.05,))
    await nursery.start(modem.run)
    assert modem.state == "absent"
    with pytest.raises(ModemUnavailable, match="line1: the voice modem is absent"):
        await modem.off_hook()


# ------------------------------------------------------------------------------------ incoming calls
@pytest.mark.parametrize("style", ["spaced", "compact", "mesg"])
@pytest.mark.parametrize("family", ["usr", "conexant"])
async def test_incoming_call_with_caller_id(nursery, clock, family, style):
    sim, modem = await start(nursery, family)
    await sim.ring(CALLER, format=style, rings=2, interval=1.0)
    await next_event(modem, Ring)
    cid = await next_event(modem, CallerIdText)
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "11-27T14:05")
    await next_event(modem, Ring)


async def test_caller_id_before_the_ring_and_private_number(nursery, clock):
    sim, modem = await start(nursery, "conexant")
    await sim.ring({"number": "P"}, caller_id_first=True)
    cid = await next_event(modem, CallerIdText)
    assert (cid.number, cid.reason_absent) == (None, "P")
    await next_event(modem, Ring)


async def test_ring_as_dle_code(nursery, clock):
    sim, modem = await start(nursery, "usr", ring_report="dle")
    await sim.ring(None)
    await next_event(modem, Ring)


# ------------------------------------------------------------------------------------ line control, DTMF
@pytest.mark.parametrize(
    "sim_options",
    [
        {"dtmf_edges": True, "dtmf_repeats": 3},
        {"dtmf_edges": True, "dtmf_repeats": 2, "dtmf_end_code": 0x7F},
        {"dtmf_edges": False, "dtmf_repeats": 3},
    ],
    ids=["edges-7E", "edges-7F", "repeats-only"],
)
async def test_off_hook_and_dtmf_collapsed_per_key_press(nursery, clock, sim_options):
    sim, modem = await start(nursery, "conexant", **sim_options)
    await modem.off_hook()
    assert sim.vls == 1 and modem.off_hook_now
    for digit in "5", "5", "#":
        sim.press(digit)
        await trio.sleep(0.5)
    digits = [e.digit for e in pending_events(modem) if isinstance(e, DtmfDigit)]
    assert digits == ["5", "5", "#"]
    await modem.on_hook()
    assert sim.vls == 0


async def test_dtmf_during_recording_stops_it_at_the_key(nursery, clock):
    sim, modem = await start(nursery, "usr", dtmf_edges=False, dtmf_repeats=4)
    await modem.off_hook()

    async def caller():
        await trio.sleep(0.3)
        sim.press("1")
        await trio.sleep(0.3)
        sim.press("#")

    nursery.start_soon(caller)
    rec = await modem.record(until=lambda e: isinstance(e, DtmfDigit) and e.digit == "#", max_seconds=5)
    assert rec.stopped_by == "event" and rec.event == DtmfDigit("#")
    assert 0.5 <= rec.seconds <= 0.8  # cut at the key's place in the stream, not when the host noticed
    digits = [e.digit for e in pending_events(modem) if isinstance(e, DtmfDigit)]
    assert digits == ["1", "#"]  # 4 repeats of each collapsed by the sample clock


async def test_dial_and_send_dtmf(nursery, clock):
    sim, modem = await start(nursery, "conexant")
    await modem.dial("0312345678")
    await modem.send_dtmf("12#")
    assert sim.dialled == ["0312345678"] and sim.played_tones == ["1,2,#"]
    with pytest.raises(ValueError, match="dial string"):
        await modem.dial("03-1234")


@pytest.mark.parametrize(
    ("code", "tone"), [("b", "busy"), ("d", "dialtone"), ("s", "silence"), ("q", "quiet")]
)
async def test_tone_codes_become_events(nursery, clock, code, tone):
    sim, modem = await start(nursery, "conexant")
    sim.line_event(code)
    assert await next_event(modem, ToneEvent) == ToneEvent(tone)


# ------------------------------------------------------------------------------------ audio
async def test_play_delivers_exact_bytes_at_the_sample_clock(nursery, clock):
    sim, modem = await start(nursery, "conexant")
    await modem.off_hook()
    data = bytes(range(256)) * 16  # every byte value, DLE (0x10) included: 4096 µ-law samples, 0.512 s
    began = trio.current_time()
    played = await modem.play(data)
    elapsed = trio.current_time() - began
    assert sim.transmitted_audio == data
    assert played == pytest.approx(0.512)
    assert 0.5 <= elapsed <= 0.512 + 0.1  # paced by the sample clock, not dumped nor dragged
    assert not [e for e in pending_events(modem) if e.type == "underrun"]


async def test_playback_is_paced_with_a_bounded_lead(nursery, clock, monkeypatch):
    writes = []
    original = v253_modem.SerialPort.write

    async def spy(self, data):
        writes.append((trio.current_time(), len(data)))
        await original(self, data)

    monkeypatch.setattr(v253_modem.SerialPort, "write", spy)
    sim, modem = await start(nursery, "conexant")
    await modem.off_hook()
    writes.clear()
    began = trio.current_time()
    await modem.play(b"\xff" * 8000)  # 1 s of µ-law silence: 50 chunks of 20 ms, no DLE to shield
    chunks = [(t, n) for t, n in writes if n == 160]
    assert len(chunks) == 50 and sim.transmitted_audio == b"\xff" * 8000
    sent = 0
    for t, n in chunks:
        assert sent / 8000 - (t - began) <= modem.playback_lead + 1e-6  # never further ahead than the lead
        sent += n
    assert chunks[-1][0] - began >= 1.0 - modem.playback_lead - 0.03  # spread over the sample clock


async def test_play_float_samples_in_16_bit(nursery, clock):
    sim, modem = await start(nursery, "usr")
    await modem.off_hook()
    t = np.arange(2400) / 8000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    await modem.play(x)
    assert sim.transmitted_audio == np.round(x.astype(np.float64) * 32767).astype("<i2").tobytes()


async def test_play_refuses_a_partial_sample(nursery, clock):
    _, modem = await start(nursery, "usr")
    with pytest.raises(ValueError, match="whole number of 2-byte samples"):
        await modem.play(b"\x00\x01\x02")


def _source(x: np.ndarray):
    position = 0

    def take(n: int) -> np.ndarray:
        nonlocal position
        out = x[position : position + n]
        position += n
        return np.pad(out, (0, n - out.size))

    return take


@pytest.mark.parametrize("family", ["usr", "conexant"])
async def test_record_returns_exactly_the_streamed_bytes(nursery, clock, family):
    sim, modem = await start(nursery, family)
    rng = np.random.default_rng(5)
    if family == "usr":  # 16-bit: every int16 value is reproduced exactly by the simulator
        ints = rng.integers(-32767, 32767, 8000)
        x = ints / 32767.0
        expected = ints.astype("<i2").tobytes()
    else:
        x = rng.uniform(-1, 1, 8000)
        expected = mulaw_encode(x).tobytes()
    assert b"\x10" in expected[:4000]  # the shielding is exercised
    sim.set_audio_source(_source(x))
    await modem.off_hook()
    rec = await modem.record(0.25)
    width = 2 if family == "usr" else 1
    assert rec.stopped_by == "duration" and len(rec.data) == 2000 * width
    assert rec.data == expected[: 2000 * width]
    assert rec.received_bytes >= len(rec.data)
    await modem.on_hook()  # the stream ended cleanly: commands work again
    assert sim.vls == 0 and sim.mode == "command"


async def test_duplex_refused_when_the_modem_lacks_vtr(nursery, clock):
    _, modem = await start(nursery, "conexant")
    with pytest.raises(VoiceModemError, match=r"does not support full-duplex AT\+VTR"):
        await modem.duplex(b"\xff" * 80)


# ------------------------------------------------------------------------------------ resets, hot-plug
async def test_reset_re_enables_caller_id(nursery, clock):
    sim, modem = await start(nursery, "conexant")
    sim.commands.clear()
    await modem.reset()
    assert sim.commands.index("AT+VCID=1") > sim.commands.index("ATZ")
    assert sim.vcid == 1 and modem.state == "ready"


async def test_unplug_then_replug_comes_back_with_caller_id(nursery, clock, tmp_path):
    link = str(tmp_path / "ttyVOICE0")
    sim, modem = await start(nursery, "conexant", link=link)
    await modem.off_hook()
    sim.unplug()
    lost = await next_event(modem, DeviceLost)
    assert "ttyVOICE0" in lost.reason and modem.state == "absent"
    with pytest.raises(ModemUnavailable):
        await modem.off_hook()
    await trio.sleep(1.0)
    sim.commands.clear()
    sim.replug()
    await next_event(modem, DeviceReady)
    assert "AT+VCID=1" in sim.commands and sim.vcid == 1  # re-enabled on the fresh modem
    await sim.ring(CALLER)
    assert (await next_event(modem, CallerIdText, skip=(Ring,))).number == "0312345678"


async def test_unplug_during_playback_raises_and_reports_loss(nursery, clock, tmp_path):
    sim, modem = await start(nursery, "usr", link=str(tmp_path / "ttyVOICE1"))
    await modem.off_hook()

    async def pull():
        await trio.sleep(0.3)
        sim.unplug()

    nursery.start_soon(pull)
    with pytest.raises(ModemUnavailable):
        await modem.play(np.zeros(16000, dtype=np.float32))
    await next_event(modem, DeviceLost, skip=(ToneEvent,))


# ------------------------------------------------------------------------------------ sample codec
@pytest.mark.parametrize(("law", "decode"), [("ulaw", mulaw_decode), ("alaw", alaw_decode)])
def test_g711_agrees_with_the_independent_simulator_codec(law, decode):
    fmt = VoiceFormat(131, law, law, 8, 8000)
    x = np.linspace(-0.99, 0.99, 4001)
    ours = np.frombuffer(encode_samples(x, fmt), dtype=np.uint8)
    theirs = decode(ours)
    # G.711 steps are ≤ 1/32 of a chord; both decoders put values mid-step.
    assert np.max(np.abs(theirs - x) / np.maximum(np.abs(x), 0.01)) < 0.07
    assert np.allclose(decode_samples(ours.tobytes(), fmt), theirs, rtol=0.01, atol=2e-4)
    assert encode_samples(np.zeros(1), fmt) == (b"\xff" if law == "ulaw" else b"\xd5")
