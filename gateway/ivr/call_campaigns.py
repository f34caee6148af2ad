"""Follow-up call campaigns (issue 6): dial a list of patients over some lines inside a calling window, run
the IVR tree (usually a survey) on each answered call, retry per outcome, keep one result per patient.

How a campaign call runs: :meth:`CallCampaignService` asks the voice service to ``dial(numbers, line=...,
ivr_entry=<entry>)`` and puts the recipient's ``vars`` (and ``campaign_id``) into the call's variables before
dialling starts; the voice service's answer hook (the IVR, ``IvrService.start_session``) runs the tree from
``ivr_entry``. The campaign only waits for the call to end and judges it:

* answered (by polarity reversal or voice)          -> done, outcome ``answered``;
* busy, or congestion (reorder tone: the exchange could not connect now, as transient as busy) -> ``busy``;
* no answer within the ring timeout                  -> ``no_answer``;
* anything else (no dial tone, loop break, device lost, unknown number) -> ``failed``.

A busy / no_answer / failed call is retried after that outcome's ``interval_s`` while fewer than its
``attempts`` calls ended that way; then the recipient is done with that outcome. Survey answers are read from
``survey_answers`` at the time results are asked for (not copied), so nothing the IVR stores late is lost.

State lives in the database (schema 0008): after a restart the scheduler resumes running campaigns; a
recipient whose call was cut by the restart is retried at once unless its call had been answered.
``campaign.progress`` is emitted (journalled with its counts) at most once per ``progress_interval_s`` per
campaign, and once more after the last change.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.events import format_time, utc_now
from gateway.ivr.model import WEEKDAYS, NodeId, TimeZoneName, VariableName
from gateway.sms.models import new_message_id
from gateway.store import call_campaigns_sql as sql
from gateway.voice import dialer
from gateway.voice.service import VoiceError

log = structlog.get_logger("call_campaigns")

EVENT_TYPES = ("campaign.progress",)  # data: campaign_id, kind "call", state, counts (see _progress_unit)
RETRY_OUTCOMES = ("busy", "no_answer", "failed")
# Variables the gateway sets on every campaign call itself; a recipient cannot override them.
RESERVED_VARS = frozenset(
    {"ivr_entry", "campaign_id", "call_id", "line_id", "caller_number", "called_number"}
)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


# ======================================================================================== models
class CallCampaignSettings(BaseModel):
    """Config section ``call_campaigns:``."""

    model_config = ConfigDict(extra="forbid")

    max_recipients: int = Field(5000, ge=1, le=100_000, description="recipients per campaign")
    progress_interval_s: float = Field(
        1.0, ge=1.0, le=60.0, description="campaign.progress at most this often per campaign"
    )
    recheck_s: float = Field(
        300.0,
        ge=10.0,
        le=3600.0,
        description="longest scheduler sleep: windows and retry times are wall-clock times, and the wall "
        "clock can jump (NTP, suspend) while the trio clock does not",
    )


class CallWindow(BaseModel):
    """When calls may start: on these weekdays between ``start`` and ``end`` local time. A call in progress
    at ``end`` is not cut; retries falling outside the window wait for its next opening."""

    model_config = ConfigDict(extra="forbid")

    days: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], min_length=1)
    start: dt.time = Field(dt.time(9, 0), description="local time HH:MM")
    end: dt.time = Field(dt.time(18, 0), description="local time HH:MM, after start")
    timezone: TimeZoneName = "Asia/Tokyo"

    @model_validator(mode="after")
    def _check(self) -> CallWindow:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window start and end are local times without an offset; set `timezone`")
        if self.end <= self.start:
            raise ValueError(f"window end {self.end:%H:%M} must be after start {self.start:%H:%M}")
        return self

    def next_open(self, now: dt.datetime) -> dt.datetime:
        """``now`` when the window is open, else the next opening (UTC)."""
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        wanted = {WEEKDAYS.index(d) for d in self.days}
        for offset in range(8):
            day = local.date() + dt.timedelta(days=offset)
            if day.weekday() not in wanted:
                continue
            opens = dt.datetime.combine(day, self.start, zone)
            closes = dt.datetime.combine(day, self.end, zone)
            if local < closes:
                return now if local >= opens else opens.astimezone(dt.UTC)
        raise AssertionError("a week always has an opening")  # pragma: no cover (days is never empty)


class RetryRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(
        ge=1, le=20, description="calls ending with this outcome before giving up (1: none)"
    )
    interval_s: float = Field(ge=1.0, le=7 * 86400.0, description="wait before the next call")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    busy: RetryRule = RetryRule(attempts=3, interval_s=600)
    no_answer: RetryRule = RetryRule(attempts=3, interval_s=1800)
    failed: RetryRule = RetryRule(attempts=2, interval_s=900)


class CampaignRecipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: list[str] = Field(min_length=1, max_length=5, description="tried in order within one call")
    vars: dict[VariableName, str | int | float | bool | None] = Field(
        default_factory=dict, description="IVR variables of this patient's call (e.g. patient_id, language)"
    )

    @field_validator("vars")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_VARS & value.keys())
        if taken:
            raise ValueError(f"variable {taken[0]!r} is set by the gateway and cannot be given")
        return value


class CallCampaignSpec(BaseModel):
    """``POST /v1/call-campaigns`` body."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    entry: NodeId = Field(description="IVR node each answered call starts at (usually a survey)")
    recipients: list[CampaignRecipient] = Field(min_length=1)
    lines: list[str] = Field(min_length=1, max_length=64, description="lines the campaign may dial on")
    window: CallWindow
    max_concurrent: int = Field(1, ge=1, le=64, description="calls of this campaign at the same time")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    ring_timeout_s: float | None = Field(
        None, gt=0, le=300, description="no-answer timeout per number (default: the voice setting)"
    )

    @field_validator("lines")
    @classmethod
    def _unique_lines(cls, value: list[str]) -> list[str]:
        dup = sorted({n for n in value if value.count(n) > 1})
        if dup:
            raise ValueError(f"line {dup[0]!r} is listed twice")
        return value

    def stored_spec(self) -> dict[str, Any]:
        """What the campaign row keeps (recipients have their own rows)."""
        return self.model_dump(mode="json", exclude={"name", "recipients"})


