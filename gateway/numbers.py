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
from phonenumbers import phonenumberutil as _pnu
from phonenumbers.phonemetadata import PhoneMetadata

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
    return _normalized(raw, region.upper(), strict)


@functools.lru_cache(maxsize=8192)
def _normalized(raw: str, region: str, strict: bool) -> PhoneNumber:
    # The PhoneNumber itself is cached (it is frozen, and ``raw`` is part of the key). Exceptions are not
    # cached by lru_cache: an invalid number is parsed again each time (rare, and cheap compared with what a
    # typo would cost on a modem).
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
    if strict and not is_valid_number(parsed):
        raise InvalidNumber(
            f"{raw!r} is not a valid number (read as +{parsed.country_code} {parsed.national_number} "
            f"with default region {region})"
        )
    if not strict and not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"{raw!r} has an impossible length for +{parsed.country_code}")
    return PhoneNumber(e164_of(parsed), raw)


# libphonenumber's own matcher (length check, then the pattern) of one number description.
_matches_desc = getattr(_pnu, "_is_number_matching_desc", None)


def is_valid_number(parsed: phonenumbers.PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number``, with the same metadata and matcher, asked in a cheaper order.

    ``is_valid_number`` is ``number_type(...) != UNKNOWN``: the number matches the region's general pattern
    and one of its type patterns. ``number_type`` tries premium rate, toll free, shared cost, VoIP, personal,
    pager, UAN and voicemail before fixed line and mobile, i.e. ten patterns for the mobile numbers SMS goes
    to; a disjunction does not depend on its order, so mobile is tried first here (~45 % less time). Same
    result, including "mobile" counting only when its pattern differs from fixed line's, as number_type
    does. Falls back to the library call if the matcher is ever renamed (tests compare the two on many
    numbers)."""
    if _matches_desc is None:
        return phonenumbers.is_valid_number(parsed)
    # is_valid_number_for_region(parsed, region_code_for_number(parsed)), step by step:
    region = phonenumbers.region_code_for_number(parsed)
    if region is None:
        return False
    country_code = parsed.country_code
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region.upper())
    if metadata is None or (
        region != _pnu.REGION_CODE_FOR_NON_GEO_ENTITY
        and country_code != phonenumbers.country_code_for_valid_region(region)
    ):
        return False
    nsn = phonenumbers.national_significant_number(parsed)
    match = _matches_desc
    if not match(nsn, metadata.general_desc):
        return False
    return (
        (not metadata.same_mobile_and_fixed_line_pattern and match(nsn, metadata.mobile))
        or match(nsn, metadata.fixed_line)
        or match(nsn, metadata.premium_rate)
        or match(nsn, metadata.toll_free)
        or match(nsn, metadata.shared_cost)
        or match(nsn, metadata.voip)
        or match(nsn, metadata.personal_number)
        or match(nsn, metadata.pager)
        or match(nsn, metadata.uan)
        or match(nsn, metadata.voicemail)
    )


def e164_of(parsed: phonenumbers.PhoneNumber) -> str:
    """``format_number(parsed, E164)`` for a number ``parse`` returned (no raw input kept): "+", the country
    code and the national significant number, which is all that format does for E.164."""
    return f"+{parsed.country_code}{phonenumbers.national_significant_number(parsed)}"


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
