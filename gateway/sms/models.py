"""SMS domain objects: messages, parts, requests, settings and the service's errors (no I/O here)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from gateway.events import format_time


class MessageStatus(StrEnum):
    """Life cycle of a message (Twilio/SMSGate vocabulary; docs in /work/shared/notes/sms.md §9).

    Outgoing: accepted -> queued -> sending -> sent -> delivered | undelivered | failed, plus scheduled
    (send_at in the future) and canceled. ``accepted`` is what the API answers (202) and is never stored: a
    message is committed directly as queued or scheduled. Incoming messages are ``received``.
    """

    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELED = "canceled"
    RECEIVED = "received"


FINAL_STATUSES = frozenset(
    {MessageStatus.DELIVERED, MessageStatus.UNDELIVERED, MessageStatus.FAILED, MessageStatus.CANCELED}
)


class PartStatus(StrEnum):
    QUEUED = "queued"  # not handed to a modem yet (or to be sent again)
    SENT = "sent"  # +CMGS gave a TP-MR; no final report yet
    DELIVERY_PENDING = "delivery_pending"  # report TP-ST 0x20-0x3F: the SC is still trying
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"  # the modem refused it (permanent +CMS error)
    RECEIVED = "received"  # a part of an incoming message


def part_status_for_tp_st(tp_st: int) -> PartStatus:
    """TS 23.040 §9.2.3.15 TP-Status: 0x00-0x1F completed (delivered), 0x20-0x3F temporary error with the SC
    still trying (not final), 0x40-0x7F permanent error or SC gave up (undelivered; 0x46 = validity expired).
    0x80-0xFF are reserved: treated as not final (gammu PR #1159 maps them to "unknown")."""
    if 0x00 <= tp_st <= 0x1F:
        return PartStatus.DELIVERED
    if 0x40 <= tp_st <= 0x7F:
        return PartStatus.UNDELIVERED
    return PartStatus.DELIVERY_PENDING


TP_ST_VALIDITY_EXPIRED = 0x46


@dataclass
class MessagePart:
    seq: int  # 1-based
    status: str
    segment_hex: str | None = None  # outgoing: SCA + SMS-SUBMIT TPDU; incoming: the PDU as received
    tpdu_length: int | None = None
    modem: str | None = None
    reference: int | None = None  # TP-MR from +CMGS
    sent_at: datetime | None = None
    tp_status: int | None = None  # raw TP-ST of the last status report
    cms_error: int | None = None  # raw +CMS ERROR code of the last failed send
    error: str | None = None
    updated_at: datetime | None = None
    pdu_digest: str | None = None  # incoming: sha256 of the PDU, to drop a PDU the modem reports twice

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "status": str(self.status),
            "reference": self.reference,
            "modem": self.modem,
            "sent_at": format_time(self.sent_at),
            "tp_status": self.tp_status,
            "cms_error": self.cms_error,
            "error": self.error,
            "updated_at": format_time(self.updated_at),
        }