class StoredSpec(CallCampaignSpec):
    """A campaign row's spec, read back (no recipients there)."""

    recipients: list[CampaignRecipient] = Field(default_factory=list)


class CallCampaignError(Exception):
    """A request the campaign service refuses; ``code`` is the API problem code, ``field`` the body field."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field = code, detail, field


def call_outcome(call: Any) -> str:
    """Judge an ended campaign call (module docstring): answered | busy | no_answer | failed | canceled."""
    if getattr(call, "answered_at", None) is not None:
        return "answered"
    cause = call.cause
    if cause == "campaign_canceled":
        return "canceled"
    if cause in ("busy", "congestion"):
        return "busy"
    if cause == "no_answer":
        return "no_answer"
    return "failed"


# ======================================================================================== service
_GONE = sql.CampaignRow("", None, "canceled", {}, "", "", "", None)  # a recipient row without its campaign


@dataclass
class _Campaign:
    id: str
    name: str | None
    state: str
    spec: StoredSpec
    calls: dict[int, Any] = field(default_factory=dict)  # recipient seq -> live call
    dirty: bool = True  # a campaign.progress is owed
    last_progress: float = -math.inf  # trio time of the last campaign.progress


class CallCampaignService:
    """``run()`` is the scheduler (one task, plus one task per campaign call in its nursery)."""

    def __init__(
        self,
        store: Any,
        voice: Any,
        *,
        settings: CallCampaignSettings | None = None,
        bus: Any = None,
        ivr: Any = None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        """``voice``: the VoiceService (``dial``, ``lines``, ``settings.region``); ``bus``: the EventBus, to
        wake the scheduler when a line turns idle; ``ivr``: the IvrService, to check the entry node at
        creation; ``clock``: wall clock (UTC) for windows and retry times."""
        self.store, self.voice, self.ivr, self.clock = store, voice, ivr, clock
        self.settings = settings or CallCampaignSettings()
        self._campaigns: dict[str, _Campaign] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        if bus is not None:
            bus.add_listener(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.type == "line.state_changed" and event.data.get("new") == "idle":
            self._wake.set()

    def _now(self) -> str:
        return format_time(self.clock()) or ""

    # ------------------------------------------------------------------------------------- running
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    wake = self._wake = trio.Event()
                    delay = await self._pass()
                    with trio.move_on_after(min(delay, self.settings.recheck_s)):
                        await wake.wait()
            finally:
                self._nursery = None

    async def _recover(self) -> None:
        """Load running and paused campaigns; settle recipients whose call a stop or crash cut short."""
        now = self._now()

        def unit(tx: Any) -> list[sql.CampaignRow]:
            for recipient, call in sql.interrupted_calls(tx):
                if call is not None and call["answered_at"] is not None:
                    sql.record_call_result(
                        tx,
                        recipient.campaign_id,
                        recipient.seq,
                        outcome="answered",
                        cause=call["cause"],
                        state="done",
                        next_attempt_at=None,
                        now=now,
                        answered=(call["number_raw"], call["answered_by"], call["answered_at"]),
                    )
                elif (sql.get_campaign(tx, recipient.campaign_id) or _GONE).state == "canceled":
                    sql.record_call_result(
                        tx,
                        recipient.campaign_id,
                        recipient.seq,
                        outcome="canceled",
                        cause="gateway_restart",
                        state="canceled",
                        next_attempt_at=None,
                        now=now,
                    )
                else:  # not the patient's doing: not counted against a retry rule, dialled again
                    sql.record_call_result(
                        tx,
                        recipient.campaign_id,
                        recipient.seq,
                        outcome="interrupted",
                        cause="gateway_restart",
                        state="pending",
                        next_attempt_at=None,
                        now=now,
                    )
            return sql.unfinished_campaigns(tx)

        rows = await self.store.write(unit)
        for row in rows:
            self._campaigns[row.id] = _Campaign(row.id, row.name, row.state, StoredSpec(**row.spec))
        if rows:
            log.info("call campaigns resumed", campaigns=[r.id for r in rows])

    async def _pass(self) -> float:
        """Start due calls, emit owed progress, finish campaigns; returns seconds until work is due."""
        next_wake = math.inf
        for campaign in list(self._campaigns.values()):
            if campaign.state == "running":
                next_wake = min(next_wake, await self._start_due(campaign))
                if campaign.state == "running" and not campaign.calls:
                    await self._complete_if_done(campaign)
            if campaign.dirty:
                wait = campaign.last_progress + self.settings.progress_interval_s - trio.current_time()
                if wait <= 0:
                    await self._emit_progress(campaign)
                else:
                    next_wake = min(next_wake, wait)
            if campaign.state in ("canceled", "completed") and not campaign.calls and not campaign.dirty:
                del self._campaigns[campaign.id]
        return next_wake

    async def _start_due(self, campaign: _Campaign) -> float:
        spec = campaign.spec
        now = self.clock()
        opens = spec.window.next_open(now)
        if opens > now:
            return (opens - now).total_seconds()
        capacity = spec.max_concurrent - len(campaign.calls)
        if capacity <= 0:
            return math.inf  # a call's end wakes the scheduler
        now_text = format_time(now) or ""
        due = await self.store.read(lambda tx: sql.due_recipients(tx, campaign.id, now_text, capacity))
        for recipient in due:
            if campaign.state != "running":
                return math.inf
            started = await self._dial(campaign, recipient)
            if started is None:
                return math.inf  # no line free: a line turning idle (or a call's end) wakes the scheduler
        if len(due) == capacity:
            return math.inf
        upcoming = await self.store.read(lambda tx: sql.next_due_at(tx, campaign.id))
        if upcoming is None:
            return math.inf
        at = spec.window.next_open(max(dt.datetime.fromisoformat(upcoming), now))
        return max(0.0, (at - now).total_seconds())

    async def _dial(self, campaign: _Campaign, recipient: sql.RecipientRow) -> Any:
        """Place the recipient's call on the first free campaign line; None when every line is busy."""
        spec = campaign.spec
        for line in spec.lines:
            try:
                call = await self.voice.dial(
                    recipient.numbers, line=line, ivr_entry=spec.entry, timeout_s=spec.ring_timeout_s
                )
            except VoiceError as exc:
                if exc.code in ("line_busy", "not_found"):
                    continue
                await self._settle_failed_dial(campaign, recipient, exc.code)
                return False
            # Dialling runs in the line's own task, started after dial() returned: the vars are in place
            # before the call can be answered and the IVR reads them.
            call.vars.update(recipient.vars)
            call.vars["campaign_id"] = campaign.id
            now = self._now()
            await self.store.write(
                lambda tx, cid=call.id, at=now: sql.mark_calling(tx, campaign.id, recipient.seq, cid, at)
            )
            campaign.calls[recipient.seq] = call
            campaign.dirty = True
            assert self._nursery is not None
            self._nursery.start_soon(self._follow, campaign, recipient, call)
            log.info("campaign call placed", campaign_id=campaign.id, seq=recipient.seq, call_id=call.id)
            return call
        return None

    async def _settle_failed_dial(self, campaign: _Campaign, recipient: sql.RecipientRow, cause: str) -> None:
        """The voice service refused the numbers themselves (e.g. invalid_number): no call, no retry."""
        now = self._now()
        await self.store.write(
            lambda tx: sql.record_call_result(
                tx,
                campaign.id,
                recipient.seq,
                outcome="failed",
                cause=cause,
                state="done",
                next_attempt_at=None,
                now=now,
            )
        )
        campaign.dirty = True
        log.warning(
            "campaign recipient cannot be dialled", campaign_id=campaign.id, seq=recipient.seq, cause=cause
        )

    async def _follow(self, campaign: _Campaign, recipient: sql.RecipientRow, call: Any) -> None:
        """Wait for the call's end, then record its outcome and the recipient's next step."""
        try:
            await call.ended.wait()
            outcome = call_outcome(call)
            now = self.clock()
            answered = None
            next_at: str | None = None
            if outcome == "answered":
                state = "done"
                answered = (call.number, call.answered_by, call.answered_at)
            elif outcome == "canceled" or campaign.state == "canceled":
                state = "canceled"
                outcome = "canceled"
            else:
                rule: RetryRule = getattr(campaign.spec.retry, outcome)
                if recipient.counts[outcome] + 1 < rule.attempts:
                    state = "pending"
                    next_at = format_time(now + dt.timedelta(seconds=rule.interval_s))
                else:
                    state = "done"
            now_text = format_time(now) or ""
            await self.store.write(
                lambda tx: sql.record_call_result(
                    tx,
                    campaign.id,
                    recipient.seq,
                    outcome=outcome,
                    cause=call.cause,
                    state=state,
                    next_attempt_at=next_at,
                    now=now_text,
                    answered=answered,
                )
            )
            log.info(
                "campaign call ended",
                campaign_id=campaign.id,
                seq=recipient.seq,
                call_id=call.id,
                outcome=outcome,
                cause=call.cause,
                recipient_state=state,
                retry_at=next_at,
            )
        finally:
            campaign.calls.pop(recipient.seq, None)
            campaign.dirty = True
            self._wake.set()

    async def _complete_if_done(self, campaign: _Campaign) -> None:
        counts = await self.store.read(lambda tx: sql.counts(tx, campaign.id))
        if counts["pending"] or counts["calling"] or campaign.state != "running":
            return
        now = self._now()
        await self.store.write(lambda tx: sql.set_campaign_state(tx, campaign.id, "completed", now))
        campaign.state, campaign.dirty = "completed", True
        log.info("call campaign completed", campaign_id=campaign.id, **counts)

    async def _emit_progress(self, campaign: _Campaign) -> None:
        campaign.dirty = False
        campaign.last_progress = trio.current_time()
        state = campaign.state

        def unit(tx: Any) -> None:
            tx.append_event(
                "campaign.progress",
                progress_data(campaign.id, campaign.name, state, sql.counts(tx, campaign.id)),
            )

        await self.store.write(unit)

    # ------------------------------------------------------------------------------------ requests
    async def create(self, spec: CallCampaignSpec, actor: str) -> dict[str, Any]:
        """Check the lines, the entry node and the numbers, store the campaign, wake the scheduler."""
        if len(spec.recipients) > self.settings.max_recipients:
            raise CallCampaignError(
                "invalid_request",
                f"{len(spec.recipients)} recipients; at most {self.settings.max_recipients} per campaign",
                "recipients",
            )
        known = list(getattr(self.voice, "lines", {}))
        for i, line in enumerate(spec.lines):
            if line not in known:
                raise CallCampaignError(
                    "invalid_request", f"no line {line!r}; lines: {', '.join(known) or 'none'}", f"lines.{i}"
                )
        self._check_entry(spec.entry)
        region = self.voice.settings.region
        for i, recipient in enumerate(spec.recipients):
            for j, number in enumerate(recipient.numbers):
                try:
                    dialer.dial_string(number, region)
                except ValueError as exc:
                    raise CallCampaignError(
                        "invalid_number", str(exc), f"recipients.{i}.numbers.{j}"
                    ) from None
        campaign_id = new_message_id("ccp_")
        now = self._now()
        stored = spec.stored_spec()
        rows = [(r.numbers, r.vars) for r in spec.recipients]
        await self.store.write(
            lambda tx: sql.insert_campaign(tx, campaign_id, spec.name, stored, rows, actor, now)
        )
        self._campaigns[campaign_id] = _Campaign(campaign_id, spec.name, "running", StoredSpec(**stored))
        self._wake.set()
        log.info("call campaign created", campaign_id=campaign_id, recipients=len(rows), by=actor)
        view = await self.get(campaign_id)
        assert view is not None
        return view

    def _check_entry(self, entry: str) -> None:
        if self.ivr is None:
            return
        current = self.ivr.current
        if current is None:
            raise CallCampaignError(
                "invalid_request", "no IVR tree is published yet; publish one with the entry node", "entry"
            )
        if entry not in current.tree.nodes:
            raise CallCampaignError(
                "invalid_request",
                f"node {entry!r} is not in the published IVR revision {current.revision}",
                "entry",
            )

    async def get(self, campaign_id: str) -> dict[str, Any] | None:
        def query(tx: Any) -> dict[str, Any] | None:
            row = sql.get_campaign(tx, campaign_id)
            return None if row is None else campaign_view(row, sql.counts(tx, campaign_id))

        return await self.store.read(query)

    async def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        def query(tx: Any) -> list[dict[str, Any]]:
            return [
                campaign_view(r, sql.counts(tx, r.id))
                for r in sql.list_campaigns(tx, state=state, limit=limit)
            ]

        return await self.store.read(query)

    async def results(self, campaign_id: str) -> list[dict[str, Any]]:
        def query(tx: Any) -> list[dict[str, Any]] | None:
            if sql.get_campaign(tx, campaign_id) is None:
                return None
            return sql.results(tx, campaign_id)

        found = await self.store.read(query)
        if found is None:
            raise CallCampaignError("not_found", f"no call campaign {campaign_id}")
        return found

    async def pause(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """No new calls; calls in progress go on and their results are kept."""
        return await self._change(campaign_id, actor, "paused", allowed=("running",))

    async def resume(self, campaign_id: str, actor: str) -> dict[str, Any]:
        return await self._change(campaign_id, actor, "running", allowed=("paused",))

    async def cancel(self, campaign_id: str, actor: str) -> dict[str, Any]:
        """No more calls: waiting recipients become canceled, calls still dialling are hung up; answered
        calls finish their survey (hanging up on a patient mid-question helps nobody)."""
        view = await self._change(campaign_id, actor, "canceled", allowed=("running", "paused"))
        campaign = self._campaigns.get(campaign_id)
        for call in list(campaign.calls.values()) if campaign else ():
            if getattr(call, "answered_at", None) is None:
                await call.hangup("campaign_canceled")
        return view

    async def _change(self, campaign_id: str, actor: str, new: str, *, allowed: tuple[str, ...]) -> dict:
        now = self._now()

        def unit(tx: Any) -> str | None:
            row = sql.get_campaign(tx, campaign_id)
            if row is None:
                return None
            if row.state not in allowed:
                return row.state
            sql.set_campaign_state(tx, campaign_id, new, now)
            if new == "canceled":
                sql.cancel_pending(tx, campaign_id, now)
            return "ok"

        verdict = await self.store.write(unit)
        if verdict is None:
            raise CallCampaignError("not_found", f"no call campaign {campaign_id}")
        if verdict != "ok":
            raise CallCampaignError(
                "conflict",
                f"campaign {campaign_id} is {verdict}; only a {' or '.join(allowed)} one can be {new}",
            )
        campaign = self._campaigns.get(campaign_id)
        if campaign is not None:
            campaign.state, campaign.dirty = new, True
        self._wake.set()
        log.info("call campaign state changed", campaign_id=campaign_id, state=new, by=actor)
        view = await self.get(campaign_id)
        assert view is not None
        return view


def progress_data(campaign_id: str, name: str | None, state: str, counts: dict[str, int]) -> dict[str, Any]:
    """``campaign.progress`` data; ``kind`` tells call campaigns from SMS campaigns (same event type)."""
    return {"campaign_id": campaign_id, "kind": "call", "name": name, "state": state, **counts}


def campaign_view(row: sql.CampaignRow, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        **row.spec,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "finished_at": row.finished_at,
        "progress": counts,
    }
