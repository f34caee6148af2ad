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
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
import trio

from drivers.gsm import pdu
from drivers.gsm.modem import IncomingSms, ModemStatus, ModemUnavailable, SendError, StatusReport
from gateway.events import Event, EventBus, format_time, parse_time, utc_now
from gateway.numbers import DEFAULT_REGION, mask, to_e164_or_none
from gateway.sms.models import (
    FINAL_STATUSES,
    TP_ST_VALIDITY_EXPIRED,
    Message,
    MessageStatus,
    PartStatus,
    SmsSettings,
    part_status_for_tp_st,
)
from gateway.sms.reassembly import ReceivedPiece, add_fragment, expire_groups, pdu_digest, record_received
from gateway.store.base import Fragment, StatusReportRecord, Store, StoreTx

log = structlog.get_logger("sms.dispatcher")

HOUSEKEEPING_INTERVAL = timedelta(hours=1)  # idempotency keys past their lifetime are deleted this often
UNAVAILABLE_PAUSE_S = (
    1.0  # a modem that refused with ModemUnavailable is not offered work again for this long
)
EARLY_REPORT_WINDOW = timedelta(minutes=10)  # a report may be processed before its part's TP-MR is committed
SCTS_SKEW = timedelta(minutes=5)  # tolerance between our clock and the SC's TP-SCTS when pairing reports
RELEASE_BATCH = 500