@dataclass
class Message:
    id: str
    direction: str  # "out" | "in"
    status: str
    text: str
    parts: int
    created_at: datetime
    updated_at: datetime
    encoding: str | None = None
    to: str | None = None  # E.164
    to_raw: str | None = None
    sender: str | None = None  # incoming: E.164 when derivable
    sender_raw: str | None = None
    modem: str | None = None  # outgoing: the modem the client asked for; incoming: the receiving modem
    sent_modem: str | None = None  # outgoing: the modem that sent (or is sending) it
    report: bool = False
    send_at: datetime | None = None
    client_ref: str | None = None
    concat_ref: int | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    error_code: int | None = None
    error_kind: str | None = None
    error_message: str | None = None
    incomplete: bool = False
    sent_at: datetime | None = None
    final_at: datetime | None = None
    received_at: datetime | None = None
    category: str | None = None  # outgoing: sms.categories name
    cost: float | None = None  # outgoing: estimate at submit, the actual route's cost once sent
    provider_id: str | None = None  # outgoing via an HTTP provider: the provider's message id
    last_route: str | None = None  # outgoing: the route of the last failed attempt (cool-off rerouting)
    part_list: list[MessagePart] = field(default_factory=list)

    @property
    def route(self) -> str:
        """The route that sent (or is sending) it, else the one asked for, else "auto"."""
        return self.sent_modem or self.modem or "auto"

    def to_json(self) -> dict[str, Any]:
        """The REST representation (times RFC 3339 UTC)."""
        out: dict[str, Any] = {
            "id": self.id,
            "direction": self.direction,
            "status": str(self.status),
            "text": self.text,
            "encoding": self.encoding,
            "parts": self.parts,
            "modem": self.sent_modem or self.modem,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "part_list": [p.to_json() for p in self.part_list],
        }
        if self.direction == "out":
            out.update(
                to=self.to,
                to_raw=self.to_raw,
                report=self.report,
                send_at=format_time(self.send_at),
                client_ref=self.client_ref,
                sent_at=format_time(self.sent_at),
                final_at=format_time(self.final_at),
                error=self.error_json(),
                category=self.category,
                route=self.route,
                cost=self.cost,
                provider_id=self.provider_id,
            )
        else:
            out.update(
                {
                    "from": self.sender,
                    "from_raw": self.sender_raw,
                    "received_at": format_time(self.received_at),
                    "incomplete": self.incomplete,
                }
            )
        return out

    def event_data(self, **extra: Any) -> dict[str, Any]:
        """``data`` of an outgoing message's sms.* event (the text is not repeated in every event)."""
        data: dict[str, Any] = {
            "id": self.id,
            "status": str(self.status),
            "to": self.to,
            "client_ref": self.client_ref,
            "parts": self.parts,
            "modem": self.sent_modem or self.modem,
            "category": self.category,
        }
        data.update(extra)
        return data

    def error_json(self) -> dict[str, Any] | None:
        if self.error_kind is None and self.error_code is None:
            return None
        return {"code": self.error_code, "kind": self.error_kind, "message": self.error_message}


