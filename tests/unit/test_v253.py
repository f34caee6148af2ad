"""V.253 sans-IO codec: DLE stream decoding from byte transcripts, escaping, voice AT commands,
capability parsing of real modem answers, and the textual caller ID parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.voice import v253
from drivers.voice.callerid_text import (
    CallerIdTextParser,
    callerid_enable_commands,
    parse_callerid_lines,
)
from drivers.voice.events import (
    CallerIdText,
    DtmfDigit,
    DtmfToneEnd,
    DtmfToneStart,
    Handset,
    LoopBreak,
    Overrun,
    PolarityReversal,
    Ring,
    ToneEvent,
    Underrun,
    UnknownDleCode,
)
from drivers.voice.v253 import (
    Audio,
    CommandText,
    ComplexEvent,
    DleDecoder,
    EndOfStream,
    NoUsableVoiceFormat,
    PlaybackEncoder,
    StreamNotice,
    VoiceCommandError,
    VoiceFormat,
    VoiceProtocolError,
    choose_format,
    escape,
    parse_vsm_options,
)

DLE = b"\x10"


def normalise(events):
    """Merge adjacent Audio / CommandText pieces: how a stream is cut into reads must not matter."""
    out = []
    for event in events:
        if out and type(event) in (Audio, CommandText) and type(out[-1]) is type(event):
            out[-1] = type(event)(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed_pieces(decoder, data, cuts):
    events = []
    points = sorted({c for c in cuts if 0 < c < len(data)})
    start = 0
    for point in [*points, len(data)]:
        events += decoder.feed(data[start:point])
        start = point
    return normalise(events)


# ------------------------------------------------------------------------------------- every DLE code
SIMPLE_CODES = [
    (b"R", Ring()),
    (b"b", ToneEvent("busy")),
    (b"K", ToneEvent("busy")),
    (b"d", ToneEvent("dialtone")),
    (b"i", ToneEvent("dialtone")),
    (b"r", ToneEvent("ringback")),
    (b"s", ToneEvent("silence")),
    (b"q", ToneEvent("quiet")),
    (b"c", ToneEvent("fax_calling")),
    (b"m", ToneEvent("fax_calling")),
    (b"e", ToneEvent("data_calling")),
    (b"a", ToneEvent("answer_tone")),
    (b"f", ToneEvent("data_answer")),
    (b"J", ToneEvent("sit")),
    (b"$", ToneEvent("bong")),
    (b"w", ToneEvent("call_waiting")),
    (b"v", ToneEvent("voice")),
    (b"V", ToneEvent("voice")),
    (b"t", ToneEvent("tdd")),
    (b"h", Handset("down", "local")),
    (b"H", Handset("up", "local")),
    (b"p", Handset("down", "extension")),
    (b"P", Handset("up", "extension")),
    (b"l", LoopBreak()),
    (b"L", PolarityReversal()),
    (b"u", Underrun()),
    (b"o", Overrun()),
    (b"T", StreamNotice("timing_mark")),
    (b"E", StreamNotice("invalid_voice_format")),
    (b"Y", StreamNotice("lost_data")),
    (b"Q", StreamNotice("xon")),
    (b"S", StreamNotice("xoff")),
    (b"/", DtmfToneStart()),
    (b"~", DtmfToneEnd(None)),
    (b"\x7f", DtmfToneEnd(None)),
]


@pytest.mark.parametrize("code,expected", SIMPLE_CODES, ids=[repr(c) for c, _ in SIMPLE_CODES])
def test_every_event_code_in_and_out_of_a_stream(code, expected):
    idle = DleDecoder()
    assert idle.feed(DLE + code) == [expected]
    streaming = DleDecoder()
    streaming.start_stream(bytes_per_second=8000)
    assert streaming.feed(b"\x01\x02" + DLE + code + b"\x03") == [
        Audio(b"\x01\x02"),
        expected,
        Audio(b"\x03"),
    ]
    assert streaming.audio_bytes == 3


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_every_dtmf_digit(digit):
    assert DleDecoder().feed(DLE + digit.encode()) == [DtmfDigit(digit)]


def test_code_table_covers_what_the_decoder_knows():
    table_codes = set(v253.DCE_CODES)
    decoded = {code[0] for code, _ in SIMPLE_CODES} | set(b"0123456789*#ABCD")
    assert decoded | {0x10, 0x1A, 0x03, ord("X"), ord(".")} == table_codes


def test_shielded_data_codes():
    d = DleDecoder()
    d.start_stream(bytes_per_second=8000)
    assert d.feed(b"a" + DLE + DLE + b"b" + DLE + b"\x1a" + b"c") == [Audio(b"a\x10b\x10\x10c")]
    assert d.audio_bytes == 6


def test_end_of_stream_switches_back_to_command_text_in_the_same_read():
    d = DleDecoder()
    d.start_stream(bytes_per_second=8000)
    assert d.feed(b"\x80\x81" + DLE + b"\x03\r\nOK\r\n") == [
        Audio(b"\x80\x81"),
        EndOfStream(),
        CommandText(b"\r\nOK\r\n"),
    ]
    assert not d.streaming
    assert d.audio_bytes == 2
    assert d.recorded_seconds == 2 / 8000


def test_unknown_code_is_reported_and_decoding_continues():
    d = DleDecoder()
    d.start_stream()
    assert d.feed(b"\x01" + DLE + b"z\x02" + DLE + b"\x00\x03") == [
        Audio(b"\x01"),
        UnknownDleCode(ord("z")),
        Audio(b"\x02"),
        UnknownDleCode(0),
        Audio(b"\x03"),
    ]


def test_dle_split_across_reads():
    d = DleDecoder()
    d.start_stream()
    assert d.feed(b"\x05" + DLE) == [Audio(b"\x05")]
    assert d.feed(b"b\x06") == [ToneEvent("busy"), Audio(b"\x06")]
    assert d.feed(DLE) == []
    assert d.feed(DLE) == [Audio(b"\x10")]


def test_complex_event_packet_carries_caller_id_text():
    payload = b"DATE=1127\r\nTIME=1405\r\nNMBR=0312345678\r\n"
    d = DleDecoder()
    events = d.feed(b"x" + DLE + b"X" + payload + DLE + b"." + DLE + b"R")
    assert events == [CommandText(b"x"), ComplexEvent(payload), Ring()]
    (cid,) = parse_callerid_lines(events[1].payload.decode())
    assert cid.number == "0312345678" and cid.datetime == "11-27T14:05"


def test_usr_spurious_dialtone_is_dropped_only_while_streaming():
    profile = v253.family_profile("usr")
    d = DleDecoder(ignore_while_streaming=profile.ignore_while_streaming)
    assert d.feed(DLE + b"d") == [ToneEvent("dialtone")]
    d.start_stream()
    assert d.feed(b"\x01" + DLE + b"d\x02") == [Audio(b"\x01\x02")]
    assert d.ignored == 1


# ------------------------------------------------------------------------------------- DTMF collapsing
def test_shielded_repeats_are_one_press():
    d = DleDecoder()
    events = d.feed(DLE + b"/" + DLE + b"0" + DLE + b"0" + DLE + b"0" + DLE + b"~")
    assert events == [DtmfToneStart(), DtmfDigit("0"), DtmfToneEnd("0")]
    # A second press of the same key is a new digit.
    assert d.feed(DLE + b"/" + DLE + b"0" + DLE + b"\x7f") == [
        DtmfToneStart(),
        DtmfDigit("0"),
        DtmfToneEnd("0"),
    ]


def test_unshielded_repeats_collapse_on_the_audio_sample_clock():
    d = DleDecoder(dtmf_repeat_gap=0.1)
    d.start_stream(bytes_per_second=8000)
    gap_70ms = b"\x80" * 560
    gap_300ms = b"\x80" * 2400
    stream = DLE + b"5" + gap_70ms + DLE + b"5" + gap_70ms + DLE + b"5" + gap_300ms + DLE + b"5"
    digits = [e for e in d.feed(stream) if isinstance(e, DtmfDigit)]
    assert digits == [DtmfDigit("5"), DtmfDigit("5")]  # one held key, then a second press


def test_unshielded_repeats_collapse_with_host_time_outside_a_stream():
    d = DleDecoder(dtmf_repeat_gap=0.1)
    assert d.feed(DLE + b"7", now=10.00) == [DtmfDigit("7")]
    assert d.feed(DLE + b"7", now=10.07) == []
    assert d.feed(DLE + b"7", now=10.14) == []
    assert d.feed(DLE + b"7", now=10.60) == [DtmfDigit("7")]
    assert d.feed(DLE + b"8", now=10.62) == [DtmfDigit("8")]


def test_without_any_clock_every_unshielded_report_counts():
    d = DleDecoder()
    assert d.feed(DLE + b"1" + DLE + b"1") == [DtmfDigit("1"), DtmfDigit("1")]


# ------------------------------------------------------------------------------------- transcripts
TRANSCRIPT = (
    b"\x7f\x80"
    + DLE
    + DLE
    + b"\x81"
    + DLE
    + b"\x1a"
    + DLE
    + b"R"
    + DLE
    + b"/"
    + DLE
    + b"5"
    + b"\x82" * 3
    + DLE
    + b"5"
    + DLE
    + b"~"
    + DLE
    + b"X"
    + b"NMBR=P\r\n"
    + DLE
    + b"."
    + DLE
    + b"b"
    + b"\x83"
    + DLE
    + b"\x03"
    + b"\r\nOK\r\n"
    + DLE
    + b"l"
)
TRANSCRIPT_EVENTS = [
    Audio(b"\x7f\x80\x10\x81\x10\x10"),
    Ring(),
    DtmfToneStart(),
    DtmfDigit("5"),
    Audio(b"\x82\x82\x82"),
    DtmfToneEnd("5"),
    ComplexEvent(b"NMBR=P\r\n"),
    ToneEvent("busy"),
    Audio(b"\x83"),
    EndOfStream(),
    CommandText(b"\r\nOK\r\n"),
    LoopBreak(),
]


def test_transcript_fed_one_byte_at_a_time():
    d = DleDecoder()
    d.start_stream(bytes_per_second=8000)
    assert feed_pieces(d, TRANSCRIPT, range(len(TRANSCRIPT))) == TRANSCRIPT_EVENTS
    assert d.audio_bytes == 10


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(TRANSCRIPT)), max_size=12))
def test_transcript_split_anywhere(cuts):
    d = DleDecoder()
    d.start_stream(bytes_per_second=8000)
    assert feed_pieces(d, TRANSCRIPT, cuts) == TRANSCRIPT_EVENTS
    assert d.audio_bytes == 10


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400).map(lambda b: bytes(x if x % 3 else 0x10 for x in b)),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=900), max_size=8),
)
def test_escape_round_trip(audio, pair_with_sub, cuts):
    wire = escape(audio, pair_with_sub=pair_with_sub) + v253.END_TRANSMIT
    d = DleDecoder()
    d.start_stream(bytes_per_second=8000)
    events = feed_pieces(d, wire, cuts)
    received = events[0].data if events and isinstance(events[0], Audio) else b""
    assert received == audio
    assert events[-1] == EndOfStream()
    assert d.audio_bytes == len(audio)


def test_escape_examples():
    assert escape(b"\x10") == b"\x10\x10"
    assert escape(b"a\x10\x10\x10b") == b"a\x10\x10\x10\x10\x10\x10b"
    assert escape(b"a\x10\x10\x10b", pair_with_sub=True) == b"a\x10\x1a\x10\x10b"


def test_host_control_codes():
    assert v253.END_TRANSMIT == b"\x10\x03"
    assert v253.ABORT_TRANSMIT == b"\x10\x18\x10\x03"
    assert v253.ABORT_RECEIVE == b"\x10!"


# ------------------------------------------------------------------------------------- playback encoder
def test_playback_encoder_chunks_and_accounting():
    fmt = VoiceFormat(129, "16-BIT LINEAR", "s16le", 16, 8000)
    enc = PlaybackEncoder(fmt, chunk_ms=20)
    assert enc.chunk_bytes == 320
    audio = bytes([0x10, 0x00]) * 400  # 800 bytes, 400 samples, every other byte a DLE
    chunks = list(enc.chunks(audio))
    assert [len(c) for c in chunks] == [480, 480, 240]
    assert b"".join(chunks) == escape(audio)
    assert enc.audio_bytes == 800 and enc.wire_bytes == 1200
    assert enc.seconds_queued == pytest.approx(0.05)
    assert enc.end() == b"\x10\x03"
    with pytest.raises(VoiceProtocolError, match="after the end"):
        list(enc.chunks(b"\x00\x00"))


def test_playback_encoder_refuses_half_samples_and_aborts():
    enc = PlaybackEncoder(VoiceFormat(129, "16-BIT LINEAR", "s16le", 16, 8000))
    with pytest.raises(VoiceProtocolError, match="whole number of 2-byte samples"):
        list(enc.chunks(b"\x00\x00\x00"))
    assert enc.abort() == b"\x10\x18\x10\x03" and enc.finished


# ------------------------------------------------------------------------------------- AT commands
def test_voice_command_builders():
    assert v253.fclass(8) == "AT+FCLASS=8"
    assert v253.vls(1) == "AT+VLS=1"
    assert v253.vsm(130, 8000) == "AT+VSM=130,8000"
    assert v253.vsm(1, 8000, 0, 0) == "AT+VSM=1,8000,0,0"
    assert v253.vrx() == "AT+VRX" and v253.vtx() == "AT+VTX"
    assert v253.vts("1", "#", (440, 480, 100), ("5", 20)) == "AT+VTS=1,#,[440,480,100],{5,20}"
    assert v253.vtd(10) == "AT+VTD=10"
    assert v253.vit(60) == "AT+VIT=60"
    assert v253.vsd(128, 50) == "AT+VSD=128,50"
    assert v253.vgt(128) == "AT+VGT=128" and v253.vgr(128) == "AT+VGR=128"
    assert v253.vcid(1) == "AT+VCID=1" and v253.cid_hash(1) == "AT#CID=1"
    assert v253.vrid(0) == "AT+VRID=0"
    assert v253.vem("0bc01800") == "AT+VEM=0BC01800"
    assert v253.vnh(1) == "AT+VNH=1"
    assert v253.ste(7) == "AT-STE=7"
    assert v253.query_support("+VSM") == "AT+VSM=?" and v253.query_support("-STE") == "AT-STE=?"
    assert v253.encode_command("AT+VLS=1") == b"AT+VLS=1\r"


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: v253.vls(256), r"\+VLS: 256 is outside 0\.\.255"),
        (lambda: v253.vcid(3), r"\+VCID: 3 is outside 0\.\.2"),
        (lambda: v253.vts("12"), "not one DTMF character"),
        (lambda: v253.vts(), "nothing to play"),
        (lambda: v253.vts((440, 5000, 10)), "frequency: 5000"),
        (lambda: v253.fclass(3), "not one of"),
        (lambda: v253.vsm(1, sds=1), "need the sample rate"),
        (lambda: v253.vem("XYZ"), "not a hexadecimal"),
        (lambda: v253.ste(True), "outside"),
        (lambda: v253.encode_command("AT+VLS=1\rATZ"), "line break"),
        (lambda: v253.encode_command("+VLS=1"), "does not start with AT"),
        (lambda: v253.query_support("VSM"), "not an extended command"),
    ],
)
def test_voice_command_errors_are_precise(call, message):
    with pytest.raises(VoiceCommandError, match=message):
        call()


# ------------------------------------------------------------------------------------- capabilities
# USR 5637: ncidd.log quoted in the NCID documentation (ncid "Hangup Appendix B"); the same list is in
# mgetty voice/libvoice/Multitech_5634ZPX.c. Short form: id, name, rates only.
USR_5637 = """AT+VSM=?\r
128,"8-BIT LINEAR",(7200,8000,11025)\r
129,"16-BIT LINEAR",(7200,8000,11025)\r
130,"8-BIT ALAW",(8000)\r
131,"8-BIT ULAW",(8000)\r
132,"IMA ADPCM",(7200,8000,11025)\r
\r
OK\r
"""
# Conexant CX93001 (LB-Link USB modem; the chip family of Zoom 3095-class modems): NCID ncidd.log.
CONEXANT_CX93001 = """0,"SIGNED PCM",8,0,8000,0,0
1,"UNSIGNED PCM",8,0,8000,0,0
129,"IMA ADPCM",4,0,8000,0,0
130,"UNSIGNED PCM",8,0,8000,0,0
131,"Mu-Law",8,0,8000,0,0
132,"A-Law",8,0,8000,0,0
133,"14 bit PCM",14,0,8000,0,0
OK
"""
# USRobotics 56K softmodem command reference (+VSM example), full V.253 form.
USR_SOFTMODEM = [
    '1,"UNSIGNED PCM",8,0,(7200,8000),(0),(0)',
    '128,"8-BIT LINEAR",8,0,(7200,8000),(0),(0)',
    '129,"ADPCM",4,0,(7200,8000),(0),(0)',
    '130,"UNSIGNED PCM",8,0,(7200,8000),(0),(0)',
    '131,"ULAW",8,0,(7200,8000),(0),(0)',
    '132,"ALAW",8,0,(7200,8000),(0),(0)',
    '133,"LINEAR",16,0,(7200,8000),(0),(0)',
    "OK",
]
# t38modem pmodeme.cxx change log (software V.253 modem).
T38MODEM = [
    '0,"SIGNED PCM",8,0,(8000),(0),(0)',
    '1,"UNSIGNED PCM",8,0,(8000),(0),(0)',
    '4,"G711U",8,0,(8000),(0),(0)',
    '5,"G711A",8,0,(8000),(0),(0)',
    '128,"8-BIT LINEAR",8,0,(8000),(0),(0)',
    '131,"G.711 ULAW",8,0,(8000),(0),(0)',
]
# ZyXEL U-1496 manual: semicolon-separated answer.
ZYXEL_1496 = ["1;CELP;1;0;(9600)", "2;ADPCM;2;0;(9600)", "3;ADPCM;3;0;(9600)", "OK"]


def test_usr_5637_vsm_answer():
    caps = parse_vsm_options(USR_5637)
    assert [(o.cml, o.encoding, o.bits) for o in caps.options] == [
        (128, "u8", 8),
        (129, "s16le", 16),
        (130, "alaw", 8),
        (131, "ulaw", 8),
        (132, "ima_adpcm", 4),
    ]
    assert caps.options[0].rates.values() == [7200, 8000, 11025]
    assert caps.unparsed == ()
    fmt = choose_format(caps)
    assert fmt == VoiceFormat(129, "16-BIT LINEAR", "s16le", 16, 8000)
    assert fmt.vsm_command() == "AT+VSM=129,8000"
    assert fmt.bytes_per_second == 16000 and fmt.min_port_bps == 160000


def test_conexant_vsm_answer():
    caps = parse_vsm_options(CONEXANT_CX93001)
    assert {o.cml: o.encoding for o in caps.options} == {
        0: "s8",
        1: "u8",
        129: "ima_adpcm",
        130: "u8",
        131: "ulaw",
        132: "alaw",
        133: "pcm14",
    }
    assert caps.by_cml(133).bits == 14
    assert choose_format(caps) == VoiceFormat(131, "Mu-Law", "ulaw", 8, 8000)
    assert choose_format(caps, prefer_law="alaw").cml == 132
    only_pcm = [o for o in caps.options if o.encoding in ("u8", "s8")]
    assert choose_format(only_pcm).cml == 130  # vendor id preferred over V.253 id 1
    assert choose_format([o for o in only_pcm if o.encoding == "s8"]).encoding == "s8"


def test_usr_softmodem_and_t38modem_answers():
    caps = parse_vsm_options(USR_SOFTMODEM)
    assert caps.by_cml(133).encoding == "s16le"
    assert caps.by_cml(129).encoding == "adpcm"
    assert choose_format(caps).cml == 133
    assert choose_format(caps, rate=7200).rate == 7200
    t38 = parse_vsm_options(T38MODEM)
    assert {o.cml: o.encoding for o in t38.options}[4] == "ulaw"
    assert {o.cml: o.encoding for o in t38.options}[5] == "alaw"
    assert choose_format(t38).cml == 131  # G.711 µ-law, vendor id first


def test_zyxel_semicolon_answer_has_nothing_playable():
    caps = parse_vsm_options(ZYXEL_1496)
    assert [(o.cml, o.encoding, o.bits) for o in caps.options] == [
        (1, "celp", 1),
        (2, "adpcm", 2),
        (3, "adpcm", 3),
    ]
    with pytest.raises(NoUsableVoiceFormat, match=r"at 8000 Hz; it lists 1 'CELP' \(celp, 9600 Hz\)"):
        choose_format(caps)


def test_vsm_prefix_and_garbage_lines():
    caps = parse_vsm_options(['+VSM: 131,"ULAW",8,0,(8000),(0),(0)', "128,BROKEN", "hello"])
    assert [o.cml for o in caps.options] == [131]
    assert caps.unparsed == ("128,BROKEN", "hello")


def test_vls_answer_and_event_masks():
    answer = [
        "AT+VLS=?",
        '0,"",B0000000,B0000000,B0000000',
        '1,"T",0BC01800,0BC01800,0BC01800',
        '2,"L",00000000,00000000,B0000000',
        "OK",
    ]
    options = v253.parse_vls_options(answer)
    assert [(o.label, o.devices, o.off_hook) for o in options] == [
        (0, "", False),
        (1, "T", True),
        (2, "L", False),
    ]
    assert options[0].events() == {"caller_id", "distinctive_ring", "ring"}
    assert options[1].events() == {
        "dtmf",
        "fax_calling",
        "data_calling",
        "local_phone_hook",
        "silence",
        "busy",
        "dialtone",
    }
    assert v253.line_label(options, "T") == 1 and v253.line_label(options, "") == 0
    with pytest.raises(LookupError, match='no \\+VLS mode for devices "ST"'):
        v253.line_label(options, "ST")


def test_range_answers():
    (ste,) = v253.parse_ranges("-STE: (0-7)\r\nOK\r\n", "-STE")
    assert ste.values() == list(range(8)) and 8 not in ste
    sds, sdi = v253.parse_ranges("+VSD: (0,127,128,129),(0-255)", "+VSD")  # USR manual example
    assert 128 in sds and 126 not in sds and 255 in sdi
    assert v253.parse_fclass("0,1,1.0,2,8\r\nOK") == {"0", "1", "1.0", "2", "8"}
    with pytest.raises(ValueError, match="cannot read range answer"):
        v253.parse_ranges("(0-x)")


def test_identity_and_family():
    usr = v253.parse_identity(ati0="5601\r\nOK", ati3="U.S. Robotics 56K FAX USB V1.2.23\r\nOK")
    assert usr.family == "usr" and usr.model == "U.S. Robotics 56K FAX USB V1.2.23"
    cx = v253.parse_identity(ati3="CX93001-EIS_V0.2013-V92", fmi="+FMI: CONEXANT\r\nOK")
    assert cx.family == "conexant" and cx.manufacturer == "CONEXANT"
    assert v253.identify_family("56000") == "conexant"
    assert v253.identify_family("Zoom 3095") == "conexant"
    assert v253.identify_family("Silicon Labs Si2494") == "silabs"
    assert v253.identify_family("Acme", None) == "generic"
    assert v253.family_profile("usr").receive_abort_ends_with_etx
    assert v253.family_profile("conexant").line_awareness == "AT-STE=7"
    assert v253.family_profile("usr").callerid_commands == ("AT+VCID=1",)
    with pytest.raises(ValueError, match="unknown modem family"):
        v253.family_profile("hayes")


# ------------------------------------------------------------------------------------- caller ID text
# Worked MDMF example (/work/shared/notes/telephony.md §2): date 01151230, 0312345678, TANAKA.
MDMF = bytes.fromhex("801E01083031313531323330020A30333132333435363738070654414E414B41FC")


@pytest.mark.parametrize("sep", [" = ", "=", " =", "= "])
def test_formatted_caller_id_any_spacing(sep):
    lines = [f"DATE{sep}1127", f"TIME{sep}1405", f"NMBR{sep}0312345678", f"NAME{sep}TANAKA", ""]
    (cid,) = CallerIdTextParser().feed_lines(lines)
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "11-27T14:05")
    assert (cid.date, cid.time) == ("1127", "1405")
    assert cid.lines[2] == f"NMBR{sep}0312345678".strip()


@pytest.mark.parametrize("value,reason", [("P", "P"), ("O", "O"), ("Private", "P"), ("OUT OF AREA", "O")])
def test_private_and_unavailable_numbers(value, reason):
    (cid,) = parse_callerid_lines([f"NMBR = {value}", "NAME = O"])
    assert cid.number is None and cid.reason_absent == reason and cid.name_absent == "O"


def test_block_ends_at_ring_and_at_repeated_tag():
    parser = CallerIdTextParser()
    assert parser.feed_line("RING") == []
    assert parser.feed_line("NMBR=111") == []
    assert parser.pending
    (first,) = parser.feed_line("NMBR=222")  # no blank line between two calls
    assert first.number == "111"
    (second,) = parser.feed_line("RING")
    assert second.number == "222"
    assert not parser.pending and parser.flush() is None


def test_timeout_flush_and_unrelated_lines():
    parser = CallerIdTextParser()
    assert parser.feed_line("DATE=0321\r\n") == []
    assert parser.feed_line("OK") == []  # not caller ID, does not end the block
    cid = parser.flush()
    assert (
        isinstance(cid, CallerIdText) and cid.date == "0321" and cid.datetime is None and cid.number is None
    )


def test_mesg_with_bare_mdmf_parameters():
    params = MDMF[2:-1].hex().upper()
    (cid,) = parse_callerid_lines(["DATE = 0115", "TIME = 1230", f"MESG = {params}"])
    assert cid.name == "TANAKA" and cid.number == "0312345678" and cid.datetime == "01-15T12:30"
    assert cid.message == MDMF[2:-1]


def test_mesg_with_whole_frame_and_unknown_parameter():
    (cid,) = parse_callerid_lines(["NMBR = 0312345678", f"MESG = {MDMF.hex()}"])
    assert cid.name == "TANAKA" and cid.number == "0312345678"
    (odd,) = parse_callerid_lines(["NMBR = 5551234", "MESG = 0C0130"])  # parameter 0x0C, not decoded
    assert odd.number == "5551234" and odd.name is None and odd.message == b"\x0c\x01\x30"
    (bad,) = parse_callerid_lines(["MESG = XYZ"])
    assert "not hex" in bad.notes[0]


def test_raw_hex_frame_line_vcid2():
    (cid,) = parse_callerid_lines([MDMF.hex().upper()])
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "01-15T12:30")
    sdmf = bytes.fromhex("0412") + b"011512300312345678"
    sdmf += bytes(((-sum(sdmf)) & 0xFF,))
    (cid,) = parse_callerid_lines([sdmf.hex()])
    assert cid.number == "0312345678"
    assert parse_callerid_lines(["0312345678"]) == []  # a bare number is not a frame


def test_zyxel_style_and_bad_date():
    (cid,) = parse_callerid_lines(
        ["CALLER NUMBER: 0312345678", "CALLER NAME: SATO", "REASON FOR NO CALLER NAME: P", "DATE=1399"]
    )
    assert cid.number == "0312345678" and cid.name == "SATO" and cid.name_absent == "P"
    assert cid.datetime is None and "DATE '1399' is not MMDD" in cid.notes
    assert cid.to_json()["type"] == "callerid_text"


def test_callerid_enable_commands_per_family():
    assert callerid_enable_commands("conexant") == ("AT+VCID=1",)
    assert callerid_enable_commands("generic") == ("AT+VCID=1", "AT#CID=1")
    with pytest.raises(ValueError, match="unknown modem family 'x'"):
        callerid_enable_commands("x")
