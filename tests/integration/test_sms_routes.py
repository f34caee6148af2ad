"""SMS routing end to end: GSM modem simulators on real ptys behind the real modem driver, the HTTP provider
simulator on loopback behind HttpSmsRoute, the store, dispatcher and API on a real socket. Failover from a
failing modem to the other modem and then to the provider, daily caps spilling over to the provider, and the
provider's signed delivery-report callback turning a message delivered. (Quiet hours need a clock that can
jump hours: they are tested on trio's MockClock in tests/unit/test_routing.py.)"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from api.app import create_app
from api.auth import TokenStore
from api.server import serve
from api.services import ApiServices
from drivers.gsm.modem import GsmModem
from gateway.config import SmsSection
from gateway.events import EventBus
from gateway.sms.categories import Categories
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.providers import HttpProviderEntry, ProviderReportIntake, build_routes
from gateway.sms.routing import RoutePolicy
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore
from simulators.gsm_modem import SimulatedGsmModem
from simulators.http_provider import HttpProviderSimulator

TOKEN = "routes-token-0001"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "dlr-secret-0123456789abcdef"
ALICE = "+819012345678"


@dataclass
class Rig:
    url: str
    sms: SmsService
    dispatcher: SmsDispatcher
    bus: EventBus
    sims: dict[str, SimulatedGsmModem]
    provider: HttpProviderSimulator
    events: list

    def of_type(self, type: str) -> list[dict]:
        return [e.data for e in self.events if e.type == type]


def provider_entry(base_url: str) -> HttpProviderEntry:
    """The simulator's documented API (simulators/http_provider.py) and its signed reports."""
    return HttpProviderEntry(
        name="provider",
        url=base_url + "/sms",
        body={"to": "{to}", "text": "{text}", "reference": "{message_id}"},
        success={"json_path": '$.result.status == "ok"'},
        provider_id={"json_path": "$.result.id"},
        timeout_s=5.0,
        retry={"attempts": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05},
        reports={"auth": {"method": "hmac_sha256", "secrets": [SECRET]}},
    )


