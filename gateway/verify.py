"""Verification codes (one-time codes by SMS): what stops malicious online appointment booking.

``start(to, purpose)`` sends a fresh code through an ``otp`` template; ``check(id, code)`` answers approved,
denied, expired, too_many_attempts or canceled. What an attacker meets:

- Brute force: a code is 6 digits from ``secrets`` (10^6 values); a verification accepts at most
  ``max_attempts`` (5) checks IN TOTAL, across resends, then locks (``too_many_attempts``); a code lives
  ``ttl_s`` (300 s). New codes cost a send, and sends are rate limited (below), so guessing stays at
  about 5 in 10^6 per code sent.
- Stolen database: the code is never stored. ``code_hash = HMAC-SHA256(key, id || 0x00 || code)``: a plain SHA
  of a 6-digit code is reversed by trying all 10^6 values; the HMAC needs the key, which is configured
  (``verify.secret_key``, kept out of the database) or else generated once into the ``meta`` table. The id in
  the MAC binds a hash to its verification. The SMS text that carried a code is blanked (``sweep``) once the
  verification is finished and the message left the queue; until then the messages table holds it (the
  dispatcher needs it to send).
- Replay: an approved verification never approves again (a second check answers ``denied``).
- Timing: the presented code is compared as an HMAC with ``hmac.compare_digest``, and the HMAC is computed
  for every check, whatever the verification's state.
- Enumeration and SMS pumping (OWASP API4/API6 2023): ids are ULIDs with 80 random bits; sends are limited per
  number (5/h, 10/day), per number range (the number without its last four digits, 30/h) and for the whole
  gateway (1000/h); only mobile numbers of the allowed regions get codes; resends wait ``resend_cooldown_s``.
- Concurrency: every state change (attempt counting, approval, rate-limit check and the send record) happens
  in ONE store unit of work, so two concurrent checks cannot both use the last attempt.

Events (never the code): ``verification.sent`` {id, to, purpose, message_id, expires_at, resend}
and ``verification.checked`` {id, to, purpose, status, attempts, attempts_remaining}.
"""

# New event types for gateway/events.py EVENT_TYPES (routing engineer):
# verification.sent, verification.checked

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.events import format_time, utc_now
from gateway.numbers import DEFAULT_REGION, InvalidNumber, normalize
from gateway.sms.models import InvalidRequest, SubmitRequest, new_message_id
from gateway.sms.template_store import TemplateStore
from gateway.store import verify_sql as sql
from gateway.store.base import Store, StoreTx

log = structlog.get_logger("verify")

_PURPOSE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_LOCALE = re.compile(r"^[a-z]{2}(-[A-Za-z0-9]{2,8})?$")
_ID = re.compile(r"^ver_[0-9A-Z]{26}$")
REDACTED_TEXT = "[verification code redacted]"
# Message statuses after which the text is no longer needed by the dispatcher.
_TEXT_NO_LONGER_NEEDED = frozenset({"sent", "delivered", "undelivered", "failed", "canceled"})
CHECK_STATUSES = ("approved", "denied", "expired", "too_many_attempts", "canceled")


