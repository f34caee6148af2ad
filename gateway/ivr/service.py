"""IVR service: tree revisions in the database, publication, file reload, and one session per call (issue 6).

Revisions: ``PUT draft`` keeps the YAML text exactly as sent (comments and layout included: what comes back
from ``GET`` is byte for byte what the editor saved); ``publish`` validates the draft with
``gateway.ivr.loader.validate_text`` (prompt files included) and refuses it with every problem (line, column)
when it has errors; ``rollback`` makes an earlier published revision current again after validating it
against today's prompt files. Publication, rollback and file reloads are audited (``ivr_audit``) and publish
``ivr.published`` in the same transaction.

Sessions: ``new_session(call)`` binds the call to the *parsed tree of the current revision*; the session keeps
that object, so a publish during the call changes nothing for it, and new calls take the new tree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field

from gateway.events import format_time
from gateway.ivr.loader import Problem, ValidationResult, validate_text
from gateway.ivr.model import IvrTree
from gateway.ivr.runtime import IvrSession, SessionServices, SurveyAnswer, survey_answer_event
from gateway.store import ivr_sql as sql

log = structlog.get_logger("ivr.service")


class IvrSettings(BaseModel):
    """Config section ``ivr:``."""

    model_config = ConfigDict(extra="forbid")

    prompts_dir: Path = Field(Path("ivr_prompts"), description="prompt files and say fragments")
    recordings_dir: Path = Field(Path("/var/lib/hcrm-gateway/voicemail"), description="voicemail files")
    tree_file: Path | None = Field(
        None, description="file-based deployment: loaded at start and on SIGHUP (same validation as publish)"
    )
    line_entries: dict[str, str] = Field(
        {}, description="line name -> entry node for its incoming calls (default: the tree's entry)"
    )
    positions: list[str] = Field([], description="operator positions (headset ports), all away at start")


class IvrUnavailable(Exception):
    """No revision is published yet (or the entry node is not in it); the message says which."""


class IvrInvalid(Exception):
    """The tree cannot be published; ``problems`` lists every reason with line and column."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


class RevisionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Published:
    revision: int
    tree: IvrTree
    yaml: str


