"""Templates and verification codes end to end: hypercorn on 127.0.0.1:0, httpx over a real socket, the
real SmsService, TemplateStore and VerificationService on a temporary SQLite file (no dispatcher: the code
SMS stays queued, and the tests read the code from it as the patient's phone would)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api.app import create_app
from api.auth import TokenStore, hash_token
from api.server import serve
from api.services import ApiServices
from drivers.gsm.modem import ModemStatus
from gateway.events import EventBus
from gateway.sms.models import SmsSettings
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.store import verify_sql
from gateway.store.sqlite import SqliteStore
from gateway.verify import PurposeSettings, VerificationService, VerificationSettings

TOKENS = {
    "admin": ("ops", "admin-5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c", ["admin"]),
    "crm": ("crm", "crm-0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d", ["sms:send", "sms:read"]),
    "reader": ("viewer", "reader-f0e1d2c3b4a5968778695a4b3c2d1e0f9a8b7c6d", ["sms:read"]),
}
MOBILE = "090-1234-5678"


@dataclass
class FakeModem:
    name: str
    status: ModemStatus


@dataclass
class Running:
    url: str
    store: SqliteStore
    sms: SmsService
    http: httpx.AsyncClient

    @staticmethod
    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who][1]}"}

    async def sent_code(self, verification_id: str) -> str:
        row = await self.store.read(lambda tx: verify_sql.get_verification(tx, verification_id))
        message = await self.sms.get(row.message_id)
        return re.search(r"\d{6}", message.text).group(0)

    async def message_count(self) -> int:
        items, _ = await self.sms.list(status=None, cursor=None, limit=200)
        return len(items)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Running]:
    store = await SqliteStore.open(tmp_path / "gateway.sqlite3")
    try:
        bus = await EventBus.open(store)
        modems = {"gsm0": FakeModem("gsm0", ModemStatus("gsm0", "ready"))}
        sms = SmsService(store, bus, modems, settings=SmsSettings(max_parts=3), region="JP")
        templates = TemplateStore(store, default_price_per_part="0.1")
        await templates.seed()
        settings = VerificationSettings(
            hospital="東京中央病院",
            per_number_hour=3,
            purposes={"quick": PurposeSettings(resend_cooldown_s=0)},
        )
        verifications = VerificationService(store, sms, templates, settings=settings, region="JP")
        tokens = TokenStore.from_config(
            [{"name": n, "hash": hash_token(t), "scopes": s} for n, t, s in TOKENS.values()]
        )
        services = ApiServices(
            sms=sms, bus=bus, tokens=tokens, templates=templates, verifications=verifications
        )
        app = create_app(services)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve, app, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                yield Running(url, store, sms, http)
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"] == f"urn:hcrm:problem:{code}"
    return body


# --- templates ------------------------------------------------------------------------------------------
async def test_seeded_templates_are_listed_for_readers(api: Running) -> None:
    response = await api.http.get("/v1/templates", headers=api.auth("reader"))
    assert response.status_code == 200
    ids = [t["id"] for t in response.json()["items"]]
    assert "verification_code.ja" in ids and "inpatient_daily_cost.zh" in ids and ids == sorted(ids)
    otp = await api.http.get("/v1/templates?category=otp&language=zh", headers=api.auth("reader"))
    assert [t["id"] for t in otp.json()["items"]] == ["verification_code.zh"]
    assert_problem(
        await api.http.get("/v1/templates?sort=id", headers=api.auth("reader")), 400, "invalid_parameter"
    )
    assert_problem(await api.http.get("/v1/templates"), 401, "missing_token")


async def test_template_crud_needs_admin(api: Running) -> None:
    body = {
        "id": "flu.ja",
        "category": "education",
        "language": "ja",
        "body": "{patient_name}様 予防接種のご案内",
    }
    assert_problem(
        await api.http.post("/v1/templates", json=body, headers=api.auth("crm")), 403, "insufficient_scope"
    )
    created = await api.http.post("/v1/templates", json=body, headers=api.auth("admin"))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/templates/flu.ja"
    assert created.json()["placeholders"] == ["patient_name"] and created.json()["revision"] == 1
    assert_problem(
        await api.http.post("/v1/templates", json=body, headers=api.auth("admin")), 409, "conflict"
    )

    got = await api.http.get("/v1/templates/flu.ja", headers=api.auth("reader"))
    assert got.json() == created.json()
    replaced = await api.http.put(
        "/v1/templates/flu.ja",
        json={"category": "education", "language": "ja", "body": "{patient_name}様 {date}に接種できます"},
        headers=api.auth("admin"),
    )
    assert replaced.status_code == 200 and replaced.json()["revision"] == 2
    assert replaced.json()["placeholders"] == ["patient_name", "date"]
    assert_problem(
        await api.http.put("/v1/templates/flu.ja", json={"body": "x"}, headers=api.auth("crm")),
        403,
        "insufficient_scope",
    )
    deleted = await api.http.delete("/v1/templates/flu.ja", headers=api.auth("admin"))
    assert deleted.status_code == 204
    assert_problem(await api.http.get("/v1/templates/flu.ja", headers=api.auth("reader")), 404, "not_found")
    assert_problem(await api.http.delete("/v1/templates/flu.ja", headers=api.auth("admin")), 404, "not_found")


@pytest.mark.parametrize(
    ("change", "status", "code", "field"),
    [
        ({"body": "{patient.name}"}, 422, "invalid_template", ""),
        ({"category": "marketing"}, 422, "invalid_template", ""),
        ({"id": "Has Spaces"}, 422, "invalid_template", ""),
        ({"colour": "red"}, 422, "validation_error", "colour"),
        ({"body": 5}, 422, "validation_error", "body"),
    ],
)
async def test_invalid_templates_are_refused(api: Running, change, status, code, field) -> None:
    body = {"id": "t.ja", "category": "care", "language": "ja", "body": "{x}", **change}
    problem = assert_problem(
        await api.http.post("/v1/templates", json=body, headers=api.auth("admin")), status, code
    )
    assert problem["errors"][0]["field"] == field
    assert_problem(await api.http.get("/v1/templates/t.ja", headers=api.auth("reader")), 404, "not_found")


async def test_preview_returns_text_encoding_parts_and_cost(api: Running) -> None:
    values = {
        "patient_name": "山田太郎",
        "hospital": "東京中央病院",
        "date": "2026年11月27日",
        "items": ["ALT", "AST"],
    }
    response = await api.http.post(
        "/v1/templates/lab_result_ready.ja/preview", json={"vars": values}, headers=api.auth("reader")
    )
    assert response.status_code == 200, response.text
    text = (
        "山田太郎様 2026年11月27日の検査結果が出ました。基準値外の項目：ALT、AST。"
        "東京中央病院の担当医にご相談ください。"
    )
    assert response.json() == {
        "text": text,
        "encoding": "ucs2",
        "parts": 1,
        "characters": len(text),
        "cost": "0.1",
        "unused": [],
    }
    priced = await api.http.post(
        "/v1/templates/lab_result_ready.ja/preview",
        json={"vars": {**values, "note": "x"}, "price_per_part": 0.068},
        headers=api.auth("reader"),
    )
    assert priced.json()["cost"] == "0.068" and priced.json()["unused"] == ["note"]


async def test_preview_names_every_missing_variable(api: Running) -> None:
    response = await api.http.post(
        "/v1/templates/inpatient_daily_cost.ja/preview",
        json={"vars": {"patient_name": "山田", "amount": "1,200"}},
        headers=api.auth("reader"),
    )
    problem = assert_problem(response, 422, "missing_variables")
    assert [e["field"] for e in problem["errors"]] == ["vars.date", "vars.total", "vars.hospital"]
    assert "date, total, hospital" in problem["detail"]


async def test_preview_input_errors(api: Running) -> None:
    url = "/v1/templates/verification_code.ja/preview"
    headers = api.auth("reader")
    assert_problem(
        await api.http.post("/v1/templates/nope/preview", json={}, headers=headers), 404, "not_found"
    )
    assert_problem(
        await api.http.post(url, content=b"{}", headers={**headers, "Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_problem(
        await api.http.post(url, content=b"{", headers={**headers, "Content-Type": "application/json"}),
        400,
        "malformed_json",
    )
    bad_price = await api.http.post(
        url,
        json={"vars": {"hospital": "h", "code": "1", "minutes": 5}, "price_per_part": "-1"},
        headers=headers,
    )
    assert assert_problem(bad_price, 422, "validation_error")["errors"][0]["field"] == "price_per_part"


# --- verifications --------------------------------------------------------------------------------------
async def test_start_check_and_replay(api: Running) -> None:
    started = await api.http.post(
        "/v1/verifications", json={"to": MOBILE, "purpose": "appointment_booking"}, headers=api.auth("crm")
    )
    assert started.status_code == 201, started.text
    body = started.json()
    assert set(body) == {
        "id",
        "to",
        "purpose",
        "status",
        "created_at",
        "expires_at",
        "resend_after",
        "attempts_remaining",
    }
    assert (body["to"], body["purpose"], body["status"]) == (
        "+819012345678",
        "appointment_booking",
        "pending",
    )
    assert started.headers["location"] == f"/v1/verifications/{body['id']}"
    code = await api.sent_code(body["id"])
    assert code not in started.text

    check_url = f"/v1/verifications/{body['id']}/check"
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    denied = await api.http.post(check_url, json={"code": wrong}, headers=api.auth("crm"))
    assert denied.json() == {
        "id": body["id"],
        "status": "denied",
        "attempts_remaining": 4,
        "reason": "wrong_code",
    }
    approved = await api.http.post(check_url, json={"code": code}, headers=api.auth("crm"))
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    replay = await api.http.post(check_url, json={"code": code}, headers=api.auth("crm"))
    assert (replay.json()["status"], replay.json()["reason"]) == ("denied", "already_used")

    state = await api.http.get(f"/v1/verifications/{body['id']}", headers=api.auth("reader"))
    assert state.json()["status"] == "approved" and code not in state.text


async def test_verification_scopes_and_unknown_ids(api: Running) -> None:
    body = {"to": MOBILE, "purpose": "login"}
    assert_problem(await api.http.post("/v1/verifications", json=body), 401, "missing_token")
    assert_problem(
        await api.http.post("/v1/verifications", json=body, headers=api.auth("reader")),
        403,
        "insufficient_scope",
    )
    unknown = "/v1/verifications/ver_01JE0000000000000000000000"
    assert_problem(
        await api.http.post(f"{unknown}/check", json={"code": "123456"}, headers=api.auth("crm")),
        404,
        "not_found",
    )
    assert_problem(await api.http.post(f"{unknown}/resend", headers=api.auth("crm")), 404, "not_found")
    assert_problem(
        await api.http.get("/v1/verifications/anything", headers=api.auth("crm")), 404, "not_found"
    )
    assert await api.message_count() == 0


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"to": "03-1234-5678", "purpose": "login"}, "number_not_allowed", "to"),
        ({"to": "12", "purpose": "login"}, "invalid_number", "to"),
        ({"to": MOBILE, "purpose": "Login Now"}, "invalid_purpose", "purpose"),
        ({"to": MOBILE, "purpose": "login", "template": "nope"}, "unknown_template", "template"),
        (
            {"to": MOBILE, "purpose": "login", "template": "clinic_cancelled.ja"},
            "invalid_template",
            "template",
        ),
        ({"to": MOBILE}, "validation_error", "purpose"),
        ({"to": MOBILE, "purpose": "login", "code": "123456"}, "validation_error", "code"),
    ],
)
async def test_bad_verification_requests_send_nothing(api: Running, body, code, field) -> None:
    problem = assert_problem(
        await api.http.post("/v1/verifications", json=body, headers=api.auth("crm")), 422, code
    )
    assert problem["errors"][0]["field"] == field
    assert await api.message_count() == 0


async def test_malformed_code_is_422_and_costs_no_attempt(api: Running) -> None:
    started = (
        await api.http.post(
            "/v1/verifications", json={"to": MOBILE, "purpose": "login"}, headers=api.auth("crm")
        )
    ).json()
    response = await api.http.post(
        f"/v1/verifications/{started['id']}/check", json={"code": "12ab56"}, headers=api.auth("crm")
    )
    assert assert_problem(response, 422, "invalid_code")["errors"][0]["field"] == "code"
    state = await api.http.get(f"/v1/verifications/{started['id']}", headers=api.auth("crm"))
    assert state.json()["attempts_remaining"] == 5


async def test_resend_cooldown_and_number_rate_limit_answer_429_with_retry_after(api: Running) -> None:
    first = (
        await api.http.post(
            "/v1/verifications", json={"to": MOBILE, "purpose": "login"}, headers=api.auth("crm")
        )
    ).json()
    too_soon = await api.http.post(f"/v1/verifications/{first['id']}/resend", headers=api.auth("crm"))
    assert_problem(too_soon, 429, "resend_too_soon")
    assert 29 <= int(too_soon.headers["retry-after"]) <= 30

    quick = (
        await api.http.post(
            "/v1/verifications", json={"to": MOBILE, "purpose": "quick"}, headers=api.auth("crm")
        )
    ).json()
    old_code = await api.sent_code(quick["id"])
    resent = await api.http.post(f"/v1/verifications/{quick['id']}/resend", headers=api.auth("crm"))
    assert resent.status_code == 200 and resent.json()["status"] == "pending"
    new_code = await api.sent_code(quick["id"])
    if new_code != old_code:
        old = await api.http.post(
            f"/v1/verifications/{quick['id']}/check", json={"code": old_code}, headers=api.auth("crm")
        )
        assert old.json()["status"] == "denied"

    # Three codes went to this number within the hour (the test's limit): the fourth is refused.
    limited = await api.http.post(
        "/v1/verifications", json={"to": MOBILE, "purpose": "other"}, headers=api.auth("crm")
    )
    problem = assert_problem(limited, 429, "rate_limited")
    assert 3590 <= int(limited.headers["retry-after"]) <= 3600
    assert "3 verification codes per hour" in problem["detail"]
    assert await api.message_count() == 3


async def test_cancel(api: Running) -> None:
    started = (
        await api.http.post(
            "/v1/verifications", json={"to": MOBILE, "purpose": "login"}, headers=api.auth("crm")
        )
    ).json()
    canceled = await api.http.delete(f"/v1/verifications/{started['id']}", headers=api.auth("crm"))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    code = await api.sent_code(started["id"])
    check = await api.http.post(
        f"/v1/verifications/{started['id']}/check", json={"code": code}, headers=api.auth("crm")
    )
    assert check.json()["status"] == "canceled"
    resend = await api.http.post(f"/v1/verifications/{started['id']}/resend", headers=api.auth("crm"))
    assert_problem(resend, 409, "conflict")


async def test_openapi_documents_the_routes(api: Running) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    for path, methods in {
        "/v1/templates": {"get", "post"},
        "/v1/templates/{template_id}": {"get", "put", "delete"},
        "/v1/templates/{template_id}/preview": {"post"},
        "/v1/verifications": {"post"},
        "/v1/verifications/{verification_id}": {"get", "delete"},
        "/v1/verifications/{verification_id}/check": {"post"},
        "/v1/verifications/{verification_id}/resend": {"post"},
    }.items():
        assert set(spec["paths"][path]) == methods
    assert spec["paths"]["/v1/templates"]["post"]["security"] == [{"bearerAuth": ["admin"]}]
    assert spec["paths"]["/v1/verifications"]["post"]["security"] == [{"bearerAuth": ["sms:send"]}]
