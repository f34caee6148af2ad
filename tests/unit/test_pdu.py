"""SMS PDU codec (TS 23.040 / TS 23.038) and the `pdu` CLI against published vectors."""

from __future__ import annotations

import argparse
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gsm import gsm7, pdu
from gateway import cli
from gateway.commands import pdu as pdu_command
from tests.fixtures import pdu_vectors as v


def _ids(vectors, key="source"):
    return [(x[key] if isinstance(x, dict) else x[0])[:60] for x in vectors]


# ---------------------------------------------------------------------------------------------------
# Decoding published PDUs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vec", v.DECODE_VECTORS, ids=_ids(v.DECODE_VECTORS))
def test_decode_published_vectors(vec):
    decoded = pdu.decode(vec["hex"], has_smsc=vec.get("has_smsc", True))
    got = decoded.to_json()
    for key, expected in vec["expect"].items():
        assert got[key] == expected, f"{vec['source']}: {key}"
    # Lenient repairs only where the vector says so.
    assert bool(decoded.lenient) == vec.get("lenient", False), decoded.lenient
    json.dumps(got, ensure_ascii=False)  # JSON-serialisable


def test_contract_deliver_full_object():
    got = pdu.decode("0791180900000000040C9118092143658700006211723154036305E8329BFD06").to_json()
    for key in (
        "type",
        "smsc",
        "number",
        "text",
        "encoding",
        "timestamp",
        "reference",
        "status",
        "discharge_time",
        "concat",
        "validity",
    ):
        assert key in got
    assert (got["reference"], got["status"], got["discharge_time"], got["validity"]) == (None,) * 4


def test_concat_dataclass_for_16_bit_reference():
    vec = next(x for x in v.DECODE_VECTORS if "NoFillBits" in x["source"])
    assert pdu.decode(vec["hex"]).concat == pdu.Concat(ref=0x10, total=2, seq=1, ref_bits=16)


def test_datetime_objects_are_timezone_aware():
    vec = v.DECODE_VECTORS[0]
    decoded = pdu.decode(vec["hex"])
    assert decoded.timestamp.utcoffset().total_seconds() == 9 * 3600


@pytest.mark.parametrize(("source", "scts", "iso"), v.TIMESTAMP_VECTORS, ids=_ids(v.TIMESTAMP_VECTORS))
def test_timestamps_with_quarter_hour_zones(source, scts, iso):
    decoded = pdu.decode(v.DELIVER_FRAME.format(scts=scts))
    assert decoded.to_json()["timestamp"] == iso, source
    assert decoded.text == "hellohello"


@pytest.mark.parametrize(
    ("source", "scts"), v.INVALID_TIMESTAMP_VECTORS, ids=_ids(v.INVALID_TIMESTAMP_VECTORS)
)
def test_invalid_timestamp_is_dropped_not_fatal(source, scts):
    decoded = pdu.decode(v.DELIVER_FRAME.format(scts=scts))
    assert decoded.timestamp is None
    assert decoded.text == "hellohello"
    assert any("TP-SCTS" in note for note in decoded.lenient), decoded.lenient


@pytest.mark.parametrize(("source", "field", "number", "toa"), v.ADDRESS_VECTORS, ids=_ids(v.ADDRESS_VECTORS))
def test_address_fields(source, field, number, toa):
    decoded = pdu.decode(v.ADDRESS_FRAME.format(address=field))
    assert (decoded.number, decoded.number_type, decoded.text) == (number, toa, ""), source


# ---------------------------------------------------------------------------------------------------
# DCS groups (TS 23.038 §4), on the [CR] SimpleMessage frame with the DCS octet replaced
# ---------------------------------------------------------------------------------------------------

_DCS_FRAME = "00040B918100551512F200{dcs:02X}111010214365000AE8329BFD4697D9EC37DE"


