"""SMS campaigns: one template sent to up to 100,000 recipients, fed to the send queue a batch at a time.

Accepting (``create``). Every row is validated in a worker thread (``gateway.sms.campaign_rows``): number,
template variables, SMS parts. Rejected rows and duplicates are stored with their row numbers and reported;
the accepted recipients, with their rendered text, are stored in a few large transactions
(``store_chunk_rows`` each) while the campaign is ``loading``; a last unit makes it ``scheduled`` or
``running``. A crash before that unit leaves a ``loading`` campaign, which ``run`` deletes at the next start:
the client never got a 201 for it.

Feeding. One feeder task per running campaign submits recipients through ``SmsService.submit`` (so the opt-out
policy, categories, quiet hours, routing and costs apply exactly as to any message) in batches of
``batch_size``, keeping at most a *window* of the campaign's messages queued: ``window_per_route`` per healthy
route it may use (``window_per_provider`` for an HTTP provider). The dispatcher's queue therefore never holds
more than the window, an OTP or a lab result (higher priority) overtakes the campaign at once, and a route
that cools off (an unplugged modem) shrinks the window while the dispatcher reroutes its queued messages. The
feeder wakes when one of its messages leaves the queue (an ``sms.sent``/``failed``/... event) -- no polling.

Exactly once across restarts. Each recipient is submitted with the Idempotency-Key
``campaign:<id>:<row>``; a second unit marks the batch submitted, tags the messages with ``campaign_id``,
moves the campaign's ``feed_cursor`` and counters. A crash between the two leaves the rows ``pending``: the
next start submits them again with the same keys and gets the same messages back (keys live
``sms.idempotency_ttl_s``, 24 h by default; a gateway down longer than that in exactly that window could send
those few rows twice).

Counts always add up: ``total = pending + queued + sending + sent + delivered + undelivered + failed +
canceled + refused``, from the campaign's counters (recipients) and its messages grouped by status, read in
one transaction. ``campaign.progress`` events are published at most once per ``progress_interval_s`` (1 s),
only for campaigns whose messages changed, with an ETA from the campaign's measured throughput (messages
leaving the queue over the last ``eta_window_s``).

Pause stops feeding (messages already queued, at most one window, still go out); cancel skips the recipients
not submitted yet and cancels the campaign's queued and scheduled messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field

from gateway.events import Event, EventBus, format_time, utc_now
from gateway.sms.campaign_rows import (
    RecipientsError,
    RowProblem,
    Validation,
    check_columns,
    decode_csv,
    json_rows,
    read_csv,
    validate_rows,
)
from gateway.sms.categories import UnknownCategory
from gateway.sms.models import Conflict, NotFound, SmsError, SubmitRequest, new_message_id
from gateway.sms.replies import ReplyRules, parse_reply_rule
from gateway.sms.service import decode_cursor, encode_cursor
from gateway.store import campaigns_sql as sql
from gateway.store.base import Store

log = structlog.get_logger("sms.campaigns")

MAX_LIST_LIMIT = 200
RETRY_AFTER_ERROR_S = 5.0  # a feeder that hit a store error starts again after this long
_LEFT_QUEUE = frozenset({"sms.sent", "sms.failed", "sms.canceled", "sms.delivered", "sms.undelivered"})
_THROUGHPUT = frozenset({"sms.sent", "sms.failed", "sms.delivered", "sms.undelivered"})
_MESSAGE_EVENTS = frozenset({"sms.queued", "sms.scheduled", "sms.sending", "sms.rerouted", *_LEFT_QUEUE})
COUNT_KEYS = (
    "pending",
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "canceled",
    "refused",
)


class CampaignSettings(BaseModel):
    """Config section ``campaigns``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int = Field(100_000, ge=1, le=1_000_000, description="Recipient rows per campaign")
    max_upload_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest CSV/JSON body of POST /v1/campaigns",
    )
    batch_size: int = Field(100, ge=1, le=5000, description="Recipients submitted per feeder batch")
    window_per_route: int = Field(20, ge=1, le=10_000, description="Queued messages per healthy modem")
    window_per_provider: int = Field(200, ge=1, le=100_000, description="Queued messages per HTTP provider")
    max_window: int = Field(2000, ge=1, le=100_000, description="Queued messages per campaign at most")
    store_chunk_rows: int = Field(
        25_000, ge=100, le=1_000_000, description="Recipients per store transaction"
    )
    progress_interval_s: float = Field(
        1.0, ge=1.0, le=3600.0, description="campaign.progress at most this often"
    )
    eta_window_s: float = Field(60.0, gt=0, le=3600.0, description="Throughput measured over this window")
    rejected_in_response: int = Field(100, ge=0, le=10_000, description="Rejected rows listed in the 201")


