import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import trio

from drivers.gsm.modem import ModemStatus
from gateway.events import EventBus
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.models import (
    Conflict,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    SmsSettings,
    SubmitRequest,
)
from gateway.sms.service import SmsService, decode_cursor, encode_cursor
from gateway.store.sqlite import SqliteStore, run_inline

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def mock_wall_clock():
    """Wall time that advances with trio's (mock) clock."""
    return T0 + timedelta(seconds=trio.current_time())


class ReadyModem:
    def __init__(self, name):
        self.name = name
        self.status = ModemStatus(
            name=name, state="ready", signal_dbm=-71, registration="home", operator="NTT DOCOMO"
        )
        self.sent = []
        self._send, self.events = trio.open_memory_channel(10)

    async def send_pdu(self, pdu_hex, tpdu_length):
        self.sent.append((trio.current_time(), pdu_hex))
        return len(self.sent) % 256

    async def acknowledge(self, item):
        pass


@pytest.fixture
async def env(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=mock_wall_clock, runner=run_inline)
    bus = EventBus(store)
    modems = {"gsm0": ReadyModem("gsm0"), "gsm1": ReadyModem("gsm1")}
    service = SmsService(store, bus, modems, settings=SmsSettings(max_parts=3), clock=mock_wall_clock)
    yield store, bus, service
    await store.close()


async def test_submit_commits_message_parts_and_event(env, tmp_path):
    store, bus, service = env
    sub = bus.subscribe()
    result = await service.submit(
        SubmitRequest(to="090-1234-5678", text="診察の予約は明日10時です", client_ref="c-1")
    )
    message = result.message
    assert not result.replayed
    assert message.id.startswith("msg_") and len(message.id) == 30
    assert (message.status, message.to, message.to_raw, message.encoding) == (
        "queued",
        "+819012345678",
        "090-1234-5678",
        "ucs2",
    )
    assert message.report is True  # the settings default
    assert [p.status for p in message.part_list] == ["queued"]
    conn = sqlite3.connect(tmp_path / "gw.sqlite3")  # durable when submit returns
    assert (
        conn.execute("SELECT count(*) FROM message_parts WHERE message_id = ?", (message.id,)).fetchone()[0]
        == 1
    )
    conn.close()
    event = await sub.__anext__()
    assert event.type == "sms.queued"
    assert event.data["id"] == message.id and event.data["client_ref"] == "c-1"


@pytest.mark.parametrize(
    ("request_kwargs", "code", "field"),
    [
        ({"to": "12", "text": "hi"}, "invalid_number", "to"),
        ({"to": "not a number", "text": "hi"}, "invalid_number", "to"),
        ({"to": "09012345678", "text": ""}, "empty_text", "text"),
        ({"to": "09012345678", "text": "   \n"}, "empty_text", "text"),
        ({"to": "09012345678", "text": "x" * 460}, "too_many_parts", "text"),  # 4 parts of 153 > 3
        ({"to": "09012345678", "text": "hi", "modem": "gsm9"}, "unknown_modem", "modem"),
        ({"to": "09012345678", "text": "hi", "send_at": "tomorrow"}, "invalid_send_at", "send_at"),
        ({"to": "09012345678", "text": "hi", "send_at": "2026-11-28T09:00:00"}, "invalid_send_at", "send_at"),
        (
            {"to": "09012345678", "text": "hi", "send_at": "2029-01-01T00:00:00Z"},
            "invalid_send_at",
            "send_at",
        ),
        ({"to": "09012345678", "text": "hi", "client_ref": "r" * 129}, "invalid_request", "client_ref"),
    ],
)
async def test_validation_errors(env, request_kwargs, code, field):
    store, bus, service = env
    with pytest.raises(InvalidRequest) as info:
        await service.submit(SubmitRequest(**request_kwargs))
    assert (info.value.code, info.value.field) == (code, field)
    assert info.value.detail
    assert bus.last_seq == 0  # nothing committed


async def test_part_limit_boundary(env):
    _, _, service = env
    result = await service.submit(SubmitRequest(to="09012345678", text="x" * 459))  # 3 x 153
    assert result.message.parts == 3 and result.message.concat_ref is not None


def test_request_from_json_names_the_field():
    assert SubmitRequest.from_json({"to": "+819012345678", "text": "hi"}).text == "hi"
    for body, field in (
        ([], ""),
        ({"to": 1, "text": "x"}, "to"),
        ({"to": "1", "text": "x", "x": 1}, "x"),
        ({"to": "1", "text": "x", "report": "yes"}, "report"),
    ):
        with pytest.raises(InvalidRequest) as info:
            SubmitRequest.from_json(body)
        assert info.value.field == field


async def test_idempotency_replay_and_conflict(env):
    store, bus, service = env
    req = SubmitRequest(to="09012345678", text="hello")
    first = await service.submit(req, idempotency_key="k-1")
    again = await service.submit(SubmitRequest(to="09012345678", text="hello"), idempotency_key="k-1")
    assert again.replayed and again.message.id == first.message.id
    with pytest.raises(IdempotencyConflict):
        await service.submit(SubmitRequest(to="09012345678", text="other"), idempotency_key="k-1")
    other = await service.submit(req, idempotency_key="k-2")
    assert other.message.id != first.message.id
    assert bus.last_seq == 2  # one sms.queued per new message, none for the replay


