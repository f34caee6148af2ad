"""SQL of SMS campaigns (tables of migration 0009_campaigns): campaigns, their recipients, rejected rows.

Plain functions over a unit of work's transaction: they run in the store's worker thread, inside the unit's
savepoint, through ``tx.connection`` (never COMMIT or ROLLBACK here). A PostgreSQL store can provide a module
with the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from gateway.events import format_time, parse_time

ACTIVE_STATUSES = ("scheduled", "running", "paused")
IN_FLIGHT_STATUSES = ("queued", "scheduled", "sending")  # messages that have not left the send queue yet


@dataclass(frozen=True)
class CampaignRow:
    id: str
    status: str
    template_id: str
    template_revision: int
    category: str
    route: str | None
    source: str
    start_at: datetime
    rows_received: int
    accepted: int
    rejected: int
    duplicates: int
    parts: int
    submitted: int
    refused: int
    skipped: int
    feed_cursor: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class PendingRecipient:
    row: int
    to_number: str
    text: str


_FIELDS = [f.name for f in fields(CampaignRow)]
_TIMES = {"start_at", "created_at", "updated_at", "started_at", "finished_at"}
_SELECT = f"SELECT {', '.join(_FIELDS)} FROM campaigns"


def _row(values: Sequence[Any]) -> CampaignRow:
    return CampaignRow(
        **{name: parse_time(v) if name in _TIMES else v for name, v in zip(_FIELDS, values, strict=True)}
    )


def _db(name: str, value: Any) -> Any:
    return format_time(value) if name in _TIMES else value


# --- campaigns ------------------------------------------------------------------------------------------
def insert_campaign(tx: Any, campaign: CampaignRow) -> None:
    tx.connection.execute(
        f"INSERT INTO campaigns ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})",
        [_db(name, getattr(campaign, name)) for name in _FIELDS],
    )


def get_campaign(tx: Any, campaign_id: str) -> CampaignRow | None:
    row = tx.connection.execute(f"{_SELECT} WHERE id = ?", (campaign_id,)).fetchone()
    return None if row is None else _row(row)


def list_campaigns(tx: Any, *, status: str | None, before_id: str | None, limit: int) -> list[CampaignRow]:
    """Newest first, strictly older than ``before_id``; never the half-stored ('loading') ones."""
    where, args = ["status != 'loading'"], []
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    rows = tx.connection.execute(
        f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?", [*args, limit]
    ).fetchall()
    return [_row(r) for r in rows]


def campaigns_in(tx: Any, statuses: Iterable[str]) -> list[CampaignRow]:
    wanted = list(statuses)
    rows = tx.connection.execute(
        f"{_SELECT} WHERE status IN ({', '.join('?' * len(wanted))}) ORDER BY id", wanted
    ).fetchall()
    return [_row(r) for r in rows]


def finished_since(tx: Any, since: datetime) -> list[CampaignRow]:
    rows = tx.connection.execute(
        f"{_SELECT} WHERE status IN ('completed', 'canceled') AND finished_at >= ? ORDER BY id",
        (format_time(since),),
    ).fetchall()
    return [_row(r) for r in rows]


def update_campaign(tx: Any, campaign_id: str, **changes: Any) -> None:
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown campaigns field(s): {', '.join(sorted(unknown))}")
    sets = ", ".join(f"{name} = ?" for name in changes)
    tx.connection.execute(
        f"UPDATE campaigns SET {sets} WHERE id = ?",
        [*(_db(name, value) for name, value in changes.items()), campaign_id],
    )


def delete_campaign(tx: Any, campaign_id: str) -> None:
    """Remove a campaign whose creation never finished (status 'loading' after a crash)."""
    conn = tx.connection
    for table in ("campaign_recipients", "campaign_rejected_rows"):
        conn.execute(f"DELETE FROM {table} WHERE campaign_id = ?", (campaign_id,))
    conn.execute("DELETE FROM campaigns WHERE id = ?", (campaign_id,))


# --- recipients -----------------------------------------------------------------------------------------
def insert_recipients(tx: Any, campaign_id: str, rows: Iterable[tuple[int, str, str, str]]) -> None:
    """``rows``: (row, e164, raw, text), inserted with one prepared statement."""
    tx.connection.executemany(
        "INSERT INTO campaign_recipients (campaign_id, row, to_number, to_raw, text) VALUES (?, ?, ?, ?, ?)",
        ((campaign_id, row, e164, raw, text) for row, e164, raw, text in rows),
    )


def insert_rejected(tx: Any, campaign_id: str, rows: Iterable[tuple[int, str, str, str]]) -> None:
    """``rows``: (row, code, field, detail)."""
    tx.connection.executemany(
        "INSERT INTO campaign_rejected_rows (campaign_id, row, code, field, detail) VALUES (?, ?, ?, ?, ?)",
        ((campaign_id, *r) for r in rows),
    )


def list_rejected(
    tx: Any, campaign_id: str, *, after_row: int, limit: int, code: str | None
) -> list[tuple[int, str, str, str]]:
    sql = "SELECT row, code, field, detail FROM campaign_rejected_rows WHERE campaign_id = ? AND row > ?"
    args: list[Any] = [campaign_id, after_row]
    if code is not None:
        sql += " AND code = ?"
        args.append(code)
    return [tuple(r) for r in tx.connection.execute(sql + " ORDER BY row LIMIT ?", [*args, limit])]


def next_pending(tx: Any, campaign_id: str, *, after_row: int, limit: int) -> list[PendingRecipient]:
    """The next recipients to submit, in row order (the primary key walks from the cursor)."""
    rows = tx.connection.execute(
        "SELECT row, to_number, text FROM campaign_recipients WHERE campaign_id = ? AND row > ? "
        "AND state = 'pending' ORDER BY row LIMIT ?",
        (campaign_id, after_row, limit),
    )
    return [PendingRecipient(*r) for r in rows]


def mark_submitted(
    tx: Any,
    campaign_id: str,
    submitted: Sequence[tuple[int, str]],
    refused: Sequence[tuple[int, str]],
    cursor: int,
    now: datetime,
) -> dict[str, str]:
    """Record a fed batch: ``submitted`` (row, message_id) and ``refused`` (row, reason); tag the messages
    with the campaign; move the cursor and the counters. Returns the messages' current statuses."""
    conn = tx.connection
    conn.executemany(
        "UPDATE campaign_recipients SET state = 'submitted', message_id = ? "
        "WHERE campaign_id = ? AND row = ?",
        ((message_id, campaign_id, row) for row, message_id in submitted),
    )
    conn.executemany(
        "UPDATE campaign_recipients SET state = 'refused', error = ? WHERE campaign_id = ? AND row = ?",
        ((reason, campaign_id, row) for row, reason in refused),
    )
    conn.executemany(
        "UPDATE messages SET campaign_id = ? WHERE id = ?",
        ((campaign_id, message_id) for _, message_id in submitted),
    )
    conn.execute(
        "UPDATE campaigns SET submitted = submitted + ?, refused = refused + ?, "
        "feed_cursor = max(feed_cursor, ?), updated_at = ? WHERE id = ?",
        (len(submitted), len(refused), cursor, format_time(now), campaign_id),
    )
    return message_statuses(tx, [message_id for _, message_id in submitted])


