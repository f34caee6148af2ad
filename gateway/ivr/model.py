"""The IVR call-flow tree: pydantic models of the YAML format (issue 6).

One YAML document: ``entry``, ``timezone``, ``languages``/``default_language``, ``schedules``, ``nodes``
(node id -> definition, ``type:`` selects the kind), ``loop_limit``/``loop_fallback``. Unknown keys
are errors.

These models check the *shape* of each value (a key is a DTMF key, a time is HH:MM, a timeout is in range).
Everything that needs the whole tree or the disk (targets exist, reachability, cycles without caller input,
prompt files, language coverage) is in ``gateway.ivr.checks``; use ``gateway.ivr.loader`` to get a tree that
passed both. A runtime walks a validated tree with ``IvrTree.nodes[id]``, ``Node.edges()``,
``Node.waits_for_caller``, ``Schedule.state_at()`` and ``expand_prompt()``.

Loop guard semantics (for the runtime): a call that enters one node more than ``loop_limit`` times goes to
``loop_fallback`` (or hangs up when it is not set, or when the fallback itself passes the limit).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# ITU-T Q.23: 16 keys, 4 x 4 (A-D exist on the keypad matrix, rarely on phones).
DTMF_KEYS = "0123456789*#ABCD"
BUILTIN_VARIABLES = frozenset({"caller_number", "called_number", "line_id", "call_id", "language"})
SAY_KINDS = ("number", "digits", "date")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PROMPT_EXTENSIONS = (".wav", ".flac", ".ogg", ".au", ".aiff")  # tried in order when a reference omits it


def _named(regex: str, what: str, hint: str):
    """A constrained string with a readable error (pydantic's own says only "should match pattern")."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not valid ({hint})")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": regex})]


NodeId = _named(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$", "node id", "a letter, then letters, digits, _ . -")
Name = _named(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "name", "letters, digits, _ . -; at most 64")
VariableName = _named(r"^[a-z_][a-z0-9_]{0,31}$", "variable name", "lower-case letters, digits and _")
LanguageCode = _named(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", "language code", "BCP 47, e.g. ja, en, zh")


def _dtmf_key(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        value = str(value)  # YAML reads an unquoted 1 as a number
    if not isinstance(value, str) or len(value) != 1 or value.upper() not in DTMF_KEYS:
        raise ValueError(f"{value!r} is not a DTMF key (one of 0-9 * # A-D; quote * and # in YAML)")
    return value.upper()


DtmfKey = Annotated[
    str, BeforeValidator(_dtmf_key), WithJsonSchema({"type": "string", "pattern": "^[0-9*#A-Da-d]$"})
]


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Tokyo)") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_timezone)]


def _prompt_path(value: str) -> str:
    if not value.strip():
        raise ValueError("a prompt file name cannot be empty")
    if value.startswith(("/", "~")) or "\\" in value or ".." in value.split("/") or ":" in value:
        raise ValueError(f"prompt {value!r} must be a path inside the prompt directory (relative, no '..')")
    if re.sub(r"\{lang\}", "", value).count("{") or "}" in re.sub(r"\{lang\}", "", value):
        raise ValueError(f"prompt {value!r}: the only placeholder allowed is {{lang}}")
    return value


def _prompt_ref(value: Any) -> Any:
    if isinstance(value, str):
        return _prompt_path(value)
    if isinstance(value, dict) and value:
        for lang, path in value.items():
            if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*", lang):
                raise ValueError(f"{lang!r} is not a language code (BCP 47, e.g. ja, en, zh)")
            if not isinstance(path, str):
                raise ValueError(f"the {lang} prompt must be a file name, not {type(path).__name__}")
            _prompt_path(path)
        return value
    raise ValueError("a prompt is a file name (extension optional, {lang} allowed) or a map language -> file")


# "welcome" (any language), "{lang}/welcome" (one file per tree language), {ja: ja/welcome, en: en/welcome}.
PromptRef = Annotated[
    str | dict[str, str],
    BeforeValidator(_prompt_ref),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "description": "file name; {lang} = each language"},
                {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$"},
                    "additionalProperties": {"type": "string", "minLength": 1},
                    "description": "one file per language",
                },
            ]
        }
    ),
]


def expand_prompt(ref: str | dict[str, str], languages: list[str]) -> dict[str | None, str]:
    """The file reference for each language: ``{None: path}`` when one file serves every language."""
    if isinstance(ref, dict):
        return dict(ref)
    if "{lang}" in ref:
        return {lang: ref.replace("{lang}", lang) for lang in languages}
    return {None: ref}


