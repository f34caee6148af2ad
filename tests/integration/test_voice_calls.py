"""VoiceService with the real drivers against the simulators: UsbVoiceBox + simulated box + PstnLine, and
VoiceModem + simulated voice modem on a pty. Line time runs as fast as the driver reads (unpaced box), so
the real-second timeouts here are generous."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio

from drivers.voice.usbbox import UsbVoiceBox
from gateway.events import EventBus
from gateway.store.sqlite import SqliteStore
from gateway.voice.devices import UsbBoxLine
from gateway.voice.media import read_recording
from gateway.voice.service import VoiceService
from gateway.voice.settings import LineSettings, VoiceSettings
from simulators.pstn_line import Caller, HangUp, Keys, Pause, PstnLine, Say
from simulators.usb_box import make_box

BACKOFF = (0.01, 0.02, 0.05)


class Gateway:
    def __init__(self, service: VoiceService, bus: EventBus, store: SqliteStore) -> None:
        self.service, self.bus, self.store = service, bus, store
        self.sub = bus.subscribe()
        self.seen: list = []

    async def until(self, type_: str, within: float = 20.0, **match) -> dict:
        with trio.fail_after(within):
            async for event in self.sub:
                self.seen.append(event)
                if event.type == type_ and all(event.data.get(k) == v for k, v in match.items()):
                    return event.data
        raise AssertionError(f"event stream ended before {type_}")  # pragma: no cover

    def types(self) -> list[str]:
        return [e.type for e in self.seen]


@asynccontextmanager
async def usb_gateway(
    tmp_path: Path,
    line: PstnLine,
    *,
    tones: str = "jp",
    on_answer=None,
    voice: dict | None = None,
    **line_options,
):
    """``voice``: VoiceSettings overrides; the other keywords are the line's LineSettings."""
    backend = make_box(line)
    box = UsbVoiceBox("line1", backend=backend, tones=tones, reconnect_backoff=BACKOFF, audio_queue=500)
    settings = VoiceSettings(
        **{
            "lines": [LineSettings(name="line1", driver="usb_box", tones=tones, **line_options)],
            "recordings_dir": tmp_path / "rec",
            "dialtone_timeout_s": 5.0,
            "no_answer_timeout_s": 4.0,
            "clear_s": 0.6,
            **(voice or {}),
        }
    )
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    try:
        bus = await EventBus.open(store)
        service = VoiceService(store, bus, {"line1": UsbBoxLine(box)}, settings, on_answer=on_answer)
        gw = Gateway(service, bus, store)
        gw.backend = backend
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await gw.until("line.state_changed", new="idle")
            yield gw
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


@pytest.mark.slow  # the missed call is judged on the trio clock: ring_gap_s (6.5 s) after the last ring
@pytest.mark.parametrize(
    ("country", "standard"),
    [("jp", "v23_ntt"), ("us", "bell202"), ("etsi", "v23_etsi"), ("cn", "dtmf")],
)
async def test_incoming_caller_id_of_each_standard_then_missed(tmp_path, country, standard):
    line = PstnLine(country)
    async with usb_gateway(tmp_path, line, tones=country) as gw:
        line.incoming_call(Caller("0312345678", cid=standard), max_rings=2)
        incoming = await gw.until("call.incoming")
        missed = await gw.until("call.missed", call_id=incoming["call_id"])
        ended = await gw.until("call.ended", call_id=incoming["call_id"])
    assert incoming["caller"]["raw"] == "0312345678"
    assert incoming["caller"]["standard"] == standard
    if standard != "bell202":
        assert incoming["rings"] == 0  # caller ID came before the first ring: screen pop before ringing
    assert missed["rings"] == 2 and ended["cause"] == "missed"
    call = await gw.service.get_call(incoming["call_id"])
    assert call["state"] == "ended" and call["cause"] == "missed"


@pytest.mark.slow
async def test_ntt_car_is_not_counted_as_ringing(tmp_path):
    line = PstnLine("jp")
    async with usb_gateway(tmp_path, line) as gw:
        line.incoming_call(Caller("0312345678"), max_rings=3)
        incoming = await gw.until("call.incoming")
        await gw.until("call.missed")
    assert incoming["rings"] == 0
    assert line.kinds("car")  # the exchange sent CAR...
    assert len(line.kinds("ring")) == 3  # ...and three normal rings, which alone were counted
    stored = await gw.service.get_call(incoming["call_id"])
    assert stored["rings"] == 3