@dataclass
class _ModemSlot:
    name: str
    modem: Any
    pinned: deque[str]
    in_flight: str | None = None
    last_state: str | None = None
    rest_until: float = -math.inf  # trio time before which this modem takes no work


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
    ):
        self._store = store
        self._bus = bus
        self.settings = SmsSettings.from_config(settings)
        self.region = region
        self._clock = clock
        self._slots = {name: _ModemSlot(name, modem, deque()) for name, modem in modems.items()}
        self._shared: deque[str] = deque()
        self._queued_ids: set[str] = set()
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
    def queue_depth(self, modem: str) -> int:
        """Messages waiting for (or being sent by) this modem; the shared queue is ``shared_depth``."""
        slot = self._slots.get(modem)
        if slot is None:
            return 0
        return len(slot.pinned) + (1 if slot.in_flight else 0)

    @property
    def shared_depth(self) -> int:
        return len(self._shared)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then run the senders, the receivers and the timer until ``stop()`` or cancellation."""
        await self._recover_interrupted_sends()
        now = self._clock()
        for ref in await self._store.read(lambda tx: tx.queued_refs(due_by=now)):
            self._enqueue(ref.message_id, ref.sent_modem or ref.modem)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer)
            for slot in self._slots.values():
                nursery.start_soon(self._receiver, slot)
            nursery.start_soon(self._run_senders)
            task_status.started()

    async def stop(self) -> None:
        """Stop taking messages, let each modem finish the part in flight (its TP-MR gets committed), then end
        ``run``. Parts not yet sent stay queued for the next start."""
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
                self._enqueue(event.data["id"], event.data.get("modem"))
            else:
                self._notify_schedule()
        elif event.type == "sms.scheduled":
            self._notify_schedule()
        elif event.type == "sms.canceled":
            self._dequeue(event.data["id"])

    def _enqueue(self, message_id: str, modem: str | None) -> None:
        if message_id in self._queued_ids:
            return
        if modem is not None and modem not in self._slots:
            log.error(
                "message names a modem that is not configured; it stays queued",
                message_id=message_id,
                modem=modem,
            )
            return
        self._queued_ids.add(message_id)
        (self._slots[modem].pinned if modem else self._shared).append(message_id)
        self._notify_work()

    def _dequeue(self, message_id: str) -> None:
        if message_id in self._queued_ids:
            self._queued_ids.discard(message_id)
            for queue in [self._shared, *(s.pinned for s in self._slots.values())]:
                if message_id in queue:
                    queue.remove(message_id)

    def _notify_work(self) -> None:
        self._work_changed.set()
        self._work_changed = trio.Event()

    def _notify_schedule(self) -> None:
        self._schedule_changed.set()

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
                    nursery.start_soon(self._sender, slot)
        finally:
            self._senders_done.set()

    async def _sender(self, slot: _ModemSlot) -> None:
        while True:
            message_id = await self._next_message(slot)
            if message_id is None:
                return
            slot.in_flight = message_id
            try:
                await self._send(slot, message_id)
            finally:
                slot.in_flight = None

    async def _next_message(self, slot: _ModemSlot) -> str | None:
        while True:
            changed = self._work_changed
            if self._stopping:
                return None
            state = getattr(slot.modem.status, "state", None)
            if state == "ready" and trio.current_time() >= slot.rest_until:
                queue = slot.pinned or self._shared
                if queue:
                    message_id = queue.popleft()
                    self._queued_ids.discard(message_id)
                    return message_id
            if trio.current_time() < slot.rest_until:
                with trio.move_on_at(slot.rest_until):
                    await changed.wait()
            else:
                await changed.wait()

    async def _send(self, slot: _ModemSlot, message_id: str) -> None:
        now = self._clock()

        def start(tx: StoreTx) -> Message | None:
            message = tx.get_message(message_id)
            if message is None or message.status != MessageStatus.QUEUED:
                return None  # canceled, or a stale queue entry
            if message.next_attempt_at is not None and message.next_attempt_at > now:
                return None  # a retry that is not due yet: the timer re-queues it
            tx.update_message(
                message_id,
                status=MessageStatus.SENDING,
                sent_modem=slot.name,
                updated_at=now,
                next_attempt_at=None,
            )
            message.status, message.sent_modem = MessageStatus.SENDING, slot.name
            tx.append_event("sms.sending", message.event_data())
            return message

        message = await self._store.write(start)
        if message is None:
            return
        mlog = log.bind(modem=slot.name, message_id=message_id)
        unsent = [p for p in message.part_list if p.reference is None]
        for index, part in enumerate(unsent):
            try:
                reference = await slot.modem.send_pdu(part.segment_hex, part.tpdu_length)
            except SendError as exc:
                await self._send_failed(slot, message, part.seq, exc.kind, exc.code, exc.message, mlog)
                return
            except ModemUnavailable as exc:
                if self._stopping:  # the modem is stopping with us: keep the parts it sent, resume later
                    await self._requeue_remaining(message, mlog)
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
                await self._requeue_remaining(message, mlog)
                return
        mlog.info("message sent", to=mask(message.to), parts=message.parts)

    async def _part_sent(
        self, slot: _ModemSlot, message: Message, seq: int, reference: int, last: bool
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
                    "sms.sent", message.event_data(references=[p.reference for p in message.part_list])
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
        self, slot: _ModemSlot, message: Message, seq: int, kind: str, code: int | None, text: str, mlog: Any
    ) -> None:
        now = self._clock()
        retries = self.settings.send_retries
        backoff = self.settings.retry_backoff_s or (0.0,)

        def unit(tx: StoreTx) -> tuple[str, datetime | None]:
            current = tx.get_message(message.id)
            assert current is not None
            tx.update_part(message.id, seq, cms_error=code, error=text, updated_at=now)
            attempts = current.attempts + 1
            if kind == "permanent" or attempts > retries:
                tx.update_part(message.id, seq, status=PartStatus.FAILED)
                tx.update_message(
                    message.id,
                    status=MessageStatus.FAILED,
                    attempts=attempts,
                    error_code=code,
                    error_kind=kind,
                    error_message=text,
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
            mlog.warning("message failed", to=mask(message.to), code=code, kind=kind, error=text)
        else:
            mlog.info("send failed, will retry", code=code, kind=kind, error=text, retry_at=format_time(due))
        if kind == "config":
            slot.rest_until = trio.current_time() + self.settings.modem_error_pause_s
            log.error(
                "modem refused a send for a configuration reason; resting it",
                modem=slot.name,
                code=code,
                error=text,
                rest_s=self.settings.modem_error_pause_s,
            )

    async def _modem_unavailable(self, slot: _ModemSlot, message: Message, text: str, mlog: Any) -> None:
        """Requeue for any modem: when parts already went out from this one and the client did not pin the
        message, every part is sent again from the next modem (a phone only joins parts from one sender)."""
        now = self._clock()

        def unit(tx: StoreTx) -> None:
            current = tx.get_message(message.id)
            assert current is not None
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
            tx.update_message(message.id, status=MessageStatus.QUEUED, sent_modem=sent_modem, updated_at=now)
            current.status, current.sent_modem = MessageStatus.QUEUED, sent_modem
            tx.append_event("sms.queued", current.event_data(requeued_from=slot.name))

        await self._store.write(unit)
        mlog.warning("modem unavailable, message requeued", error=text)
        slot.rest_until = trio.current_time() + UNAVAILABLE_PAUSE_S

    async def _requeue_remaining(self, message: Message, mlog: Any) -> None:
        now = self._clock()

        def unit(tx: StoreTx) -> None:
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
                self._enqueue(ref.message_id, ref.sent_modem or ref.modem)
        timeout = timedelta(seconds=self.settings.reassembly_timeout_s)
        expired = await self._store.write(lambda tx: expire_groups(tx, now - timeout, region=self.region))
        for message in expired:
            log.warning(
                "multipart message incomplete after timeout, delivered as is",
                message_id=message.id,
                modem=message.modem,
                sender=mask(message.sender_raw),
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
        if group_start is not None:
            candidates.append(group_start + timedelta(seconds=self.settings.reassembly_timeout_s))
        return min(candidates) if candidates else None

    # --- receiving ----------------------------------------------------------------------------------------
    async def _receiver(self, slot: _ModemSlot) -> None:
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

    async def _on_status(self, slot: _ModemSlot, status: ModemStatus) -> None:
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

    async def _acknowledge(self, slot: _ModemSlot, item: Any) -> None:
        try:
            await slot.modem.acknowledge(item)
        except ModemUnavailable as exc:
            log.warning(
                "could not acknowledge; the modem will report the item again", modem=slot.name, error=str(exc)
            )

    async def _reject(self, slot: _ModemSlot, pdu_hex: str, error: str, item: Any) -> None:
        now = self._clock()
        await self._store.write(lambda tx: tx.insert_rejected_pdu(slot.name, pdu_hex, error, now))
        log.warning("undecodable PDU stored in rejected_pdus", modem=slot.name, error=error)
        await self._acknowledge(slot, item)

    async def _on_incoming(self, slot: _ModemSlot, pdu_hex: str, item: Any) -> None:
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

        def unit(tx: StoreTx) -> tuple[str, Message | None]:
            if tx.inbound_pdu_seen(digest):
                return "duplicate", None
            if concat is None or concat.total <= 1:
                piece = ReceivedPiece(slot.name, sender_raw, text, decoded.encoding, pdu_hex, now)
                return "received", record_received(tx, [piece], region=self.region)
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
            message = add_fragment(tx, fragment, region=self.region)
            return ("received" if message else "fragment"), message

        outcome, message = await self._store.write(unit)
        # Acknowledge (delete from the SIM / +CNMA) only now that the commit is durable.
        await self._acknowledge(slot, item)
        if outcome == "fragment":
            self._notify_schedule()  # a new group may have the earliest reassembly deadline
            log.info(
                "part of a multipart message stored",
                modem=slot.name,
                sender=mask(sender_raw),
                seq=concat.seq if concat else None,
                total=concat.total if concat else None,
            )
        elif message is not None:
            log.info(
                "message received",
                modem=slot.name,
                message_id=message.id,
                sender=mask(sender_raw),
                parts=message.parts,
            )
        else:
            log.info("duplicate PDU ignored", modem=slot.name)

    async def _on_report(self, slot: _ModemSlot, pdu_hex: str, item: Any, decoded: Any = None) -> None:
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
                recipient=mask(decoded.number),
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
