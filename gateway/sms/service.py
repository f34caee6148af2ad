"""SmsService: what the API calls to submit, read, list and cancel messages (contract: docs/architecture.md).

``submit`` validates the request, then commits the message, its parts (PDUs encoded now, so the count the
client is charged is the count that will be sent), the Idempotency-Key row and the sms.queued/sms.scheduled
event in ONE unit of work; when it returns the message is durable (the API may answer 202). The dispatcher
learns about new work from the event bus (it listens for sms.queued / sms.scheduled).

Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): the same key with the same request fingerprint
returns the first message again (``replayed=True``); the same key with a different request raises
IdempotencyConflict (422); keys are kept ``idempotency_ttl_s`` (24 h). The key check runs inside the same
transaction as the insert, so two concurrent requests with one key create one message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
import trio

from drivers.gsm import pdu
from gateway.events import EventBus, format_time, utc_now
from gateway.numbers import DEFAULT_REGION, InvalidNumber, normalize
from gateway.sms.categories import Categories, UnknownCategory
from gateway.sms.models import (
    Conflict,
    IdempotencyConflict,
    InvalidRequest,
    Message,
    MessagePart,
    MessageStatus,
    ModemView,
    NotFound,
    PartStatus,
    SmsError,
    SmsSettings,
    SubmitPolicy,
    SubmitRequest,
    SubmitResult,
    new_message_id,
)
from gateway.sms.routing import AUTO, RoutePolicy
from gateway.store.base import IdempotencyRecord, Store, StoreTx

log = structlog.get_logger("sms.service")

MAX_CLIENT_REF = 128
MAX_SCHEDULE_AHEAD = timedelta(days=366)
MAX_LIST_LIMIT = 200
CANCELABLE = frozenset({MessageStatus.QUEUED, MessageStatus.SCHEDULED})
_STATUS_VALUES = frozenset(s.value for s in MessageStatus) - {MessageStatus.ACCEPTED.value}


class QueueDepths(Protocol):
    def queue_depth(self, modem: str) -> int: ...


class SmsService:
    """``providers``: HTTP provider routes by name (``gateway.sms.http_provider.HttpSmsRoute``), next to the
    modems; ``categories`` and ``route_policy`` default to the built-in categories (Asia/Tokyo) and the seed
    costs; ``submit_policies`` run inside every submit's transaction (see ``SubmitPolicy``)."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        modems: Mapping[str, Any],
        *,
        settings: Any = None,
        region: str = DEFAULT_REGION,
        clock: Callable[[], datetime] = utc_now,
        dispatcher: QueueDepths | None = None,
        providers: Mapping[str, Any] | None = None,
        categories: Categories | None = None,
        route_policy: RoutePolicy | None = None,
        submit_policies: Sequence[SubmitPolicy] = (),
    ):
        self._store = store
        self._bus = bus
        self._modems = modems
        self._providers = dict(providers or {})
        overlap = set(self._providers) & set(modems)
        if overlap:
            raise ValueError(f"route names used by a modem and a provider: {', '.join(sorted(overlap))}")
        self.settings = SmsSettings.from_config(settings)
        self.region = region
        self._clock = clock
        self._dispatcher = dispatcher
        self.categories = categories or Categories.from_config(settings)
        self.route_policy = route_policy or RoutePolicy.from_config(settings)
        self.submit_policies = tuple(submit_policies)
        self._deferred_send, self._deferred_receive = trio.open_memory_channel[SubmitRequest](math.inf)

    def add_submit_policy(self, policy: SubmitPolicy) -> None:
        """Add a policy after construction (the composition root builds the consent service later)."""
        self.submit_policies = (*self.submit_policies, policy)

    @property
    def route_names(self) -> list[str]:
        return sorted([*self._modems, *self._providers])

    def route_kind(self, name: str | None) -> str:
        """"provider" for an HTTP provider route, else "modem" (auto messages are costed as modem SMS)."""
        return "provider" if name in self._providers else "modem"

    # --- deferred submits (InboundHook replies) -----------------------------------------------------------
    def submit_nowait(self, request: SubmitRequest) -> None:
        """Submit ``request`` in a later unit of work, after the current transaction commits (never if it
        rolls back). Call it from inside a unit (an InboundHook); outside one it is queued at once. The
        submits run in ``run_deferred`` (started by the dispatcher); a refused one is logged."""
        self._store.after_commit(lambda: self._deferred_send.send_nowait(request))

    async def run_deferred(self) -> None:
        """Submit what ``submit_nowait`` queued, one at a time, until cancelled."""
        async for request in self._deferred_receive:
            try:
                result = await self.submit(request)
            except SmsError as exc:
                log.warning(
                    "deferred submit refused",
                    to=request.to,
                    category=request.category,
                    code=getattr(exc, "code", None),
                    error=str(exc),
                )
            else:
                log.info("deferred submit queued", message_id=result.message.id, category=request.category)

    def attach_dispatcher(self, dispatcher: QueueDepths) -> None:
        """Let ``modems()`` report each modem's queue depth."""
        self._dispatcher = dispatcher

    # --- submit -------------------------------------------------------------------------------------------
    async def submit(self, req: SubmitRequest, *, idempotency_key: str | None = None) -> SubmitResult:
        now = self._clock()
        message, held_by_quiet_hours = self._prepare(req, now)
        if idempotency_key is not None:
            fingerprint = request_fingerprint(req)
            fresh_after = now - timedelta(seconds=self.settings.idempotency_ttl_s)
        else:  # only a keyed request is ever compared: no sha256 of its JSON for the others
            fingerprint, fresh_after = "", now
        event_type = "sms.scheduled" if message.status == MessageStatus.SCHEDULED else "sms.queued"

        policies = self.submit_policies
        category = message.category or self.categories.default

        def unit(tx: StoreTx) -> tuple[Message, bool]:
            if idempotency_key is not None:
                record = tx.get_idempotency(idempotency_key)
                if record is not None and record.created_at > fresh_after:
                    if record.fingerprint != fingerprint:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was used with a different request; use a new key for a new "
                            "message"
                        )
                    first = tx.get_message(record.message_id)
                    if first is not None:
                        return first, True
            for policy in policies:
                policy.check(tx, req, message.to or "", category)
            if idempotency_key is not None:
                tx.put_idempotency(IdempotencyRecord(idempotency_key, fingerprint, message.id, now))
            tx.insert_message(message)
            extra: dict[str, Any] = {"send_at": format_time(message.send_at)}
            if held_by_quiet_hours:
                extra["held"] = "quiet_hours"
            tx.append_event(event_type, message.event_data(**extra))
            return message, False

        stored, replayed = await self._store.write(unit)
        log.info(
            "message replayed" if replayed else "message accepted",
            message_id=stored.id,
            to=stored.to,
            parts=stored.parts,
            status=str(stored.status),
            route=stored.route,
            category=stored.category,
        )
        return SubmitResult(stored, replayed)

    def _resolve_route(self, req: SubmitRequest) -> str | None:
        """The named route (a modem or provider name) or None for auto; ``modem`` is an alias of ``route``."""
        route, modem = req.route, req.modem
        if route is not None and not isinstance(route, str):
            raise InvalidRequest("invalid_request", "'route' must be a string", "route")
        if route is not None and modem is not None and route != modem:
            raise InvalidRequest(
                "invalid_request", "give 'route' or its alias 'modem', not two different values", "route"
            )
        name = route if route is not None else modem
        if name is None or name == AUTO:
            return None
        if name not in self._modems and name not in self._providers:
            known = ", ".join([AUTO, *self.route_names])
            field = "route" if route is not None else "modem"
            if route is None:
                raise InvalidRequest("unknown_modem", f"no modem named {name!r} (known: {known})", field)
            raise InvalidRequest("unknown_route", f"no route named {name!r} (known: {known})", field)
        return name

    def _prepare(self, req: SubmitRequest, now: datetime) -> tuple[Message, bool]:
        """Validate and build the message with its encoded parts, or raise InvalidRequest. The flag is True
        when the category's quiet hours hold the message (stored scheduled until they end)."""
        if not isinstance(req.to, str):
            raise InvalidRequest("invalid_number", "'to' must be a string", "to")
        try:
            number = normalize(req.to, self.region)
        except InvalidNumber as exc:
            raise InvalidRequest("invalid_number", str(exc), "to") from None
        if not isinstance(req.text, str) or not req.text.strip():
            raise InvalidRequest("empty_text", "the message text is empty", "text")
        route = self._resolve_route(req)
        if req.category is not None and not isinstance(req.category, str):
            raise InvalidRequest("invalid_request", "'category' must be a string", "category")
        try:
            category = self.categories.get(req.category)
        except UnknownCategory as exc:
            raise InvalidRequest("unknown_category", str(exc), "category") from None
        if req.client_ref is not None and (
            not isinstance(req.client_ref, str) or len(req.client_ref) > MAX_CLIENT_REF
        ):
            raise InvalidRequest(
                "invalid_request",
                f"client_ref must be a string of at most {MAX_CLIENT_REF} characters",
                "client_ref",
            )
        send_at = self._parse_send_at(req.send_at, now)
        report = self.settings.report if req.report is None else bool(req.report)
        # TS 23.040 §9.2.3.24.1: same for every part of this message. One random byte is uniform on 0-255 like
        # secrets.randbelow(256) (same OS source), which rejects half its draws and costs three times more.
        concat_ref = os.urandom(1)[0]
        try:
            encoded = pdu.encode_submit(
                number.e164,
                req.text,
                request_report=report,
                validity_minutes=self.settings.validity_minutes,
                concat_ref=concat_ref,
                max_parts=self.settings.max_parts,
            )
        except pdu.TooManyParts as exc:
            raise InvalidRequest(
                "too_many_parts",
                f"the text needs {exc.parts} {exc.encoding} parts; the limit is {self.settings.max_parts}",
                "text",
            ) from None
        except pdu.EncodeError as exc:
            raise InvalidRequest("invalid_request", f"cannot encode the message: {exc}", "text") from None
        scheduled = send_at is not None and send_at > now
        # Quiet hours are checked against when the message would go out; the dispatcher checks again when
        # it takes the message (a retry or a long queue can drift into the window).
        held_until = self.categories.quiet_until(category.name, send_at if scheduled else now)
        if held_until is not None:
            send_at, scheduled = held_until, True
        message = Message(
            id=new_message_id(),
            direction="out",
            status=MessageStatus.SCHEDULED if scheduled else MessageStatus.QUEUED,
            text=req.text,
            parts=encoded.parts,
            created_at=now,
            updated_at=now,
            encoding=encoded.encoding,
            to=number.e164,
            to_raw=number.raw,
            modem=route,
            category=category.name,
            cost=self.route_policy.cost(self.route_kind(route), route, encoded.parts),
            report=report,
            send_at=send_at,
            client_ref=req.client_ref,
            concat_ref=concat_ref if encoded.parts > 1 else None,
            part_list=[
                MessagePart(
                    seq=s.seq,
                    status=PartStatus.QUEUED,
                    segment_hex=s.hex,
                    tpdu_length=s.tpdu_length,
                    updated_at=now,
                )
                for s in encoded.segments
            ],
        )
        return message, held_until is not None

    @staticmethod
    def _parse_send_at(value: datetime | str | None, now: datetime) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise InvalidRequest(
                    "invalid_send_at",
                    f"send_at {value!r} is not an ISO 8601 date-time (e.g. 2026-11-27T09:00:00+09:00)",
                    "send_at",
                ) from None
        if not isinstance(value, datetime):
            raise InvalidRequest("invalid_send_at", "send_at must be an ISO 8601 date-time string", "send_at")
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidRequest(
                "invalid_send_at", "send_at needs a UTC offset (e.g. +09:00 or Z)", "send_at"
            )
        if value - now > MAX_SCHEDULE_AHEAD:
            raise InvalidRequest("invalid_send_at", "send_at is more than 366 days ahead", "send_at")
        return value

    # --- reads --------------------------------------------------------------------------------------------
    async def get(self, message_id: str) -> Message | None:
        return await self._store.read(lambda tx: tx.get_message(message_id))

    async def list(
        self,
        *,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        direction: str | None = None,
    ) -> tuple[list[Message], str | None]:
        """Newest first; pass the returned cursor to get the next (older) page, None on the last page."""
        if status is not None and status not in _STATUS_VALUES:
            raise InvalidRequest(
                "invalid_parameter",
                f"unknown status {status!r} (one of: {', '.join(sorted(_STATUS_VALUES))})",
                "status",
            )
        if direction is not None and direction not in ("in", "out"):
            raise InvalidRequest("invalid_parameter", "direction must be 'in' or 'out'", "direction")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(
                "invalid_parameter", f"limit must be between 1 and {MAX_LIST_LIMIT}", "limit"
            )
        before = decode_cursor(cursor) if cursor else None
        rows = await self._store.read(
            lambda tx: tx.list_messages(status=status, direction=direction, before_id=before, limit=limit + 1)
        )
        page = rows[:limit]
        return page, (encode_cursor(page[-1].id) if len(rows) > limit else None)

    # --- cancel -------------------------------------------------------------------------------------------
    async def cancel(self, message_id: str) -> Message:
        now = self._clock()

        def unit(tx: StoreTx) -> Message:
            message = tx.get_message(message_id)
            if message is None:
                raise NotFound(f"no message {message_id!r}")
            if message.status not in CANCELABLE:
                raise Conflict(
                    f"message {message_id} is {message.status}; only queued or scheduled messages "
                    "can be canceled"
                )
            tx.update_message(
                message_id, status=MessageStatus.CANCELED, final_at=now, updated_at=now, next_attempt_at=None
            )
            message.status, message.final_at, message.updated_at = MessageStatus.CANCELED, now, now
            tx.append_event("sms.canceled", message.event_data())
            return message

        message = await self._store.write(unit)
        log.info("message canceled", message_id=message_id)
        return message

    # --- modems -------------------------------------------------------------------------------------------
    def modems(self) -> list[ModemView]:
        views = []
        for name, modem in self._modems.items():
            status = getattr(modem, "status", None)
            views.append(
                ModemView(
                    name=name,
                    state=getattr(status, "state", "absent"),
                    signal_dbm=getattr(status, "signal_dbm", None),
                    registration=getattr(status, "registration", None),
                    operator=getattr(status, "operator", None),
                    queue_depth=self._dispatcher.queue_depth(name) if self._dispatcher else 0,
                    manufacturer=getattr(status, "manufacturer", None),
                    model=getattr(status, "model", None),
                    last_error=getattr(status, "last_error", None),
                )
            )
        return views


def request_fingerprint(req: SubmitRequest) -> str:
    """sha256 of the request as the client sent it (canonical JSON), for Idempotency-Key comparison."""
    send_at = req.send_at.isoformat() if isinstance(req.send_at, datetime) else req.send_at
    body = {
        "to": req.to,
        "text": req.text,
        "modem": req.modem,
        "report": req.report,
        "send_at": send_at,
        "client_ref": req.client_ref,
    }
    # Only present when used, so keys stored before these fields existed still match their requests.
    if req.category is not None:
        body["category"] = req.category
    if req.route is not None:
        body["route"] = req.route
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


_CURSOR_PREFIX = "v1:"


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_CURSOR_PREFIX) or len(text) <= len(_CURSOR_PREFIX):
        raise InvalidRequest("invalid_parameter", "the cursor is not one this server returned", "cursor")
    return text[len(_CURSOR_PREFIX) :]
