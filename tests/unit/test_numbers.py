import pytest

from gateway.numbers import InvalidNumber, mask, normalize, to_e164_or_none


@pytest.mark.parametrize(
    "raw",
    ["090-1234-5678", "09012345678", "+81 90 1234 5678", "+81-90-1234-5678", "(090) 1234 5678"],
)
def test_japanese_mobile_forms_normalise_to_one_e164(raw):
    number = normalize(raw)
    assert number.e164 == "+819012345678"
    assert number.raw == raw


def test_default_region_is_configurable():
    assert normalize("13800138000", "CN").e164 == "+8613800138000"
    # The same digits read in Japan are not a valid Japanese number.
    with pytest.raises(InvalidNumber, match="not a valid number"):
        normalize("13800138000", "JP")


@pytest.mark.parametrize("raw", ["", "   ", "abc", "110", "+81", "0" * 70])
def test_invalid_numbers_raise_with_a_reason(raw):
    with pytest.raises(InvalidNumber) as info:
        normalize(raw)
    assert str(info.value)


def test_lenient_mode_accepts_possible_numbers():
    assert normalize("+8113800138000", strict=False).e164 == "+8113800138000"


def test_e164_or_none_never_invents_a_number():
    assert to_e164_or_none("09012345678") == "+819012345678"
    assert to_e164_or_none("DOCOMO") is None
    assert to_e164_or_none("") is None
    assert to_e164_or_none(None) is None


def test_mask_keeps_prefix_and_last_three_digits():
    assert mask("+819012345678") == "+81901****678"
    assert mask("09012345678") == "0901****678"
    assert mask("1234567") == "*****67"
    assert mask("DOCOMO") == "DOCOMO"
    assert mask(None) is None