# Fragment files a runtime concatenates to speak a value, named by what they say, per language family.
# number (ja, zh): digits 0-9 and the bare unit words 10 100 1000 10000 100000000 (十 百 千 万 億/亿); a file
# named by a combined value (ja 300 さんびゃく, 3000 さんぜん) is used instead of digit + unit when present.
# number (en): 0-19, the tens 20-90, and 100 1000 1000000 (hundred, thousand, million).
# date: month-1..month-12 and day-1..day-31 (ja ついたち..., en ordinals) + the year as a number (+ "year"
# suffix word in ja/zh: 年).  digits: 0-9, one file each.
_CJK_NUMBER = [str(d) for d in range(10)] + ["10", "100", "1000", "10000", "100000000"]
_SAY_FRAGMENTS: dict[str, dict[str, list[str]]] = {
    "ja": {"number": _CJK_NUMBER},
    "zh": {"number": _CJK_NUMBER},
    "en": {
        "number": [str(n) for n in range(20)]
        + [str(n) for n in range(20, 100, 10)]
        + ["100", "1000", "1000000"]
    },
}
for _lang, _kinds in _SAY_FRAGMENTS.items():
    _kinds["digits"] = [str(d) for d in range(10)]
    _months_days = [f"month-{m}" for m in range(1, 13)] + [f"day-{d}" for d in range(1, 32)]
    _kinds["date"] = _kinds["number"] + _months_days + (["year"] if _lang in ("ja", "zh") else [])


def say_fragments_needed(kind: str, language: str) -> list[str] | None:
    """File names (without extension) needed to say ``kind`` in ``language``; None = no rules for it."""
    rules = _SAY_FRAGMENTS.get(language.split("-")[0].lower())
    return None if rules is None else list(rules[kind])


def say_languages() -> list[str]:
    return sorted(_SAY_FRAGMENTS)


_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-(([01]\d|2[0-3]):([0-5]\d)|24:00)$")


def parse_hours(value: str) -> tuple[int, int]:
    """'08:30-12:00' -> minutes since local midnight (510, 720); the end may be 24:00."""
    m = _RANGE.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not an opening-hours range HH:MM-HH:MM (e.g. 08:30-12:00)")
    start = int(m.group(1)) * 60 + int(m.group(2))
    end = 24 * 60 if m.group(3) == "24:00" else int(m.group(4)) * 60 + int(m.group(5))
    if end <= start:
        raise ValueError(f"{value!r}: the end must be after the start (split ranges over midnight)")
    return start, end


def _hours(value: str) -> str:
    parse_hours(value)
    return value.strip()


HoursRange = Annotated[
    str,
    AfterValidator(_hours),
    WithJsonSchema({"type": "string", "pattern": _RANGE.pattern, "examples": ["08:30-12:00"]}),
]


def _no_overlap(ranges: list[str]) -> list[str]:
    spans = sorted((parse_hours(r), r) for r in ranges)
    for (a, ra), (b, rb) in zip(spans, spans[1:], strict=False):
        if b[0] < a[1]:
            raise ValueError(f"{rb} overlaps {ra}")
    return ranges


