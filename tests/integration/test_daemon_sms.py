"""The whole daemon (store, bus, modem drivers, dispatcher, API) against simulated modems on real ptys,
driven like a CRM would: REST over a real socket, events over a real WebSocket."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import connect_websocket_url

from gateway.config import Config
from gateway.daemon import Gateway, run_gateway

TOKEN = "integration-token-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(data: Path, *, modems: int = 2, latency: float = 0.05, report_delay: float = 0.1,
                **sms: Any) -> Config:
    raw = {
        "gateway": {"data_dir": str(data)},
        "api": {"port": 0, "tokens": [{"name": "t", "scopes": ["admin"],
                                       "hash": "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()}]},
        "simulators": {"gsm": [{"name": f"sim{i}", "link": str(data / f"dev/gsm{i}"), "send_latency": latency,
                                "report_delay": report_delay} for i in range(modems)]},
        "modems": [{"name": f"gsm{i}", "port": str(data / f"dev/gsm{i}"), "command_timeout": 2.0,
                    "send_timeout": 5.0} for i in range(modems)],
        "sms": {"retry_backoff_s": [0.2], **sms},
        "logging": {"level": "warning"},
    }
    return Config.model_validate(raw)


@asynccontextmanager
async def gateway(config: Config) -> AsyncIterator[Gateway]:
    async with trio.open_nursery() as nursery:
        gw = await nursery.start(run_gateway, config)
        with trio.fail_after(20):
            async for _ in _status_changes(gw):
                if all(m.status.state == "ready" for m in gw.modems.values()):
                    break
        try:
            yield gw
        finally:
            gw.stop.set()


async def _status_changes(gw: Gateway):
    sub = gw.bus.subscribe(since=(gw.bus.epoch, 0), types={"modem.state_changed"})
    yield None
    async for _ in sub:
        yield None


@pytest.fixture
async def gw(tmp_path) -> AsyncIterator[Gateway]:
    async with gateway(make_config(tmp_path)) as running:
        yield running


@asynccontextmanager
async def client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, headers=AUTH, timeout=10) as c:
        yield c


async def events_until(ws, predicate, within: float = 30.0) -> list[dict]:
    seen = []
    with trio.fail_after(within):
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("type") in ("hello", "ping"):
                continue
            seen.append(frame)
            if predicate(frame, seen):
                return seen


async def eventually(predicate, within: float = 30.0) -> None:
    """For state that announces no event of its own (a simulator's SIM storage, a driver's status)."""
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.05)


async def wait_status(c: httpx.AsyncClient, message_id: str, status: str, within: float = 30.0) -> dict:
    with trio.fail_after(within):
        while True:
            body = (await c.get(f"/v1/messages/{message_id}")).json()
            if body["status"] == status:
                return body
            await trio.sleep(0.05)


async def test_message_lifecycle_over_rest_and_websocket(gw, nursery):
    ws = await connect_websocket_url(nursery, gw.url.replace("http", "ws") + "/v1/events",
                                     extra_headers=[("Authorization", f"Bearer {TOKEN}")])
    async with client(gw) as c:
        body = {"to": "090-1234-5678", "text": "検査結果が出ました", "report": True}
        r = await c.post("/v1/messages", json=body)
        assert r.status_code == 202, r.text
        msg = r.json()
        assert msg["to"] == "+819012345678" and msg["to_raw"] == "090-1234-5678"
        assert r.headers["Location"].endswith(msg["id"])
        events = await events_until(ws, lambda f, _: f["type"] == "sms.delivered"
                                    and f["data"]["id"] == msg["id"])
    mine = [e for e in events if e["data"].get("id") == msg["id"]]
    assert [e["type"] for e in mine] == ["sms.queued", "sms.sending", "sms.sent", "sms.delivered"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq increases by one per event"
    sim = next(s for s in gw.simulators.values() if s.sent)
    assert sim.sent[-1].text == "検査結果が出ました" and sim.sent[-1].request_report


async def test_multipart_sent_back_to_back_on_one_modem_and_delivered_when_every_part_is(gw):
    text = "本日の入院費用は12,345円です。" * 8  # UCS2, 3 parts
    async with client(gw) as c:
        r = await c.post("/v1/messages", json={"to": "+819012345678", "text": text, "report": True})
        assert r.status_code == 202 and r.json()["parts"] == 3
        body = await wait_status(c, r.json()["id"], "delivered")
    assert {p["modem"] for p in body["part_list"]} == {body["modem"]}
    assert all(p["status"] == "delivered" and p["tp_status"] == 0 for p in body["part_list"])
    sent = [s for sim in gw.simulators.values() for s in sim.sent]
    assert "".join(s.text for s in sorted(sent, key=lambda s: s.part)) == text
    assert len({s.concat.ref for s in sent}) == 1, "one concatenation reference for the whole message"


async def test_incoming_multipart_any_order_becomes_one_received_event(gw, nursery):
    ws = await connect_websocket_url(nursery, gw.url.replace("http", "ws") + "/v1/events",
                                     extra_headers=[("Authorization", f"Bearer {TOKEN}")])
    reply = "はい、明日の予約を確認しました。ありがとうございます。" * 5
    sim = gw.simulators["sim1"]
    sim.inject_sms("+818011112222", reply, parts_order=[3, 1, 2])
    events = await events_until(ws, lambda f, _: f["type"] == "sms.received")
    (received,) = [e for e in events if e["type"] == "sms.received"]
    data = received["data"]
    assert data["text"] == reply and data["from"] == "+818011112222" and data["incomplete"] is False
    assert data["modem"] == "gsm1"
    await eventually(lambda: not any(sim.storages.values()), 10)  # deleted from the SIM after the commit
    async with client(gw) as c:
        got = (await c.get(f"/v1/messages/{data['id']}")).json()
        assert got["text"] == reply


@pytest.mark.parametrize(("code", "final"), [(500, "sent"), (1, "failed")])
async def test_temporary_errors_retry_and_permanent_errors_fail(gw, code, final):
    for sim in gw.simulators.values():
        sim.fail_next_sends(code)
    async with client(gw) as c:
        r = await c.post("/v1/messages", json={"to": "+819012345678", "text": "retry me", "report": False})
        body = await wait_status(c, r.json()["id"], final)
    if final == "failed":
        assert body["part_list"][0]["cms_error"] == code


async def test_unplugged_modem_traffic_moves_to_the_other_modem(gw):
    gw.simulators["sim0"].unplug()
    await eventually(lambda: gw.modems["gsm0"].status.state == "absent", 20)
    async with client(gw) as c:
        ids = [(await c.post("/v1/messages", json={"to": "+819012345678", "text": f"m{i}", "report": False}))
               .json()["id"] for i in range(4)]
        for mid in ids:
            assert (await wait_status(c, mid, "sent"))["modem"] == "gsm1"
        modems = (await c.get("/v1/modems")).json()["items"]
        assert {m["name"]: m["state"] for m in modems}["gsm0"] == "absent"
    gw.simulators["sim0"].replug()
    await eventually(lambda: gw.modems["gsm0"].status.state == "ready", 60)


async def test_bad_input_is_refused_and_nothing_is_queued(gw):
    async with client(gw) as c:
        cases = [
            ({"to": "12", "text": "x"}, 422, "invalid_number"),
            ({"to": "+819012345678", "text": ""}, 422, "empty_text"),
            ({"to": "+819012345678", "text": "x" * 2000}, 422, "too_many_parts"),
            ({"to": "+819012345678", "text": "x", "modem": "gsm9"}, 422, "unknown_modem"),
        ]
        for body, status, code in cases:
            r = await c.post("/v1/messages", json=body)
            assert (r.status_code, r.json()["code"]) == (status, code), r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        r = await c.post("/v1/messages", content=b"{not json", headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (400, "malformed_json")
        r = await c.post("/v1/messages", content=b"{}" + b" " * (2 * 1024 * 1024),
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        listed = (await c.get("/v1/messages")).json()["items"]
        assert listed == [], listed
    async with httpx.AsyncClient(base_url=gw.url) as anon:
        r = await anon.post("/v1/messages", json={"to": "+819012345678", "text": "x"})
        assert (r.status_code, r.json()["code"]) == (401, "missing_token")
        r = await anon.post("/v1/messages", json={"to": "+819012345678", "text": "x"},
                            headers={"Authorization": "Bearer wrong-token-value"})
        assert (r.status_code, r.json()["code"]) == (401, "invalid_token")


async def test_restart_mid_queue_loses_nothing(tmp_path):
    """Stop the daemon while 12 messages queue behind slow modems; start it again on the same data directory:
    every message ends `sent`, each exactly once but for at most one duplicate per modem that was mid-send."""
    config = make_config(tmp_path, latency=0.4, report=False)
    async with gateway(config) as gw, client(gw) as c:
        posted = [await c.post("/v1/messages", json={"to": f"+81901234{i:04d}", "text": f"restart {i}"})
                  for i in range(12)]
        assert all(r.status_code == 202 for r in posted), posted[0].text
        ids = [r.json()["id"] for r in posted]
        await trio.sleep(0.6)
        first_sims = list(gw.simulators.values())
    # Counted after the stop: the send in flight at the stop is finished, not abandoned.
    first_run = [s.text for sim in first_sims for s in sim.sent]
    assert 0 < len(first_run) < 12
    async with gateway(config) as gw, client(gw) as c:
        for mid in ids:
            await wait_status(c, mid, "sent", within=60)
        second_run = [s.text for sim in gw.simulators.values() for s in sim.sent]
    texts = first_run + second_run
    assert set(texts) == {f"restart {i}" for i in range(12)}
    assert len(texts) - 12 <= 2, "at most one duplicate per modem that was mid-send"


async def test_websocket_resume_across_restart_replays_the_gap(tmp_path):
    config = make_config(tmp_path, modems=1, report=False)
    async with gateway(config) as gw, client(gw) as c:
        epoch, seq = gw.bus.epoch, gw.bus.last_seq
        await c.post("/v1/messages", json={"to": "+819012345678", "text": "while you were away"})
        await trio.sleep(0.2)
    async with gateway(config) as gw, trio.open_nursery() as nursery:
        assert gw.bus.epoch == epoch, "the journal survives a restart"
        url = gw.url.replace("http", "ws") + f"/v1/events?since={epoch}:{seq}"
        ws = await connect_websocket_url(nursery, url, extra_headers=[("Authorization", f"Bearer {TOKEN}")])
        events = await events_until(ws, lambda f, _: f["type"] == "sms.sent")
        assert events[0]["seq"] == seq + 1
        assert [e["seq"] for e in events] == list(range(seq + 1, seq + 1 + len(events)))
        nursery.cancel_scope.cancel()


async def test_lost_registration_sends_through_the_other_modem(gw):
    gw.simulators["sim0"].set_registration(0)  # TS 27.007 +CREG stat 0: not registered, not searching
    async with client(gw) as c:
        ids = [(await c.post("/v1/messages", json={"to": "+819012345678", "text": f"r{i}", "report": False}))
               .json()["id"] for i in range(4)]
        bodies = [await wait_status(c, mid, "sent") for mid in ids]
    assert {b["modem"] for b in bodies} == {"gsm1"}
    assert not [s for s in gw.simulators["sim0"].sent if s.text in {f"r{i}" for i in range(4)}]
