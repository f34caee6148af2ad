"""Reply correlation and reply rules (gateway/sms/replies.py) on a real SQLite store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.sms.models import InvalidRequest, Message, MessageStatus, NotFound
from gateway.sms.replies import (
    ChoicesRule,
    RangeRule,
    ReplyCorrelator,
    ReplyRules,
    ReplySettings,
    normalize_reply,
    parse_reply_rule,
)
from gateway.store import consent_sql
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
PATIENT = "+819012345678"
OTHER = "+819087654321"


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "replies.sqlite3")
    try:
        yield store
    finally:
        await store.close()


def outgoing(msg_id: str, to: str, sent_at: datetime | None) -> Message:
    return Message(
        id=msg_id,
        direction="out",
        status=MessageStatus.SENT if sent_at else MessageStatus.QUEUED,
        text="本日の診察はいかがでしたか。1〜5でお答えください。",
        parts=1,
        created_at=(sent_at or T0) - timedelta(seconds=5),
        updated_at=sent_at or T0,
        to=to,
        to_raw=to,
        sent_at=sent_at,
    )


def incoming(text: str, *, at: datetime, sender: str | None = PATIENT, msg_id: str = "msg_in") -> Message:
    return Message(
        id=msg_id,
        direction="in",
        status=MessageStatus.RECEIVED,
        text=text,
        parts=1,
        created_at=at,
        updated_at=at,
        sender=sender,
        sender_raw=sender or "HOSPITAL",
        modem="gsm0",
        received_at=at,
    )


async def send(store, *messages: Message) -> None:
    def unit(tx):
        for message in messages:
            tx.insert_message(message)

    await store.write(unit)


async def receive(store, message: Message, hook: ReplyCorrelator | None = None) -> dict:
    hook = hook or ReplyCorrelator()

    def unit(tx):
        tx.insert_message(message)
        data: dict = {"id": message.id}
        hook.on_received(tx, message, data)
        return data

    return await store.write(unit)


async def add_campaign_column(store) -> None:
    """What a campaigns migration adds (``messages.campaign_id``), when this schema does not have it yet."""

    def unit(tx):
        columns = {row[1] for row in tx.connection.execute("PRAGMA table_info(messages)")}
        if "campaign_id" not in columns:
            tx.connection.execute("ALTER TABLE messages ADD COLUMN campaign_id TEXT")

    await store.write(unit)


# --- parsing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("4", 4),
        ("４", 4),
        (" 5 ", 5),
        ("4です", 4),
        ("評価は３点", 3),
        ("1", 1),
        ("+2", 2),
        ("６", None),
        ("0", None),
        ("3 or 4", None),
        ("４．５", None),
        ("とても良い", None),
        ("", None),
    ],
)
def test_range_rule_reads_one_integer_in_any_width(text, answer):
    assert RangeRule(1, 5).parse(text) == answer


def test_choices_rule_answers_the_configured_value():
    rule = ChoicesRule(("YES", "NO", "はい", "いいえ"))
    assert rule.parse("ｙｅｓ") == "YES"
    assert rule.parse(" no. ") == "NO"
    assert rule.parse("はい！") == "はい"
    assert rule.parse("はい、いいえ") is None
    assert rule.parse("maybe") is None


def test_normalize_reply():
    assert normalize_reply("  ＳＴＯＰ！ ") == "stop"
    assert normalize_reply("「配信\u3000停止」。") == "配信停止"
    assert normalize_reply("ｶﾅ") == "カナ"  # half-width katakana folded by NFKC
    assert normalize_reply("!!") == ""


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("range", "must be an object"),
        ({"kind": "scale"}, "unknown reply rule kind 'scale'"),
        ({"kind": "range", "min": 1}, "integer 'min' and 'max'"),
        ({"kind": "range", "min": True, "max": 5}, "integer 'min' and 'max'"),
        ({"kind": "range", "min": 5, "max": 1}, "min 5 is greater than max 1"),
        ({"kind": "range", "min": 1, "max": 5, "step": 1}, "unknown field 'step'"),
        ({"kind": "choices", "values": []}, "non-empty list of strings"),
        ({"kind": "choices", "values": ["a", 1]}, "non-empty list of strings"),
        ({"kind": "choices", "values": ["YES", "ｙｅｓ"]}, "same reply once normalised"),
        ({"kind": "choices", "values": ["。"]}, "1 to 70 characters"),
        ({"kind": "choices", "values": [str(i) for i in range(51)]}, "at most 50"),
    ],
)
def test_bad_rules_are_refused_with_a_reason(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_reply_rule(obj)


def test_rules_round_trip_through_json():
    for obj in ({"kind": "range", "min": 1, "max": 5}, {"kind": "choices", "values": ["はい", "いいえ"]}):
        assert parse_reply_rule(json.loads(json.dumps(obj))).to_json() == obj


# --- correlation --------------------------------------------------------------------------------------------
async def test_reply_names_the_latest_message_sent_to_the_number_within_the_window(store):
    await send(
        store,
        outgoing("msg_a", PATIENT, T0),
        outgoing("msg_b", PATIENT, T0 + timedelta(hours=1)),
        outgoing("msg_other", OTHER, T0 + timedelta(hours=2)),
        outgoing("msg_unsent", PATIENT, None),  # queued, never reached the phone
    )
    data = await receive(store, incoming("4", at=T0 + timedelta(hours=3)))
    assert data == {"id": "msg_in", "in_reply_to": "msg_b", "campaign_id": None, "answer": None}
    replies = await store.read(
        lambda tx: tx.connection.execute("SELECT message_id, in_reply_to, answer FROM replies").fetchall()
    )
    assert replies == [("msg_in", "msg_b", None)]


async def test_window_is_72_hours_by_default_and_configurable(store):
    await send(store, outgoing("msg_a", PATIENT, T0))
    at_edge = await receive(store, incoming("ok", at=T0 + timedelta(hours=72), msg_id="msg_in1"))
    assert at_edge["in_reply_to"] == "msg_a"
    late = await receive(store, incoming("ok", at=T0 + timedelta(hours=72, seconds=1), msg_id="msg_in2"))
    assert late == {"id": "msg_in2", "in_reply_to": None, "campaign_id": None, "answer": None}
    short = ReplyCorrelator(ReplySettings(window_hours=1))
    data = await receive(store, incoming("ok", at=T0 + timedelta(hours=2), msg_id="msg_in3"), short)
    assert data["in_reply_to"] is None


async def test_unknown_senders_are_not_correlated(store):
    await send(store, outgoing("msg_a", PATIENT, T0))
    data = await receive(store, incoming("4", at=T0 + timedelta(minutes=5), sender=None))
    assert data["in_reply_to"] is None and data["answer"] is None


async def test_message_rule_parses_the_answer(store):
    rules = ReplyRules(store, clock=lambda: T0)
    await send(store, outgoing("msg_a", PATIENT, T0))
    await rules.put("message", "msg_a", {"kind": "range", "min": 1, "max": 5})
    data = await receive(store, incoming("５です", at=T0 + timedelta(minutes=5), msg_id="msg_in1"))
    assert (data["in_reply_to"], data["answer"]) == ("msg_a", 5)
    data = await receive(store, incoming("10", at=T0 + timedelta(minutes=6), msg_id="msg_in2"))
    assert (data["in_reply_to"], data["answer"]) == ("msg_a", None)
    answers = await store.read(
        lambda tx: tx.connection.execute("SELECT message_id, answer FROM replies ORDER BY 1").fetchall()
    )
    assert answers == [("msg_in1", "5"), ("msg_in2", None)]


async def test_campaign_rule_applies_to_every_campaign_message_and_a_message_rule_wins(store):
    await add_campaign_column(store)
    rules = ReplyRules(store, clock=lambda: T0)
    await send(store, outgoing("msg_a", PATIENT, T0), outgoing("msg_b", OTHER, T0))

    def tag(tx):
        tx.connection.execute("UPDATE messages SET campaign_id = 'cmp_1' WHERE id IN ('msg_a', 'msg_b')")

    await store.write(tag)
    await rules.put("campaign", "cmp_1", {"kind": "choices", "values": ["はい", "いいえ"]})
    await rules.put("message", "msg_b", {"kind": "range", "min": 1, "max": 3})
    first = await receive(store, incoming("ハイ", at=T0 + timedelta(hours=1), msg_id="msg_in1"))
    assert first == {"id": "msg_in1", "in_reply_to": "msg_a", "campaign_id": "cmp_1", "answer": None}
    yes = await receive(store, incoming("はい。", at=T0 + timedelta(hours=1), msg_id="msg_in2"))
    assert (yes["campaign_id"], yes["answer"]) == ("cmp_1", "はい")
    own = await receive(store, incoming("２", at=T0 + timedelta(hours=1), sender=OTHER, msg_id="msg_in3"))
    assert (own["in_reply_to"], own["campaign_id"], own["answer"]) == ("msg_b", "cmp_1", 2)
    tally = await store.read(
        lambda tx: tx.connection.execute(
            "SELECT answer, count(*) FROM replies WHERE campaign_id = 'cmp_1' GROUP BY answer ORDER BY 1"
        ).fetchall()
    )
    assert tally == [(None, 1), ('"はい"', 1), ("2", 1)]


async def test_a_corrupt_stored_rule_never_loses_the_incoming_message(store):
    await send(store, outgoing("msg_a", PATIENT, T0))
    await store.write(lambda tx: consent_sql.put_reply_rule(tx, "message", "msg_a", '{"kind": "dial"}', T0))
    data = await receive(store, incoming("3", at=T0 + timedelta(minutes=1)))
    assert (data["in_reply_to"], data["answer"]) == ("msg_a", None)


async def test_reply_rules_service_validates_and_round_trips(store):
    rules = ReplyRules(store, clock=lambda: T0)
    with pytest.raises(NotFound, match="no outgoing message 'msg_nope'"):
        await rules.put("message", "msg_nope", {"kind": "range", "min": 1, "max": 5})
    with pytest.raises(InvalidRequest) as bad:
        await rules.put("campaign", "cmp_1", {"kind": "range", "min": 9, "max": 1})
    assert (bad.value.code, bad.value.field) == ("invalid_reply_rule", "rule")
    with pytest.raises(InvalidRequest, match="scope must be one of"):
        await rules.get("survey", "x")
    assert await rules.get("campaign", "cmp_1") is None
    await rules.put("campaign", "cmp_1", {"kind": "range", "min": 1, "max": 5})
    await rules.put("campaign", "cmp_1", {"kind": "range", "min": 0, "max": 10})  # replaced
    assert await rules.get("campaign", "cmp_1") == RangeRule(0, 10)
    assert await rules.delete("campaign", "cmp_1") is True
    assert await rules.delete("campaign", "cmp_1") is False
