"""Replies: an incoming SMS answers the latest message the gateway sent to that number.

``ReplyCorrelator`` is an InboundHook (gateway.sms.models.InboundHook). Inside the transaction that commits an
incoming message it finds the outgoing message most recently sent to the sender within ``window_hours``
(default 72 h) and adds to the ``sms.received`` data:

* ``in_reply_to``: that message's id (null: nothing sent to the number within the window);
* ``campaign_id``: the message's campaign (null when it has none, or when messages carry no campaign);
* ``answer``: when the message or its campaign has a reply rule, the parsed answer (null if the text does not
  fit the rule); null without a rule.

Correlation is by number only: a patient answers from the phone we wrote to, and the phone threads the
conversation by our number, so "the latest thing we sent" is what the patient sees above the reply box.

Reply rules (``ReplyRule``): ``{"kind": "range", "min": 1, "max": 5}`` (a survey score; exactly one integer in
the reply, e.g. "4", "４", "4です") or ``{"kind": "choices", "values": ["はい", "いいえ"]}`` (the whole reply,
compared after ``normalize_reply``). Rules are stored per message id or per campaign id (a message's own rule
wins). Each correlated reply is also stored in the ``replies`` table for survey tallies.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway.events import utc_now
from gateway.sms.models import InvalidRequest, Message, NotFound
from gateway.store import consent_sql
from gateway.store.base import Store

log = structlog.get_logger("sms.replies")

RULE_SCOPES = ("message", "campaign")
MAX_CHOICES = 50
MAX_CHOICE_LENGTH = 70  # one UCS-2 SMS
_INTEGER = re.compile(r"[+-]?\d+")


def normalize_reply(text: str) -> str:
    """The form in which replies and keywords are compared.

    NFKC folds full-width Latin letters and digits to ASCII ("ＳＴＯＰ" -> "STOP", "５" -> "5") and
    half-width katakana to full-width (Unicode UAX #15, compatibility composition); ``casefold`` removes case;
    every whitespace character is removed (a phone keyboard inserts U+3000 between CJK words); leading and
    trailing punctuation and symbols go ("STOP!", "「配信停止」。").
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    compact = "".join(ch for ch in folded if not ch.isspace())
    start, end = 0, len(compact)
    while start < end and unicodedata.category(compact[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(compact[end - 1])[0] in "PS":
        end -= 1
    return compact[start:end]


@dataclass(frozen=True)
class RangeRule:
    """An integer answer between ``min`` and ``max`` inclusive (e.g. a 1-5 satisfaction score)."""

    min: int
    max: int
    kind: str = "range"

    def parse(self, text: str) -> int | None:
        numbers = _INTEGER.findall(unicodedata.normalize("NFKC", text))
        if len(numbers) != 1:  # "3 or 4", "4.5": ambiguous, no answer
            return None
        value = int(numbers[0])
        return value if self.min <= value <= self.max else None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class ChoicesRule:
    """One of ``values``; the answer is the value as configured, whatever width or case the patient used."""

    values: tuple[str, ...]
    kind: str = "choices"

    def parse(self, text: str) -> str | None:
        reply = normalize_reply(text)
        for value in self.values:
            if normalize_reply(value) == reply:
                return value
        return None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}


ReplyRule = RangeRule | ChoicesRule


def parse_reply_rule(obj: Any) -> ReplyRule:
    """Build a rule from its JSON form; ValueError names what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("a reply rule must be an object with a 'kind'")
    kind = obj.get("kind")
    if kind == "range":
        unknown = sorted(set(obj) - {"kind", "min", "max"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} in a range rule (fields: kind, min, max)")
        low, high = obj.get("min"), obj.get("max")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise ValueError("a range rule needs integer 'min' and 'max'")
        if low > high:
            raise ValueError(f"range rule: min {low} is greater than max {high}")
        return RangeRule(low, high)
    if kind == "choices":
        unknown = sorted(set(obj) - {"kind", "values"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} in a choices rule (fields: kind, values)")
        values = obj.get("values")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ValueError("a choices rule needs 'values': a non-empty list of strings")
        if len(values) > MAX_CHOICES:
            raise ValueError(f"a choices rule takes at most {MAX_CHOICES} values")
        seen: dict[str, str] = {}
        for value in values:
            key = normalize_reply(value)
            if not key or len(value) > MAX_CHOICE_LENGTH:
                raise ValueError(
                    f"choice {value!r} must have 1 to {MAX_CHOICE_LENGTH} characters besides spaces and "
                    "punctuation"
                )
            if key in seen:
                raise ValueError(f"choices {seen[key]!r} and {value!r} are the same reply once normalised")
            seen[key] = value
        return ChoicesRule(tuple(values))
    raise ValueError(f"unknown reply rule kind {kind!r} (one of: range, choices)")


def _load_rule(rule_json: str | None, where: str) -> ReplyRule | None:
    if rule_json is None:
        return None
    try:
        return parse_reply_rule(json.loads(rule_json))
    except ValueError as exc:  # stored by an older version or by hand: never lose the incoming message
        log.error("unusable reply rule ignored", rule=where, error=str(exc))
        return None


class ReplySettings(BaseModel):
    """Config section ``replies``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_hours: float = Field(72.0, gt=0, le=24 * 366)


class ReplyCorrelator:
    """InboundHook: ``in_reply_to``, ``campaign_id`` and ``answer`` in ``sms.received`` (module docstring)."""

    def __init__(self, settings: ReplySettings | None = None, *, sql: Any = consent_sql):
        self.settings = settings or ReplySettings()
        self._window = timedelta(hours=self.settings.window_hours)
        self._sql = sql

    def on_received(self, tx: Any, message: Message, data: dict[str, Any]) -> None:
        data.setdefault("in_reply_to", None)
        data.setdefault("campaign_id", None)
        data.setdefault("answer", None)
        if message.sender is None:  # alphanumeric sender or short code: we never wrote to it
            return
        received_at = message.received_at or message.created_at
        outbound = self._sql.latest_outbound(tx, message.sender, received_at - self._window)
        if outbound is None:
            return
        rule = _load_rule(self._sql.get_reply_rule(tx, "message", outbound.message_id), outbound.message_id)
        if rule is None and outbound.campaign_id is not None:
            rule = _load_rule(
                self._sql.get_reply_rule(tx, "campaign", outbound.campaign_id), outbound.campaign_id
            )
        answer = rule.parse(message.text) if rule is not None else None
        data.update(in_reply_to=outbound.message_id, campaign_id=outbound.campaign_id, answer=answer)
        self._sql.record_reply(
            tx,
            message.id,
            in_reply_to=outbound.message_id,
            campaign_id=outbound.campaign_id,
            answer_json=None if answer is None else json.dumps(answer, ensure_ascii=False),
            received_at=received_at,
        )


class ReplyRules:
    """Attach, read and remove the reply rule of an outgoing message or a campaign (the API's side)."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] = utc_now, sql: Any = consent_sql):
        self._store = store
        self._clock = clock
        self._sql = sql

    @staticmethod
    def _check_scope(scope: str) -> None:
        if scope not in RULE_SCOPES:
            raise InvalidRequest(
                "invalid_request", f"scope must be one of: {', '.join(RULE_SCOPES)}", "scope"
            )

    async def put(self, scope: str, ref_id: str, rule: Any) -> ReplyRule:
        """Validate and store (replacing any earlier rule). A message rule needs an outgoing message."""
        self._check_scope(scope)
        try:
            parsed = parse_reply_rule(rule)
        except ValueError as exc:
            raise InvalidRequest("invalid_reply_rule", str(exc), "rule") from None
        rule_json = json.dumps(parsed.to_json(), ensure_ascii=False)
        now = self._clock()

        def unit(tx: Any) -> None:
            if scope == "message":
                message = tx.get_message(ref_id)
                if message is None or message.direction != "out":
                    raise NotFound(f"no outgoing message {ref_id!r}")
            self._sql.put_reply_rule(tx, scope, ref_id, rule_json, now)

        await self._store.write(unit)
        return parsed

    async def get(self, scope: str, ref_id: str) -> ReplyRule | None:
        self._check_scope(scope)
        stored = await self._store.read(lambda tx: self._sql.get_reply_rule(tx, scope, ref_id))
        return _load_rule(stored, ref_id)

    async def delete(self, scope: str, ref_id: str) -> bool:
        self._check_scope(scope)
        return await self._store.write(lambda tx: self._sql.delete_reply_rule(tx, scope, ref_id))