# --- settings -------------------------------------------------------------------------------------------
class PurposeSettings(BaseModel):
    """Per-purpose behaviour (``verify.purposes.<name>``; ``verify.default`` for the others)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template_id: str | None = None  # None: verification_code.<locale>
    code_length: int = Field(6, ge=4, le=10)
    ttl_s: float = Field(300.0, gt=0, le=3600)  # default 5 min
    max_attempts: int = Field(5, ge=1, le=20)
    resend_cooldown_s: float = Field(30.0, ge=0)


class VerificationSettings(BaseModel):
    """The ``verify`` config section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: PurposeSettings = PurposeSettings()
    purposes: dict[str, PurposeSettings] = Field(default_factory=dict)
    default_locale: str = "ja"
    hospital: str = Field("病院", min_length=1, description="{hospital} in the code template")
    per_number_hour: int = Field(5, ge=1)
    per_number_day: int = Field(10, ge=1)
    per_prefix_hour: int = Field(30, ge=1)
    global_hour: int = Field(1000, ge=1)
    # Regions whose numbers may receive codes; None: the gateway's default region only.
    allowed_regions: tuple[str, ...] | None = None
    # phonenumbers.PhoneNumberType names, lower case (premium rate, shared cost, VoIP ... are refused).
    allowed_number_types: tuple[str, ...] = ("mobile", "fixed_line_or_mobile")
    # HMAC key, at least 32 bytes (64 hex digits); None: generated once and kept in the database.
    secret_key: SecretStr | None = None
    retention_days: float = Field(7.0, gt=0)  # finished verifications are deleted after this
    sweep_interval_s: float = Field(30.0, gt=0)

    @field_validator("secret_key")
    @classmethod
    def _key_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(_key_bytes(v.get_secret_value())) < 32:
            raise ValueError(
                "secret_key must be at least 32 bytes (e.g. 64 hex digits from `openssl rand -hex 32`)"
            )
        return v

    @field_validator("allowed_number_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in v if not hasattr(phonenumbers.PhoneNumberType, t.upper())]
        if unknown:
            raise ValueError(f"unknown number type(s): {', '.join(unknown)}")
        return v

    def for_purpose(self, purpose: str) -> PurposeSettings:
        return self.purposes.get(purpose, self.default)


def _key_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode("utf-8")


# --- results and errors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    id: str
    to: str
    purpose: str
    status: str  # pending, approved, expired, too_many_attempts, canceled, failed
    created_at: datetime
    expires_at: datetime
    resend_after: datetime
    attempts: int
    max_attempts: int
    sends: int

    @classmethod
    def from_row(cls, row: sql.VerificationRow) -> Verification:
        return cls(
            row.id,
            row.to,
            row.purpose,
            row.status,
            row.created_at,
            row.expires_at,
            row.resend_after,
            row.attempts,
            row.max_attempts,
            row.sends,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "to": self.to,
            "purpose": self.purpose,
            "status": self.status,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at),
            "resend_after": format_time(self.resend_after),
            "attempts_remaining": max(0, self.max_attempts - self.attempts),
        }


@dataclass(frozen=True)
class CheckResult:
    id: str
    status: str  # one of CHECK_STATUSES
    attempts_remaining: int
    reason: str | None = None  # "wrong_code", "already_used", "failed_to_send"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "attempts_remaining": self.attempts_remaining,
            "reason": self.reason,
        }


class VerificationNotFound(LookupError):
    def __init__(self, verification_id: str):
        super().__init__(f"no verification with id {verification_id!r}")


class VerificationConflict(Exception):
    """409: the verification's state does not allow the operation (resend after approval ...)."""


class RateLimited(Exception):
    """429: too many codes; ``retry_after_s`` says when the next one would be allowed."""

    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: float):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = max(1, math.ceil(retry_after_s))


class ResendTooSoon(RateLimited):
    code = "resend_too_soon"


