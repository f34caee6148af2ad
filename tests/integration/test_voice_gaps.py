"""Voice flows through the USB box simulator and the PSTN line simulator: silence hang-up, answer by voice,
a ring between outbound attempts, the contact lookup hook (a raw HTTP responder on loopback), and start-up
recovery of recordings a crash left open."""

from __future__ import annotations

import functools
import json
import shutil
from urllib.parse import parse_qs, urlsplit

import numpy as np
import trio

from gateway.events import EventBus
from gateway.store import voice_sql
from gateway.store.sqlite import SqliteStore
from gateway.voice.calls import Call
from gateway.voice.media import PromptCache, RecordingInfo, RecordingWriter
from gateway.voice.service import VoiceService
from gateway.voice.settings import VoiceSettings
from simulators.pstn_line import Caller, PstnLine, Say
from tests.integration.test_voice_calls import Gateway, usb_gateway


async def test_silence_on_a_connected_call_hangs_up_with_cause_silence(tmp_path):
    line = PstnLine("jp")
    async with usb_gateway(tmp_path, line, auto_answer_rings=1, voice={"silence_hangup_s": 2.0}) as gw:
        line.incoming_call(Caller("0312345678"), script=[Say(1.0)])  # then the far end says nothing
        answered = await gw.until("call.answered")
        ended = await gw.until("call.ended", call_id=answered["call_id"])
    assert ended["cause"] == "silence"
    assert line.kinds("far_end_hangup") == []  # the exchange never cleared: only the silence ended it
    assert line.state.loop_current is False  # we went on hook


async def test_no_silence_hangup_while_the_far_end_speaks(tmp_path):
    line = PstnLine("jp")
    async with usb_gateway(tmp_path, line, auto_answer_rings=1, voice={"silence_hangup_s": 2.0}) as gw:
        line.incoming_call(Caller("0312345678"), script=[Say(8.0)])
        answered = await gw.until("call.answered")
        answered_t = line.t
        ended = await gw.until("call.ended", call_id=answered["call_id"])  # the silence after the speech
        ended_t = line.t
    assert ended["cause"] == "silence"
    # The hang-up came 2 s of line time after the 8 s of speech, not 2 s after the answer.
    assert ended_t - answered_t >= 9.5


async def test_outbound_answer_detected_by_voice_without_polarity_reversal(tmp_path):
    line = PstnLine("jp", polarity_reversal_on_answer=False)
    async with usb_gateway(tmp_path, line) as gw:
        line.expect_outgoing("answer", answer_after_rings=2, script=[Say(3.0)])
        call = await gw.service.dial(["03-1111-1111"], timeout_s=20.0)
        ringing = await gw.until("call.ringing", call_id=call.id)
        answered = await gw.until("call.answered", call_id=call.id)
        await gw.service.hangup(call.id)
        await gw.until("call.ended", call_id=call.id)
    assert ringing["number"] == "03-1111-1111"
    assert answered["answered_by"] == "voice"
    assert answered["confidence"] == 0.85  # voice after ringback was heard
    assert line.kinds("answered")  # the far end did answer (no reversal on this line)


async def test_a_ring_between_outbound_attempts_does_not_take_the_line(tmp_path):
    line = PstnLine("jp")
    voice = {"ring_gap_s": 3.0, "no_answer_timeout_s": 20.0}
    async with usb_gateway(tmp_path, line, voice=voice) as gw:
        line.expect_outgoing("busy")
        call = await gw.service.dial(["03-1111-1111", "03-2222-2222"], timeout_s=10.0)
        first = await gw.until("call.attempt", call_id=call.id)
        assert first["result"] == "busy"
        # The exchange rings the line while the dialler is on hook between the two attempts.
        line.incoming_call(Caller("0399998888", cid="none"), max_rings=1)
        line.expect_outgoing("answer", answer_after_rings=1, script=[Say(3.0)], polarity_reversal=True)
        second = await gw.until("call.attempt", call_id=call.id, within=30)
        await gw.service.hangup(call.id)
        await gw.until("call.ended", call_id=call.id)
    assert second["result"] == "answered" and second["seq"] == 2
    assert line.kinds("ring") and line.kinds("missed")  # it did ring, and nobody took that call
    assert "call.incoming" not in gw.types() and "call.missed" not in gw.types()
    first_at = next(i for i, e in enumerate(gw.seen) if e.type == "call.attempt")
    answered_at = next(i for i, e in enumerate(gw.seen) if e.type == "call.answered")
    between = [e.data["new"] for e in gw.seen[first_at:answered_at] if e.type == "line.state_changed"]
    assert "idle" not in between and "ringing" not in between  # reserved for the dialler throughout
    assert gw.service.get_active(call.id).caller is None
    assert gw.backend.box.dialled == ["0311111111", "0322222222"]


