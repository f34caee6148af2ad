"""`hcrm-gateway backup`: a consistent copy of the live WAL store while another connection keeps writing."""

from __future__ import annotations

import sqlite3
import stat

import pytest
import trio

from gateway.cli import main
from gateway.commands.backup import BackupError, backup_store, integrity_problems
from gateway.store.sqlite import SqliteStore

PAYLOAD = {"note": "x" * 800}  # ~1 KB per event, so the store spans a few thousand pages


def pair(tx):
    """One unit of work writing two events: a consistent copy holds both or neither."""
    tx.append_event("test.pair_first", PAYLOAD)
    tx.append_event("test.pair_second", PAYLOAD)


def event_types(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        conn.close()


def write_config(tmp_path, data_dir) -> str:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"gateway:\n  data_dir: {data_dir}\nstore:\n  path: gateway.sqlite3\n")
    return str(config)


async def test_copy_while_the_daemon_writes_is_consistent_and_complete(tmp_path):
    source = tmp_path / "gateway.sqlite3"
    store = await SqliteStore.open(source)
    for _ in range(1500):
        await store.write(pair)
    committed_before = store.last_seq  # events are numbered from 1 and never pruned here
    copies = []
    writes_during = 0
    stop_writing = trio.Event()

    async def keep_writing():
        nonlocal writes_during
        while not stop_writing.is_set():
            await store.write(pair)
            writes_during += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_writing)
        for i in range(4):
            result = await trio.to_thread.run_sync(backup_store, source, tmp_path / f"copy{i}.sqlite3")
            copies.append(result)
        stop_writing.set()
    committed_after = store.last_seq  # events are numbered from 1 and never pruned here
    await store.close()

    assert writes_during > 0, "the writer was blocked for the whole time the backups ran"
    previous = committed_before
    for result in copies:
        types = event_types(result.path)
        # Everything committed before the backup started is there, including what was still in the WAL.
        assert previous <= len(types) <= committed_after
        # Never half a transaction: every pair is whole, in order.
        assert len(types) % 2 == 0
        assert types[-2:] == ["test.pair_first", "test.pair_second"]
        assert integrity_problems(result.path) == []
        assert result.schema_version is not None and result.schema_version >= 1
        assert result.pages > 500  # ~3 MB of events: a copy, not an empty file
        previous = len(types)


async def test_copy_is_private_single_file_and_opens_as_a_store(tmp_path):
    source = tmp_path / "gateway.sqlite3"
    store = await SqliteStore.open(source)
    await store.write(pair)
    epoch = store.epoch
    result = await trio.to_thread.run_sync(backup_store, source, tmp_path / "copy.sqlite3")
    await store.close()

    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["copy.sqlite3", "gateway.sqlite3", "gateway.sqlite3-wal", "gateway.sqlite3-shm"]
        if (tmp_path / "gateway.sqlite3-wal").exists() else ["copy.sqlite3", "gateway.sqlite3"])
    conn = sqlite3.connect(result.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    # Restored as the store, it resumes the same journal.
    restored = await SqliteStore.open(result.path)
    assert restored.epoch == epoch and restored.last_seq == 2
    await restored.close()


def test_cli_writes_into_a_directory_with_a_timestamped_name(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    trio.run(_make_store, data / "gateway.sqlite3")
    backups = tmp_path / "backups"
    backups.mkdir()
    assert main(["backup", str(backups), "--config", write_config(tmp_path, data)]) == 0
    (written,) = backups.iterdir()
    assert written.name.startswith("gateway-") and written.name.endswith("Z.sqlite3")
    out = capsys.readouterr().out
    assert "integrity_check ok" in out and str(written) in out
    assert len(event_types(written)) == 2


def test_cli_refuses_to_overwrite_without_force(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    trio.run(_make_store, data / "gateway.sqlite3")
    config = write_config(tmp_path, data)
    target = tmp_path / "backup.sqlite3"
    target.write_bytes(b"an older backup")
    assert main(["backup", str(target), "--config", config]) == 1
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"an older backup"
    assert main(["backup", str(target), "--config", config, "--force"]) == 0
    assert len(event_types(target)) == 2


def test_cli_missing_store_is_an_error_and_creates_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["backup", str(tmp_path / "b.sqlite3"), "--config", write_config(tmp_path, data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("backup: no store at ") and "Traceback" not in err
    assert list(data.iterdir()) == []
    assert not (tmp_path / "b.sqlite3").exists()


def test_cli_bad_config_reports_the_file(tmp_path, capsys):
    assert main(["backup", str(tmp_path / "b.sqlite3"), "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml:1:1: cannot read" in capsys.readouterr().err


def test_not_a_database_is_reported_and_leaves_no_partial_file(tmp_path):
    source = tmp_path / "gateway.sqlite3"
    source.write_bytes(b"this is not an SQLite file" * 200)
    with pytest.raises(BackupError, match="cannot copy .*not a database"):
        backup_store(source, tmp_path / "copy.sqlite3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.sqlite3"]


def test_backup_onto_the_live_store_is_refused(tmp_path):
    source = tmp_path / "gateway.sqlite3"
    trio.run(_make_store, source)
    with pytest.raises(BackupError, match="live store itself"):
        backup_store(source, source, overwrite=True)


def test_integrity_check_finds_a_damaged_page(tmp_path):
    path = tmp_path / "damaged.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE INDEX t_v ON t (v)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", ((f"value {i:06d}",) for i in range(5000)))
    conn.commit()
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    assert integrity_problems(path) == []
    with open(path, "r+b") as f:  # scribble over the middle of a page in the second half (index pages)
        f.seek(page_size * (pages * 3 // 4) + 100)
        f.write(b"\xff" * 200)
    assert integrity_problems(path) != []


async def _make_store(path):
    store = await SqliteStore.open(path)
    await store.write(pair)
    await store.close()


async def test_restore_procedure_starts_a_new_journal_epoch(tmp_path):
    """docs/install.md "Restore": the copy goes in place, its journal epoch row is deleted, the daemon starts;
    clients resuming from the old epoch then get resync_required instead of reused sequence numbers."""
    source = tmp_path / "gateway.sqlite3"
    store = await SqliteStore.open(source)
    await store.write(pair)
    old_epoch = store.epoch
    copy = (await trio.to_thread.run_sync(backup_store, source, tmp_path / "copy.sqlite3")).path
    await store.close()

    conn = sqlite3.connect(copy)
    conn.execute("DELETE FROM meta WHERE key = 'journal_epoch'")  # the statement in docs/install.md
    conn.commit()
    conn.close()
    restored = await SqliteStore.open(copy)
    assert restored.epoch != old_epoch
    assert restored.last_seq == 2  # numbering continues after the restored events
    await restored.close()
