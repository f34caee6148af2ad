"""Outbound webhooks for CRMs without a WebSocket: Standard Webhooks signing, durable ordered delivery.

Event types this module appends (for gateway/events.py EVENT_TYPES): ``webhook.dead_lettered`` (an event was
given up on: ``dead_letter_id, subscription_id, event_id, event_type, attempts, last_status, last_error``) and
``webhook.disabled`` (a subscription stopped: ``subscription_id, reason``).

Signing (Standard Webhooks 1.0, spec/standard-webhooks.md "Signature scheme" and "Webhook headers"): the body
is the event envelope exactly as journalled (``Event.payload``), the headers are ``webhook-id`` (the event id
"<epoch>:<seq>": the receiver's dedupe key, the same on every retry; it holds no "." as the spec requires),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``
over ``<id>.<timestamp>.<body>``, keyed with the base64-decoded part of ``whsec_<base64>``). During a secret
rotation the header carries a signature per secret, separated by spaces.

Delivery (one worker task per enabled subscription, so one request in flight per endpoint and events in
journal order):

* The worker keeps a cursor ``(epoch, seq)`` in the database: the last event it handled (delivered, filtered
  out, or dead-lettered). It reads the journal page by page from the cursor, then follows the bus live from
  there (``EventBus.subscribe(since=...)``) with its own bounded queue. When a slow endpoint lets that queue
  overflow the bus drops the subscription (it never waits for us) and the worker goes back to reading the
  journal: a dead endpoint costs the bus nothing. The cursor moves only after a delivery committed, so a
  crash or restart delivers the event again (at-least-once; ``webhook-id`` lets the CRM de-duplicate).
* An attempt succeeds on a 2xx answer. 410 Gone disables the subscription (the spec's "Delivery success and
  failure"); redirects are not followed. Any other status, a timeout or a connection error is retried after
  ``retry_delays_s`` (the last value repeats) with +-``jitter`` at random, at least ``Retry-After`` (capped
  at the largest delay). After ``max_attempts`` attempts, or when the next attempt would start later than
  ``max_age_s`` after the first, the event becomes a dead letter (listed in the API, redeliverable) and the
  worker moves on; after ``disable_after_dead_letters`` dead letters in a row without a success the
  subscription is disabled (the spec: disable endpoints that fail consistently). The retry state (attempts,
  first attempt, next attempt) is stored, so a restart continues the schedule instead of restarting it.
* A journal reset or pruning past the cursor loses events for the subscription: the worker logs it, counts
  it in ``gaps`` and continues from the oldest event still journalled.
* Re-enabling a subscription resumes from its cursor (what is still journalled is delivered), or from the
  present with ``skip_backlog``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import random
import re
import secrets as secrets_module
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import events as events_module
from gateway.events import Event, EventBus, ResyncRequired, format_time, utc_now
from gateway.sms.models import new_message_id
from gateway.store import webhooks_sql as sql
from gateway.store.base import Store, StoreError
from gateway.store.webhooks_sql import DeadLetter, WebhookSubscription

log = structlog.get_logger("webhooks")

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: at least 24 bytes, at most 64
EVENT_DEAD_LETTERED = "webhook.dead_lettered"
EVENT_DISABLED = "webhook.disabled"
MAX_URL_LENGTH = 2048
MAX_PATTERNS = 50
_ERROR_BODY_BYTES = 200  # how much of a failing endpoint's answer the error quotes
_CURSOR_FLUSH_EVERY = 1000  # filtered-out events between cursor writes while busy
_PATTERN = re.compile(r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$")


class WebhookError(Exception):
    """Base of the errors the API maps to problems."""


class InvalidWebhook(WebhookError):
    """Bad input; ``field`` names it (``url``, ``event_types``)."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field
        self.detail = detail


class WebhookNotFound(WebhookError):
    pass


class WebhookConflict(WebhookError):
    pass


class WebhookSecretError(ValueError):
    pass