Seconds = Annotated[float, Field(gt=0, le=3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------- schedules


class WeeklyHours(_Strict):
    """Opening hours per weekday in the schedule's local time; a missing day is closed."""

    mon: list[HoursRange] = []
    tue: list[HoursRange] = []
    wed: list[HoursRange] = []
    thu: list[HoursRange] = []
    fri: list[HoursRange] = []
    sat: list[HoursRange] = []
    sun: list[HoursRange] = []

    @field_validator(*WEEKDAYS)
    @classmethod
    def _disjoint(cls, ranges: list[str]) -> list[str]:
        return _no_overlap(ranges)


class Holiday(_Strict):
    """Closed for the day (branch ``holiday``); ``until`` makes it a range, both ends included."""

    date: dt.date
    until: dt.date | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Holiday:
        if self.until is not None and self.until < self.date:
            raise ValueError(f"until {self.until} is before date {self.date}")
        return self

    def covers(self, day: dt.date) -> bool:
        return self.date <= day <= (self.until or self.date)


class ScheduleException(_Strict):
    """One date with its own hours, overriding the weekly hours and holidays; ``hours: []`` = closed."""

    date: dt.date
    hours: list[HoursRange] = []
    name: str | None = None

    @field_validator("hours")
    @classmethod
    def _disjoint(cls, ranges: list[str]) -> list[str]:
        return _no_overlap(ranges)


class Schedule(_Strict):
    timezone: TimeZoneName | None = Field(None, description="default: the tree's timezone")
    weekly: WeeklyHours
    holidays: list[Holiday] = []
    exceptions: list[ScheduleException] = []

    @field_validator("exceptions")
    @classmethod
    def _one_per_date(cls, items: list[ScheduleException]) -> list[ScheduleException]:
        seen: set[dt.date] = set()
        for item in items:
            if item.date in seen:
                raise ValueError(f"two exceptions for {item.date}")
            seen.add(item.date)
        return items

    def state_at(self, when: dt.datetime, default_timezone: str = "Asia/Tokyo") -> str:
        """'open', 'closed' or 'holiday' at an aware instant.

        Exceptions win over holidays, holidays over the weekly hours."""
        if when.tzinfo is None:
            raise ValueError("state_at needs a timezone-aware datetime")
        local = when.astimezone(ZoneInfo(self.timezone or default_timezone))
        minute = local.hour * 60 + local.minute
        day = local.date()

        def within(ranges: list[str]) -> bool:
            return any(start <= minute < end for start, end in map(parse_hours, ranges))

        for exc in self.exceptions:
            if exc.date == day:
                return "open" if within(exc.hours) else "closed"
        if any(h.covers(day) for h in self.holidays):
            return "holiday"
        return "open" if within(getattr(self.weekly, WEEKDAYS[local.weekday()])) else "closed"


# ------------------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Edge:
    """A static transition: ``path`` is where the target is written, relative to the node's mapping."""

    label: str
    target: str
    path: tuple[str | int, ...]


class _Node(_Strict):
    description: str | None = Field(None, description="a note for operators, shown in the console")
    waits_for_caller: ClassVar[bool] = False  # True when the node blocks on the caller (keys, voice, queue)

    def edges(self) -> list[Edge]:
        return []

    def prompt_refs(self) -> list[tuple[tuple[str | int, ...], str | dict[str, str]]]:
        """Every prompt reference with its path in the node (for file checks)."""
        return []

    def say_kinds(self) -> set[str]:
        """The kinds of values this node speaks from fragments (number, digits, date)."""
        return set()


def _prompt_fields(node: BaseModel, *names: str) -> list[tuple[tuple[str | int, ...], Any]]:
    found = []
    for name in names:
        value = getattr(node, name)
        if isinstance(value, list):
            found += [((name, i), ref) for i, ref in enumerate(value)]
        elif value is not None:
            found.append(((name,), value))
    return found


class Collect(_Strict):
    """Multi-digit input (patient number, date of birth) stored in a variable."""

    min_digits: int = Field(1, ge=1, le=32)
    max_digits: int = Field(ge=1, le=32)
    terminator: Literal["#", "*"] | None = Field("#", description="ends input early; null = none")
    store_as: VariableName
    next: NodeId

    @model_validator(mode="after")
    def _bounds(self) -> Collect:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits {self.min_digits} is more than max_digits {self.max_digits}")
        return self


class MenuNode(_Node):
    """Choose by one key (``options``) or type several digits (``collect``); retries on invalid/timeout.

    ``tries`` counts invalid entries and timeouts together (Wazo ``max_tries``); when they run out the call
    goes to ``on_failure``. ``back_key`` returns to the previous menu of the call, ``top_key`` to
    ``main_menu``, ``repeat_key`` replays the long greeting."""

    type: Literal["menu"]
    waits_for_caller: ClassVar[bool] = True
    greeting: PromptRef = Field(description="long greeting, played the first time")
    short_greeting: PromptRef | None = Field(None, description="played on repeats and returns")
    options: dict[DtmfKey, NodeId] | None = None
    collect: Collect | None = None
    first_digit_timeout: Seconds = 5.0
    inter_digit_timeout: Seconds = 3.0
    tries: int = Field(3, ge=1, le=10)
    invalid_prompt: PromptRef | None = None
    timeout_prompt: PromptRef | None = None
    on_failure: NodeId
    back_key: DtmfKey | None = None
    repeat_key: DtmfKey | None = None
    top_key: DtmfKey | None = None
    sensitive: bool = Field(False, description="digits never logged, redacted in events")

    @model_validator(mode="after")
    def _one_mode(self) -> MenuNode:
        if (self.options is None) == (self.collect is None):
            raise ValueError("a menu needs exactly one of `options` (one key) or `collect` (several digits)")
        if self.options is not None and not self.options:
            raise ValueError("`options` is empty")
        return self

    def edges(self) -> list[Edge]:
        out = [Edge(f"key {k}", t, ("options", k)) for k, t in (self.options or {}).items()]
        if self.collect:
            out.append(Edge(f"{self.collect.store_as} entered", self.collect.next, ("collect", "next")))
        out.append(Edge("tries exhausted", self.on_failure, ("on_failure",)))
        return out

    def prompt_refs(self):
        return _prompt_fields(self, "greeting", "short_greeting", "invalid_prompt", "timeout_prompt")


class PlayNode(_Node):
    """Play prompts in order, then go to ``next``; a key in ``interrupt_keys`` skips the rest."""

    type: Literal["play"]
    prompts: list[PromptRef] = Field(min_length=1)
    interrupt_keys: list[DtmfKey] = []
    next: NodeId

    @property
    def waits_for_caller(self) -> bool:  # type: ignore[override]
        return bool(self.interrupt_keys)

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]

    def prompt_refs(self):
        return _prompt_fields(self, "prompts")


class SayPrompt(_Strict):
    prompt: PromptRef


class SayValue(_Strict):
    var: VariableName
    as_: Literal["number", "digits", "date"] = Field(alias="as")


def _say_item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "prompt_item" if "prompt" in value else "value_item"
    return "prompt_item" if isinstance(value, SayPrompt) else "value_item"


SayItem = Annotated[
    Annotated[SayPrompt, Tag("prompt_item")] | Annotated[SayValue, Tag("value_item")],
    Discriminator(_say_item_kind),
]


class SayNode(_Node):
    """Speak prompts and variable values (numbers, digits, dates) built from per-language fragments."""

    type: Literal["say"]
    items: list[SayItem] = Field(min_length=1)
    next: NodeId

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]

    def prompt_refs(self):
        return [
            (("items", i, "prompt"), it.prompt)
            for i, it in enumerate(self.items)
            if isinstance(it, SayPrompt)
        ]

    def say_kinds(self) -> set[str]:
        return {it.as_ for it in self.items if isinstance(it, SayValue)}


