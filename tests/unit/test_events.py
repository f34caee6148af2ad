import json
import re

import pytest
import trio

from gateway.events import EventBus, ResyncRequired
from gateway.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    yield store
    await store.close()


@pytest.fixture
async def bus(store):
    return await EventBus.open(store, max_events=1000, max_age_days=7, client_queue_size=100)


async def _take(sub, n):
    items = []
    with trio.fail_after(5):
        async for item in sub:
            items.append(item)
            if len(items) == n:
                break
    return items


async def test_publish_builds_the_envelope_once(bus):
    first = await bus.publish("modem.state_changed", {"modem": "gsm0", "state": "ready"})
    second = await bus.publish("modem.state_changed", {"modem": "gsm0", "state": "down"})
    assert (first.seq, second.seq) == (1, 2)
    assert first.id == f"{bus.epoch}:1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.time)
    assert json.loads(first.payload) == {
        "id": first.id,
        "type": "modem.state_changed",
        "epoch": bus.epoch,
        "seq": 1,
        "time": first.time,
        "data": {"modem": "gsm0", "state": "ready"},
    }
    assert bus.last_seq == 2


async def test_live_subscribers_share_one_payload(bus):
    a, b = bus.subscribe(), bus.subscribe()
    await bus.publish("sms.queued", {"id": "m1"})
    [ea], [eb] = await _take(a, 1), await _take(b, 1)
    assert ea.payload is eb.payload


async def test_type_filter(bus):
    sub = bus.subscribe(types={"sms.sent"})
    await bus.publish("sms.queued", {"id": "m1"})
    await bus.publish("sms.sent", {"id": "m1"})
    [event] = await _take(sub, 1)
    assert event.type == "sms.sent"


async def test_resume_replays_then_continues_live_without_gap_or_duplicate(bus):
    for i in range(5):
        await bus.publish("sms.queued", {"i": i})
    sub = bus.subscribe(since=(bus.epoch, 2))
    # Published after subscribe() but before the first read: must come exactly once, after the replay.
    await bus.publish("sms.queued", {"i": 5})
    items = await _take(sub, 4)
    assert [e.seq for e in items] == [3, 4, 5, 6]

    async def publish_more():
        for i in range(6, 10):
            await bus.publish("sms.queued", {"i": i})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_more)
        more = await _take(sub, 4)
    assert [e.seq for e in more] == [7, 8, 9, 10]


async def test_resume_at_the_head_is_live_only(bus):
    await bus.publish("sms.queued", {})
    sub = bus.subscribe(since=(bus.epoch, bus.last_seq))
    await bus.publish("sms.sent", {})
    [event] = await _take(sub, 1)
    assert (event.seq, event.type) == (2, "sms.sent")


async def test_long_replay_spans_several_pages(store):
    bus = EventBus(store, client_queue_size=10)
    for i in range(1200):
        await bus.publish("sms.queued", {"i": i})
    items = await _take(bus.subscribe(since=(bus.epoch, 0)), 1200)
    assert [e.seq for e in items] == list(range(1, 1201))


async def test_other_epoch_requires_resync(bus):
    await bus.publish("sms.queued", {})
    sub = bus.subscribe(since=("0123456789abcdef", 1))
    await bus.publish("sms.sent", {})
    first, second = await _take(sub, 2)
    assert first == ResyncRequired(bus.epoch, 1, "epoch_changed")
    assert second.seq == 2


async def test_pruned_position_requires_resync(store):
    bus = await EventBus.open(store, max_events=100, max_age_days=7)
    for i in range(150):
        await bus.publish("sms.queued", {"i": i})
    await store.prune_journal()
    [marker] = await _take(bus.subscribe(since=(bus.epoch, 10)), 1)
    assert marker == ResyncRequired(bus.epoch, 150, "too_old")
    # The oldest retained position still resumes.
    items = await _take(bus.subscribe(since=(bus.epoch, 50)), 100)
    assert items[0].seq == 51


async def test_position_ahead_of_the_journal_requires_resync(bus):
    [marker] = await _take(bus.subscribe(since=(bus.epoch, 99)), 1)
    assert isinstance(marker, ResyncRequired) and marker.reason == "ahead_of_journal"


async def test_overflow_ends_the_slow_subscription_only(bus):
    slow = bus.subscribe(queue_size=3)
    fast = bus.subscribe()
    with trio.fail_after(1):  # publishers are never blocked by the slow consumer
        for i in range(5):
            await bus.publish("sms.queued", {"i": i})
    assert slow.overflowed and not fast.overflowed
    assert await _take(slow, 10) == []
    assert [e.seq for e in await _take(fast, 5)] == [1, 2, 3, 4, 5]
    assert bus.subscriber_count == 1


async def test_unit_events_fan_out_only_after_commit(store, bus):
    sub = bus.subscribe()

    def good(tx):
        tx.append_event("sms.queued", {"id": "ok"})

    def bad(tx):
        tx.append_event("sms.queued", {"id": "rolled-back"})
        raise RuntimeError("boom")

    await store.write(good)
    with pytest.raises(RuntimeError):
        await store.write(bad)
    await store.write(good)
    items = await _take(sub, 2)
    assert [(e.seq, e.data["id"]) for e in items] == [(1, "ok"), (2, "ok")]


async def test_resume_across_a_restart(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path)
    bus = EventBus(store)
    for i in range(3):
        await bus.publish("sms.queued", {"i": i})
    epoch = bus.epoch
    await store.close()

    store = await SqliteStore.open(path)
    bus = EventBus(store)
    assert (bus.epoch, bus.last_seq) == (epoch, 3)
    await bus.publish("sms.sent", {})
    items = await _take(bus.subscribe(since=(epoch, 1)), 3)
    assert [e.seq for e in items] == [2, 3, 4]
    await store.close()


async def test_listener_sees_every_committed_event(bus):
    seen = []
    bus.add_listener(lambda e: seen.append(e.seq))
    bus.add_listener(lambda e: 1 / 0)  # a broken listener does not stop the others
    for _ in range(3):
        await bus.publish("sms.queued", {})
    assert seen == [1, 2, 3]


async def test_close_ends_subscriptions(bus):
    sub = bus.subscribe()
    bus.close()
    assert await _take(sub, 1) == []
