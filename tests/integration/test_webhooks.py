"""Outbound webhooks end to end: the real store, bus and WebhookService posting to a receiver written here (an
ASGI app on hypercorn over loopback) that checks Standard Webhooks signatures with its own HMAC code; the
retry schedule on trio's MockClock (httpx.MockTransport, no sockets); the REST API over a real socket."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

import api.app
import api.openapi
import api.webhooks
from api.auth import TokenStore, hash_token
from api.server import serve
from api.services import ApiServices
from gateway.events import EventBus
from gateway.store.sqlite import SqliteStore, run_inline
from gateway.webhooks import WebhookService, WebhookSettings

FAST = WebhookSettings(timeout_s=2.0, retry_delays_s=(0.02, 0.05), jitter=0.0, cursor_flush_s=0.05)
ADMIN_TOKEN = "admin-4c3f2d1e0b9a8f7e6d5c4b3a29180716f5e4d3c2"
READER_TOKEN = "reader-0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6"


# --- the receiving end ----------------------------------------------------------------------------------
@dataclass
class Delivery:
    id: str
    timestamp: int
    body: bytes
    signatures: list[str]
    valid_for: list[str]  # which of the receiver's secrets verify it

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


def verify(secret: str, msg_id: str, timestamp: str, body: bytes, header: str) -> bool:
    """What a CRM does (docs/webhooks.md), written independently of gateway/webhooks.py."""
    key = base64.b64decode(secret.split("_", 1)[1])
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split(" "))


class Receiver:
    """A webhook endpoint: records what arrives, answers the scripted statuses (then 204)."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.deliveries: list[Delivery] = []
        self.statuses: list[int | tuple[int, dict[str, str]]] = []
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._arrived = trio.Event()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await trio.sleep(self.delay)
            msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
            signature = headers["webhook-signature"]
            valid_for = [s for s in self.secrets if verify(s, msg_id, timestamp, body, signature)]
            self.deliveries.append(Delivery(msg_id, int(timestamp), body, signature.split(" "), valid_for))
            answer = self.statuses.pop(0) if self.statuses else 204
            status, extra = answer if isinstance(answer, tuple) else (answer, {})
            response_headers = [(k.encode(), v.encode()) for k, v in extra.items()]
            await send({"type": "http.response.start", "status": status, "headers": response_headers})
            await send({"type": "http.response.body", "body": b"not today" if status >= 300 else b""})
        finally:
            self.in_flight -= 1
            self._arrived.set()
            self._arrived = trio.Event()

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Delivery]:
        with trio.fail_after(seconds):
            while len(self.deliveries) < count:
                await self._arrived.wait()
        return self.deliveries

    def ids(self) -> list[str]:
        return [d.id for d in self.deliveries]


async def start_receiver(nursery: trio.Nursery) -> tuple[Receiver, str]:
    receiver = Receiver()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(partial(hypercorn_serve, receiver, config))
    return receiver, binds[0]


# --- the sending end ------------------------------------------------------------------------------------
@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "gateway.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def bus(store: SqliteStore) -> EventBus:
    return await EventBus.open(store)


@asynccontextmanager
async def running(service: WebhookService) -> AsyncIterator[WebhookService]:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def next_event(sub: Any, seconds: float = 10.0) -> Any:
    with trio.fail_after(seconds):
        return await sub.__anext__()


async def until(check: Any, what: str, seconds: float = 5.0) -> Any:
    """Wait for stored state that no event announces (a saved cursor, a redelivery outcome): re-read it
    every 20 ms until ``check()`` returns something truthy."""
    for _ in range(int(seconds / 0.02)):
        if found := await check():
            return found
        await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def subscribe(service: WebhookService, url: str, patterns: list[str], receiver: Receiver) -> str:
    sub, secret = await service.create(url=url, event_types=patterns)
    receiver.secrets.append(secret)
    return sub.id


