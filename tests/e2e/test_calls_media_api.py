"""Playbacks and the operator headset bridge over the REST API: hypercorn on 127.0.0.1:0, httpx, the real
VoiceService with the USB box driver against the simulated box and PSTN line."""

from __future__ import annotations

import httpx
import numpy as np
import soundfile as sf
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
from tests.e2e.test_calls_api import TOKENS, NoSms, auth, until


def write_prompts(directory) -> None:
    directory.mkdir()
    t = np.arange(int(1.0 * 16000)) / 16000
    sf.write(directory / "short.wav", (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), 16000)
    t = np.arange(int(20.0 * 44100)) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 700 * t)] * 2, axis=1).astype(np.float32)
    sf.write(directory / "long.flac", stereo, 44100)


async def test_playbacks_and_bridge_over_the_api(tmp_path):
    write_prompts(tmp_path / "prompts")
    line = PstnLine("jp")
    backend = make_box(line)
    box = UsbVoiceBox("line1", backend=backend, reconnect_backoff=(0.01,), audio_queue=500)
    settings = VoiceSettings(
        lines=[LineSettings(name="line1", driver="usb_box", auto_answer_rings=1, headset_position="desk-1")],
        prompts_dir=tmp_path / "prompts",
        recordings_dir=tmp_path / "rec",
        silence_hangup_s=None,
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
                line.incoming_call(Caller("0312345678"), script=[Say(60.0)])
                call_id = (await until(sub, "call.answered"))["call_id"]
                base = f"/v1/calls/{call_id}"

                # -- playbacks: a 1 s WAV at 16 kHz plays to the end, twice (decoded once)
                short = {"prompts": ["short.wav"]}
                for _ in range(2):
                    started = await c.post(f"{base}/playbacks", headers=auth(), json=short)
                    assert started.status_code == 202, started.text
                    finished = await until(sub, "playback.finished")
                    assert finished["playback_id"] == started.json()["id"]
                    assert finished["outcome"] == "finished"
                assert voice.prompts.loads == 1  # the second playback was a cache hit
                heard = line.upstream_audio()
                assert np.sqrt(np.mean(heard[-16000:] ** 2)) > 0.05  # the far end heard the prompt

                # -- a 20 s FLAC at 44.1 kHz stereo, stopped early with DELETE
                long = await c.post(f"{base}/playbacks", headers=auth(), json={"prompts": ["long.flac"]})
                assert long.status_code == 202
                pb_id = long.json()["id"]
                stop = await c.delete(f"{base}/playbacks/{pb_id}", headers=auth())
                assert stop.status_code == 202
                stopped = await until(sub, "playback.finished", within=5)
                assert stopped["playback_id"] == pb_id and stopped["outcome"] == "stopped"
                again = await c.delete(f"{base}/playbacks/{pb_id}", headers=auth())
                assert again.status_code == 404
                outside = await c.post(f"{base}/playbacks", headers=auth(), json={"prompts": ["../x.wav"]})
                assert outside.status_code in (400, 422) and "outside" in outside.json()["detail"]

                # -- bridge to the operator headset and back
                wrong = await c.post(f"{base}/bridge", headers=auth(), json={"position": "desk-9"})
                assert wrong.status_code == 409 and "desk-1" in wrong.json()["detail"]
                bridged = await c.post(f"{base}/bridge", headers=auth(), json={"position": "desk-1"})
                assert bridged.status_code == 200 and bridged.json()["bridged_to"] == "desk-1"
                assert backend.box.route_headset is True
                assert (await c.get(base, headers=auth())).json()["bridged_to"] == "desk-1"
                back = await c.post(f"{base}/bridge", headers=auth(), json={"back": True})
                assert back.status_code == 200 and back.json()["bridged_to"] is None
                assert backend.box.route_headset is False
                assert [cmd for cmd in backend.box.commands if cmd[0] == "route"] == [
                    ("route", "headset"),
                    ("route", "line"),
                ]
                await c.post(f"{base}/hangup", headers=auth())
            nursery.cancel_scope.cancel()
    finally:
        await store.close()
