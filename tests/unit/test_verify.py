"""VerificationService: hashed codes, expiry, attempt limit, resend, rate limits, replay and number policy.

Time is trio's MockClock (``autojump_clock``): the service, the store and the SMS service read a wall clock
derived from it, so expiry and rate-limit windows are exact and instant.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import trio

from drivers.gsm.modem import ModemStatus
from gateway.events import EventBus
from gateway.sms.models import InvalidRequest, SmsSettings
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.sms.templates import MissingVariables
from gateway.store import verify_sql
from gateway.store.sqlite import SqliteStore, run_inline
from gateway.verify import (
    REDACTED_TEXT,
    PurposeSettings,
    RateLimited,
    ResendTooSoon,
    VerificationConflict,
    VerificationNotFound,
    VerificationService,
    VerificationSettings,
)

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
MOBILE = "090-1234-5678"
E164 = "+819012345678"
KEY_HEX = "11" * 32


def clock() -> datetime:
    return T0 + timedelta(seconds=trio.current_time())


class Modem:
    def __init__(self, name: str):
        self.name = name
        self.status = ModemStatus(name=name, state="ready", signal_dbm=-71, registration="home", operator="x")


class Env:
    def __init__(self, store: SqliteStore, bus: EventBus, sms: SmsService, verify: VerificationService):
        self.store, self.bus, self.sms, self.verify = store, bus, sms, verify

    async def row(self, verification_id: str) -> verify_sql.VerificationRow:
        row = await self.store.read(lambda tx: verify_sql.get_verification(tx, verification_id))
        assert row is not None
        return row

    async def sent_code(self, verification_id: str) -> str:
        """The code, read from the SMS the gateway queued (what the patient's phone shows)."""
        row = await self.row(verification_id)
        message = await self.sms.get(row.message_id)
        return re.search(r"\d{6}", message.text).group(0)


async def make_env(tmp_path, settings: VerificationSettings | None = None, *, runner=run_inline) -> Env:
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=clock, runner=runner)
    bus = EventBus(store)
    sms = SmsService(store, bus, {"gsm0": Modem("gsm0")}, settings=SmsSettings(), region="JP", clock=clock)
    templates = TemplateStore(store, clock=clock)
    await templates.seed()
    verify = VerificationService(store, sms, templates, settings=settings, region="JP", clock=clock)
    return Env(store, bus, sms, verify)


@pytest.fixture
async def env(tmp_path):
    """Tests using it also take ``autojump_clock``: pytest-trio installs a clock only from test arguments."""
    e = await make_env(tmp_path, VerificationSettings(secret_key=KEY_HEX, hospital="東京中央病院"))
    yield e
    await e.store.close()


def wrong(code: str) -> str:
    """Another code of the same length."""
    return f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"


# --- start ----------------------------------------------------------------------------------------------
async def test_start_sends_an_otp_sms_and_stores_only_an_hmac(env, autojump_clock, tmp_path):
    events = env.bus.subscribe(types={"verification.sent"})
    v = await env.verify.start(MOBILE, "appointment_booking")
    assert (v.to, v.purpose, v.status) == (E164, "appointment_booking", "pending")
    assert v.id.startswith("ver_") and len(v.id) == 30
    assert v.expires_at - v.created_at == timedelta(minutes=5)
    assert v.resend_after - v.created_at == timedelta(seconds=30)
    assert "code" not in str(v.to_json()).lower()

    row = await env.row(v.id)
    message = await env.sms.get(row.message_id)
    code = await env.sent_code(v.id)
    assert message.to == E164 and message.client_ref == v.id
    assert (
        message.text
        == f"【東京中央病院】認証コード：{code}（5分間有効）。このコードを他人に教えないでください。"
    )
    if hasattr(message, "category"):
        assert message.category == "otp"
    expected = hmac.new(bytes.fromhex(KEY_HEX), f"{v.id}\x00{code}".encode(), hashlib.sha256).hexdigest()
    assert row.code_hash == expected
    assert hashlib.sha256(code.encode()).hexdigest() != row.code_hash
    conn = sqlite3.connect(tmp_path / "gw.sqlite3")
    for table in ("verifications", "verification_sends"):
        dump = repr(conn.execute(f"SELECT * FROM {table}").fetchall())
        assert code not in dump
    conn.close()

    event = await events.__anext__()
    assert event.data == {
        "id": v.id,
        "to": E164,
        "purpose": "appointment_booking",
        "message_id": row.message_id,
        "expires_at": v.to_json()["expires_at"],
        "resend": False,
    }


async def test_codes_are_six_random_digits(env, autojump_clock):
    codes = set()
    for n in range(5):
        v = await env.verify.start(MOBILE, f"p{n}")
        codes.add(await env.sent_code(v.id))
    assert len(codes) == 5 and all(re.fullmatch(r"\d{6}", c) for c in codes)


