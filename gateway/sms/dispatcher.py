"""SmsDispatcher: drives the modems. Sends queued messages, releases scheduled ones, retries, and turns what
the modems receive (SMS, status reports, state changes) into committed state and events.

Sending. One sender task per modem, one message at a time, all parts of a message back to back on the same
modem (operators drop multipart messages whose parts arrive minutes apart: gammu #345). A message that names
a modem waits for that modem; others go to a shared FIFO from which the first idle ready modem takes the
oldest (work stealing, so a busy or slow modem never holds a message another modem could send). Each part's
TP-MR is committed as soon as +CMGS returns it. Send errors (drivers.gsm.errors.SendError.kind):
``temporary`` -> back to queued with a backoff delay, at most ``send_retries`` times, then failed;
``permanent`` -> failed with the +CMS code; ``config`` -> like temporary for the message, and the modem rests
``modem_error_pause_s``; ``ModemUnavailable`` -> requeued for any modem (not counted as an attempt).

Scheduling. One timer task sleeps until the earliest due time found in the database (send_at of scheduled
messages, next_attempt_at of retries, deadline of an incomplete multipart, housekeeping), and is woken early
whenever new work is committed. State lives in the database, so a restart resumes the same schedule.

Receiving. For each IncomingSms / StatusReport: decode, commit, and only then ``modem.acknowledge(item)``
(delete from SIM / +CNMA): a crash before the commit leaves the message on the SIM, a crash between commit
and acknowledge makes the modem report it again, and the PDU digest recognises it as a duplicate.

Crash in ``sending`` (policy, applied by ``run`` before anything is sent). A message found in ``sending``
was being sent when the process died:
  * parts with a recorded TP-MR were accepted by the network: they are not sent again;
  * parts without a TP-MR are re-queued and sent again, on the same modem when other parts already went out
    from it (the recipient's phone joins parts by sender number). The part that was in flight at the crash
    may have been accepted without its TP-MR having been committed: it is sent a second time. Because each
    modem sends one part at a time, that is at most one duplicate SMS per modem that was mid-send, and
    nothing is lost (at-least-once, like Kannel's store: "some messages can duplicate when the system is
    taken down violently");
  * a message whose parts all have a TP-MR is marked sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
import trio

from drivers.gsm import pdu
from drivers.gsm.modem import IncomingSms, ModemStatus, ModemUnavailable, SendError, StatusReport
from gateway.events import Event, EventBus, format_time, parse_time, utc_now
from gateway.numbers import DEFAULT_REGION, to_e164_or_none
from gateway.sms.categories import Categories
from gateway.sms.models import (
    FINAL_STATUSES,
    TP_ST_VALIDITY_EXPIRED,
    InboundHook,
    Message,
    MessageStatus,
    PartStatus,
    SmsSettings,
    part_status_for_tp_st,
)
from gateway.sms.providers import apply_provider_report
from gateway.sms.reassembly import ReceivedPiece, add_fragment, expire_groups, pdu_digest, record_received
from gateway.sms.routing import RouteHealth, RoutePolicy, SendQueues
from gateway.store.base import Fragment, StatusReportRecord, Store, StoreTx

log = structlog.get_logger("sms.dispatcher")

HOUSEKEEPING_INTERVAL = timedelta(hours=1)  # idempotency keys past their lifetime are deleted this often
UNAVAILABLE_PAUSE_S = (
    1.0  # a modem that refused with ModemUnavailable is not offered work again for this long
)
EARLY_REPORT_WINDOW = timedelta(minutes=10)  # a report may be processed before its part's TP-MR is committed
SCTS_SKEW = timedelta(minutes=5)  # tolerance between our clock and the SC's TP-SCTS when pairing reports
RELEASE_BATCH = 500

__all__ = ["InboundHook", "SmsDispatcher"]


@dataclass
class _RouteSlot:
    """A route the dispatcher sends through: a modem (one message at a time) or an HTTP provider."""

    name: str
    kind: str  # "modem" | "provider"
    device: Any  # GsmModem-like (send_pdu, status, events) or HttpSmsRoute-like (send, config)
    workers: int = 1
    in_flight: set[str] = field(default_factory=set)
    last_state: str | None = None
    rest_until: float = -math.inf  # trio time before which this route takes no work
    health: RouteHealth = field(default_factory=RouteHealth)
    announced_cooling: bool = False  # route.cooling_off published, route.recovered not yet
    capped_day: str | None = None  # local day on which the daily cap was reached

    @property
    def modem(self) -> Any:  # the name the receive path has always used
        return self.device

    def ready(self) -> bool:
        if self.kind == "provider":
            return True
        return getattr(getattr(self.device, "status", None), "state", None) == "ready"


class SmsDispatcher:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        modems: Mapping[str, Any],
        *,
        settings: Any = None,
        region: str = DEFAULT_REGION,
        clock: Callable[[], datetime] = utc_now,
        service: Any = None,
        providers: Mapping[str, Any] | None = None,
        categories: Categories | None = None,
        route_policy: RoutePolicy | None = None,
        inbound_hooks: Sequence[InboundHook] = (),
    ):
        self._store = store
        self._bus = bus
        self.settings = SmsSettings.from_config(settings)
        self.region = region
        self._clock = clock
        self._service = service
        self.categories = (
            categories or getattr(service, "categories", None) or Categories.from_config(settings)
        )
        self.route_policy = (
            route_policy or getattr(service, "route_policy", None) or RoutePolicy.from_config(settings)
        )
        self.inbound_hooks = tuple(inbound_hooks)
        self._slots = {name: _RouteSlot(name, "modem", modem) for name, modem in modems.items()}
        for name, route in (providers or {}).items():
            if name in self._slots:
                raise ValueError(f"route name {name!r} is used by a modem and a provider")
            concurrency = getattr(getattr(route, "config", None), "concurrency", 1)
            self._slots[name] = _RouteSlot(name, "provider", route, workers=max(1, int(concurrency)))
        self._queues = SendQueues()
        self._work_changed = trio.Event()
        self._schedule_changed = trio.Event()
        self._stopping = False
        self._senders_done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._next_housekeeping: datetime | None = None
        bus.add_listener(self._on_event)
        if service is not None:
            service.attach_dispatcher(self)

    # --- public -------------------------------------------------------------------------------------------
    def add_inbound_hook(self, hook: InboundHook) -> None:
        """Add a hook after construction (the composition root builds the consent/reply services later)."""
        self.inbound_hooks = (*self.inbound_hooks, hook)

    def queue_depth(self, modem: str) -> int:
        """Messages waiting for (or being sent by) this route; the shared queue is ``shared_depth``."""
        slot = self._slots.get(modem)
        if slot is None:
            return 0
        return self._queues.named_depth(modem) + len(slot.in_flight)

    @property
    def shared_depth(self) -> int:
        return self._queues.shared_depth

    def routes(self) -> list[dict[str, Any]]:
        """Every route with its health, queue and today's count against its cap (for the API and logs)."""
        now = trio.current_time()
        out = []
        for slot in self._slots.values():
            out.append(
                {
                    "name": slot.name,
                    "kind": slot.kind,
                    "ready": slot.ready(),
                    "healthy": self._healthy(slot, now),
                    "cooling_off": slot.health.cooling(now),
                    "consecutive_failures": slot.health.failures,
                    "capped": slot.capped_day == self._today(),
                    "daily_cap": self.route_policy.daily_cap(slot.name),
                    "queue_depth": self.queue_depth(slot.name),
                }
            )
        return out

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then run the senders, the receivers and the timer until ``stop()`` or cancellation."""
        await self._recover_interrupted_sends()
        now = self._clock()
        for ref in await self._store.read(lambda tx: tx.queued_refs(due_by=now)):
            self._enqueue(ref.message_id, ref.sent_modem or ref.modem, ref.category)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer)
            for slot in self._slots.values():
                if slot.kind == "modem":
                    nursery.start_soon(self._receiver, slot)
            nursery.start_soon(self._run_senders)
            run_deferred = getattr(self._service, "run_deferred", None)
            if run_deferred is not None:
                nursery.start_soon(run_deferred)
            task_status.started()

    async def stop(self) -> None:
        """Stop taking messages, let each route finish the message in flight (its TP-MR or provider id gets
        committed), then end ``run``. Messages not yet sent stay queued for the next start."""
        self._stopping = True
        self._notify_work()
        if self._nursery is not None:
            await self._senders_done.wait()
            self._nursery.cancel_scope.cancel()

    # --- bus listener: new work ---------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.type == "sms.queued":
            due = parse_time(event.data.get("next_attempt_at"))
            if due is None or due <= self._clock():
                self._enqueue(event.data["id"], event.data.get("modem"), event.data.get("category"))
            else:
                self._notify_schedule()
        elif event.type == "sms.scheduled":
            self._notify_schedule()
        elif event.type == "sms.canceled":
            self._queues.remove(event.data["id"])

    def _enqueue(self, message_id: str, route: str | None, category: str | None) -> None:
        if route is not None and route not in self._slots:
            log.error(
                "message names a route that is not configured; it stays queued",
                message_id=message_id,
                route=route,
            )
            return
        pushed = self._queues.push(
            message_id,
            priority=self.categories.priority(category),
            route=route,
            provider_ok=self.categories.allows_provider(category),
        )
        if pushed:
            self._notify_work()

    def _notify_work(self) -> None:
        self._work_changed.set()
        self._work_changed = trio.Event()

    def _notify_schedule(self) -> None:
        self._schedule_changed.set()

    # --- route health -------------------------------------------------------------------------------------
    def _today(self) -> str:
        return self.categories.local_day(self._clock())

    def _healthy(self, slot: _RouteSlot, now: float) -> bool:
        return (
            slot.ready()
            and not slot.health.cooling(now)
            and now >= slot.rest_until
            and slot.capped_day != self._today()
        )

    def _provider_may_take_shared(self, now: float) -> bool:
        """Auto messages go to a provider only when no modem is healthy, or past the overflow depth."""
        healthy = sum(1 for s in self._slots.values() if s.kind == "modem" and self._healthy(s, now))
        if healthy == 0:
            return True
        overflow = self.route_policy.provider_overflow
        return overflow is not None and self._queues.shared_depth > overflow * healthy

    async def _route_failed(self, slot: _RouteSlot) -> None:
        """Count a failed send; after ``cool_off.failures`` in a row the route cools off: it takes no work,
        the modem is reset, and the auto messages that failed on it are rerouted at once."""
        policy = self.route_policy.cool_off
        if not slot.health.failed(trio.current_time(), policy):
            return
        slot.announced_cooling = True
        log.warning("route cools off after repeated failures", route=slot.name, seconds=policy.seconds)
        await self._bus.publish(
            "route.cooling_off",
            {"route": slot.name, "kind": slot.kind, "failures": policy.failures, "seconds": policy.seconds},
        )
        now = self._clock()
        name = slot.name

        def unit(tx: StoreTx) -> list[tuple[str, str | None]]:
            moved = []
            for message in tx.queued_for_reroute(name):
                if message.sent_modem == name:  # its first parts went out here: all are sent again
                    for part in message.part_list:
                        tx.update_part(
                            message.id,
                            part.seq,
                            status=PartStatus.QUEUED,
                            reference=None,
                            modem=None,
                            sent_at=None,
                            updated_at=now,
                        )
                tx.update_message(message.id, sent_modem=None, next_attempt_at=None, updated_at=now)
                message.sent_modem = None
                tx.append_event("sms.rerouted", message.event_data(from_route=name, reason="cooling_off"))
                moved.append((message.id, message.category))
            return moved

        for message_id, category in await self._store.write(unit):
            self._queues.remove(message_id)
            self._enqueue(message_id, None, category)
        if slot.kind == "modem" and self._nursery is not None:
            self._nursery.start_soon(self._reset_modem, slot)
        self._notify_work()

    async def _reset_modem(self, slot: _RouteSlot) -> None:
        """AT+CFUN=1,1 through the driver when it offers ``reset()``, else ask it to initialise again."""
        reset = getattr(slot.device, "reset", None)
        reinit = getattr(slot.device, "request_reinit", None)
        try:
            if reset is not None:
                await reset()
                log.info("modem reset requested", modem=slot.name)
            elif reinit is not None:
                reinit()
                log.info("modem re-initialisation requested", modem=slot.name)
            else:
                log.warning(
                    "modem driver offers no reset; it only rests during the cool-off", modem=slot.name
                )
        except Exception as exc:  # a failed reset must not end the dispatcher
            log.warning("modem reset failed", modem=slot.name, error=f"{type(exc).__name__}: {exc}")

    async def _route_succeeded(self, slot: _RouteSlot) -> None:
        slot.health.succeeded()
        if slot.announced_cooling:
            slot.announced_cooling = False
            log.info("route recovered", route=slot.name)
            await self._bus.publish("route.recovered", {"route": slot.name, "kind": slot.kind})

    # --- crash recovery -----------------------------------------------------------------------------------
    async def _recover_interrupted_sends(self) -> None:
        now = self._clock()

        def unit(tx: StoreTx) -> list[tuple[str, str]]:
            outcome = []
            for message in tx.messages_in_status(MessageStatus.SENDING):
                unsent = [p for p in message.part_list if p.reference is None]
                if not unsent:
                    sent_at = max((p.sent_at for p in message.part_list if p.sent_at), default=now)
                    tx.update_message(message.id, status=MessageStatus.SENT, sent_at=sent_at, updated_at=now)
                    message.status = MessageStatus.SENT
                    tx.append_event("sms.sent", message.event_data(recovered=True))
                    self._finalize_if_reported(tx, message.id, now)
                    outcome.append((message.id, "sent"))
                    continue
                any_sent = len(unsent) < len(message.part_list)
                for part in unsent:
                    tx.update_part(message.id, part.seq, status=PartStatus.QUEUED, updated_at=now)
                sent_modem = message.sent_modem if any_sent else None
                tx.update_message(
                    message.id,
                    status=MessageStatus.QUEUED,
                    sent_modem=sent_modem,
                    updated_at=now,
                    next_attempt_at=None,
                )
                message.status, message.sent_modem = MessageStatus.QUEUED, sent_modem
                tx.append_event("sms.queued", message.event_data(recovered=True))
                outcome.append((message.id, "requeued"))
            return outcome

        for message_id, what in await self._store.write(unit):
            log.warning("message was being sent at the last stop", message_id=message_id, outcome=what)

    # --- sending ------------------------------------------------------------------------------------------
    async def _run_senders(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for slot in self._slots.values():
                    for _ in range(slot.workers):
                        nursery.start_soon(self._sender, slot)
        finally:
            self._senders_done.set()

    async def _sender(self, slot: _RouteSlot) -> None:
        while True:
            message_id = await self._next_message(slot)
            if message_id is None:
                return
            slot.in_flight.add(message_id)
            try:
                await self._send(slot, message_id)
            finally:
                slot.in_flight.discard(message_id)

    async def _next_message(self, slot: _RouteSlot) -> str | None:
        while True:
            changed = self._work_changed
            if self._stopping:
                return None
            now = trio.current_time()
            if self._healthy(slot, now):
                shared = slot.kind == "modem" or self._provider_may_take_shared(now)
                message_id = self._queues.pop(slot.name, shared=shared, provider=slot.kind == "provider")
                if message_id is not None:
                    return message_id
            wake = [t for t in (slot.rest_until, slot.health.cooling_until) if t is not None and t > now]
            with trio.move_on_at(min(wake) if wake else math.inf):
                await changed.wait()

    async def _start(self, slot: _RouteSlot, message_id: str) -> tuple[str, Message | None]:
        """Commit queued -> sending on this route, unless quiet hours hold it or the daily cap is reached."""
        now = self._clock()
        day = self.categories.local_day(now)
        cap = self.route_policy.daily_cap(slot.name)
        categories, policy = self.categories, self.route_policy

        def start(tx: StoreTx) -> tuple[str, Message | None]:
            message = tx.get_message(message_id)
            if message is None or message.status != MessageStatus.QUEUED:
                return "stale", None  # canceled, or a stale queue entry
            if message.next_attempt_at is not None and message.next_attempt_at > now:
                return "stale", None  # a retry that is not due yet: the timer re-queues it
            held_until = categories.quiet_until(message.category, now)
            if held_until is not None and not any(p.reference is not None for p in message.part_list):
                tx.update_message(
                    message_id, status=MessageStatus.SCHEDULED, send_at=held_until, updated_at=now
                )
                message.status, message.send_at = MessageStatus.SCHEDULED, held_until
                tx.append_event(
                    "sms.scheduled", message.event_data(send_at=format_time(held_until), held="quiet_hours")
                )
                return "held", message
            parts = self._parts_to_count(slot, message)
            if cap is not None:
                used = tx.route_usage(day).get(slot.name, 0)
                if used > 0 and used + parts > cap:
                    return "capped", message
            tx.add_route_usage(slot.name, day, parts)
            cost = policy.cost(slot.kind, slot.name, message.parts)
            tx.update_message(
                message_id,
                status=MessageStatus.SENDING,
                sent_modem=slot.name,
                cost=cost,
                updated_at=now,
                next_attempt_at=None,
            )
            message.status, message.sent_modem, message.cost = MessageStatus.SENDING, slot.name, cost
            tx.append_event("sms.sending", message.event_data(cost=cost))
            return "sending", message

        return await self._store.write(start)

    @staticmethod
    def _parts_to_count(slot: _RouteSlot, message: Message) -> int:
        """Parts this attempt sends (the daily cap counts SMS parts)."""
        if slot.kind == "provider":
            return message.parts
        return sum(1 for p in message.part_list if p.reference is None)

    async def _send(self, slot: _RouteSlot, message_id: str) -> None:
        outcome, message = await self._start(slot, message_id)
        if outcome == "held":
            assert message is not None
            log.info("quiet hours: message held", message_id=message_id, until=format_time(message.send_at))
            self._notify_schedule()
            return
        if outcome == "capped":
            assert message is not None
            slot.capped_day = self._today()
            log.warning(
                "route reached its daily cap; it takes no more messages today",
                route=slot.name,
                cap=self.route_policy.daily_cap(slot.name),
            )
            self._enqueue(message_id, message.sent_modem or message.modem, message.category)
            self._notify_work()
            return
        if message is None:
            return
        mlog = log.bind(route=slot.name, message_id=message_id)
        if slot.kind == "provider":
            await self._send_via_provider(slot, message, mlog)
        else:
            await self._send_via_modem(slot, message, mlog)

    async def _send_via_provider(self, slot: _RouteSlot, message: Message, mlog: Any) -> None:
        try:
            result = await slot.device.send(message.to, message.text, message_id=message.id)
        except Exception as exc:  # a route bug must fail this message, not the dispatcher
            mlog.exception("provider send raised an unexpected error")
            await self._send_failed(
                slot, message, None, "permanent", None, f"internal error: {type(exc).__name__}: {exc}", mlog
            )
            return
        if result.accepted:
            await self._provider_sent(slot, message, result.provider_id)
            await self._route_succeeded(slot)
            mlog.info("message sent", to=message.to, provider_id=result.provider_id)
            return
        status = f"HTTP {result.status_code}: " if result.status_code is not None else ""
        kind = "permanent" if result.permanent else "temporary"
        await self._send_failed(slot, message, None, kind, None, f"{status}{result.error}", mlog)

    async def _provider_sent(self, slot: _RouteSlot, message: Message, provider_id: str | None) -> None:
        now = self._clock()

        def unit(tx: StoreTx) -> None:
            for part in message.part_list:
                tx.update_part(
                    message.id,
                    part.seq,
                    status=PartStatus.SENT,
                    modem=slot.name,
                    sent_at=now,
                    updated_at=now,
                    error=None,
                )
            tx.update_message(
                message.id,
                status=MessageStatus.SENT,
                sent_at=now,
                provider_id=provider_id,
                updated_at=now,
                error_code=None,
                error_kind=None,
                error_message=None,
            )
            message.status, message.provider_id = MessageStatus.SENT, provider_id
            tx.append_event("sms.sent", message.event_data(provider_id=provider_id, cost=message.cost))
            if provider_id is None:
                return
            # A report that arrived before this commit was stored unmatched: apply it now.
            for record in tx.unmatched_provider_reports(slot.name, provider_id):
                assert record.id is not None
                tx.match_provider_report(record.id, message.id)
                apply_provider_report(tx, message.id, record, now)

        await self._store.write(unit)

    async def _send_via_modem(self, slot: _RouteSlot, message: Message, mlog: Any) -> None:
        unsent = [p for p in message.part_list if p.reference is None]
        for index, part in enumerate(unsent):
            try:
                reference = await slot.device.send_pdu(part.segment_hex, part.tpdu_length)
            except SendError as exc:
                await self._send_failed(slot, message, part.seq, exc.kind, exc.code, exc.message, mlog)
                return
            except ModemUnavailable as exc:
                if self._stopping:  # the modem is stopping with us: keep the parts it sent, resume later
                    await self._requeue_remaining(slot, message, mlog)
                else:
                    await self._modem_unavailable(slot, message, str(exc), mlog)
                return
            except Exception as exc:  # a driver bug must fail this message, not the dispatcher
                mlog.exception("send raised an unexpected error")
                await self._send_failed(
                    slot,
                    message,
                    part.seq,
                    "permanent",
                    None,
                    f"internal error: {type(exc).__name__}: {exc}",
                    mlog,
                )
                return
            last = index == len(unsent) - 1
            part.reference = reference
            await self._part_sent(slot, message, part.seq, reference, last)
            if not last and self._stopping:
                await self._requeue_remaining(slot, message, mlog)
                return
        await self._route_succeeded(slot)
        mlog.info("message sent", to=message.to, parts=message.parts)

    async def _part_sent(
        self, slot: _RouteSlot, message: Message, seq: int, reference: int, last: bool
    ) -> None:
        now = self._clock()

        def unit(tx: StoreTx) -> None:
            tx.update_part(
                message.id,
                seq,
                status=PartStatus.SENT,
                modem=slot.name,
                reference=reference,
                sent_at=now,
                updated_at=now,
                error=None,
            )
            if last:
                tx.update_message(
                    message.id,
                    status=MessageStatus.SENT,
                    sent_at=now,
                    updated_at=now,
                    error_code=None,
                    error_kind=None,
                    error_message=None,
                )
                message.status = MessageStatus.SENT
                tx.append_event(
                    "sms.sent",
                    message.event_data(
                        references=[p.reference for p in message.part_list], cost=message.cost
                    ),
                )
            # A report processed before this TP-MR was committed was stored unmatched: pair it now.
            for record in tx.unmatched_reports(slot.name, reference, now - EARLY_REPORT_WINDOW):
                if _recipient_matches(record.recipient_raw, message.to, self.region):
                    tx.match_report(record, message.id, seq)
                    self._apply_report(tx, message.id, seq, record.tp_status, now)
            if last:
                self._finalize_if_reported(tx, message.id, now)

        await self._store.write(unit)

    async def _send_failed(
        self,
        slot: _RouteSlot,
        message: Message,
        seq: int | None,
        kind: str,
        code: int | None,
        text: str,
        mlog: Any,
    ) -> None:
        """A failed attempt (``seq`` None: the whole message, a provider send). The parts not sent are
        uncounted from the route's daily usage; temporary failures retry with backoff, on any route."""
        now = self._clock()
        day = self.categories.local_day(now)
        retries = self.settings.send_retries
        backoff = self.settings.retry_backoff_s or (0.0,)

        def unit(tx: StoreTx) -> tuple[str, datetime | None]:
            current = tx.get_message(message.id)
            assert current is not None
            seqs = [seq] if seq is not None else [p.seq for p in current.part_list]
            for s in seqs:
                tx.update_part(message.id, s, cms_error=code, error=text, updated_at=now)
            unsent = (
                sum(1 for p in current.part_list if p.reference is None) if seq is not None else len(seqs)
            )
            tx.add_route_usage(slot.name, day, -unsent)
            attempts = current.attempts + 1
            if kind == "permanent" or attempts > retries:
                for s in seqs:
                    tx.update_part(message.id, s, status=PartStatus.FAILED)
                tx.update_message(
                    message.id,
                    status=MessageStatus.FAILED,
                    attempts=attempts,
                    error_code=code,
                    error_kind=kind,
                    error_message=text,
                    last_route=slot.name,
                    final_at=now,
                    updated_at=now,
                )
                current.status = MessageStatus.FAILED
                tx.append_event(
                    "sms.failed",
                    current.event_data(
                        error={"code": code, "kind": kind, "message": text}, attempts=attempts
                    ),
                )
                return "failed", None
            delay = backoff[min(attempts - 1, len(backoff) - 1)]
            due = now + timedelta(seconds=delay)
            any_sent = any(p.reference is not None for p in current.part_list)
            sent_modem = current.sent_modem if any_sent else None
            tx.update_message(
                message.id,
                status=MessageStatus.QUEUED,
                attempts=attempts,
                error_code=code,
                error_kind=kind,
                error_message=text,
                next_attempt_at=due,
                sent_modem=sent_modem,
                last_route=slot.name,
                updated_at=now,
            )
            current.status, current.sent_modem = MessageStatus.QUEUED, sent_modem
            tx.append_event(
                "sms.queued",
                current.event_data(
                    retry=attempts,
                    next_attempt_at=format_time(due),
                    error={"code": code, "kind": kind, "message": text},
                ),
            )
            return "retry", due

        outcome, due = await self._store.write(unit)
        if outcome == "failed":
            mlog.warning("message failed", to=message.to, code=code, kind=kind, error=text)
        else:
            mlog.info("send failed, will retry", code=code, kind=kind, error=text, retry_at=format_time(due))
        if kind == "config":
            slot.rest_until = trio.current_time() + self.settings.modem_error_pause_s
            log.error(
                "route refused a send for a configuration reason; resting it",
                route=slot.name,
                code=code,
                error=text,
                rest_s=self.settings.modem_error_pause_s,
            )
        if kind in ("temporary", "config"):
            await self._route_failed(slot)

    async def _modem_unavailable(self, slot: _RouteSlot, message: Message, text: str, mlog: Any) -> None:
        """Requeue for any modem: when parts already went out from this one and the client did not pin the
        message, every part is sent again from the next modem (a phone only joins parts from one sender)."""
        now = self._clock()
        day = self.categories.local_day(now)

        def unit(tx: StoreTx) -> None:
            current = tx.get_message(message.id)
            assert current is not None
            tx.add_route_usage(slot.name, day, -sum(1 for p in current.part_list if p.reference is None))
            if current.modem is None:
                for part in current.part_list:
                    tx.update_part(
                        message.id,
                        part.seq,
                        status=PartStatus.QUEUED,
                        reference=None,
                        modem=None,
                        sent_at=None,
                        updated_at=now,
                    )
                sent_modem = None
            else:
                sent_modem = current.sent_modem
            tx.update_message(
                message.id,
                status=MessageStatus.QUEUED,
                sent_modem=sent_modem,
                last_route=slot.name,
                updated_at=now,
            )
            current.status, current.sent_modem = MessageStatus.QUEUED, sent_modem
            tx.append_event("sms.queued", current.event_data(requeued_from=slot.name))

        await self._store.write(unit)
        mlog.warning("modem unavailable, message requeued", error=text)
        slot.rest_until = trio.current_time() + UNAVAILABLE_PAUSE_S
        await self._route_failed(slot)

    async def _requeue_remaining(self, slot: _RouteSlot, message: Message, mlog: Any) -> None:
        now = self._clock()
        day = self.categories.local_day(now)

        def unit(tx: StoreTx) -> None:
            current = tx.get_message(message.id)
            assert current is not None
            tx.add_route_usage(slot.name, day, -sum(1 for p in current.part_list if p.reference is None))
            tx.update_message(message.id, status=MessageStatus.QUEUED, updated_at=now)
            message.status = MessageStatus.QUEUED
            tx.append_event("sms.queued", message.event_data(reason="stopping"))

        await self._store.write(unit)
        mlog.info("stopping: remaining parts stay queued on this modem")

    # --- timer: scheduled messages, retries, reassembly timeouts, housekeeping ----------------------------
    async def _timer(self) -> None:
        while True:
            self._schedule_changed = trio.Event()
            wake = self._schedule_changed
            now = self._clock()
            await self._release_due(now)
            self._notify_work()  # a new local day lifts daily caps; a cool-off may have ended
            due = await self._next_due(now)
            if due is None:
                await wake.wait()
            else:
                delay = max(0.0, (due - self._clock()).total_seconds())
                with trio.move_on_at(trio.current_time() + delay):
                    await wake.wait()

    async def _release_due(self, now: datetime) -> None:
        def release(tx: StoreTx) -> int:
            ids = tx.scheduled_due(now)[:RELEASE_BATCH]
            for message_id in ids:
                tx.update_message(message_id, status=MessageStatus.QUEUED, updated_at=now)
                message = tx.get_message(message_id)
                assert message is not None
                tx.append_event("sms.queued", message.event_data(send_at=format_time(message.send_at)))
            return len(ids)

        while await self._store.write(release) == RELEASE_BATCH:
            pass
        for ref in await self._store.read(lambda tx: tx.queued_refs(due_by=now)):
            if ref.due_at is not None:
                self._enqueue(ref.message_id, ref.sent_modem or ref.modem, ref.category)
        timeout = timedelta(seconds=self.settings.reassembly_timeout_s)
        hooks = self.inbound_hooks
        expired = await self._store.write(
            lambda tx: expire_groups(tx, now - timeout, region=self.region, hooks=hooks)
        )
        for message in expired:
            log.warning(
                "multipart message incomplete after timeout, delivered as is",
                message_id=message.id,
                modem=message.modem,
                sender=message.sender_raw,
                parts=f"{len(message.part_list)}/{message.parts}",
            )
        if self._next_housekeeping is None or now >= self._next_housekeeping:
            cutoff = now - timedelta(seconds=self.settings.idempotency_ttl_s)
            removed = await self._store.write(lambda tx: tx.delete_idempotency_before(cutoff))
            if removed:
                log.info("expired idempotency keys deleted", count=removed)
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL

    async def _next_due(self, now: datetime) -> datetime | None:
        def query(tx: StoreTx) -> tuple[datetime | None, datetime | None]:
            return tx.next_due_time(now), tx.earliest_group_start()

        due, group_start = await self._store.read(query)
        candidates = [t for t in (due, self._next_housekeeping) if t is not None]
        if any(slot.capped_day is not None for slot in self._slots.values()):
            candidates.append(self.categories.next_local_midnight(now))  # caps reset at local midnight
        if group_start is not None:
            candidates.append(group_start + timedelta(seconds=self.settings.reassembly_timeout_s))
        return min(candidates) if candidates else None

    # --- receiving ----------------------------------------------------------------------------------------
    async def _receiver(self, slot: _RouteSlot) -> None:
        events = getattr(slot.modem, "events", None)
        if events is None:
            return
        initial = getattr(slot.modem, "status", None)
        if isinstance(initial, ModemStatus):
            await self._on_status(slot, initial)
        async for item in events:
            try:
                if isinstance(item, ModemStatus):
                    await self._on_status(slot, item)
                elif isinstance(item, IncomingSms):
                    await self._on_incoming(slot, item.pdu_hex, item)
                elif isinstance(item, StatusReport):
                    await self._on_report(slot, item.pdu_hex, item)
                else:
                    log.error("unknown modem event ignored", modem=slot.name, item_type=type(item).__name__)
            except (trio.Cancelled, KeyboardInterrupt):
                raise
            except Exception:
                # Not acknowledged: the modem keeps the item and reports it again later.
                log.exception(
                    "modem event could not be processed", modem=slot.name, item_type=type(item).__name__
                )

    async def _on_status(self, slot: _RouteSlot, status: ModemStatus) -> None:
        self._notify_work()
        if status.state == slot.last_state:
            return
        previous, slot.last_state = slot.last_state, status.state
        await self._bus.publish(
            "modem.state_changed",
            {
                "modem": slot.name,
                "state": status.state,
                "previous": previous,
                "signal_dbm": status.signal_dbm,
                "registration": status.registration,
                "operator": status.operator,
                "last_error": status.last_error,
            },
        )
        log.info("modem state changed", modem=slot.name, state=status.state, previous=previous)

    async def _acknowledge(self, slot: _RouteSlot, item: Any) -> None:
        try:
            await slot.modem.acknowledge(item)
        except ModemUnavailable as exc:
            log.warning(
                "could not acknowledge; the modem will report the item again", modem=slot.name, error=str(exc)
            )

    async def _reject(self, slot: _RouteSlot, pdu_hex: str, error: str, item: Any) -> None:
        now = self._clock()
        await self._store.write(lambda tx: tx.insert_rejected_pdu(slot.name, pdu_hex, error, now))
        log.warning("undecodable PDU stored in rejected_pdus", modem=slot.name, error=error)
        await self._acknowledge(slot, item)

    async def _on_incoming(self, slot: _RouteSlot, pdu_hex: str, item: Any) -> None:
        try:
            decoded = pdu.decode(pdu_hex)
        except pdu.PduError as exc:
            await self._reject(slot, pdu_hex, str(exc), item)
            return
        if decoded.type == "status_report":
            await self._on_report(slot, pdu_hex, item, decoded)
            return
        if decoded.type != "deliver":
            await self._reject(
                slot, pdu_hex, f"expected an SMS-DELIVER, got an SMS-{decoded.type.upper()}", item
            )
            return
        now = self._clock()
        digest = pdu_digest(pdu_hex)
        text = decoded.text if decoded.text is not None else (decoded.data or b"").hex().upper()
        sender_raw = decoded.number or ""
        concat = decoded.concat
        hooks = self.inbound_hooks

        def unit(tx: StoreTx) -> tuple[str, Message | None]:
            if tx.inbound_pdu_seen(digest):
                return "duplicate", None
            if concat is None or concat.total <= 1:
                piece = ReceivedPiece(slot.name, sender_raw, text, decoded.encoding, pdu_hex, now)
                return "received", record_received(tx, [piece], region=self.region, hooks=hooks)
            fragment = Fragment(
                slot.name,
                sender_raw,
                concat.ref,
                concat.total,
                concat.ref_bits,
                concat.seq,
                text,
                decoded.encoding,
                pdu_hex,
                digest,
                now,
            )
            message = add_fragment(tx, fragment, region=self.region, hooks=hooks)
            return ("received" if message else "fragment"), message

        outcome, message = await self._store.write(unit)
        # Acknowledge (delete from the SIM / +CNMA) only now that the commit is durable.
        await self._acknowledge(slot, item)
        if outcome == "fragment":
            self._notify_schedule()  # a new group may have the earliest reassembly deadline
            log.info(
                "part of a multipart message stored",
                modem=slot.name,
                sender=sender_raw,
                seq=concat.seq if concat else None,
                total=concat.total if concat else None,
            )
        elif message is not None:
            log.info(
                "message received",
                modem=slot.name,
                message_id=message.id,
                sender=sender_raw,
                parts=message.parts,
            )
        else:
            log.info("duplicate PDU ignored", modem=slot.name)

    async def _on_report(self, slot: _RouteSlot, pdu_hex: str, item: Any, decoded: Any = None) -> None:
        if decoded is None:
            try:
                decoded = pdu.decode(pdu_hex)
            except pdu.PduError as exc:
                await self._reject(slot, pdu_hex, str(exc), item)
                return
        if decoded.type != "status_report" or decoded.reference is None or decoded.status is None:
            await self._reject(
                slot, pdu_hex, f"expected an SMS-STATUS-REPORT, got an SMS-{decoded.type.upper()}", item
            )
            return
        now = self._clock()
        window = timedelta(hours=self.settings.report_window_hours)

        def unit(tx: StoreTx) -> tuple[str, int] | None:
            match = self._pair(
                tx, slot.name, decoded.reference, decoded.number, decoded.timestamp, now - window
            )
            tx.insert_status_report(
                StatusReportRecord(
                    slot.name,
                    decoded.reference,
                    decoded.number,
                    decoded.status,
                    decoded.timestamp,
                    decoded.discharge_time,
                    now,
                    pdu_hex,
                    match[0] if match else None,
                    match[1] if match else None,
                )
            )
            if match:
                self._apply_report(tx, match[0], match[1], decoded.status, now)
            return match

        match = await self._store.write(unit)
        await self._acknowledge(slot, item)
        if match:
            log.info(
                "status report",
                modem=slot.name,
                message_id=match[0],
                part=match[1],
                tp_status=f"0x{decoded.status:02X}",
            )
        else:
            log.warning(
                "status report matches no sent part; stored unmatched",
                modem=slot.name,
                reference=decoded.reference,
                recipient=decoded.number,
                tp_status=f"0x{decoded.status:02X}",
            )

    def _pair(
        self,
        tx: StoreTx,
        modem: str,
        reference: int,
        recipient_raw: str | None,
        service_centre_time: datetime | None,
        sent_after: datetime,
    ) -> tuple[str, int] | None:
        """Pair a report with a part: same modem and TP-MR, sent within the window, same recipient. TP-MR
        wraps
        at 255 (TS 23.040 §9.2.3.6), so several parts can qualify: the newest wins, preferring parts sent no
        later than the report's TP-SCTS (when the SC received the SUBMIT) plus a clock-skew tolerance."""
        candidates = [
            c
            for c in tx.report_candidates(modem, reference, sent_after)
            if _recipient_matches(recipient_raw, c.recipient, self.region)
        ]
        if service_centre_time is not None:
            before = [c for c in candidates if c.sent_at <= service_centre_time + SCTS_SKEW]
            candidates = before or candidates
        return (candidates[0].message_id, candidates[0].seq) if candidates else None

    def _apply_report(self, tx: StoreTx, message_id: str, seq: int, tp_status: int, now: datetime) -> None:
        """Record the part's TP-ST; finalise the message when the parts decide it."""
        tx.update_part(
            message_id, seq, tp_status=tp_status, status=part_status_for_tp_st(tp_status), updated_at=now
        )
        self._finalize_if_reported(tx, message_id, now)

    def _finalize_if_reported(self, tx: StoreTx, message_id: str, now: datetime) -> None:
        """delivered when EVERY part is delivered; undelivered as soon as one part failed for good."""
        message = tx.get_message(message_id)
        if message is None or message.status != MessageStatus.SENT:
            return  # still sending (the last part decides), or already final
        statuses = [p.status for p in message.part_list]
        failed = [p for p in message.part_list if p.status == PartStatus.UNDELIVERED]
        if failed:
            new, decisive = MessageStatus.UNDELIVERED, failed[0]
        elif all(s == PartStatus.DELIVERED for s in statuses):
            new, decisive = MessageStatus.DELIVERED, max(message.part_list, key=lambda p: p.updated_at or now)
        else:
            return
        assert new in FINAL_STATUSES
        tx.update_message(message_id, status=new, final_at=now, updated_at=now)
        message.status = new
        extra: dict[str, Any] = {"tp_status": decisive.tp_status, "part": decisive.seq}
        if new == MessageStatus.UNDELIVERED:
            extra["reason"] = "expired" if decisive.tp_status == TP_ST_VALIDITY_EXPIRED else "rejected"
        tx.append_event(f"sms.{new}", message.event_data(**extra))


def _recipient_matches(reported: str | None, recipient: str | None, region: str) -> bool:
    """TP-RA against the message's E.164 recipient. SCs report it international or national, so compare
    E.164 forms when both parse, else the last eight digits. No TP-RA: the reference alone decides."""
    if not reported or not recipient:
        return True
    e164 = to_e164_or_none(reported, region)
    if e164 is not None and e164 == recipient:
        return True
    digits = "".join(ch for ch in reported if ch.isdigit())
    return len(digits) >= 8 and recipient.endswith(digits[-8:])
