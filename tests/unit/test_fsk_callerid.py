"""FSK and DTMF caller ID: GR-30-CORE (Bell 202), ETSI EN 300 659 (V.23), NTT number display (V.23),
ETSI EN 300 659-1 Annex B DTMF. The audio comes from ``simulators/callerid_gen.py``, written
independently of the detectors; worked frames are from /work/shared/notes/telephony.md §2-3."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.dsp.callerid import (
    CallerIdDetector,
    CallerIdDetectorBank,
    CallerIdFrameError,
    ClassFrameAssembler,
    DtmfCallerIdParser,
    crc16_kermit,
    decode_class_frame,
    decode_ntt_frame,
    parse_dtmf_callerid,
)
from drivers.dsp.charsets import decode_name
from drivers.dsp.events import CallerId, DtmfDigit
from drivers.dsp.fsk import BELL202, V23, CarrierLost, FskReceiver, UartByte
from simulators import callerid_gen as gen

FS = 8000
# telephony.md §2: worked MDMF (date 01151230, number 0312345678, name TANAKA) and its SDMF twin.
WORKED_MDMF = bytes.fromhex(
    "80 1E 01 08 30 31 31 35 31 32 33 30 02 0A 30 33 31 32 33 34 35 36 37 38 07 06 54 41 4E 41 4B 41 FC"
)
WORKED_SDMF = bytes.fromhex("04 12 30 31 31 35 31 32 33 30 30 33 31 32 33 34 35 36 37 38 56")
# telephony.md §3: worked NTT frame (number 0312345678, parity applied, CRC 0x52FB).
WORKED_NTT = bytes.fromhex("90 81 87 90 82 C0 0C 82 0A 30 33 B1 B2 33 B4 35 36 B7 B8 90 03 FB 52")

FRAME_SIZES = (1, 160, 7777)


def detect(signal: np.ndarray, frame: int = 160, **options) -> tuple[list[CallerId], CallerIdDetector]:
    options.setdefault("dtmf", False)
    det = CallerIdDetector(options.pop("mode", "auto"), **options)
    events: list[CallerId] = []
    for i in range(0, signal.size, frame):
        events += det.feed(signal[i : i + frame])
    events += det.flush()
    return events, det


def with_noise(signal: np.ndarray, level_dbm0: float, snr_db: float, seed: int) -> np.ndarray:
    """White noise over the whole band (0-4 kHz) at ``snr_db`` below the FSK level."""
    rng = np.random.default_rng(seed)
    return signal + gen.white_noise(signal.size, level_dbm0 - snr_db, rng)


# ------------------------------------------------------------------------------------ frame bytes
def test_crc16_kermit_check_value():
    assert crc16_kermit(b"123456789") == 0x2189
    assert gen.kermit_crc(b"123456789") == 0x2189


def test_worked_mdmf_decodes_byte_exact_and_generator_builds_it():
    assert sum(WORKED_MDMF) % 256 == 0
    cid = decode_class_frame(WORKED_MDMF)
    assert (cid.number, cid.name, cid.datetime) == ("0312345678", "TANAKA", "01-15T12:30")
    assert cid.message_type == 0x80
    assert cid.checksum_ok and cid.standard == "bell202"
    built = gen.mdmf_callerid(datetime_mmddhhmm="01151230", number="0312345678", name="TANAKA")
    assert built == WORKED_MDMF


def test_worked_sdmf_decodes_and_generator_builds_it():
    assert gen.sdmf_callerid("01151230", "0312345678") == WORKED_SDMF
    cid = decode_class_frame(WORKED_SDMF)
    assert (cid.number, cid.datetime, cid.message_type) == ("0312345678", "01-15T12:30", 0x04)


def test_worked_ntt_frame_decodes_byte_exact_and_generator_builds_it():
    assert gen.ntt_callerid("0312345678") == WORKED_NTT
    assert crc16_kermit(WORKED_NTT[2:-2]) == 0x52FB
    cid = decode_ntt_frame(WORKED_NTT)
    assert (cid.standard, cid.number, cid.message_type) == ("v23_ntt", "0312345678", 0x40)
    assert cid.checksum_ok


def test_sdmf_absence_and_message_waiting_bytes():
    private = decode_class_frame(gen.sdmf_callerid("12312359", reason="P"))
    assert (private.number, private.reason_absent, private.datetime) == (None, "P", "12-31T23:59")
    assert decode_class_frame(gen.sdmf_message_waiting(True)).message_waiting is True
    assert decode_class_frame(gen.sdmf_message_waiting(False)).message_waiting is False
    mwi = decode_class_frame(gen.mdmf_message_waiting(True))
    assert (mwi.message_type, mwi.message_waiting, mwi.number) == (0x82, True, None)
    assert decode_class_frame(gen.mdmf_message_waiting(False)).message_waiting is False


def test_mdmf_absence_parameters():
    frame = gen.mdmf_callerid(datetime_mmddhhmm="03011200", reason_absent="O", name_absent="P")
    cid = decode_class_frame(frame)
    assert (cid.number, cid.reason_absent, cid.name_absent) == (None, "O", "P")


def test_checksum_error_rejected_unless_lenient():
    bad = bytearray(WORKED_MDMF)
    bad[15] ^= 0x01
    with pytest.raises(CallerIdFrameError, match="checksum") as err:
        decode_class_frame(bytes(bad))
    assert err.value.kind == "integrity"
    lenient = decode_class_frame(bytes(bad), lenient=True)
    assert lenient.checksum_ok is False and lenient.number == "0212345678"


def test_class_frame_structure_errors_are_precise():
    with pytest.raises(CallerIdFrameError, match="length byte says 30"):
        decode_class_frame(WORKED_MDMF[:-2] + WORKED_MDMF[-1:])
    body = bytes((0x02, 0x20)) + b"0312"  # parameter claims 32 bytes
    with pytest.raises(CallerIdFrameError, match="claims 32 bytes"):
        decode_class_frame(gen.class_message(0x80, body))


def test_etsi_charge_and_sms_messages_are_not_caller_id():
    assert decode_class_frame(gen.class_message(0x86, b"\x20\x02\x31\x32"), standard="v23_etsi") is None
    assert decode_class_frame(gen.class_message(0x89, b"\x50\x02hi"), standard="v23_etsi") is None


def test_ntt_parity_error_rejected():
    frame = bytearray(WORKED_NTT)
    frame[9] ^= 0x80  # '0' sent with odd parity; fix the CRC so only parity is wrong
    crc = crc16_kermit(bytes(frame[2:-2]))
    frame[-2:] = bytes((crc & 0xFF, crc >> 8))
    with pytest.raises(CallerIdFrameError, match="parity error in byte") as err:
        decode_ntt_frame(bytes(frame))
    assert err.value.kind == "integrity"
    assert decode_ntt_frame(bytes(frame), lenient=True).checksum_ok is False


def test_ntt_crc_error_rejected():
    frame = bytearray(WORKED_NTT)
    frame[-1] ^= 0x01
    with pytest.raises(CallerIdFrameError, match="CRC error"):
        decode_ntt_frame(bytes(frame))


def test_ntt_no_ring_notice_0x42_is_not_caller_id():
    notice = gen.ntt_frame(0x42, [(0x13, b"\x30")])  # telephony.md §3: 42 03 13 01 30
    assert decode_ntt_frame(notice) is None


def test_ntt_dle_doubling():
    number = "0312345678901234"  # 16 digits: the parameter length is 0x10 = DLE, sent twice
    frame = gen.ntt_callerid(number)
    assert bytes((0x90, 0x90)) in frame[5:-4]
    assert decode_ntt_frame(frame).number == number
    spandsp_style = gen.ntt_frame(0x40, [(0x02, number.encode())], length_counts_stuffing=True)
    assert decode_ntt_frame(spandsp_style).number == number
    with pytest.raises(CallerIdFrameError, match="DLE followed by"):
        plain = bytes(b & 0x7F for b in frame[:-2]).replace(b"\x10\x10", b"\x10\x05", 1)
        wire = bytes(gen.even_parity(b) for b in plain)
        crc = gen.kermit_crc(wire[2:])
        decode_ntt_frame(wire + bytes((crc & 0xFF, crc >> 8)))


def test_ntt_parameters_type_plan_reason_dialled():
    frame = gen.ntt_callerid(number_type=(2, 8), reason_absent="C", dialled_number="0312340000")
    cid = decode_ntt_frame(frame)
    assert (cid.number, cid.reason_absent, cid.number_type, cid.number_plan, cid.dialled_number) == (
        None,
        "C",
        2,
        8,
        "0312340000",
    )


# ------------------------------------------------------------------------------------------ names
def test_names_ascii_gb2312_jis_x0201():
    assert decode_name(b"TANAKA") == "TANAKA"
    assert decode_name("张三丰".encode("gb2312")) == "张三丰"
    assert decode_name("张三丰".encode("gb2312"), "gb2312") == "张三丰"
    kana = gen.jis_x0201_name("ﾀﾅｶ ﾀﾛｳ")
    assert kana[0] == 0x0E and kana[-1] == 0x0F  # SO ... SI
    assert decode_name(kana, "jis7") == "ﾀﾅｶ ﾀﾛｳ"
    assert decode_name(kana) == "ﾀﾅｶ ﾀﾛｳ"  # auto: shift codes mean JIS X 0201
    mixed = gen.jis_x0201_name("ABCｱｲ\\9")
    assert decode_name(mixed, "jis7") == "ABCｱｲ¥9"  # JIS X 0201 Roman has YEN SIGN at 0x5C
    assert decode_name(bytes((0xB1, 0xB2)), "jisx0201") == "ｱｲ"
    swapped = bytes((0x0F, 0x31, 0x0E, 0x41))  # SI selects kana when the direction is swapped
    assert decode_name(swapped, "jis7", so_selects_kana=False) == "ｱA"
    assert decode_name(b"A\x00B\x07") == "AB"
    with pytest.raises(ValueError, match="unknown name charset"):
        decode_name(b"x", "sjis")


# ------------------------------------------------------------------------------------------ audio
AUDIO_CASES = {
    "bell202-mdmf": ("bell202", WORKED_MDMF, "bell202", "0312345678"),
    "bell202-sdmf": ("bell202", WORKED_SDMF, "bell202", "0312345678"),
    "etsi-mdmf": ("etsi", WORKED_MDMF, "v23_etsi", "0312345678"),
    "ntt": ("ntt", WORKED_NTT, "v23_ntt", "0312345678"),
}


@pytest.mark.parametrize("frame", FRAME_SIZES)
@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_every_standard_at_minus_30_dbm0_after_ulaw(case, frame):
    line, message, standard, number = AUDIO_CASES[case]
    signal = gen.ulaw_roundtrip(gen.callerid_burst(message, standard=line, level_dbm0=-30.0))
    events, det = detect(signal, frame)
    assert [(e.standard, e.number) for e in events] == [(standard, number)]
    assert events[0].t == pytest.approx(gen.burst_message_end(message, standard=line), abs=0.001)
    assert det.stats["integrity_errors"] == 0


@pytest.mark.parametrize("frame", FRAME_SIZES)
@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_every_standard_at_20_db_snr_after_ulaw(case, frame):
    line, message, standard, number = AUDIO_CASES[case]
    clean = gen.callerid_burst(message, standard=line, level_dbm0=-20.0)
    signal = gen.ulaw_roundtrip(with_noise(clean, -20.0, 20.0, seed=frame))
    events, _ = detect(signal, frame)
    assert [(e.standard, e.number) for e in events] == [(standard, number)]


def test_frame_size_does_not_change_the_events():
    signal = gen.ulaw_roundtrip(with_noise(gen.callerid_burst(WORKED_MDMF, level_dbm0=-25.0), -25.0, 15.0, 4))
    results = {frame: detect(signal, frame)[0] for frame in FRAME_SIZES}
    assert results[1] == results[160] == results[7777] and len(results[1]) == 1


def test_call_waiting_cid_without_seizure_and_80_mark_bits():
    burst = gen.callerid_burst(WORKED_MDMF, seizure=False, mark_bits=80, level_dbm0=-20.0)
    events, _ = detect(gen.ulaw_roundtrip(burst))
    assert [(e.standard, e.name) for e in events] == [("bell202", "TANAKA")]


def test_message_waiting_and_names_over_audio():
    gb = gen.mdmf_callerid(number="13800138000", name=gen.gb2312_name("李小龙"))
    events, _ = detect(gen.ulaw_roundtrip(gen.callerid_burst(gb, level_dbm0=-25.0)))
    assert [(e.number, e.name) for e in events] == [("13800138000", "李小龙")]
    ntt = gen.ntt_callerid("0312345678", name=gen.jis_x0201_name("ﾔﾏﾀﾞ"))
    events, _ = detect(gen.ulaw_roundtrip(gen.callerid_burst(ntt, standard="ntt", level_dbm0=-25.0)))
    assert [(e.standard, e.name) for e in events] == [("v23_ntt", "ﾔﾏﾀﾞ")]
    vmwi = gen.callerid_burst(gen.sdmf_message_waiting(True), level_dbm0=-25.0)
    events, _ = detect(gen.ulaw_roundtrip(vmwi))
    assert [(e.message_type, e.message_waiting) for e in events] == [(0x06, True)]


@pytest.mark.parametrize("mode", ["bell202", "v23", "ntt"])
def test_single_standard_modes_ignore_the_others(mode):
    wanted = {"bell202": ("bell202", WORKED_MDMF), "v23": ("etsi", WORKED_MDMF), "ntt": ("ntt", WORKED_NTT)}
    for line, message in (("bell202", WORKED_MDMF), ("etsi", WORKED_MDMF), ("ntt", WORKED_NTT)):
        events, _ = detect(gen.callerid_burst(message, standard=line, level_dbm0=-20.0), mode=mode)
        assert len(events) == (1 if (line, message) == wanted[mode] else 0), (mode, line)


def test_checksum_error_over_audio_dropped_by_default_emitted_when_lenient():
    bad = bytearray(WORKED_MDMF)
    bad[20] ^= 0x02  # a digit changes, the checksum byte does not
    burst = gen.ulaw_roundtrip(gen.callerid_burst(bytes(bad), level_dbm0=-20.0))
    events, det = detect(burst)
    assert events == [] and det.stats["integrity_errors"] == 1
    assert "checksum" in det.last_error
    events, _ = detect(burst, lenient=True)
    assert [(e.checksum_ok, e.number) for e in events] == [(False, "0312347678")]


def test_ntt_parity_error_and_0x42_over_audio():
    frame = bytearray(WORKED_NTT)
    frame[10] ^= 0x80
    crc = crc16_kermit(bytes(frame[2:-2]))
    frame[-2:] = bytes((crc & 0xFF, crc >> 8))
    events, det = detect(gen.callerid_burst(bytes(frame), standard="ntt", level_dbm0=-20.0))
    assert events == [] and det.stats["integrity_errors"] == 1 and "parity" in det.last_error
    notice = gen.ntt_frame(0x42, [(0x13, b"\x30")])
    events, det = detect(gen.callerid_burst(notice, standard="ntt", level_dbm0=-20.0))
    assert events == [] and det.stats["ignored"] == 1


def test_framing_error_abandons_the_frame():
    bits = [1] * 180 + gen.async_bits(WORKED_MDMF)
    bits[180 + 10 * 12 + 9] = 0  # stop bit of byte 12 is a space
    wave = gen.fsk_waveform(bits + [1] * 20, level_dbm0=-20.0)
    signal = np.concatenate((np.zeros(400), wave, np.zeros(400)))
    events, det = detect(signal)
    assert events == []
    assert det.stats["frames"] == 0


def test_ntt_dle_doubling_over_audio():
    number = "0312345678901234"
    burst = gen.callerid_burst(gen.ntt_callerid(number), standard="ntt", level_dbm0=-20.0)
    assert [e.number for e in detect(burst)[0]] == [number]


# ------------------------------------------------------------------------- receiver-level checks
def test_receiver_measures_mark_offset_to_tell_bell202_from_v23():
    cases = ((V23, "bell202", -100.0), (BELL202, "etsi", 100.0), (BELL202, "bell202", 0.0))
    for spec, line, expected in cases:
        rx = FskReceiver(spec)
        items = rx.feed(gen.callerid_burst(WORKED_MDMF, standard=line, level_dbm0=-20.0)) + rx.flush()
        first = [i for i in items if isinstance(i, UartByte) and i.idle_bits >= 10]
        assert len(first) == 1 and first[0].value == 0x80
        assert first[0].mark_offset_hz == pytest.approx(expected, abs=10.0)
        assert isinstance(items[-1], CarrierLost)


def test_assembler_requires_a_mark_run_before_the_type():
    asm = ClassFrameAssembler()
    short_idle = UartByte(0x80, 100.0, idle_bits=3.0, framing_ok=True, mark_offset_hz=0.0)
    assert asm.feed(short_idle) is None
    for b in WORKED_MDMF[1:]:
        assert asm.feed(UartByte(b, 0.0, 0.0, True)) is None  # never started


def test_silent_channel_takes_the_fast_path():
    rx = FskReceiver(BELL202)
    assert rx.feed(np.zeros(8000)) == [] and not rx.busy
    assert rx.samples_seen == 8000


def test_constructor_errors_are_clear():
    with pytest.raises(ValueError, match="unknown caller-ID mode 'fsk'"):
        CallerIdDetector("fsk")
    with pytest.raises(ValueError, match="too low"):
        FskReceiver(BELL202, sample_rate=4000)
    with pytest.raises(ValueError, match="at least one channel"):
        CallerIdDetectorBank(0)


# ---------------------------------------------------------------------------------- no false CID
def test_no_caller_id_on_silence_and_noise():
    rng = np.random.default_rng(11)
    for level in (-60.0, -35.0, -10.0):
        events, det = detect(gen.white_noise(10 * FS, level, rng), dtmf=True)
        assert events == [] and det.stats["frames"] == 0, level
    spectrum = np.fft.rfft(rng.standard_normal(20 * FS))
    freqs = np.fft.rfftfreq(20 * FS, 1 / FS)
    spectrum[(freqs < 1000) | (freqs > 2400)] = 0  # noise inside the FSK band passes the carrier test
    band = np.fft.irfft(spectrum, 20 * FS)
    band *= gen.level_to_amplitude(-20.0) / np.sqrt(2 * np.mean(band**2))
    events, _ = detect(band)
    assert events == []


def test_no_caller_id_on_dtmf_digits():
    rng = np.random.default_rng(12)
    all_keys = "".join(rng.choice(list("0123456789*#ABCD"), 120))
    events, det = detect(gen.dtmf_waveform(all_keys, level_dbm0=-8.0), mode="auto", dtmf=False)
    assert events == [] and det.stats["frames"] == 0  # DTMF is never taken for FSK
    no_end = "".join(rng.choice(list("0123456789*"), 60))  # digits without an end marker
    events, _ = detect(gen.dtmf_waveform(no_end, level_dbm0=-8.0), mode="auto", dtmf=True)
    assert events == []


# ----------------------------------------------------------------------------------- DTMF caller ID
def feed_string(parser: DtmfCallerIdParser, digits: str, t0: float = 0.0, step: float = 0.14):
    out = [parser.feed_digit(d, t0 + k * step) for k, d in enumerate(digits)]
    return [e for e in out if e is not None]


@pytest.mark.parametrize(
    ("digits", "number", "reason", "redirect"),
    [
        ("A0312345678C", "0312345678", None, None),
        ("A0312345678D0399998888C", "0312345678", None, "0399998888"),
        ("AB00C", None, "O", None),
        ("AB10C", None, "P", None),
        ("B10C", None, "P", None),
        ("A4512345678#", "4512345678", None, None),
        ("D1#", None, "P", None),
        ("D2#", None, "I", None),
        ("D3#", None, "O", None),
        ("D0223456789C", "0223456789", None, None),
        ("4512345678#", "4512345678", None, None),
    ],
)
def test_dtmf_caller_id_variants(digits, number, reason, redirect):
    events = feed_string(DtmfCallerIdParser(), digits, t0=2.0)
    assert [(e.standard, e.number, e.reason_absent, e.redirecting_number) for e in events] == [
        ("dtmf", number, reason, redirect)
    ]
    assert events[0].t == pytest.approx(2.0 + (len(digits) - 1) * 0.14)


def test_dtmf_generator_strings_match_the_formats():
    assert gen.dtmf_callerid_digits("0312", variant="A-C", reason=None) == "A0312C"
    assert gen.dtmf_callerid_digits(variant="A-C", reason="P") == "AB10C"
    assert gen.dtmf_callerid_digits(variant="A-#", reason="I") == "D2#"
    assert gen.dtmf_callerid_digits("0312", variant="D-C") == "D0312C"
    assert gen.dtmf_callerid_digits("0312", variant="#") == "0312#"


def test_dtmf_parser_rejects_malformed_and_times_out():
    for bad in ("AB77C", "D9#", "A12*34C", "C", "#", "A12B", "D12#", "AD12D3C"):
        assert feed_string(DtmfCallerIdParser(), bad) == [], bad
    assert parse_dtmf_callerid("0312#", allow_unmarked=False) is None
    parser = DtmfCallerIdParser(inter_digit_timeout=1.0)
    assert feed_string(parser, "A0312") == []
    parser.feed_time(5.0)
    assert parser.pending == ""
    assert feed_string(parser, "345C", t0=5.0) == []  # the start was lost with the timeout
    assert [e.number for e in feed_string(parser, "A99A0312C", t0=9.0)] == ["0312"]  # A restarts
    with pytest.raises(ValueError, match="not a DTMF digit"):
        parser.feed_digit("E", 10.0)


def test_dtmf_caller_id_from_audio_through_the_dtmf_receiver():
    rng = np.random.default_rng(13)
    cases = (("A-C", {"number": "13800138000"}), ("A-#", {"reason": "P"}), ("#", {"number": "4512"}))
    for variant, kwargs in cases:
        digits = gen.dtmf_callerid_digits(variant=variant, **kwargs)
        tones = np.concatenate((np.zeros(800), gen.dtmf_waveform(digits, level_dbm0=-20.0), np.zeros(1600)))
        signal = gen.ulaw_roundtrip(tones + gen.white_noise(tones.size, -40.0, rng))
        events, _ = detect(signal, 160, dtmf=True)
        assert [(e.standard, e.number, e.reason_absent) for e in events] == [
            ("dtmf", kwargs.get("number"), kwargs.get("reason"))
        ], digits
        assert events[0].t == pytest.approx(0.1 + len(digits) * 0.14 - 0.07, abs=0.02)


def test_detector_feed_digit_from_an_external_dtmf_receiver():
    det = CallerIdDetector("dtmf", dtmf=False)
    events = [det.feed_digit(DtmfDigit(t=0.1 * k, digit=d, duration_ms=60)) for k, d in enumerate("A123C")]
    assert [e.number for e in events if e is not None] == ["123"]


# ------------------------------------------------------------------------------------------ bank
def test_bank_decodes_busy_channels_and_skips_silent_ones():
    channels, n = 64, 2 * FS
    rng = np.random.default_rng(14)
    frames = gen.white_noise(channels * n, -65.0, rng).reshape(channels, n)
    bell = gen.callerid_burst(WORKED_MDMF, level_dbm0=-25.0)
    ntt = gen.callerid_burst(WORKED_NTT, standard="ntt", level_dbm0=-25.0)
    frames[5, 1000 : 1000 + bell.size] += bell
    frames[40, 4321 : 4321 + ntt.size] += ntt
    ntt_end = round(4321 / FS + gen.burst_message_end(WORKED_NTT, standard="ntt"), 3)
    bank = CallerIdDetectorBank(channels)
    out = []
    for i in range(0, n, 160):
        out += bank.feed(frames[:, i : i + 160])
    got = [(ch, e.standard, e.number, round(e.t, 3)) for ch, e in out]
    assert got == [
        (5, "bell202", "0312345678", round(1000 / FS + gen.burst_message_end(WORKED_MDMF), 3)),
        (40, "v23_ntt", "0312345678", ntt_end),
    ]
    assert bank.flush() == []
    assert bank.detector(0).samples_seen == 0  # never left the fast path
    with pytest.raises(ValueError, match="expected frames shaped"):
        bank.feed(np.zeros((3, 160)))


def test_bank_with_internal_dtmf():
    digits = gen.dtmf_callerid_digits("0312", variant="A-C")
    tones = np.concatenate((np.zeros(400), gen.dtmf_waveform(digits, level_dbm0=-15.0), np.zeros(1600)))
    frames = np.zeros((4, tones.size + 160 - tones.size % 160))
    frames[2, : tones.size] = tones
    bank = CallerIdDetectorBank(4, dtmf=True)
    out = []
    for i in range(0, frames.shape[1], 160):
        out += bank.feed(frames[:, i : i + 160])
    assert [(ch, e.standard, e.number) for ch, e in out] == [(2, "dtmf", "0312")]


# --------------------------------------------------------------------------------- generator sanity
def test_generator_fsk_is_continuous_phase_and_ulaw_is_transparent():
    wave = gen.fsk_waveform(gen.async_bits(WORKED_MDMF), level_dbm0=0.0)
    amp = gen.level_to_amplitude(0.0)
    assert np.max(np.abs(np.diff(wave))) <= 2 * np.pi * 2200 / FS * amp * 1.001  # no phase jumps
    x = gen.level_to_amplitude(-20.0) * np.sin(2 * np.pi * 1000 * np.arange(FS) / FS)
    err = gen.ulaw_roundtrip(x) - x
    assert 10 * np.log10(np.mean(x**2) / np.mean(err**2)) > 30.0  # G.711 SQNR at -20 dBm0 is ~37 dB


# ------------------------------------------------------------------------------------ SNR sweep
@pytest.mark.slow
def test_snr_sweep_reports_where_decoding_starts_to_fail(capsys):
    trials = 12
    summary = {}
    for line, message in (("bell202", WORKED_MDMF), ("etsi", WORKED_MDMF), ("ntt", WORKED_NTT)):
        clean = gen.callerid_burst(
            message, standard=line, level_dbm0=-20.0, lead_silence_ms=40, tail_silence_ms=40
        )
        rates = {}
        for snr in (14, 12, 10, 9, 8, 7, 6, 5):
            ok = 0
            for k in range(trials):
                events, _ = detect(gen.ulaw_roundtrip(with_noise(clean, -20.0, snr, 1000 * snr + k)), 7777)
                ok += [e.number for e in events] == ["0312345678"]
                assert len(events) <= 1
            rates[snr] = ok / trials
        summary[line] = rates
        assert all(rates[s] == 1.0 for s in (14, 12, 10)), (line, rates)
    with capsys.disabled():
        for line, rates in summary.items():
            print(f"\nFSK CID {line}: success by SNR (dB, white noise 0-4 kHz): {rates}")