async def test_delivers_matching_events_in_order_with_valid_signatures(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    async with running(WebhookService(store, bus, FAST)) as service:
        sid = await subscribe(service, url + "/hook", ["sms.*"], receiver)
        sent = await bus.publish("sms.sent", {"message_id": "msg_1"})
        await bus.publish("modem.state_changed", {"modem": "gsm0", "state": "ready"})
        delivered = await bus.publish("sms.delivered", {"message_id": "msg_1"})
        got = await receiver.wait_for(2)
        assert [d.id for d in got] == [sent.id, delivered.id]  # webhook-id is the event id
        assert [d.body for d in got] == [sent.payload, delivered.payload]  # the envelope byte for byte
        assert all(d.valid_for == receiver.secrets for d in got)
        assert abs(got[0].timestamp - datetime.now(UTC).timestamp()) < 60
        # The filtered-out event moved the cursor too; once idle it is saved.
        after = await bus.publish("modem.state_changed", {"modem": "gsm0", "state": "down"})
        async def saved() -> Any:
            sub = await service.get(sid)
            return sub if sub.cursor_seq == after.seq else None

        sub = await until(saved, "the idle cursor to be saved")
    assert sub.delivered == 2 and sub.last_status == 204 and sub.last_error is None
    assert len(receiver.deliveries) == 2


async def test_retries_keep_the_webhook_id_and_the_order(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    receiver.statuses = [500, (503, {"Retry-After": "0"}), 302]
    async with running(WebhookService(store, bus, FAST)) as service:
        sid = await subscribe(service, url, ["sms.*"], receiver)
        first = await bus.publish("sms.sent", {"n": 1})
        second = await bus.publish("sms.sent", {"n": 2})
        got = await receiver.wait_for(5)
        assert [d.id for d in got] == [first.id] * 4 + [second.id]
        assert all(d.body == first.payload for d in got[:4])
        sub = await service.get(sid)
    assert sub.delivered == 2 and sub.head_seq is None and sub.dead_lettered == 0


async def test_gone_disables_the_subscription(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    receiver.statuses = [410]
    watch = bus.subscribe(types={"webhook.disabled", "webhook.dead_lettered"})
    async with running(WebhookService(store, bus, FAST)) as service:
        sid = await subscribe(service, url, ["*"], receiver)
        event = await bus.publish("sms.sent", {"n": 1})
        dead = await next_event(watch)
        disabled = await next_event(watch)
        await bus.publish("sms.sent", {"n": 2})
        assert service.running_workers == 0
        sub = await service.get(sid)
        letters, _ = await service.dead_letters(subscription_id=sid)
    assert (dead.type, dead.data["event_id"]) == ("webhook.dead_lettered", event.id)
    assert dead.data["last_status"] == 410
    assert disabled.type == "webhook.disabled" and "410 Gone" in disabled.data["reason"]
    assert not sub.enabled and "410 Gone" in sub.disabled_reason
    assert [d.id for d in receiver.deliveries] == [event.id]  # nothing after the 410
    assert [(d.event_id, d.attempts, d.status) for d in letters] == [(event.id, 1, "dead")]


async def test_dead_letter_after_max_attempts_then_redelivery(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    settings = FAST.model_copy(update={"max_attempts": 3})
    receiver.statuses = [500, 500, 500]
    watch = bus.subscribe(types={"webhook.dead_lettered"})
    async with running(WebhookService(store, bus, settings)) as service:
        # "*" also matches webhook.dead_lettered: a subscription never gets its own notices.
        sid = await subscribe(service, url + "/all", ["*"], receiver)
        first = await bus.publish("sms.sent", {"n": 1})
        notice = await next_event(watch)
        second = await bus.publish("sms.sent", {"n": 2})
        await receiver.wait_for(4)
        assert receiver.ids() == [first.id] * 3 + [second.id]
        letters, cursor = await service.dead_letters()
        assert cursor is None and len(letters) == 1
        letter = letters[0]
        assert (letter.subscription_id, letter.event_id, letter.attempts) == (sid, first.id, 3)
        assert letter.last_status == 500 and letter.last_error == "HTTP 500: not today"
        assert letter.payload == first.payload
        assert notice.data["dead_letter_id"] == letter.id and notice.data["subscription_id"] == sid

        queued = await service.redeliver(letter.id)
        assert queued.status == "pending"
        await receiver.wait_for(5)
        assert receiver.deliveries[-1].id == first.id and receiver.deliveries[-1].body == first.payload
        async def redelivered() -> Any:
            found = await service.get_dead_letter(letter.id)
            return found if found.status == "redelivered" else None

        letter = await until(redelivered, "the redelivery outcome")
        sub = await service.get(sid)
    assert letter.attempts == 4 and letter.redelivered_at is not None
    assert sub.dead_lettered == 1 and sub.delivered == 1 and sub.consecutive_dead_letters == 0
    assert len(receiver.deliveries) == 5  # the notice about its own dead letter was not sent to it


async def test_consecutive_dead_letters_disable_a_failing_subscription(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    settings = FAST.model_copy(update={"max_attempts": 1, "disable_after_dead_letters": 2})
    receiver.statuses = [500, 502, 500]
    watch = bus.subscribe(types={"webhook.disabled"})
    async with running(WebhookService(store, bus, settings)) as service:
        sid = await subscribe(service, url, ["sms.*"], receiver)
        for n in range(3):
            await bus.publish("sms.sent", {"n": n})
        disabled = await next_event(watch)
        sub = await service.get(sid)
        assert "2 events in a row" in disabled.data["reason"] and not sub.enabled
        assert len(receiver.deliveries) == 2 and sub.dead_lettered == 2
        # Re-enabling resumes from the cursor: the third event is still in the journal.
        await service.update(sid, enabled=True)
        await receiver.wait_for(3)
        assert receiver.deliveries[-1].event["data"] == {"n": 2}


async def test_restart_resumes_from_the_saved_cursor_without_loss(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    async with running(WebhookService(store, bus, FAST)) as service:
        sid = await subscribe(service, url, ["sms.*"], receiver)
        for n in range(3):
            await bus.publish("sms.sent", {"n": n})
        await receiver.wait_for(3)
    # Stopped: events keep being journalled.
    missed = [await bus.publish("sms.sent", {"n": n}) for n in range(3, 8)]
    async with running(WebhookService(store, bus, FAST)) as service:
        await receiver.wait_for(8)
        live = await bus.publish("sms.sent", {"n": 8})
        await receiver.wait_for(9)
        sub = await service.get(sid)
    assert [d.event["data"]["n"] for d in receiver.deliveries] == list(range(9))
    assert receiver.ids()[3:8] == [e.id for e in missed] and receiver.ids()[-1] == live.id
    assert sub.delivered == 9 and sub.cursor_seq == live.seq


async def test_restart_during_retries_continues_the_schedule(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    slow = FAST.model_copy(update={"retry_delays_s": (30.0,), "max_attempts": 3})
    receiver.statuses = [500]
    async with running(WebhookService(store, bus, slow)) as service:
        sid = await subscribe(service, url, ["sms.*"], receiver)
        event = await bus.publish("sms.sent", {"n": 1})
        await receiver.wait_for(1)
        async def retrying() -> Any:
            sub = await service.get(sid)
            return sub if sub.head_attempts == 1 else None

        sub = await until(retrying, "the retry state to be saved")
    assert sub.head_seq == event.seq and sub.next_attempt_at is not None
    # Restart with the next attempt already due: it goes out at once, and counts as attempt 2.
    due = FAST.model_copy(update={"max_attempts": 3})
    await store.write(
        lambda tx: tx.connection.execute(
            "UPDATE webhook_subscriptions SET next_attempt_at = '2000-01-01T00:00:00.000Z' WHERE id = ?",
            (sid,),
        )
    )
    receiver.statuses = [500, 500]
    watch = bus.subscribe(types={"webhook.dead_lettered"})
    async with running(WebhookService(store, bus, due)):
        notice = await next_event(watch)
    assert notice.data["attempts"] == 3 and len(receiver.deliveries) == 3


async def test_slow_endpoint_never_slows_the_bus(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    receiver.delay = 0.05
    settings = FAST.model_copy(update={"backlog": 2, "journal_page": 7})
    async with running(WebhookService(store, bus, settings)) as service:
        await subscribe(service, url, ["sms.*"], receiver)
        events = [await bus.publish("sms.sent", {"n": n}) for n in range(40)]
        # Publishing 40 events did not wait for the endpoint (it needs >= 2 s for them).
        assert len(receiver.deliveries) < 20
        await receiver.wait_for(40, seconds=30)
    assert receiver.ids() == [e.id for e in events]  # in order, no gap, no duplicate
    assert receiver.max_in_flight == 1


async def test_two_subscriptions_filter_independently_and_one_failing_does_not_hold_the_other(
    store, bus, nursery
):
    good, good_url = await start_receiver(nursery)
    bad, bad_url = await start_receiver(nursery)
    bad.statuses = [500] * 100
    settings = FAST.model_copy(update={"retry_delays_s": (5.0,)})
    async with running(WebhookService(store, bus, settings)) as service:
        await subscribe(service, good_url, ["sms.delivered", "modem.*"], good)
        await subscribe(service, bad_url, ["*"], bad)
        await bus.publish("sms.sent", {})
        modem = await bus.publish("modem.state_changed", {"modem": "gsm0"})
        delivered = await bus.publish("sms.delivered", {})
        await good.wait_for(2)
        assert good.ids() == [modem.id, delivered.id]
        assert len(bad.deliveries) == 1  # still retrying its first event, 5 s apart


async def test_rotated_secret_signs_next_to_the_old_one(store, bus, nursery):
    receiver, url = await start_receiver(nursery)
    async with running(WebhookService(store, bus, FAST)) as service:
        sid = await subscribe(service, url, ["sms.*"], receiver)
        old = receiver.secrets[0]
        sub, new = await service.rotate_secret(sid)
        assert new != old and sub.secret_rotated_at is not None
        receiver.secrets = [new, old]
        await bus.publish("sms.sent", {})
        (delivery,) = await receiver.wait_for(1)
    assert len(delivery.signatures) == 2 and delivery.valid_for == [new, old]


# --- exact schedule on MockClock (no sockets, sqlite on the trio thread) ---------------------------------
async def test_default_schedule_timing_on_mock_clock(tmp_path, autojump_clock):
    start = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)

    def clock() -> datetime:
        return start + timedelta(seconds=trio.current_time())

    attempts: list[float] = []
    answers = [httpx.Response(500), httpx.Response(429, headers={"Retry-After": "100"})]

    def endpoint(request: httpx.Request) -> httpx.Response:
        attempts.append(trio.current_time())
        assert request.headers["webhook-timestamp"] == str(int(clock().timestamp()))
        return answers.pop(0) if answers else httpx.Response(503)

    store = await SqliteStore.open(tmp_path / "mock.sqlite3", clock=clock, runner=run_inline)
    try:
        bus = await EventBus.open(store)
        settings = WebhookSettings(jitter=0.0, max_attempts=5)
        service = WebhookService(store, bus, settings, transport=httpx.MockTransport(endpoint), clock=clock)
        watch = bus.subscribe(types={"webhook.dead_lettered"})
        async with running(service):
            await service.create(url="https://crm.example.jp/hook", event_types=["sms.*"])
            begun = trio.current_time()
            await bus.publish("sms.sent", {})
            notice = await next_event(watch, seconds=10_000)
    finally:
        await store.close()
    # 5 s, then Retry-After 100 s (above the scheduled 30 s), then 120 s and 600 s.
    assert [round(t - begun, 6) for t in attempts] == [0.0, 5.0, 105.0, 225.0, 825.0]
    assert notice.data["attempts"] == 5 and notice.data["last_status"] == 503


async def test_max_age_stops_retrying_before_max_attempts(tmp_path, autojump_clock):
    start = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)

    def clock() -> datetime:
        return start + timedelta(seconds=trio.current_time())

    attempts: list[float] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        attempts.append(trio.current_time())
        raise httpx.ConnectError("connection refused")

    store = await SqliteStore.open(tmp_path / "mock.sqlite3", clock=clock, runner=run_inline)
    try:
        bus = await EventBus.open(store)
        settings = WebhookSettings(jitter=0.0, max_age_s=200.0)
        service = WebhookService(store, bus, settings, transport=httpx.MockTransport(endpoint), clock=clock)
        watch = bus.subscribe(types={"webhook.dead_lettered"})
        async with running(service):
            await service.create(url="https://crm.example.jp/hook", event_types=["sms.*"])
            begun = trio.current_time()
            await bus.publish("sms.sent", {})
            notice = await next_event(watch, seconds=10_000)
    finally:
        await store.close()
    assert [round(t - begun, 6) for t in attempts] == [0.0, 5.0, 35.0, 155.0]  # 155 + 600 > 200
    assert notice.data["attempts"] == 4 and "ConnectError: connection refused" in notice.data["last_error"]


# --- REST API -------------------------------------------------------------------------------------------
@pytest.fixture
def webhook_routes_only(monkeypatch):
    """Mount only this feature's routes (other features' modules are not this test's business); their
    OPENAPI_OPERATIONS document them, so /openapi.json is built and checked for completeness."""
    monkeypatch.setattr(api.app, "FEATURE_ROUTE_MODULES", ("api.webhooks",))


@asynccontextmanager
async def api_client(store, bus, service) -> AsyncIterator[httpx.AsyncClient]:
    tokens = TokenStore(
        [("ops", hash_token(ADMIN_TOKEN), ["admin"]), ("viewer", hash_token(READER_TOKEN), ["sms:read"])]
    )
    services = ApiServices(sms=None, bus=bus, tokens=tokens, webhooks=service)
    app = api.app.create_app(services)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(partial(serve, app, "127.0.0.1", 0))
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


async def test_api_crud_secret_once_and_problems(store, bus, nursery, webhook_routes_only):
    receiver, url = await start_receiver(nursery)
    service = WebhookService(store, bus, FAST)
    async with running(service), api_client(store, bus, service) as client:
        created = await client.post("/v1/webhooks", json={"url": url + "/h", "event_types": ["sms.*"]})
        assert created.status_code == 201, created.text
        body = api.webhooks.WebhookSubscriptionBody.model_validate(created.json())
        assert body.secret and body.secret.startswith("whsec_") and body.enabled
        assert created.headers["Location"] == f"/v1/webhooks/{body.id}"
        receiver.secrets.append(body.secret)

        listed = await client.get("/v1/webhooks")
        page = api.webhooks.WebhookList.model_validate(listed.json())
        assert [s.id for s in page.items] == [body.id] and page.items[0].secret is None
        one = (await client.get(f"/v1/webhooks/{body.id}")).json()
        assert "secret" not in one and one["event_types"] == ["sms.*"]

        event = await bus.publish("sms.sent", {})
        (delivery,) = await receiver.wait_for(1)
        assert delivery.id == event.id and delivery.valid_for == [body.secret]

        patched = await client.patch(f"/v1/webhooks/{body.id}", json={"event_types": ["modem.*"]})
        assert patched.status_code == 200 and patched.json()["event_types"] == ["modem.*"]
        off = await client.patch(f"/v1/webhooks/{body.id}", json={"enabled": False})
        assert off.json()["enabled"] is False and off.json()["disabled_reason"]

        rotated = await client.post(f"/v1/webhooks/{body.id}/rotate-secret")
        assert rotated.status_code == 200 and rotated.json()["secret"] not in (None, body.secret)

        problems = [
            await client.post("/v1/webhooks", json={"url": "http://crm.example.jp/h", "event_types": ["*"]}),
            await client.post("/v1/webhooks", json={"url": url, "event_types": ["sms.sentt"]}),
            await client.post("/v1/webhooks", json={"url": url, "event_types": ["*"], "extra": 1}),
            await client.patch(f"/v1/webhooks/{body.id}", json={"url": None}),
            await client.patch(f"/v1/webhooks/{body.id}", json={"skip_backlog": True}),
        ]
        for response in problems:
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
        assert problems[0].json()["errors"] == [{"field": "url", "message": problems[0].json()["detail"]}]
        assert problems[1].json()["errors"][0]["field"] == "event_types"
        text = await client.post("/v1/webhooks", content=b"{}", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415
        assert (await client.get("/v1/webhooks/whk_NOPE")).status_code == 404
        missing = "whk_" + "0" * 26
        assert (await client.patch(f"/v1/webhooks/{missing}", json={"enabled": True})).status_code == 404
        assert (await client.delete(f"/v1/webhooks/{missing}")).status_code == 404
        reader = await client.get("/v1/webhooks", headers={"Authorization": f"Bearer {READER_TOKEN}"})
        assert reader.status_code == 403 and reader.json()["code"] == "insufficient_scope"

        deleted = await client.delete(f"/v1/webhooks/{body.id}")
        assert deleted.status_code == 204
        assert (await client.get(f"/v1/webhooks/{body.id}")).status_code == 404
        spec = (await client.get("/openapi.json")).json()
        assert "/v1/webhooks/dead-letters/{letter_id}/redeliver" in spec["paths"]


async def test_api_dead_letters_list_and_redeliver(store, bus, nursery, webhook_routes_only):
    receiver, url = await start_receiver(nursery)
    settings = FAST.model_copy(update={"max_attempts": 1, "disable_after_dead_letters": 10})
    receiver.statuses = [500, 500, 500]
    watch = bus.subscribe(types={"webhook.dead_lettered"})
    service = WebhookService(store, bus, settings)
    async with running(service), api_client(store, bus, service) as client:
        sid = (await client.post("/v1/webhooks", json={"url": url, "event_types": ["sms.*"]})).json()["id"]
        events = [await bus.publish("sms.sent", {"n": n}) for n in range(3)]
        for _ in events:
            await next_event(watch)
        first = await client.get("/v1/webhooks/dead-letters", params={"limit": 2})
        page = api.webhooks.DeadLetterPage.model_validate(first.json())
        assert [d.event_id for d in page.items] == [events[2].id, events[1].id] and page.next_cursor
        rest = (
            await client.get("/v1/webhooks/dead-letters", params={"cursor": page.next_cursor, "limit": 2})
        ).json()
        assert [d["event_id"] for d in rest["items"]] == [events[0].id] and rest["next_cursor"] is None
        assert rest["items"][0]["event"]["data"] == {"n": 0} and rest["items"][0]["last_status"] == 500

        letter_id = rest["items"][0]["id"]
        queued = await client.post(f"/v1/webhooks/dead-letters/{letter_id}/redeliver")
        assert queued.status_code == 202 and queued.json()["status"] == "pending"
        await receiver.wait_for(4)
        assert receiver.deliveries[-1].id == events[0].id
        async def redelivered() -> Any:
            answer = await client.get("/v1/webhooks/dead-letters", params={"status": "redelivered"})
            return answer.json()["items"]

        assert [d["id"] for d in await until(redelivered, "the redelivery outcome")] == [letter_id]
        params = {"subscription_id": sid, "status": "dead"}
        by_sub = await client.get("/v1/webhooks/dead-letters", params=params)
        assert len(by_sub.json()["items"]) == 2

        bad = [
            await client.get("/v1/webhooks/dead-letters", params={"status": "lost"}),
            await client.get("/v1/webhooks/dead-letters", params={"cursor": "x"}),
            await client.get("/v1/webhooks/dead-letters", params={"limit": "0"}),
            await client.get("/v1/webhooks/dead-letters", params={"sort": "asc"}),
        ]
        assert [r.status_code for r in bad] == [400, 400, 400, 400]
        assert (await client.post("/v1/webhooks/dead-letters/whdl_X/redeliver")).status_code == 404
        await client.patch(f"/v1/webhooks/{sid}", json={"enabled": False})
        refused = await client.post(f"/v1/webhooks/dead-letters/{letter_id}/redeliver")
        assert refused.status_code == 409 and "enable it" in refused.json()["detail"]


async def test_api_answers_404_when_webhooks_are_not_configured(store, bus, webhook_routes_only):
    async with api_client(store, bus, None) as client:
        response = await client.get("/v1/webhooks")
    assert response.status_code == 404 and "not enabled" in response.json()["detail"]