async def test_auto_answer_dtmf_type_ahead_and_far_end_hangup(tmp_path):
    line = PstnLine("jp")
    collected: list[str] = []

    async def ivr(call) -> None:
        collected.append(await call.collect(max_digits=4, terminator="#", first_timeout=10, inter_timeout=5))

    script = [Say(0.3), Keys("12#"), Pause(0.5), HangUp()]
    async with usb_gateway(tmp_path, line, on_answer=ivr, auto_answer_rings=1, record=True) as gw:
        line.incoming_call(Caller("0312345678"), script=script)
        incoming = await gw.until("call.incoming")
        answered = await gw.until("call.answered")
        digits = [(await gw.until("call.dtmf"))["digit"] for _ in range(3)]
        ended = await gw.until("call.ended")
        early = [e.data for e in gw.seen if e.type == "recording.ready"]  # may precede call.ended
        ready = early[0] if early else await gw.until("recording.ready")
    assert answered["call_id"] == incoming["call_id"] == ended["call_id"]
    assert digits == ["1", "2", "#"] and collected == ["12"]
    assert ended["cause"] == "far_end_busy"
    files = await trio.to_thread.run_sync(lambda: sorted((tmp_path / "rec").rglob("*.flac")))
    samples, rate = await trio.to_thread.run_sync(read_recording, files[0])
    assert rate == 8000 and samples.size > 0 and ready["duration_s"] > 0.5


async def test_outbound_busy_then_no_answer_then_answer(tmp_path):
    line = PstnLine("jp", polarity_reversal_on_answer=True)
    outcomes = iter(
        [("busy", {}), ("no_answer", {}), ("answer", {"answer_after_rings": 1, "script": [Say(2.0)]})]
    )

    async with usb_gateway(tmp_path, line) as gw:
        outcome, options = next(outcomes)
        line.expect_outgoing(outcome, **options)
        call = await gw.service.dial(["03-1111-1111", "03-2222-2222", "+81333333333"], timeout_s=4.0)
        results = []
        for _ in range(3):
            attempt = await gw.until("call.attempt", call_id=call.id, within=30)
            results.append(attempt["result"])
            if attempt["result"] != "answered":
                outcome, options = next(outcomes)
                line.expect_outgoing(outcome, **options)
        answered = await gw.until("call.answered", call_id=call.id)
        await gw.service.hangup(call.id)
        ended = await gw.until("call.ended", call_id=call.id)
    assert results == ["busy", "no_answer", "answered"]
    assert answered["answered_by"] == "polarity" and answered["confidence"] == pytest.approx(0.99)
    assert gw.backend.box.dialled == ["0311111111", "0322222222", "0333333333"]
    assert ended["cause"] == "api"
    stored = await gw.service.get_call(call.id)
    assert [a["result"] for a in stored["attempts"]] == ["busy", "no_answer", "answered"]


async def test_unplug_mid_call_ends_it_device_lost_and_line_comes_back(tmp_path):
    line = PstnLine("jp")
    async with usb_gateway(tmp_path, line, auto_answer_rings=1) as gw:
        line.incoming_call(Caller("0312345678"), script=[Say(30.0)])
        answered = await gw.until("call.answered")
        gw.backend.unplug()
        ended = await gw.until("call.ended")
        await gw.until("line.state_changed", new="down")
        gw.backend.replug()
        await gw.until("line.state_changed", new="idle")
    assert ended["call_id"] == answered["call_id"] and ended["cause"] == "device_lost"


async def test_call_waiting_caller_id_does_not_disturb_the_call(tmp_path):
    from simulators.callerid_gen import callerid_burst, mdmf_callerid

    burst = callerid_burst(
        mdmf_callerid(datetime_mmddhhmm="11271405", number="0598765432"), standard="bell202"
    )
    line = PstnLine("us")
    async with usb_gateway(tmp_path, line, tones="us", auto_answer_rings=1) as gw:
        line.incoming_call(Caller("2125551234", cid="none"), script=[Say(0.5), Say(audio=burst), Say(5.0)])
        answered = await gw.until("call.answered")
        waiting = await gw.until("call.waiting")
        await trio.sleep(0.2)
        assert gw.service.get_active(answered["call_id"]).state == "connected"
        await gw.service.hangup(answered["call_id"])
        ended = await gw.until("call.ended")
    assert waiting["caller"]["raw"] == "0598765432"
    assert ended["cause"] == "api"


