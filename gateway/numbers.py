"""Phone number normalisation (libphonenumber via ``phonenumbers``) and masking for logs.

Numbers are kept twice: ``raw`` exactly as the client or the network gave it, and ``e164`` when one can be
derived (never invented). A number without a country code is read in the configured default region (JP unless
the config says otherwise, e.g. CN).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers

DEFAULT_REGION = "JP"
_DIGIT = re.compile(r"\d")


class InvalidNumber(ValueError):
    """The text is not a dialable phone number; the message says why."""


@dataclass(frozen=True)
class PhoneNumber:
    e164: str  # "+819012345678"
    raw: str  # as given: "090-1234-5678"


def normalize(raw: str, region: str = DEFAULT_REGION, *, strict: bool = True) -> PhoneNumber:
    """Parse ``raw`` in ``region`` and return it in E.164, or raise InvalidNumber.

    Results are cached (libphonenumber parsing costs ~50 µs, more than the rest of a submission): a
    hospital writes to the same patients again and again, and retries repeat the number by definition.

    ``strict`` (outgoing messages) requires a number that is valid in its numbering plan, which catches typos
    before a modem spends a send on them; ``strict=False`` (numbers the network reports) only requires a
    number of a possible length.
    """
    if not isinstance(raw, str):
        raise InvalidNumber("the number is empty")
    return PhoneNumber(_normalized_e164(raw, region.upper(), strict), raw)


@functools.lru_cache(maxsize=8192)
def _normalized_e164(raw: str, region: str, strict: bool) -> str:
    # Exceptions are not cached by lru_cache: an invalid number is parsed again each time (rare, and cheap
    # compared with what a typo would cost on a modem).
    if not raw.strip():
        raise InvalidNumber("the number is empty")
    if len(raw) > 64:
        raise InvalidNumber("the number is longer than 64 characters")
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(
            f"{raw!r} is not a phone number ({_PARSE_ERRORS.get(exc.error_type, exc)})"
        ) from None
    if strict and not phonenumbers.is_valid_number(parsed):
        raise InvalidNumber(
            f"{raw!r} is not a valid number (read as +{parsed.country_code} {parsed.national_number} "
            f"with default region {region})"
        )
    if not strict and not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"{raw!r} has an impossible length for +{parsed.country_code}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def to_e164_or_none(raw: str | None, region: str = DEFAULT_REGION) -> str | None:
    """E.164 for a number the network gave us (sender, report recipient), or None when not derivable.

    Alphanumeric senders ("DOCOMO") and short codes stay None: the raw value is kept by the caller.
    """
    if not raw or not any(ch.isdigit() for ch in raw) or any(ch.isalpha() for ch in raw):
        return None
    try:
        return normalize(raw, region, strict=False).e164
    except InvalidNumber:
        return None


_PARSE_ERRORS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


def mask(number: str | None) -> str | None:
    """Mask a phone number for info-level logs: "+819012345678" -> "+81901****678".

    Keeps the country/operator prefix and the last three digits (enough to tell numbers apart), hides the
    four digits before those. Numbers of 7 digits or fewer keep only their last two digits. Alphanumeric
    sender names (no digits) are not personal numbers and are returned unchanged.
    """
    if number is None:
        return None
    positions = [m.start() for m in _DIGIT.finditer(number)]
    if not positions:
        return number
    if len(positions) <= 7:
        hidden = set(positions[:-2])
    else:
        hidden = set(positions[-7:-3])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(number))