def message_statuses(tx: Any, message_ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(message_ids), 500):
        chunk = list(message_ids[start : start + 500])
        rows = tx.connection.execute(
            f"SELECT id, status FROM messages WHERE id IN ({', '.join('?' * len(chunk))})", chunk
        )
        found.update({r[0]: r[1] for r in rows})
    return found


def skip_pending(tx: Any, campaign_id: str, now: datetime) -> int:
    """Cancel: recipients not submitted yet are never sent; returns how many."""
    skipped = tx.connection.execute(
        "UPDATE campaign_recipients SET state = 'skipped' WHERE campaign_id = ? AND state = 'pending'",
        (campaign_id,),
    ).rowcount
    tx.connection.execute(
        "UPDATE campaigns SET skipped = skipped + ?, updated_at = ? WHERE id = ?",
        (skipped, format_time(now), campaign_id),
    )
    return skipped


# --- messages of a campaign -----------------------------------------------------------------------------
def in_flight_ids(tx: Any, campaign_id: str) -> list[str]:
    """The campaign's messages still queued, scheduled or being sent."""
    rows = tx.connection.execute(
        f"SELECT id FROM messages WHERE campaign_id = ? AND status IN "
        f"({', '.join('?' * len(IN_FLIGHT_STATUSES))})",
        (campaign_id, *IN_FLIGHT_STATUSES),
    )
    return [r[0] for r in rows]


def message_counts(tx: Any, campaign_id: str) -> dict[str, int]:
    """Messages of the campaign per status (one pass over the (campaign_id, status) index)."""
    rows = tx.connection.execute(
        "SELECT status, count(*) FROM messages WHERE campaign_id = ? GROUP BY status", (campaign_id,)
    )
    return {r[0]: r[1] for r in rows}