# --- the service ----------------------------------------------------------------------------------------
class VerificationService:
    def __init__(
        self,
        store: Store,
        sms: Any,  # gateway.sms.service.SmsService (submit)
        templates: TemplateStore,
        *,
        settings: VerificationSettings | None = None,
        region: str = DEFAULT_REGION,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._store = store
        self._sms = sms
        self._templates = templates
        self.settings = settings or VerificationSettings()
        self.region = region.upper()
        self._clock = clock
        self._allowed_regions = {r.upper() for r in (self.settings.allowed_regions or (self.region,))}
        self._allowed_types = {
            getattr(phonenumbers.PhoneNumberType, t.upper()) for t in self.settings.allowed_number_types
        }
        configured = self.settings.secret_key
        self._key: bytes | None = _key_bytes(configured.get_secret_value()) if configured else None

    # --- public API --------------------------------------------------------------------------------------
    async def start(
        self, to: str, purpose: str, *, template_id: str | None = None, locale: str | None = None
    ) -> Verification:
        """Send a new code to ``to`` (cancelling a pending one for the same purpose); raises InvalidRequest,
        RateLimited or ``templates.MissingVariables``."""
        if not isinstance(purpose, str) or not _PURPOSE.match(purpose):
            raise InvalidRequest(
                "invalid_purpose",
                "purpose must be 1-64 characters: a lower-case letter, then letters, digits, '_', '.' or '-'",
                "purpose",
            )
        if locale is not None and (not isinstance(locale, str) or not _LOCALE.match(locale)):
            raise InvalidRequest(
                "invalid_request", f"locale {locale!r} is not a language tag like ja or zh", "locale"
            )
        e164 = self._allowed_number(to)
        policy = self.settings.for_purpose(purpose)
        template = await self._otp_template(template_id or policy.template_id, locale)
        code = self._new_code(policy.code_length)
        text = self._render(template, code, policy)
        key = await self._hmac_key()
        now = self._clock()
        vid = new_message_id("ver_")
        row = sql.VerificationRow(
            id=vid,
            to=e164,
            purpose=purpose,
            status="pending",
            code_hash=_mac(key, vid, code),
            max_attempts=policy.max_attempts,
            template_id=template.id,
            created_at=now,
            expires_at=now + timedelta(seconds=policy.ttl_s),
            resend_after=now + timedelta(seconds=policy.resend_cooldown_s),
        )

        def reserve(tx: StoreTx) -> None:
            self._enforce_limits(tx, e164, now)
            for old in sql.pending_verifications(tx, e164, purpose):  # one live code per number and purpose
                sql.update_verification(tx, old, status="canceled", finished_at=now)
            sql.insert_verification(tx, row)
            sql.record_send(tx, vid, e164, _prefix(e164), now)

        await self._store.write(reserve)
        await self._send(row, text, resend=False)
        log.info("verification started", verification_id=vid, to=e164, purpose=purpose)
        return Verification.from_row(row)

    async def resend(self, verification_id: str) -> Verification:
        """A new code for the same verification (the old one stops working); expiry starts again."""
        row = await self._store.read(lambda tx: sql.get_verification(tx, verification_id))
        if row is None:
            raise VerificationNotFound(verification_id)
        policy = self.settings.for_purpose(row.purpose)
        template = await self._otp_template(row.template_id, None)
        code = self._new_code(policy.code_length)
        text = self._render(template, code, policy)
        key = await self._hmac_key()
        now = self._clock()

        def renew(tx: StoreTx) -> sql.VerificationRow:
            current = sql.get_verification(tx, verification_id)
            if current is None:
                raise VerificationNotFound(verification_id)
            if current.status not in ("pending", "expired"):
                raise VerificationConflict(
                    f"verification {verification_id} is {current.status}: start a new verification"
                )
            if now < current.resend_after:
                wait = (current.resend_after - now).total_seconds()
                raise ResendTooSoon(f"a new code can be sent in {math.ceil(wait)} s", wait)
            self._enforce_limits(tx, current.to, now)
            if current.message_id is not None:
                _redact_if_done(tx, current.message_id, now)
            changes = dict(
                status="pending",
                code_hash=_mac(key, verification_id, code),
                sends=current.sends + 1,
                expires_at=now + timedelta(seconds=policy.ttl_s),
                resend_after=now + timedelta(seconds=policy.resend_cooldown_s),
                finished_at=None,
            )
            sql.update_verification(tx, verification_id, **changes)
            sql.record_send(tx, verification_id, current.to, _prefix(current.to), now)
            return sql.get_verification(tx, verification_id)  # type: ignore[return-value]

        renewed = await self._store.write(renew)
        await self._send(renewed, text, resend=True)
        log.info("verification code resent", verification_id=verification_id, sends=renewed.sends)
        return Verification.from_row(renewed)

    async def check(self, verification_id: str, code: str) -> CheckResult:
        """Compare ``code`` with the current code; every comparison counts as an attempt."""
        presented = _normalise_code(code)
        key = await self._hmac_key()
        now = self._clock()
        candidate = _mac(key, verification_id, presented)

        def unit(tx: StoreTx) -> CheckResult:
            row = sql.get_verification(tx, verification_id)
            if row is None:
                raise VerificationNotFound(verification_id)
            if row.status == "pending" and row.expires_at <= now:
                sql.update_verification(tx, row.id, status="expired", finished_at=now)
                row.status = "expired"
            attempts = row.attempts
            if row.status == "pending":
                attempts += 1
                if hmac.compare_digest(candidate, row.code_hash):
                    status, reason, new_status = "approved", None, "approved"
                elif attempts >= row.max_attempts:
                    status, reason, new_status = "too_many_attempts", "wrong_code", "too_many_attempts"
                else:
                    status, reason, new_status = "denied", "wrong_code", "pending"
                changes: dict[str, Any] = {"attempts": attempts, "checked_at": now, "status": new_status}
                if new_status != "pending":
                    changes["finished_at"] = now
                sql.update_verification(tx, row.id, **changes)
            elif row.status == "approved":
                status, reason = "denied", "already_used"  # a code approves once: replays fail
            elif row.status == "failed":
                status, reason = "canceled", "failed_to_send"
            else:
                status, reason = row.status, None
            remaining = max(0, row.max_attempts - attempts) if status != "approved" else 0
            tx.append_event(
                "verification.checked",
                {
                    "id": row.id,
                    "to": row.to,
                    "purpose": row.purpose,
                    "status": status,
                    "reason": reason,
                    "attempts": attempts,
                    "attempts_remaining": remaining,
                },
            )
            return CheckResult(row.id, status, remaining, reason)

        result = await self._store.write(unit)
        log.info(
            "verification checked",
            verification_id=verification_id,
            status=result.status,
            reason=result.reason,
        )
        return result

    async def get(self, verification_id: str) -> Verification | None:
        if not _ID.match(verification_id or ""):
            return None
        row = await self._store.read(lambda tx: sql.get_verification(tx, verification_id))
        return None if row is None else Verification.from_row(row)

    async def cancel(self, verification_id: str) -> Verification:
        now = self._clock()

        def unit(tx: StoreTx) -> sql.VerificationRow:
            row = sql.get_verification(tx, verification_id)
            if row is None:
                raise VerificationNotFound(verification_id)
            if row.status == "pending":
                sql.update_verification(tx, row.id, status="canceled", finished_at=now)
                row.status, row.finished_at = "canceled", now
            elif row.status != "canceled":
                raise VerificationConflict(f"verification {verification_id} is {row.status} already")
            return row

        return Verification.from_row(await self._store.write(unit))

    # --- housekeeping ------------------------------------------------------------------------------------
    async def sweep(self) -> dict[str, int]:
        """Expire due codes, blank the SMS texts of finished verifications, forget old rows."""
        now = self._clock()
        retention = timedelta(days=self.settings.retention_days)

        def unit(tx: StoreTx) -> dict[str, int]:
            expired = sql.expire_due(tx, now)
            redacted = 0
            for row in sql.unredacted_finished(tx):
                if row.message_id is None or _redact_if_done(tx, row.message_id, now):
                    sql.update_verification(tx, row.id, redacted=True)
                    redacted += 1
            sends = sql.delete_sends_before(tx, now - timedelta(days=1, hours=1))
            forgotten = sql.delete_verifications_before(tx, now - retention)
            return {
                "expired": len(expired),
                "redacted": redacted,
                "sends_deleted": sends,
                "deleted": forgotten,
            }

        counts = await self._store.write(unit)
        if any(counts.values()):
            log.info("verification sweep", **counts)
        return counts

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep every ``sweep_interval_s`` until cancelled (owned by the daemon's nursery)."""
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self.settings.sweep_interval_s)

    # --- internals ---------------------------------------------------------------------------------------
    def _allowed_number(self, to: Any) -> str:
        if not isinstance(to, str):
            raise InvalidRequest("invalid_number", "'to' must be a string", "to")
        try:
            e164 = normalize(to, self.region).e164
        except InvalidNumber as exc:
            raise InvalidRequest("invalid_number", str(exc), "to") from None
        parsed = phonenumbers.parse(e164)
        region = phonenumbers.region_code_for_number(parsed)
        if region not in self._allowed_regions:
            raise InvalidRequest(
                "number_not_allowed",
                f"verification codes are sent only to numbers of {', '.join(sorted(self._allowed_regions))}",
                "to",
            )
        if phonenumbers.number_type(parsed) not in self._allowed_types:
            raise InvalidRequest(
                "number_not_allowed",
                "verification codes are sent only to "
                + " or ".join(t.replace("_", " ") for t in self.settings.allowed_number_types)
                + " numbers",
                "to",
            )
        return e164

    async def _otp_template(self, template_id: str | None, locale: str | None) -> Any:
        tid = template_id or f"verification_code.{locale or self.settings.default_locale}"
        stored = await self._templates.get(tid)
        if stored is None:
            raise InvalidRequest("unknown_template", f"no template with id {tid!r}", "template")
        if stored.template.category != "otp":
            raise InvalidRequest(
                "invalid_template",
                f"template {tid!r} has category {stored.template.category!r}; codes need an otp template",
                "template",
            )
        return stored.template

    def _render(self, template: Any, code: str, policy: PurposeSettings) -> str:
        values = {"code": code, "minutes": math.ceil(policy.ttl_s / 60), "hospital": self.settings.hospital}
        return template.render(values).text

    @staticmethod
    def _new_code(length: int) -> str:
        return f"{secrets.randbelow(10**length):0{length}d}"

    async def _hmac_key(self) -> bytes:
        if self._key is None:
            stored = await self._store.write(lambda tx: sql.hmac_key(tx, secrets.token_hex(32)))
            self._key = bytes.fromhex(stored)
        return self._key

    def _enforce_limits(self, tx: StoreTx, e164: str, now: datetime) -> None:
        s = self.settings
        hour, day = timedelta(hours=1), timedelta(days=1)
        limits: list[tuple[timedelta, int, dict[str, str], str]] = [
            (hour, s.per_number_hour, {"to": e164}, "this number"),
            (day, s.per_number_day, {"to": e164}, "this number"),
            (hour, s.per_prefix_hour, {"prefix": _prefix(e164)}, "this number range"),
            (hour, s.global_hour, {}, "all numbers"),
        ]
        for window, limit, where, who in limits:
            times = sql.send_times(tx, since=now - window, **where)
            if len(times) >= limit:
                wait = (times[len(times) - limit] + window - now).total_seconds()
                per = "hour" if window == hour else "day"
                raise RateLimited(
                    f"at most {limit} verification codes per {per} to {who}; retry in {math.ceil(wait)} s",
                    wait,
                )

    async def _send(self, row: sql.VerificationRow, text: str, *, resend: bool) -> None:
        request = SubmitRequest(to=row.to, text=text, category="otp", client_ref=row.id)
        try:
            result = await self._sms.submit(request)
        except InvalidRequest:
            now = self._clock()
            await self._store.write(
                lambda tx: sql.update_verification(tx, row.id, status="failed", finished_at=now)
            )
            raise
        message_id = result.message.id

        def record(tx: StoreTx) -> None:
            sql.update_verification(tx, row.id, message_id=message_id)
            tx.append_event(
                "verification.sent",
                {
                    "id": row.id,
                    "to": row.to,
                    "purpose": row.purpose,
                    "message_id": message_id,
                    "expires_at": format_time(row.expires_at),
                    "resend": resend,
                },
            )

        await self._store.write(record)


def _mac(key: bytes, verification_id: str, code: str) -> str:
    return hmac.new(key, f"{verification_id}\x00{code}".encode(), hashlib.sha256).hexdigest()


def _prefix(e164: str) -> str:
    return e164[:-4]


def _normalise_code(code: Any) -> str:
    """Digits as typed on a phone: full-width digits (NFKC) and spaces or hyphens are accepted."""
    if not isinstance(code, str):
        raise InvalidRequest("invalid_code", "'code' must be a string of digits", "code")
    text = re.sub(r"[\s\-]", "", unicodedata.normalize("NFKC", code))
    if not re.fullmatch(r"[0-9]{4,10}", text):
        raise InvalidRequest("invalid_code", "the code must be 4 to 10 digits", "code")
    return text


def _redact_if_done(tx: StoreTx, message_id: str, now: datetime) -> bool:
    """Blank the text and PDUs of a code's SMS once the dispatcher no longer needs them; True when done."""
    message = tx.get_message(message_id)
    if message is None:
        return True
    if str(message.status) not in _TEXT_NO_LONGER_NEEDED:
        return False
    tx.update_message(message_id, text=REDACTED_TEXT, updated_at=now)
    for part in message.part_list:
        tx.update_part(message_id, part.seq, segment_hex=None)
    return True
