"""Consent: the opt-out registry, the submit policy that honours it, and opt-out keywords in incoming SMS.

# Event types used here (gateway/events.py EVENT_TYPES): sms.opted_out (and the sms.received data keys
# ``opt_out``, plus ``in_reply_to``/``campaign_id``/``answer`` from gateway/sms/replies.py).

Registry. A row (number, category) says the number refused that category; category ``*`` means every
category that honours opt-outs. Categories listed in ``bypass_categories`` (default: the transactional ones,
otp, lab_result and appointment) are never refused: a patient who texted STOP to the newsletter must still
get the lab result the doctor asked for. An opt-out for a bypassing category would have no effect and is
refused at the API rather than stored as a promise we do not keep.

Keywords. An incoming SMS whose whole text is a keyword (STOP, 配信停止, 退订, TD by default), compared after
``normalize_reply`` (NFKC: full-width "ＳＴＯＰ" and half-width forms match; case, spaces and surrounding
punctuation ignored), opts its sender out of ``*``. Exact whole-message matching, as the carriers' default
opt-out handling does (Braze: "exact, single-word, case-insensitive messages"; Telnyx accepts "stop all"
with its space), so "please don't stop my reminders" opts nobody out. TD/退订 are the Chinese operators'
customary "回复TD退订" keywords (AWS End User Messaging lists TD among its required opt-out keywords).

Confirmation. The keyword's confirmation text (configurable per keyword; empty: none) is queued through
``send_later`` (``SmsService.submit_nowait``: submitted after this transaction commits) in
``confirmation_category``, which must bypass opt-outs (the number has just opted out), from the modem that
received the keyword when ``confirm_from_receiving_modem`` (the patient's phone threads by our number). A
number that repeats the keyword within ``reconfirm_after_s`` gets no second confirmation, which also stops a
loop with an auto-responder.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.events import utc_now
from gateway.numbers import DEFAULT_REGION, InvalidNumber, normalize
from gateway.sms.models import InvalidRequest, Message, NotFound, SubmitRequest
from gateway.sms.replies import ReplyRules, normalize_reply
from gateway.store import consent_sql
from gateway.store.base import Store
from gateway.store.consent_sql import ALL_CATEGORIES, OptOut

log = structlog.get_logger("sms.consent")

DEFAULT_CATEGORIES = ("otp", "lab_result", "appointment", "billing", "care", "education", "report")
TRANSACTIONAL_CATEGORIES = ("otp", "lab_result", "appointment")
_JA_CONFIRMATION = "配信停止を承りました。今後、お知らせや健康情報のメッセージはお送りしません。"
_ZH_CONFIRMATION = "退订成功，您将不再收到本院的通知与健康资讯短信。"
DEFAULT_KEYWORDS = {
    "STOP": "You are unsubscribed: we will send you no more notices or health information by SMS.",
    "配信停止": _JA_CONFIRMATION,
    "退订": _ZH_CONFIRMATION,
    "TD": _ZH_CONFIRMATION,
}
MAX_REASON = 500
MAX_LIST_LIMIT = 200


class ConsentSettings(BaseModel):
    """Config section ``consent``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # keyword -> confirmation text sent back ("" = no confirmation)
    keywords: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_KEYWORDS))
    bypass_categories: frozenset[str] = frozenset(TRANSACTIONAL_CATEGORIES)
    # categories the API accepts in an opt-out; None: any name (the routing config is the authority)
    categories: frozenset[str] | None = frozenset(DEFAULT_CATEGORIES)
    confirmation_category: str = "otp"
    confirm_from_receiving_modem: bool = True
    reconfirm_after_s: float = Field(24 * 3600.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> ConsentSettings:
        seen: dict[str, str] = {}
        for keyword in self.keywords:
            key = normalize_reply(keyword)
            if not key:
                raise ValueError(f"consent keyword {keyword!r} is empty once spaces and punctuation go")
            if key in seen:
                raise ValueError(
                    f"consent keywords {seen[key]!r} and {keyword!r} are the same once normalised"
                )
            seen[key] = keyword
        if any(self.keywords.values()) and self.confirmation_category not in self.bypass_categories:
            raise ValueError(
                f"confirmation_category {self.confirmation_category!r} must be one of bypass_categories "
                f"({', '.join(sorted(self.bypass_categories)) or 'none'}): the number has just opted out"
            )
        if self.categories is not None:
            unknown = sorted((self.bypass_categories | {self.confirmation_category}) - self.categories)
            if unknown:
                raise ValueError(f"consent names unknown categories: {', '.join(unknown)}")
        return self

    def with_categories(self, categories: Any) -> ConsentSettings:
        """These settings with the category list and the bypass set taken from the routing configuration
        (``gateway.sms.categories.Categories``: ``names()`` and ``get(name).bypass_opt_out``), so the two
        can never disagree. Raises ValueError (pydantic) if the confirmation category does not bypass."""
        names = categories.names()
        values = self.model_dump()
        values["categories"] = frozenset(names)
        values["bypass_categories"] = frozenset(n for n in names if categories.get(n).bypass_opt_out)
        return ConsentSettings.model_validate(values)


def _opt_out_detail(row: OptOut, category: str) -> str:
    scope = "every category that honours opt-outs" if row.category == ALL_CATEGORIES else repr(category)
    how = "by replying with an opt-out keyword" if row.source == "keyword" else "through the API"
    return (
        f"the recipient opted out of {scope} on {row.created_at:%Y-%m-%d} ({how}); "
        f"a {category!r} message is not sent to this number"
    )


class OptOutPolicy:
    """SubmitPolicy: refuses a message in a category the recipient opted out of (``InvalidRequest`` code
    ``opted_out``, field ``to``). Runs inside the submit's unit of work."""

    def __init__(self, settings: ConsentSettings | None = None, *, sql: Any = consent_sql):
        self.settings = settings or ConsentSettings()
        self._sql = sql

    def check(self, tx: Any, request: SubmitRequest, e164: str, category: str) -> None:
        if category in self.settings.bypass_categories:
            return
        row = self._sql.blocking_opt_out(tx, e164, category)
        if row is not None:
            raise InvalidRequest("opted_out", _opt_out_detail(row, category), "to")


class OptOutKeywordHook:
    """InboundHook: an incoming keyword opts the sender out of ``*`` (module docstring)."""

    def __init__(
        self,
        settings: ConsentSettings | None = None,
        *,
        send_later: Callable[[SubmitRequest], Any],
        sql: Any = consent_sql,
    ):
        self.settings = settings or ConsentSettings()
        self._send_later = send_later
        self._sql = sql
        self._keywords = {normalize_reply(k): (k, text) for k, text in self.settings.keywords.items()}
        self._reconfirm_after = timedelta(seconds=self.settings.reconfirm_after_s)

    def match(self, text: str) -> str | None:
        """The configured keyword ``text`` is, or None."""
        found = self._keywords.get(normalize_reply(text))
        return found[0] if found else None

    def on_received(self, tx: Any, message: Message, data: dict[str, Any]) -> None:
        data.setdefault("opt_out", False)
        keyword = self.match(message.text)
        if keyword is None:
            return
        number = message.sender
        if number is None:
            log.warning("opt-out keyword from a sender without a number ignored", sender=message.sender_raw)
            return
        now = message.received_at or message.created_at
        data["opt_out"] = True
        created = self._sql.add_opt_out(
            tx,
            number,
            ALL_CATEGORIES,
            source="keyword",
            reason=f"keyword {keyword}",
            message_id=message.id,
            now=now,
        )
        if created:
            tx.append_event(
                "sms.opted_out",
                {
                    "number": number,
                    "categories": [ALL_CATEGORIES],
                    "source": "keyword",
                    "keyword": keyword,
                    "reason": f"keyword {keyword}",
                    "message_id": message.id,
                    "bypass_categories": sorted(self.settings.bypass_categories),
                },
            )
        confirmation = self._keywords[normalize_reply(keyword)][1]
        if confirmation and self._may_confirm(tx, number, now):
            route = message.modem if self.settings.confirm_from_receiving_modem else None
            self._send_later(
                SubmitRequest(
                    to=number,
                    text=confirmation,
                    category=self.settings.confirmation_category,
                    route=route,
                    client_ref=f"opt-out:{message.id}",
                )
            )
            self._sql.mark_confirmed(tx, number, ALL_CATEGORIES, now)
        log.info("opted out by keyword", number=number, keyword=keyword, new=created)

    def _may_confirm(self, tx: Any, number: str, now: datetime) -> bool:
        row = self._sql.blocking_opt_out(tx, number, ALL_CATEGORIES)
        return row is None or row.confirmed_at is None or now - row.confirmed_at >= self._reconfirm_after


class ConsentService:
    """The opt-out registry as the API uses it (numbers normalised like submitted messages)."""

    def __init__(
        self,
        store: Store,
        settings: ConsentSettings | None = None,
        *,
        region: str = DEFAULT_REGION,
        clock: Callable[[], datetime] = utc_now,
        reply_rules: ReplyRules | None = None,
        sql: Any = consent_sql,
    ):
        self._store = store
        self.settings = settings or ConsentSettings()
        self.region = region
        self._clock = clock
        self._sql = sql
        self.reply_rules = reply_rules

    def normalize_number(self, raw: Any, field: str = "number") -> str:
        if not isinstance(raw, str):
            raise InvalidRequest("invalid_number", f"{field!r} must be a string", field)
        try:
            return normalize(raw, self.region).e164
        except InvalidNumber as exc:
            raise InvalidRequest("invalid_number", str(exc), field) from None

    def check_category(self, category: Any, field: str = "categories") -> str:
        if not isinstance(category, str) or not category:
            raise InvalidRequest("invalid_category", "a category must be a non-empty string", field)
        if category == ALL_CATEGORIES:
            return category
        known = self.settings.categories
        if known is not None and category not in known:
            raise InvalidRequest(
                "invalid_category",
                f"unknown category {category!r} (one of: {', '.join(sorted(known))}, or '*' for all)",
                field,
            )
        if category in self.settings.bypass_categories:
            raise InvalidRequest(
                "invalid_category",
                f"category {category!r} bypasses opt-outs (consent.bypass_categories): an opt-out for it "
                "would have no effect",
                field,
            )
        return category

    async def add(
        self, number: Any, categories: Any = None, reason: Any = None
    ) -> tuple[list[OptOut], list[str]]:
        """Opt ``number`` out of ``categories`` (default ``["*"]``). Returns the number's rows and the
        categories that were newly added (existing rows keep their first date and source)."""
        e164 = self.normalize_number(number)
        if categories is None:
            categories = [ALL_CATEGORIES]
        if not isinstance(categories, list) or not categories:
            raise InvalidRequest("invalid_category", "categories must be a non-empty list", "categories")
        wanted = list(dict.fromkeys(self.check_category(c) for c in categories))
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise InvalidRequest(
                "invalid_request", f"reason must be a string of at most {MAX_REASON} characters", "reason"
            )
        now = self._clock()

        def unit(tx: Any) -> tuple[list[OptOut], list[str]]:
            added = [
                c
                for c in wanted
                if self._sql.add_opt_out(tx, e164, c, source="api", reason=reason, message_id=None, now=now)
            ]
            if added:
                tx.append_event(
                    "sms.opted_out",
                    {
                        "number": e164,
                        "categories": added,
                        "source": "api",
                        "keyword": None,
                        "reason": reason,
                        "message_id": None,
                        "bypass_categories": sorted(self.settings.bypass_categories),
                    },
                )
            return self._sql.list_opt_outs(tx, number=e164, after=None, limit=MAX_LIST_LIMIT), added

        rows, added = await self._store.write(unit)
        log.info("opt-out added", number=e164, categories=added)
        return rows, added

    async def remove(self, number: Any, category: str | None = None) -> int:
        """Remove the number's opt-out for ``category`` ('*' included), or all of them; NotFound if none."""
        e164 = self.normalize_number(number)
        if category is not None and not category:
            raise InvalidRequest("invalid_category", "category must not be empty", "category")

        def unit(tx: Any) -> int:
            removed = self._sql.remove_opt_outs(tx, e164, category)
            if removed == 0:
                rows = self._sql.list_opt_outs(tx, number=e164, after=None, limit=MAX_LIST_LIMIT)
                if rows:
                    held = ", ".join(repr(r.category) for r in rows)
                    raise NotFound(f"the number has no opt-out for {category!r} (it has: {held})")
                raise NotFound("the number has no opt-out")
            return removed

        removed = await self._store.write(unit)
        log.info("opt-out removed", number=e164, category=category or "all", rows=removed)
        return removed

    async def list(
        self, number: Any = None, *, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[OptOut], str | None]:
        e164 = None if number is None else self.normalize_number(number)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequest(
                "invalid_parameter", f"limit must be between 1 and {MAX_LIST_LIMIT}", "limit"
            )
        after = decode_cursor(cursor) if cursor else None
        rows = await self._store.read(
            lambda tx: self._sql.list_opt_outs(tx, number=e164, after=after, limit=limit + 1)
        )
        page = rows[:limit]
        return page, (encode_cursor(page[-1]) if len(rows) > limit else None)

    async def blocking(self, number: str, category: str) -> OptOut | None:
        """The opt-out that would refuse a ``category`` message to the E.164 ``number`` (None: allowed)."""
        if category in self.settings.bypass_categories:
            return None
        return await self._store.read(lambda tx: self._sql.blocking_opt_out(tx, number, category))


_CURSOR_PREFIX = "o1:"


def encode_cursor(row: OptOut) -> str:
    text = f"{_CURSOR_PREFIX}{row.number}\n{row.category}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number, sep, category = text.removeprefix(_CURSOR_PREFIX).partition("\n")
    if not text.startswith(_CURSOR_PREFIX) or not sep or not number or not category:
        raise InvalidRequest("invalid_parameter", "the cursor is not one this server returned", "cursor")
    return number, category