class ScheduleNode(_Node):
    """Branch on a schedule at the moment the call reaches the node."""

    type: Literal["schedule"]
    schedule: Name
    open: NodeId
    closed: NodeId
    holiday: NodeId | None = Field(None, description="default: the closed branch")

    def edges(self) -> list[Edge]:
        out = [Edge("open", self.open, ("open",)), Edge("closed", self.closed, ("closed",))]
        if self.holiday:
            out.append(Edge("holiday", self.holiday, ("holiday",)))
        return out


class QueueAnnouncements(_Strict):
    """Periodic announcements: ``position_prompt`` <number> ``position_suffix``; the same for the wait
    in minutes. Numbers are spoken from the tree's say fragments."""

    every: float = Field(60, ge=10, le=3600)
    position_prompt: PromptRef | None = None
    position_suffix: PromptRef | None = None
    wait_prompt: PromptRef | None = None
    wait_suffix: PromptRef | None = None

    @model_validator(mode="after")
    def _something(self) -> QueueAnnouncements:
        if self.position_prompt is None and self.wait_prompt is None:
            raise ValueError("announce needs position_prompt or wait_prompt")
        return self


class QueueNode(_Node):
    """Wait for a free operator position (headset port) with looped hold content."""

    type: Literal["queue"]
    waits_for_caller: ClassVar[bool] = True
    positions: list[Name] = Field(min_length=1, description="operator positions (headset ports)")
    priority: int = Field(0, ge=0, le=9, description="higher is answered first")
    hold_playlist: list[PromptRef] = Field(min_length=1, description="played in order, looped")
    announce: QueueAnnouncements | None = None
    max_wait: Seconds = 300.0
    max_callers: int | None = Field(None, ge=1, le=1000)
    on_overflow: NodeId = Field(description="max_wait passed, queue full or no position staffed")

    @field_validator("positions")
    @classmethod
    def _unique(cls, items: list[str]) -> list[str]:
        dup = sorted({p for p in items if items.count(p) > 1})
        if dup:
            raise ValueError(f"position {dup[0]!r} is listed twice")
        return items

    def edges(self) -> list[Edge]:
        return [Edge("overflow", self.on_overflow, ("on_overflow",))]

    def prompt_refs(self):
        found = _prompt_fields(self, "hold_playlist")
        if self.announce:
            found += [
                (("announce", *p), r)
                for p, r in _prompt_fields(
                    self.announce, "position_prompt", "position_suffix", "wait_prompt", "wait_suffix"
                )
            ]
        return found

    def say_kinds(self) -> set[str]:
        return {"number"} if self.announce else set()