@pytest.mark.parametrize(
    ("dcs", "encoding", "klass", "mwi"),
    [
        (0x00, "gsm7", None, None),
        (0x10, "gsm7", 0, None),  # flash
        (0x11, "gsm7", 1, None),
        (0x04, "8bit", None, None),
        (0x14, "8bit", 0, None),
        (0x48, "ucs2", None, None),  # automatic-deletion group
        (0x18, "ucs2", 0, None),
        (0xC8, "gsm7", None, {"active": True, "kind": "voicemail", "store": False}),
        (0xD9, "gsm7", None, {"active": True, "kind": "fax", "store": True}),
        (0xE2, "ucs2", None, {"active": False, "kind": "email", "store": True}),
        (0xF0, "gsm7", 0, None),
        (0xF6, "8bit", 2, None),
    ],
)
def test_dcs_groups(dcs, encoding, klass, mwi):
    decoded = pdu.decode(_DCS_FRAME.format(dcs=dcs))
    assert (decoded.encoding, decoded.message_class, decoded.message_waiting) == (encoding, klass, mwi)
    if encoding == "gsm7":
        assert decoded.text == "hellohello"


@pytest.mark.parametrize("dcs", [0x0C, 0x80, 0xB4])
def test_reserved_dcs_reads_as_gsm7_with_a_note(dcs):
    decoded = pdu.decode(_DCS_FRAME.format(dcs=dcs))
    assert decoded.encoding == "gsm7" and decoded.text == "hellohello"
    assert any("reserved" in note for note in decoded.lenient)


def test_compressed_user_data_is_returned_raw():
    decoded = pdu.decode(_DCS_FRAME.format(dcs=0x24))  # compressed, 8-bit
    assert decoded.text is None and decoded.data == bytes.fromhex("E8329BFD4697D9EC37DE")
    assert any("compressed" in note for note in decoded.lenient)


# ---------------------------------------------------------------------------------------------------
# UCS2 edge cases
# ---------------------------------------------------------------------------------------------------

_UCS2_FRAME = "00040B918100551512F2000811101021436500{udl:02X}{ud}"


def test_ucs2_surrogate_pair_decodes_to_emoji():
    decoded = pdu.decode(_UCS2_FRAME.format(udl=6, ud="D83DDE000041"))
    assert decoded.text == "😀A" and not decoded.lenient


@pytest.mark.parametrize("ud", ["D83D0041", "DE000041", "0041D83D"])
def test_ucs2_lone_surrogate_becomes_replacement_character(ud):
    decoded = pdu.decode(_UCS2_FRAME.format(udl=4, ud=ud))
    assert "\ufffd" in decoded.text and "A" in decoded.text
    assert any("surrogate" in note for note in decoded.lenient)


def test_ucs2_odd_octet_count_is_noted():
    decoded = pdu.decode(_UCS2_FRAME.format(udl=3, ud="004100"))
    assert decoded.text == "A\ufffd"
    assert any("odd" in note for note in decoded.lenient)


# ---------------------------------------------------------------------------------------------------
# Submit validity periods
# ---------------------------------------------------------------------------------------------------


def test_enhanced_validity_formats():
    # TS 23.040 §9.2.3.12.3 on the [PM] 'hola' submit with TP-VPF 01 (FO 0x09).
    frame = "0009000B914316565811F90000{vp}04E8373B0C"
    assert pdu.decode(frame.format(vp="01AA0000000000")).validity == 4 * 24 * 60
    assert pdu.decode(frame.format(vp="021E0000000000")).validity == "PT30S"
    assert pdu.decode(frame.format(vp="03103254000000")).validity == "PT1H23M45S"
    assert pdu.decode(frame.format(vp="00000000000000")).validity is None
    reserved = pdu.decode(frame.format(vp="07000000000000"))
    assert reserved.validity is None and reserved.lenient and reserved.text == "hola"


@pytest.mark.parametrize(
    ("source", "minutes", "octet"), v.RELATIVE_VP_VECTORS, ids=_ids(v.RELATIVE_VP_VECTORS)
)
def test_relative_validity(source, minutes, octet):
    assert pdu.relative_validity_octet(minutes) == octet, source
    assert pdu.relative_validity_minutes(octet) == minutes, source


