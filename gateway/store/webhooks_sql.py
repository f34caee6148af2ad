"""Webhook subscriptions and dead letters in SQLite (schema 0005_webhooks.sql).

Plain functions over a unit of work's transaction (``tx.connection``), run in the store's worker thread like
every unit. ``WebhookStore`` declares the same functions so a PostgreSQL store can implement them later.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, Protocol

from gateway.events import format_time, parse_time

DeadLetterStatus = Literal["dead", "pending", "redelivered"]


@dataclass(frozen=True)
class WebhookSubscription:
    """One CRM endpoint: what it wants (``event_types`` patterns), where it is and how far it got."""

    id: str
    url: str
    event_types: tuple[str, ...]
    description: str | None
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None
    secret_rotated_at: datetime | None
    enabled: bool
    disabled_reason: str | None
    cursor_epoch: str
    cursor_seq: int
    head_seq: int | None
    head_attempts: int
    head_first_attempt_at: datetime | None
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    delivered: int
    dead_lettered: int
    consecutive_dead_letters: int
    gaps: int
    created_at: datetime
    updated_at: datetime

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret, plus the previous one while its rotation overlap lasts."""
        found = [self.secret]
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            found.append(self.previous_secret)
        return found


@dataclass(frozen=True)
class DeadLetter:
    """An event a subscription gave up on, with the payload so it can be redelivered."""

    id: str
    subscription_id: str
    event_id: str
    event_type: str
    payload: bytes
    status: DeadLetterStatus
    attempts: int
    last_status: int | None
    last_error: str | None
    first_attempt_at: datetime
    last_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    redelivered_at: datetime | None


class WebhookStore(Protocol):
    """What the webhook service needs from a store transaction (``tx`` is the unit's StoreTx)."""

    def insert_subscription(self, tx: Any, sub: WebhookSubscription) -> None: ...
    def get_subscription(self, tx: Any, subscription_id: str) -> WebhookSubscription | None: ...
    def list_subscriptions(self, tx: Any) -> list[WebhookSubscription]: ...
    def count_subscriptions(self, tx: Any) -> int: ...
    def update_subscription(self, tx: Any, subscription_id: str, **changes: Any) -> bool: ...
    def delete_subscription(self, tx: Any, subscription_id: str) -> bool: ...
    def insert_dead_letter(self, tx: Any, letter: DeadLetter) -> None: ...
    def get_dead_letter(self, tx: Any, letter_id: str) -> DeadLetter | None: ...
    def list_dead_letters(
        self,
        tx: Any,
        *,
        subscription_id: str | None,
        status: str | None,
        before_id: str | None,
        limit: int,
    ) -> list[DeadLetter]: ...
    def update_dead_letter(self, tx: Any, letter_id: str, **changes: Any) -> bool: ...
    def pending_redeliveries(self, tx: Any, subscription_id: str) -> list[DeadLetter]: ...


_SUB_FIELDS = [f.name for f in fields(WebhookSubscription)]
_DL_FIELDS = [f.name for f in fields(DeadLetter)]
_SUB_SELECT = f"SELECT {', '.join(_SUB_FIELDS)} FROM webhook_subscriptions"
_DL_SELECT = f"SELECT {', '.join(_DL_FIELDS)} FROM webhook_dead_letters"
_TIME_FIELDS = {
    "previous_secret_until",
    "secret_rotated_at",
    "head_first_attempt_at",
    "next_attempt_at",
    "last_attempt_at",
    "last_success_at",
    "created_at",
    "updated_at",
    "first_attempt_at",
    "redelivered_at",
}


def _connection(tx: Any) -> sqlite3.Connection:
    return tx.connection