@dataclass(frozen=True)
class SubmitRequest:
    """POST /v1/messages body. ``send_at``: aware datetime or ISO 8601 text with an offset."""

    to: str
    text: str
    modem: str | None = None
    report: bool | None = None  # None: the gateway's sms.report setting
    send_at: datetime | str | None = None
    client_ref: str | None = None
    category: str | None = None  # None: sms.default_category ("care")
    route: str | None = None  # "auto" (None), a modem name or an HTTP provider name; ``modem`` is an alias

    @classmethod
    def from_json(cls, body: Any) -> SubmitRequest:
        """Build from a decoded JSON object, naming the first wrong field (InvalidRequest)."""
        if not isinstance(body, dict):
            raise InvalidRequest("invalid_request", "the body must be a JSON object", "")
        unknown = sorted(set(body) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidRequest("invalid_request", f"unknown field {unknown[0]!r}", unknown[0])
        for name, types in (("to", (str,)), ("text", (str,))):
            if not isinstance(body.get(name), types):
                raise InvalidRequest("invalid_request", f"{name!r} is required and must be a string", name)
        for name, types in (
            ("modem", (str,)),
            ("report", (bool,)),
            ("send_at", (str,)),
            ("client_ref", (str,)),
            ("category", (str,)),
            ("route", (str,)),
        ):
            if body.get(name) is not None and not isinstance(body[name], types):
                raise InvalidRequest("invalid_request", f"{name!r} has the wrong type", name)
        return cls(**body)


class SubmitPolicy(Protocol):
    """A rule that may refuse a submit (e.g. the consent engineer's ``OptOutPolicy``).

    ``check`` runs INSIDE the submit's unit of work (store worker thread: use only ``tx``, no trio, no clock)
    with the normalised recipient and the resolved category; it refuses by raising
    ``InvalidRequest(code, detail, field)`` (e.g. ``InvalidRequest("opted_out", ..., "to")``), which rolls the
    unit back and reaches the client as a 422 problem."""

    def check(self, tx: Any, request: SubmitRequest, e164: str, category: str) -> None: ...


class InboundHook(Protocol):
    """Runs INSIDE the transaction that commits an incoming message, before its ``sms.received`` event is
    appended. It may add keys to ``data`` (the event's data: ``in_reply_to``, ``campaign_id``, ``answer``,
    ``opt_out``) and append its own events with ``tx.append_event``. Replies the gateway must send are
    queued with ``SmsService.submit_nowait`` (given to the hook's constructor): they are submitted in a later
    unit, after this transaction commits, and never if it rolls back. An exception rolls back the whole
    incoming message (the modem keeps it and reports it again): a hook raises only on a real fault."""

    def on_received(self, tx: Any, message: Message, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class SubmitResult:
    message: Message
    replayed: bool  # True: the Idempotency-Key was seen with the same request; this is the first answer again


@dataclass(frozen=True)
class ModemView:
    name: str
    state: str
    signal_dbm: int | None
    registration: str | None
    operator: str | None
    queue_depth: int
    manufacturer: str | None = None
    model: str | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SmsSettings:
    """SMS behaviour; field names match ``gateway.config.SmsSection`` so either can be passed."""

    max_parts: int = 10
    report: bool = True  # request a delivery report unless the message says otherwise
    validity_minutes: int | None = 1440
    send_retries: int = 3  # temporary send errors retried this many times, then the message fails
    retry_backoff_s: tuple[float, ...] = (5.0, 30.0, 120.0)  # delay before retry n (last value repeats)
    report_window_hours: float = 72.0  # a status report pairs only with parts sent within this window
    reassembly_timeout_s: float = 600.0  # Gammu SMSD MultipartTimeout
    idempotency_ttl_s: float = 24 * 3600.0  # Telnyx keeps keys 24 h
    modem_error_pause_s: float = 30.0  # a modem answering with a configuration error rests this long

    @classmethod
    def from_config(cls, settings: Any | None) -> SmsSettings:
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        known = {f.name for f in fields(cls)}
        values = {name: getattr(settings, name) for name in known if hasattr(settings, name)}
        if "retry_backoff_s" in values:
            values["retry_backoff_s"] = tuple(values["retry_backoff_s"])
        return cls(**values)


class SmsError(Exception):
    """Base of the errors the SMS service raises to the API."""


class InvalidRequest(SmsError):
    """422: ``code`` is the stable problem code (invalid_number, empty_text, too_many_parts, unknown_modem,
    invalid_send_at, invalid_request), ``field`` the request field at fault."""

    def __init__(self, code: str, detail: str, field: str = ""):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field


class IdempotencyConflict(SmsError):
    """422 idempotency_key_reused: the key was used before with a different request."""

    code = "idempotency_key_reused"


class NotFound(SmsError):
    code = "not_found"


class Conflict(SmsError):
    """409: the message is in a state that does not allow the operation (e.g. cancel while sending)."""

    code = "conflict"


# Message ids: "msg_" + 26 Crockford base32 characters, ULID layout (48-bit millisecond time, 80-bit random),
# monotonic within one millisecond so ids sort in creation order (keyset pagination relies on it).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two digits per 10 bits ([hi * 32 + lo] -> hi digit, lo digit): 13 lookups make the 26 digits.
_CROCKFORD_PAIRS = [hi + lo for hi in _CROCKFORD for lo in _CROCKFORD]
_PAIR_SHIFTS = tuple(range(120, -10, -10))
_id_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


def new_message_id(prefix: str = "msg_", now_ms: int | None = None) -> str:
    global _last_ms, _last_rand
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _id_lock:
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # leave room to increment within the ms
        _last_ms, _last_rand = ms, rand
    return prefix + crockford26((ms << 80) | (rand & ((1 << 80) - 1)))


def crockford26(value: int) -> str:
    """The low 130 bits of ``value`` as 26 Crockford base32 digits, most significant first."""
    return "".join([_CROCKFORD_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])
