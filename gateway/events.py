"""The event bus: every state change becomes an Event with a sequence number, journalled, then fanned out.

Durability and order: an event is written to the journal table IN THE SAME TRANSACTION as the state change
it describes (a store unit of work calls ``tx.append_event``), and is fanned out only after that transaction
committed. ``EventBus.publish`` does the same for standalone events (``modem.state_changed``). The store
calls the bus's commit listener synchronously, in sequence order, right after each commit, so live
subscribers see events in ``seq`` order and never an event that could still be rolled back.

Resume: ``subscribe(since=(epoch, seq))`` replays the journal after ``seq`` and then continues live, without
gap or duplicate (FreeSWITCH Core-UUID + Event-Sequence and the Discord gateway's Resume are the models).
When the epoch differs (the journal was reset) or ``seq`` is older than what the journal retains, the first
item is a ``ResyncRequired`` marker: the client must reload its state over REST.

Slow consumers never slow publishers: each subscription has a bounded queue; when it is full the
subscription is marked ``overflowed`` and ends (the API closes that WebSocket with code 4008).
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
import trio

log = structlog.get_logger("events")

EVENT_TYPES = frozenset(
    {
        "sms.queued",
        "sms.scheduled",
        "sms.sending",
        "sms.sent",
        "sms.delivered",
        "sms.undelivered",
        "sms.failed",
        "sms.canceled",
        "sms.received",
        "modem.state_changed",
        # issue 4 (SMS platform)
        "sms.rerouted",  # routing: a queued message moved off a modem that cooled off
        "route.cooling_off",  # routing: a route failed repeatedly and rests (modem reset requested)
        "route.recovered",  # routing: a route that cooled off takes work again
        "campaign.progress",
        "sms.opted_out",
        "verification.sent",
        "verification.checked",
        "webhook.dead_lettered",
        "webhook.disabled",
        "provider.report",
        # issue 5 (voice lines)
        "line.state_changed",
        "call.incoming",
        "call.ringing",
        "call.attempt",
        "call.answered",
        "call.dtmf",
        "call.missed",
        "call.waiting",
        "call.ended",
        "playback.finished",
        "recording.ready",
        "recording.accessed",
        # issue 6 (IVR)
        "ivr.entered",
        "ivr.node",
        "ivr.input_invalid",
        "ivr.exhausted",
        "ivr.published",
        "queue.joined",
        "queue.position",
        "queue.left",
        "survey.answered",
        "survey.completed",
        "voicemail.ready",
    }
)

REPLAY_PAGE = 500


def utc_now() -> datetime:
    return datetime.now(UTC)


def _format_time_by_fields(value: datetime) -> str:
    """The reference spelling, field by field (also for years before 1000, which isoformat pads otherwise)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: every time in the gateway is timezone-aware")
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def format_time(value: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds and "Z" ("2026-11-27T06:00:00.123Z"); sorts as text in time order.

    On the submit hot path (~7 calls per message: response, row, parts, event), so: ``isoformat`` is one C
    call where ``strftime`` and an f-string are three (about a quarter of the time), and the last result is
    remembered by identity (a new message's created_at, updated_at and part updated_at are one object; the
    memo holds a reference, so the id cannot be reused while cached; the tuple is replaced whole, so another
    thread reads an old or a new pair). Naive values raise ValueError."""
    global _last_formatted
    if value is None:
        return None
    last = _last_formatted
    if last[0] is value:
        return last[1]
    if value.tzinfo is None:
        return _format_time_by_fields(value)  # raises
    utc = value.astimezone(UTC)
    if utc.year < 1000:
        return _format_time_by_fields(value)
    # "YYYY-MM-DDTHH:MM:SS.mmm+00:00": the first 23 characters, milliseconds truncated as by the fields.
    text = utc.isoformat(timespec="milliseconds")[:23] + "Z"
    _last_formatted = (value, text)
    return text


_last_formatted: tuple[datetime | None, str | None] = (None, None)


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class Event:
    """One journalled event. ``payload`` is the JSON envelope, serialised once and shared by every client."""

    id: str  # "<epoch>:<seq>"
    type: str
    epoch: str
    seq: int
    time: str
    data: dict[str, Any]
    payload: bytes = field(repr=False, compare=False)
    # Transport encodings of ``payload`` (e.g. the API's WebSocket frame), computed by the first client that
    # needs one and shared by all the others: the same bytes fan out to every connection.
    encodings: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property
    def text(self) -> str:
        """The payload as text, decoded once (a WebSocket text frame needs str) for every client."""
        return self.payload.decode("utf-8")

    @classmethod
    def build(cls, type: str, epoch: str, seq: int, time: str, data: dict[str, Any]) -> Event:
        envelope = {
            "id": f"{epoch}:{seq}",
            "type": type,
            "epoch": epoch,
            "seq": seq,
            "time": time,
            "data": data,
        }
        payload = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        return cls(envelope["id"], type, epoch, seq, time, data, payload)

    @classmethod
    def from_payload(cls, payload: bytes) -> Event:
        env = json.loads(payload)
        return cls(env["id"], env["type"], env["epoch"], env["seq"], env["time"], env["data"], bytes(payload))


@dataclass(frozen=True)
class ResyncRequired:
    """First item of a subscription whose resume point is unknown: reload state, then follow from here.

    ``epoch``/``seq`` are the current journal position (the live events that follow have seq > ``seq``).
    """

    epoch: str
    seq: int
    reason: str  # "epoch_changed" | "too_old" | "ahead_of_journal"


class EventJournal(Protocol):
    """What the bus needs from the store (``gateway.store.base.Store`` implements it)."""

    @property
    def epoch(self) -> str: ...

    @property
    def last_seq(self) -> int: ...

    def add_commit_listener(self, listener: Callable[[list[Event]], None]) -> None: ...

    async def append_event(self, type: str, data: dict[str, Any]) -> Event: ...

    async def read_events(self, after_seq: int, limit: int) -> list[Event]: ...

    def set_journal_retention(self, *, max_events: int, max_age_s: float) -> None: ...


class Subscription:
    """Async iterator of Event | ResyncRequired. Ends when closed or when its queue overflowed."""

    def __init__(self, bus: EventBus, since: tuple[str, int] | None, types: set[str] | None, size: int):
        self._bus = bus
        self._since = since
        self._types = frozenset(types) if types else None
        self._send, self._receive = trio.open_memory_channel[Event](size)
        # Everything up to live_from is committed and readable from the journal; everything after it reaches
        # this subscription through the queue (registration and fan-out both run synchronously in trio).
        self._live_from = bus.last_seq
        self._backlog: deque[Event | ResyncRequired] | None = None if since is not None else deque()
        self._last_delivered = self._live_from
        self.overflowed = False
        self.closed = False
        # Optional ``sink(events) -> bool`` that delivers one commit's events synchronously (the API writes
        # their frames to the client's socket in one write if it takes them at once). Used only while the
        # consumer waits with nothing queued, so order is kept; False means "not now": they are queued.
        self.direct_sink: Callable[[list[Event]], bool] | None = None
        self._idle = False  # the consumer waits in receive() and the queue is empty

    def _offer(self, events: list[Event]) -> None:
        """Called by the bus with each commit's events, in seq order; never blocks."""
        if self.closed:
            return
        if self._types is not None:
            events = [event for event in events if event.type in self._types]
            if not events:
                return
        if self._idle:
            if self.direct_sink is not None and self.direct_sink(events):
                self._last_delivered = events[-1].seq
                return
            self._idle = False  # these are queued: later events must queue behind them
        send = self._send.send_nowait
        for event in events:
            try:
                send(event)
            except trio.WouldBlock:
                self.overflowed = True
                self._end()
                log.warning("subscription overflowed", queue_size=self._send.statistics().max_buffer_size)
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return

    def close(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._send.close()
            self._bus._forget(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event | ResyncRequired:
        if self._backlog is None:
            self._backlog = deque(await self._replay())
        if self.overflowed:
            raise StopAsyncIteration
        if self._backlog:
            return self._backlog.popleft()
        while True:
            try:
                try:
                    event = self._receive.receive_nowait()
                except trio.WouldBlock:
                    self._idle = True
                    try:
                        event = await self._receive.receive()
                    finally:
                        self._idle = False
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
            if self.overflowed:
                raise StopAsyncIteration
            if event.seq > self._last_delivered:
                self._last_delivered = event.seq
                return event

    async def next_batch(self, limit: int = 512) -> list[Event | ResyncRequired]:
        """At least one item (waiting for it), plus whatever else is already queued, up to ``limit``.

        A burst (32 lines ringing at once, a campaign's first second) then costs each client one wake-up and
        one write instead of one per event. An empty list means the subscription ended (closed/overflowed).
        """
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        batch = [first]
        backlog = self._backlog
        while backlog and len(batch) < limit:
            batch.append(backlog.popleft())
        receive = self._receive
        while len(batch) < limit and not self.overflowed:
            try:
                event = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if event.seq > self._last_delivered:
                self._last_delivered = event.seq
                batch.append(event)
        return batch

    async def _replay(self) -> list[Event | ResyncRequired]:
        assert self._since is not None
        epoch, seq = self._since
        bus = self._bus
        if epoch != bus.epoch:
            return [ResyncRequired(bus.epoch, self._live_from, "epoch_changed")]
        if seq > self._live_from:
            return [ResyncRequired(bus.epoch, self._live_from, "ahead_of_journal")]
        items: list[Event | ResyncRequired] = []
        cursor = seq
        while cursor < self._live_from:
            page = await bus.journal.read_events(cursor, min(REPLAY_PAGE, self._live_from - cursor))
            if not page or page[0].seq != cursor + 1:
                # The events right after `seq` were pruned: a gap would follow, so ask for a resync.
                return [ResyncRequired(bus.epoch, self._live_from, "too_old")]
            for event in page:
                if event.seq > self._live_from:
                    break
                if self._types is None or event.type in self._types:
                    items.append(event)
                cursor = event.seq
        self._last_delivered = self._live_from
        return items


class EventBus:
    """Journal-backed publish/subscribe. See the module docstring for the guarantees."""

    def __init__(self, journal: EventJournal, *, client_queue_size: int = 1000):
        self.journal = journal
        self.client_queue_size = client_queue_size
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []
        journal.add_commit_listener(self._fan_out)

    @classmethod
    async def open(
        cls,
        store: EventJournal,
        *,
        max_events: int = 100_000,
        max_age_days: float = 7.0,
        client_queue_size: int = 1000,
    ) -> EventBus:
        """The bus on top of a store's journal, with the journal's retention policy."""
        store.set_journal_retention(max_events=max_events, max_age_s=max_age_days * 86400.0)
        return cls(store, client_queue_size=client_queue_size)

    @property
    def epoch(self) -> str:
        return self.journal.epoch

    @property
    def last_seq(self) -> int:
        return self.journal.last_seq

    seq = last_seq

    async def publish(self, type: str, data: dict[str, Any]) -> Event:
        """Journal a standalone event (group-committed with other writes), fan it out, return it."""
        return await self.journal.append_event(type, data)

    def subscribe(
        self,
        since: tuple[str, int] | None = None,
        *,
        types: Iterable[str] | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        sub = Subscription(self, since, set(types) if types else None, queue_size or self.client_queue_size)
        self._subscriptions.add(sub)
        return sub

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """In-process listener (e.g. the SMS dispatcher), called for each committed event; must not block or
        raise. Unlike a Subscription it has no queue and cannot overflow."""
        self._listeners.append(listener)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for sub in list(self._subscriptions):
            sub.close()

    def _forget(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def _fan_out(self, events: list[Event]) -> None:
        for event in events:
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:  # a listener bug must not stop fan-out to the others
                    log.exception("event listener failed", listener=repr(listener), event_type=event.type)
        for sub in list(self._subscriptions):  # a commit's events together: one write per client
            sub._offer(events)
