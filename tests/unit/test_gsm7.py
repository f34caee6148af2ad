"""GSM 7-bit alphabet and septet packing against published vectors (TS 23.038 §6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.gsm import gsm7
from tests.fixtures import pdu_vectors as v

GSM7_CHARS = "".join(c for c in gsm7.DEFAULT_ALPHABET if c != "\x1b") + "".join(gsm7.EXTENSION_TABLE.values())


@pytest.mark.parametrize(
    ("source", "text", "packed", "count"), v.GSM7_PACK_VECTORS, ids=lambda x: str(x)[:30]
)
def test_pack_published_vectors(source, text, packed, count):
    septets = gsm7.encode(text)
    assert len(septets) == count == gsm7.septet_length(text), source
    assert gsm7.pack_septets(septets).hex().upper() == packed, source


@pytest.mark.parametrize(
    ("source", "text", "packed", "count"), v.GSM7_PACK_VECTORS, ids=lambda x: str(x)[:30]
)
def test_unpack_published_vectors(source, text, packed, count):
    assert gsm7.decode(gsm7.unpack_septets(bytes.fromhex(packed), count)) == text, source


def test_libosmocore_concatenated_parts_with_one_fill_bit():
    # [OS] test_multiple_encode: 6-octet UDH (8-bit ref 0x6F), then 1 fill bit, then 153 / 40 septets.
    septets = gsm7.encode(v.OSMO_CONCAT_TEXT)
    part1, part2 = septets[:153], septets[153:]
    for ud_hex, part, text, udl in (
        (v.OSMO_CONCAT_PART1_UD, part1, v.OSMO_CONCAT_PART1_TEXT, v.OSMO_CONCAT_UDL[0]),
        (v.OSMO_CONCAT_PART2_UD, part2, v.OSMO_CONCAT_PART2_TEXT, v.OSMO_CONCAT_UDL[1]),
    ):
        ud = bytes.fromhex(ud_hex)
        assert ud[6:] == gsm7.pack_septets(part, fill_bits=1)
        assert gsm7.decode(gsm7.unpack_septets(ud[6:], len(part), fill_bits=1)) == text
        # The same septets read from the start of TP-UD: 7 header septets (48 bits + 1 fill) come first.
        assert gsm7.decode(gsm7.unpack_septets(ud, udl)[7:]) == text


def test_aosp_basic_table_decode():
    septets = [0 if i == gsm7.ESC else i for i in range(128)]
    packed = gsm7.pack_septets(septets)
    assert gsm7.decode(gsm7.unpack_septets(packed, 128)) == v.AOSP_BASIC_TABLE


def test_aosp_extension_table_decode_and_reencode():
    septets = [s for code in v.AOSP_EXTENSION_INDEXES for s in (gsm7.ESC, code)]
    assert gsm7.decode(septets) == v.AOSP_EXTENSION_CHARS
    assert gsm7.encode(v.AOSP_EXTENSION_CHARS) == septets


def test_unmapped_extension_code_falls_back_to_default_table_and_esc_esc_is_space():
    # TS 23.038 §6.2.1.1 notes; [AO] testDecodeExtendedFallback.
    assert gsm7.decode([gsm7.ESC, 0x41]) == "A"
    assert gsm7.decode([gsm7.ESC, gsm7.ESC]) == " "
    assert gsm7.decode([0x41, gsm7.ESC]) == "A"  # dangling ESC at the end is dropped


def test_non_ascii_positions_of_default_table():
    # TS 23.038 §6.2.1: positions where GSM-7 differs from ASCII.
    assert gsm7.encode("@£$_¤¡§¿") == [0x00, 0x01, 0x02, 0x11, 0x24, 0x40, 0x5F, 0x60]


def test_extension_characters_cost_two_septets():
    assert gsm7.septet_length("€^{}\\[~]|\f") == 20
    assert gsm7.septet_length("abc") == 3


@pytest.mark.parametrize("char", ["`", "ç", "あ", "😀", "\t"])
def test_unencodable_character_is_named(char):
    assert not gsm7.is_encodable("ab" + char)
    with pytest.raises(gsm7.Gsm7Error, match=r"position 2") as info:
        gsm7.encode("ab" + char)
    assert info.value.char == char
    assert isinstance(info.value, ValueError)


def test_unpack_rejects_short_data():
    with pytest.raises(ValueError, match="need 8 octets"):
        gsm7.unpack_septets(bytes(7), 9)


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 15, 16, 153, 160])
@pytest.mark.parametrize("fill", [0, 1, 6])
def test_packed_length_matches_pack(count, fill):
    assert len(gsm7.pack_septets([0x7F] * count, fill)) == gsm7.packed_length(count, fill)


@given(st.lists(st.integers(0, 127), max_size=200), st.integers(0, 6))
def test_pack_unpack_round_trip(septets, fill):
    packed = gsm7.pack_septets(septets, fill)
    assert gsm7.unpack_septets(packed, len(septets), fill) == septets


@given(st.text(alphabet=GSM7_CHARS, max_size=200))
def test_text_round_trip(text):
    assert gsm7.is_encodable(text)
    assert gsm7.decode(gsm7.encode(text)) == text