async def test_concurrent_requests_with_one_key_create_one_message(env):
    store, bus, service = env
    results = []

    async def submit():
        results.append(await service.submit(SubmitRequest(to="09012345678", text="hi"), idempotency_key="k"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(submit)
    assert len({r.message.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1


async def test_idempotency_keys_expire_after_a_day(env, autojump_clock):
    store, bus, service = env
    first = await service.submit(SubmitRequest(to="09012345678", text="hi"), idempotency_key="k")
    await trio.sleep(24 * 3600 + 1)
    later = await service.submit(SubmitRequest(to="09012345678", text="hi"), idempotency_key="k")
    assert not later.replayed and later.message.id != first.message.id


async def test_list_filters_and_paginates_newest_first(env):
    store, bus, service = env
    ids = [(await service.submit(SubmitRequest(to="09012345678", text=f"m{i}"))).message.id for i in range(5)]
    await service.cancel(ids[1])
    page, cursor = await service.list(limit=2)
    assert [m.id for m in page] == [ids[4], ids[3]]
    page2, cursor2 = await service.list(limit=2, cursor=cursor)
    assert [m.id for m in page2] == [ids[2], ids[1]]
    page3, cursor3 = await service.list(limit=2, cursor=cursor2)
    assert [m.id for m in page3] == [ids[0]] and cursor3 is None
    canceled, _ = await service.list(status="canceled")
    assert [m.id for m in canceled] == [ids[1]]
    assert decode_cursor(encode_cursor(ids[0])) == ids[0]
    for bad in ({"cursor": "garbage!"}, {"status": "lost"}, {"limit": 0}):
        with pytest.raises(InvalidRequest) as info:
            await service.list(**bad)
        assert info.value.code == "invalid_parameter"


async def test_cancel_rules(env):
    store, bus, service = env
    queued = (await service.submit(SubmitRequest(to="09012345678", text="a"))).message
    canceled = await service.cancel(queued.id)
    assert canceled.status == "canceled"
    assert (await service.get(queued.id)).status == "canceled"
    with pytest.raises(Conflict, match="canceled"):
        await service.cancel(queued.id)
    with pytest.raises(NotFound):
        await service.cancel("msg_missing")
    sending = (await service.submit(SubmitRequest(to="09012345678", text="b"))).message
    await store.write(lambda tx: tx.update_message(sending.id, status="sending"))
    with pytest.raises(Conflict, match="sending"):
        await service.cancel(sending.id)


async def test_modems_view(env):
    store, bus, service = env
    views = service.modems()
    assert [(v.name, v.state, v.signal_dbm, v.operator, v.queue_depth) for v in views] == [
        ("gsm0", "ready", -71, "NTT DOCOMO", 0),
        ("gsm1", "ready", -71, "NTT DOCOMO", 0),
    ]


async def test_scheduled_message_survives_a_restart(tmp_path, autojump_clock):
    path = tmp_path / "gw.sqlite3"
    send_at = T0 + timedelta(hours=1)

    store = await SqliteStore.open(path, clock=mock_wall_clock, runner=run_inline)
    bus = EventBus(store)
    service = SmsService(store, bus, {"gsm0": ReadyModem("gsm0")}, clock=mock_wall_clock)
    result = await service.submit(
        SubmitRequest(to="09012345678", text="reminder", send_at=send_at.astimezone().isoformat())
    )
    assert result.message.status == "scheduled"
    await store.close()  # "restart": new store, bus, service and dispatcher on the same file

    await trio.sleep(600)
    store = await SqliteStore.open(path, clock=mock_wall_clock, runner=run_inline)
    bus = EventBus(store)
    modem = ReadyModem("gsm0")
    service = SmsService(store, bus, {"gsm0": modem}, clock=mock_wall_clock)
    dispatcher = SmsDispatcher(store, bus, {"gsm0": modem}, clock=mock_wall_clock, service=service)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        await trio.sleep(3000 - 1)  # one second before send_at
        assert modem.sent == [] and (await service.get(result.message.id)).status == "scheduled"
        await trio.sleep(2)
        assert [t for t, _ in modem.sent] == [3600.0]
        assert (await service.get(result.message.id)).status == "sent"
        nursery.cancel_scope.cancel()
    await store.close()


async def test_scheduled_then_canceled_is_never_sent(env, autojump_clock):
    store, bus, service = env
    modem = ReadyModem("gsm0")
    dispatcher = SmsDispatcher(store, bus, {"gsm0": modem}, clock=mock_wall_clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        message = (
            await service.submit(
                SubmitRequest(to="09012345678", text="x", send_at=mock_wall_clock() + timedelta(minutes=5))
            )
        ).message
        await trio.sleep(60)
        await service.cancel(message.id)
        await trio.sleep(600)
        assert modem.sent == []
        nursery.cancel_scope.cancel()