class CampaignError(SmsError):
    """A request the campaign service refuses: ``code`` is the problem code, ``status`` the HTTP status,
    ``errors`` (field, message) pairs for the API's problem ``errors`` list."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int = 422,
        field: str = "",
        errors: Sequence[tuple[str, str]] = (),
    ):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
        self.field = field
        self.errors = tuple(errors) or ((field, detail),)


@dataclass(frozen=True)
class Campaign:
    """A campaign with its counts, as the API shows it."""

    row: sql.CampaignRow
    counts: dict[str, int]
    throughput_per_s: float | None
    eta_s: float | None
    reply_rule: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def status(self) -> str:
        return self.row.status

    def progress_json(self) -> dict[str, Any]:
        """``data`` of a campaign.progress event."""
        return {
            "id": self.row.id,
            "status": self.row.status,
            "counts": dict(self.counts),
            "throughput_per_s": self.throughput_per_s,
            "eta_s": self.eta_s,
        }

    def to_json(self) -> dict[str, Any]:
        r = self.row
        return {
            "id": r.id,
            "status": r.status,
            "template": {"id": r.template_id, "revision": r.template_revision},
            "category": r.category,
            "route": r.route or "auto",
            "source": r.source,
            "start_at": format_time(r.start_at),
            "created_at": format_time(r.created_at),
            "updated_at": format_time(r.updated_at),
            "started_at": format_time(r.started_at),
            "finished_at": format_time(r.finished_at),
            "rows": {
                "received": r.rows_received,
                "accepted": r.accepted,
                "rejected": r.rejected,
                "duplicates": r.duplicates,
            },
            "parts": r.parts,
            "counts": dict(self.counts),
            "throughput_per_s": self.throughput_per_s,
            "eta_s": self.eta_s,
            "reply_rule": self.reply_rule,
        }


@dataclass(frozen=True)
class Created:
    campaign: Campaign
    rejected: list[RowProblem]  # the first ``rejected_in_response`` rejected rows and duplicates, by row
    more_rejected: bool  # more are listed at GET /v1/campaigns/{id}/rejected
    unused_columns: tuple[str, ...]  # CSV columns the template does not use


def campaign_counts(row: sql.CampaignRow, by_status: Mapping[str, int]) -> dict[str, int]:
    """Recipient counters and message statuses -> the counts that add up to ``total``."""
    counts = {
        "total": row.accepted,
        "pending": row.accepted - row.submitted - row.refused - row.skipped,
        "queued": by_status.get("queued", 0) + by_status.get("scheduled", 0),
        "sending": by_status.get("sending", 0),
        "sent": by_status.get("sent", 0),
        "delivered": by_status.get("delivered", 0),
        "undelivered": by_status.get("undelivered", 0),
        "failed": by_status.get("failed", 0),
        "canceled": by_status.get("canceled", 0) + row.skipped,
        "refused": row.refused,
    }
    return counts


@dataclass
class _Feeder:
    """In-memory state of a running campaign's feeder (rebuilt from the database after a restart)."""

    campaign_id: str
    in_flight: set[str] = field(default_factory=set)
    wake: trio.Event = field(default_factory=trio.Event)
    started: float = field(default_factory=trio.current_time)
    finished_marks: deque[float] = field(default_factory=deque)

    def throughput(self, now: float, window: float) -> float | None:
        while self.finished_marks and self.finished_marks[0] < now - window:
            self.finished_marks.popleft()
        span = now - max(self.started, now - window)
        if len(self.finished_marks) < 2 or span <= 0:
            return None
        return len(self.finished_marks) / span


@dataclass
class _Driver:
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


