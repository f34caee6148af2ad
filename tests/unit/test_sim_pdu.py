"""The simulator's own PDU codec against worked examples (TS 23.040/23.038, sms.md) and hand-checked bytes."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulators import sms_pdu
from simulators.sms_pdu import SimPduError

JST = timezone(timedelta(hours=9))


def test_parse_submit_worked_example_from_sms_notes():
    # sms.md §1: "hello" to +81 90 1234 5678, VP 0xAA (4 days) -> AT+CMGS=19
    pdu = sms_pdu.parse_submit("0011000C911809214365870000AA05E8329BFD06")
    assert pdu.smsc is None
    assert pdu.tpdu_length == 19
    assert pdu.destination == "+819012345678"
    assert pdu.destination_toa == 0x91
    assert pdu.validity == 0xAA
    assert (pdu.encoding, pdu.text) == ("gsm7", "hello")
    assert not pdu.request_report and pdu.concat is None


def test_build_submit_reproduces_the_worked_example():
    part = sms_pdu.build_submit("+819012345678", "hello", validity=0xAA)
    assert part.hex == "0011000C911809214365870000AA05E8329BFD06"
    assert part.tpdu_length == 19


def test_build_deliver_matches_the_classic_hellohello_example():
    # Widely published SMS-DELIVER (dreamfabric "SMS PDU format"): SMSC +27381000015, OA 27838890001 with
    # TOA 0xC8, SCTS 99-03-29 15:16:59 TZ octet 0x80 (= 08 quarter hours, +02:00), "hellohello".
    moment = datetime(1999, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2)))
    [part] = sms_pdu.build_deliver_parts(
        "27838890001", "hellohello", timestamp=moment, smsc="+27381000015", sender_toa=0xC8
    )
    assert part.hex == "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"
    assert part.tpdu_length == 28


def test_scts_examples_from_sms_notes():
    # sms.md §1: 52 11 72 41 00 22 63 = 2025-11-27 14:00:22 +09:00; -3 h = 12 quarters -> 0x29.
    moment = datetime(2025, 11, 27, 14, 0, 22, tzinfo=JST)
    assert sms_pdu.scts_octets(moment).hex().upper() == "52117241002263"
    assert sms_pdu.parse_scts(bytes.fromhex("52117241002263")) == moment
    minus3 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-3)))
    assert sms_pdu.scts_octets(minus3)[-1] == 0x29
    assert sms_pdu.parse_scts(sms_pdu.scts_octets(minus3)) == minus3
    with pytest.raises(SimPduError, match="timezone"):
        sms_pdu.scts_octets(datetime(2025, 1, 1))


def test_gsm7_tables_and_extension_characters():
    # TS 23.038 §6.2.1: '@' 0x00, '£' 0x01, '_' 0x11, '¤' 0x24; extension '€' = ESC 0x65, '[' = ESC 0x3C.
    assert sms_pdu.encode_gsm7("@£_¤") == [0x00, 0x01, 0x11, 0x24]
    assert sms_pdu.encode_gsm7("€[") == [0x1B, 0x65, 0x1B, 0x3C]
    assert sms_pdu.decode_gsm7([0x1B, 0x65, 0x41]) == "€A"
    assert not sms_pdu.gsm7_encodable("`")  # no backtick in GSM-7
    with pytest.raises(SimPduError, match="position 2"):
        sms_pdu.encode_gsm7("ab日")


def test_septet_packing_with_fill_bits_hand_checked():
    # "hi" after a 6-octet UDH: 1 fill bit, then h=0x68, i=0x69 -> (0x68 | 0x69 << 7) << 1 = 0x69D0.
    assert sms_pdu.pack_septets([0x68, 0x69], fill_bits=1) == bytes.fromhex("D069")
    assert sms_pdu.unpack_septets(bytes.fromhex("D069"), 2, fill_bits=1) == [0x68, 0x69]
    assert sms_pdu.pack_septets(sms_pdu.encode_gsm7("hellohello")).hex().upper() == "E8329BFD4697D9EC37"


def test_parse_submit_with_8bit_concat_header_and_fill_bit():
    # FO 0x51 (UDHI, VPF relative), UDL 9 = 7 header septets + 2, UDH 05 00 03 AB 02 01, "hi" packed D0 69.
    pdu = sms_pdu.parse_submit("0051000C911809214365870000AA09050003AB0201D069")
    assert pdu.concat == sms_pdu.Concat(ref=0xAB, total=2, seq=1, ref_bits=8)
    assert pdu.text == "hi"


def test_parse_submit_ucs2_with_16bit_concat_and_report_request():
    # FO 0x71: UDHI + SRR + VPF relative. UDH 06 08 04 AB CD 03 02; UCS2 "日本" = 65E5 672C; UDL 7+4 = 11.
    pdu = sms_pdu.parse_submit("0071000C911809214365870008AA0B060804ABCD0302" + "65E5672C")
    assert pdu.request_report
    assert pdu.concat == sms_pdu.Concat(ref=0xABCD, total=3, seq=2, ref_bits=16)
    assert (pdu.encoding, pdu.text) == ("ucs2", "日本")


def test_parse_submit_with_smsc_and_emoji_surrogate_pair():
    # SCA 07 91 180900000000 = +819000000000; 😀 = D83D DE00 in UTF-16BE (sms.md §2).
    pdu = sms_pdu.parse_submit("07911809000000001100" + "0C91180921436587" + "0008AA04D83DDE00")
    assert pdu.smsc == "+819000000000"
    assert pdu.tpdu_length == 18  # FO MR | DA 8 | PID DCS VP UDL | 4 octets of UD
    assert pdu.text == "😀"


def test_parse_submit_without_validity_and_national_number():
    # FO 0x01 (no VP), MR 05, DA "09012345678" (11 digits, TOA 0x81, F-padded), "ab" = 0x61 | 0x62 << 7.
    pdu = sms_pdu.parse_submit("0001050B819010325476F80000026131")
    assert pdu.destination == "09012345678"
    assert pdu.validity is None
    assert pdu.reference == 5
    assert pdu.text == "ab"


@pytest.mark.parametrize(
    ("hex_pdu", "message"),
    [
        ("0004000C91180921436587000005E8329BFD06", "not an SMS-SUBMIT"),  # MTI 00 = DELIVER
        ("0011000C9118092143", "TP-DA digits"),  # truncated inside the address
        ("0011000C911809214365870000AA05E8329BFD0600", "follow the user data"),  # one octet too many
        ("0011000C911809214365870000AA05E8329B", "TP-UD"),  # user data shorter than UDL
        ("00110zz", "hexadecimal"),
    ],
)
def test_parse_submit_errors_name_the_problem(hex_pdu, message):
    with pytest.raises(SimPduError, match=message):
        sms_pdu.parse_submit(hex_pdu)


def test_reserved_alphabet_is_rejected():
    with pytest.raises(SimPduError, match="reserved alphabet"):
        sms_pdu.parse_submit("0011000C91180921436587000CAA05E8329BFD06")  # DCS 0x0C: alphabet bits 11


def test_status_report_hand_checked():
    # TS 23.040 §9.2.2.3: FO 06 (MTI 10, MMS), MR 2A, RA 0C 91 180921436587, SCTS, DT, ST 00.
    part = sms_pdu.build_status_report(
        0x2A, "+819012345678",
        submitted=datetime(2025, 11, 27, 14, 0, 22, tzinfo=JST),
        discharged=datetime(2025, 11, 27, 14, 0, 25, tzinfo=JST),
        status=0x00, smsc="+819000000000",
    )
    sca, head, scts, dt = "0791180900000000", "062A0C91180921436587", "52117241002263", "52117241005263"
    assert part.hex == sca + head + scts + dt + "00"
    assert part.tpdu_length == 25


@pytest.mark.parametrize(
    ("text", "parts"),
    # Part-count boundaries (pmarti/python-messaging test_sms.py style): GSM-7 160/153, UCS2 70/67.
    [("x" * 160, 1), ("x" * 161, 2), ("x" * 306, 2), ("x" * 307, 3), ("€" * 80, 1), ("€" * 81, 2),
     ("日" * 70, 1), ("日" * 71, 2), ("日" * 134, 2), ("日" * 135, 3)],
)
def test_deliver_part_counts(text, parts):
    built = sms_pdu.build_deliver_parts("+819012345678", text, timestamp=datetime(2025, 1, 1, tzinfo=JST))
    assert len(built) == parts
    assert all(p.total == parts for p in built)
    assert [p.seq for p in built] == list(range(1, parts + 1))


def test_multipart_deliver_headers_and_escape_never_split():
    text = "a" + "€" * 100  # 201 septets: the part boundary would fall inside an ESC pair at septet 153
    built = sms_pdu.build_deliver_parts("+819012345678", text, timestamp=datetime(2025, 1, 1, tzinfo=JST),
                                        concat_ref=0x42)
    assert len(built) == 2
    first = bytes.fromhex(built[0].hex)
    # SCA 00 | FO 44 (UDHI, MMS) | OA 0C 91 + 6 | PID | DCS | SCTS 7 | UDL | UDH 05 00 03 42 02 01
    assert first[1] == 0x44
    udl_at = 1 + 1 + 8 + 2 + 7
    assert first[udl_at] == 7 + 1 + 76 * 2  # header septets + "a" + 76 whole euro signs (152 of 153)
    assert first[udl_at + 1 : udl_at + 7] == bytes.fromhex("050003420201")
    second = bytes.fromhex(built[1].hex)
    assert second[udl_at + 1 : udl_at + 7] == bytes.fromhex("050003420202")
    assert second[udl_at] == 7 + 24 * 2


def test_16bit_reference_header_and_capacity():
    moment = datetime(2025, 1, 1, tzinfo=JST)
    built = sms_pdu.build_deliver_parts("+819012345678", "y" * 305, timestamp=moment, concat_ref=0x1234,
                                        ref16=True)
    assert len(built) == 3  # 152 septets per part with the 7-octet header: 305 > 2 * 152
    raw = bytes.fromhex(built[0].hex)
    assert raw[19] == 8 + 152
    assert raw[20:27] == bytes.fromhex("0608041234" "0301")


def test_alphanumeric_sender_address():
    [part] = sms_pdu.build_deliver_parts("InternetSMS", "hi", timestamp=datetime(2025, 1, 1, tzinfo=JST))
    raw = bytes.fromhex(part.hex)
    # 11 characters = 77 bits -> 20 useful semi-octets, TOA 0xD0, 10 octets of packed GSM-7 (sms.md §1).
    assert raw[2:4] == bytes([20, 0xD0])
    assert sms_pdu.decode_gsm7(sms_pdu.unpack_septets(raw[4:14], 11)) == "InternetSMS"


_GSM7_CHARS = (
    "@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà€[]{}|~^\\"
)


@given(st.text(alphabet=_GSM7_CHARS, max_size=80) | st.text(max_size=70))
@settings(max_examples=150, deadline=None)
def test_single_part_submit_round_trip(text):
    encoding = sms_pdu.choose_encoding(text)
    units = len(sms_pdu.encode_gsm7(text)) if encoding == "gsm7" else len(text.encode("utf-16-be"))
    assume(units <= (160 if encoding == "gsm7" else 140))
    part = sms_pdu.build_submit("+819012345678", text, request_report=True, reference=7)
    parsed = sms_pdu.parse_submit(part.hex)
    assert parsed.tpdu_length == part.tpdu_length
    assert (parsed.encoding, parsed.request_report, parsed.reference) == (encoding, True, 7)
    if encoding == "ucs2":  # lone surrogates cannot travel: they come back as U+FFFD (sms.md §2)
        text = text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")
    assert parsed.text == text
