"""SQLite store: WAL mode, one connection, group commit, migrations, the event journal.

Concurrency: sqlite3 calls run in a worker thread (``trio.to_thread.run_sync``) on ONE connection
(``check_same_thread=False``) guarded by a ``trio.Lock``; with one exception, *light* batches (below).

Light units (``write(unit, light=True)``): a few rows by key and their events, such as a call's state
change (the screen pop of 32 lines ringing at once is one batch of 32 such units, ~1 ms of SQLite). A batch
of light units only, with ``synchronous=NORMAL``, commits on the trio thread: a WAL commit then is page-cache
writes, no fsync, and the thread hop costs more than the work. Measured on the 2-core bench host with 32
voice lines streaming (issue 5): the hop waited 2-10 ms for the worker thread to get the GIL, and the commit
then took 2-11 ms instead of 1, its ~200 sqlite3 calls each giving the GIL up and waiting to get it back
from the busy event loop. What could block is kept off the trio thread: automatic checkpoints are off on
the connection and ``_checkpoint`` runs a PASSIVE one (what SQLite's automatic one does) in the worker
thread after every ``CHECKPOINT_EVERY_COMMITS`` commits (or ``CHECKPOINT_EVERY_UNITS`` units); a batch
that has a checkpoint or the journal's pruning due is committed in the worker thread, which does them.

Group commit (leader/follower, no background task): ``write(unit)`` queues the unit; if no commit is in
progress the caller becomes the leader and commits EVERY queued unit in one transaction, each in its own
SAVEPOINT (a unit that raises is rolled back alone and its caller gets the exception); callers that queued
while a commit was running wait for it, and one of them leads the next batch. Under load one fsync serves
hundreds of submits, which is what makes "committed before the API answers 202" cheap.

Durability choice: ``synchronous=NORMAL`` in WAL mode. A committed transaction survives a crash of the
process (the WAL is written before COMMIT returns); after a power loss or OS crash the last transactions
before the failure may roll back, the database stays consistent (https://www.sqlite.org/wal.html, "Performance
Considerations"; https://www.sqlite.org/pragma.html#pragma_synchronous). ``synchronous: full`` in the config
fsyncs the WAL on every commit as well (durable across power loss, slower; group commit amortises it).
"""

from __future__ import annotations

import operator
import secrets
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from gateway.events import Event, format_time, parse_time, utc_now
from gateway.sms.models import Message, MessagePart
from gateway.store.base import (
    Fragment,
    FragmentGroup,
    IdempotencyRecord,
    PartCandidate,
    ProviderReportRecord,
    QueuedRef,
    StatusReportRecord,
    Store,
    StoreError,
    StoreTx,
)
from gateway.store.migrations import load_migrations

log = structlog.get_logger("store")
T = TypeVar("T")
Runner = Callable[..., Awaitable[Any]]


