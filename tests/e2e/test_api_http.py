"""REST API end to end: hypercorn on 127.0.0.1:0, httpx over a real socket, the real SmsService + EventBus on
a temporary SQLite file. Every 4xx path checks that nothing was queued (no message, no event)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api.app import create_app
from api.auth import TokenStore, hash_token
from api.openapi import app_operations
from api.schemas import Health, Message, MessagePage, ModemList, Problem
from api.server import serve
from api.services import ApiServices, ApiSettings
from drivers.gsm.modem import ModemStatus
from gateway.events import EventBus
from gateway.sms.models import SmsSettings
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore

TOKENS = {
    "admin": ("ops", "admin-4c3f2d1e0b9a8f7e6d5c4b3a29180716f5e4d3c2", ["admin"]),
    "sender": ("crm", "sender-9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b", ["sms:send", "sms:read"]),
    "reader": ("viewer", "reader-0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6", ["sms:read", "events:read"]),
    "sender2": ("crm2", "sender2-77aa66bb55cc44dd33ee22ff1100ffeeddccbbaa", ["sms:send", "sms:read"]),
}
VALID_TO = "+819012345678"


@dataclass
class FakeModem:
    """What SmsService reads from a GsmModem when no dispatcher runs: its name and status snapshot."""

    name: str
    status: ModemStatus


@dataclass
class RunningApi:
    url: str
    app: Any
    store: SqliteStore
    bus: EventBus
    sms: SmsService
    services: ApiServices
    settings: ApiSettings
    server_done: trio.Event

    def auth(self, who: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who][1]}"}

    def ws_url(self, query: str = "") -> str:
        return self.url.replace("http://", "ws://") + "/v1/events" + (f"?{query}" if query else "")

    async def message_count(self) -> int:
        return len(
            await self.store.read(
                lambda tx: tx.list_messages(status=None, direction=None, before_id=None, limit=1000)
            )
        )


def token_store() -> TokenStore:
    return TokenStore.from_config(
        [
            {"name": name, "hash": hash_token(token), "scopes": scopes}
            for name, token, scopes in TOKENS.values()
        ]
    )


@asynccontextmanager
async def running_api(
    tmp_path: Path, settings: ApiSettings | None = None, shutdown_trigger: Any = None
) -> AsyncIterator[RunningApi]:
    """The API served on a free port; the caller's scope owns the server and the store."""
    settings = settings or ApiSettings()
    store = await SqliteStore.open(tmp_path / "gateway.sqlite3")
    try:
        bus = await EventBus.open(store, client_queue_size=settings.ws_queue_size)
        modems = {
            "gsm0": FakeModem(
                "gsm0",
                ModemStatus(
                    "gsm0",
                    "ready",
                    signal_dbm=-71,
                    registration="home",
                    operator="NTT DOCOMO",
                    manufacturer="Quectel",
                    model="EC25",
                ),
            ),
            "gsm1": FakeModem("gsm1", ModemStatus("gsm1", "down", last_error="no SIM")),
        }
        sms = SmsService(store, bus, modems, settings=SmsSettings(max_parts=3), region="JP")
        services = ApiServices(sms=sms, bus=bus, tokens=token_store())
        app = create_app(services, settings)
        server_done = trio.Event()

        async def run_server(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            await serve(app, "127.0.0.1", 0, shutdown_trigger=shutdown_trigger, task_status=task_status)
            server_done.set()

        async with trio.open_nursery() as nursery:
            url = await nursery.start(run_server)
            yield RunningApi(url, app, store, bus, sms, services, settings, server_done)
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[RunningApi]:
    async with running_api(tmp_path) as running:
        yield running


@pytest.fixture
async def client(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        yield http


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    Problem.model_validate(body)
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"urn:hcrm:problem:{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    return body


async def post_message(
    client: httpx.AsyncClient, api: RunningApi, body: Any, who: str = "admin", **headers: str
) -> httpx.Response:
    return await client.post("/v1/messages", json=body, headers={**api.auth(who), **headers})


# --- happy paths ---


async def test_health_needs_no_token(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = Health.model_validate(response.json())
    assert body.status == "ok" and body.epoch == api.bus.epoch and body.seq == api.bus.last_seq
    assert body.modems.total == 2 and body.modems.ready == 1 and body.modems.states == {"ready": 1, "down": 1}


async def test_submit_returns_202_with_location_and_the_message(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    seq_before = api.bus.last_seq
    response = await post_message(
        client, api, {"to": "090-1234-5678", "text": "こんにちは", "client_ref": "c-1"}, who="sender"
    )
    assert response.status_code == 202, response.text
    body = response.json()
    Message.model_validate(body)
    assert response.headers["location"] == f"/v1/messages/{body['id']}"
    assert body["to"] == VALID_TO and body["to_raw"] == "090-1234-5678"
    assert body["status"] in ("queued", "accepted") and body["encoding"] == "ucs2" and body["parts"] == 1
    assert body["client_ref"] == "c-1" and len(body["part_list"]) == 1
    assert api.bus.last_seq == seq_before + 1  # sms.queued

    fetched = await client.get(response.headers["location"], headers=api.auth("reader"))
    assert fetched.status_code == 200
    assert fetched.json()["id"] == body["id"] and fetched.json()["text"] == "こんにちは"


async def test_scheduled_message(api: RunningApi, client: httpx.AsyncClient) -> None:
    send_at = (
        (datetime.now(UTC) + timedelta(days=3))
        .replace(microsecond=0)
        .astimezone(timezone(timedelta(hours=9)))
    )
    response = await post_message(
        client, api, {"to": VALID_TO, "text": "later", "send_at": send_at.isoformat()}
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "scheduled"
    assert datetime.fromisoformat(response.json()["send_at"]) == send_at


async def test_modems(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/modems", headers=api.auth("reader"))
    assert response.status_code == 200
    modems = {m.name: m for m in ModemList.model_validate(response.json()).items}
    assert modems["gsm0"].state == "ready" and modems["gsm0"].signal_dbm == -71
    assert modems["gsm0"].operator == "NTT DOCOMO" and modems["gsm0"].model == "EC25"
    assert modems["gsm1"].state == "down" and modems["gsm0"].queue_depth == 0


async def test_paging_follows_next_cursor_newest_first(api: RunningApi, client: httpx.AsyncClient) -> None:
    ids = []
    for n in range(5):
        response = await post_message(client, api, {"to": VALID_TO, "text": f"m{n}"})
        ids.append(response.json()["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/messages", params=params, headers=api.auth("reader"))
        assert response.status_code == 200, response.text
        page = MessagePage.model_validate(response.json())
        pages += 1
        assert len(page.items) <= 2
        seen += [m.id for m in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids)) and pages == 3

    await client.delete(f"/v1/messages/{ids[0]}", headers=api.auth())
    canceled = await client.get("/v1/messages", params={"status": "canceled"}, headers=api.auth("reader"))
    assert [m["id"] for m in canceled.json()["items"]] == [ids[0]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "ten"},
        {"colour": "red"},
        {"status": "lost"},
        {"cursor": "zz"},
    ],
)
async def test_paging_rejects_bad_parameters(
    api: RunningApi, client: httpx.AsyncClient, params: dict
) -> None:
    response = await client.get("/v1/messages", params=params, headers=api.auth("reader"))
    body = assert_problem(response, 400, "invalid_parameter")
    assert body["errors"][0]["field"] == next(iter(params))


async def test_cancel_while_queued_then_conflict(api: RunningApi, client: httpx.AsyncClient) -> None:
    message_id = (await post_message(client, api, {"to": VALID_TO, "text": "cancel me"})).json()["id"]
    response = await client.delete(f"/v1/messages/{message_id}", headers=api.auth("sender"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "canceled"
    again = await client.delete(f"/v1/messages/{message_id}", headers=api.auth("sender"))
    assert_problem(again, 409, "conflict")


async def test_cancel_refused_once_sending(api: RunningApi, client: httpx.AsyncClient) -> None:
    message_id = (await post_message(client, api, {"to": VALID_TO, "text": "in flight"})).json()["id"]
    await api.store.write(lambda tx: tx.update_message(message_id, status="sending"))
    response = await client.delete(f"/v1/messages/{message_id}", headers=api.auth("sender"))
    assert_problem(response, 409, "conflict")
    assert (await client.get(f"/v1/messages/{message_id}", headers=api.auth())).json()["status"] == "sending"


async def test_unknown_message_is_404(api: RunningApi, client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/messages/msg_nope", headers=api.auth()), 404, "not_found")
    assert_problem(await client.delete("/v1/messages/msg_nope", headers=api.auth()), 404, "not_found")
    assert_problem(await client.get("/v1/messages/" + "x" * 300, headers=api.auth()), 404, "not_found")


# --- idempotency ---


async def test_idempotent_retry_replays_the_first_response(
    api: RunningApi, client: httpx.AsyncClient
) -> None:
    body = {"to": VALID_TO, "text": "once only"}
    key = '"5f0c7a4e-0d8b-4d0e-9b1e-3f7f5f1f2a11"'
    first = await post_message(client, api, body, **{"Idempotency-Key": key})
    second = await post_message(client, api, body, **{"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert second.headers["location"] == first.headers["location"]
    assert await api.message_count() == 1

    seq = api.bus.last_seq
    other = await post_message(client, api, {**body, "text": "something else"}, **{"Idempotency-Key": key})
    assert_problem(other, 422, "idempotency_key_reused")
    assert await api.message_count() == 1 and api.bus.last_seq == seq

    # Keys are per token: another client using the same key gets its own message.
    theirs = await post_message(client, api, body, who="sender2", **{"Idempotency-Key": key})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


async def test_bare_idempotency_key_is_accepted(api: RunningApi, client: httpx.AsyncClient) -> None:
    body = {"to": VALID_TO, "text": "bare key"}
    first = await post_message(client, api, body, **{"Idempotency-Key": "order-42"})
    second = await post_message(client, api, body, **{"Idempotency-Key": '"order-42"'})
    assert second.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("key", ['""', '"unterminated', "two words", '"' + "k" * 256 + '"', 'a"b'])
async def test_malformed_idempotency_key_is_400(api: RunningApi, client: httpx.AsyncClient, key: str) -> None:
    response = await post_message(client, api, {"to": VALID_TO, "text": "x"}, **{"Idempotency-Key": key})
    assert_problem(response, 400, "invalid_idempotency_key")
    assert await api.message_count() == 0


async def test_key_still_in_flight_is_409(api: RunningApi, client: httpx.AsyncClient) -> None:
    release = trio.Event()
    entered = trio.Event()
    real_submit = api.sms.submit

    async def slow_submit(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_submit(*args, **kwargs)

    api.sms.submit = slow_submit  # type: ignore[method-assign]
    body = {"to": VALID_TO, "text": "slow"}
    headers = {"Idempotency-Key": '"k-1"'}
    results: dict[str, httpx.Response] = {}

    async def first() -> None:
        results["first"] = await post_message(client, api, body, **headers)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await entered.wait()
        assert_problem(await post_message(client, api, body, **headers), 409, "idempotency_key_in_flight")
        release.set()
    assert results["first"].status_code == 202
    replay = await post_message(client, api, body, **headers)
    assert replay.status_code == 202 and replay.json()["id"] == results["first"].json()["id"]


# --- bad input: precise problem, nothing queued ---


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"to": "12345", "text": "hi"}, "invalid_number", "to"),
        ({"to": "+81 90 1234", "text": "hi"}, "invalid_number", "to"),
        ({"to": VALID_TO, "text": ""}, "empty_text", "text"),
        ({"to": VALID_TO, "text": "a" * (153 * 3 + 1)}, "too_many_parts", "text"),
        ({"to": VALID_TO, "text": "hi", "modem": "gsm9"}, "unknown_modem", "modem"),
    ],
)
async def test_domain_errors_are_422_and_queue_nothing(
    api: RunningApi, client: httpx.AsyncClient, body: dict, code: str, field: str
) -> None:
    seq = api.bus.last_seq
    problem = assert_problem(await post_message(client, api, body), 422, code)
    assert problem["errors"][0]["field"] == field
    assert await api.message_count() == 0 and api.bus.last_seq == seq


@pytest.mark.parametrize(
    ("raw", "status", "code", "fields"),
    [
        (b'{"to": "+819012345678", "text": ', 400, "malformed_json", None),
        (b"\xff\xfe", 400, "malformed_json", None),
        (b'{"to": 819012345678, "text": "hi"}', 422, "validation_error", {"to"}),
        (b'{"to": "+819012345678", "text": "hi", "report": "yes"}', 422, "validation_error", {"report"}),
        (
            b'{"to": "+819012345678", "text": "hi", "priority": 1, "cc": []}',
            422,
            "validation_error",
            {"priority", "cc"},
        ),
        (b'{"text": "hi"}', 422, "validation_error", {"to"}),
        (
            b'{"to": "+819012345678", "text": "hi", "send_at": "tomorrow"}',
            422,
            "validation_error",
            {"send_at"},
        ),
        (b'["+819012345678", "hi"]', 422, "validation_error", {""}),
    ],
)
async def test_malformed_bodies(
    api: RunningApi, client: httpx.AsyncClient, raw: bytes, status: int, code: str, fields: set[str] | None
) -> None:
    response = await client.post(
        "/v1/messages", content=raw, headers={**api.auth(), "Content-Type": "application/json"}
    )
    problem = assert_problem(response, status, code)
    if fields is not None:
        assert {e["field"] for e in problem["errors"]} == fields
    assert await api.message_count() == 0


async def test_wrong_content_type_is_415(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/messages",
        content=b"to=%2B819012345678&text=hi",
        headers={**api.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert await api.message_count() == 0


async def test_oversize_body_with_content_length_is_413(api: RunningApi, client: httpx.AsyncClient) -> None:
    body = {"to": VALID_TO, "text": "x" * (api.settings.max_body_bytes + 10)}
    assert_problem(await post_message(client, api, body), 413, "body_too_large")
    assert await api.message_count() == 0


async def _raw_http(api: RunningApi, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a request head and some body bytes, never finish the body, and read the answer."""
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head)
        for chunk in body_chunks:
            await stream.send_all(chunk)
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
                data = await stream.receive_some(65536)
                if not data:
                    break
                received += data
    return received


async def test_oversize_chunked_body_is_refused_while_streaming(api: RunningApi) -> None:
    """No Content-Length: the server answers 413 once the limit is passed, before the body has ended."""
    chunk = b"x" * 65536
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    count = api.settings.max_body_bytes // len(chunk) + 2
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + TOKENS["admin"][1].encode() + b"\r\n\r\n"
    )
    answer = await _raw_http(api, head, [framed] * count)  # the terminating 0-chunk is never sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code":"body_too_large"' in answer.replace(b" ", b"")
    assert await api.message_count() == 0


async def test_declared_oversize_length_is_refused_before_the_body(api: RunningApi) -> None:
    head = (
        b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\nAuthorization: Bearer " + TOKENS["admin"][1].encode() + b"\r\n\r\n"
    )
    answer = await _raw_http(api, head, [b'{"to": '])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# --- authentication and routing ---


async def test_missing_token(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/messages", json={"to": VALID_TO, "text": "hi"})
    assert_problem(response, 401, "missing_token")
    assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert await api.message_count() == 0


@pytest.mark.parametrize("header", ["Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b"])
async def test_invalid_token(api: RunningApi, client: httpx.AsyncClient, header: str) -> None:
    response = await client.get("/v1/modems", headers={"Authorization": header})
    assert_problem(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_missing_scope(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await post_message(client, api, {"to": VALID_TO, "text": "hi"}, who="reader")
    problem = assert_problem(response, 403, "insufficient_scope")
    assert "sms:send" in problem["detail"]
    assert 'scope="sms:send"' in response.headers["www-authenticate"]
    message_id = (await post_message(client, api, {"to": VALID_TO, "text": "hi"})).json()["id"]
    assert_problem(
        await client.delete(f"/v1/messages/{message_id}", headers=api.auth("reader")),
        403,
        "insufficient_scope",
    )
    assert (await client.get(f"/v1/messages/{message_id}", headers=api.auth("reader"))).status_code == 200


async def test_unknown_route_and_wrong_method(api: RunningApi, client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(await client.get("/nothing-here"), 404, "not_found")  # "/" is the operator console
    response = await client.put("/v1/messages", headers=api.auth(), json={})
    assert_problem(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_events_endpoint_without_upgrade_is_426(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events", headers=api.auth())
    assert_problem(response, 426, "websocket_required")
    assert response.headers["upgrade"] == "websocket"


async def test_unexpected_error_is_500_without_details(api: RunningApi, client: httpx.AsyncClient) -> None:
    async def broken(_message_id: str) -> None:
        raise RuntimeError("database exploded at /secret/path")

    api.sms.get = broken  # type: ignore[method-assign]
    response = await client.get("/v1/messages/msg_x", headers=api.auth())
    problem = assert_problem(response, 500, "internal_error")
    assert "secret" not in response.text and problem["request_id"] in problem["detail"]


async def test_request_id_is_echoed_when_sane(api: RunningApi, client: httpx.AsyncClient) -> None:
    echoed = await client.get("/health", headers={"X-Request-Id": "crm-abc.123"})
    assert echoed.headers["x-request-id"] == "crm-abc.123"
    replaced = await client.get("/health", headers={"X-Request-Id": "bad id\twith spaces"})
    assert (
        replaced.headers["x-request-id"] != "bad id\twith spaces"
        and len(replaced.headers["x-request-id"]) == 32
    )


# --- metrics, openapi, cors ---


async def test_metrics_need_admin(api: RunningApi, client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/metrics"), 401, "missing_token")
    assert_problem(await client.get("/metrics", headers=api.auth("reader")), 403, "insufficient_scope")
    await client.get("/v1/messages/msg_missing", headers=api.auth())
    response = await client.get("/metrics", headers=api.auth())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'hcrm_api_requests_total{method="GET",route="/v1/messages/<message_id>",status="404"} 1.0' in text
    assert 'route="/metrics",status="401"' in text and "hcrm_api_ws_clients 0.0" in text


async def test_metrics_can_be_public(tmp_path: Path) -> None:
    async with running_api(tmp_path, ApiSettings(metrics_public=True)) as api:
        async with httpx.AsyncClient(base_url=api.url) as http:
            response = await http.get("/metrics")
            assert response.status_code == 200 and "hcrm_api_request_duration_seconds" in response.text
            spec = (await http.get("/openapi.json")).json()
            assert spec["paths"]["/metrics"]["get"]["security"] == []


async def test_openapi_lists_every_route(api: RunningApi, client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = json.loads(response.content)
    assert spec["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert documented == app_operations(api.app)
    # The core routes; feature modules (templates, calls, IVR, ...) add theirs, each documented.
    assert {
        "/v1/messages",
        "/v1/messages/{message_id}",
        "/v1/modems",
        "/v1/events",
        "/health",
        "/metrics",
        "/openapi.json",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    post = spec["paths"]["/v1/messages"]["post"]
    assert post["security"] == [{"bearerAuth": ["sms:send"]}]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"] == (
        "#/components/schemas/SendMessageRequest"
    )
    assert {"202", "400", "401", "403", "409", "413", "415", "422", "500"} <= set(post["responses"])
    assert spec["paths"]["/health"]["get"]["security"] == []
    schemas = spec["components"]["schemas"]
    assert schemas["SendMessageRequest"]["additionalProperties"] is False
    # every $ref resolves
    refs = {ref for ref in _walk_refs(spec)}
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)


def _walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            found += _walk_refs(value)
        return found
    if isinstance(node, list):
        return [ref for item in node for ref in _walk_refs(item)]
    return []


async def test_cors_preflight_for_configured_origin(tmp_path: Path) -> None:
    async with running_api(tmp_path, ApiSettings(cors_origins=["https://crm.example"])) as api:
        async with httpx.AsyncClient(base_url=api.url) as http:
            preflight = await http.options(
                "/v1/messages",
                headers={"Origin": "https://crm.example", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://crm.example"
            assert "Idempotency-Key" in preflight.headers["access-control-allow-headers"]
            other = await http.get("/health", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
