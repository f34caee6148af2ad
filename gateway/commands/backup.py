"""`hcrm-gateway backup PATH [--config FILE]`: a consistent copy of the SQLite store while the daemon runs.

How: SQLite's online backup API (https://www.sqlite.org/backup.html, c3ref/backup_finish.html) copies every
page in ONE step (``pages=-1``), i.e. inside one read transaction on the source. In WAL mode a reader does not
block the daemon's writer (https://www.sqlite.org/wal.html, "Concurrency"), so the daemon keeps committing,
and the copy is the database exactly as of one commit: never half a transaction. A stepped backup
(``pages=N``) would restart from scratch every time another connection writes between steps, and could
never finish on a busy gateway.

Safety: the store is opened read-only (``mode=ro``), so a mistyped config cannot create or change a
database; the copy is written to a private temporary file (mode 0600: it holds patients' numbers) next to
PATH, checked with ``PRAGMA integrity_check``, fsynced, and only then renamed to PATH. Exit 0 with a summary,
or 1 with one line saying what went wrong.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.config import ConfigError, load_config

DEFAULT_CONFIG = "/etc/hcrm-gateway/gateway.yaml"
BUSY_TIMEOUT_MS = 10_000  # the daemon's group commit holds the write lock for milliseconds, not seconds
INTEGRITY_MAX_ERRORS = 20  # PRAGMA integrity_check(N): stop after N problems (https://www.sqlite.org/pragma.html)


class BackupError(Exception):
    """The backup cannot be made; the message says why in one line."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    pages: int
    schema_version: int | None
    seconds: float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="consistent copy of the SQLite store (safe while the daemon runs)")
    p.add_argument("path", metavar="PATH",
                   help="file to write, or an existing directory (gets gateway-<UTC time>.sqlite3)")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"the daemon's config, to find the store (default {DEFAULT_CONFIG})")
    p.add_argument("--force", action="store_true", help="replace PATH if it already exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    source = config.resolve(config.store.path)
    try:
        result = backup_store(source, Path(args.path), overwrite=args.force)
    except BackupError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    schema = f"schema version {result.schema_version}" if result.schema_version is not None else "no schema"
    print(f"backup: {source} -> {result.path} ({result.pages} pages, {result.bytes / 1e6:.1f} MB, {schema}) "
          f"in {result.seconds:.2f} s; integrity_check ok")
    return 0


def backup_store(source: Path, destination: Path, *, overwrite: bool = False) -> BackupResult:
    """Copy the live database ``source`` to ``destination`` (a file, or a directory to name one in)."""
    started = time.monotonic()
    if destination.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        destination = destination / f"gateway-{stamp}.sqlite3"
    if destination.exists() and not overwrite:
        raise BackupError(f"{destination} already exists (use --force to replace it)")
    if not source.is_file():
        raise BackupError(f"no store at {source} (check store.path and gateway.data_dir in the config)")
    if destination.resolve() == source.resolve():
        raise BackupError(f"{destination} is the live store itself")
    if not destination.parent.is_dir():
        raise BackupError(f"directory {destination.parent} does not exist")

    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        # Created here, empty and private, so that sqlite3 opens it instead of creating it world-readable.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as exc:
        raise BackupError(f"cannot create {partial}: {exc.strerror or exc}") from None
    try:
        pages, schema_version = _copy(source, partial)
        problems = integrity_problems(partial)
        if problems:
            raise BackupError(f"the copy failed PRAGMA integrity_check: {'; '.join(problems[:3])}")
        _fsync(partial)
        os.replace(partial, destination)
        _fsync(destination.parent)
    except OSError as exc:
        raise BackupError(f"cannot write {destination}: {exc.strerror or exc}") from None
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"), Path(f"{partial}-journal")):
            leftover.unlink(missing_ok=True)
    return BackupResult(path=destination, bytes=destination.stat().st_size, pages=pages,
                        schema_version=schema_version, seconds=time.monotonic() - started)


def _copy(source: Path, target: Path) -> tuple[int, int | None]:
    """Backup API, one step; returns (pages copied, schema version of the copy)."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source}: {exc}") from None
    try:
        src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
            # The copied header says WAL, like the store; a rollback-journal copy is one self-contained file
            # that opens read-only without -wal/-shm files. The daemon switches a restored copy back to WAL.
            dst.execute("PRAGMA journal_mode = DELETE")
            pages = dst.execute("PRAGMA page_count").fetchone()[0]
            schema_version = _schema_version(dst)
        finally:
            dst.close()
    except sqlite3.DatabaseError as exc:
        # "file is not a database", "database is locked" after the busy timeout, "unable to open" when the
        # -shm file cannot be created (read-only directory and the daemon is not running) ...
        raise BackupError(f"cannot copy {source}: {exc}") from None
    finally:
        src.close()
    return pages, schema_version


def _schema_version(conn: sqlite3.Connection) -> int | None:
    try:
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    except sqlite3.OperationalError:  # no such table: not (yet) a gateway store
        return None


def integrity_problems(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of the file at ``path``: [] when it reports ok, else its messages."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return [f"cannot open: {exc}"]
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({INTEGRITY_MAX_ERRORS})")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        conn.close()
    return [] if rows == ["ok"] else rows


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
