"""SQL for verification codes and stored SMS templates (schema 0004), run inside a store unit of work.

Plain functions ``fn(tx, ...)`` over the transaction's connection, so they join the caller's transaction
(group commit, savepoints). ``VerifyTemplatesSql`` lists the same functions as a Protocol: a PostgreSQL store
implements them to serve ``gateway.verify`` and ``gateway.sms.template_store`` unchanged.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from gateway.events import format_time, parse_time
from gateway.store.base import StoreTx

HMAC_KEY_META = "verify_hmac_key"
TEMPLATES_SEEDED_META = "sms_templates_seeded"


def _conn(tx: StoreTx) -> sqlite3.Connection:
    return tx.connection  # type: ignore[attr-defined]  # SqliteTx.connection


# --- verifications --------------------------------------------------------------------------------------
@dataclass
class VerificationRow:
    id: str
    to: str
    purpose: str
    status: str
    code_hash: str
    max_attempts: int
    template_id: str
    created_at: datetime
    expires_at: datetime
    resend_after: datetime
    attempts: int = 0
    sends: int = 1
    message_id: str | None = None
    checked_at: datetime | None = None
    finished_at: datetime | None = None
    redacted: bool = False


_V_COLUMN = {"to": "to_number"}
_V_FIELDS = tuple(f.name for f in fields(VerificationRow))
_V_TIMES = frozenset({"created_at", "expires_at", "resend_after", "checked_at", "finished_at"})
_V_SELECT = "SELECT " + ", ".join(_V_COLUMN.get(f, f) for f in _V_FIELDS) + " FROM verifications"


def _v_to_db(name: str, value: Any) -> Any:
    if name in _V_TIMES:
        return format_time(value)
    if name == "redacted":
        return int(bool(value))
    return value


def _v_from_row(row: tuple) -> VerificationRow:
    values = {}
    for name, value in zip(_V_FIELDS, row, strict=True):
        if name in _V_TIMES:
            value = parse_time(value)
        elif name == "redacted":
            value = bool(value)
        values[name] = value
    return VerificationRow(**values)


def hmac_key(tx: StoreTx, new_key_hex: str) -> str:
    """The gateway's verification HMAC key (hex); stores ``new_key_hex`` on first use."""
    c = _conn(tx)
    c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (HMAC_KEY_META, new_key_hex))
    return c.execute("SELECT value FROM meta WHERE key = ?", (HMAC_KEY_META,)).fetchone()[0]


def insert_verification(tx: StoreTx, row: VerificationRow) -> None:
    cols = [_V_COLUMN.get(f, f) for f in _V_FIELDS]
    _conn(tx).execute(
        f"INSERT INTO verifications ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [_v_to_db(f, getattr(row, f)) for f in _V_FIELDS],
    )


def get_verification(tx: StoreTx, verification_id: str) -> VerificationRow | None:
    row = _conn(tx).execute(f"{_V_SELECT} WHERE id = ?", (verification_id,)).fetchone()
    return _v_from_row(row) if row else None


def update_verification(tx: StoreTx, verification_id: str, **changes: Any) -> None:
    unknown = set(changes) - set(_V_FIELDS)
    if unknown:
        raise ValueError(f"unknown verification field(s): {', '.join(sorted(unknown))}")
    if not changes:
        return
    sets = ", ".join(f"{_V_COLUMN.get(name, name)} = ?" for name in changes)
    _conn(tx).execute(
        f"UPDATE verifications SET {sets} WHERE id = ?",
        [*(_v_to_db(n, v) for n, v in changes.items()), verification_id],
    )


def pending_verifications(tx: StoreTx, to: str, purpose: str) -> list[str]:
    rows = _conn(tx).execute(
        "SELECT id FROM verifications WHERE to_number = ? AND purpose = ? AND status = 'pending'",
        (to, purpose),
    )
    return [r[0] for r in rows]


def expire_due(tx: StoreTx, now: datetime) -> list[VerificationRow]:
    """Mark pending verifications whose code expired by ``now``; return them (as they were)."""
    c = _conn(tx)
    rows = [
        _v_from_row(r)
        for r in c.execute(f"{_V_SELECT} WHERE status = 'pending' AND expires_at <= ?", (format_time(now),))
    ]
    c.executemany(
        "UPDATE verifications SET status = 'expired', finished_at = ? WHERE id = ?",
        [(format_time(now), r.id) for r in rows],
    )
    return rows


def unredacted_finished(tx: StoreTx, limit: int = 500) -> list[VerificationRow]:
    """Finished verifications whose SMS text was not blanked yet, oldest first."""
    rows = _conn(tx).execute(
        f"{_V_SELECT} WHERE redacted = 0 AND status != 'pending' ORDER BY finished_at LIMIT ?", (limit,)
    )
    return [_v_from_row(r) for r in rows]


def delete_verifications_before(tx: StoreTx, cutoff: datetime) -> int:
    """Forget finished verifications older than ``cutoff`` (their texts were redacted first)."""
    return (
        _conn(tx)
        .execute(
            "DELETE FROM verifications WHERE status != 'pending' AND redacted = 1 AND created_at < ?",
            (format_time(cutoff),),
        )
        .rowcount
    )


# --- sends (rate limits) --------------------------------------------------------------------------------
def record_send(tx: StoreTx, verification_id: str, to: str, prefix: str, sent_at: datetime) -> None:
    _conn(tx).execute(
        "INSERT INTO verification_sends (verification_id, to_number, to_prefix, sent_at) VALUES (?, ?, ?, ?)",
        (verification_id, to, prefix, format_time(sent_at)),
    )