class WebhookSettings(BaseModel):
    """Config key ``webhooks``."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(15.0, gt=0, description="Per attempt; the spec recommends 15-30 s")
    retry_delays_s: tuple[float, ...] = Field((5.0, 30.0, 120.0, 600.0, 3600.0), min_length=1)
    jitter: float = Field(0.2, ge=0, lt=1, description="Each delay is scaled by 1 +- jitter at random")
    max_attempts: int = Field(10, ge=1)
    max_age_s: float = Field(86400.0, gt=0, description="No attempt starts later than this after the first")
    disable_after_dead_letters: int = Field(3, ge=1)
    backlog: int = Field(1000, ge=1, description="Live queue per subscription; beyond it the journal is read")
    journal_page: int = Field(500, ge=1)
    cursor_flush_s: float = Field(1.0, gt=0, description="Idle time before a filtered-out cursor is saved")
    rotation_overlap_s: float = Field(86400.0, ge=0, description="How long the old secret still signs")
    allow_http: bool = Field(False, description="Allow plain http to hosts other than loopback")
    max_subscriptions: int = Field(50, ge=1)
    max_connections: int = Field(20, ge=1)
    user_agent: str = "hcrm-gateway-webhooks/1"

    @model_validator(mode="after")
    def _positive_delays(self) -> WebhookSettings:
        if any(d < 0 for d in self.retry_delays_s):
            raise ValueError("retry_delays_s must not hold negative delays")
        return self


# --- signing (pure) -------------------------------------------------------------------------------------
def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(SECRET_BYTES)).decode()


def decode_secret(secret: str) -> bytes:
    """The HMAC key of ``whsec_<base64>`` (the prefix is optional, as in the reference libraries)."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError("a webhook secret is 'whsec_' followed by base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "<msg_id>.<timestamp>.<body>")>`` (Standard Webhooks, symmetric)."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature per secret, space separated (zero-downtime rotation)."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }


# --- validation (pure) ----------------------------------------------------------------------------------
class EventFilter:
    """Event type patterns: ``*`` (everything), ``sms.*`` (a prefix) or an exact type."""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(patterns)
        self._all = "*" in self.patterns
        self._exact = frozenset(p for p in self.patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in self.patterns if p.endswith(".*"))

    def matches(self, event_type: str) -> bool:
        return self._all or event_type in self._exact or event_type.startswith(self._prefixes)