class AnswerRange(_Strict):
    min: int = Field(ge=0, le=999_999)
    max: int = Field(ge=0, le=999_999)

    @model_validator(mode="after")
    def _ordered(self) -> AnswerRange:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is more than max {self.max}")
        return self


class SurveyQuestion(_Strict):
    """Stored with each answer: survey, revision, ``id`` and the exact ``text`` the caller heard."""

    id: Name
    text: str | dict[str, str] = Field(description="the question as spoken; per language when they differ")
    prompt: PromptRef
    keys: dict[DtmfKey, str] | None = Field(None, description="key -> stored answer, e.g. {'1': yes}")
    range: AnswerRange | None = Field(None, description="a number typed by the caller, ended by #")

    @model_validator(mode="after")
    def _one_answer_kind(self) -> SurveyQuestion:
        if (self.keys is None) == (self.range is None):
            raise ValueError(f"question {self.id!r} needs exactly one of `keys` or `range`")
        if self.keys is not None and not self.keys:
            raise ValueError(f"question {self.id!r}: `keys` is empty")
        texts = [self.text] if isinstance(self.text, str) else list(self.text.values())
        if not texts or not all(t.strip() for t in texts):
            raise ValueError(f"question {self.id!r}: the text cannot be empty")
        return self


class SurveyNode(_Node):
    """Ask questions in order; an unanswered question (tries exhausted) is stored as no answer."""

    type: Literal["survey"]
    waits_for_caller: ClassVar[bool] = True
    survey: Name = Field(description="the name answers are stored under")
    revision: int = Field(ge=1, description="bump when a question's text or answers change")
    intro: PromptRef | None = None
    questions: list[SurveyQuestion] = Field(min_length=1)
    timeout: Seconds = 5.0
    inter_digit_timeout: Seconds = 3.0
    tries: int = Field(2, ge=1, le=10)
    invalid_prompt: PromptRef | None = None
    sensitive: bool = False
    next: NodeId

    @field_validator("questions")
    @classmethod
    def _unique_ids(cls, items: list[SurveyQuestion]) -> list[SurveyQuestion]:
        ids = [q.id for q in items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"question id {dup[0]!r} is used twice")
        return items

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]

    def prompt_refs(self):
        found = _prompt_fields(self, "intro", "invalid_prompt")
        return found + [(("questions", i, "prompt"), q.prompt) for i, q in enumerate(self.questions)]


class RecordNode(_Node):
    """Voicemail: optional prompt, beep, record until a finish key, silence or ``max_length``."""

    type: Literal["record"]
    waits_for_caller: ClassVar[bool] = True
    prompt: PromptRef | None = None
    beep: bool = True
    max_length: float = Field(120.0, gt=0, le=600)
    silence_end: float | None = Field(
        5.0, gt=0, le=60, description="seconds of silence that end it; null = off"
    )
    finish_keys: list[DtmfKey] = ["#"]
    mailbox: Name
    next: NodeId

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]

    def prompt_refs(self):
        return _prompt_fields(self, "prompt")


class WebhookNode(_Node):
    """Ask the CRM: send variables, store answer fields, branch on ``branch_on``.

    A timeout, an HTTP error or an answer that is not JSON goes to ``on_error`` (the fallback)."""

    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    method: Literal["POST", "GET"] = "POST"
    send: list[VariableName] = []
    timeout: float = Field(3.0, gt=0, le=30)
    store: dict[VariableName, str] = Field({}, description="variable -> field of the JSON answer")
    branch_on: str = Field("result", min_length=1, description="field of the JSON answer")
    branches: dict[str, NodeId] = {}
    default: NodeId = Field(description="the answer is not one of `branches`")
    on_error: NodeId = Field(description="timeout, HTTP error or an answer that is not JSON")

    def edges(self) -> list[Edge]:
        out = [Edge(f"{self.branch_on}={v}", t, ("branches", v)) for v, t in self.branches.items()]
        return out + [
            Edge("default", self.default, ("default",)),
            Edge("error", self.on_error, ("on_error",)),
        ]