def send_times(
    tx: StoreTx, *, since: datetime, to: str | None = None, prefix: str | None = None
) -> list[datetime]:
    """Times of codes sent since ``since``, oldest first: to one number, one prefix, or to anyone."""
    sql = "SELECT sent_at FROM verification_sends WHERE sent_at > ?"
    args: list[Any] = [format_time(since)]
    if to is not None:
        sql += " AND to_number = ?"
        args.append(to)
    if prefix is not None:
        sql += " AND to_prefix = ?"
        args.append(prefix)
    return [parse_time(r[0]) for r in _conn(tx).execute(sql + " ORDER BY sent_at", args)]  # type: ignore[misc]


def delete_sends_before(tx: StoreTx, cutoff: datetime) -> int:
    return (
        _conn(tx).execute("DELETE FROM verification_sends WHERE sent_at < ?", (format_time(cutoff),)).rowcount
    )


# --- templates ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateRow:
    id: str
    category: str
    language: str
    name: str
    body: str
    revision: int
    source: str  # "seed" | "api"
    created_at: datetime
    updated_at: datetime


_T_FIELDS = tuple(f.name for f in fields(TemplateRow))
_T_SELECT = "SELECT " + ", ".join(_T_FIELDS) + " FROM sms_templates"


def _t_from_row(row: tuple) -> TemplateRow:
    values = dict(zip(_T_FIELDS, row, strict=True))
    values["created_at"] = parse_time(values["created_at"])
    values["updated_at"] = parse_time(values["updated_at"])
    return TemplateRow(**values)


def templates_seeded(tx: StoreTx) -> bool:
    return (
        _conn(tx).execute("SELECT 1 FROM meta WHERE key = ?", (TEMPLATES_SEEDED_META,)).fetchone() is not None
    )


def mark_templates_seeded(tx: StoreTx, when: datetime) -> None:
    _conn(tx).execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (TEMPLATES_SEEDED_META, format_time(when))
    )


def insert_template(tx: StoreTx, row: TemplateRow) -> bool:
    """Insert; False when a template with that id exists (nothing changed)."""
    cursor = _conn(tx).execute(
        f"INSERT OR IGNORE INTO sms_templates ({', '.join(_T_FIELDS)}) "
        f"VALUES ({', '.join('?' * len(_T_FIELDS))})",
        [
            format_time(getattr(row, f)) if f in ("created_at", "updated_at") else getattr(row, f)
            for f in _T_FIELDS
        ],
    )
    return cursor.rowcount == 1


def get_template(tx: StoreTx, template_id: str) -> TemplateRow | None:
    row = _conn(tx).execute(f"{_T_SELECT} WHERE id = ?", (template_id,)).fetchone()
    return _t_from_row(row) if row else None


def list_templates(
    tx: StoreTx, *, category: str | None = None, language: str | None = None
) -> list[TemplateRow]:
    sql, args = _T_SELECT + " WHERE 1 = 1", []
    if category is not None:
        sql += " AND category = ?"
        args.append(category)
    if language is not None:
        sql += " AND language = ?"
        args.append(language)
    return [_t_from_row(r) for r in _conn(tx).execute(sql + " ORDER BY id", args)]


def replace_template(
    tx: StoreTx, template_id: str, *, category: str, language: str, name: str, body: str, updated_at: datetime
) -> bool:
    """Replace the editable fields and bump the revision; False when there is no such template."""
    cursor = _conn(tx).execute(
        "UPDATE sms_templates SET category = ?, language = ?, name = ?, body = ?, revision = revision + 1, "
        "updated_at = ? WHERE id = ?",
        (category, language, name, body, format_time(updated_at), template_id),
    )
    return cursor.rowcount == 1


def delete_template(tx: StoreTx, template_id: str) -> bool:
    return _conn(tx).execute("DELETE FROM sms_templates WHERE id = ?", (template_id,)).rowcount == 1


class VerifyTemplatesSql(Protocol):
    """What a store offers ``gateway.verify`` and ``gateway.sms.template_store`` (this module for SQLite)."""

    def hmac_key(self, tx: StoreTx, new_key_hex: str) -> str: ...
    def insert_verification(self, tx: StoreTx, row: VerificationRow) -> None: ...
    def get_verification(self, tx: StoreTx, verification_id: str) -> VerificationRow | None: ...
    def update_verification(self, tx: StoreTx, verification_id: str, **changes: Any) -> None: ...
    def pending_verifications(self, tx: StoreTx, to: str, purpose: str) -> list[str]: ...
    def expire_due(self, tx: StoreTx, now: datetime) -> list[VerificationRow]: ...
    def unredacted_finished(self, tx: StoreTx, limit: int = 500) -> list[VerificationRow]: ...
    def delete_verifications_before(self, tx: StoreTx, cutoff: datetime) -> int: ...
    def record_send(
        self, tx: StoreTx, verification_id: str, to: str, prefix: str, sent_at: datetime
    ) -> None: ...
    def send_times(
        self, tx: StoreTx, *, since: datetime, to: str | None = None, prefix: str | None = None
    ) -> list[datetime]: ...
    def delete_sends_before(self, tx: StoreTx, cutoff: datetime) -> int: ...
    def templates_seeded(self, tx: StoreTx) -> bool: ...
    def mark_templates_seeded(self, tx: StoreTx, when: datetime) -> None: ...
    def insert_template(self, tx: StoreTx, row: TemplateRow) -> bool: ...
    def get_template(self, tx: StoreTx, template_id: str) -> TemplateRow | None: ...
    def list_templates(
        self, tx: StoreTx, *, category: str | None = None, language: str | None = None
    ) -> list[TemplateRow]: ...
    def replace_template(
        self,
        tx: StoreTx,
        template_id: str,
        *,
        category: str,
        language: str,
        name: str,
        body: str,
        updated_at: datetime,
    ) -> bool: ...
    def delete_template(self, tx: StoreTx, template_id: str) -> bool: ...
