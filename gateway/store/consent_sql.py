"""SQL of the opt-out registry, reply rules and correlated replies (tables of migration 0003_consent).

Plain functions over a unit of work's transaction: they run in the store's worker thread, inside the unit's
savepoint, through ``tx.connection`` (never COMMIT or ROLLBACK here). ``ConsentSql`` declares the same
functions, so a PostgreSQL store can provide its own module with this shape.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gateway.events import format_time, parse_time

ALL_CATEGORIES = "*"  # an opt-out row for every category that honours opt-outs


@dataclass(frozen=True)
class OptOut:
    number: str  # E.164
    category: str  # a category name or "*"
    source: str  # "api" | "keyword"
    reason: str | None
    message_id: str | None
    created_at: datetime
    confirmed_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "category": self.category,
            "source": self.source,
            "reason": self.reason,
            "message_id": self.message_id,
            "created_at": format_time(self.created_at),
        }


@dataclass(frozen=True)
class OutboundRef:
    """The outgoing message an incoming one answers."""

    message_id: str
    campaign_id: str | None
    sent_at: datetime


class ConsentSql(Protocol):
    def add_opt_out(
        self,
        tx: Any,
        number: str,
        category: str,
        *,
        source: str,
        reason: str | None,
        message_id: str | None,
        now: datetime,
    ) -> bool: ...
    def remove_opt_outs(self, tx: Any, number: str, category: str | None) -> int: ...
    def list_opt_outs(
        self, tx: Any, *, number: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[OptOut]: ...
    def blocking_opt_out(self, tx: Any, number: str, category: str) -> OptOut | None: ...
    def mark_confirmed(self, tx: Any, number: str, category: str, now: datetime) -> None: ...
    def latest_outbound(self, tx: Any, number: str, since: datetime) -> OutboundRef | None: ...
    def put_reply_rule(self, tx: Any, scope: str, ref_id: str, rule_json: str, now: datetime) -> None: ...
    def get_reply_rule(self, tx: Any, scope: str, ref_id: str) -> str | None: ...
    def delete_reply_rule(self, tx: Any, scope: str, ref_id: str) -> bool: ...
    def record_reply(
        self,
        tx: Any,
        message_id: str,
        *,
        in_reply_to: str,
        campaign_id: str | None,
        answer_json: str | None,
        received_at: datetime,
    ) -> None: ...


def _conn(tx: Any) -> sqlite3.Connection:
    return tx.connection


_OPT_OUT_COLUMNS = "number, category, source, reason, message_id, created_at, confirmed_at"


def _opt_out(row: tuple) -> OptOut:
    number, category, source, reason, message_id, created_at, confirmed_at = row
    return OptOut(
        number, category, source, reason, message_id, parse_time(created_at), parse_time(confirmed_at)
    )


def add_opt_out(
    tx: Any,
    number: str,
    category: str,
    *,
    source: str,
    reason: str | None,
    message_id: str | None,
    now: datetime,
) -> bool:
    """Insert an opt-out; False when the number was already opted out of that category (the first record,
    with its date and source, is kept)."""
    cursor = _conn(tx).execute(
        "INSERT INTO opt_outs (number, category, source, reason, message_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (number, category) DO NOTHING",
        (number, category, source, reason, message_id, format_time(now)),
    )
    return cursor.rowcount == 1


def remove_opt_outs(tx: Any, number: str, category: str | None) -> int:
    """Delete the number's row for ``category`` (``"*"`` included), or every row when ``category`` is None."""
    if category is None:
        return _conn(tx).execute("DELETE FROM opt_outs WHERE number = ?", (number,)).rowcount
    return (
        _conn(tx)
        .execute("DELETE FROM opt_outs WHERE number = ? AND category = ?", (number, category))
        .rowcount
    )


def list_opt_outs(tx: Any, *, number: str | None, after: tuple[str, str] | None, limit: int) -> list[OptOut]:
    """Ordered by (number, category), strictly after the ``after`` key (keyset pagination)."""
    where, args = [], []
    if number is not None:
        where.append("number = ?")
        args.append(number)
    if after is not None:
        where.append("(number, category) > (?, ?)")
        args.extend(after)
    sql = f"SELECT {_OPT_OUT_COLUMNS} FROM opt_outs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = _conn(tx).execute(sql + " ORDER BY number, category LIMIT ?", (*args, limit)).fetchall()
    return [_opt_out(r) for r in rows]