def _own_thread_runner() -> Runner:
    """``trio.to_thread.run_sync`` with a limiter of the store's own: trio's default limiter (40 threads) is
    shared with every other blocking call of the process, and with 32 voice boxes each holding a thread in
    a blocking read (and their writes) a commit could wait for a free token behind them."""
    limiter = trio.CapacityLimiter(1)  # one connection: the store never runs two calls at once anyway

    async def run(fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

    return run


# The gathering leader's one yield (a module name, so a test can act exactly while a leader gathers).
_gather_pause = trio.lowlevel.checkpoint


async def run_inline(fn: Callable[..., T], *args: Any) -> T:
    """A runner that calls sqlite3 on the trio thread: for MockClock tests only (it blocks the event loop)."""
    return fn(*args)


MAX_BATCH = 2000  # units per transaction; a bigger backlog is committed in several transactions
INLINE_MAX_UNITS = 64  # a batch of light units commits on the trio thread up to this size
CHECKPOINT_EVERY_COMMITS = 64  # a PASSIVE WAL checkpoint in the worker thread (SQLite's own: 1000 pages)
CHECKPOINT_EVERY_UNITS = 2000  # ... or after this many units (bulk batches write many pages each)
PRUNE_EVERY_EVENTS = 1000  # journal retention is enforced inside a commit every this many events
BUSY_TIMEOUT_MS = 5000

# Message dataclass field -> messages column, where the names differ.
_MSG_COLUMN = {"to": "to_number", "sender": "from_number", "sender_raw": "from_raw"}
_MSG_FIELDS = (
    "id",
    "direction",
    "status",
    "text",
    "encoding",
    "parts",
    "to",
    "to_raw",
    "sender",
    "sender_raw",
    "modem",
    "sent_modem",
    "report",
    "send_at",
    "client_ref",
    "concat_ref",
    "attempts",
    "next_attempt_at",
    "error_code",
    "error_kind",
    "error_message",
    "incomplete",
    "created_at",
    "updated_at",
    "sent_at",
    "final_at",
    "received_at",
    "category",
    "cost",
    "provider_id",
    "last_route",
)
_PART_FIELDS = (
    "seq",
    "status",
    "segment_hex",
    "tpdu_length",
    "modem",
    "reference",
    "sent_at",
    "tp_status",
    "cms_error",
    "error",
    "updated_at",
    "pdu_digest",
)
_TIME_FIELDS = frozenset(
    {"send_at", "next_attempt_at", "created_at", "updated_at", "sent_at", "final_at", "received_at"}
)
_BOOL_FIELDS = frozenset({"report", "incomplete"})
_MSG_SELECT = "SELECT " + ", ".join(_MSG_COLUMN.get(f, f) for f in _MSG_FIELDS) + " FROM messages"
_PART_SELECT = "SELECT message_id, " + ", ".join(_PART_FIELDS) + " FROM message_parts"
_MSG_INSERT = (
    f"INSERT INTO messages ({', '.join(_MSG_COLUMN.get(f, f) for f in _MSG_FIELDS)}) "
    f"VALUES ({', '.join('?' * len(_MSG_FIELDS))})"
)
_PART_INSERT = (
    f"INSERT INTO message_parts (message_id, {', '.join(_PART_FIELDS)}) "
    f"VALUES (?, {', '.join('?' * len(_PART_FIELDS))})"
)


def _to_db(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return format_time(value)
    if name in _BOOL_FIELDS:
        return int(bool(value))
    return value


def _row_encoder(names: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    """``obj -> [_to_db(name, getattr(obj, name)) for name in names]`` with the attributes read by one
    ``attrgetter`` call and only the time and bool fields converted: a submit inserts a message and its parts
    with 43 values, and the per-value calls were most of the Python time of the insert."""
    get = operator.attrgetter(*names)
    times = [i for i, n in enumerate(names) if n in _TIME_FIELDS]
    bools = [i for i, n in enumerate(names) if n in _BOOL_FIELDS]

    def encode(obj: Any) -> list[Any]:
        values = list(get(obj))
        for i in times:
            values[i] = format_time(values[i])
        for i in bools:
            values[i] = int(bool(values[i]))
        return values

    return encode


_message_values = _row_encoder(_MSG_FIELDS)
_part_values = _row_encoder(_PART_FIELDS)


def _from_db(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return parse_time(value)
    if name in _BOOL_FIELDS:
        return bool(value)
    return value


def _message_from_row(row: sqlite3.Row | tuple) -> Message:
    return Message(**{name: _from_db(name, row[i]) for i, name in enumerate(_MSG_FIELDS)})


def _part_from_row(row: sqlite3.Row | tuple) -> MessagePart:
    return MessagePart(**{name: _from_db(name, row[i + 1]) for i, name in enumerate(_PART_FIELDS)})


@dataclass
class _PendingUnit:
    fn: Callable[[StoreTx], Any]
    light: bool = False  # a few rows by key: may commit on the trio thread (see the module docstring)
    taken: bool = False  # in the batch in flight (or a finished one)
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class StoreStats:
    transactions: int = 0  # committed write transactions (batches)
    units: int = 0  # units of work committed or rolled back
    failed_units: int = 0
    largest_batch: int = 0
    inline_transactions: int = 0  # light batches committed on the trio thread
    checkpoints: int = 0  # WAL checkpoints run by the store (automatic ones are off)


class SqliteTx(StoreTx):
    """StoreTx over the store's connection; only used inside the store's worker thread."""

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection):
        self._store = store
        self._c = conn
        self.events: list[Event] = []

    @property
    def connection(self) -> sqlite3.Connection:
        """The transaction's connection, for feature modules' own SQL (``gateway/store/<feature>_sql.py``).
        Use it only inside the unit of work (worker thread) and never COMMIT/ROLLBACK through it: the store
        owns the transaction and the unit's savepoint."""
        return self._c

    # --- events -------------------------------------------------------------------------------------------
    def append_event(self, type: str, data: dict[str, Any]) -> Event:
        store = self._store
        seq = store._seq + 1
        event = Event.build(type, store._epoch, seq, store._batch_time, data)
        self._c.execute(
            "INSERT INTO events (seq, type, time, payload) VALUES (?, ?, ?, ?)",
            (seq, type, event.time, event.payload),
        )
        store._seq = seq
        self.events.append(event)
        return event

    def _prune_events(self, max_events: int, cutoff: datetime | None) -> int:
        """Keep the newest ``max_events`` and nothing older than ``cutoff`` -- but always the newest event, so
        that ``last_seq`` survives a restart."""
        last = self._store._seq
        removed = self._c.execute("DELETE FROM events WHERE seq <= ?", (last - max_events,)).rowcount
        if cutoff is not None:
            removed += self._c.execute(
                "DELETE FROM events WHERE time < ? AND seq < ?", (format_time(cutoff), last)
            ).rowcount
        return removed

    # --- messages -----------------------------------------------------------------------------------------
    def insert_message(self, message: Message) -> None:
        conn = self._c
        conn.execute(_MSG_INSERT, _message_values(message))
        parts = message.part_list
        if len(parts) == 1:  # the usual single-part SMS: execute() is cheaper than executemany()
            conn.execute(_PART_INSERT, [message.id, *_part_values(parts[0])])
        elif parts:
            conn.executemany(_PART_INSERT, [[message.id, *_part_values(p)] for p in parts])

    def _attach_parts(self, messages: list[Message]) -> list[Message]:
        if not messages:
            return messages
        by_id = {m.id: m for m in messages}
        for start in range(0, len(messages), 500):
            ids = [m.id for m in messages[start : start + 500]]
            rows = self._c.execute(
                f"{_PART_SELECT} WHERE message_id IN ({', '.join('?' * len(ids))}) ORDER BY message_id, seq",
                ids,
            )
            for row in rows:
                by_id[row[0]].part_list.append(_part_from_row(row))
        return messages

    def get_message(self, message_id: str) -> Message | None:
        row = self._c.execute(f"{_MSG_SELECT} WHERE id = ?", (message_id,)).fetchone()
        return self._attach_parts([_message_from_row(row)])[0] if row else None

    def list_messages(
        self, *, status: str | None, direction: str | None, before_id: str | None, limit: int
    ) -> list[Message]:
        where, args = [], []
        for column, value in (("status = ?", status), ("direction = ?", direction), ("id < ?", before_id)):
            if value is not None:
                where.append(column)
                args.append(value)
        sql = _MSG_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        rows = self._c.execute(sql, [*args, limit]).fetchall()
        return self._attach_parts([_message_from_row(r) for r in rows])

    def _set(
        self,
        table: str,
        fields: Iterable[str],
        column_of: Callable[[str], str],
        changes: dict[str, Any],
        where: str,
        args: list[Any],
    ) -> None:
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"unknown {table} field(s): {', '.join(sorted(unknown))}")
        if not changes:
            return
        sets = ", ".join(f"{column_of(name)} = ?" for name in changes)
        values = [_to_db(name, value) for name, value in changes.items()]
        self._c.execute(f"UPDATE {table} SET {sets} WHERE {where}", values + args)

    def update_message(self, message_id: str, **changes: Any) -> None:
        self._set("messages", _MSG_FIELDS, lambda f: _MSG_COLUMN.get(f, f), changes, "id = ?", [message_id])

    def update_part(self, message_id: str, seq: int, **changes: Any) -> None:
        self._set(
            "message_parts",
            _PART_FIELDS,
            lambda f: f,
            changes,
            "message_id = ? AND seq = ?",
            [message_id, seq],
        )

    def messages_in_status(self, status: str) -> list[Message]:
        rows = self._c.execute(f"{_MSG_SELECT} WHERE status = ? ORDER BY id", (status,)).fetchall()
        return self._attach_parts([_message_from_row(r) for r in rows])

    def queued_refs(self, *, due_by: datetime | None) -> list[QueuedRef]:
        sql = "SELECT id, modem, sent_modem, next_attempt_at, category FROM messages WHERE status = 'queued'"
        args: list[Any] = []
        if due_by is not None:
            sql += " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            args.append(format_time(due_by))
        rows = self._c.execute(sql + " ORDER BY id", args).fetchall()
        return [QueuedRef(r[0], r[1], r[2], parse_time(r[3]), r[4]) for r in rows]

    # --- routing ------------------------------------------------------------------------------------------
    def route_usage(self, day: str) -> dict[str, int]:
        rows = self._c.execute("SELECT route, parts FROM route_usage WHERE day = ?", (day,))
        return {r[0]: r[1] for r in rows}

    def add_route_usage(self, route: str, day: str, parts: int) -> int:
        self._c.execute(
            "INSERT OR IGNORE INTO route_usage (route, day, parts) VALUES (?, ?, 0)", (route, day)
        )
        self._c.execute(
            "UPDATE route_usage SET parts = max(parts + ?, 0) WHERE route = ? AND day = ?",
            (parts, route, day),
        )
        return self._c.execute(
            "SELECT parts FROM route_usage WHERE route = ? AND day = ?", (route, day)
        ).fetchone()[0]

    def queued_for_reroute(self, route: str) -> list[Message]:
        rows = self._c.execute(
            f"{_MSG_SELECT} WHERE status = 'queued' AND modem IS NULL AND (last_route = ? OR sent_modem = ?) "
            "ORDER BY id",
            (route, route),
        ).fetchall()
        return self._attach_parts([_message_from_row(r) for r in rows])

    def message_by_provider_id(self, provider: str, provider_id: str) -> Message | None:
        row = self._c.execute(
            f"{_MSG_SELECT} WHERE sent_modem = ? AND provider_id = ? ORDER BY id DESC LIMIT 1",
            (provider, provider_id),
        ).fetchone()
        return self._attach_parts([_message_from_row(row)])[0] if row else None

    def insert_provider_report(self, record: ProviderReportRecord) -> int:
        cur = self._c.execute(
            "INSERT INTO provider_reports (provider, provider_id, status, raw_status, error_code, "
            "received_at, message_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.provider,
                record.provider_id,
                record.status,
                record.raw_status,
                record.error_code,
                format_time(record.received_at),
                record.message_id,
            ),
        )
        return int(cur.lastrowid or 0)

    def unmatched_provider_reports(self, provider: str, provider_id: str) -> list[ProviderReportRecord]:
        rows = self._c.execute(
            "SELECT provider, provider_id, status, raw_status, error_code, received_at, message_id, id "
            "FROM provider_reports WHERE provider = ? AND provider_id = ? AND message_id IS NULL ORDER BY id",
            (provider, provider_id),
        )
        return [ProviderReportRecord(*r[:5], parse_time(r[5]), r[6], r[7]) for r in rows]

    def match_provider_report(self, report_id: int, message_id: str) -> None:
        self._c.execute("UPDATE provider_reports SET message_id = ? WHERE id = ?", (message_id, report_id))

    def scheduled_due(self, due_by: datetime) -> list[str]:
        rows = self._c.execute(
            "SELECT id FROM messages WHERE status = 'scheduled' AND send_at <= ? ORDER BY send_at, id",
            (format_time(due_by),),
        )
        return [r[0] for r in rows]

    def next_due_time(self, after: datetime) -> datetime | None:
        after_text = format_time(after)
        row = self._c.execute(
            "SELECT min(t) FROM (SELECT min(send_at) AS t FROM messages "
            "WHERE status = 'scheduled' AND send_at > ? "
            "UNION ALL SELECT min(next_attempt_at) FROM messages "
            "WHERE status = 'queued' AND next_attempt_at > ?)",
            (after_text, after_text),
        ).fetchone()
        return parse_time(row[0])

    # --- idempotency keys ---------------------------------------------------------------------------------
    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        row = self._c.execute(
            "SELECT key, fingerprint, message_id, created_at FROM idempotency_keys WHERE key = ?", (key,)
        ).fetchone()
        return IdempotencyRecord(row[0], row[1], row[2], parse_time(row[3])) if row else None

    def put_idempotency(self, record: IdempotencyRecord) -> None:
        self._c.execute(
            "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, message_id, created_at) "
            "VALUES (?, ?, ?, ?)",
            (record.key, record.fingerprint, record.message_id, format_time(record.created_at)),
        )

    def delete_idempotency_before(self, cutoff: datetime) -> int:
        return self._c.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (format_time(cutoff),)
        ).rowcount

    # --- incoming -----------------------------------------------------------------------------------------
    def inbound_pdu_seen(self, pdu_digest: str) -> bool:
        row = self._c.execute(
            "SELECT EXISTS (SELECT 1 FROM message_parts WHERE pdu_digest = ?) "
            "OR EXISTS (SELECT 1 FROM inbound_fragments WHERE pdu_digest = ?)",
            (pdu_digest, pdu_digest),
        ).fetchone()
        return bool(row[0])

    def add_fragment(self, fragment: Fragment) -> bool:
        cur = self._c.execute(
            "INSERT OR IGNORE INTO inbound_fragments (modem, sender_raw, ref, total, ref_bits, seq, text, "
            "encoding, pdu_hex, pdu_digest, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fragment.modem,
                fragment.sender_raw,
                fragment.ref,
                fragment.total,
                fragment.ref_bits,
                fragment.seq,
                fragment.text,
                fragment.encoding,
                fragment.pdu_hex,
                fragment.pdu_digest,
                format_time(fragment.received_at),
            ),
        )
        return cur.rowcount == 1

    _GROUP_WHERE = "modem = ? AND sender_raw = ? AND ref = ? AND total = ? AND ref_bits = ?"

    def group_fragments(self, group: FragmentGroup) -> list[Fragment]:
        rows = self._c.execute(
            "SELECT modem, sender_raw, ref, total, ref_bits, seq, text, encoding, pdu_hex, pdu_digest, "
            "received_at "
            f"FROM inbound_fragments WHERE {self._GROUP_WHERE} ORDER BY seq",
            (group.modem, group.sender_raw, group.ref, group.total, group.ref_bits),
        )
        return [Fragment(*r[:10], parse_time(r[10])) for r in rows]

    def delete_group(self, group: FragmentGroup) -> None:
        self._c.execute(
            f"DELETE FROM inbound_fragments WHERE {self._GROUP_WHERE}",
            (group.modem, group.sender_raw, group.ref, group.total, group.ref_bits),
        )

    def groups_started_before(self, cutoff: datetime) -> list[FragmentGroup]:
        rows = self._c.execute(
            "SELECT modem, sender_raw, ref, total, ref_bits FROM inbound_fragments "
            "GROUP BY modem, sender_raw, ref, total, ref_bits HAVING min(received_at) <= ? "
            "ORDER BY min(received_at)",
            (format_time(cutoff),),
        )
        return [FragmentGroup(*r) for r in rows]

    def earliest_group_start(self) -> datetime | None:
        row = self._c.execute(
            "SELECT max(started) FROM (SELECT min(received_at) AS started FROM inbound_fragments "
            "GROUP BY modem, sender_raw, ref, total, ref_bits ORDER BY started LIMIT 1)"
        ).fetchone()
        return parse_time(row[0])

    def insert_rejected_pdu(self, modem: str, pdu_hex: str, error: str, received_at: datetime) -> None:
        self._c.execute(
            "INSERT INTO rejected_pdus (modem, pdu_hex, error, received_at) VALUES (?, ?, ?, ?)",
            (modem, pdu_hex, error, format_time(received_at)),
        )

    # --- status reports -----------------------------------------------------------------------------------
    def report_candidates(self, modem: str, reference: int, sent_after: datetime) -> list[PartCandidate]:
        rows = self._c.execute(
            "SELECT p.message_id, p.seq, p.sent_at, m.to_number FROM message_parts p "
            "JOIN messages m ON m.id = p.message_id "
            "WHERE p.modem = ? AND p.reference = ? AND p.sent_at >= ? AND m.direction = 'out' "
            "ORDER BY p.sent_at DESC, p.message_id DESC, p.seq DESC LIMIT 50",
            (modem, reference, format_time(sent_after)),
        )
        return [PartCandidate(r[0], r[1], parse_time(r[2]), r[3]) for r in rows]

    def insert_status_report(self, record: StatusReportRecord) -> None:
        self._c.execute(
            "INSERT INTO status_reports (modem, reference, recipient_raw, tp_status, service_centre_time, "
            "discharge_time, received_at, pdu_hex, message_id, part_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.modem,
                record.reference,
                record.recipient_raw,
                record.tp_status,
                format_time(record.service_centre_time),
                format_time(record.discharge_time),
                format_time(record.received_at),
                record.pdu_hex,
                record.message_id,
                record.part_seq,
            ),
        )

    def unmatched_reports(
        self, modem: str, reference: int, received_after: datetime
    ) -> list[StatusReportRecord]:
        rows = self._c.execute(
            "SELECT modem, reference, recipient_raw, tp_status, service_centre_time, discharge_time, "
            "received_at, "
            "pdu_hex, message_id, part_seq FROM status_reports WHERE message_id IS NULL AND modem = ? "
            "AND reference = ? AND received_at >= ? ORDER BY id",
            (modem, reference, format_time(received_after)),
        )
        return [
            StatusReportRecord(
                r[0], r[1], r[2], r[3], parse_time(r[4]), parse_time(r[5]), parse_time(r[6]), r[7], r[8], r[9]
            )
            for r in rows
        ]

    def match_report(self, record: StatusReportRecord, message_id: str, part_seq: int) -> None:
        self._c.execute(
            "UPDATE status_reports SET message_id = ?, part_seq = ? WHERE message_id IS NULL AND modem = ? "
            "AND reference = ? AND received_at = ? AND pdu_hex = ?",
            (
                message_id,
                part_seq,
                record.modem,
                record.reference,
                format_time(record.received_at),
                record.pdu_hex,
            ),
        )