class IvrService:
    def __init__(
        self,
        store: Any,
        *,
        publish: Callable[[str, dict], Awaitable[Any]],
        settings: IvrSettings,
        http: httpx.AsyncClient | None = None,
        queues: Any = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        """``store``: the gateway's SqliteStore; ``publish``: EventBus.publish (session events);
        ``queues``: the QueueManager; ``http``: a client for webhook nodes (the daemon owns and closes it)."""
        self.store = store
        self.settings = settings
        self.clock = clock
        self._lock = trio.Lock()
        self.current: Published | None = None
        self.session_services = SessionServices(
            prompts_dir=settings.prompts_dir,
            publish=publish,
            recordings_dir=settings.recordings_dir,
            http=http,
            answers=self,
            queues=queues,
        )

    def _now(self) -> str:
        return format_time(self.clock()) or ""

    async def _validate(self, text: str, filename: str = "<draft>") -> ValidationResult:
        """Reads prompt files (soundfile): in a worker thread."""
        prompts = self.settings.prompts_dir
        return await trio.to_thread.run_sync(
            lambda: validate_text(text, filename=filename, prompts_dir=prompts)
        )

    # -------------------------------------------------------------------------------------- start
    async def start(self) -> None:
        """Load the current revision from the database; with ``tree_file`` set, (re)load the file too."""
        row = await self.store.read(lambda tx: _current_row(tx))
        if row is not None:
            result = await self._validate(row.yaml, f"revision {row.revision}")
            if result.tree is None or result.errors:
                log.error(
                    "published revision no longer validates; keeping it offline",
                    revision=row.revision,
                    problems=[str(p) for p in result.errors][:10],
                )
            else:
                self.current = Published(row.revision, result.tree, row.yaml)
                log.info("ivr revision loaded", revision=row.revision)
        if self.settings.tree_file is not None:
            await self.reload_from_file(self.settings.tree_file)

    # ----------------------------------------------------------------------------------- sessions
    def new_session(self, call: Any, entry: str | None = None) -> IvrSession:
        """A session on the current revision; ``entry``: a node to start at (outbound survey calls)."""
        current = self.current
        if current is None:
            raise IvrUnavailable(
                "no IVR tree is published yet (PUT /v1/ivr/draft, then POST /v1/ivr/publish)"
            )
        entry = (
            entry
            or call.vars.get("ivr_entry")  # outbound calls: VoiceService.dial(..., ivr_entry=...)
            or self.settings.line_entries.get(call.line)
            or current.tree.entry
        )
        if entry not in current.tree.nodes:
            raise IvrUnavailable(f"entry node {entry!r} is not in revision {current.revision}")
        return IvrSession(
            current.tree,
            current.revision,
            call,
            clock=self.clock,
            services=self.session_services,
            entry=entry,
        )

    async def start_session(self, call: Any, entry: str | None = None) -> str:
        """Run the IVR on an answered call until it leaves it; returns the outcome (hangup, caller_hangup,
        bridged, error). The voice service's on_answer hook awaits this in the call's own task."""
        return await self.new_session(call, entry).run()

    async def save_answer(self, answer: SurveyAnswer) -> None:
        """AnswerSink: the answer row and its ``survey.answered`` event in one transaction."""

        def unit(tx: Any) -> None:
            sql.insert_answer(tx, answer)
            tx.append_event("survey.answered", survey_answer_event(answer))

        await self.store.write(unit)

    async def answers_for_call(self, call_id: str) -> list[dict[str, Any]]:
        return await self.store.read(lambda tx: sql.answers_for_call(tx, call_id))

    # ---------------------------------------------------------------------------------- revisions
    async def get_current(self) -> sql.RevisionRow | None:
        return await self.store.read(_current_row)

    async def get_draft(self) -> sql.RevisionRow | None:
        return await self.store.read(sql.get_draft)

    async def list_revisions(self) -> tuple[list[sql.RevisionRow], int | None]:
        return await self.store.read(lambda tx: (sql.list_revisions(tx), sql.current_revision(tx)))

    async def audit_trail(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.read(lambda tx: sql.audit_rows(tx, limit))

    async def put_draft(self, text: str, author: str) -> tuple[sql.RevisionRow, list[Problem]]:
        """Save the draft as sent (even with problems: a draft is work in progress); returns its problems."""
        problems = (await self._validate(text)).problems
        now = self._now()

        def unit(tx: Any) -> sql.RevisionRow:
            revision = sql.save_draft(tx, text, author, now)
            sql.audit(
                tx,
                now,
                author,
                "draft_saved",
                revision,
                {"errors": sum(p.severity == "error" for p in problems)},
            )
            row = sql.get_revision(tx, revision)
            assert row is not None
            return row

        async with self._lock:
            row = await self.store.write(unit)
        return row, problems

    async def validate_draft(self) -> tuple[sql.RevisionRow, list[Problem]]:
        draft = await self.get_draft()
        if draft is None:
            raise RevisionNotFound("there is no draft; PUT /v1/ivr/draft first")
        return draft, (await self._validate(draft.yaml)).problems

    async def publish(self, actor: str) -> Published:
        async with self._lock:
            draft = await self.get_draft()
            if draft is None:
                raise RevisionNotFound("there is no draft to publish; PUT /v1/ivr/draft first")
            result = await self._validate(draft.yaml)
            if result.errors or result.tree is None:
                raise IvrInvalid(
                    f"the draft (revision {draft.revision}) has errors; nothing was published", result.errors
                )
            now = self._now()
            previous = self.current.revision if self.current else None

            def unit(tx: Any) -> None:
                sql.mark_published(tx, draft.revision, actor, now)
                sql.set_current(tx, draft.revision)
                sql.audit(tx, now, actor, "published", draft.revision, {"previous": previous})
                tx.append_event(
                    "ivr.published",
                    {"revision": draft.revision, "by": actor, "previous": previous, "action": "publish"},
                )

            await self.store.write(unit)
            self.current = Published(draft.revision, result.tree, draft.yaml)
        log.info("ivr revision published", revision=draft.revision, by=actor, previous=previous)
        return self.current

    async def rollback(self, revision: int, actor: str) -> Published:
        async with self._lock:
            row = await self.store.read(lambda tx: sql.get_revision(tx, revision))
            if row is None or not row.published:
                raise RevisionNotFound(
                    f"revision {revision} was never published; only those can be rolled back to"
                )
            result = await self._validate(row.yaml, f"revision {revision}")
            if result.errors or result.tree is None:
                raise IvrInvalid(
                    f"revision {revision} no longer validates (prompt files changed?)", result.errors
                )
            now = self._now()
            previous = self.current.revision if self.current else None

            def unit(tx: Any) -> None:
                sql.set_current(tx, revision)
                sql.audit(tx, now, actor, "rolled_back", revision, {"previous": previous})
                tx.append_event(
                    "ivr.published",
                    {"revision": revision, "by": actor, "previous": previous, "action": "rollback"},
                )

            await self.store.write(unit)
            self.current = Published(revision, result.tree, row.yaml)
        log.info("ivr rolled back", revision=revision, by=actor, previous=previous)
        return self.current

    async def reload_from_file(self, path: str | Path) -> bool:
        """SIGHUP in a file-based deployment: publish the file when it validates; otherwise change nothing,
        log every problem and audit the refusal. Returns True when the current revision is the file's."""
        path = Path(path)
        text = ""
        try:  # read once: what is validated is what gets published
            text = await trio.Path(path).read_text(encoding="utf-8")
            result = await self._validate(text, str(path))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            result = ValidationResult(None, [Problem(str(path), 1, 1, f"cannot read: {reason}")])
        actor = f"file:{path}"
        now = self._now()
        if result.errors or result.tree is None:
            problems = [str(p) for p in result.errors]
            log.error(
                "ivr file rejected; the current tree stays",
                path=str(path),
                problems=problems[:20],
                current=self.current.revision if self.current else None,
            )
            await self.store.write(
                lambda tx: sql.audit(tx, now, actor, "file_rejected", None, {"problems": problems[:50]})
            )
            return False
        async with self._lock:
            if self.current is not None and self.current.yaml == text:
                log.info("ivr file unchanged", path=str(path), revision=self.current.revision)
                return True
            previous = self.current.revision if self.current else None

            def unit(tx: Any) -> int:
                revision = sql.insert_published(tx, text, actor, "file", now)
                sql.set_current(tx, revision)
                sql.audit(tx, now, actor, "file_loaded", revision, {"previous": previous})
                tx.append_event(
                    "ivr.published",
                    {"revision": revision, "by": actor, "previous": previous, "action": "file"},
                )
                return revision

            revision = await self.store.write(unit)
            self.current = Published(revision, result.tree, text)
        log.info("ivr file loaded", path=str(path), revision=revision, previous=previous)
        return True


def _current_row(tx: Any) -> sql.RevisionRow | None:
    revision = sql.current_revision(tx)
    return None if revision is None else sql.get_revision(tx, revision)
