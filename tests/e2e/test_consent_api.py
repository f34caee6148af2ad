"""Opt-outs and replies end to end: hypercorn on 127.0.0.1:0, httpx over a real socket, the real SmsService
(with OptOutPolicy) and SmsDispatcher (with the reply and keyword hooks) on a temporary SQLite file, and a
fake modem that sends instantly and delivers incoming PDUs built here (TS 23.040 §9.2.2.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from api.app import create_app
from api.auth import TokenStore, hash_token
from api.server import serve
from api.services import ApiServices
from drivers.gsm import pdu
from drivers.gsm.modem import IncomingSms, ModemStatus
from gateway.events import EventBus
from gateway.sms.consent import ConsentService, ConsentSettings, OptOutKeywordHook, OptOutPolicy
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.models import SmsSettings
from gateway.sms.replies import ReplyCorrelator, ReplyRules
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore

TOKENS = {
    "crm": ("crm", "crm-1f2e3d4c5b6a79881726354453627180a9b8c7d6", ["sms:send", "sms:read"]),
    "reader": ("viewer", "reader-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b", ["sms:read"]),
}
PATIENT = "+819012345678"
PATIENT_NATIONAL = "090-1234-5678"
JST = timezone(timedelta(hours=9))


def auth(who: str = "crm") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who][1]}"}


def deliver_pdu(sender: str, text: str) -> str:
    """SMS-DELIVER, UCS2, no SMSC address: FO 0x04, OA (international), PID 0, DCS 0x08, SCTS, UDL, UD."""
    digits = sender.lstrip("+")
    padded = digits + ("F" if len(digits) % 2 else "")
    oa = f"{len(digits):02X}91" + "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    stamp = datetime.now(UTC).astimezone(JST).strftime("%y%m%d%H%M%S") + "36"  # TZ: +9 h = 36 quarter hours
    scts = "".join(stamp[i + 1] + stamp[i] for i in range(0, 14, 2))
    body = text.encode("utf-16-be")
    return f"0004{oa}0008{scts}{len(body):02X}{body.hex().upper()}"


class InstantModem:
    """A ready modem: sends at once (TP-MR counts up), and hands out incoming PDUs."""

    def __init__(self, name: str):
        self.name = name
        self.status = ModemStatus(name=name, state="ready")
        self._inbox, self.events = trio.open_memory_channel[Any](100)
        self.sent: list[str] = []  # texts of the parts sent
        self._mr = 0

    async def send_pdu(self, pdu_hex: str, tpdu_length: int) -> int:
        await trio.lowlevel.checkpoint()
        self.sent.append(pdu.decode(pdu_hex).text or "")
        self._mr = (self._mr + 1) % 256
        return self._mr

    async def acknowledge(self, item: Any) -> None:
        return None

    def receive(self, sender: str, text: str) -> None:
        self._inbox.send_nowait(IncomingSms(self.name, deliver_pdu(sender, text), "SM", 0))


@dataclass
class Running:
    url: str
    store: SqliteStore
    bus: EventBus
    modem: InstantModem

    async def events_until(self, sub: Any, type_: str, within: float = 10.0) -> dict[str, dict]:
        """Events (type -> data, the last of each type) up to and including the first ``type_``."""
        seen: dict[str, dict] = {}
        with trio.fail_after(within):
            async for event in sub:
                seen[event.type] = event.data
                if event.type == type_:
                    return seen
        raise AssertionError(f"the event stream ended before {type_}")


def tokens() -> TokenStore:
    return TokenStore.from_config(
        [{"name": n, "hash": hash_token(t), "scopes": s} for n, t, s in TOKENS.values()]
    )


@asynccontextmanager
async def running(tmp_path: Path, *, consent: bool = True) -> AsyncIterator[Running]:
    """The wiring the daemon is asked to do (see the consent engineer's report)."""
    store = await SqliteStore.open(tmp_path / "gateway.sqlite3")
    try:
        bus = await EventBus.open(store)
        modem = InstantModem("gsm0")
        modems = {"gsm0": modem}
        settings = SmsSettings()
        sms = SmsService(store, bus, modems, settings=settings, region="JP")
        consent_settings = ConsentSettings().with_categories(sms.categories)
        sms.add_submit_policy(OptOutPolicy(consent_settings))
        hooks = [ReplyCorrelator(), OptOutKeywordHook(consent_settings, send_later=sms.submit_nowait)]
        dispatcher = SmsDispatcher(store, bus, modems, settings=settings, service=sms, inbound_hooks=hooks)
        service = ConsentService(store, consent_settings, region="JP", reply_rules=ReplyRules(store))
        app = create_app(ApiServices(sms=sms, bus=bus, tokens=tokens(), consent=service if consent else None))
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            url = await nursery.start(serve, app, "127.0.0.1", 0)
            yield Running(url, store, bus, modem)
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def test_stop_reply_refuses_education_but_not_lab_results_and_surveys_get_answers(tmp_path):
    async with running(tmp_path) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
        sub = gw.bus.subscribe()
        survey = await c.post(
            "/v1/messages",
            headers=auth(),
            json={
                "to": PATIENT_NATIONAL,
                "text": "本日の診察はいかがでしたか。1〜5でお答えください。",
                "category": "care",
            },
        )
        assert survey.status_code == 202, survey.text
        survey_id = survey.json()["id"]
        rule = await c.post(
            "/v1/reply-rules",
            headers=auth(),
            json={"scope": "message", "ref_id": survey_id, "rule": {"kind": "range", "min": 1, "max": 5}},
        )
        assert rule.status_code == 200 and rule.json()["rule"] == {"kind": "range", "min": 1, "max": 5}
        await gw.events_until(sub, "sms.sent")

        gw.modem.receive(PATIENT, "４")
        received = (await gw.events_until(sub, "sms.received"))["sms.received"]
        assert (received["in_reply_to"], received["campaign_id"], received["answer"]) == (survey_id, None, 4)
        assert received["opt_out"] is False

        gw.modem.receive(PATIENT, "ＳＴＯＰ")
        seen = await gw.events_until(sub, "sms.received")
        assert seen["sms.received"]["opt_out"] is True and seen["sms.received"]["in_reply_to"] == survey_id
        opted_out = seen["sms.opted_out"]  # appended in the same transaction, just before sms.received
        assert opted_out["number"] == PATIENT and opted_out["categories"] == ["*"]
        assert opted_out["source"] == "keyword" and opted_out["keyword"] == "STOP"
        queued = (await gw.events_until(sub, "sms.sent"))["sms.queued"]  # the confirmation
        assert queued["to"] == PATIENT and queued["client_ref"] == f"opt-out:{seen['sms.received']['id']}"
        assert gw.modem.sent[-1].startswith("You are unsubscribed")

        refused = await c.post(
            "/v1/messages",
            headers=auth(),
            json={"to": PATIENT, "text": "健康講座のご案内", "category": "education"},
        )
        assert refused.status_code == 422
        assert refused.headers["content-type"].startswith("application/problem+json")
        problem = refused.json()
        assert problem["code"] == "opted_out" and problem["errors"][0]["field"] == "to"
        lab = await c.post(
            "/v1/messages",
            headers=auth(),
            json={"to": PATIENT, "text": "検査結果が出ました", "category": "lab_result"},
        )
        assert lab.status_code == 202, lab.text

        listed = await c.get("/v1/opt-outs", params={"number": PATIENT_NATIONAL}, headers=auth("reader"))
        assert listed.status_code == 200
        [entry] = listed.json()["items"]
        assert (entry["number"], entry["category"], entry["source"]) == (PATIENT, "*", "keyword")

        removed = await c.delete(f"/v1/opt-outs/{PATIENT}", headers=auth())
        assert removed.status_code == 200 and removed.json() == {"removed": 1}
        again = await c.post(
            "/v1/messages",
            headers=auth(),
            json={"to": PATIENT, "text": "健康講座のご案内", "category": "education"},
        )
        assert again.status_code == 202, again.text


async def test_opt_out_registry_over_http(tmp_path):
    async with running(tmp_path) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
        created = await c.post(
            "/v1/opt-outs",
            headers=auth(),
            json={
                "number": PATIENT_NATIONAL,
                "categories": ["education", "billing"],
                "reason": "電話で申し出",
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["added"] == ["education", "billing"]
        assert [(i["category"], i["source"], i["reason"]) for i in body["items"]] == [
            ("billing", "api", "電話で申し出"),
            ("education", "api", "電話で申し出"),
        ]
        same = await c.post(
            "/v1/opt-outs", headers=auth(), json={"number": PATIENT, "categories": ["billing"]}
        )
        assert same.status_code == 200 and same.json()["added"] == []

        billing = await c.post(
            "/v1/messages",
            headers=auth(),
            json={"to": PATIENT, "text": "ご請求のお知らせ", "category": "billing"},
        )
        assert billing.status_code == 422 and billing.json()["code"] == "opted_out"
        care = await c.post(
            "/v1/messages", headers=auth(), json={"to": PATIENT, "text": "お大事に", "category": "care"}
        )
        assert care.status_code == 202

        one = await c.delete(
            f"/v1/opt-outs/{PATIENT_NATIONAL}", params={"category": "billing"}, headers=auth()
        )
        assert one.status_code == 200 and one.json() == {"removed": 1}
        missing = await c.delete(f"/v1/opt-outs/{PATIENT}", params={"category": "billing"}, headers=auth())
        assert missing.status_code == 404 and "it has: 'education'" in missing.json()["detail"]
        page = await c.get("/v1/opt-outs", headers=auth())
        assert [(i["number"], i["category"]) for i in page.json()["items"]] == [(PATIENT, "education")]
        assert page.json()["next_cursor"] is None
        spec = (await c.get("/openapi.json")).json()
        assert {"get", "post"} <= set(spec["paths"]["/v1/opt-outs"])
        assert "delete" in spec["paths"]["/v1/opt-outs/{number}"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/v1/opt-outs", {"json": {"number": "12"}}, 422, "invalid_number"),
        (
            "post",
            "/v1/opt-outs",
            {"json": {"number": PATIENT, "categories": ["otp"]}},
            422,
            "invalid_category",
        ),
        (
            "post",
            "/v1/opt-outs",
            {"json": {"number": PATIENT, "categories": ["spam"]}},
            422,
            "invalid_category",
        ),
        ("post", "/v1/opt-outs", {"json": {"number": PATIENT, "extra": 1}}, 422, "validation_error"),
        ("post", "/v1/opt-outs", {"json": {"number": 819012345678}}, 422, "validation_error"),
        (
            "post",
            "/v1/opt-outs",
            {"content": b"{", "headers": {"Content-Type": "application/json"}},
            400,
            "malformed_json",
        ),
        (
            "post",
            "/v1/opt-outs",
            {"content": b"number=1", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("get", "/v1/opt-outs", {"params": {"limit": "0"}}, 400, "invalid_parameter"),
        ("get", "/v1/opt-outs", {"params": {"cursor": "bm9wZQ"}}, 400, "invalid_parameter"),
        ("get", "/v1/opt-outs", {"params": {"phone": PATIENT}}, 400, "invalid_parameter"),
        ("get", "/v1/opt-outs", {"params": {"number": "abc"}}, 422, "invalid_number"),
        ("delete", f"/v1/opt-outs/{PATIENT}", {}, 404, "not_found"),
        ("delete", "/v1/opt-outs/0", {}, 422, "invalid_number"),
        (
            "post",
            "/v1/reply-rules",
            {"json": {"scope": "message", "ref_id": "msg_x", "rule": {"kind": "range", "min": 1, "max": 5}}},
            404,
            "not_found",
        ),
        (
            "post",
            "/v1/reply-rules",
            {"json": {"scope": "campaign", "ref_id": "c1", "rule": {"kind": "x"}}},
            422,
            "invalid_reply_rule",
        ),
        ("get", "/v1/reply-rules/survey/c1", {}, 404, "not_found"),
        ("get", "/v1/reply-rules/campaign/c1", {}, 404, "not_found"),
    ],
)
async def test_bad_requests_get_problem_details(tmp_path, method, path, kwargs, status, code):
    async with running(tmp_path) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
        headers = {**auth(), **kwargs.pop("headers", {})}
        response = await c.request(method, path, headers=headers, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
        rows = await gw.store.read(
            lambda tx: tx.connection.execute("SELECT count(*) FROM opt_outs").fetchone()
        )
        assert rows == (0,)


async def test_scopes_and_disabled_registry(tmp_path):
    async with running(tmp_path) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
        assert (await c.get("/v1/opt-outs")).status_code == 401
        forbidden = await c.post("/v1/opt-outs", headers=auth("reader"), json={"number": PATIENT})
        assert forbidden.status_code == 403 and forbidden.json()["code"] == "insufficient_scope"
        assert (await c.delete(f"/v1/opt-outs/{PATIENT}", headers=auth("reader"))).status_code == 403
        assert (await c.get("/v1/opt-outs", headers=auth("reader"))).status_code == 200
    (tmp_path / "off").mkdir()
    async with (
        running(tmp_path / "off", consent=False) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as c,
    ):
        off = await c.get("/v1/opt-outs", headers=auth())
        assert off.status_code == 404 and "not enabled" in off.json()["detail"]