async def test_chinese_locale_uses_the_chinese_template(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login", locale="zh")
    row = await env.row(v.id)
    assert row.template_id == "verification_code.zh"
    assert (await env.sms.get(row.message_id)).text.startswith("【東京中央病院】您的验证码为")


@pytest.mark.parametrize(
    ("to", "code"),
    [
        ("12", "invalid_number"),
        ("03-1234-5678", "number_not_allowed"),  # Tokyo fixed line: cannot read an SMS
        ("0990-123-456", "number_not_allowed"),  # premium rate (SMS pumping target)
        ("+1 650 253 0000", "number_not_allowed"),  # outside the allowed regions
        ("+86 138 0013 8000", "number_not_allowed"),
    ],
)
async def test_numbers_that_may_not_receive_codes(env, autojump_clock, to, code):
    with pytest.raises(InvalidRequest) as info:
        await env.verify.start(to, "login")
    assert (info.value.code, info.value.field) == (code, "to")
    assert await env.sms.list(status=None, cursor=None, limit=10) == ([], None)


async def test_allowed_regions_are_configurable(tmp_path, autojump_clock):
    e = await make_env(tmp_path, VerificationSettings(allowed_regions=("JP", "CN")))
    v = await e.verify.start("+86 138 0013 8000", "login", locale="zh")
    assert v.to == "+8613800138000"
    await e.store.close()


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"purpose": "Bad Purpose"}, "invalid_purpose", "purpose"),
        ({"purpose": "login", "template_id": "nope"}, "unknown_template", "template"),
        ({"purpose": "login", "template_id": "inpatient_daily_cost.ja"}, "invalid_template", "template"),
        ({"purpose": "login", "locale": "fr"}, "unknown_template", "template"),
        ({"purpose": "login", "locale": "japanese!"}, "invalid_request", "locale"),
    ],
)
async def test_bad_start_requests_send_nothing(env, autojump_clock, kwargs, code, field):
    with pytest.raises(InvalidRequest) as info:
        await env.verify.start(MOBILE, **kwargs)
    assert (info.value.code, info.value.field) == (code, field)
    assert await env.sms.list(status=None, cursor=None, limit=10) == ([], None)


async def test_an_otp_template_needing_more_values_names_them(env, autojump_clock):
    await env.verify._templates.create("otp.custom", "otp", "ja", "{patient_name}様 コード{code}")
    with pytest.raises(MissingVariables) as info:
        await env.verify.start(MOBILE, "login", template_id="otp.custom")
    assert info.value.missing == ("patient_name",)


async def test_a_new_start_cancels_the_pending_code_for_the_same_purpose(env, autojump_clock):
    first = await env.verify.start(MOBILE, "login")
    first_code = await env.sent_code(first.id)
    other = await env.verify.start(MOBILE, "booking")
    await trio.sleep(1)
    second = await env.verify.start(MOBILE, "login")
    assert (await env.verify.check(first.id, first_code)).status == "canceled"
    assert (await env.row(other.id)).status == "pending"
    assert (await env.verify.check(second.id, await env.sent_code(second.id))).status == "approved"


# --- check ----------------------------------------------------------------------------------------------
async def test_right_code_approves_once_and_a_replay_is_denied(env, autojump_clock):
    events = env.bus.subscribe(types={"verification.checked"})
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    result = await env.verify.check(v.id, code)
    assert (result.status, result.reason) == ("approved", None)
    replay = await env.verify.check(v.id, code)
    assert (replay.status, replay.reason) == ("denied", "already_used")
    assert (await env.row(v.id)).status == "approved"
    first, second = await events.__anext__(), await events.__anext__()
    assert first.data["status"] == "approved" and second.data["reason"] == "already_used"
    assert code not in first.text and code not in second.text


