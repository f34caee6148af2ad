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
from drivers.dsp.fsk import BELL202, V23, CarrierLost, FskGate, FskReceiver, FskReceiverBank, UartByte
from simulators import callerid_gen as gen
from simulators import signals as sim_signals

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


def mixed_lines(seconds: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """Sixteen lines: caller-ID bursts of every standard behind speech, music, DTMF, noise, silence, a
    call-waiting burst and a burst at 6 dB SNR, at uneven offsets, mu-law coded with line noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    kinds = ["bell202", "etsi", "ntt", "cw", "speech+bell202", "speech+ntt", "music+etsi", "noisy-bell202"]
    kinds += ["speech", "music", "dtmf", "noise", "silence", "ntt-late", "two-bursts", "band-noise"]
    lines = np.zeros((len(kinds), n))
    for row, kind in enumerate(kinds):
        at = int(rng.integers(200, 4000))
        bursts = {
            "bell202": [gen.callerid_burst(WORKED_MDMF, level_dbm0=-30.0)],
            "etsi": [gen.callerid_burst(WORKED_MDMF, standard="etsi", level_dbm0=-25.0)],
            "ntt": [gen.callerid_burst(WORKED_NTT, standard="ntt", level_dbm0=-20.0)],
            "cw": [gen.callerid_burst(WORKED_SDMF, seizure=False, mark_bits=80, level_dbm0=-20.0)],
            "ntt-late": [gen.callerid_burst(WORKED_NTT, standard="ntt", level_dbm0=-35.0)],
            "two-bursts": [gen.callerid_burst(WORKED_SDMF, level_dbm0=-20.0)] * 2,
        }
        if kind in bursts:
            signal = np.concatenate(bursts[kind])
        elif kind.startswith(("speech+", "music+")):
            cover, standard = kind.split("+")
            lead = (gen_speech if cover == "speech" else gen_music)(0.8, rng)
            message = WORKED_NTT if standard == "ntt" else WORKED_MDMF
            signal = np.concatenate(
                (lead, gen.callerid_burst(message, standard=standard, level_dbm0=-22.0, lead_silence_ms=0))
            )
        elif kind == "noisy-bell202":
            clean = gen.callerid_burst(WORKED_MDMF, level_dbm0=-20.0)
            signal = with_noise(clean, -20.0, 6.0, seed)
        elif kind == "speech":
            signal = gen_speech(seconds - 0.6, rng)
        elif kind == "music":
            signal = gen_music(seconds - 0.6, rng)
        elif kind == "dtmf":
            signal = gen.dtmf_waveform("0123456789*#ABCD", level_dbm0=-8.0)
        elif kind == "noise":
            signal = gen.white_noise(n - at, -20.0, rng)
        elif kind == "band-noise":
            spectrum = np.fft.rfft(rng.standard_normal(n - at))
            spectrum[(np.fft.rfftfreq(n - at, 1 / FS) < 1000) | (np.fft.rfftfreq(n - at, 1 / FS) > 2400)] = 0
            signal = np.fft.irfft(spectrum, n - at)
            signal *= gen.level_to_amplitude(-20.0) / np.sqrt(2 * np.mean(signal**2))
        else:
            signal = np.zeros(0)
        signal = signal[: n - at]
        lines[row, at : at + signal.size] = signal
    lines += gen.white_noise(lines.size, -65.0, rng).reshape(lines.shape)
    return gen.ulaw_roundtrip(lines.reshape(-1)).reshape(lines.shape), kinds


def gen_speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return sim_signals.speech_like(seconds, rng, level=-15.0)


def gen_music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return sim_signals.music_like(seconds, rng, level=-15.0)


def per_line_events(lines: np.ndarray, frame: int) -> list[tuple[int, CallerId]]:
    out = []
    for ch, line in enumerate(lines):
        det = CallerIdDetector("auto", dtmf=False)
        for i in range(0, line.size, frame):
            out += [(ch, e) for e in det.feed(line[i : i + frame])]
        out += [(ch, e) for e in det.flush()]
    return sorted(out, key=lambda item: (item[0], item[1].t))


def bank_events(lines: np.ndarray, frame: int, dtype=np.float64) -> tuple[list, CallerIdDetectorBank]:
    bank = CallerIdDetectorBank(lines.shape[0])
    out = []
    for i in range(0, lines.shape[1], frame):
        out += bank.feed(lines[:, i : i + frame].astype(dtype))
    out += bank.flush()
    return sorted(out, key=lambda item: (item[0], item[1].t)), bank


@pytest.mark.parametrize("frame", [160, 80, 1000])
def test_bank_events_identical_to_one_detector_per_line_on_mixed_lines(frame):
    lines, kinds = mixed_lines(3.5, seed=frame)
    expected = per_line_events(lines, frame)
    got, bank = bank_events(lines, frame)
    assert got == expected
    # Every burst was found (the noisy one may fail in both), nothing on the lines without FSK.
    found = {kinds[ch] for ch, _ in got}
    assert found >= {"bell202", "etsi", "ntt", "cw", "speech+bell202", "speech+ntt", "music+etsi", "ntt-late"}
    no_fsk = ("speech", "music", "dtmf", "noise", "silence", "band-noise")
    assert found <= {k for k in kinds if k not in no_fsk}
    assert sum(kinds[ch] == "two-bursts" for ch, _ in got) == 2
    stats = [bank.detector(ch).stats["emitted"] for ch in range(len(kinds))]
    assert stats == [sum(c == ch for c, _ in got) for ch in range(len(kinds))]


def test_bank_runs_receivers_only_where_a_burst_starts():
    lines, kinds = mixed_lines(3.5, seed=7)
    bank = CallerIdDetectorBank(lines.shape[0])
    opened = np.zeros(len(kinds), dtype=int)
    for i in range(0, lines.shape[1], 160):
        bank.feed(lines[:, i : i + 160])
        opened[bank.open_lines] += 1
    quiet = [kinds.index(k) for k in ("speech", "dtmf", "noise", "silence")]
    assert opened[quiet].tolist() == [0] * len(quiet)
    # Noise confined to 1000-2400 Hz is an FSK carrier to the receivers too: they keep running on it.
    assert opened[kinds.index("band-noise")] > 0
    # A receiver runs for about the length of a burst (~0.9 s with its seizure), not the whole line.
    ticks = lines.shape[1] // 160
    assert 0 < opened[kinds.index("bell202")] < 0.4 * ticks
    assert bank.detector(kinds.index("silence")).samples_seen == 0
    assert not bank.detector(kinds.index("bell202")).busy  # the burst is over


def test_bank_float32_frames_and_short_mark_run():
    """float32 frames (as the line analyser feeds them) and a 40-bit mark run without seizure."""
    burst = gen.callerid_burst(WORKED_NTT, standard="ntt", mark_bits=40, level_dbm0=-25.0)
    lines = np.zeros((3, 16000))
    lines[1, 3333 : 3333 + burst.size] = burst
    got, _ = bank_events(lines, 160, np.float32)
    assert [(ch, e.standard, e.number) for ch, e in got] == [(1, "v23_ntt", "0312345678")]
    end = 3333 / FS + gen.burst_message_end(WORKED_NTT, standard="ntt", mark_bits=40)
    assert got[0][1].t == pytest.approx(end, abs=0.001)


class LateGateBank(CallerIdDetectorBank):
    GATE_OPEN_BLOCKS = 5  # opens ~50 ms into the pattern: most of a 75-bit NTT mark run has gone by


def test_late_gate_still_gives_the_events_of_one_detector_per_line():
    """Receivers started late begin on the pre-roll (the row-level identity, idle bits and mark offset
    included, is checked in test_receiver_bank_rows_match_single_receivers)."""
    lines = np.zeros((4, 12000))
    for row, at in enumerate((1000, 1040, 1100, 1157)):
        burst = gen.callerid_burst(WORKED_NTT, standard="ntt", level_dbm0=-25.0)  # 75 mark bits
        lines[row, at : at + burst.size] = burst
    bank = LateGateBank(4)
    got = [item for i in range(0, lines.shape[1], 160) for item in bank.feed(lines[:, i : i + 160])]
    assert got == per_line_events(lines, 160)
    assert [(ch, e.number) for ch, e in got] == [(ch, "0312345678") for ch in range(4)]


def test_bank_line_is_fed_through_the_bank_only():
    bank = CallerIdDetectorBank(2)
    assert isinstance(bank.detector(1), CallerIdDetector)
    with pytest.raises(TypeError, match="feed the bank"):
        bank.detector(1).feed(np.zeros(160))
    assert bank.detector(1).flush() == []


def test_gate_passes_seizure_and_mark_runs_not_speech_or_dtmf():
    rng = np.random.default_rng(21)
    seizure = gen.fsk_waveform([0, 1] * 60, level_dbm0=-30.0)
    v23_seizure = gen.fsk_waveform([0, 1] * 60, tones=gen.V23_TONES, level_dbm0=-30.0)
    marks = gen.fsk_waveform([1] * 60, tones=gen.V23_TONES, level_dbm0=-40.0)
    quiet_marks = gen.fsk_waveform([1] * 60, level_dbm0=-50.0)  # below the receiver's -43 dBm0
    dtmf = gen.dtmf_waveform("1470", level_dbm0=-8.0)
    speech = gen_speech(1.0, rng)
    cases = [seizure, v23_seizure, marks, quiet_marks, dtmf, speech]
    n = max(s.size for s in cases)
    frames = np.zeros((len(cases), n + 160 - n % 160))
    for row, s in enumerate(cases):
        frames[row, : s.size] = s
    gate = FskGate(len(cases))
    started = np.zeros(len(cases), dtype=bool)
    for i in range(0, frames.shape[1], 160):
        start, _ = gate.update(frames[:, i : i + 160])
        started |= start
    assert started.tolist() == [True, True, True, False, False, False]


def test_gate_preroll_holds_the_newest_samples():
    gate = FskGate(2, preroll_ms=10.0)  # 80 samples
    x = np.arange(2 * 300, dtype=np.float64).reshape(2, 300)
    for i in range(0, 300, 70):
        assert gate.preroll(np.array([1])).shape[1] == min(i, 80)
        gate.remember(x[:, i : i + 70])
    assert gate.preroll(np.array([1, 0])).tolist() == [x[1, -80:].tolist(), x[0, -80:].tolist()]


def test_receiver_bank_rows_match_single_receivers():
    """Lines join late (with a pre-roll) and leave: each line's items are those of its own receiver."""
    a = gen.callerid_burst(WORKED_MDMF, level_dbm0=-20.0)
    b = gen.callerid_burst(WORKED_MDMF, standard="etsi", level_dbm0=-20.0)
    n = max(a.size, b.size) + 2000
    lines = np.zeros((3, n))
    lines[0, : a.size] = a
    lines[2, 1500 : 1500 + b.size] = b
    single = []
    for ch in (0, 2):
        rx = FskReceiver(BELL202)
        single += [(ch, item) for i in range(0, n, 160) for item in rx.feed(lines[ch, i : i + 160])]
    bank = FskReceiverBank(BELL202)
    got = bank.add(np.array([0]), lines[[0], :0])
    for i in range(0, n, 160):
        if i == 1600:
            got += bank.add(np.array([2]), lines[[2], :1600])
        got += bank.feed(lines[bank.lines, i : i + 160])
    assert sorted(got, key=lambda t: t[0]) == single and len(single) > 30
    bank.remove(bank.lines == 0)
    assert bank.lines.tolist() == [2]
    with pytest.raises(ValueError, match="expected samples shaped"):
        bank.feed(np.zeros((2, 160)))


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