def validate_patterns(patterns: Sequence[str], known: Iterable[str] | None = None) -> tuple[str, ...]:
    """Patterns without duplicates, each matching at least one known event type (a typo is an error)."""
    known = frozenset(known if known is not None else events_module.EVENT_TYPES)
    if not patterns:
        raise InvalidWebhook("event_types", "at least one event type pattern is required ('*' for all)")
    if len(patterns) > MAX_PATTERNS:
        raise InvalidWebhook("event_types", f"at most {MAX_PATTERNS} patterns")
    malformed = [p for p in patterns if not _PATTERN.match(p)]
    if malformed:
        raise InvalidWebhook(
            "event_types",
            f"malformed pattern(s) {', '.join(map(repr, malformed))}: use '*', 'sms.*' or an exact type",
        )
    unknown = [p for p in patterns if not any(EventFilter([p]).matches(t) for t in known)]
    if unknown:
        raise InvalidWebhook(
            "event_types",
            f"pattern(s) {', '.join(map(repr, unknown))} match no event type; "
            f"known: {', '.join(sorted(known))}",
        )
    return tuple(dict.fromkeys(patterns))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_url(url: str, *, allow_http: bool) -> str:
    """An absolute https URL (http only to loopback, or anywhere when ``allow_http``), without credentials.

    Credentials in a URL end up in logs and proxies; an endpoint authenticates the gateway by the signature.
    Only admins register endpoints, so internal addresses are allowed (the CRM usually is one)."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhook("url", f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError as exc:
        raise InvalidWebhook("url", f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhook("url", "the URL must start with https:// (or http:// to a loopback host)")
    if not parts.hostname:
        raise InvalidWebhook("url", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook(
            "url", "credentials in the URL are refused: endpoints verify the signature instead"
        )
    if parts.fragment:
        raise InvalidWebhook("url", "the URL must not have a #fragment")
    if any(c.isspace() for c in url):
        raise InvalidWebhook("url", "the URL must not contain whitespace")
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise InvalidWebhook(
            "url",
            "plain http is only allowed to a loopback host (webhooks carry patient data); use https, "
            "or set webhooks.allow_http for a trusted network",
        )
    return url


# --- retry schedule (pure) ------------------------------------------------------------------------------
def retry_delay(
    settings: WebhookSettings, attempts: int, rng: random.Random, retry_after: float | None = None
) -> float:
    """Delay after failed attempt number ``attempts`` (1-based): the schedule with jitter, at least
    Retry-After (capped at the largest scheduled delay)."""
    delays = settings.retry_delays_s
    base = delays[min(attempts, len(delays)) - 1]
    delay = base * (1.0 + settings.jitter * (2.0 * rng.random() - 1.0))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(delays)))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class AttemptOutcome:
    status: int | None  # HTTP status; None when there was no answer
    error: str | None  # None on success
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


# --- JSON forms -----------------------------------------------------------------------------------------
def subscription_json(sub: WebhookSubscription, *, secret: str | None = None) -> dict[str, Any]:
    """The API form; secrets only when just created or rotated."""
    body: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "event_types": list(sub.event_types),
        "description": sub.description,
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "created_at": format_time(sub.created_at),
        "updated_at": format_time(sub.updated_at),
        "secret_rotated_at": format_time(sub.secret_rotated_at),
        "delivery": {
            "cursor": {"epoch": sub.cursor_epoch, "seq": sub.cursor_seq},
            "retrying": None
            if sub.head_seq is None
            else {
                "event_id": f"{sub.cursor_epoch}:{sub.head_seq}",
                "attempts": sub.head_attempts,
                "first_attempt_at": format_time(sub.head_first_attempt_at),
                "next_attempt_at": format_time(sub.next_attempt_at),
            },
            "last_status": sub.last_status,
            "last_error": sub.last_error,
            "last_attempt_at": format_time(sub.last_attempt_at),
            "last_success_at": format_time(sub.last_success_at),
            "delivered": sub.delivered,
            "dead_lettered": sub.dead_lettered,
            "gaps": sub.gaps,
        },
    }
    if secret is not None:
        body["secret"] = secret
    return body


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "subscription_id": letter.subscription_id,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "status": letter.status,
        "attempts": letter.attempts,
        "last_status": letter.last_status,
        "last_error": letter.last_error,
        "first_attempt_at": format_time(letter.first_attempt_at),
        "last_attempt_at": format_time(letter.last_attempt_at),
        "created_at": format_time(letter.created_at),
        "updated_at": format_time(letter.updated_at),
        "redelivered_at": format_time(letter.redelivered_at),
        "event": json.loads(letter.payload),
    }


_UNSET: Any = object()


# --- the service ----------------------------------------------------------------------------------------
class WebhookService:
    """Subscriptions CRUD, dead letters, and ``run()``: one delivery worker per enabled subscription.

    ``transport`` replaces httpx's network transport (tests: ``httpx.MockTransport``); ``clock`` gives wall
    time (webhook-timestamp, stored times, max age); waiting uses trio's clock; ``rng`` draws the jitter."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        settings: WebhookSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utc_now,
        rng: random.Random | None = None,
    ):
        self.store = store
        self.bus = bus
        self.settings = settings or WebhookSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._workers: dict[str, _Worker] = {}

    # --- subscriptions --------------------------------------------------------------------------------
    async def create(
        self, *, url: str, event_types: Sequence[str], description: str | None = None, enabled: bool = True
    ) -> tuple[WebhookSubscription, str]:
        """A new subscription (receives events committed from now on) and its secret, shown only here."""
        url = validate_url(url, allow_http=self.settings.allow_http)
        patterns = validate_patterns(event_types)
        secret, now = generate_secret(), self.clock()
        epoch, seq = self.bus.epoch, self.bus.last_seq
        limit = self.settings.max_subscriptions
        sub = WebhookSubscription(
            id=new_message_id("whk_"),
            url=url,
            event_types=patterns,
            description=description,
            secret=secret,
            previous_secret=None,
            previous_secret_until=None,
            secret_rotated_at=None,
            enabled=enabled,
            disabled_reason=None if enabled else "disabled at creation",
            cursor_epoch=epoch,
            cursor_seq=seq,
            head_seq=None,
            head_attempts=0,
            head_first_attempt_at=None,
            next_attempt_at=None,
            last_status=None,
            last_error=None,
            last_attempt_at=None,
            last_success_at=None,
            delivered=0,
            dead_lettered=0,
            consecutive_dead_letters=0,
            gaps=0,
            created_at=now,
            updated_at=now,
        )

        def unit(tx: Any) -> None:
            if sql.count_subscriptions(tx) >= limit:
                raise WebhookConflict(f"at most {limit} webhook subscriptions (webhooks.max_subscriptions)")
            sql.insert_subscription(tx, sub)

        await self.store.write(unit)
        log.info("webhook subscription created", subscription_id=sub.id, event_types=list(patterns))
        if enabled:
            await self._start_worker(sub.id)
        return sub, secret

    async def list(self) -> list[WebhookSubscription]:
        return await self.store.read(sql.list_subscriptions)

    async def get(self, subscription_id: str) -> WebhookSubscription | None:
        return await self.store.read(lambda tx: sql.get_subscription(tx, subscription_id))

    async def update(
        self,
        subscription_id: str,
        *,
        url: str = _UNSET,
        event_types: Sequence[str] = _UNSET,
        description: str | None = _UNSET,
        enabled: bool = _UNSET,
        skip_backlog: bool = False,
    ) -> WebhookSubscription:
        """Change a subscription; its worker restarts with the new settings. Enabling clears the failure
        state and resumes from the cursor (or from now with ``skip_backlog``)."""
        changes: dict[str, Any] = {}
        if url is not _UNSET:
            changes["url"] = validate_url(url, allow_http=self.settings.allow_http)
        if event_types is not _UNSET:
            changes["event_types"] = validate_patterns(event_types)
        if description is not _UNSET:
            changes["description"] = description
        if "url" in changes or "event_types" in changes:
            changes.update(head_seq=None, head_attempts=0, head_first_attempt_at=None, next_attempt_at=None)
        epoch, seq = self.bus.epoch, self.bus.last_seq
        now = self.clock()
        await self._stop_worker(subscription_id)

        def unit(tx: Any) -> WebhookSubscription:
            current = sql.get_subscription(tx, subscription_id)
            if current is None:
                raise WebhookNotFound(f"no webhook subscription {subscription_id!r}")
            if enabled is not _UNSET:
                changes["enabled"] = enabled
                if enabled and not current.enabled:
                    changes.update(disabled_reason=None, consecutive_dead_letters=0)
                elif not enabled:
                    changes["disabled_reason"] = "disabled through the API"
            if skip_backlog:
                changes.update(
                    cursor_epoch=epoch,
                    cursor_seq=seq,
                    head_seq=None,
                    head_attempts=0,
                    head_first_attempt_at=None,
                    next_attempt_at=None,
                )
            changes["updated_at"] = now
            sql.update_subscription(tx, subscription_id, **changes)
            updated = sql.get_subscription(tx, subscription_id)
            assert updated is not None
            return updated

        try:
            sub = await self.store.write(unit)
        finally:
            await self._restart_if_enabled(subscription_id)
        log.info("webhook subscription updated", subscription_id=subscription_id, fields=sorted(changes))
        return sub

    async def delete(self, subscription_id: str) -> None:
        """Delete a subscription and its dead letters."""
        await self._stop_worker(subscription_id)
        deleted = await self.store.write(lambda tx: sql.delete_subscription(tx, subscription_id))
        if not deleted:
            raise WebhookNotFound(f"no webhook subscription {subscription_id!r}")
        log.info("webhook subscription deleted", subscription_id=subscription_id)

    async def rotate_secret(self, subscription_id: str) -> tuple[WebhookSubscription, str]:
        """A new secret; the old one keeps signing (second signature) for ``rotation_overlap_s``."""
        secret, now = generate_secret(), self.clock()
        overlap = timedelta(seconds=self.settings.rotation_overlap_s)
        await self._stop_worker(subscription_id)

        def unit(tx: Any) -> WebhookSubscription:
            current = sql.get_subscription(tx, subscription_id)
            if current is None:
                raise WebhookNotFound(f"no webhook subscription {subscription_id!r}")
            sql.update_subscription(
                tx,
                subscription_id,
                secret=secret,
                previous_secret=current.secret if overlap else None,
                previous_secret_until=now + overlap if overlap else None,
                secret_rotated_at=now,
                updated_at=now,
            )
            return replace(current, secret=secret, secret_rotated_at=now, updated_at=now)

        try:
            sub = await self.store.write(unit)
        finally:
            await self._restart_if_enabled(subscription_id)
        log.info("webhook secret rotated", subscription_id=subscription_id)
        return sub, secret

    # --- dead letters ---------------------------------------------------------------------------------
    async def dead_letters(
        self,
        *,
        subscription_id: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[DeadLetter], str | None]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        rows = await self.store.read(
            lambda tx: sql.list_dead_letters(
                tx, subscription_id=subscription_id, status=status, before_id=cursor, limit=limit + 1
            )
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].id if more else None)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return await self.store.read(lambda tx: sql.get_dead_letter(tx, letter_id))

    async def redeliver(self, letter_id: str) -> DeadLetter:
        """Queue one more attempt of a dead letter by its subscription's worker (after what it is doing)."""
        now = self.clock()

        def unit(tx: Any) -> DeadLetter:
            letter = sql.get_dead_letter(tx, letter_id)
            if letter is None:
                raise WebhookNotFound(f"no dead letter {letter_id!r}")
            sub = sql.get_subscription(tx, letter.subscription_id)
            if sub is None or not sub.enabled:
                raise WebhookConflict(
                    f"subscription {letter.subscription_id} is disabled: enable it before redelivering"
                )
            if letter.status != "pending":
                sql.update_dead_letter(tx, letter_id, status="pending", updated_at=now)
            return replace(letter, status="pending", updated_at=now)

        letter = await self.store.write(unit)
        worker = self._workers.get(letter.subscription_id)
        if worker is not None:
            worker.wake()
        return letter

    # --- running --------------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled: one worker per enabled subscription, started and stopped by the API."""
        connections = self.settings.max_connections
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(self.settings.timeout_s),
            follow_redirects=False,
            limits=limits,
            headers={"user-agent": self.settings.user_agent},
        ) as client:
            try:
                async with trio.open_nursery() as nursery:
                    self._client, self._nursery = client, nursery
                    for sub in await self.store.read(sql.list_subscriptions):
                        if sub.enabled:
                            await self._start_worker(sub.id)
                    log.info("webhook delivery running", workers=len(self._workers))
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self._client, self._nursery = None, None
                self._workers.clear()

    @property
    def running_workers(self) -> int:
        return len(self._workers)

    async def _start_worker(self, subscription_id: str) -> None:
        if self._nursery is None or subscription_id in self._workers:
            return
        worker = _Worker(self, subscription_id)
        self._workers[subscription_id] = worker
        await self._nursery.start(worker.run)

    async def _stop_worker(self, subscription_id: str) -> None:
        worker = self._workers.pop(subscription_id, None)
        if worker is not None:
            worker.scope.cancel()
            await worker.done.wait()

    async def _restart_if_enabled(self, subscription_id: str) -> None:
        sub = await self.get(subscription_id)
        if sub is not None and sub.enabled:
            await self._start_worker(subscription_id)

    def _forget(self, worker: _Worker) -> None:
        if self._workers.get(worker.subscription_id) is worker:
            del self._workers[worker.subscription_id]


