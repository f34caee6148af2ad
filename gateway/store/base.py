"""The store interface the services are written against (SQLite today, PostgreSQL can follow).

A service changes state only through a *unit of work*: a plain function ``unit(tx) -> result`` that reads and
writes through a ``StoreTx`` and appends the events describing the change (``tx.append_event``). The store
runs units with GROUP COMMIT: units submitted concurrently are committed together in one transaction, each
inside its own savepoint so that a unit that raises is rolled back alone and its caller gets the exception. A
unit runs in the store's worker thread: it must only touch the ``tx`` (no trio calls, no clock, no sleeping).

``await store.write(unit)`` returns once the transaction holding the unit has committed (durable before
acknowledged); the unit's events have then been handed to the commit listeners (the event bus) in seq order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from gateway.events import Event
from gateway.sms.models import Message

T = TypeVar("T")


class StoreError(Exception):
    """The database cannot be opened or used; the message says which file and why."""


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    message_id: str
    created_at: datetime


@dataclass(frozen=True)
class Fragment:
    """One part of an incoming concatenated SMS waiting for its siblings (TS 23.040 §9.2.3.24.1)."""

    modem: str
    sender_raw: str
    ref: int
    total: int
    ref_bits: int  # 8 or 16: IEI 0x00 and 0x08 references never match each other
    seq: int
    text: str
    encoding: str | None
    pdu_hex: str
    pdu_digest: str
    received_at: datetime

    @property
    def group(self) -> FragmentGroup:
        return FragmentGroup(self.modem, self.sender_raw, self.ref, self.total, self.ref_bits)


@dataclass(frozen=True)
class FragmentGroup:
    modem: str
    sender_raw: str
    ref: int
    total: int
    ref_bits: int


@dataclass(frozen=True)
class PartCandidate:
    """An outgoing part that a status report may belong to."""

    message_id: str
    seq: int
    sent_at: datetime
    recipient: str | None  # the message's E.164 recipient


@dataclass(frozen=True)
class StatusReportRecord:
    modem: str
    reference: int
    recipient_raw: str | None
    tp_status: int
    service_centre_time: datetime | None
    discharge_time: datetime | None
    received_at: datetime
    pdu_hex: str
    message_id: str | None  # None: unmatched, kept for a later part or for an operator
    part_seq: int | None


@dataclass(frozen=True)
class QueuedRef:
    """A message waiting to be sent: enough for the dispatcher to route it."""

    message_id: str
    modem: str | None  # the modem the client asked for
    sent_modem: str | None  # the modem that already sent some parts (the rest must follow on it)
    due_at: datetime | None  # send_at (scheduled) or next_attempt_at (retry)
    category: str | None = None  # for the queue's priority


@dataclass(frozen=True)
class ProviderReportRecord:
    """A delivery report an HTTP provider posted, paired by (provider, provider_id)."""

    provider: str
    provider_id: str
    status: str  # delivered | undelivered | failed | pending
    raw_status: str
    error_code: str | None
    received_at: datetime
    message_id: str | None = None  # None: no message with that provider id (yet)
    id: int | None = None  # row id once stored


class StoreTx(ABC):
    """Operations available to a unit of work (writes) or a query (reads)."""

    # --- events -------------------------------------------------------------------------------------------
    @abstractmethod
    def append_event(self, type: str, data: dict[str, Any]) -> Event: ...

    # --- messages -----------------------------------------------------------------------------------------
    @abstractmethod
    def insert_message(self, message: Message) -> None:
        """Insert a message and its ``part_list``."""

    @abstractmethod
    def get_message(self, message_id: str) -> Message | None: ...

    @abstractmethod
    def list_messages(
        self, *, status: str | None, direction: str | None, before_id: str | None, limit: int
    ) -> list[Message]:
        """Newest first (ids sort by creation time), strictly older than ``before_id``."""

    @abstractmethod
    def update_message(self, message_id: str, **changes: Any) -> None:
        """Set Message fields (by their dataclass names); ``updated_at`` is set by the caller."""

    @abstractmethod
    def update_part(self, message_id: str, seq: int, **changes: Any) -> None: ...

    @abstractmethod
    def messages_in_status(self, status: str) -> list[Message]: ...

    @abstractmethod
    def queued_refs(self, *, due_by: datetime | None) -> list[QueuedRef]:
        """Queued messages in id order: those without a retry time, plus those whose retry is due by
        ``due_by`` (all of them when ``due_by`` is None)."""

    @abstractmethod
    def scheduled_due(self, due_by: datetime) -> list[str]:
        """Ids of scheduled messages whose send_at <= due_by."""

    @abstractmethod
    def next_due_time(self, after: datetime) -> datetime | None:
        """Earliest send_at of a scheduled message or next_attempt_at of a queued one, later than ``after``
        (what is due already has been released)."""

    # --- idempotency keys ---------------------------------------------------------------------------------
    @abstractmethod
    def get_idempotency(self, key: str) -> IdempotencyRecord | None: ...

    @abstractmethod
    def put_idempotency(self, record: IdempotencyRecord) -> None:
        """Insert or replace."""

    @abstractmethod
    def delete_idempotency_before(self, cutoff: datetime) -> int: ...

    # --- incoming -----------------------------------------------------------------------------------------
    @abstractmethod
    def inbound_pdu_seen(self, pdu_digest: str) -> bool:
        """True when this exact PDU was stored already (as a part or a waiting fragment)."""

    @abstractmethod
    def add_fragment(self, fragment: Fragment) -> bool:
        """Store a fragment; False if that part of that group is already stored (duplicate)."""

    @abstractmethod
    def group_fragments(self, group: FragmentGroup) -> list[Fragment]: ...

    @abstractmethod
    def delete_group(self, group: FragmentGroup) -> None: ...

    @abstractmethod
    def groups_started_before(self, cutoff: datetime) -> list[FragmentGroup]: ...

    @abstractmethod
    def earliest_group_start(self) -> datetime | None: ...

    @abstractmethod
    def insert_rejected_pdu(self, modem: str, pdu_hex: str, error: str, received_at: datetime) -> None: ...

    # --- status reports -----------------------------------------------------------------------------------
    @abstractmethod
    def report_candidates(self, modem: str, reference: int, sent_after: datetime) -> list[PartCandidate]:
        """Outgoing parts sent by ``modem`` with TP-MR ``reference`` since ``sent_after``, newest first."""

    @abstractmethod
    def insert_status_report(self, record: StatusReportRecord) -> None: ...

    @abstractmethod
    def unmatched_reports(
        self, modem: str, reference: int, received_after: datetime
    ) -> list[StatusReportRecord]: ...

    @abstractmethod
    def match_report(self, record: StatusReportRecord, message_id: str, part_seq: int) -> None:
        """Attach a stored unmatched report to a part."""


    # --- routing (issue 4) ---------------------------------------------------------------------------------
    @abstractmethod
    def route_usage(self, day: str) -> dict[str, int]:
        """SMS parts counted per route on ``day`` (YYYY-MM-DD, gateway timezone)."""

    @abstractmethod
    def add_route_usage(self, route: str, day: str, parts: int) -> int:
        """Add ``parts`` (negative to release) to the route's count for ``day``; returns the new count."""

    @abstractmethod
    def queued_for_reroute(self, route: str) -> list[Message]:
        """Queued ``auto`` messages that last failed on ``route`` or whose first parts went out from it."""

    @abstractmethod
    def message_by_provider_id(self, provider: str, provider_id: str) -> Message | None: ...

    @abstractmethod
    def insert_provider_report(self, record: ProviderReportRecord) -> int:
        """Store a report; returns its row id."""

    @abstractmethod
    def unmatched_provider_reports(self, provider: str, provider_id: str) -> list[ProviderReportRecord]:
        """Reports for that id stored before the message's provider id was committed, oldest first."""

    @abstractmethod
    def match_provider_report(self, report_id: int, message_id: str) -> None: ...