# ------------------------------------------------------------------------------------ contact lookup
class FakeCrm:
    """A raw HTTP/1.1 responder on 127.0.0.1: answers every GET with ``body`` after ``delay`` seconds."""

    def __init__(self, body: dict, delay: float = 0.0) -> None:
        self.body, self.delay = body, delay
        self.requests: list[tuple[float, str]] = []  # (trio time, target)
        self.url = ""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async def handler(stream: trio.SocketStream) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            target = data.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.requests.append((trio.current_time(), target))
            await trio.sleep(self.delay)
            payload = json.dumps(self.body).encode()
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            try:
                await stream.send_all(head + payload)
            except trio.BrokenResourceError:
                pass  # the gateway gave up waiting
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/lookup"
            task_status.started()


async def _incoming_with_crm(tmp_path, crm: FakeCrm, timeout_s: float) -> tuple[dict, float]:
    line = PstnLine("jp")
    async with trio.open_nursery() as nursery:
        await nursery.start(crm.serve)
        voice = {"contact_lookup_url": crm.url, "contact_lookup_timeout_s": timeout_s}
        async with usb_gateway(tmp_path, line, voice=voice) as gw:
            line.incoming_call(Caller("0312345678"), max_rings=1)
            incoming = await gw.until("call.incoming")
            received_at = trio.current_time()
        nursery.cancel_scope.cancel()
    return incoming, received_at


async def test_contact_lookup_answer_is_added_to_call_incoming(tmp_path):
    crm = FakeCrm({"name": "山田 太郎", "patient_id": "P-0042", "extra": "ignored"})
    incoming, _ = await _incoming_with_crm(tmp_path, crm, timeout_s=2.0)
    assert incoming["lookup"] == {"name": "山田 太郎", "patient_id": "P-0042"}
    assert len(crm.requests) == 1
    query = parse_qs(urlsplit(crm.requests[0][1]).query)
    assert query == {"number": ["+81312345678"], "line": ["line1"]}


async def test_a_slow_crm_does_not_delay_call_incoming_beyond_the_timeout(tmp_path):
    crm = FakeCrm({"name": "late", "patient_id": "P-1"}, delay=3.0)
    incoming, received_at = await _incoming_with_crm(tmp_path, crm, timeout_s=0.3)
    assert incoming["lookup"] is None and incoming["caller"]["raw"] == "0312345678"
    asked_at = crm.requests[0][0]
    assert received_at - asked_at < 0.3 + 0.5  # the timeout, plus the store write and the event delivery


# ------------------------------------------------------------------------------------ crash recovery
async def test_recordings_left_open_by_a_crash_are_marked_interrupted_at_start(tmp_path):
    path = tmp_path / "rec" / "call_x-rec_1.flac"
    info = RecordingInfo("call_x", "line1", "in", "0312345678", "2026-11-27T06:00:00Z")
    writer = RecordingWriter(path, info)
    speech = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000 * 3) / 8000)).astype(np.float32)
    for k in range(0, speech.size, 160):
        await writer.write(speech[k : k + 160])
    crashed = tmp_path / "crashed.flac"
    shutil.copy(path, crashed)  # what the disk holds if the process dies now
    await writer.close()
    empty_path = tmp_path / "rec" / "call_x-rec_2.flac"
    RecordingWriter(empty_path, RecordingInfo("call_x", "line1", "in", None, "2026-11-27T06:00:00Z"))

    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    try:
        call = Call("call_x", "in", "line1", None, PromptCache())
        data = call.to_json()
        rows = [
            {"id": "rec_1", "path": str(crashed)},
            {"id": "rec_2", "path": str(empty_path)},  # created, nothing written yet
            {"id": "rec_3", "path": str(tmp_path / "gone.flac")},  # the file is missing
        ]

        def setup(tx) -> None:
            voice_sql.save_call(tx, data)
            for row in rows:
                voice_sql.insert_recording(
                    tx,
                    {
                        **row,
                        "call_id": "call_x",
                        "line": "line1",
                        "format": "FLAC",
                        "state": "recording",
                        "started_at": "2026-11-27T06:00:00Z",
                    },
                )

        await store.write(setup)
        bus = await EventBus.open(store)
        gw = Gateway(VoiceService(store, bus, {}, VoiceSettings()), bus, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.service.run)
            ready = await gw.until("recording.ready", within=10)
            nursery.cancel_scope.cancel()
        recs = await store.read(lambda tx: [voice_sql.get_recording(tx, r["id"]) for r in rows])
    finally:
        await store.close()
    assert ready["recording_id"] == "rec_1" and ready["interrupted"] is True
    assert ready["direction"] == "in" and ready["url"] == "/v1/recordings/rec_1"
    assert 2.0 <= ready["duration_s"] <= 3.0  # up to the last flush before the "crash"
    assert [r["state"] for r in recs] == ["interrupted"] * 3
    assert recs[0]["duration_s"] == ready["duration_s"]
    assert recs[0]["ended_at"].startswith("2026-11-27T06:00:0")
    assert recs[1]["duration_s"] == 0 and recs[2]["duration_s"] == 0
    assert not empty_path.exists()  # a file without a sample is not kept
    assert [e.type for e in gw.seen].count("recording.ready") == 1
