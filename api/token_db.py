"""Bearer tokens from the config file plus tokens issued at run time (``hcrm-gateway token create``).

``DbTokenStore`` answers ``authenticate(token)`` like ``api.auth.TokenStore`` (same constant-time comparison,
no early exit) from an in-memory snapshot, so a request never waits for the database. Its ``run()`` task
keeps the snapshot fresh: the ``token`` CLI writes from another process, and SQLite has no cross-process
change notification (``sqlite3_update_hook`` only reports changes made through the same connection,
https://www.sqlite.org/c3ref/update_hook.html), so the task reads one ``meta`` row (``api_tokens_version``,
bumped by every create and revoke) once per ``refresh_interval`` and reloads the list only when it moved.
A token created or revoked while the daemon runs is therefore honoured within about one second.

Expiry is checked when the token is presented, not at reload. Last use is remembered in memory and written
at most once per ``last_used_interval`` (and at shutdown): one write per request would cost a commit each.
A database token whose name or hash is also configured in the file is ignored (the file wins) with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field

from api.auth import SCOPES, Principal, TokenStore
from gateway.events import utc_now
from gateway.store import tokens_sql
from gateway.store.base import StoreError, StoreTx

log = structlog.get_logger("api.tokens")

SHUTDOWN_FLUSH_SECONDS = 2.0


class DbTokenSettings(BaseModel):
    """``api.db_tokens`` in the config (all optional)."""

    model_config = ConfigDict(extra="forbid")

    refresh_interval: float = Field(1.0, ge=0.1, le=60, description="seconds between token-version checks")
    last_used_interval: float = Field(60.0, ge=1, le=3600, description="seconds between last-use writes")


@dataclass(frozen=True)
class _DbEntry:
    principal: Principal
    digest: bytes
    expires_at: datetime | None


@dataclass(frozen=True)
class _Snapshot:
    version: int | None
    entries: tuple[_DbEntry, ...]


class DbTokenStore:
    """Config tokens (``api.auth.TokenStore``) plus the active tokens of the ``api_tokens`` table."""

    def __init__(
        self,
        config_tokens: TokenStore,
        store: Any,
        *,
        settings: DbTokenSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
        config_names: Iterable[str] = (),
        config_hashes: Iterable[str] = (),
    ) -> None:
        """``store`` is a ``gateway.store.sqlite.SqliteStore`` (``read``/``write`` units of work)."""
        self._config = config_tokens
        self._store = store
        self._settings = settings or DbTokenSettings()
        self._clock = clock
        self._config_names = frozenset(config_names)
        self._config_hashes = frozenset(config_hashes)
        self._snapshot = _Snapshot(None, ())
        self._used: dict[str, datetime] = {}

    @classmethod
    def from_config(
        cls, items: Iterable[Mapping[str, Any] | Any], store: Any, **kwargs: Any
    ) -> DbTokenStore:
        """Like ``TokenStore.from_config``: ``items`` are the config's ``api.tokens`` entries."""
        items = list(items)
        names = [i.get("name") if isinstance(i, Mapping) else i.name for i in items]
        hashes = [i.get("hash") if isinstance(i, Mapping) else i.hash for i in items]
        return cls(TokenStore.from_config(items), store, config_names=names, config_hashes=hashes, **kwargs)

    # --- request time -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._config) + len(self._snapshot.entries)

    @property
    def version(self) -> int | None:
        """The ``api_tokens_version`` of the loaded snapshot (None before the first load)."""
        return self._snapshot.version

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a configured or issued, unexpired token; constant time in the digests."""
        found = self._config.authenticate(token)
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        match: _DbEntry | None = None
        for entry in self._snapshot.entries:  # no early exit: every digest is compared
            if hmac.compare_digest(presented, entry.digest):
                match = entry
        if found is not None or match is None:
            return found
        now = self._clock()
        if match.expires_at is not None and now >= match.expires_at:
            return None
        self._used[match.principal.name] = now
        return match.principal

    # --- the refresh task -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the issued tokens, signal started, then keep them fresh until cancelled."""
        await self.refresh()
        task_status.started()
        settings = self._settings
        next_flush = trio.current_time() + settings.last_used_interval
        try:
            while True:
                # A timer, not a wait for our own state: another process's commit cannot wake us (see above).
                await trio.sleep(settings.refresh_interval)
                await self.refresh()
                if trio.current_time() >= next_flush:
                    await self.flush_last_used()
                    next_flush = trio.current_time() + settings.last_used_interval
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_FLUSH_SECONDS):
                await self.flush_last_used()

    async def refresh(self) -> bool:
        """Reload the issued tokens if their version moved; True when the snapshot changed. A database error
        keeps the previous snapshot (logged): requests go on being answered."""
        known = self._snapshot.version

        def query(tx: StoreTx) -> tuple[int, list[tokens_sql.TokenRow]] | None:
            conn = tx.connection  # type: ignore[attr-defined]  # SqliteTx.connection
            if tokens_sql.tokens_version(conn) == known:
                return None
            return tokens_sql.active_tokens(conn)

        try:
            loaded = await self._store.read(query)
        except StoreError as exc:
            log.warning("token refresh failed; keeping the loaded tokens", error=str(exc))
            return False
        if loaded is None:
            return False
        version, rows = loaded
        self._snapshot = _Snapshot(version, tuple(self._entries(rows)))
        log.info("issued API tokens loaded", version=version, tokens=len(self._snapshot.entries))
        return True

    def _entries(self, rows: list[tokens_sql.TokenRow]) -> Iterable[_DbEntry]:
        for row in rows:
            if row.name in self._config_names or row.hash in self._config_hashes:
                log.warning("issued token ignored: the config file defines a token with its name or hash",
                            token=row.name)
                continue
            scopes = frozenset(row.scopes) & SCOPES
            if set(row.scopes) - SCOPES:
                log.warning("issued token has scopes this version does not know; they are ignored",
                            token=row.name, unknown=sorted(set(row.scopes) - SCOPES))
            if not scopes:
                continue
            digest = row.hash.removeprefix("sha256:")
            yield _DbEntry(Principal(row.name, scopes), bytes.fromhex(digest), row.expires_at)

    async def flush_last_used(self) -> None:
        """Write the remembered last-use times of issued tokens (one unit of work)."""
        used, self._used = self._used, {}
        if not used:
            return
        try:
            await self._store.write(lambda tx: tokens_sql.record_last_used(tx.connection, used))
        except StoreError as exc:
            log.warning("token last-use times not written", error=str(exc), tokens=len(used))