class SetNode(_Node):
    type: Literal["set"]
    variables: dict[VariableName, str | int | float | bool] = Field(min_length=1)
    next: NodeId

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]


class GotoNode(_Node):
    type: Literal["goto"]
    target: NodeId

    def edges(self) -> list[Edge]:
        return [Edge("goto", self.target, ("target",))]


class HangupNode(_Node):
    type: Literal["hangup"]
    prompt: PromptRef | None = Field(None, description="played before hanging up")

    def prompt_refs(self):
        return _prompt_fields(self, "prompt")


class LanguageNode(_Node):
    """Let the caller choose the language; on timeout or invalid keys the current language stays."""

    type: Literal["language"]
    waits_for_caller: ClassVar[bool] = True
    prompt: PromptRef
    options: dict[DtmfKey, LanguageCode] = Field(min_length=1)
    timeout: Seconds = 5.0
    tries: int = Field(2, ge=1, le=10)
    next: NodeId

    def edges(self) -> list[Edge]:
        return [Edge("next", self.next, ("next",))]

    def prompt_refs(self):
        return _prompt_fields(self, "prompt")


_NODE_CLASS_LIST = (
    MenuNode,
    PlayNode,
    SayNode,
    ScheduleNode,
    QueueNode,
    SurveyNode,
    RecordNode,
    WebhookNode,
    SetNode,
    GotoNode,
    HangupNode,
    LanguageNode,
)
NODE_CLASSES: dict[str, type[_Node]] = {
    c.model_fields["type"].annotation.__args__[0]: c for c in _NODE_CLASS_LIST
}
NODE_TYPES = tuple(NODE_CLASSES)

Node = Annotated[
    MenuNode
    | PlayNode
    | SayNode
    | ScheduleNode
    | QueueNode
    | SurveyNode
    | RecordNode
    | WebhookNode
    | SetNode
    | GotoNode
    | HangupNode
    | LanguageNode,
    Field(discriminator="type"),
]


class IvrTree(_Strict):
    """The whole call flow. Cross references are checked by ``gateway.ivr.checks``, not here."""

    version: Literal[1] = Field(1, description="format version")
    name: str | None = None
    entry: NodeId = Field(description="the first node of every call")
    main_menu: NodeId | None = Field(None, description="where top_key goes; default: entry")
    timezone: TimeZoneName = "Asia/Tokyo"
    languages: list[LanguageCode] = Field(["ja"], min_length=1)
    default_language: LanguageCode = "ja"
    say_fragments: str = Field("say/{lang}", description="directory of number/date fragments per language")
    loop_limit: int = Field(10, ge=1, le=100, description="entries of one node per call before loop_fallback")
    loop_fallback: NodeId | None = Field(None, description="default: hang up")
    schedules: dict[Name, Schedule] = {}
    nodes: dict[NodeId, Node] = Field(min_length=1)

    @field_validator("languages")
    @classmethod
    def _unique_languages(cls, items: list[str]) -> list[str]:
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise ValueError(f"language {dup[0]!r} is listed twice")
        return items

    @field_validator("say_fragments")
    @classmethod
    def _fragments_dir(cls, value: str) -> str:
        return _prompt_path(value)

    def sensitive_variables(self) -> set[str]:
        """Variables filled from sensitive input: never log their values, redact them in events."""
        return {
            n.collect.store_as
            for n in self.nodes.values()
            if isinstance(n, MenuNode) and n.sensitive and n.collect
        }


@dataclass(frozen=True)
class GraphNode:
    id: str
    type: str
    waits_for_caller: bool
    description: str | None


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    label: str


@dataclass(frozen=True)
class TreeGraph:
    entry: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]

    def to_json(self) -> dict:
        return {
            "entry": self.entry,
            "nodes": [vars(n) for n in self.nodes],
            "edges": [vars(e) for e in self.edges],
        }


def tree_graph(tree: IvrTree) -> TreeGraph:
    """Nodes and static edges in file order, for drawing; implicit edges (top_key, loop guard) included."""
    nodes = [GraphNode(i, n.type, bool(n.waits_for_caller), n.description) for i, n in tree.nodes.items()]
    edges = [GraphEdge(i, e.target, e.label) for i, n in tree.nodes.items() for e in n.edges()]
    top = tree.main_menu or tree.entry
    edges += [
        GraphEdge(i, top, "top key") for i, n in tree.nodes.items() if isinstance(n, MenuNode) and n.top_key
    ]
    return TreeGraph(tree.entry, nodes, edges)
