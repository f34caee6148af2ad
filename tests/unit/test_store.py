import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.lowlevel
import trio.testing

from gateway.events import format_time
from gateway.sms.models import Message, MessagePart
from gateway.store import sqlite as sqlite_module
from gateway.store.base import StoreError
from gateway.store.migrations import load_migrations
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def _message(message_id: str, status: str = "queued") -> Message:
    return Message(
        id=message_id,
        direction="out",
        status=status,
        text="hello",
        parts=1,
        created_at=T0,
        updated_at=T0,
        to="+819012345678",
        to_raw="090-1234-5678",
        part_list=[MessagePart(seq=1, status="queued", segment_hex="00", tpdu_length=1)],
    )


async def test_migrations_from_empty_then_idempotent_reopen(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path)
    newest = load_migrations()[-1].version
    assert store.schema_version == newest
    await store.write(lambda tx: tx.insert_message(_message("msg_1")))
    await store.close()

    store = await SqliteStore.open(path)
    assert store.schema_version == newest
    assert (await store.read(lambda tx: tx.get_message("msg_1"))).to_raw == "090-1234-5678"
    await store.close()

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, newest + 1))
    conn.close()


async def test_database_from_a_newer_gateway_is_refused(tmp_path):
    path = tmp_path / "gw.sqlite3"
    await (await SqliteStore.open(path)).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (99, 'future', '2030-01-01T00:00:00.000Z')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        await SqliteStore.open(path)


