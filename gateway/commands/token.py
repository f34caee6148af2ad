"""`hcrm-gateway token create|list|revoke`: API tokens kept in the SQLite store, honoured without a restart.

``create`` prints the new token ONCE on stdout (nothing else there, so ``$(hcrm-gateway token create ...)``
captures exactly the token) and stores only its SHA-256 digest (``api.auth.hash_token``); the hint goes to
stderr. ``list`` never shows a digest. ``revoke`` keeps the row for the audit trail. Every issue and revoke
writes an ``audit`` row in the same transaction.

The daemon may be running: the CLI writes with its own sqlite3 connection; WAL lets it commit next to the
daemon's writer (https://www.sqlite.org/wal.html, "Concurrency") and the busy timeout waits out the daemon's
short group commits. The daemon notices the change through ``api_tokens_version`` within about a second
(``api.token_db.DbTokenStore``).

Exit status: 0 done, 1 the store or config cannot be used / the name is taken / no such token, 2 usage error
(unknown scope, bad name, bad --expires).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import datetime, timedelta
from pathlib import Path

# The CLI is part of the composition root: the scope list and the digest format belong to the API.
from api.auth import SCOPES, generate_token, hash_token
from gateway.config import ConfigError, load_config
from gateway.events import format_time, utc_now
from gateway.store import tokens_sql
from gateway.store.base import StoreError
from gateway.store.sqlite import _connect as connect_migrated

DEFAULT_CONFIG = "/etc/hcrm-gateway/gateway.yaml"
BUSY_TIMEOUT_MS = 10_000
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")  # the config's token name rule
MAX_EXPIRES_DAYS = 3650


class TokenCommandError(Exception):
    """The command cannot be carried out; ``status`` is the exit status, the message one line."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="issue, list and revoke API tokens kept in the store",
                       description="API tokens in the SQLite store; a running daemon honours changes "
                                   "within about a second.")
    actions = p.add_subparsers(dest="token_action", metavar="ACTION")
    actions.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                       help=f"the daemon's config, to find the store (default {DEFAULT_CONFIG})")

    create = actions.add_parser("create", help="issue a token; prints it once on stdout")
    create.add_argument("--name", required=True, help="who holds it, e.g. crm-prod (letters, digits, _.-)")
    create.add_argument("--scopes", required=True, metavar="SCOPES",
                        help=f"comma-separated; known: {','.join(sorted(SCOPES))}")
    create.add_argument("--expires", metavar="DAYS", help="valid for DAYS days (default: no expiry)")
    common(create)
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="tokens with scopes, creation, last use, expiry (no secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.add_argument("--json", action="store_true", help="one JSON array on stdout")
    common(listing)
    listing.set_defaults(func=run_list)

    revoke = actions.add_parser("revoke", help="revoke a token issued with `token create`")
    revoke.add_argument("name", metavar="NAME")
    common(revoke)
    revoke.set_defaults(func=run_revoke)


# --- sub-commands -------------------------------------------------------------------------------------------
def run_create(args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scopes)
        name = check_name(args.name)
        days = parse_days(args.expires)
        db_path, config_names = _store_of(args.config)
        token = issue_token(db_path, name=name, scopes=scopes, expires_days=days, actor=actor(),
                            config_names=config_names)
    except TokenCommandError as exc:
        return _fail("create", exc)
    print(token)
    expiry = f"expires in {days} day(s)" if days else "does not expire"
    print(f"token {name!r} created with scope(s) {', '.join(scopes)}; it {expiry}. This is the only time it "
          "is shown: store it now and send it as 'Authorization: Bearer <token>'. A running daemon accepts "
          "it within about a second.", file=sys.stderr)
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    try:
        db_path, _ = _store_of(args.config)
        rows = read_tokens(db_path, include_revoked=args.all)
    except TokenCommandError as exc:
        return _fail("list", exc)
    now = utc_now()
    if args.json:
        print(json.dumps([_json_row(row, now) for row in rows], ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no tokens issued with `token create` (tokens in the config file are listed there)",
              file=sys.stderr)
        return EXIT_OK
    table = [("NAME", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "STATUS")]
    for row in rows:
        table.append((row.name, ",".join(row.scopes), _day(row.created_at), _day(row.last_used_at) or "never",
                      _day(row.expires_at) or "never", _status(row, now)))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    try:
        db_path, config_names = _store_of(args.config)
        if not revoke_token(db_path, args.name, actor=actor()):
            hint = " (it is defined in the config file: remove it there)" if args.name in config_names else ""
            raise TokenCommandError(f"no active token named {args.name!r}{hint}")
    except TokenCommandError as exc:
        return _fail("revoke", exc)
    print(f"token {args.name!r} revoked; a running daemon refuses it within about a second.", file=sys.stderr)
    return EXIT_OK


# --- reusable steps (also used by tests) --------------------------------------------------------------------
def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in re.split(r"[,\s]+", text) if s.strip()})
    if not scopes:
        raise TokenCommandError("--scopes needs at least one scope", EXIT_USAGE)
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise TokenCommandError(
            f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}", EXIT_USAGE
        )
    return scopes


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TokenCommandError(
            f"--name {name!r}: 1-32 letters, digits, '_', '.', '-', starting with a letter or digit",
            EXIT_USAGE,
        )
    return name