async def test_attempt_limit_locks_the_verification(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    remaining = []
    for _ in range(4):
        result = await env.verify.check(v.id, wrong(code))
        assert (result.status, result.reason) == ("denied", "wrong_code")
        remaining.append(result.attempts_remaining)
    assert remaining == [4, 3, 2, 1]
    fifth = await env.verify.check(v.id, wrong(code))
    assert (fifth.status, fifth.attempts_remaining) == ("too_many_attempts", 0)
    # Now even the right code fails, and no more attempts are counted.
    assert (await env.verify.check(v.id, code)).status == "too_many_attempts"
    assert (await env.row(v.id)).attempts == 5


async def test_concurrent_wrong_guesses_never_exceed_the_limit(tmp_path):
    e = await make_env(tmp_path, runner=None)  # worker threads: commits really overlap with requests
    try:
        v = await e.verify.start(MOBILE, "login")
        code = await e.sent_code(v.id)
        results = []

        async def guess() -> None:
            results.append(await e.verify.check(v.id, wrong(code)))

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(guess)
        statuses = sorted(r.status for r in results)
        assert statuses == ["denied"] * 4 + ["too_many_attempts"] * 8
        assert (await e.row(v.id)).attempts == 5
        assert (await e.verify.check(v.id, code)).status == "too_many_attempts"
    finally:
        await e.store.close()


async def test_expired_code_is_refused_even_when_right(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    await trio.sleep(299)
    assert (await env.row(v.id)).status == "pending"
    await trio.sleep(1)
    assert (await env.verify.check(v.id, code)).status == "expired"
    assert (await env.row(v.id)).attempts == 0


async def test_codes_typed_with_full_width_digits_or_spaces_are_read(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    typed = " ".join(code[:3].translate(str.maketrans("0123456789", "０１２３４５６７８９")) + code[3:])
    assert (await env.verify.check(v.id, typed)).status == "approved"


@pytest.mark.parametrize("bad", ["", "12a456", "123", "1" * 11, 123456])
async def test_malformed_codes_are_refused_without_counting(env, autojump_clock, bad):
    v = await env.verify.start(MOBILE, "login")
    with pytest.raises(InvalidRequest) as info:
        await env.verify.check(v.id, bad)
    assert (info.value.code, info.value.field) == ("invalid_code", "code")
    assert (await env.row(v.id)).attempts == 0


async def test_unknown_ids(env, autojump_clock):
    with pytest.raises(VerificationNotFound):
        await env.verify.check("ver_01JDZZZZZZZZZZZZZZZZZZZZZZ", "123456")
    with pytest.raises(VerificationNotFound):
        await env.verify.resend("ver_01JDZZZZZZZZZZZZZZZZZZZZZZ")
    assert await env.verify.get("ver_01JDZZZZZZZZZZZZZZZZZZZZZZ") is None
    assert await env.verify.get("../etc") is None


async def test_cancel(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    assert (await env.verify.cancel(v.id)).status == "canceled"
    assert (await env.verify.cancel(v.id)).status == "canceled"  # idempotent
    assert (await env.verify.check(v.id, code)).status == "canceled"
    approved = await env.verify.start(MOBILE, "booking")
    await env.verify.check(approved.id, await env.sent_code(approved.id))
    with pytest.raises(VerificationConflict):
        await env.verify.cancel(approved.id)


# --- resend ---------------------------------------------------------------------------------------------
async def test_resend_waits_for_the_cooldown_then_replaces_the_code(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    old_code = await env.sent_code(v.id)
    await trio.sleep(10)
    with pytest.raises(ResendTooSoon) as info:
        await env.verify.resend(v.id)
    assert info.value.retry_after_s == 20 and info.value.code == "resend_too_soon"
    await trio.sleep(20)
    renewed = await env.verify.resend(v.id)
    assert renewed.sends == 2 and renewed.expires_at == clock() + timedelta(minutes=5)
    new_code = await env.sent_code(v.id)
    if new_code != old_code:  # one chance in a million that the new code equals the old one
        assert (await env.verify.check(v.id, old_code)).status == "denied"
    assert (await env.verify.check(v.id, new_code)).status == "approved"
    with pytest.raises(VerificationConflict):
        await env.verify.resend(v.id)


async def test_attempts_count_across_resends(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    code = await env.sent_code(v.id)
    for _ in range(4):
        await env.verify.check(v.id, wrong(code))
    await trio.sleep(30)
    await env.verify.resend(v.id)
    new_code = await env.sent_code(v.id)
    assert (await env.verify.check(v.id, wrong(new_code))).status == "too_many_attempts"
    with pytest.raises(VerificationConflict):
        await env.verify.resend(v.id)  # a locked verification needs a new start (rate limited)


async def test_an_expired_verification_can_be_resent(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    await trio.sleep(400)
    assert (await env.verify.check(v.id, "000000")).status == "expired"
    await env.verify.resend(v.id)
    assert (await env.verify.check(v.id, await env.sent_code(v.id))).status == "approved"


# --- rate limits ----------------------------------------------------------------------------------------
async def test_five_codes_per_hour_per_number(env, autojump_clock):
    for n in range(5):
        await env.verify.start(MOBILE, f"p{n}")
        await trio.sleep(60)
    with pytest.raises(RateLimited) as info:
        await env.verify.start(MOBILE, "p5")
    assert info.value.retry_after_s == 3600 - 300  # when the first send leaves the window
    assert "5 verification codes per hour" in info.value.detail
    await env.verify.start("090-8765-4321", "p0")  # another number is not affected
    await trio.sleep(info.value.retry_after_s)
    await env.verify.start(MOBILE, "p5")


async def test_resends_count_towards_the_number_limit(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    for _ in range(4):
        await trio.sleep(30)
        await env.verify.resend(v.id)
    await trio.sleep(30)
    with pytest.raises(RateLimited):
        await env.verify.resend(v.id)
    assert (await env.row(v.id)).sends == 5


async def test_ten_codes_per_day_per_number(env, autojump_clock):
    for n in range(10):
        await env.verify.start(MOBILE, f"p{n}")
        await trio.sleep(3600 if n % 5 == 4 else 1)
    with pytest.raises(RateLimited, match="10 verification codes per day"):
        await env.verify.start(MOBILE, "again")


async def test_number_range_and_gateway_limits(tmp_path, autojump_clock):
    e = await make_env(tmp_path, VerificationSettings(per_prefix_hour=3, global_hour=5))
    for last in ("0001", "0002", "0003"):
        await e.verify.start(f"090-1234-{last}", "login")
    with pytest.raises(RateLimited, match="this number range"):
        await e.verify.start("090-1234-0004", "login")
    await e.verify.start("080-5555-0001", "login")
    await e.verify.start("070-5555-0001", "login")
    with pytest.raises(RateLimited, match="all numbers"):
        await e.verify.start("090-9999-0001", "login")
    await e.store.close()


async def test_refused_sends_are_not_counted(env, autojump_clock):
    for n in range(5):
        await env.verify.start(MOBILE, f"p{n}")
    for _ in range(3):
        with pytest.raises(RateLimited):
            await env.verify.start(MOBILE, "again")
    sends = await env.store.read(lambda tx: verify_sql.send_times(tx, since=T0 - timedelta(days=1)))
    assert len(sends) == 5


# --- per-purpose settings, keys, housekeeping -----------------------------------------------------------
async def test_per_purpose_settings(tmp_path, autojump_clock):
    settings = VerificationSettings(
        purposes={"payment": PurposeSettings(ttl_s=60, max_attempts=2, code_length=8, resend_cooldown_s=5)}
    )
    e = await make_env(tmp_path, settings)
    v = await e.verify.start(MOBILE, "payment")
    assert v.expires_at - v.created_at == timedelta(seconds=60)
    row = await e.row(v.id)
    text = (await e.sms.get(row.message_id)).text
    code = re.search(r"：(\d{8})（1分間有効）", text).group(1)
    assert (await e.verify.check(v.id, wrong(code))).status == "denied"
    assert (await e.verify.check(v.id, wrong(code))).status == "too_many_attempts"
    await e.store.close()


async def test_generated_key_is_kept_in_the_database_across_restarts(tmp_path, autojump_clock):
    e = await make_env(tmp_path)
    v = await e.verify.start(MOBILE, "login")
    code = await e.sent_code(v.id)
    await e.store.close()
    e = await make_env(tmp_path)
    assert (await e.verify.check(v.id, code)).status == "approved"
    await e.store.close()


def test_short_configured_keys_are_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        VerificationSettings(secret_key="abcd")
    with pytest.raises(ValueError, match="unknown number type"):
        VerificationSettings(allowed_number_types=("cellphone",))


async def test_sweep_expires_and_redacts_sent_code_messages(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    row = await env.row(v.id)
    await trio.sleep(301)
    counts = await env.verify.sweep()
    assert counts["expired"] == 1 and counts["redacted"] == 0  # still queued: the dispatcher needs the text
    assert (await env.row(v.id)).status == "expired"
    await env.store.write(lambda tx: tx.update_message(row.message_id, status="sent"))
    assert (await env.verify.sweep())["redacted"] == 1
    message = await env.sms.get(row.message_id)
    assert message.text == REDACTED_TEXT
    assert all(p.segment_hex is None for p in message.part_list)
    assert (await env.verify.sweep())["redacted"] == 0


async def test_sweep_forgets_old_rows(env, autojump_clock):
    v = await env.verify.start(MOBILE, "login")
    await env.verify.check(v.id, await env.sent_code(v.id))
    row = await env.row(v.id)
    await env.store.write(lambda tx: tx.update_message(row.message_id, status="delivered"))
    await trio.sleep(8 * 86400)
    counts = await env.verify.sweep()
    assert counts["deleted"] == 1 and counts["sends_deleted"] == 1
    assert await env.verify.get(v.id) is None


async def test_run_sweeps_periodically(tmp_path, autojump_clock):
    e = await make_env(tmp_path, VerificationSettings(sweep_interval_s=10))
    v = await e.verify.start(MOBILE, "login")
    async with trio.open_nursery() as nursery:
        await nursery.start(e.verify.run)
        await trio.sleep(305)
        assert (await e.row(v.id)).status == "expired"
        nursery.cancel_scope.cancel()
    await e.store.close()
