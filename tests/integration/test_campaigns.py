"""SMS campaigns end to end: GSM modem simulators on real ptys behind the real modem driver, the store,
dispatcher, campaign service and the REST API on a real socket. A CSV upload with bad rows and a duplicate,
a modem unplugged while the campaign runs (it still completes on the other one), progress events at most once
a second, the rejected-rows listing, and the API's problems for bad uploads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import api.app
from api.auth import TokenStore
from api.server import serve
from api.services import ApiServices
from drivers.gsm.modem import GsmModem
from gateway.config import SmsSection
from gateway.events import EventBus
from gateway.sms.campaigns import COUNT_KEYS, CampaignService, CampaignSettings
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.store.sqlite import SqliteStore
from simulators.gsm_modem import SimulatedGsmModem

TOKEN = "campaigns-token-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = "{patient_name}様 {topic}の教室は{date}です。"


@dataclass
class Rig:
    url: str
    campaigns: CampaignService
    sims: dict[str, SimulatedGsmModem]
    events: list  # (event, trio time)
    changed: list  # [trio.Event set by the next event]

    async def until(self, predicate: Any, within: float = 60) -> Any:
        """Wait, event by event, until ``await predicate()`` is truthy; return it."""
        with trio.fail_after(within):
            while True:
                changed = self.changed[0] = trio.Event()
                found = await predicate()
                if found:
                    return found
                await changed.wait()

    def progress(self, campaign_id: str) -> list[tuple[dict, float]]:
        return [
            (e.data, t)
            for e, t in self.events
            if e.type == "campaign.progress" and e.data["id"] == campaign_id
        ]


@pytest.fixture(autouse=True)
def campaign_routes_only(monkeypatch):
    """Mount only this feature's routes until api.app lists api.campaigns (its OPENAPI_OPERATIONS are checked
    for completeness when the app is built)."""
    monkeypatch.setattr(api.app, "FEATURE_ROUTE_MODULES", ("api.campaigns",))


@asynccontextmanager
async def rig(data: Path, settings: CampaignSettings, *, modems: int = 2) -> AsyncIterator[Rig]:
    # Education has quiet hours at night (Tokyo); these tests run at any hour of the day.
    awake = {"education": {"priority": 20, "quiet_hours": None}}
    sms = SmsSection(retry_backoff_s=[0.2], send_retries=6, categories=awake)
    async with trio.open_nursery() as nursery:
        sims, drivers = {}, {}
        for i in range(modems):
            link = data / f"dev/gsm{i}"
            link.parent.mkdir(parents=True, exist_ok=True)
            sim = SimulatedGsmModem(name=f"sim{i}", send_latency=0.1, report_delay=0.1)
            await nursery.start(partial(sim.run, link=str(link)))
            sims[f"gsm{i}"] = sim
            drivers[f"gsm{i}"] = GsmModem(f"gsm{i}", str(link), command_timeout=2.0, send_timeout=5.0)
        store = await SqliteStore.open(data / "gw.sqlite3")
        try:
            bus = await EventBus.open(store, max_events=100_000, max_age_days=1.0)
            events: list = []
            all_ready = trio.Event()

            changed = [trio.Event()]

            def listen(event: Any) -> None:
                events.append((event, trio.current_time()))
                changed[0].set()
                if all(d.status.state == "ready" for d in drivers.values()):
                    all_ready.set()

            bus.add_listener(listen)
            service = SmsService(store, bus, drivers, settings=sms)
            dispatcher = SmsDispatcher(store, bus, drivers, settings=sms, service=service)
            templates = TemplateStore(store)
            await templates.create("class", "education", "ja", BODY, "health class")
            campaigns = CampaignService(
                store, bus, service, templates, dispatcher=dispatcher, settings=settings
            )
            tokens = TokenStore([("t", "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest(), ["admin"])])
            services = ApiServices(sms=service, bus=bus, tokens=tokens, templates=templates)
            services.campaigns = campaigns  # until ApiServices has the field
            app = api.app.create_app(services)
            async with trio.open_nursery() as running:
                for driver in drivers.values():
                    running.start_soon(driver.run)
                await running.start(dispatcher.run)
                await running.start(campaigns.run)
                url = await running.start(partial(serve, app, "127.0.0.1", 0))
                with trio.fail_after(20):
                    await all_ready.wait()
                yield Rig(url, campaigns, sims, events, changed)
                running.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(r: Rig) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=r.url, headers=AUTH, timeout=30) as c:
        yield c


def csv_rows(n: int) -> str:
    return "".join(f"090{20_000_000 + i:08d},患者{i},減塩,12月1日,3F\n" for i in range(n))


async def campaign_where(c: httpx.AsyncClient, campaign_id: str, check: Any) -> Any:
    """A predicate for ``Rig.until``: the campaign's JSON when ``check(it)`` holds, else None."""

    async def predicate() -> dict | None:
        body = (await c.get(f"/v1/campaigns/{campaign_id}")).json()
        return body if check(body) else None

    return predicate


def gone_out(body: dict) -> int:
    return body["counts"]["sent"] + body["counts"]["delivered"]