class CampaignService:
    """``await nursery.start(service.run)`` once the store, bus, SMS service and dispatcher exist; then the
    API calls ``create``/``get``/``list``/``pause``/``resume``/``cancel``/``rejected``."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        sms: Any,
        templates: Any,
        *,
        dispatcher: Any = None,
        reply_rules: ReplyRules | None = None,
        settings: CampaignSettings | None = None,
        clock: Callable[[], datetime] = utc_now,
        validate_runner: Callable[..., Awaitable[Any]] | None = None,
    ):
        """``validate_runner`` runs the row validation (default ``trio.to_thread.run_sync``); MockClock tests
        pass an inline runner, since the autojump clock cannot see a worker thread."""
        self._store = store
        self._run_validation = validate_runner or trio.to_thread.run_sync
        self._bus = bus
        self._sms = sms
        self._templates = templates
        self._dispatcher = dispatcher
        self._reply_rules = reply_rules or ReplyRules(store, clock=clock)
        self.settings = settings or CampaignSettings()
        self._clock = clock
        self._nursery: trio.Nursery | None = None
        self._drivers: dict[str, _Driver] = {}
        self._feeders: dict[str, _Feeder] = {}
        self._touched_messages: set[str] = set()
        self._touched_campaigns: set[str] = set()
        self._progress_due = trio.Event()
        self._last_progress: dict[str, dict[str, Any]] = {}
        bus.add_listener(self._on_event)

    # --- create -------------------------------------------------------------------------------------------
    async def create(
        self,
        *,
        template_id: str,
        recipients: Sequence[Mapping[str, Any]] | None = None,
        csv_data: bytes | None = None,
        csv_charset: str | None = None,
        category: str | None = None,
        route: str | None = None,
        start_at: str | datetime | None = None,
        reply_rule: Any = None,
    ) -> Created:
        """Validate every row and store the campaign (``CampaignError`` for what refuses it as a whole)."""
        if (recipients is None) == (csv_data is None):
            raise CampaignError(
                "invalid_request", "give either recipients or a CSV upload", field="recipients"
            )
        now = self._clock()
        stored_template = await self._templates.get(template_id) if isinstance(template_id, str) else None
        if stored_template is None:
            raise CampaignError("unknown_template", f"no template with id {template_id!r}", field="template")
        template = stored_template.template
        category_name = self._category(category or template.category)
        route_name = self._route(route)
        start = self._start_at(start_at, now)
        rule_json = None
        if reply_rule is not None:
            try:
                rule_json = parse_reply_rule(reply_rule).to_json()
            except ValueError as exc:
                raise CampaignError("invalid_reply_rule", str(exc), field="reply_rule") from None
        if recipients is not None and len(recipients) > self.settings.max_rows:
            raise CampaignError(
                "too_many_rows",
                f"{len(recipients)} recipients; a campaign takes at most {self.settings.max_rows}",
                field="recipients",
            )
        settings, region, max_parts = self.settings, self._sms.region, self._sms.settings.max_parts

        def validate() -> tuple[Validation, tuple[str, ...]]:
            unused: tuple[str, ...] = ()
            if csv_data is not None:
                columns, rows = read_csv(decode_csv(csv_data, csv_charset), max_rows=settings.max_rows)
                unused = check_columns(columns, template)
                return validate_rows(rows, template, region=region, max_parts=max_parts), unused
            return validate_rows(
                json_rows(recipients or ()), template, region=region, max_parts=max_parts
            ), ()

        try:
            validation, unused = await self._run_validation(validate)
        except RecipientsError as exc:
            errors = [(f"row {exc.row}" if exc.row else "recipients", exc.detail)]
            if exc.names:
                errors = [(name, exc.detail) for name in exc.names]
            raise CampaignError(exc.code, exc.detail, field="recipients", errors=errors) from None
        problems = sorted([*validation.rejected, *validation.duplicates], key=lambda p: p.row)
        if not validation.accepted:
            shown = problems[: max(1, settings.rejected_in_response)]
            raise CampaignError(
                "no_valid_recipients",
                f"none of the {validation.rows} rows can be sent ({len(validation.rejected)} rejected, "
                f"{len(validation.duplicates)} duplicates)",
                field="recipients",
                errors=[(p.field or f"row {p.row}", f"row {p.row}: {p.detail}") for p in shown],
            )
        campaign_id = new_message_id("cmp_")
        row = sql.CampaignRow(
            id=campaign_id,
            status="loading",
            template_id=template.id,
            template_revision=stored_template.revision,
            category=category_name,
            route=route_name,
            source="csv" if csv_data is not None else "json",
            start_at=start,
            rows_received=validation.rows,
            accepted=len(validation.accepted),
            rejected=len(validation.rejected),
            duplicates=len(validation.duplicates),
            parts=sum(a.parts for a in validation.accepted),
            submitted=0,
            refused=0,
            skipped=0,
            feed_cursor=0,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
        )
        status = "scheduled" if start > now else "running"
        with trio.CancelScope(shield=True):  # a client that hangs up must not leave a half-stored campaign
            await self._store_campaign(row, validation, problems, rule_json, status, now)
        log.info(
            "campaign accepted",
            campaign_id=campaign_id,
            accepted=row.accepted,
            rejected=row.rejected,
            duplicates=row.duplicates,
            status=status,
            template=template.id,
        )
        self._touch(campaign_id)
        self._start_driver(campaign_id)
        shown = problems[: settings.rejected_in_response]
        return Created(await self.get(campaign_id), shown, len(problems) > len(shown), unused)

    async def _store_campaign(
        self,
        row: sql.CampaignRow,
        validation: Validation,
        problems: list[RowProblem],
        rule_json: dict[str, Any] | None,
        status: str,
        now: datetime,
    ) -> None:
        chunk = self.settings.store_chunk_rows
        accepted = validation.accepted
        cid = row.id

        def first(tx: Any) -> None:
            sql.insert_campaign(tx, row)
            sql.insert_rejected(tx, cid, ((p.row, p.code, p.field, p.detail) for p in problems))
            sql.insert_recipients(tx, cid, ((a.row, a.e164, a.raw, a.text) for a in accepted[:chunk]))

        try:
            await self._store.write(first)
            for start in range(chunk, len(accepted), chunk):
                part = accepted[start : start + chunk]
                await self._store.write(
                    lambda tx, part=part: sql.insert_recipients(
                        tx, cid, ((a.row, a.e164, a.raw, a.text) for a in part)
                    )
                )
            if rule_json is not None:
                await self._reply_rules.put("campaign", cid, rule_json)

            def finish(tx: Any) -> None:
                sql.update_campaign(
                    tx, cid, status=status, updated_at=now, started_at=now if status == "running" else None
                )

            await self._store.write(finish)
        except BaseException:
            await self._discard(cid)
            raise

    async def _discard(self, campaign_id: str) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._store.write(lambda tx: sql.delete_campaign(tx, campaign_id))
                await self._reply_rules.delete("campaign", campaign_id)
            except Exception:
                log.exception("could not remove a half-stored campaign", campaign_id=campaign_id)

    def _category(self, name: Any) -> str:
        if not isinstance(name, str):
            raise CampaignError("unknown_category", "'category' must be a string", field="category")
        try:
            return self._sms.categories.get(name).name
        except UnknownCategory as exc:
            raise CampaignError("unknown_category", str(exc), field="category") from None

    def _route(self, name: Any) -> str | None:
        if name is None or name == "auto":
            return None
        names = list(self._sms.route_names)
        if not isinstance(name, str) or name not in names:
            raise CampaignError(
                "unknown_route",
                f"no route named {name!r} (known: {', '.join(['auto', *names])})",
                field="route",
            )
        return name

    @staticmethod
    def _start_at(value: str | datetime | None, now: datetime) -> datetime:
        if value is None:
            return now
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise CampaignError(
                    "invalid_start_at",
                    f"start_at {value!r} is not an ISO 8601 date-time (e.g. 2026-11-27T09:00:00+09:00)",
                    field="start_at",
                ) from None
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise CampaignError(
                "invalid_start_at",
                "start_at needs a date-time with a UTC offset (e.g. +09:00 or Z)",
                field="start_at",
            )
        if value - now > timedelta(days=366):
            raise CampaignError("invalid_start_at", "start_at is more than 366 days ahead", field="start_at")
        return value

    # --- reads --------------------------------------------------------------------------------------------
    async def get(self, campaign_id: str) -> Campaign:
        found = await self._views(lambda tx: [r] if (r := sql.get_campaign(tx, campaign_id)) else [])
        if not found or found[0].status == "loading":
            raise NotFound(f"no campaign {campaign_id!r}")
        campaign = found[0]
        rule = await self._reply_rules.get("campaign", campaign_id)
        if rule is None:
            return campaign
        return Campaign(
            campaign.row, campaign.counts, campaign.throughput_per_s, campaign.eta_s, rule.to_json()
        )

    async def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[Campaign], str | None]:
        """Newest first; pass the returned cursor for the next (older) page, None on the last page."""
        allowed = ("scheduled", "running", "paused", "completed", "canceled")
        if status is not None and status not in allowed:
            raise CampaignError(
                "invalid_parameter",
                f"unknown status {status!r} (one of: {', '.join(allowed)})",
                status=400,
                field="status",
            )
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise CampaignError(
                "invalid_parameter",
                f"limit must be between 1 and {MAX_LIST_LIMIT}",
                status=400,
                field="limit",
            )
        try:
            before = decode_cursor(cursor) if cursor else None
        except SmsError:
            raise CampaignError(
                "invalid_parameter", "the cursor is not one this server returned", status=400, field="cursor"
            ) from None
        views = await self._views(
            lambda tx: sql.list_campaigns(tx, status=status, before_id=before, limit=limit + 1)
        )
        page = views[:limit]
        return page, (encode_cursor(page[-1].id) if len(views) > limit else None)

    async def rejected(
        self, campaign_id: str, *, cursor: str | None = None, limit: int = 100, code: str | None = None
    ) -> tuple[list[RowProblem], str | None]:
        """Rejected rows and duplicates in row order."""
        if not 1 <= limit <= 1000:
            raise CampaignError(
                "invalid_parameter", "limit must be between 1 and 1000", status=400, field="limit"
            )
        after = 0
        if cursor:
            try:
                after = int(decode_cursor(cursor))
            except (SmsError, ValueError):
                raise CampaignError(
                    "invalid_parameter",
                    "the cursor is not one this server returned",
                    status=400,
                    field="cursor",
                ) from None

        def query(tx: Any) -> list[tuple[int, str, str, str]] | None:
            found = sql.get_campaign(tx, campaign_id)
            if found is None or found.status == "loading":
                return None
            return sql.list_rejected(tx, campaign_id, after_row=after, limit=limit + 1, code=code)

        rows = await self._store.read(query)
        if rows is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        page = [RowProblem(*r) for r in rows[:limit]]
        return page, (encode_cursor(str(page[-1].row)) if len(rows) > limit else None)

    async def _views(self, select: Callable[[Any], list[sql.CampaignRow]]) -> list[Campaign]:
        def query(tx: Any) -> list[tuple[sql.CampaignRow, dict[str, int]]]:
            return [(r, sql.message_counts(tx, r.id)) for r in select(tx)]

        rows = await self._store.read(query)
        return [self._view(r, by_status) for r, by_status in rows]

    def _view(self, row: sql.CampaignRow, by_status: Mapping[str, int]) -> Campaign:
        counts = campaign_counts(row, by_status)
        throughput = None
        feeder = self._feeders.get(row.id)
        if feeder is not None:
            measured = feeder.throughput(trio.current_time(), self.settings.eta_window_s)
            throughput = None if measured is None else round(measured, 3)
        remaining = counts["pending"] + counts["queued"] + counts["sending"]
        if remaining == 0:
            eta = 0.0
        elif throughput and row.status == "running":
            eta = round(remaining / throughput, 1)
        else:
            eta = None
        return Campaign(row, counts, throughput, eta)

    # --- pause / resume / cancel --------------------------------------------------------------------------
    async def pause(self, campaign_id: str) -> Campaign:
        await self._require(campaign_id, ("scheduled", "running"), "paused")
        await self._stop_driver(campaign_id)
        now = self._clock()
        await self._transition(campaign_id, ("scheduled", "running"), "paused", updated_at=now)
        log.info("campaign paused", campaign_id=campaign_id)
        return await self.get(campaign_id)

    async def resume(self, campaign_id: str) -> Campaign:
        row = await self._require(campaign_id, ("paused",), "resumed")
        now = self._clock()
        status = "scheduled" if row.start_at > now else "running"
        changes: dict[str, Any] = {"updated_at": now}
        if status == "running" and row.started_at is None:
            changes["started_at"] = now
        await self._transition(campaign_id, ("paused",), status, **changes)
        self._start_driver(campaign_id)
        log.info("campaign resumed", campaign_id=campaign_id, status=status)
        return await self.get(campaign_id)

    async def cancel(self, campaign_id: str) -> Campaign:
        await self._require(campaign_id, sql.ACTIVE_STATUSES, "canceled")
        await self._stop_driver(campaign_id)
        now = self._clock()

        def unit(tx: Any) -> tuple[int, list[str]]:
            row = sql.get_campaign(tx, campaign_id)
            if row is None or row.status not in sql.ACTIVE_STATUSES:
                raise Conflict(
                    f"campaign {campaign_id} is {row.status if row else 'gone'}; it cannot be canceled"
                )
            sql.update_campaign(tx, campaign_id, status="canceled", finished_at=now, updated_at=now)
            return sql.skip_pending(tx, campaign_id, now), sql.in_flight_ids(tx, campaign_id)

        skipped, queued = await self._store.write(unit)
        canceled = 0
        for message_id in queued:
            try:
                await self._sms.cancel(message_id)
                canceled += 1
            except (Conflict, NotFound):
                pass  # being sent right now (it finishes), or finished meanwhile
        self._touch(campaign_id)
        log.info("campaign canceled", campaign_id=campaign_id, skipped=skipped, messages_canceled=canceled)
        return await self.get(campaign_id)

    async def _require(self, campaign_id: str, allowed: Sequence[str], verb: str) -> sql.CampaignRow:
        row = await self._store.read(lambda tx: sql.get_campaign(tx, campaign_id))
        if row is None or row.status == "loading":
            raise NotFound(f"no campaign {campaign_id!r}")
        if row.status not in allowed:
            raise Conflict(
                f"campaign {campaign_id} is {row.status}; only a {' or '.join(allowed)} campaign can be "
                f"{verb}"
            )
        return row

    async def _transition(
        self, campaign_id: str, allowed: Sequence[str], status: str, **changes: Any
    ) -> None:
        def unit(tx: Any) -> None:
            row = sql.get_campaign(tx, campaign_id)
            if row is None or row.status not in allowed:
                raise Conflict(
                    f"campaign {campaign_id} is {row.status if row else 'gone'}; it cannot become {status}"
                )
            sql.update_campaign(tx, campaign_id, status=status, **changes)

        await self._store.write(unit)
        self._touch(campaign_id)

    # --- running ------------------------------------------------------------------------------------------
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Remove half-stored campaigns, restart the feeders of running and scheduled campaigns, publish
        progress; until cancelled."""
        horizon = self._clock() - timedelta(hours=self._sms.settings.report_window_hours)

        def recover(tx: Any) -> tuple[list[str], list[sql.CampaignRow]]:
            loading = [r.id for r in sql.campaigns_in(tx, ("loading",))]
            for campaign_id in loading:
                sql.delete_campaign(tx, campaign_id)
            return loading, [*sql.campaigns_in(tx, sql.ACTIVE_STATUSES), *sql.finished_since(tx, horizon)]

        removed, watched = await self._store.write(recover)
        for campaign_id in removed:
            await self._reply_rules.delete("campaign", campaign_id)
            log.warning(
                "half-stored campaign removed (the gateway stopped while accepting it)",
                campaign_id=campaign_id,
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for row in watched:
                self._touched_campaigns.add(row.id)
                if row.status in ("scheduled", "running"):
                    self._start_driver(row.id)
            self._progress_due.set()
            nursery.start_soon(self._progress_loop)
            task_status.started()
            log.info("campaigns running", resumed=sum(r.status in ("scheduled", "running") for r in watched))

    def _start_driver(self, campaign_id: str) -> None:
        if self._nursery is None or campaign_id in self._drivers:
            return  # not running yet: run() starts it
        driver = _Driver(trio.CancelScope())
        self._drivers[campaign_id] = driver
        self._nursery.start_soon(self._drive, campaign_id, driver)

    async def _stop_driver(self, campaign_id: str) -> None:
        driver = self._drivers.get(campaign_id)
        if driver is not None:
            driver.scope.cancel()
            await driver.done.wait()

    async def _drive(self, campaign_id: str, driver: _Driver) -> None:
        """Wait for start_at, then feed until done; a store error restarts the feeder after a pause."""
        try:
            with driver.scope:
                while True:
                    try:
                        if await self._drive_once(campaign_id):
                            return
                    except SmsError as exc:  # e.g. Conflict: paused or canceled meanwhile
                        log.info("campaign feeder stopped", campaign_id=campaign_id, reason=str(exc))
                        return
                    except Exception:
                        log.exception("campaign feeder failed; restarting", campaign_id=campaign_id)
                    await trio.sleep(RETRY_AFTER_ERROR_S)
        finally:
            self._drivers.pop(campaign_id, None)
            self._feeders.pop(campaign_id, None)
            driver.done.set()

    async def _drive_once(self, campaign_id: str) -> bool:
        row = await self._store.read(lambda tx: sql.get_campaign(tx, campaign_id))
        if row is None:
            return True
        if row.status == "scheduled":
            await trio.sleep(max(0.0, (row.start_at - self._clock()).total_seconds()))
            now = self._clock()
            await self._transition(campaign_id, ("scheduled",), "running", started_at=now, updated_at=now)
            row = await self._store.read(lambda tx: sql.get_campaign(tx, campaign_id))
            log.info("campaign started", campaign_id=campaign_id)
        if row is None or row.status != "running":
            return True
        await self._feed(row)
        return True

    async def _feed(self, campaign: sql.CampaignRow) -> None:
        cid, settings = campaign.id, self.settings
        feeder = self._feeders[cid] = _Feeder(cid)
        cursor = campaign.feed_cursor
        exhausted = False
        while True:
            feeder.wake = trio.Event()
            held = self._sms.categories.quiet_until(campaign.category, self._clock())
            if held is not None:  # quiet hours: feeding now would only park messages as scheduled
                await trio.sleep(max(0.0, (held - self._clock()).total_seconds()))
                continue
            window = self._window(campaign)
            room = window - len(feeder.in_flight)
            if not exhausted and room >= max(1, min(settings.batch_size, window // 4)):

                def query(
                    tx: Any, cursor: int = cursor, window: int = window
                ) -> tuple[list[str], list[sql.PendingRecipient]]:
                    in_flight = sql.in_flight_ids(tx, cid)
                    space = max(0, min(settings.batch_size, window - len(in_flight)))
                    return in_flight, sql.next_pending(tx, cid, after_row=cursor, limit=space)

                in_flight, batch = await self._store.read(query)
                feeder.in_flight = set(in_flight)
                if batch:
                    with trio.CancelScope(shield=True):  # pause/cancel waits for the batch to be recorded
                        cursor = await self._submit_batch(campaign, feeder, batch)
                    self._touch(cid)
                    continue
                exhausted = len(feeder.in_flight) < window  # no room is not the same as nothing left
            if exhausted:
                feeder.in_flight = set(await self._store.read(lambda tx: sql.in_flight_ids(tx, cid)))
                if not feeder.in_flight:
                    await self._complete(cid)
                    return
            await feeder.wake.wait()

    async def _submit_batch(
        self, campaign: sql.CampaignRow, feeder: _Feeder, batch: Sequence[sql.PendingRecipient]
    ) -> int:
        cid = campaign.id
        submitted: list[tuple[int, str]] = []
        refused: list[tuple[int, str]] = []

        async def submit(recipient: sql.PendingRecipient) -> None:
            request = SubmitRequest(
                to=recipient.to_number,
                text=recipient.text,
                category=campaign.category,
                route=campaign.route,
                client_ref=f"{cid}/{recipient.row}",
            )
            try:
                result = await self._sms.submit(request, idempotency_key=f"campaign:{cid}:{recipient.row}")
            except SmsError as exc:  # a submit policy refused it (opted_out ...) or the route vanished
                refused.append((recipient.row, f"{getattr(exc, 'code', type(exc).__name__)}: {exc}"))
                return
            feeder.in_flight.add(result.message.id)  # before any of its events can arrive
            submitted.append((recipient.row, result.message.id))

        async with trio.open_nursery() as nursery:
            for recipient in batch:
                nursery.start_soon(submit, recipient)
        cursor = batch[-1].row
        now = self._clock()
        statuses = await self._store.write(
            lambda tx: sql.mark_submitted(tx, cid, submitted, refused, cursor, now)
        )
        for _, message_id in submitted:
            if statuses.get(message_id) not in sql.IN_FLIGHT_STATUSES:
                feeder.in_flight.discard(message_id)
        if refused:
            log.info("campaign recipients refused", campaign_id=cid, count=len(refused), first=refused[0][1])
        return cursor

    async def _complete(self, campaign_id: str) -> None:
        now = self._clock()
        try:
            await self._transition(campaign_id, ("running",), "completed", finished_at=now, updated_at=now)
        except Conflict:
            return
        log.info("campaign completed", campaign_id=campaign_id)

    def _window(self, campaign: sql.CampaignRow) -> int:
        """How many of the campaign's messages may wait in the send queue: the capacity of its routes."""
        settings = self.settings
        routes = self._dispatcher.routes() if self._dispatcher is not None else []
        provider_ok = self._sms.categories.allows_provider(campaign.category)
        window = 0
        for route in routes:
            if campaign.route is not None and route["name"] != campaign.route:
                continue
            if campaign.route is None and (
                not route["healthy"] or (route["kind"] == "provider" and not provider_ok)
            ):
                continue
            window += (
                settings.window_per_provider if route["kind"] == "provider" else settings.window_per_route
            )
        return max(1, min(window or settings.window_per_route, settings.max_window))

    # --- events and progress ------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.type not in _MESSAGE_EVENTS:
            return
        message_id = event.data.get("id")
        if not isinstance(message_id, str):
            return
        self._touched_messages.add(message_id)
        self._progress_due.set()
        if event.type in _LEFT_QUEUE:
            for feeder in self._feeders.values():
                if message_id in feeder.in_flight:
                    feeder.in_flight.discard(message_id)
                    if event.type in _THROUGHPUT:
                        feeder.finished_marks.append(trio.current_time())
                    feeder.wake.set()
                    break

    def _touch(self, campaign_id: str) -> None:
        self._touched_campaigns.add(campaign_id)
        self._progress_due.set()

    async def _progress_loop(self) -> None:
        """campaign.progress for the campaigns whose messages or status changed, at most once per interval."""
        while True:
            await self._progress_due.wait()
            self._progress_due = trio.Event()
            try:
                await self.publish_progress()
            except Exception:
                log.exception("campaign progress could not be published")
            await trio.sleep(self.settings.progress_interval_s)  # the rate limit, not a poll

    async def publish_progress(self) -> int:
        """Publish campaign.progress for what changed since the last call; returns how many were published."""
        messages, self._touched_messages = self._touched_messages, set()
        campaigns, self._touched_campaigns = self._touched_campaigns, set()
        views: dict[str, Campaign] = {}

        def query(tx: Any) -> list[tuple[sql.CampaignRow, dict[str, int]]]:
            ids = set(campaigns)
            message_ids = list(messages)
            for start in range(0, len(message_ids), 500):
                chunk = message_ids[start : start + 500]
                rows = tx.connection.execute(
                    "SELECT DISTINCT campaign_id FROM messages WHERE campaign_id IS NOT NULL AND id IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                )
                ids.update(r[0] for r in rows)
            found = []
            for campaign_id in sorted(ids):
                row = sql.get_campaign(tx, campaign_id)
                if row is not None and row.status != "loading":
                    found.append((row, sql.message_counts(tx, campaign_id)))
            return found

        for row, by_status in await self._store.read(query):
            views[row.id] = self._view(row, by_status)
        changed = {
            cid: view.progress_json()
            for cid, view in views.items()
            if view.progress_json() != self._last_progress.get(cid)
        }
        if not changed:
            return 0

        def unit(tx: Any) -> None:
            for data in changed.values():
                tx.append_event("campaign.progress", data)

        await self._store.write(unit)
        for cid, data in changed.items():
            if data["status"] in ("completed", "canceled") and data["counts"]["sent"] == 0:
                self._last_progress.pop(cid, None)  # nothing can change any more
            else:
                self._last_progress[cid] = data
        return len(changed)

    @property
    def running_campaigns(self) -> list[str]:
        """Campaigns with a feeder task (running, or scheduled and waiting for start_at)."""
        return sorted(self._drivers)


__all__ = ["Campaign", "CampaignError", "CampaignService", "CampaignSettings", "Created", "campaign_counts"]
