"""The submit hot path's cheaper equivalents give exactly what the library calls they replace give.

Each faster helper (issue 2 ingest profile) is compared here with the straightforward implementation it
replaced, on many generated inputs: number validation against ``phonenumbers``, time formatting against
``gateway.events.format_time``, message ids, request ids and the store's row values.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
import trio

from api.submit_fast import _COMPACT_JSON, new_request_id
from gateway.events import _format_time_by_fields, format_time
from gateway.numbers import InvalidNumber, e164_of, is_valid_number, normalize
from gateway.sms.models import Message, MessagePart, crockford26, new_message_id
from gateway.store import consent_sql
from gateway.store import sqlite as store_sqlite
from gateway.store.sqlite import SqliteStore

# --- phone numbers ------------------------------------------------------------------------------------------

REGIONS = ["JP", "CN", "US", "CA", "GB", "IM", "DE", "FR", "IT", "KR", "TW", "HK", "BR", "IN", "AU", "RU",
           "KZ", "SG", "PH", "VN", "TH", "ID", "MX", "AR", "ZA", "NG", "VA", "SM"]
_T = phonenumbers.PhoneNumberType
TYPES = [_T.FIXED_LINE, _T.MOBILE, _T.TOLL_FREE, _T.PREMIUM_RATE, _T.SHARED_COST, _T.VOIP, _T.PERSONAL_NUMBER,
         _T.PAGER, _T.UAN, _T.VOICEMAIL]


def _sample_numbers(count: int) -> list[tuple[str, str]]:
    """(raw, default region): every region's example numbers of every type, in international, national and
    E.164 form, and random mutations of them (a digit changed, one added or removed), plus random digit
    strings with and without "+", so valid and invalid numbers of every kind are covered."""
    rnd = random.Random(20261127)
    examples: list[phonenumbers.PhoneNumber] = []
    for region in REGIONS:
        for number_type in TYPES:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is not None:
                examples.append(example)
    for non_geo in (800, 808, 870, 878, 881, 882, 883, 888, 979):
        example = phonenumbers.example_number_for_non_geo_entity(non_geo)
        if example is not None:
            examples.append(example)
    out: list[tuple[str, str]] = []
    for example in examples:
        region = phonenumbers.region_code_for_number(example) or "JP"
        for fmt in (phonenumbers.PhoneNumberFormat.E164, phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                    phonenumbers.PhoneNumberFormat.NATIONAL):
            text = phonenumbers.format_number(example, fmt)
            out += [(text, region), (text, "JP"), (text, "CN")]
    while len(out) < count:
        base, region = rnd.choice(out[: len(examples) * 9] or [("+819012345678", "JP")])
        digits = list(base)
        op = rnd.randrange(4)
        positions = [i for i, ch in enumerate(digits) if ch.isdigit()]
        if op == 0 and positions:
            digits[rnd.choice(positions)] = str(rnd.randrange(10))
        elif op == 1:
            digits.insert(rnd.randrange(1, len(digits) + 1), str(rnd.randrange(10)))
        elif op == 2 and positions:
            del digits[rnd.choice(positions)]
        else:
            length = rnd.randrange(3, 17)
            digits = list(("+" if rnd.random() < 0.6 else "") + "".join(str(rnd.randrange(10)) for _ in
                                                                         range(length)))
        out.append(("".join(digits), rnd.choice([region, "JP", "CN"])))
    return out


SAMPLES = _sample_numbers(12_000)


def _reference_e164(raw: str, region: str, strict: bool) -> str:
    """What gateway.numbers did before the fast path: the library calls, one after the other."""
    parsed = phonenumbers.parse(raw, region)
    if strict and not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(
            f"{raw!r} is not a valid number (read as +{parsed.country_code} {parsed.national_number} "
            f"with default region {region})"
        )
    if not strict and not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"{raw!r} has an impossible length for +{parsed.country_code}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def test_the_samples_cover_valid_and_invalid_numbers_of_many_kinds():
    parsed = []
    for raw, region in SAMPLES:
        try:
            parsed.append(phonenumbers.parse(raw, region))
        except phonenumbers.NumberParseException:
            pass
    valid = [p for p in parsed if phonenumbers.is_valid_number(p)]
    assert len(valid) > 2_000 and len(parsed) - len(valid) > 2_000
    assert {phonenumbers.number_type(p) for p in valid} >= {
        phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
    assert {p.country_code for p in valid} >= {81, 86, 1, 44, 39, 7, 800}
    assert any(p.italian_leading_zero for p in valid)


def test_is_valid_number_equals_the_library_on_every_sample():
    mismatches = []
    for raw, region in SAMPLES:
        try:
            parsed = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        if is_valid_number(parsed) != phonenumbers.is_valid_number(parsed):
            mismatches.append((raw, region))
    assert not mismatches


def test_e164_of_equals_format_number_on_every_parsed_sample():
    for raw, region in SAMPLES:
        try:
            parsed = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        assert e164_of(parsed) == phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@pytest.mark.parametrize("strict", [True, False])
def test_normalize_gives_the_reference_result_or_error_on_every_sample(strict):
    for raw, region in SAMPLES:
        try:
            expected: str | None = _reference_e164(raw, region, strict)
            expected_error = None
        except phonenumbers.NumberParseException:
            expected, expected_error = None, "not a phone number"
        except InvalidNumber as exc:
            expected, expected_error = None, str(exc)
        try:
            number = normalize(raw, region, strict=strict)
        except InvalidNumber as exc:
            assert expected is None, (raw, region)
            assert expected_error is not None and expected_error in str(exc), (raw, region, str(exc))
        else:
            assert number.e164 == expected, (raw, region)
            assert number.raw == raw


def test_normalize_keeps_national_and_international_forms_and_its_messages():
    assert normalize("090-1234-5678").e164 == "+819012345678"
    assert normalize("+81 90 1234 5678", "CN").e164 == "+819012345678"
    assert normalize("138 0013 8000", "CN").e164 == "+8613800138000"
    assert normalize("+39 06 1234 5678", "JP").e164 == "+390612345678"  # Italian leading zero kept
    with pytest.raises(InvalidNumber, match=r"not a valid number \(read as \+81 13800138000 with default "
                                            r"region JP\)"):
        normalize("13800138000")
    first = normalize("090-1234-5678")
    assert normalize("090-1234-5678") == first and normalize("090-1234-5678").raw == "090-1234-5678"


# --- times --------------------------------------------------------------------------------------------------

def _datetimes() -> list[datetime]:
    rnd = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-3, minutes=-30)),
             timezone(timedelta(hours=5, minutes=45)), ZoneInfo("Asia/Tokyo"), ZoneInfo("Asia/Shanghai"),
             ZoneInfo("America/New_York"), ZoneInfo("Europe/London")]
    out = []
    for _ in range(5_000):
        seconds = rnd.uniform(-62_000_000_000, 250_000_000_000)  # year 5 to 9900
        micro = rnd.choice([0, 999, 1000, 999_999, 500_500, rnd.randrange(1_000_000)])
        base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(seconds), microseconds=micro)
        out.append(base.astimezone(rnd.choice(zones)))
    out += [datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), datetime(1000, 1, 1, tzinfo=UTC),
            datetime(1000, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))),  # 999 in UTC
            datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            datetime(2026, 11, 27, 6, 0, 0, 123_456, tzinfo=UTC)]
    return out


def test_format_time_equals_the_field_by_field_spelling():
    values = _datetimes()
    for value in values:
        assert format_time(value) == _format_time_by_fields(value), repr(value)
    # Again, each value twice in a row and the same instants as other objects (the memo is by identity).
    for value in values[:500]:
        copy = value.astimezone(UTC).astimezone(value.tzinfo)
        assert format_time(value) == format_time(value) == format_time(copy) == _format_time_by_fields(value)
    assert format_time(None) is None
    naive = datetime(2026, 11, 27, 6, 0)
    with pytest.raises(ValueError, match="naive"):
        format_time(naive)
    with pytest.raises(ValueError, match="naive"):
        _format_time_by_fields(naive)


# --- ids ----------------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _reference_crockford26(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def test_crockford26_equals_the_digit_loop():
    rnd = random.Random(3)
    values = [0, 1, 31, 32, 1023, 1024, (1 << 130) - 1, 1 << 130, (1 << 200) + 12345, -1, -(1 << 70)]
    values += [rnd.getrandbits(rnd.choice([48, 80, 128, 130, 140])) for _ in range(20_000)]
    for value in values:
        assert crockford26(value) == _reference_crockford26(value)


def test_message_ids_keep_their_layout_and_order():
    ids = [new_message_id() for _ in range(2_000)]
    assert all(len(i) == 30 and i.startswith("msg_") and set(i[4:]) <= set(_CROCKFORD) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    later = new_message_id(now_ms=int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000))
    assert later > ids[-1]


def test_request_ids_equal_uuid4_hex_of_the_same_bytes():
    rnd = random.Random(11)
    samples = [bytes(16), b"\xff" * 16] + [rnd.randbytes(16) for _ in range(20_000)]
    for raw in samples:
        assert new_request_id(raw) == uuid.UUID(bytes=raw, version=4).hex
    fresh = new_request_id()
    assert len(fresh) == 32 and uuid.UUID(hex=fresh).version == 4


def test_response_encoder_equals_json_dumps():
    payload = {"id": "msg_1", "text": "検査結果のお知らせ \"quoted\" \\ \n\u2028", "cost": 0.1 + 0.2,
               "parts": 2, "to": None, "report": True, "part_list": [{"seq": 1, "error": None}],
               "inf": float("inf")}
    assert _COMPACT_JSON.encode(payload) == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


# --- store rows ---------------------------------------------------------------------------------------------

def _messages() -> list[Message]:
    t0 = datetime(2026, 11, 27, 6, 0, 0, 123_456, tzinfo=UTC)
    tokyo = t0.astimezone(ZoneInfo("Asia/Tokyo"))
    parts = [MessagePart(seq=i, status="queued", segment_hex="00" * i, tpdu_length=i, updated_at=t0,
                         sent_at=tokyo if i == 2 else None, reference=i) for i in (1, 2, 3)]
    return [
        Message(id="msg_a", direction="out", status="queued", text="a", parts=1, created_at=t0, updated_at=t0,
                to="+819012345678", to_raw="090-1234-5678", report=True, part_list=parts[:1]),
        Message(id="msg_b", direction="out", status="scheduled", text="b" * 200, parts=3, created_at=t0,
                updated_at=tokyo, send_at=tokyo + timedelta(hours=3), report=False, concat_ref=255,
                category="billing", cost=0.3, part_list=parts, next_attempt_at=t0, error_code=500,
                error_kind="temporary", error_message="x"),
        Message(id="msg_c", direction="in", status="received", text="c", parts=1, created_at=t0,
                updated_at=t0, sender="+8613800138000", sender_raw="13800138000", received_at=tokyo,
                incomplete=True, modem="gsm0", part_list=[]),
    ]


def test_row_values_equal_the_per_field_conversion():
    def reference(obj, names):
        return [store_sqlite._to_db(n, getattr(obj, n)) for n in names]

    for message in _messages():
        assert store_sqlite._message_values(message) == reference(message, store_sqlite._MSG_FIELDS)
        for part in message.part_list:
            assert store_sqlite._part_values(part) == reference(part, store_sqlite._PART_FIELDS)
    # _to_db's times are format_time's text
    t = datetime(2026, 1, 2, 3, 4, 5, 678_900, tzinfo=ZoneInfo("Asia/Tokyo"))
    assert store_sqlite._to_db("created_at", t) == format_time(t)


async def test_messages_with_zero_one_and_several_parts_read_back_equal(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    messages = _messages()

    def insert(tx):
        for message in messages:
            tx.insert_message(message)

    await store.write(insert)
    for message in messages:
        stored = await store.read(lambda tx, i=message.id: tx.get_message(i))
        assert stored is not None
        assert stored.to_json() == message.to_json()
        assert [p.to_json() for p in stored.part_list] == [p.to_json() for p in message.part_list]
        assert (stored.concat_ref, stored.report, stored.incomplete, format_time(stored.next_attempt_at)) == (
            message.concat_ref, message.report, message.incomplete, format_time(message.next_attempt_at))
    await store.close()


async def test_statement_journal_is_in_memory_and_savepoints_still_roll_back(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    assert await store.read(lambda tx: tx.connection.execute("PRAGMA temp_store").fetchone()[0]) == 2
    before = set(os.listdir(tmp_path))

    def failing(tx):
        for message in _messages()[:2]:
            tx.insert_message(message)
        raise RuntimeError("roll me back")

    with pytest.raises(RuntimeError):
        await store.write(failing)
    assert await store.read(lambda tx: tx.get_message("msg_a")) is None
    await store.write(lambda tx: tx.insert_message(_messages()[0]))
    assert (await store.read(lambda tx: tx.get_message("msg_a"))) is not None
    assert set(os.listdir(tmp_path)) == before  # no temporary file next to the database
    await store.close()
    with sqlite3.connect(tmp_path / "gw.sqlite3") as conn:  # a plain connection sees the committed row only
        assert conn.execute("SELECT id FROM messages").fetchall() == [("msg_a",)]


# --- group commit wake-ups ----------------------------------------------------------------------------------

def _stress_unit(i: int, fails: bool):
    def run(tx):
        tx.insert_message(Message(id=f"msg_{i:05d}", direction="out", status="queued", text=str(i), parts=1,
                                  created_at=datetime(2026, 11, 27, tzinfo=UTC),
                                  updated_at=datetime(2026, 11, 27, tzinfo=UTC)))
        tx.append_event("sms.queued", {"id": f"msg_{i:05d}"})
        if fails:
            raise ValueError(f"unit {i} refused")
        return i

    return run


async def _stress(store: SqliteStore, writers: int, seed: int, sleep_scale: float) -> tuple[dict, set, set]:
    """Writers arriving at random times, some cancelled at random moments (queued, leading, or in a batch),
    some failing; returns (results, cancelled, failed ids)."""
    rnd = random.Random(seed)
    results: dict[int, object] = {}
    cancelled: set[int] = set()

    async def writer(i: int, delay: float, cancel_after: float | None, fails: bool) -> None:
        await trio.sleep(delay)
        with trio.CancelScope() as scope:
            if cancel_after is not None:
                scope.deadline = trio.current_time() + cancel_after
            try:
                results[i] = await store.write(_stress_unit(i, fails))
            except ValueError as exc:
                results[i] = str(exc)
        if scope.cancelled_caught:
            cancelled.add(i)

    plan = [(i, rnd.random() * sleep_scale, rnd.choice([None, None, None, 0.0, rnd.random() * sleep_scale]),
             rnd.random() < 0.1) for i in range(writers)]
    async with trio.open_nursery() as nursery:
        for i, delay, cancel_after, fails in plan:
            nursery.start_soon(writer, i, delay, cancel_after, fails)
    return results, cancelled, {i for i, _, _, fails in plan if fails}


def _check_stress(results: dict, cancelled: set, failed: set, committed: set, writers: int) -> None:
    for i in range(writers):
        if i in cancelled:
            continue
        if i in failed:
            assert results[i] == f"unit {i} refused"
            assert i not in committed
        else:
            assert results[i] == i
            assert i in committed
    assert committed <= set(range(writers)) - failed


async def test_every_writer_wakes_with_small_batches_and_cancellations(tmp_path, autojump_clock):
    # Commits run inline (no thread), so the MockClock sees everything; a lost wake-up would leave writers
    # asleep forever, and the autojump clock would then reach the move_on_after below at once.
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", max_batch=3, runner=store_sqlite.run_inline)
    for seed in range(5):
        with trio.move_on_after(24 * 3600) as guard:
            results, cancelled, failed = await _stress(store, 150, seed, sleep_scale=0.002)
        assert not guard.cancelled_caught, "a writer was never woken"
        assert not store._queue and not store._committing
        rows = await store.read(lambda tx: tx.connection.execute("SELECT id FROM messages").fetchall())
        committed = {int(r[0][4:]) for r in rows}
        _check_stress(results, cancelled, failed, committed, 150)
        await store.read(lambda tx: tx.connection.execute("DELETE FROM messages"))
    events = await store.read_events(0, 10_000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    await store.close()


async def test_every_writer_wakes_with_the_worker_thread(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", max_batch=7)
    results, cancelled, failed = await _stress(store, 300, 42, sleep_scale=0.02)
    rows = await store.read(lambda tx: tx.connection.execute("SELECT id FROM messages").fetchall())
    _check_stress(results, cancelled, failed, {int(r[0][4:]) for r in rows}, 300)
    assert store.stats.largest_batch <= 7
    await store.close()


async def test_one_commit_wakes_each_writer_once(tmp_path, monkeypatch):
    # 64 writers at once: the first leads and lets the others of its scheduler pass queue (gathering), the
    # others sleep until the batch holding their unit has committed; no writer is woken by a commit its
    # unit was not in.
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    waits = 0
    original = trio.Event.wait

    async def counting_wait(self):
        nonlocal waits
        waits += 1
        return await original(self)

    monkeypatch.setattr(trio.Event, "wait", counting_wait)
    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(store.write, _stress_unit(i, False))
    assert store.stats.transactions == 1  # all 64 units in the batch the first writer gathered
    assert waits == 63
    await store.close()


# --- opt-out lookup -----------------------------------------------------------------------------------------

async def test_blocking_opt_out_picks_the_row_the_sorting_query_picks(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    categories = ["care", "billing", "education", "a", "z_9", "*", "!", ")", "*a", "A", "Z", "~", "日本", ""]
    numbers = ["+819000000001", "+819000000002", "+819000000003"]
    now = datetime(2026, 11, 27, tzinfo=UTC)

    def seed(tx):
        rnd = random.Random(5)
        for number in numbers[:2]:
            for category in categories:
                if rnd.random() < 0.5:
                    consent_sql.add_opt_out(tx, number, category, source="api", reason=category,
                                            message_id=None, now=now)
        consent_sql.add_opt_out(tx, numbers[1], "*", source="keyword", reason="*", message_id=None, now=now)

    await store.write(seed)

    def reference(tx, number, category):
        row = tx.connection.execute(
            "SELECT number, category, source, reason, message_id, created_at, confirmed_at FROM opt_outs "
            "WHERE number = ? AND category IN (?, ?) ORDER BY category = ? LIMIT 1",
            (number, category, "*", "*"),
        ).fetchone()
        return None if row is None else row[:2]

    def compare(tx):
        checked = 0
        for number in numbers:
            for category in categories:
                found = consent_sql.blocking_opt_out(tx, number, category)
                assert (None if found is None else (found.number, found.category)) == reference(
                    tx, number, category), (number, category)
                checked += found is not None
        return checked

    assert await store.read(compare) > 10
    await store.close()