_BLOCKING_OPT_OUT = (
    f"SELECT {_OPT_OUT_COLUMNS} FROM opt_outs WHERE number = ? AND category IN (?, ?) "
    "ORDER BY category = ? LIMIT 1"
)
# The same for a category that sorts after "*" (every category name does: they start with a letter): the
# primary key (number, category) read backwards gives the category's row before the "*" row, with no
# temporary b-tree to sort the (at most two) rows. This query runs in every submit's unit of work.
_BLOCKING_OPT_OUT_AFTER_ALL = (
    f"SELECT {_OPT_OUT_COLUMNS} FROM opt_outs WHERE number = ? AND category IN (?, ?) "
    "ORDER BY category DESC LIMIT 1"
)


def blocking_opt_out(tx: Any, number: str, category: str) -> OptOut | None:
    """The row that opts ``number`` out of ``category``: the category's own row, else the ``"*"`` row."""
    if category > ALL_CATEGORIES:  # str order is SQLite's BINARY order (UTF-8 keeps code point order)
        row = _conn(tx).execute(_BLOCKING_OPT_OUT_AFTER_ALL, (number, category, ALL_CATEGORIES)).fetchone()
    else:
        row = _conn(tx).execute(
            _BLOCKING_OPT_OUT, (number, category, ALL_CATEGORIES, ALL_CATEGORIES)
        ).fetchone()
    return _opt_out(row) if row is not None else None


def mark_confirmed(tx: Any, number: str, category: str, now: datetime) -> None:
    _conn(tx).execute(
        "UPDATE opt_outs SET confirmed_at = ? WHERE number = ? AND category = ?",
        (format_time(now), number, category),
    )


def _messages_have_campaign_id(conn: sqlite3.Connection) -> bool:
    """Campaigns (another migration) may add ``messages.campaign_id``; replies use it when it exists."""
    return any(row[1] == "campaign_id" for row in conn.execute("PRAGMA table_info(messages)"))


def latest_outbound(tx: Any, number: str, since: datetime) -> OutboundRef | None:
    """The outgoing message most recently sent to ``number`` at or after ``since`` (index
    messages_out_to_sent), with its campaign when messages carry one."""
    conn = _conn(tx)
    campaign = "campaign_id" if _messages_have_campaign_id(conn) else "NULL"
    row = conn.execute(
        f"SELECT id, {campaign}, sent_at FROM messages WHERE direction = 'out' AND to_number = ? "
        "AND sent_at IS NOT NULL AND sent_at >= ? ORDER BY sent_at DESC, id DESC LIMIT 1",
        (number, format_time(since)),
    ).fetchone()
    if row is None:
        return None
    return OutboundRef(row[0], row[1], parse_time(row[2]))


def put_reply_rule(tx: Any, scope: str, ref_id: str, rule_json: str, now: datetime) -> None:
    """Insert or replace the rule of one message or campaign."""
    _conn(tx).execute(
        "INSERT INTO reply_rules (scope, ref_id, rule, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, ref_id) DO UPDATE SET rule = excluded.rule, created_at = excluded.created_at",
        (scope, ref_id, rule_json, format_time(now)),
    )


def get_reply_rule(tx: Any, scope: str, ref_id: str) -> str | None:
    row = (
        _conn(tx)
        .execute("SELECT rule FROM reply_rules WHERE scope = ? AND ref_id = ?", (scope, ref_id))
        .fetchone()
    )
    return row[0] if row else None


def delete_reply_rule(tx: Any, scope: str, ref_id: str) -> bool:
    return (
        _conn(tx).execute("DELETE FROM reply_rules WHERE scope = ? AND ref_id = ?", (scope, ref_id)).rowcount
        == 1
    )


def record_reply(
    tx: Any,
    message_id: str,
    *,
    in_reply_to: str,
    campaign_id: str | None,
    answer_json: str | None,
    received_at: datetime,
) -> None:
    _conn(tx).execute(
        "INSERT OR REPLACE INTO replies (message_id, in_reply_to, campaign_id, answer, received_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (message_id, in_reply_to, campaign_id, answer_json, format_time(received_at)),
    )