async def test_recording_survives_a_crash_up_to_the_last_second(tmp_path):
    import shutil

    from gateway.voice.media import RecordingInfo, RecordingWriter

    path = tmp_path / "r.flac"
    writer = RecordingWriter(
        path, RecordingInfo("call_1", "line1", "in", "0312345678", "2026-11-27T06:00:00Z")
    )
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000 * 3) / 8000)).astype(np.float32)
    for k in range(0, tone.size, 160):
        await writer.write(tone[k : k + 160])
    crashed = tmp_path / "crashed.flac"
    shutil.copy(path, crashed)  # the bytes on disk if the process died now (the writer never closed)
    samples, rate = read_recording(crashed)
    assert rate == 8000 and samples.size >= 8000 * 2  # at most the last second lost
    assert np.allclose(samples[:8000], tone[:8000], atol=1e-3)
    await writer.close()
    full, _ = read_recording(path)
    assert full.size == tone.size


async def test_voice_modem_line_incoming_caller_id_answer_dtmf_and_busy_hangup(tmp_path):
    from drivers.voice.v253_modem import VoiceModem
    from gateway.voice.devices import ModemLine
    from simulators.voice_modem import SimulatedVoiceModem

    line = PstnLine("jp")
    line.expect_outgoing("answer", answer_after_rings=0, script=[Say(30.0)])
    sim = SimulatedVoiceModem("conexant")
    sim.set_audio_source(line.read)  # what the modem hears comes from the PSTN line simulator
    collected: list[str] = []

    async def ivr(call) -> None:
        collected.append(await call.collect(max_digits=2, terminator=None, first_timeout=10, inter_timeout=5))

    settings = VoiceSettings(lines=[LineSettings(name="m1", driver="v253", auto_answer_rings=2, record=True)],
                             recordings_dir=tmp_path / "rec")
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    try:
        bus = await EventBus.open(store)
        async with trio.open_nursery() as nursery:
            path = await nursery.start(sim.run)
            modem = VoiceModem("m1", path, reconnect_backoff=BACKOFF)
            service = VoiceService(store, bus, {"m1": ModemLine(modem)}, settings, on_answer=ivr)
            gw = Gateway(service, bus, store)
            await nursery.start(service.run)
            await gw.until("line.state_changed", new="idle")
            caller = {"date": "1127", "time": "1405", "number": "0312345678", "name": "YAMADA"}
            await sim.ring(caller, rings=2, interval=0.3)
            incoming = await gw.until("call.incoming")
            await gw.until("call.answered")
            line.set_hook(True)  # the modem seized the line: the far end's speech reaches its input
            await trio.sleep(1.0)  # let +VRX chunks reach the recording before the keys and the hang-up
            sim.press("4")
            sim.press("2")
            digits = [(await gw.until("call.dtmf"))["digit"] for _ in range(2)]
            sim.line_event("b")
            ended = await gw.until("call.ended")
            early = [e.data for e in gw.seen if e.type == "recording.ready"]  # may precede call.ended
            ready = early[0] if early else await gw.until("recording.ready")
            nursery.cancel_scope.cancel()
    finally:
        await store.close()
    assert incoming["caller"]["raw"] == "0312345678" and incoming["caller"]["name"] == "YAMADA"
    assert incoming["caller"]["standard"] == "modem" and incoming["rings"] == 1
    assert digits == ["4", "2"] and collected == ["42"]
    assert ended["cause"] == "far_end_busy" and ready["duration_s"] > 0


async def test_caller_id_before_the_first_ring_pops_up_in_one_commit(tmp_path):
    """NTT Number Display: the line starts ringing and the caller is known at the same instant; the state
    change and the screen pop are journalled together, in that order, with the call row."""
    line = PstnLine("jp")
    async with usb_gateway(tmp_path, line) as gw:
        line.incoming_call(Caller("0312345678"), max_rings=1)
        incoming = await gw.until("call.incoming")
        stored = await gw.service.get_call(incoming["call_id"])
    pop = gw.seen[-1]
    before = gw.seen[-2]
    assert before.type == "line.state_changed"
    assert before.data == {"line": "line1", "old": "idle", "new": "ringing"}
    assert before.seq == pop.seq - 1 and before.time == pop.time  # one unit, one commit
    assert stored["caller"]["raw"] == "0312345678" and stored["state"] == "ringing"
