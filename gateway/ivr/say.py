"""Speak a value by joining fragment files: numbers, digit strings and dates, per language (pure, no I/O).

Fragment names follow ``gateway.ivr.model`` (``_SAY_FRAGMENTS`` and ivr_prompts/README.md): each function
returns the fragment *names* (without extension) in speaking order; the runtime resolves them to files under
the tree's ``say_fragments`` directory. ``has(name)`` tells whether an optional fragment exists (the Japanese
combined forms ``300`` さんびゃく, ``3000`` さんぜん ... are used instead of digit + unit when present).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

MAX_CJK = 10**12 - 1  # up to 9999 億; larger values are read digit by digit
MAX_EN = 10**9 - 1


class SayError(ValueError):
    """The value cannot be spoken as the requested kind; the message names the value and the kind."""


def _family(language: str) -> str:
    return language.split("-")[0].lower()


def say_digits(value: object) -> list[str]:
    text = str(value).strip()
    if not text or not text.isdigit() or not text.isascii():
        raise SayError(f"{value!r} is not a string of digits")
    return list(text)


def _parse_int(value: object) -> int:
    if isinstance(value, bool):
        raise SayError(f"{value!r} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\d{1,15}", value.strip()):
        return int(value.strip())
    raise SayError(f"{value!r} is not a whole number")


def _cjk_below_10000(n: int, lang: str, has: Callable[[str], bool], leading: bool) -> list[str]:
    """0 < n < 10000. ja omits 一 before 十 百 千; zh only before a leading 十 (十一, but 一百一十)."""
    out: list[str] = []
    gap = False
    for unit in (1000, 100, 10, 1):
        digit = (n // unit) % 10
        if digit == 0:
            if out:
                gap = True
            continue
        if gap and lang == "zh":
            out.append("0")  # 零: a skipped place between two spoken ones (一千零五)
        gap = False
        if unit == 1:
            out.append(str(digit))
        elif lang == "ja":
            if digit == 1:
                out.append(str(unit))
            elif has(str(digit * unit)):
                out.append(str(digit * unit))  # さんびゃく, ろっぴゃく, はっせん ...
            else:
                out += [str(digit), str(unit)]
        else:
            if digit == 1 and unit == 10 and leading and not out:
                out.append("10")
            else:
                out += [str(digit), str(unit)]
    return out


def _say_cjk(n: int, lang: str, has: Callable[[str], bool]) -> list[str]:
    if n == 0:
        return ["0"]
    groups = [(100_000_000, "100000000"), (10_000, "10000"), (1, "")]
    out: list[str] = []
    rest = n
    for size, word in groups:
        part = rest // size
        rest %= size
        if part == 0:
            continue
        if lang == "zh" and out and part < 1000:
            out.append("0")  # 一万零五百
        out += _cjk_below_10000(part, lang, has, leading=not out)
        if word:
            out.append(word)
    return out


def _say_en_below_1000(n: int) -> list[str]:
    out: list[str] = []
    if n >= 100:
        out += [str(n // 100), "100"]
        n %= 100
    if n >= 20:
        out.append(str(n // 10 * 10))
        n %= 10
        if n:
            out.append(str(n))
    elif n or not out:
        out.append(str(n))
    return [x for x in out if not (x == "0" and len(out) > 1)]


def _say_en(n: int) -> list[str]:
    if n == 0:
        return ["0"]
    out: list[str] = []
    for size, word in ((1_000_000, "1000000"), (1000, "1000"), (1, "")):
        part, n = divmod(n, size)
        if part:
            out += _say_en_below_1000(part) + ([word] if word else [])
    return out


def say_number(value: object, language: str, has: Callable[[str], bool] = lambda _n: False) -> list[str]:
    n = _parse_int(value)
    lang = _family(language)
    if n < 0:
        raise SayError(f"{n} is negative; there is no fragment for 'minus'")
    if lang in ("ja", "zh"):
        return _say_cjk(n, lang, has) if n <= MAX_CJK else list(str(n))
    if lang == "en":
        return _say_en(n) if n <= MAX_EN else list(str(n))
    raise SayError(f"no rules to say numbers in {language!r} (ja, zh, en)")


def parse_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})", text)
    if not m:
        raise SayError(f"{value!r} is not a date (YYYY-MM-DD or YYYYMMDD)")
    try:
        return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError as exc:
        raise SayError(f"{value!r} is not a real date ({exc})") from None


def say_date(value: object, language: str, has: Callable[[str], bool] = lambda _n: False) -> list[str]:
    day = parse_date(value)
    lang = _family(language)
    if lang in ("ja", "zh"):  # 2026年11月27日
        return say_number(day.year, lang, has) + ["year", f"month-{day.month}", f"day-{day.day}"]
    if lang == "en":  # November twenty-seventh, two thousand twenty-six
        return [f"month-{day.month}", f"day-{day.day}"] + say_number(day.year, lang, has)
    raise SayError(f"no rules to say dates in {language!r} (ja, zh, en)")


def say_value(
    kind: str, value: object, language: str, has: Callable[[str], bool] = lambda _n: False
) -> list[str]:
    """Fragment names for ``value`` spoken as ``kind`` (number, digits, date); SayError when impossible."""
    if kind == "digits":
        return say_digits(value)
    if kind == "number":
        return say_number(value, language, has)
    if kind == "date":
        return say_date(value, language, has)
    raise SayError(f"unknown kind {kind!r} (number, digits, date)")