def _connect(path: str, synchronous: str) -> tuple[sqlite3.Connection, int, str, int]:
    """Open, configure and migrate (worker thread): the connection, schema version, journal epoch and seq."""
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal" and path != ":memory:":
            raise StoreError(f"database {path}: cannot switch to WAL mode (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        # The statement journal of each unit's SAVEPOINT (the original of every page the unit changes, ~10
        # pages for a submit) stays in memory. With temporary files on disk SQLite spills it to a temp file
        # past 64 KiB, i.e. during the first unit of every batch, and every later unit of the batch then costs
        # ~20 pwrite() calls: measured ~12 us of CPU per submit. The journal is truncated at every RELEASE,
        # so it holds one unit's pages at most. Other temporary storage (sorts larger than the page cache,
        # none of which the gateway's indexed queries need) is in memory as well. Durability is unchanged:
        # the statement journal only serves ROLLBACK TO inside an open transaction.
        conn.execute("PRAGMA temp_store = MEMORY")
        # Checkpoints run in the worker thread (SqliteStore._checkpoint), never inside a commit, which may
        # run on the trio thread (light batches: see the module docstring).
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA foreign_keys = ON")
        version = _migrate(conn, path)
        epoch, seq = _journal_position(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"database {path} is not usable: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn, version, epoch, seq


def _journal_position(conn: sqlite3.Connection) -> tuple[str, int]:
    row = conn.execute("SELECT value FROM meta WHERE key = 'journal_epoch'").fetchone()
    if row:
        epoch = row[0]
    else:
        epoch = secrets.token_hex(8)
        conn.execute("INSERT INTO meta (key, value) VALUES ('journal_epoch', ?)", (epoch,))
    return epoch, conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]


def _migrate(conn: sqlite3.Connection, path: str) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL)"
    )
    current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    migrations = load_migrations()
    newest = migrations[-1].version if migrations else 0
    if current > newest:
        raise StoreError(
            f"database {path} has schema version {current}, written by a newer gateway; this "
            f"version knows up to {newest}: upgrade the gateway or restore a backup"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        try:
            # One transaction per migration: a failing script leaves the previous version intact.
            conn.executescript(
                "BEGIN IMMEDIATE;\n"
                + migration.sql
                + "\n;INSERT INTO schema_version (version, name, applied_at) "
                f"VALUES ({migration.version}, '{migration.name}', '{format_time(utc_now())}');\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(
                f"database {path}: migration {migration.version:04d}_{migration.name} failed: {exc}"
            ) from None
        log.info("schema migrated", version=migration.version, name=migration.name)
        current = migration.version
    return current


class SqliteStore(Store):
    """``await SqliteStore.open(path)``; ``await store.close()`` commits what is queued, then closes."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        *,
        schema_version: int,
        epoch: str,
        seq: int,
        clock: Callable[[], datetime] = utc_now,
        max_batch: int = MAX_BATCH,
        runner: Runner | None = None,
        synchronous: str = "normal",
    ):
        self.path = path
        self.schema_version = schema_version
        self.stats = StoreStats()
        self._conn = conn
        self._clock = clock
        self._max_batch = max_batch
        self._run = runner or _own_thread_runner()
        # Light batches commit on the trio thread only where a commit cannot wait for the disk.
        self._inline_light = synchronous == "normal"
        self._commits_since_checkpoint = self._units_since_checkpoint = 0
        self._lock = trio.Lock()
        self._queue: list[_PendingUnit] = []
        self._committing = False
        # Set when the batch in flight has committed (or failed): its units' callers, the caller that will
        # lead the next batch, and close() wait on it.
        self._batch_done = trio.Event()
        # The next batch's _batch_done: units queued during a commit wait on it (see write()).
        self._next_done = trio.Event()
        self._gathering = False  # a batch's leader lets the other writers of its scheduler pass queue first
        self._leader_waiting = False  # a queued caller waits for the batch in flight to end, to lead the next
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._closed = False
        self._max_events: int | None = None
        self._max_age_s: float | None = None
        self._events_since_prune = 0
        self._batch_time = format_time(clock())
        self._batch_cutoff: datetime | None = None
        self._epoch, self._seq = epoch, seq
        self._committed_seq = self._seq
        self._unit_running: _PendingUnit | None = None  # set while a unit's function runs
        self._unit_thread: int | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "normal",
        clock: Callable[[], datetime] = utc_now,
        max_batch: int = MAX_BATCH,
        runner: Runner | None = None,
    ) -> SqliteStore:
        """``runner`` runs the blocking sqlite3 calls; default ``trio.to_thread.run_sync``. Timer tests under
        MockClock(autojump_threshold=0) pass ``run_inline``: the autojump clock cannot see a worker thread
        and would jump time while a commit is in flight."""
        if synchronous not in ("normal", "full"):
            raise StoreError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        path = str(path)
        run = runner or trio.to_thread.run_sync
        conn, version, epoch, seq = await run(_connect, path, synchronous)
        store = cls(
            conn,
            path,
            schema_version=version,
            epoch=epoch,
            seq=seq,
            clock=clock,
            max_batch=max_batch,
            runner=runner,
            synchronous=synchronous,
        )
        log.info(
            "store open",
            path=path,
            schema_version=version,
            epoch=store.epoch,
            last_seq=store.last_seq,
            synchronous=synchronous,
        )
        return store

    # --- journal (EventJournal) ---------------------------------------------------------------------------
    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def last_seq(self) -> int:
        """Sequence of the newest committed (and fanned-out) event."""
        return self._committed_seq

    def add_commit_listener(self, listener: Callable[[list[Event]], None]) -> None:
        self._listeners.append(listener)

    async def append_event(self, type: str, data: dict[str, Any]) -> Event:
        return await self.write(lambda tx: tx.append_event(type, data), light=True)

    async def read_events(self, after_seq: int, limit: int) -> list[Event]:
        def query(_tx: StoreTx) -> list[Event]:
            rows = self._conn.execute(
                "SELECT payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
            return [Event.from_payload(r[0]) for r in rows]

        return await self.read(query)

    def set_journal_retention(self, *, max_events: int, max_age_s: float) -> None:
        if max_events < 1 or max_age_s <= 0:
            raise ValueError("journal retention needs max_events >= 1 and max_age_s > 0")
        self._max_events, self._max_age_s = max_events, max_age_s

    def _retention_cutoff(self) -> datetime | None:
        return self._clock() - timedelta(seconds=self._max_age_s) if self._max_age_s else None

    async def prune_journal(self) -> int:
        if self._max_events is None:
            return 0
        max_events, cutoff = self._max_events, self._retention_cutoff()
        return await self.write(lambda tx: tx._prune_events(max_events, cutoff))

    async def reset_journal(self) -> str:
        new_epoch = secrets.token_hex(8)

        def unit(tx: StoreTx) -> str:
            self._conn.execute("DELETE FROM events")
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'journal_epoch'", (new_epoch,))
            self._epoch, self._seq = new_epoch, 0
            return new_epoch

        epoch = await self.write(unit)
        self._committed_seq = 0
        log.warning("event journal reset", epoch=epoch)
        return epoch

    # --- units of work ------------------------------------------------------------------------------------
    async def write(self, unit: Callable[[StoreTx], T], *, light: bool = False) -> T:
        if self._closed:
            raise StoreError(f"database {self.path} is closed")
        pending = _PendingUnit(unit, light=light)
        self._queue.append(pending)
        # Each caller sleeps until the batch holding its unit has committed, and wakes once: a unit queued
        # during a commit waits for the NEXT batch (_next_done), except the first such unit, which waits for
        # the commit in flight (_batch_done) and then leads the next batch. Waking every waiter at the end of
        # every commit cost each submit one more task switch.
        try:
            while not pending.done:
                if pending.taken or self._gathering:
                    await self._batch_done.wait()  # the batch in flight (or being gathered) holds it
                elif not self._committing:
                    await self._commit_queued()
                elif not self._leader_waiting:
                    self._leader_waiting = True
                    try:
                        await self._batch_done.wait()
                    finally:
                        self._leader_waiting = False
                    if pending.taken and self._queue and not self._committing:
                        self._wake_followers()  # swept into a batch someone else led: hand the lead on
                else:
                    await self._next_done.wait()
        except trio.Cancelled:
            if pending in self._queue:  # not taken by a batch yet: withdraw it
                self._queue.remove(pending)
            raise
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _wake_followers(self) -> None:
        """Wake the units waiting for the next batch (they loop: one of them leads it)."""
        followers, self._next_done = self._next_done, trio.Event()
        followers.set()

    async def _commit_queued(self) -> None:
        self._committing = True
        # This batch's end is what the units queued before it wait for (one left over by max_batch wakes, is
        # not taken, and queues for the following batch).
        self._batch_done, self._next_done = self._next_done, trio.Event()
        # Gather: units written by the tasks that run in this same scheduler pass (a burst: 32 lines ringing
        # at once) join this batch instead of waiting for it to commit; they wait for its end (_gathering).
        self._gathering = True
        try:
            await _gather_pause()
        except BaseException:  # the leader is cancelled before taking anything: the gathered units re-lead
            self._gathering = self._committing = False
            self._batch_done.set()
            raise
        self._gathering = False
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        for pending in batch:
            pending.taken = True
        try:
            # Shielded: once units are taken they are committed and their callers told, even if the leader
            # is being cancelled (the thread would finish the transaction anyway).
            with trio.CancelScope(shield=True):
                async with self._lock:
                    # Clocks are read here, in trio, never in the worker thread.
                    self._batch_time = format_time(self._clock())
                    self._batch_cutoff = self._retention_cutoff()
                    if self._inline(batch):
                        events = self._run_batch(batch, maintain=False)
                        self.stats.inline_transactions += 1
                    else:
                        events = await self._run(self._run_batch, batch)
                for pending in batch:
                    pending.done = True
                if events:
                    self._committed_seq = events[-1].seq
                    for listener in self._listeners:
                        listener(events)
                for pending in batch:
                    for callback in pending.after_commit:
                        try:
                            callback()
                        except Exception:
                            log.exception("after-commit callback failed")
        finally:
            for pending in batch:
                if not pending.done:  # the batch itself blew up (not a unit, not SQLite): tell every caller
                    pending.done, pending.result = True, None
                    pending.error = StoreError(f"database {self.path}: the commit was interrupted")
            self._committing = False
            self._batch_done.set()
            if self._queue and not self._leader_waiting:
                self._wake_followers()  # nobody waits to lead the next batch (its leader was cancelled)

    def _inline(self, batch: list[_PendingUnit]) -> bool:
        """Commit ``batch`` on the trio thread (module docstring): light units only, a WAL commit that does
        not wait for the disk, and no maintenance due (such a batch goes to the worker thread, which does
        it)."""
        return (self._inline_light and len(batch) <= INLINE_MAX_UNITS and all(p.light for p in batch)
                and not self._maintenance_due())

    def _maintenance_due(self) -> bool:
        return (self._commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS
                or self._units_since_checkpoint >= CHECKPOINT_EVERY_UNITS
                or (self._max_events is not None and self._events_since_prune >= PRUNE_EVERY_EVENTS))

    def _run_batch(self, batch: list[_PendingUnit], maintain: bool = True) -> list[Event]:
        """One transaction for the whole batch (worker thread; a light batch on the trio thread, which
        leaves the journal's pruning and the checkpoint, if they fall due, to the next batch:
        ``maintain=False``)."""
        conn = self._conn
        epoch_before, seq_before = self._epoch, self._seq
        events: list[Event] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                conn.execute("SAVEPOINT unit")
                tx = SqliteTx(self, conn)
                epoch_at, seq_at = self._epoch, self._seq
                self._unit_running, self._unit_thread = pending, threading.get_ident()
                try:
                    pending.result = pending.fn(tx)
                except Exception as exc:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    self._epoch, self._seq = epoch_at, seq_at
                    pending.error = exc
                    pending.after_commit.clear()
                    self.stats.failed_units += 1
                else:
                    conn.execute("RELEASE unit")
                    events.extend(tx.events)
                finally:
                    self._unit_running = self._unit_thread = None
            self._events_since_prune += len(events)
            if maintain and self._max_events is not None and self._events_since_prune >= PRUNE_EVERY_EVENTS:
                SqliteTx(self, conn)._prune_events(self._max_events, self._batch_cutoff)
                self._events_since_prune = 0
            conn.execute("COMMIT")
            self._commits_since_checkpoint += 1
            self._units_since_checkpoint += len(batch)
            if maintain and self._maintenance_due():
                self._checkpoint()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._epoch, self._seq = epoch_before, seq_before
            error = StoreError(f"database {self.path}: commit failed: {exc}")
            for pending in batch:
                pending.result, pending.error = None, error
                pending.after_commit.clear()
            log.error("commit failed", path=self.path, units=len(batch), error=str(exc))
            return []
        self.stats.transactions += 1
        self.stats.units += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        return events

    def _checkpoint(self) -> None:
        """Worker thread, after a commit: a PASSIVE checkpoint, what SQLite's automatic one does (copies the
        WAL into the database as far as no reader needs it; never waits for a lock)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpoint failed", path=self.path, error=str(exc))
        self._commits_since_checkpoint = self._units_since_checkpoint = 0
        self.stats.checkpoints += 1

    def after_commit(self, callback: Callable[[], None]) -> None:
        unit = self._unit_running
        if unit is not None and self._unit_thread == threading.get_ident():
            unit.after_commit.append(callback)
        else:
            callback()

    async def read(self, query: Callable[[StoreTx], T]) -> T:
        """Run ``query(tx)`` in the worker thread (serialised with commits). It must only use the tx."""
        if self._closed:
            raise StoreError(f"database {self.path} is closed")
        async with self._lock:
            return await self._run(query, SqliteTx(self, self._conn))

    async def close(self) -> None:
        """Commit whatever is queued, then close the connection (idempotent)."""
        if self._closed:
            return
        while self._queue or self._committing:
            if self._committing:
                await self._batch_done.wait()
            else:
                await self._commit_queued()
        self._closed = True
        async with self._lock:
            await self._run(self._conn.close)
        log.info("store closed", path=self.path)
