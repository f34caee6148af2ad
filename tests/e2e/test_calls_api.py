"""The voice REST API over a real socket: hypercorn on 127.0.0.1:0, httpx, the real VoiceService with the
USB box driver against the simulated box and PSTN line, SQLite in a temporary directory."""

from __future__ import annotations

import httpx
import trio

from api.app import create_app
from api.auth import TokenStore, hash_token
from api.server import serve
from api.services import ApiServices
from drivers.voice.usbbox import UsbVoiceBox
from gateway.events import EventBus
from gateway.store.sqlite import SqliteStore
from gateway.voice.devices import UsbBoxLine
from gateway.voice.service import VoiceService
from gateway.voice.settings import LineSettings, VoiceSettings
from simulators.pstn_line import Caller, PstnLine, Say
from simulators.usb_box import make_box

TOKENS = {
    "crm": ("crm", "crm-0a1b2c3d4e5f60718293a4b5c6d7e8f9", ["calls:write", "calls:read", "recordings:read"]),
    "sms": ("sms", "sms-0a1b2c3d4e5f60718293a4b5c6d7e8f9", ["sms:read"]),
}


def auth(who: str = "crm") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who][1]}"}


async def until(sub, type_: str, within: float = 20.0) -> dict:
    with trio.fail_after(within):
        async for event in sub:
            if event.type == type_:
                return event.data
    raise AssertionError(f"no {type_}")  # pragma: no cover


class NoSms:
    def modems(self) -> list:
        return []


async def test_calls_api_end_to_end(tmp_path):
    line = PstnLine("jp", polarity_reversal_on_answer=True)
    box = UsbVoiceBox("line1", backend=make_box(line), reconnect_backoff=(0.01,), audio_queue=500)
    settings = VoiceSettings(
        lines=[LineSettings(name="line1", driver="usb_box", record=True)],
        recordings_dir=tmp_path / "rec",
        clear_s=0.6,
    )
    tokens = TokenStore.from_config(
        [{"name": n, "hash": hash_token(t), "scopes": s} for n, t, s in TOKENS.values()]
    )
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    try:
        bus = await EventBus.open(store)
        voice = VoiceService(store, bus, {"line1": UsbBoxLine(box)}, settings)
        app = create_app(ApiServices(sms=NoSms(), bus=bus, tokens=tokens, voice=voice))
        sub = bus.subscribe()
        async with trio.open_nursery() as nursery:
            await nursery.start(voice.run)
            url = await nursery.start(serve, app, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                while (await until(sub, "line.state_changed"))["new"] != "idle":
                    pass
                lines = await c.get("/v1/lines", headers=auth())
                assert lines.status_code == 200 and lines.json()["items"][0]["state"] == "idle"
                assert (await c.get("/v1/lines", headers=auth("sms"))).status_code == 403

                bad = await c.post("/v1/calls", headers=auth(), json={"to": []})
                assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"

                line.expect_outgoing("answer", answer_after_rings=1, script=[Say(3.0)])
                placed = await c.post(
                    "/v1/calls", headers=auth(), json={"to": ["090-1234-5678"], "record": True}
                )
                assert placed.status_code == 202, placed.text
                call_id = placed.json()["id"]
                assert placed.headers["Location"] == f"/v1/calls/{call_id}"
                answered = await until(sub, "call.answered")
                assert answered["call_id"] == call_id and answered["answered_by"] == "polarity"
                await trio.sleep(1.0)  # let audio reach the recording: one that captured nothing is dropped
                connected = await c.get("/v1/calls", params={"state": "connected"}, headers=auth())
                assert [x["id"] for x in connected.json()["items"]] == [call_id]
                dtmf = await c.post(f"/v1/calls/{call_id}/dtmf", headers=auth(), json={"digits": "12"})
                assert dtmf.status_code == 202
                up = await c.post(f"/v1/calls/{call_id}/hangup", headers=auth())
                assert up.status_code == 200 and up.json()["cause"] == "api"
                ready = await until(sub, "recording.ready")

                got = await c.get(f"/v1/calls/{call_id}", headers=auth())
                assert got.json()["state"] == "ended" and got.json()["number"] == "090-1234-5678"
                history = await c.get("/v1/history", params={"number": "+81 90 1234 5678"}, headers=auth())
                assert history.status_code == 200
                item = history.json()["items"][0]
                assert item["id"] == call_id and item["recordings"] == [ready["url"]]

                meta = await c.get(ready["url"], headers=auth())
                assert meta.status_code == 200 and "path" not in meta.json()
                media = await c.get(ready["url"] + "/media", headers=auth())
                assert media.status_code == 200 and media.content[:4] == b"fLaC"
                accessed = await until(sub, "recording.accessed")
                assert accessed["principal"] == "crm"
                missing = await c.get("/v1/recordings/rec_nope", headers=auth())
                assert missing.status_code == 404

                line.incoming_call(Caller("0312345678"), max_rings=2)
                incoming = await until(sub, "call.incoming")
                answer = await c.post(f"/v1/calls/{incoming['call_id']}/answer", headers=auth())
                assert answer.status_code == 200 and answer.json()["state"] == "connected"
                await c.post(f"/v1/calls/{incoming['call_id']}/hangup", headers=auth())
            nursery.cancel_scope.cancel()
        audits = await store.read(
            lambda tx: tx.connection.execute("SELECT action FROM recording_access ORDER BY id").fetchall()
        )
        assert [a[0] for a in audits] == ["metadata", "media"]
    finally:
        await store.close()