class Store(ABC):
    """A durable store with group-committed units of work and the event journal (``EventJournal``)."""

    @abstractmethod
    async def write(self, unit: Callable[[StoreTx], T], *, light: bool = False) -> T:
        """Commit ``unit`` (group commit) and return its result. ``light``: the unit writes a few rows by key
        (and events), so the store may commit it without a thread hop (see ``gateway/store/sqlite.py``)."""

    @abstractmethod
    async def read(self, query: Callable[[StoreTx], T]) -> T: ...

    @abstractmethod
    def after_commit(self, callback: Callable[[], None]) -> None:
        """Called inside a unit of work: run ``callback`` on the trio thread once the transaction holding the
        unit has committed, and never if the unit rolls back. Called outside a unit: run it now."""

    @abstractmethod
    async def close(self) -> None: ...

    # EventJournal
    @property
    @abstractmethod
    def epoch(self) -> str: ...

    @property
    @abstractmethod
    def last_seq(self) -> int: ...

    @abstractmethod
    def add_commit_listener(self, listener: Callable[[list[Event]], None]) -> None: ...

    @abstractmethod
    async def append_event(self, type: str, data: dict[str, Any]) -> Event: ...

    @abstractmethod
    async def read_events(self, after_seq: int, limit: int) -> list[Event]: ...

    @abstractmethod
    def set_journal_retention(self, *, max_events: int, max_age_s: float) -> None: ...

    @abstractmethod
    async def prune_journal(self) -> int: ...

    @abstractmethod
    async def reset_journal(self) -> str:
        """Drop every journalled event and start a new epoch (seq restarts at 1); returns the new epoch."""