def test_relative_validity_rounds_up_and_rejects_out_of_range():
    assert pdu.relative_validity_minutes(pdu.relative_validity_octet(6)) == 10
    assert pdu.relative_validity_minutes(pdu.relative_validity_octet(25 * 60)) == 2 * 24 * 60
    assert pdu.relative_validity_octet(1) == 0
    for bad in (0, -5, 63 * 7 * 24 * 60 + 1):
        with pytest.raises(pdu.EncodeError):
            pdu.relative_validity_octet(bad)


# ---------------------------------------------------------------------------------------------------
# Status reports: PI and lenient truncation
# ---------------------------------------------------------------------------------------------------

_SR_MINIMAL = "0242049136195150713220052351408132200542AB"  # [WS] 'minimal', FO adapted to 0x02


def test_status_report_missing_status_is_lenient():
    decoded = pdu.decode(_SR_MINIMAL[:-2], has_smsc=False)  # [WS] 'underflow st'
    assert decoded.type == "status_report" and decoded.status is None
    assert decoded.discharge_time.isoformat() == "2015-04-18T23:02:50+06:00"
    assert any("TP-ST missing" in note for note in decoded.lenient)


def test_status_report_missing_discharge_time_and_status_is_lenient():
    decoded = pdu.decode(_SR_MINIMAL[:26], has_smsc=False)  # [WS] 'underflow dt'
    assert (decoded.reference, decoded.number, decoded.discharge_time, decoded.status) == (
        0x42,
        "+6391",
        None,
        None,
    )
    assert any("TP-DT and TP-ST missing" in note for note in decoded.lenient)


def test_status_report_bad_discharge_time_is_noted():
    # [WS] 'bad dt': 0xC1 is not BCD; the rest of the report is still usable.
    decoded = pdu.decode("0242049136195150713220052351 40C1322005 42AB".replace(" ", ""), has_smsc=False)
    assert decoded.discharge_time is None and decoded.status == 0xAB
    assert any("TP-DT" in note for note in decoded.lenient)


@pytest.mark.parametrize(
    ("tail", "pid", "dcs", "encoding", "data"),
    [
        ("0189", 0x89, None, None, None),  # [WS] 'pid'
        ("0204", None, 0x04, None, None),  # [WS] 'dcs'
        ("0604067265706F7274", None, 0x04, "8bit", b"report"),  # [WS] 'ud'
        ("0405E8329BFD06", None, None, "gsm7", None),  # UDL without DCS: DCS 0x00 assumed (§9.2.3.27)
    ],
)
def test_status_report_parameter_indicator(tail, pid, dcs, encoding, data):
    decoded = pdu.decode(_SR_MINIMAL + tail, has_smsc=False)
    assert (decoded.pid, decoded.dcs, decoded.encoding, decoded.data) == (pid, dcs, encoding, data)
    if encoding == "gsm7":
        assert decoded.text == "hello"
    assert not decoded.lenient