class _Stopped(Exception):
    """The subscription was disabled (410 or too many dead letters): its worker ends."""


class _Worker:
    """Delivers one subscription's events in order; see the module docstring."""

    def __init__(self, service: WebhookService, subscription_id: str):
        self.service = service
        self.settings = service.settings
        self.subscription_id = subscription_id
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self._wake_pending = False
        self._idle_scope: trio.CancelScope | None = None
        self._log = log.bind(subscription_id=subscription_id)
        self.sub: WebhookSubscription
        self.filter: EventFilter
        self.epoch, self.seq, self.saved_seq = "", 0, 0

    def wake(self) -> None:
        """A redelivery was queued: handle it once the current event is done (at once when idle)."""
        self._wake_pending = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                task_status.started()
                failures = 0
                while True:
                    try:
                        await self._follow()
                        return
                    except _Stopped:
                        return
                    except Exception:
                        # A bug or a store error must not end delivery for good, nor the whole service.
                        failures += 1
                        delay = min(60.0, 2.0**failures)
                        self._log.exception("webhook worker failed; restarting", retry_in_s=delay)
                        await trio.sleep(delay)
        finally:
            self.service._forget(self)
            self.done.set()

    # --- following the journal ------------------------------------------------------------------------
    async def _follow(self) -> None:
        store, bus = self.service.store, self.service.bus
        sub = await store.read(lambda tx: sql.get_subscription(tx, self.subscription_id))
        if sub is None or not sub.enabled:
            return
        self.sub, self.filter = sub, EventFilter(sub.event_types)
        self.epoch, self.seq = sub.cursor_epoch, sub.cursor_seq
        self.saved_seq = self.seq
        try:
            while True:
                await self._redeliver_pending()
                if self.epoch != bus.epoch:
                    await self._record_gap(f"the event journal was reset (epoch {self.epoch} -> {bus.epoch})")
                    self.epoch, self.seq = bus.epoch, 0
                    continue
                page = await bus.journal.read_events(self.seq, self.settings.journal_page)
                if page and page[0].epoch == self.epoch:
                    if page[0].seq != self.seq + 1:
                        missing = page[0].seq - self.seq - 1
                        await self._record_gap(
                            f"{missing} event(s) after seq {self.seq} were pruned from the journal before "
                            "delivery"
                        )
                        self.seq = page[0].seq - 1
                    for event in page:
                        await self._handle(event)
                    continue
                await self._follow_live()
        finally:
            if self.seq != self.saved_seq:
                with trio.CancelScope(shield=True):
                    try:
                        await self._save_cursor()
                    except StoreError as exc:  # shutting down with the store already closed
                        self._log.warning("webhook cursor not saved", seq=self.seq, error=str(exc))

    async def _follow_live(self) -> None:
        """Live events until the bus drops us (overflow), a resync, or a redelivery request."""
        subscription = self.service.bus.subscribe(
            since=(self.epoch, self.seq), queue_size=self.settings.backlog
        )
        try:
            while True:
                item = await self._next_live(subscription)
                if item is None:
                    return
                if isinstance(item, ResyncRequired):
                    await self._record_gap(f"cannot resume from seq {self.seq}: {item.reason}")
                    self.epoch, self.seq = item.epoch, item.seq
                    continue
                await self._handle(item)
        finally:
            subscription.close()

    async def _next_live(self, subscription: Any) -> Event | ResyncRequired | None:
        """The next live item; None when woken for a redelivery or when the subscription ended. A cursor
        moved by filtered-out events is saved once the subscription has been idle ``cursor_flush_s``."""
        with trio.CancelScope() as scope:
            self._idle_scope = scope
            try:
                if self._wake_pending:
                    return None
                if self.seq != self.saved_seq:
                    with trio.move_on_after(self.settings.cursor_flush_s):
                        return await subscription.__anext__()
                    await self._save_cursor()
                return await subscription.__anext__()
            except StopAsyncIteration:
                return None
            finally:
                self._idle_scope = None
        return None

    async def _handle(self, event: Event) -> None:
        own_notice = event.type.startswith("webhook.") and event.data.get("subscription_id") == self.sub.id
        if own_notice or not self.filter.matches(event.type):
            # Own notices are skipped: a failing endpoint would otherwise feed itself dead letters forever.
            self.seq = event.seq
            if self.seq - self.saved_seq >= _CURSOR_FLUSH_EVERY:
                await self._save_cursor()
            return
        await self._deliver(event)

    # --- delivering one event -------------------------------------------------------------------------
    async def _deliver(self, event: Event) -> None:
        settings, clock = self.settings, self.service.clock
        sub = self.sub
        resumed = sub.head_seq == event.seq and sub.head_attempts > 0
        attempts = sub.head_attempts if resumed else 0
        first_at = sub.head_first_attempt_at if resumed else None
        if resumed and sub.next_attempt_at is not None:
            wait = (sub.next_attempt_at - clock()).total_seconds()
            await trio.sleep(min(max(0.0, wait), max(settings.retry_delays_s)))
        while True:
            outcome = await self._attempt(event.id, event.payload)
            attempts += 1
            now = clock()
            first_at = first_at or now
            if outcome.ok:
                await self._delivered(event, outcome, now)
                return
            if outcome.status == 410:
                await self._dead_letter(event, outcome, attempts, first_at, now, gone=True)
                return
            delay = retry_delay(settings, attempts, self.service.rng, outcome.retry_after)
            too_old = (now + timedelta(seconds=delay) - first_at).total_seconds() > settings.max_age_s
            if attempts >= settings.max_attempts or too_old:
                await self._dead_letter(event, outcome, attempts, first_at, now, gone=False)
                return
            next_at = now + timedelta(seconds=delay)
            await self._save_retry(event, outcome, attempts, first_at, now, next_at)
            self._log.info(
                "webhook attempt failed; retrying",
                event_id=event.id,
                attempts=attempts,
                status=outcome.status,
                error=outcome.error,
                retry_in_s=round(delay, 3),
            )
            await trio.sleep(delay)

    async def _attempt(self, msg_id: str, payload: bytes) -> AttemptOutcome:
        client = self.service._client
        assert client is not None, "WebhookService.run() owns the HTTP client"
        now = self.service.clock()
        headers = webhook_headers(self.sub.signing_secrets(now), msg_id, int(now.timestamp()), payload)
        timeout = self.settings.timeout_s
        try:
            with trio.fail_after(timeout):
                async with client.stream("POST", self.sub.url, content=payload, headers=headers) as response:
                    status = response.status_code
                    if 200 <= status < 300:
                        return AttemptOutcome(status, None)
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= _ERROR_BODY_BYTES:
                            break
                    return AttemptOutcome(
                        status,
                        _describe_failure(status, body, response.headers.get("location")),
                        parse_retry_after(response.headers.get("retry-after"), now),
                    )
        except trio.TooSlowError:
            return AttemptOutcome(None, f"no answer within {timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return AttemptOutcome(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    # --- persistence ------------------------------------------------------------------------------------
    async def _save_cursor(self) -> None:
        epoch, seq, now = self.epoch, self.seq, self.service.clock()
        await self.service.store.write(
            lambda tx: sql.update_subscription(
                tx, self.subscription_id, cursor_epoch=epoch, cursor_seq=seq, updated_at=now
            )
        )
        self.saved_seq = seq

    async def _delivered(self, event: Event, outcome: AttemptOutcome, now: datetime) -> None:
        changes = dict(
            cursor_epoch=event.epoch,
            cursor_seq=event.seq,
            head_seq=None,
            head_attempts=0,
            head_first_attempt_at=None,
            next_attempt_at=None,
            last_status=outcome.status,
            last_error=None,
            last_attempt_at=now,
            last_success_at=now,
            delivered=self.sub.delivered + 1,
            consecutive_dead_letters=0,
        )
        await self._update_subscription(changes)
        self.seq = self.saved_seq = event.seq

    async def _save_retry(
        self,
        event: Event,
        outcome: AttemptOutcome,
        attempts: int,
        first_at: datetime,
        now: datetime,
        next_at: datetime,
    ) -> None:
        changes = dict(
            head_seq=event.seq,
            head_attempts=attempts,
            head_first_attempt_at=first_at,
            next_attempt_at=next_at,
            last_status=outcome.status,
            last_error=outcome.error,
            last_attempt_at=now,
        )
        if self.seq != self.saved_seq:  # the head's cursor must be saved with it (seq = event.seq - 1)
            changes.update(cursor_epoch=self.epoch, cursor_seq=self.seq)
        await self._update_subscription(changes)
        self.saved_seq = self.seq

    async def _dead_letter(
        self,
        event: Event,
        outcome: AttemptOutcome,
        attempts: int,
        first_at: datetime,
        now: datetime,
        *,
        gone: bool,
    ) -> None:
        sub = self.sub
        streak = sub.consecutive_dead_letters + 1
        reason = None
        if gone:
            reason = "the endpoint answered 410 Gone"
        elif streak >= self.settings.disable_after_dead_letters:
            reason = f"{streak} events in a row were dead-lettered (last error: {outcome.error})"
        letter = DeadLetter(
            id=new_message_id("whdl_"),
            subscription_id=sub.id,
            event_id=event.id,
            event_type=event.type,
            payload=event.payload,
            status="dead",
            attempts=attempts,
            last_status=outcome.status,
            last_error=outcome.error,
            first_attempt_at=first_at,
            last_attempt_at=now,
            created_at=now,
            updated_at=now,
            redelivered_at=None,
        )
        changes: dict[str, Any] = dict(
            cursor_epoch=event.epoch,
            cursor_seq=event.seq,
            head_seq=None,
            head_attempts=0,
            head_first_attempt_at=None,
            next_attempt_at=None,
            last_status=outcome.status,
            last_error=outcome.error,
            last_attempt_at=now,
            dead_lettered=sub.dead_lettered + 1,
            consecutive_dead_letters=streak,
            updated_at=now,
        )
        if reason is not None:
            changes.update(enabled=False, disabled_reason=reason)

        def unit(tx: Any) -> None:
            sql.insert_dead_letter(tx, letter)
            sql.update_subscription(tx, sub.id, **changes)
            tx.append_event(
                EVENT_DEAD_LETTERED,
                {
                    "dead_letter_id": letter.id,
                    "subscription_id": sub.id,
                    "event_id": event.id,
                    "event_type": event.type,
                    "attempts": attempts,
                    "last_status": outcome.status,
                    "last_error": outcome.error,
                },
            )
            if reason is not None:
                tx.append_event(EVENT_DISABLED, {"subscription_id": sub.id, "reason": reason})

        await self.service.store.write(unit)
        self.sub = replace(self.sub, **changes)
        self.seq = self.saved_seq = event.seq
        self._log.warning(
            "webhook event dead-lettered",
            event_id=event.id,
            dead_letter_id=letter.id,
            attempts=attempts,
            status=outcome.status,
            error=outcome.error,
        )
        if reason is not None:
            self._log.warning("webhook subscription disabled", reason=reason)
            raise _Stopped(reason)

    async def _record_gap(self, what: str) -> None:
        self._log.warning("webhook events lost", detail=what, epoch=self.epoch, seq=self.seq)
        await self._update_subscription({"gaps": self.sub.gaps + 1})

    async def _update_subscription(self, changes: dict[str, Any]) -> None:
        sid = self.subscription_id
        await self.service.store.write(lambda tx: sql.update_subscription(tx, sid, **changes))
        self.sub = replace(self.sub, **changes)

    # --- redeliveries ---------------------------------------------------------------------------------
    async def _redeliver_pending(self) -> None:
        """One attempt per queued dead letter: redelivered, or dead again with the new error."""
        self._wake_pending = False
        store = self.service.store
        pending = await store.read(lambda tx: sql.pending_redeliveries(tx, self.subscription_id))
        for letter in pending:
            outcome = await self._attempt(letter.event_id, letter.payload)
            now = self.service.clock()
            changes: dict[str, Any] = dict(
                attempts=letter.attempts + 1,
                last_status=outcome.status,
                last_error=outcome.error,
                last_attempt_at=now,
                updated_at=now,
            )
            if outcome.ok:
                changes.update(status="redelivered", redelivered_at=now)
            else:
                changes["status"] = "dead"
            await store.write(lambda tx, c=changes, lid=letter.id: sql.update_dead_letter(tx, lid, **c))
            self._log.info("webhook redelivery", dead_letter_id=letter.id, ok=outcome.ok, error=outcome.error)
            if outcome.status == 410:
                await self._disable("the endpoint answered 410 Gone", now)

    async def _disable(self, reason: str, now: datetime) -> None:
        sid = self.subscription_id

        def unit(tx: Any) -> None:
            sql.update_subscription(tx, sid, enabled=False, disabled_reason=reason, updated_at=now)
            tx.append_event(EVENT_DISABLED, {"subscription_id": sid, "reason": reason})

        await self.service.store.write(unit)
        self._log.warning("webhook subscription disabled", reason=reason)
        raise _Stopped(reason)


def _describe_failure(status: int, body: bytes, location: str | None) -> str:
    if 300 <= status < 400:
        where = f" to {location}" if location else ""
        return f"HTTP {status}: redirect{where} not followed; update the webhook URL"
    text = body[:_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"
