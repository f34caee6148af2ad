"""Opt-out registry, OptOutPolicy and opt-out keywords (gateway/sms/consent.py) on a real SQLite store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gateway.sms.consent import (
    ConsentService,
    ConsentSettings,
    OptOutKeywordHook,
    OptOutPolicy,
    decode_cursor,
)
from gateway.sms.models import InvalidRequest, Message, MessageStatus, NotFound, SubmitRequest
from gateway.store import consent_sql
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
PATIENT = "+819012345678"


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "consent.sqlite3")
    try:
        yield store
    finally:
        await store.close()


def incoming(
    text: str, *, sender: str | None = PATIENT, at: datetime = T0, msg_id: str = "msg_in1"
) -> Message:
    return Message(
        id=msg_id,
        direction="in",
        status=MessageStatus.RECEIVED,
        text=text,
        parts=1,
        created_at=at,
        updated_at=at,
        sender=sender,
        sender_raw=sender or "DOCOMO",
        modem="gsm1",
        received_at=at,
    )


class Outbox:
    def __init__(self) -> None:
        self.queued: list[SubmitRequest] = []

    def __call__(self, request: SubmitRequest) -> None:
        self.queued.append(request)


async def receive(store, hook, message: Message) -> tuple[dict, list[str]]:
    """Run the hook in a unit like the dispatcher does; returns the sms.received data and the event types."""

    def unit(tx):
        data: dict = {"id": message.id}
        hook.on_received(tx, message, data)
        return data, [e.type for e in tx.events]

    return await store.write(unit)


def check(store, policy, category: str, to: str = PATIENT):
    request = SubmitRequest(to=to, text="x", category=category)
    return store.write(lambda tx: policy.check(tx, request, to, category))


# --- keywords -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        " Stop! ",
        "ＳＴＯＰ",
        "ｓｔｏｐ。",
        "STOP\n",
        "配信停止",
        "「配信停止」",
        "配信\u3000停止",
        "退订",
        "退订。",
        "TD",
        "td",
        "ＴＤ",
        "ｔｄ",
    ],
)
def test_keywords_match_whatever_the_width_case_spacing_or_punctuation(text):
    hook = OptOutKeywordHook(send_later=Outbox())
    assert hook.match(text) is not None


@pytest.mark.parametrize(
    "text",
    ["please stop", "don't stop my reminders", "STOPP", "TDX", "退订了吗?", "配信", "", "5", "ST OP X"],
)
def test_other_texts_are_not_keywords(text):
    assert OptOutKeywordHook(send_later=Outbox()).match(text) is None


def test_keyword_settings_are_validated():
    with pytest.raises(ValidationError, match="same once normalised"):
        ConsentSettings(keywords={"STOP": "ok", "ｓｔｏｐ": "ok"})
    with pytest.raises(ValidationError, match="empty once spaces"):
        ConsentSettings(keywords={"!!": "ok"})
    with pytest.raises(ValidationError, match="must be one of bypass_categories"):
        ConsentSettings(confirmation_category="care")
    with pytest.raises(ValidationError, match="unknown categories: billing2"):
        ConsentSettings(bypass_categories=frozenset({"otp", "billing2"}))
    # No confirmation texts: any confirmation category is fine.
    assert ConsentSettings(keywords={"STOP": ""}, bypass_categories=frozenset()).keywords == {"STOP": ""}


async def test_stop_opts_out_confirms_once_and_appends_sms_opted_out(store):
    outbox = Outbox()
    hook = OptOutKeywordHook(send_later=outbox)
    data, events = await receive(store, hook, incoming("配信停止"))
    assert data["opt_out"] is True
    assert events == ["sms.opted_out"]
    [confirmation] = outbox.queued
    assert confirmation.to == PATIENT and confirmation.category == "otp" and confirmation.route == "gsm1"
    assert confirmation.text.startswith("配信停止を承りました")
    assert confirmation.client_ref == "opt-out:msg_in1"
    rows = await store.read(lambda tx: consent_sql.list_opt_outs(tx, number=PATIENT, after=None, limit=10))
    assert [(r.category, r.source, r.message_id, r.created_at) for r in rows] == [
        ("*", "keyword", "msg_in1", T0)
    ]
    # The same keyword again an hour later: still an opt-out request, but nothing new and no second reply.
    data, events = await receive(store, hook, incoming("STOP", at=T0 + timedelta(hours=1), msg_id="msg_in2"))
    assert data["opt_out"] is True and events == [] and len(outbox.queued) == 1
    # A day later the patient is told again (they may have lost the first confirmation).
    await receive(store, hook, incoming("ＴＤ", at=T0 + timedelta(hours=25), msg_id="msg_in3"))
    assert [r.text for r in outbox.queued][1].startswith("退订成功")


async def test_keyword_without_confirmation_text_or_routing_preference(store):
    outbox = Outbox()
    settings = ConsentSettings(
        keywords={"STOP": "", "配信停止": "停止しました"}, confirm_from_receiving_modem=False
    )
    hook = OptOutKeywordHook(settings, send_later=outbox)
    await receive(store, hook, incoming("stop"))
    assert outbox.queued == []
    await receive(store, hook, incoming("配信停止", sender="+819087654321", msg_id="msg_in2"))
    assert [(r.to, r.route) for r in outbox.queued] == [("+819087654321", None)]


async def test_ordinary_text_and_nameless_senders_opt_nobody_out(store):
    outbox = Outbox()
    hook = OptOutKeywordHook(send_later=outbox)
    data, events = await receive(store, hook, incoming("明日の予約は10時でしょうか"))
    assert data["opt_out"] is False and events == []
    data, events = await receive(store, hook, incoming("STOP", sender=None))
    assert data["opt_out"] is False and events == [] and outbox.queued == []
    assert await store.read(lambda tx: consent_sql.list_opt_outs(tx, number=None, after=None, limit=10)) == []


# --- policy -------------------------------------------------------------------------------------------------
async def test_policy_refuses_opted_out_categories_and_lets_transactional_ones_through(store):
    policy = OptOutPolicy()
    await check(store, policy, "education")  # nobody opted out yet
    await receive(store, OptOutKeywordHook(send_later=Outbox()), incoming("STOP"))
    for category in ("education", "care", "billing", "report"):
        with pytest.raises(InvalidRequest) as refused:
            await check(store, policy, category)
        assert refused.value.code == "opted_out" and refused.value.field == "to"
        assert "replying with an opt-out keyword" in refused.value.detail and category in refused.value.detail
    for category in ("otp", "lab_result", "appointment"):
        await check(store, policy, category)
    await check(store, policy, "education", to="+819087654321")


async def test_policy_honours_a_single_category_and_a_narrower_bypass_list(store):
    service = ConsentService(store, clock=lambda: T0)
    await service.add("090-1234-5678", ["billing"], "asked at the desk")
    policy = OptOutPolicy()
    with pytest.raises(InvalidRequest, match="opted out of 'billing'.*through the API"):
        await check(store, policy, "billing")
    await check(store, policy, "education")
    # A deployment where appointments honour opt-outs too.
    strict = OptOutPolicy(ConsentSettings(bypass_categories=frozenset({"otp", "lab_result"})))
    await service.add(PATIENT)
    with pytest.raises(InvalidRequest):
        await check(store, strict, "appointment")
    await check(store, strict, "lab_result")


# --- registry service ---------------------------------------------------------------------------------------
async def test_add_normalises_numbers_and_keeps_the_first_record(store):
    service = ConsentService(store, clock=lambda: T0)
    rows, added = await service.add("090-1234-5678", ["education", "care", "education"], "no newsletters")
    assert added == ["education", "care"]
    assert [(r.number, r.category, r.source, r.reason) for r in rows] == [
        (PATIENT, "care", "api", "no newsletters"),
        (PATIENT, "education", "api", "no newsletters"),
    ]
    rows, added = await service.add("+81 90 1234 5678", ["care"], "again")
    assert added == [] and {r.reason for r in rows} == {"no newsletters"}
    events = await store.read_events(0, 10)
    assert [(e.type, e.data["categories"], e.data["source"]) for e in events] == [
        ("sms.opted_out", ["education", "care"], "api")
    ]
    assert await service.blocking(PATIENT, "care") is not None
    assert await service.blocking(PATIENT, "billing") is None
    assert await service.blocking(PATIENT, "otp") is None


@pytest.mark.parametrize(
    ("number", "categories", "reason", "code", "field"),
    [
        ("12", None, None, "invalid_number", "number"),
        (None, None, None, "invalid_number", "number"),
        (PATIENT, ["lab_result"], None, "invalid_category", "categories"),
        (PATIENT, ["newsletter"], None, "invalid_category", "categories"),
        (PATIENT, [""], None, "invalid_category", "categories"),
        (PATIENT, [], None, "invalid_category", "categories"),
        (PATIENT, "education", None, "invalid_category", "categories"),
        (PATIENT, None, "x" * 501, "invalid_request", "reason"),
    ],
)
async def test_add_refuses_bad_input_with_the_field(store, number, categories, reason, code, field):
    service = ConsentService(store)
    with pytest.raises(InvalidRequest) as refused:
        await service.add(number, categories, reason)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert await store.read(lambda tx: consent_sql.list_opt_outs(tx, number=None, after=None, limit=5)) == []


async def test_bypass_message_names_the_setting(store):
    with pytest.raises(InvalidRequest, match="'otp' bypasses opt-outs"):
        await ConsentService(store).add(PATIENT, ["otp"])
    # Unknown-category checking can be left to the routing configuration.
    open_service = ConsentService(store, ConsentSettings(categories=None))
    _, added = await open_service.add(PATIENT, ["newsletter"])
    assert added == ["newsletter"]


async def test_remove_one_category_or_all_and_say_what_exists(store):
    service = ConsentService(store)
    await service.add(PATIENT, ["education", "care"])
    with pytest.raises(NotFound, match=r"no opt-out for 'billing' \(it has: 'care', 'education'\)"):
        await service.remove(PATIENT, "billing")
    assert await service.remove("09012345678", "care") == 1
    assert await service.remove(PATIENT) == 1
    with pytest.raises(NotFound, match="has no opt-out"):
        await service.remove(PATIENT)


async def test_list_pages_by_number_then_category(store):
    service = ConsentService(store)
    numbers = [f"+8190123456{i:02d}" for i in range(5)]
    for number in numbers:
        await service.add(number, ["education", "care"])
    seen, cursor = [], None
    while True:
        page, cursor = await service.list(cursor=cursor, limit=3)
        seen.extend((r.number, r.category) for r in page)
        if cursor is None:
            break
    assert seen == [(n, c) for n in numbers for c in ("care", "education")]
    only, cursor = await service.list("090-1234-5602")
    assert [(r.number, r.category) for r in only] == [(numbers[2], "care"), (numbers[2], "education")]
    assert cursor is None
    with pytest.raises(InvalidRequest, match="cursor"):
        decode_cursor("bm9wZQ")
    with pytest.raises(InvalidRequest, match="limit"):
        await service.list(limit=0)


def test_category_rules_can_come_from_the_routing_configuration():
    from gateway.sms.categories import Categories

    categories = Categories(  # entries add to / replace the built-in categories
        {
            "lab_result": {"priority": 80, "quiet_hours": None, "bypass_opt_out": False},
            "appointment": {"priority": 70, "quiet_hours": None, "bypass_opt_out": False},
            "survey": {"priority": 5, "quiet_hours": None},
        }
    )
    settings = ConsentSettings().with_categories(categories)
    assert settings.bypass_categories == {"otp"}
    assert settings.categories == set(categories.names()) and "survey" in settings.categories
    assert settings.keywords == ConsentSettings().keywords
    no_bypass = Categories(
        {
            name: {"priority": 50, "quiet_hours": None, "bypass_opt_out": False}
            for name in ("otp", "lab_result", "appointment")
        }
    )
    with pytest.raises(ValidationError, match="confirmation_category 'otp' must be one of bypass_categories"):
        ConsentSettings().with_categories(no_bypass)