async def test_synchronous_mode_is_checked(tmp_path):
    with pytest.raises(StoreError, match="synchronous"):
        await SqliteStore.open(tmp_path / "x.sqlite3", synchronous="off")
    store = await SqliteStore.open(tmp_path / "full.sqlite3", synchronous="full")
    assert await store.read(lambda tx: tx._c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    await store.close()


async def test_group_commit_batches_concurrent_writers(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    results = {}

    async def writer(i):
        results[i] = await store.write(lambda tx: (tx.insert_message(_message(f"msg_{i:04d}")), i)[1])

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(writer, i)
    assert results == {i: i for i in range(300)}
    assert store.stats.units == 300
    assert store.stats.transactions < 30  # 300 writers, a handful of commits
    assert store.stats.largest_batch > 10
    rows = await store.read(
        lambda tx: tx.list_messages(status=None, direction=None, before_id=None, limit=1000)
    )
    assert len(rows) == 300
    await store.close()


async def test_writers_of_one_scheduler_pass_share_the_first_commit(tmp_path):
    """A burst (32 lines ringing at once) reaches an idle store within one scheduler pass: the first writer
    gathers the others into its batch instead of committing alone and making them wait for it."""
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    start = trio.Event()

    async def writer(i):
        await start.wait()
        await store.write(lambda tx: tx.insert_message(_message(f"msg_{i:04d}")))

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(writer, i)
        await trio.testing.wait_all_tasks_blocked()
        before = store.stats.transactions
        start.set()  # all 32 wake in the same pass
    assert store.stats.transactions - before == 1
    assert store.stats.largest_batch == 32
    await store.close()


async def test_a_leader_cancelled_while_gathering_leaves_the_others_committing(tmp_path, monkeypatch):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    committed = []
    scope = trio.CancelScope()

    async def writer(name):
        await store.write(lambda tx: tx.insert_message(_message(name)))
        committed.append(name)

    async with trio.open_nursery() as nursery:
        pause = sqlite_module._gather_pause

        async def gathering():  # the leader is gathering: others arrive, then the leader is cancelled
            monkeypatch.setattr(sqlite_module, "_gather_pause", pause)
            for i in range(3):
                nursery.start_soon(writer, f"msg_{i}")
            await trio.testing.wait_all_tasks_blocked()  # they wait for the batch being gathered
            assert not committed and store._gathering
            scope.cancel()
            await pause()

        monkeypatch.setattr(sqlite_module, "_gather_pause", gathering)

        async def leader():
            with scope:
                await writer("msg_leader")

        nursery.start_soon(leader)
    assert sorted(committed) == ["msg_0", "msg_1", "msg_2"]
    assert await store.read(lambda tx: tx.get_message("msg_leader")) is None
    await store.write(lambda tx: tx.insert_message(_message("msg_after")))  # the store is not stuck
    assert not store._committing and not store._gathering
    await store.close()


async def test_a_failing_unit_is_rolled_back_alone(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    outcome = {}

    def unit(i):
        def run(tx):
            tx.insert_message(_message(f"msg_{i:03d}"))
            tx.append_event("sms.queued", {"id": f"msg_{i:03d}"})
            if i == 25:
                raise ValueError("unit 25 is broken")
            return i

        return run

    async def writer(i):
        try:
            outcome[i] = await store.write(unit(i))
        except ValueError as exc:
            outcome[i] = str(exc)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(writer, i)
    assert outcome[25] == "unit 25 is broken"
    assert all(outcome[i] == i for i in range(50) if i != 25)
    assert store.stats.transactions < 10
    assert await store.read(lambda tx: tx.get_message("msg_025")) is None
    assert (await store.read(lambda tx: tx.get_message("msg_026"))) is not None
    events = await store.read_events(0, 100)
    assert [e.seq for e in events] == list(range(1, 50))  # the rolled-back event left no gap
    assert "msg_025" not in {e.data["id"] for e in events}
    await store.close()


async def test_write_returns_only_after_commit(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path)
    await store.write(lambda tx: tx.insert_message(_message("msg_durable")))
    other = sqlite3.connect(path)  # another connection sees it: it is committed
    assert other.execute("SELECT status FROM messages WHERE id = 'msg_durable'").fetchone() == ("queued",)
    other.close()
    await store.close()


async def test_close_commits_queued_units_and_then_refuses(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path)
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(store.write, lambda tx, i=i: tx.insert_message(_message(f"msg_{i}")))
        # Every writer has queued its unit (or is waiting on the commit in flight) before close() starts.
        await trio.testing.wait_all_tasks_blocked()
        await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.write(lambda tx: None)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 5
    conn.close()


async def test_update_rejects_unknown_fields(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    await store.write(lambda tx: tx.insert_message(_message("msg_1")))
    with pytest.raises(ValueError, match="unknown messages field"):
        await store.write(lambda tx: tx.update_message("msg_1", colour="red"))
    await store.close()


async def test_journal_retention_by_count_and_age(tmp_path):
    now = [T0]
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=lambda: now[0])
    store.set_journal_retention(max_events=10, max_age_s=3600)
    for i in range(30):
        await store.append_event("sms.queued", {"i": i})
    await store.prune_journal()
    assert [e.seq for e in await store.read_events(0, 100)] == list(range(21, 31))

    now[0] = T0 + timedelta(hours=2)  # everything is older than an hour, but the newest event stays
    await store.prune_journal()
    assert [e.seq for e in await store.read_events(0, 100)] == [30]
    await store.close()

    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    assert store.last_seq == 30  # seq survives a restart even after pruning
    await store.close()


async def test_reset_journal_starts_a_new_epoch(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    await store.append_event("sms.queued", {})
    old = store.epoch
    new = await store.reset_journal()
    assert new != old and store.epoch == new and store.last_seq == 0
    event = await store.append_event("sms.queued", {})
    assert (event.epoch, event.seq) == (new, 1)
    await store.close()


async def test_times_are_stored_as_sortable_utc_text(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    jst = datetime(2026, 11, 27, 15, 0, tzinfo=UTC).astimezone()
    msg = _message("msg_t")
    msg.send_at = jst
    await store.write(lambda tx: tx.insert_message(msg))
    raw = await store.read(lambda tx: tx._c.execute("SELECT send_at FROM messages").fetchone()[0])
    assert raw == "2026-11-27T15:00:00.000Z" == format_time(jst)
    await store.close()


def _counting_runner(calls: list):
    """A runner that records what it ran in a worker thread (the default's behaviour otherwise)."""
    async def run(fn, *args):
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await trio.to_thread.run_sync(fn, *args)
    return run


async def _open_counted(path, calls: list, **kw) -> SqliteStore:
    store = await SqliteStore.open(path, **kw)
    store._run = _counting_runner(calls)
    return store


async def test_light_batches_commit_on_the_trio_thread_and_others_in_the_worker(tmp_path):
    """Light units (a call's row and its events) commit without a thread hop; a batch with any other unit,
    or a store with synchronous=full (a commit waits for fsync), goes to the worker thread. Either way the
    units are committed before write() returns, and their events are fanned out."""
    calls: list[str] = []
    store = await _open_counted(tmp_path / "gw.sqlite3", calls)
    seen: list[str] = []
    store.add_commit_listener(lambda events: seen.extend(e.type for e in events))
    threads: set[int] = set()

    def light(tx):
        threads.add(threading.get_ident())
        return tx.append_event("call.incoming", {"n": 1}).seq

    async with trio.open_nursery() as nursery:  # 32 lines ringing at once: one batch, on the trio thread
        for _ in range(32):
            nursery.start_soon(lambda: store.write(light, light=True))
    assert threads == {threading.get_ident()} and calls == []
    assert store.stats.inline_transactions == 1 and seen == ["call.incoming"] * 32
    assert await store.read(lambda tx: tx._c.execute("SELECT count(*) FROM events").fetchone()[0]) == 32
    calls.clear()

    async with trio.open_nursery() as nursery:  # one heavy unit in the batch: the worker thread
        nursery.start_soon(lambda: store.write(light, light=True))
        nursery.start_soon(lambda: store.write(lambda tx: tx.insert_message(_message("msg_1"))))
    assert calls == ["_run_batch"] and store.stats.inline_transactions == 1
    await store.close()

    calls = []
    full = await _open_counted(tmp_path / "full.sqlite3", calls, synchronous="full")
    await full.write(light, light=True)
    assert calls == ["_run_batch"] and full.stats.inline_transactions == 0
    await full.close()


async def test_checkpoints_run_in_the_worker_thread_never_inside_a_light_commit(tmp_path, monkeypatch):
    """Automatic checkpoints are off (one could run inside a commit on the trio thread); every
    CHECKPOINT_EVERY_COMMITS commits the next batch goes to the worker thread, which checkpoints after it."""
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_EVERY_COMMITS", 5)
    calls: list[str] = []
    store = await _open_counted(tmp_path / "gw.sqlite3", calls)
    assert await store.read(lambda tx: tx._c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    calls.clear()
    for i in range(11):
        await store.write(lambda tx, i=i: tx.append_event("line.state_changed", {"i": i}), light=True)
    # commits 1-5 inline; the 6th is threaded and checkpoints; 7-11 inline.
    assert calls == ["_run_batch"]
    assert store.stats.checkpoints == 1 and store.stats.inline_transactions == 10
    await store.close()
    conn = sqlite3.connect(tmp_path / "gw.sqlite3")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 11
    conn.close()
