"""Message categories: priority in the send queue, quiet hours, opt-out and route rules (pure, no I/O).

A category says what a message is for (``otp``, ``lab_result``, ``appointment``, ``billing``, ``care``,
``education``, ``report``) and so how the gateway treats it:

* ``priority``: a higher number leaves the queue first (an OTP never waits behind a campaign);
* ``quiet_hours``: a local-time window ("21:00-08:00", may cross midnight) in the gateway's timezone during
  which the category is not sent; a message due inside it is held (stored as ``scheduled``, send_at = the end
  of the window, so the hold survives a restart). ``null``: sent at any hour (lab results, OTPs);
* ``bypass_opt_out``: transactional categories reach a number that opted out of the others (the consent
  engineer's ``OptOutPolicy`` reads it);
* ``allow_provider``: ``auto`` routing may fall back to an HTTP provider for this category.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_QUIET_HOURS = "21:00-08:00"
DEFAULT_CATEGORY = "care"
_WINDOW = re.compile(r"^\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class QuietWindowError(ValueError):
    pass


@dataclass(frozen=True)
class QuietWindow:
    """A daily local-time window [start, end); ``start > end`` crosses midnight (21:00-08:00)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietWindow:
        m = _WINDOW.match(text)
        if not m:
            raise QuietWindowError(f"quiet hours {text!r}: write HH:MM-HH:MM in 24 h time, e.g. 21:00-08:00")
        start, end = time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))
        if start == end:
            raise QuietWindowError(f"quiet hours {text!r}: start and end are the same time")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def end_after(self, when: datetime, tz: ZoneInfo) -> datetime | None:
        """The instant the window ends if ``when`` falls inside it, else None (aware datetimes)."""
        local = when.astimezone(tz)
        if not self.contains(local.time().replace(tzinfo=None)):
            return None
        day: date = local.date()
        if not (self.start < self.end) and local.time().replace(tzinfo=None) >= self.start:
            day = day + timedelta(days=1)  # in the evening part of a window that crosses midnight
        # A wall time skipped by a DST jump resolves forward (zoneinfo fold=0), never into the window.
        return datetime.combine(day, self.end, tzinfo=tz)


class CategorySettings(BaseModel):
    """One category in ``sms.categories``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Annotated[int, Field(ge=0, le=1000, description="higher is sent first")] = 50
    quiet_hours: str | None = Field(
        "default", description="HH:MM-HH:MM local time, 'default' (sms.quiet_hours) or null (any hour)"
    )
    bypass_opt_out: bool = Field(False, description="transactional: sent even to numbers that opted out")
    allow_provider: bool = Field(True, description="auto routing may use an HTTP provider")

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None and v != "default":
            QuietWindow.parse(v)
        return v


# Transactional categories (otp, lab_result, appointment) go out at any hour and bypass opt-outs: a patient
# who books at 23:00 expects the confirmation now. ``care`` is the default category of a message that names
# none, so it has no quiet hours: a CRM that does not use categories sees no change in when messages leave.
DEFAULT_CATEGORIES: dict[str, CategorySettings] = {
    "otp": CategorySettings(priority=100, quiet_hours=None, bypass_opt_out=True),
    "lab_result": CategorySettings(priority=80, quiet_hours=None, bypass_opt_out=True),
    "appointment": CategorySettings(priority=70, quiet_hours=None, bypass_opt_out=True),
    "billing": CategorySettings(priority=50, quiet_hours="default"),
    "care": CategorySettings(priority=40, quiet_hours=None),
    "report": CategorySettings(priority=30, quiet_hours=None),
    "education": CategorySettings(priority=10, quiet_hours="20:00-09:00"),
}


@dataclass(frozen=True)
class Category:
    name: str
    priority: int
    quiet: QuietWindow | None
    bypass_opt_out: bool
    allow_provider: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "priority": self.priority,
            "quiet_hours": str(self.quiet) if self.quiet else None,
            "bypass_opt_out": self.bypass_opt_out,
            "allow_provider": self.allow_provider,
        }


class UnknownCategory(KeyError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown category {self.name!r} (known: {', '.join(self.known)})"


class Categories:
    """The configured categories with the gateway timezone; ``Categories()`` gives the defaults in Tokyo."""

    def __init__(
        self,
        settings: Mapping[str, CategorySettings | Mapping[str, Any]] | None = None,
        *,
        default: str = DEFAULT_CATEGORY,
        quiet_hours: str = DEFAULT_QUIET_HOURS,
        timezone: str = "Asia/Tokyo",
    ):
        self.tz = ZoneInfo(timezone)
        default_window = QuietWindow.parse(quiet_hours)
        source = {**DEFAULT_CATEGORIES, **(settings or {})}  # configured entries add to / replace defaults
        self._by_name: dict[str, Category] = {}
        for name, raw in source.items():
            if not _NAME.match(name):
                raise ValueError(f"category name {name!r}: lower-case letters, digits and '_'")
            cs = raw if isinstance(raw, CategorySettings) else CategorySettings.model_validate(raw)
            if cs.quiet_hours is None:
                window = None
            elif cs.quiet_hours == "default":
                window = default_window
            else:
                window = QuietWindow.parse(cs.quiet_hours)
            self._by_name[name] = Category(name, cs.priority, window, cs.bypass_opt_out, cs.allow_provider)
        if default not in self._by_name:
            raise ValueError(f"default category {default!r} is not one of: {', '.join(self.names())}")
        self.default = default

    @classmethod
    def from_config(cls, sms: Any = None, timezone: str = "Asia/Tokyo") -> Categories:
        """From ``gateway.config.SmsSection`` (its categories, default_category, quiet_hours)."""
        if sms is None:
            return cls(timezone=timezone)
        return cls(
            getattr(sms, "categories", None),
            default=getattr(sms, "default_category", DEFAULT_CATEGORY),
            quiet_hours=getattr(sms, "quiet_hours", DEFAULT_QUIET_HOURS),
            timezone=timezone,
        )

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str | None) -> Category:
        """The category (the default for None); raises UnknownCategory."""
        key = self.default if name is None else name
        try:
            return self._by_name[key]
        except KeyError:
            raise UnknownCategory(key, self.names()) from None

    def priority(self, name: str | None) -> int:
        """Priority for queue ordering; a category no longer configured sorts like the default."""
        category = self._by_name.get(name or self.default) or self._by_name[self.default]
        return category.priority

    def allows_provider(self, name: str | None) -> bool:
        category = self._by_name.get(name or self.default) or self._by_name[self.default]
        return category.allow_provider

    def quiet_until(self, name: str | None, when: datetime) -> datetime | None:
        """If ``when`` is inside the category's quiet hours, the end of them (else None)."""
        category = self._by_name.get(name or self.default) or self._by_name[self.default]
        if category.quiet is None:
            return None
        return category.quiet.end_after(when, self.tz)

    def local_day(self, when: datetime) -> str:
        """The gateway-timezone date of ``when`` (daily caps are counted per local day)."""
        return when.astimezone(self.tz).date().isoformat()

    def next_local_midnight(self, when: datetime) -> datetime:
        local = when.astimezone(self.tz)
        return datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self.tz)