def test_wrong_smsc_length_repaired_from_modem_tpdu_length():
    good = v.DECODE_VECTORS[0]["hex"]
    broken = "08" + good[2:]  # SMSC length octet off by one, as ZTE modems do
    with pytest.raises(pdu.PduError):
        pdu.decode(broken)
    decoded = pdu.decode(broken, tpdu_length=len(good) // 2 - 8)
    assert decoded.text == "hello" and decoded.smsc == "+819000000000"
    assert any("SMSC length" in note for note in decoded.lenient)


def test_trailing_octets_are_ignored_with_a_note():
    decoded = pdu.decode(v.DECODE_VECTORS[0]["hex"] + "FFFF")
    assert decoded.text == "hello"
    assert any("2 octet(s) after" in note for note in decoded.lenient)


def test_bytes_input_and_whitespace():
    hexpdu = v.DECODE_VECTORS[0]["hex"]
    assert pdu.decode(bytes.fromhex(hexpdu)).text == "hello"
    assert pdu.decode(" ".join(hexpdu[i : i + 2] for i in range(0, len(hexpdu), 2)) + "\r\n").text == "hello"


@pytest.mark.parametrize(("source", "data", "has_smsc", "words"), v.ERROR_VECTORS, ids=_ids(v.ERROR_VECTORS))
def test_malformed_pdus_raise_clear_errors(source, data, has_smsc, words):
    with pytest.raises(pdu.PduError) as info:
        pdu.decode(data, has_smsc=has_smsc)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, f"{source}: {word!r} not in {message!r}"


def test_contract_ucs2_vector_as_printed_is_odd_length():
    # The brief's UCS2 contract PDU has 71 hex digits; removing the '8' after TP-UDL gives the
    # well-formed PDU used in DECODE_VECTORS.
    printed = "0791180900000000040C91180921436587000862117231540363088691C67FB7D50679C"
    assert len(printed) == 71
    fixed = printed[:54] + printed[55:]
    assert pdu.decode(fixed).text == "検査結果"


# ---------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vec", v.ENCODE_VECTORS, ids=_ids(v.ENCODE_VECTORS))
def test_encode_published_vectors(vec):
    encoded = pdu.encode_submit(vec["to"], vec["text"], **vec["kwargs"])
    assert [s.hex for s in encoded.segments] == [h.upper() for h in vec["hex"]], vec["source"]
    if "tpdu_lengths" in vec:
        assert [s.tpdu_length for s in encoded.segments] == vec["tpdu_lengths"]
    for seg in encoded.segments:
        sca_octets = int(seg.hex[:2], 16) + 1
        assert seg.tpdu_length == len(seg.hex) // 2 - sca_octets
    assert encoded.parts == len(vec["hex"]) == encoded.segments[-1].total


def test_encode_concatenated_gsm7_matches_python_gsmmodem():
    encoded = pdu.encode_submit(v.LOREM_TO, v.LOREM_TEXT)
    expected = ["0041" + h[4:] for h in v.LOREM_HEX_WITH_RD]  # TP-RD (0x04) cleared, see the fixture
    assert [s.hex for s in encoded.segments] == expected
    assert [(s.seq, s.total) for s in encoded.segments] == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    ("source", "text", "encoding", "parts"), v.PART_COUNT_VECTORS, ids=_ids(v.PART_COUNT_VECTORS)
)
def test_part_counts(source, text, encoding, parts):
    encoded = pdu.encode_submit("+3530000000", text)
    assert (encoded.encoding, encoded.parts, len(encoded.segments)) == (encoding, parts, parts), source
    assert pdu.count_parts(text) == (encoding, parts)


def test_aosp_fragment_161_digits_splits_153_and_8():
    text = "1234567890" * 16 + "1"
    segs = pdu.encode_submit("+16505551111", text).segments
    assert [pdu.decode(s.hex).text for s in segs] == [text[:153], text[153:]]


def test_16_bit_reference_uses_iei_08_and_152_septets():
    encoded = pdu.encode_submit("+819012345678", "x" * 305, concat_ref=0x1234, ref16=True)
    assert encoded.parts == 3
    decoded = [pdu.decode(s.hex) for s in encoded.segments]
    assert [len(d.text) for d in decoded] == [152, 152, 1]
    assert decoded[0].concat == pdu.Concat(ref=0x1234, total=3, seq=1, ref_bits=16)
    assert decoded[0].udh == [(0x08, bytes([0x12, 0x34, 3, 1]))]
    # 7-octet UDH: no fill bits, UDL = 8 header septets + 152.
    assert encoded.segments[0].hex[2:].startswith("41000C911809214365870000A006080412340301")


def test_ucs2_parts_67_and_66_units():
    assert [len(pdu.decode(s.hex).text) for s in pdu.encode_submit("+8190", "あ" * 140).segments] == [
        67,
        67,
        6,
    ]
    assert pdu.count_parts("あ" * 132, ref16=True) == ("ucs2", 2)
    assert pdu.count_parts("あ" * 133, ref16=True) == ("ucs2", 3)


def test_escape_never_split_across_parts():
    text = "x" * 152 + "€" + "y" * 10  # 165 septets; the euro would straddle septets 153/154
    decoded = [pdu.decode(s.hex).text for s in pdu.encode_submit("+8190", text).segments]
    assert decoded == ["x" * 152, "€" + "y" * 10]


