"""SQL for API tokens issued at run time and the general audit trail (schema 0010).

Plain functions over a ``sqlite3.Connection``: the daemon passes its unit of work's connection
(``tx.connection``, so they join the group commit), the ``token`` CLI its own connection inside its own
transaction. Only ``sha256:<hex>`` digests are stored (``api.auth.hash_token``), never a token.

``api_tokens_version`` in ``meta`` is bumped by every create and revoke in the same transaction, so a
reader that sees the same version knows the active token list did not change.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.events import format_time, parse_time

VERSION_META = "api_tokens_version"
AUDIT_TOKEN_CREATED = "token.created"
AUDIT_TOKEN_REVOKED = "token.revoked"


class TokenNameTaken(ValueError):
    """An active token already has this name."""


@dataclass(frozen=True)
class TokenRow:
    name: str
    hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


_COLUMNS = "name, hash, scopes, created_at, created_by, expires_at, last_used_at, revoked_at, revoked_by"


def _row(values: tuple) -> TokenRow:
    name, digest, scopes, created_at, created_by, expires_at, last_used_at, revoked_at, revoked_by = values
    return TokenRow(
        name=name,
        hash=digest,
        scopes=tuple(json.loads(scopes)),
        created_at=parse_time(created_at),  # type: ignore[arg-type]
        created_by=created_by,
        expires_at=parse_time(expires_at),
        last_used_at=parse_time(last_used_at),
        revoked_at=parse_time(revoked_at),
        revoked_by=revoked_by,
    )


def tokens_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (VERSION_META,)).fetchone()
    return int(row[0]) if row else 0


def _bump_version(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = ?", (VERSION_META,)
    )


def add_audit(
    conn: sqlite3.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str | None,
    detail: Any = None,
) -> None:
    detail_json = None if detail is None else json.dumps(detail, sort_keys=True)
    conn.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
        (format_time(at), actor, action, subject, detail_json),
    )


def insert_token(
    conn: sqlite3.Connection,
    *,
    name: str,
    digest: str,
    scopes: Iterable[str],
    created_at: datetime,
    created_by: str,
    expires_at: datetime | None,
) -> None:
    """Store a new token's digest, bump the version and audit it. Raises TokenNameTaken."""
    scope_list = sorted(set(scopes))
    try:
        conn.execute(
            "INSERT INTO api_tokens (name, hash, scopes, created_at, created_by, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, digest, json.dumps(scope_list), format_time(created_at), created_by,
             format_time(expires_at)),
        )
    except sqlite3.IntegrityError as exc:
        if "api_tokens.name" in str(exc) or "api_tokens_active_name" in str(exc):
            raise TokenNameTaken(f"a token named {name!r} already exists (revoke it first)") from None
        raise
    _bump_version(conn)
    add_audit(conn, at=created_at, actor=created_by, action=AUDIT_TOKEN_CREATED, subject=name,
              detail={"scopes": scope_list, "expires_at": format_time(expires_at)})


def revoke_token(conn: sqlite3.Connection, *, name: str, at: datetime, actor: str) -> bool:
    """Revoke the active token ``name`` (the row stays for the audit trail); False when there is none."""
    changed = conn.execute(
        "UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL",
        (format_time(at), actor, name),
    ).rowcount
    if not changed:
        return False
    _bump_version(conn)
    add_audit(conn, at=at, actor=actor, action=AUDIT_TOKEN_REVOKED, subject=name)
    return True


def list_tokens(conn: sqlite3.Connection, *, include_revoked: bool = False) -> list[TokenRow]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_tokens{where} ORDER BY name, id").fetchall()
    return [_row(r) for r in rows]


def active_tokens(conn: sqlite3.Connection) -> tuple[int, list[TokenRow]]:
    """The version and the tokens not revoked (expiry is checked when a token is presented), read together."""
    return tokens_version(conn), list_tokens(conn)


def record_last_used(conn: sqlite3.Connection, used: Mapping[str, datetime]) -> None:
    """Set ``last_used_at`` of active tokens by name; not an authentication change, so no version bump."""
    conn.executemany(
        "UPDATE api_tokens SET last_used_at = ? WHERE name = ? AND revoked_at IS NULL "
        "AND (last_used_at IS NULL OR last_used_at < ?)",
        [(format_time(at), name, format_time(at)) for name, at in used.items()],
    )