@asynccontextmanager
async def rig(data: Path, *, modems: int = 2, **sms: Any) -> AsyncIterator[Rig]:
    settings = SmsSection(retry_backoff_s=[0.2], send_retries=6, **sms)
    async with trio.open_nursery() as nursery:
        sims, drivers = {}, {}
        for i in range(modems):
            link = data / f"dev/gsm{i}"
            link.parent.mkdir(parents=True, exist_ok=True)
            sim = SimulatedGsmModem(name=f"sim{i}", send_latency=0.05, report_delay=0.1)
            await nursery.start(partial(sim.run, link=str(link)))
            sims[f"gsm{i}"] = sim
            drivers[f"gsm{i}"] = GsmModem(f"gsm{i}", str(link), command_timeout=2.0, send_timeout=5.0)
        provider = HttpProviderSimulator(latency=0.01, callback_secret=SECRET, report_delay=0.1)
        provider_url = await nursery.start(provider.serve)
        entry = provider_entry(provider_url)
        routes = build_routes([entry])
        store = await SqliteStore.open(data / "gw.sqlite3")
        try:
            bus = await EventBus.open(store, max_events=10_000, max_age_days=1.0, client_queue_size=1000)
            events: list = []
            all_ready = trio.Event()

            def listen(event: Any) -> None:
                events.append(event)
                if all(d.status.state == "ready" for d in drivers.values()):
                    all_ready.set()

            bus.add_listener(listen)
            service = SmsService(
                store,
                bus,
                drivers,
                settings=settings,
                providers=routes,
                categories=Categories.from_config(settings, "Asia/Tokyo"),
                route_policy=RoutePolicy.from_config(settings),
            )
            dispatcher = SmsDispatcher(
                store, bus, drivers, settings=settings, service=service, providers=routes
            )
            intake = ProviderReportIntake.from_entries(store, [entry])
            tokens = TokenStore([("t", "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest(), ["admin"])])
            app = create_app(ApiServices(sms=service, bus=bus, tokens=tokens, provider_reports=intake))
            async with trio.open_nursery() as services:
                for driver in drivers.values():
                    services.start_soon(driver.run)
                await services.start(dispatcher.run)
                url = await services.start(partial(serve, app, "127.0.0.1", 0))
                provider.callback_url = f"{url}/v1/providers/provider/reports"
                with trio.fail_after(20):
                    await all_ready.wait()  # every modem.state_changed "ready" went through the bus
                yield Rig(url, service, dispatcher, bus, sims, provider, events)
                services.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for route in routes.values():
                    await route.aclose()
                await store.close()
        nursery.cancel_scope.cancel()


async def submit(client: httpx.AsyncClient, **body: Any) -> dict:
    response = await client.post("/v1/messages", json={"to": ALICE, "text": "hello", **body})
    assert response.status_code == 202, response.text
    return response.json()


async def wait_status(client: httpx.AsyncClient, message_id: str, statuses: set[str], within=20.0) -> dict:
    with trio.fail_after(within):
        while True:
            message = (await client.get(f"/v1/messages/{message_id}")).json()
            if message["status"] in statuses:
                return message
            await trio.sleep(0.05)


@asynccontextmanager
async def api_client(r: Rig) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=r.url, headers=AUTH, timeout=10) as client:
        yield client


async def test_failover_modem_to_modem_then_to_the_provider(tmp_path):
    modem_only_care = {"care": {"priority": 40, "quiet_hours": None, "allow_provider": False}}
    async with rig(
        tmp_path, cool_off={"failures": 2, "seconds": 600}, categories=modem_only_care
    ) as r, api_client(r) as client:
        r.sims["gsm0"].fail_next_sends(42, count=100)  # +CMS ERROR 42 congestion: temporary
        r.dispatcher._slots["gsm1"].rest_until = trio.current_time() + 1.0  # gsm0 gets the first tries
        first = [await submit(client, text=f"first {i}") for i in range(2)]
        for m in first:
            done = await wait_status(client, m["id"], {"delivered", "undelivered", "failed"})
            assert (done["status"], done["route"], done["cost"]) == ("delivered", "gsm1", 0.1)
        assert [e["route"] for e in r.of_type("route.cooling_off")] == ["gsm0"]
        assert {e["id"] for e in r.of_type("sms.rerouted")} <= {m["id"] for m in first}
        # Now the other modem fails too: the provider takes over (appointment allows it).
        r.sims["gsm1"].fail_next_sends(42, count=100)
        last = await submit(client, text="your appointment is confirmed", category="appointment")
        done = await wait_status(client, last["id"], {"delivered", "failed", "undelivered"})
        assert (done["status"], done["route"], done["category"]) == ("delivered", "provider", "appointment")
        assert done["provider_id"].startswith("sim-") and done["cost"] == 0.068
        assert [e["route"] for e in r.of_type("route.cooling_off")] == ["gsm0", "gsm1"]
        assert [m.text for m in r.provider.sent] == ["your appointment is confirmed"]


async def test_daily_cap_spills_over_to_the_provider(tmp_path):
    async with rig(tmp_path, modems=1, routes={"gsm0": {"daily_cap": 1}}) as r, api_client(r) as client:
        a = await submit(client, text="one")
        await wait_status(client, a["id"], {"sent", "delivered"})
        b = await submit(client, text="two")
        done_b = await wait_status(client, b["id"], {"delivered"})
        done_a = await wait_status(client, a["id"], {"delivered"})
        assert (done_a["route"], done_a["cost"]) == ("gsm0", 0.1)
        assert (done_b["route"], done_b["cost"]) == ("provider", 0.068)
        routes = {route["name"]: route for route in r.dispatcher.routes()}
        assert routes["gsm0"]["capped"] and not routes["provider"]["capped"]


async def test_provider_delivery_report_callback(tmp_path):
    async with rig(tmp_path, modems=1) as r, api_client(r) as client:
        m = await submit(client, text="lab results are ready", route="provider", category="lab_result")
        done = await wait_status(client, m["id"], {"delivered", "undelivered", "failed"})
        assert (done["status"], done["route"]) == ("delivered", "provider")
        assert r.provider.reports[0].response_status == 200
        report = r.of_type("provider.report")[0]
        assert (report["provider_id"], report["message_id"], report["raw_status"]) == (
            done["provider_id"],
            m["id"],
            "DELIVRD",
        )
        # A forged report (no valid signature) and an unknown provider are refused with problems.
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as anonymous:
            forged = await anonymous.post(
                "/v1/providers/provider/reports",
                content=b'{"id": "sim-000001", "status": "UNDELIV"}',
                headers={"X-Signature-Timestamp": "1", "X-Signature": "sha256=00"},
            )
            assert forged.status_code == 401 and forged.json()["code"] == "invalid_provider_signature"
            unknown = await anonymous.post("/v1/providers/nobody/reports", content=b"{}")
            assert unknown.status_code == 404
        assert (await client.get(f"/v1/messages/{m['id']}")).json()["status"] == "delivered"