async def test_csv_campaign_completes_while_a_modem_is_unplugged(tmp_path):
    settings = CampaignSettings(batch_size=5, window_per_route=4)
    async with rig(tmp_path, settings) as r, client(r) as c:
        text = (
            "to,patient_name,topic,date,ward\n" + csv_rows(40) + "0120,誰か,減塩,12月1日,1F\n" + csv_rows(1)
        )
        response = await c.post(
            "/v1/campaigns",
            data={"template": "class", "reply_rule": '{"kind": "range", "min": 1, "max": 5}'},
            files={"recipients": ("patients.csv", text.encode(), "text/csv")},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["Location"] == f"/v1/campaigns/{created['id']}"
        assert created["rows"] == {"received": 42, "accepted": 40, "rejected": 1, "duplicates": 1}
        assert [(p["row"], p["code"]) for p in created["rejected"]] == [
            (42, "invalid_number"),
            (43, "duplicate"),
        ]
        assert created["unused_columns"] == ["ward"] and created["category"] == "education"
        assert created["reply_rule"] == {"kind": "range", "min": 1, "max": 5}
        await r.until(await campaign_where(c, created["id"], lambda b: gone_out(b) >= 5), within=20)
        r.sims["gsm0"].unplug()
        done = await r.until(await campaign_where(c, created["id"], lambda b: b["status"] == "completed"))
        counts = done["counts"]
        lost = [e.data for e, _ in r.events if e.type == "modem.state_changed" and e.data["modem"] == "gsm0"]
        assert lost[-1]["state"] in ("absent", "down"), lost  # the campaign finished on gsm1 alone
        assert counts["total"] == 40 and counts["sent"] + counts["delivered"] == 40, counts
        assert sum(counts[k] for k in COUNT_KEYS) == 40
        listed = (await c.get("/v1/campaigns", params={"status": "completed"})).json()
        assert [item["id"] for item in listed["items"]] == [created["id"]]
        page = (await c.get(f"/v1/campaigns/{created['id']}/rejected", params={"code": "duplicate"})).json()
        assert page == {
            "items": [
                {"row": 43, "code": "duplicate", "field": "to", "detail": "+819020000000 is in row 2 already"}
            ],
            "next_cursor": None,
        }
        times = [t for _, t in r.progress(created["id"])]
        assert len(times) >= 2 and all(b - a >= 0.95 for a, b in zip(times, times[1:], strict=False))
        again = await c.post(f"/v1/campaigns/{created['id']}/pause")
        assert again.status_code == 409 and again.json()["code"] == "conflict"


async def test_upload_problems(tmp_path):
    async with rig(tmp_path, CampaignSettings(max_upload_bytes=4096), modems=1) as r, client(r) as c:

        async def post_csv(text: str, **params: str) -> httpx.Response:
            return await c.post(
                "/v1/campaigns",
                params={"template": "class", **params},
                content=text.encode(),
                headers={"Content-Type": "text/csv; charset=utf-8"},
            )

        missing = await post_csv("to,patient_name\n09020000001,a\n")
        assert (missing.status_code, missing.json()["code"]) == (422, "missing_columns")
        assert {e["field"] for e in missing.json()["errors"]} == {"topic", "date"}
        broken = await post_csv('to,patient_name,topic,date\n09020000001,a,b,c\n09020000002,"a"x,b,c\n')
        assert (broken.status_code, broken.json()["code"]) == (422, "invalid_csv")
        assert "row 3" in broken.json()["detail"]
        unknown = await post_csv("to\n", template="nope")
        assert (unknown.status_code, unknown.json()["code"]) == (422, "unknown_template")
        oversize = await post_csv("to,patient_name,topic,date,ward\n" + csv_rows(200))
        assert (oversize.status_code, oversize.json()["code"]) == (413, "body_too_large")
    async with rig(tmp_path / "json", CampaignSettings(), modems=1) as r, client(r) as c:
        none = await c.post(
            "/v1/campaigns", json={"template": "class", "recipients": [{"to": "12", "vars": {}}]}
        )
        assert (none.status_code, none.json()["code"]) == (422, "no_valid_recipients")
        assert none.json()["errors"][0]["field"] == "recipients.0.to"
        later = await c.post(
            "/v1/campaigns",
            json={
                "template": "class",
                "start_at": "2099-01-01T09:00:00+09:00",
                "recipients": [
                    {"to": "09020000001", "vars": {"patient_name": "a", "topic": "b", "date": "c"}}
                ],
            },
        )
        assert later.status_code == 422 and later.json()["code"] == "invalid_start_at"
        body = {
            "template": "class",
            "route": "gsm0",
            "start_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
            "recipients": [{"to": "09020000001", "vars": {"patient_name": "a", "topic": "b", "date": "c"}}],
        }
        scheduled = (await c.post("/v1/campaigns", json=body)).json()
        assert (scheduled["status"], scheduled["route"]) == ("scheduled", "gsm0")
        canceled = (await c.post(f"/v1/campaigns/{scheduled['id']}/cancel")).json()
        assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 1
        assert (await c.get("/v1/campaigns/cmp_nope")).status_code == 404
        spec = (await c.get("/openapi.json")).json()
        assert "/v1/campaigns/{campaign_id}/rejected" in spec["paths"]
