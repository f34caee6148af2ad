"""Categories: quiet-hour windows (crossing midnight, in the gateway timezone), defaults, configuration."""

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.config import ConfigError, parse_config
from gateway.sms.categories import (
    Categories,
    CategorySettings,
    QuietWindow,
    QuietWindowError,
    UnknownCategory,
)

TOKYO = ZoneInfo("Asia/Tokyo")


def jst(day, hour, minute=0):
    return datetime(2026, 11, day, hour, minute, tzinfo=TOKYO)


def test_window_parse_and_errors():
    assert QuietWindow.parse("21:00-08:00") == QuietWindow(time(21), time(8))
    assert str(QuietWindow.parse(" 07:30 - 09:15 ")) == "07:30-09:15"
    for bad in ("21-08", "25:00-08:00", "21:00-21:00", "9:00-10:00"):
        with pytest.raises(QuietWindowError, match="quiet hours"):
            QuietWindow.parse(bad)


def test_window_crossing_midnight():
    w = QuietWindow.parse("21:00-08:00")
    assert (
        w.contains(time(21)) and w.contains(time(23, 59)) and w.contains(time(0)) and w.contains(time(7, 59))
    )
    assert not w.contains(time(8)) and not w.contains(time(20, 59)) and not w.contains(time(12))
    # Evening part: ends the next morning; early-morning part: ends the same morning; outside: None.
    assert w.end_after(jst(27, 22), TOKYO) == jst(28, 8)
    assert w.end_after(jst(28, 3), TOKYO) == jst(28, 8)
    assert w.end_after(jst(27, 12), TOKYO) is None
    # Given in UTC, judged in Tokyo: 13:00 UTC is 22:00 JST.
    assert w.end_after(datetime(2026, 11, 27, 13, 0, tzinfo=UTC), TOKYO) == jst(28, 8)


def test_window_within_a_day():
    w = QuietWindow.parse("12:00-13:00")
    assert w.end_after(jst(27, 12, 30), TOKYO) == jst(27, 13)
    assert w.end_after(jst(27, 13), TOKYO) is None


def test_default_categories():
    c = Categories()
    assert c.names() == ["appointment", "billing", "care", "education", "lab_result", "otp", "report"]
    assert c.default == "care" and c.get(None).name == "care"
    assert c.priority("otp") > c.priority("lab_result") > c.priority("care") > c.priority("education")
    # No education at night; lab results (and OTPs) at any hour.
    assert c.quiet_until("education", jst(27, 22)) == jst(28, 9)
    assert c.quiet_until("lab_result", jst(27, 22)) is None
    assert c.quiet_until("billing", jst(27, 22)) == jst(28, 8)  # the default window
    assert c.get("otp").bypass_opt_out and c.get("lab_result").bypass_opt_out
    assert not c.get("education").bypass_opt_out
    with pytest.raises(UnknownCategory, match="unknown category 'promo' \\(known: appointment, billing"):
        c.get("promo")


def test_local_day_and_midnight_follow_the_timezone():
    c = Categories(timezone="Asia/Tokyo")
    late_utc = datetime(2026, 11, 27, 15, 30, tzinfo=UTC)  # 00:30 JST on the 28th
    assert c.local_day(late_utc) == "2026-11-28"
    assert c.next_local_midnight(late_utc) == jst(29, 0)
    assert Categories(timezone="Asia/Shanghai").local_day(late_utc) == "2026-11-27"


def test_configured_categories_add_to_defaults():
    c = Categories(
        {"education": CategorySettings(priority=5, quiet_hours=None), "survey": {"priority": 20}},
        default="survey",
        quiet_hours="22:00-07:00",
    )
    assert c.default == "survey" and c.priority("education") == 5
    assert c.quiet_until("education", jst(27, 23)) is None
    assert c.quiet_until("survey", jst(27, 23)) == jst(28, 7)  # "default" -> sms.quiet_hours
    assert "otp" in c  # defaults kept
    with pytest.raises(ValueError, match="default category 'nope'"):
        Categories(default="nope")


def test_config_keys_are_validated_with_positions():
    config = parse_config(
        "gateway: {timezone: Asia/Shanghai}\n"
        "sms:\n  default_category: billing\n  quiet_hours: '22:00-07:30'\n"
        "  categories: {survey: {priority: 15, allow_provider: false}}\n"
    )
    c = Categories.from_config(config.sms, config.gateway.timezone)
    assert c.default == "billing" and not c.allows_provider("survey")
    assert c.quiet_until("billing", datetime(2026, 11, 27, 23, tzinfo=ZoneInfo("Asia/Shanghai"))) == datetime(
        2026, 11, 28, 7, 30, tzinfo=ZoneInfo("Asia/Shanghai")
    )
    with pytest.raises(ConfigError) as err:
        parse_config("sms:\n  quiet_hours: '25:00-01:00'\n  categories: {edu: {quiet_hours: 'night'}}\n")
    text = str(err.value)
    assert "<config>:2:16: sms.quiet_hours" in text and "HH:MM-HH:MM" in text
    assert "sms.categories.edu.quiet_hours" in text
    with pytest.raises(ConfigError, match="default_category 'promo' is not a category"):
        parse_config("sms: {default_category: promo}\n")