def test_surrogate_pair_never_split_across_parts():
    text = "a" * 66 + "😀" + "b" * 5  # 73 units; the pair would straddle units 67/68
    decoded = [pdu.decode(s.hex).text for s in pdu.encode_submit("+8190", text).segments]
    assert decoded == ["a" * 66, "😀" + "b" * 5]
    assert pdu.count_parts("😀" * 35) == ("ucs2", 1)  # 70 units
    assert pdu.count_parts("😀" * 35 + "a") == ("ucs2", 2)


def test_first_octet_flags_and_defaults():
    single = pdu.encode_submit("09012345678", "hi")
    assert single.segments[0].hex.startswith("0001000B81")  # no SCA, no VP, MR 0, TOA unknown
    multi = pdu.encode_submit("+8190", "x" * 161, request_report=True, validity_minutes=24 * 60)
    for seg in multi.segments:
        assert seg.hex[2:4] == "71"  # SUBMIT | VPF relative | SRR | UDHI
        d = pdu.decode(seg.hex)
        assert d.request_report and d.validity == 24 * 60 and d.reference == 0


def test_forced_encodings():
    assert pdu.encode_submit("+8190", "hello", encoding="ucs2").encoding == "ucs2"
    with pytest.raises(gsm7.Gsm7Error, match="U\\+3042"):
        pdu.encode_submit("+8190", "abcあ", encoding="gsm7")
    with pytest.raises(pdu.EncodeError, match="unknown encoding"):
        pdu.encode_submit("+8190", "hi", encoding="latin1")


def test_max_parts_raises_value_error_subclass():
    with pytest.raises(pdu.TooManyParts) as info:
        pdu.encode_submit("+8190", "x" * 307, max_parts=2)
    assert isinstance(info.value, ValueError)
    assert (info.value.parts, info.value.limit) == (3, 2)
    assert pdu.encode_submit("+8190", "x" * 306, max_parts=2).parts == 2
    with pytest.raises(pdu.TooManyParts, match="limit of 255"):
        pdu.encode_submit("+8190", "x" * (153 * 255 + 1))


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("", "empty"),
        ("+", "no digits"),
        ("+81-90", "contains '-'"),
        ("abc", "contains 'a'"),
        ("1" * 21, "21 digits"),
    ],
)
def test_bad_destination(to, message):
    with pytest.raises(pdu.EncodeError, match=message):
        pdu.encode_submit(to, "hi")


def test_bad_options():
    with pytest.raises(pdu.EncodeError, match="concat_ref 256"):
        pdu.encode_submit("+8190", "hi", concat_ref=256)
    assert pdu.encode_submit("+8190", "x" * 200, concat_ref=65535, ref16=True).parts == 2
    with pytest.raises(pdu.EncodeError, match="lone surrogate"):
        pdu.encode_submit("+8190", "a\ud83d")
    with pytest.raises(pdu.EncodeError, match="SMSC"):
        pdu.encode_submit("+8190", "hi", smsc="+81x")


def test_empty_text_is_one_empty_part():
    encoded = pdu.encode_submit("+8190", "")
    assert encoded.parts == 1 and pdu.decode(encoded.segments[0].hex).text == ""


def test_encoding_is_fast():
    # Runs for every API submission: a 10-part Japanese text and a 10-part GSM text in well under 5 ms.
    jp = "検査結果のお知らせです。" * 55
    en = "Your appointment is confirmed [ref {123}] " * 36
    start = time.perf_counter()
    for _ in range(20):
        pdu.encode_submit("+819012345678", jp)
        pdu.encode_submit("+819012345678", en)
    per_call = (time.perf_counter() - start) / 40
    assert per_call < 0.005, per_call


def test_encoding_scales_linearly():
    def cost(n):
        text = "x€" * n
        start = time.perf_counter()
        pdu.encode_submit("+8190", text)
        return time.perf_counter() - start

    small = min(cost(1_000) for _ in range(3))  # 20 parts
    big = min(cost(10_000) for _ in range(3))  # 197 parts
    assert big < small * 30  # 10x the input: linear is ~10x, quadratic would be ~100x


# ---------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------