def parse_days(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise TokenCommandError(f"--expires must be a whole number of days, 1 to {MAX_EXPIRES_DAYS}",
                                EXIT_USAGE)
    return days


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return f"cli:uid={os.getuid()}"


def issue_token(db_path: Path, *, name: str, scopes: list[str], expires_days: int | None, actor: str,
                config_names: frozenset[str] = frozenset(), now: datetime | None = None) -> str:
    """Store the digest of a new token and return the token (the only copy)."""
    if name in config_names:
        raise TokenCommandError(f"the config file already defines a token named {name!r}")
    now = now or utc_now()
    token = generate_token()
    expires_at = now + timedelta(days=expires_days) if expires_days else None
    with _transaction(db_path, create=True) as conn:
        try:
            tokens_sql.insert_token(conn, name=name, digest=hash_token(token), scopes=scopes, created_at=now,
                                    created_by=actor, expires_at=expires_at)
        except tokens_sql.TokenNameTaken as exc:
            raise TokenCommandError(str(exc)) from None
    return token


def revoke_token(db_path: Path, name: str, *, actor: str, now: datetime | None = None) -> bool:
    with _transaction(db_path, create=False) as conn:
        return tokens_sql.revoke_token(conn, name=name, at=now or utc_now(), actor=actor)


def read_tokens(db_path: Path, *, include_revoked: bool = False) -> list[tokens_sql.TokenRow]:
    with _transaction(db_path, create=False) as conn:
        return tokens_sql.list_tokens(conn, include_revoked=include_revoked)


# --- helpers ------------------------------------------------------------------------------------------------
def _store_of(config_path: str) -> tuple[Path, frozenset[str]]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise TokenCommandError("; ".join(str(p) for p in exc.problems)) from None
    return config.resolve(config.store.path), frozenset(t.name for t in config.api.tokens)


@contextmanager
def _transaction(db_path: Path, *, create: bool) -> Iterator[sqlite3.Connection]:
    """A migrated connection in one IMMEDIATE transaction (committed on success). ``create``: a store that
    does not exist yet is created, so tokens can be issued before the daemon's first start."""
    if not create and not db_path.is_file():
        raise TokenCommandError(
            f"no store at {db_path} (check store.path and gateway.data_dir in the config)"
        )
    if create and not db_path.parent.is_dir():
        raise TokenCommandError(f"directory {db_path.parent} does not exist (gateway.data_dir)")
    try:
        # stdout carries only the command's output (the token): the store's log lines (a schema migration)
        # go to stderr. Local on purpose: the process-wide logging set-up is the daemon's business.
        with redirect_stdout(sys.stderr):
            conn, _version, _epoch, _seq = connect_migrated(str(db_path), "normal")
    except StoreError as exc:
        raise TokenCommandError(str(exc)) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise TokenCommandError(f"store {db_path}: {exc}") from None
    finally:
        conn.close()


def _fail(action: str, exc: TokenCommandError) -> int:
    prefix = "usage error: " if exc.status == EXIT_USAGE else ""
    print(f"hcrm-gateway token {action}: {prefix}{exc}", file=sys.stderr)
    return exc.status


def _day(value: datetime | None) -> str:
    return format_time(value)[:16].replace("T", " ") + "Z" if value is not None else ""


def _status(row: tokens_sql.TokenRow, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if row.expired(now) else "active"


def _json_row(row: tokens_sql.TokenRow, now: datetime) -> dict[str, object]:
    return {
        "name": row.name,
        "scopes": list(row.scopes),
        "created_at": format_time(row.created_at),
        "created_by": row.created_by,
        "last_used_at": format_time(row.last_used_at),
        "expires_at": format_time(row.expires_at),
        "revoked_at": format_time(row.revoked_at),
        "status": _status(row, now),
    }