def _to_db(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return format_time(value)
    if name == "event_types":
        return json.dumps(list(value))
    if name == "enabled":
        return int(value)
    return value


def _from_db(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return parse_time(value)
    if name == "event_types":
        return tuple(json.loads(value))
    if name == "enabled":
        return bool(value)
    if name == "payload":
        return bytes(value)
    return value


def _subscription(row: tuple) -> WebhookSubscription:
    return WebhookSubscription(**{n: _from_db(n, v) for n, v in zip(_SUB_FIELDS, row, strict=True)})


def _dead_letter(row: tuple) -> DeadLetter:
    return DeadLetter(**{n: _from_db(n, v) for n, v in zip(_DL_FIELDS, row, strict=True)})


def _set_clause(changes: dict[str, Any], allowed: list[str]) -> tuple[str, list[Any]]:
    unknown = sorted(set(changes) - set(allowed) - {"id"})
    if unknown or "id" in changes:
        raise ValueError(f"cannot update column(s): {', '.join(unknown or ['id'])}")
    names = list(changes)
    return ", ".join(f"{n} = ?" for n in names), [_to_db(n, changes[n]) for n in names]


# --- subscriptions --------------------------------------------------------------------------------------
def insert_subscription(tx: Any, sub: WebhookSubscription) -> None:
    _connection(tx).execute(
        f"INSERT INTO webhook_subscriptions ({', '.join(_SUB_FIELDS)}) "
        f"VALUES ({', '.join('?' * len(_SUB_FIELDS))})",
        [_to_db(n, getattr(sub, n)) for n in _SUB_FIELDS],
    )


def get_subscription(tx: Any, subscription_id: str) -> WebhookSubscription | None:
    row = _connection(tx).execute(f"{_SUB_SELECT} WHERE id = ?", (subscription_id,)).fetchone()
    return _subscription(row) if row else None


def list_subscriptions(tx: Any) -> list[WebhookSubscription]:
    return [_subscription(r) for r in _connection(tx).execute(f"{_SUB_SELECT} ORDER BY id")]


def count_subscriptions(tx: Any) -> int:
    return _connection(tx).execute("SELECT count(*) FROM webhook_subscriptions").fetchone()[0]


def update_subscription(tx: Any, subscription_id: str, **changes: Any) -> bool:
    """Set WebhookSubscription fields by name; False when there is no such subscription."""
    clause, values = _set_clause(changes, _SUB_FIELDS)
    cur = _connection(tx).execute(
        f"UPDATE webhook_subscriptions SET {clause} WHERE id = ?", [*values, subscription_id]
    )
    return cur.rowcount == 1


def delete_subscription(tx: Any, subscription_id: str) -> bool:
    """Delete a subscription and (ON DELETE CASCADE) its dead letters."""
    cur = _connection(tx).execute("DELETE FROM webhook_subscriptions WHERE id = ?", (subscription_id,))
    return cur.rowcount == 1


# --- dead letters ---------------------------------------------------------------------------------------
def insert_dead_letter(tx: Any, letter: DeadLetter) -> None:
    _connection(tx).execute(
        f"INSERT INTO webhook_dead_letters ({', '.join(_DL_FIELDS)}) "
        f"VALUES ({', '.join('?' * len(_DL_FIELDS))})",
        [_to_db(n, getattr(letter, n)) for n in _DL_FIELDS],
    )


def get_dead_letter(tx: Any, letter_id: str) -> DeadLetter | None:
    row = _connection(tx).execute(f"{_DL_SELECT} WHERE id = ?", (letter_id,)).fetchone()
    return _dead_letter(row) if row else None


def list_dead_letters(
    tx: Any, *, subscription_id: str | None, status: str | None, before_id: str | None, limit: int
) -> list[DeadLetter]:
    """Newest first (ids sort by creation time), strictly older than ``before_id``."""
    where, args = [], []
    for column, value in (("subscription_id", subscription_id), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    sql = _DL_SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
    return [_dead_letter(r) for r in _connection(tx).execute(sql, [*args, limit])]


def update_dead_letter(tx: Any, letter_id: str, **changes: Any) -> bool:
    clause, values = _set_clause(changes, _DL_FIELDS)
    cur = _connection(tx).execute(
        f"UPDATE webhook_dead_letters SET {clause} WHERE id = ?", [*values, letter_id]
    )
    return cur.rowcount == 1


def pending_redeliveries(tx: Any, subscription_id: str) -> list[DeadLetter]:
    """Dead letters of a subscription waiting for a redelivery attempt, oldest first."""
    rows = _connection(tx).execute(
        f"{_DL_SELECT} WHERE subscription_id = ? AND status = 'pending' ORDER BY id", (subscription_id,)
    )
    return [_dead_letter(r) for r in rows]