_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("abcXYZ 0123@£€^{}[]~|\\\f\n\rÅåΔ_ΦΓ"),
        st.sampled_from("検査結果あいうアイウ中兴通讯ő"),
        st.sampled_from("😀👍🏥🧑‍⚕️"),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=700,
)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, ref16=st.booleans(), ref=st.integers(0, 255), report=st.booleans())
def test_round_trip_reassembles_text(text, ref16, ref, report):
    encoded = pdu.encode_submit("+819012345678", text, concat_ref=ref, ref16=ref16, request_report=report)
    assert pdu.count_parts(text, ref16=ref16) == (encoded.encoding, encoded.parts)
    decoded = [pdu.decode(s.hex) for s in encoded.segments]
    assert "".join(d.text for d in decoded) == text
    for seq, (seg, d) in enumerate(zip(encoded.segments, decoded, strict=True), start=1):
        assert d.type == "submit" and d.number == "+819012345678" and d.encoding == encoded.encoding
        assert not d.lenient
        assert seg.tpdu_length == len(seg.hex) // 2 - 1 and seg.tpdu_length <= 164
        assert d.request_report == report
        if encoded.parts == 1:
            assert d.concat is None
        else:
            assert d.concat == pdu.Concat(ref=ref, total=encoded.parts, seq=seq, ref_bits=16 if ref16 else 8)
    if gsm7.is_encodable(text):
        assert encoded.encoding == "gsm7"


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _run(capsys, *argv):
    # The pdu sub-command alone, so a half-written sibling command cannot fail these tests.
    parser = argparse.ArgumentParser(prog="hcrm-gateway")
    pdu_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pdu", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_is_wired_into_hcrm_gateway(capsys):
    assert cli.main(["pdu", "decode", v.DECODE_VECTORS[0]["hex"]]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "hello"


def test_cli_decode_contract(capsys):
    code, out, err = _run(
        capsys, "decode", "0791180900000000040C9118092143658700006211723154036305E8329BFD06"
    )
    assert code == 0 and err == ""
    obj = json.loads(out)
    assert obj["type"] == "deliver" and obj["text"] == "hello" and obj["concat"] is None
    assert obj["timestamp"] == "2026-11-27T13:45:30+09:00"
    assert out.count("\n") == 1


def test_cli_decode_prints_unicode_unescaped(capsys):
    fixed = v.DECODE_VECTORS[1]["hex"]
    code, out, _ = _run(capsys, "decode", fixed)
    assert code == 0 and "検査結果" in out and json.loads(out)["encoding"] == "ucs2"


def test_cli_decode_no_smsc(capsys):
    code, out, _ = _run(capsys, "decode", "--no-smsc", "010005912143f500000bc8329bfd06dddf723619")
    assert code == 0 and json.loads(out)["text"] == "Hello world"


@pytest.mark.parametrize(
    "bad", ["0011", "0791180900000000040C91180921436587000862117231540363088691C67FB7D50679C", "zz"]
)
def test_cli_decode_error_is_one_line(capsys, bad):
    code, out, err = _run(capsys, "decode", bad)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("hcrm-gateway pdu decode: error: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [("hello", "gsm7", 1), ("x" * 200, "gsm7", 2), ("検査結果", "ucs2", 1), ("あ" * 71, "ucs2", 2)],
)
def test_cli_encode_contract(capsys, text, encoding, parts):
    code, out, _ = _run(capsys, "encode", "--to", "+819012345678", "--text", text)
    assert code == 0
    obj = json.loads(out)
    assert (obj["encoding"], obj["parts"], len(obj["segments"])) == (encoding, parts, parts)
    assert "".join(pdu.decode(h).text for h in obj["segments"]) == text


def test_cli_encode_options(capsys):
    code, out, _ = _run(
        capsys, "encode", "--to", "0901234", "--text", "hi", "--report", "--smsc", "+819000000000"
    )
    assert code == 0
    seg = json.loads(out)["segments"][0]
    assert seg.startswith("079118090000000021000781")  # SCA, FO with SRR, MR 0, TOA unknown
    d = pdu.decode(seg)
    assert (d.smsc, d.number, d.request_report) == ("+819000000000", "0901234", True)


def test_cli_encode_error_is_one_line(capsys):
    code, out, err = _run(capsys, "encode", "--to", "+81 90", "--text", "hi")
    assert code == 1 and out == "" and err.count("\n") == 1 and "contains ' '" in err
