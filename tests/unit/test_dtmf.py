"""DTMF receiver against the Q.24 / Mitel CM7291 acceptance list, as spandsp tests/dtmf_rx_tests.c walks it.

Every stimulus comes from simulators/signals.py (written apart from the detector) and goes through a G.711
µ-law and A-law round trip. Levels are per tone, in dBm0 (full-scale sine = +3.14 dBm0).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from drivers.dsp.audio import load_audio
from drivers.dsp.dtmf import TWIST_PROFILES, DtmfBank, DtmfDetector, DtmfParams
from simulators import signals

ALL = "123A456B789C*0#D"
LAWS = ("ulaw", "alaw")


def detect(x: np.ndarray, **kw) -> str:
    det = DtmfDetector(**kw)
    events = det.feed(x) + det.flush()
    return "".join(e.digit for e in events)


def events(x: np.ndarray, **kw):
    det = DtmfDetector(**kw)
    return det.feed(x) + det.flush()


# --- line model sanity (the simulator the other tests lean on) -----------------------------------------
def test_g711_codes_and_quantisation_noise():
    # G.711: µ-law 0 → 0xFF, full scale ± → 0x80/0x00; A-law 0 → 0xD5, ± full scale → 0xAA/0x2A.
    assert signals.mulaw_encode(np.array([0.0, 1.0, -1.0])).tolist() == [0xFF, 0x80, 0x00]
    assert signals.alaw_encode(np.array([0.0, 1.0, -1.0])).tolist() == [0xD5, 0xAA, 0x2A]
    x = signals.tone([1020], 1.0, -10.0)
    for law in LAWS:
        y = signals.g711_roundtrip(x, law)
        sqnr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
        assert 35.0 < sqnr < 42.0, (law, sqnr)  # G.711 gives ≈ 38 dB at −10 dBm0
    assert signals.level_dbm0(signals.tone([1000], 1.0, -13.0)) == pytest.approx(-13.0, abs=0.01)


# --- test 2 of the tape: decode -------------------------------------------------------------------------
@pytest.mark.parametrize("law", LAWS)
def test_sixteen_digits_50ms_on_50ms_off_ten_times(law):
    rng = np.random.default_rng(2)
    x = signals.line(signals.dtmf_sequence(ALL * 10, 50, 50, -10, lead_ms=13, rng=rng), law=law)
    assert detect(x) == ALL * 10


def test_result_does_not_depend_on_frame_size():
    rng = np.random.default_rng(3)
    x = signals.line(signals.dtmf_sequence(ALL, 50, 50, -10, rng=rng), law="ulaw")
    whole = events(x)
    det = DtmfDetector()
    got = []
    pos = 0
    while pos < x.size:
        step = int(rng.integers(1, 400))
        got += det.feed(x[pos : pos + step])
        pos += step
    got += det.flush()
    assert got == whole
    assert "".join(e.digit for e in got) == ALL


def test_onset_and_duration_are_reported():
    x = np.concatenate(
        [
            signals.silence(0.2),
            signals.dtmf_tone("7", 0.080, -10),
            signals.silence(0.1),
            signals.dtmf_tone("#", 0.045, -20),
            signals.silence(0.1),
        ]
    )
    ev = events(signals.line(x, law="alaw"))
    assert [e.digit for e in ev] == ["7", "#"]
    assert ev[0].t == pytest.approx(0.200, abs=0.004)
    assert ev[0].duration_ms == pytest.approx(80, abs=5)
    assert ev[1].t == pytest.approx(0.380, abs=0.004)
    assert ev[1].duration_ms == pytest.approx(45, abs=5)
    assert ev[0].to_json() == {"t": ev[0].t, "digit": "7", "duration_ms": ev[0].duration_ms, "type": "dtmf"}


# --- test 3: bandwidth (Q.24: operate within ±1.5 %, not beyond ±3.5 %) ------------------------------------
@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("digit", "159D")
def test_frequency_window(digit, law):
    rng = np.random.default_rng(4)
    for group in ("low_offset", "high_offset"):
        for offset, expected in ((0.015, 10), (-0.015, 10), (0.035, 0), (-0.035, 0), (0.06, 0), (-0.06, 0)):
            x = signals.dtmf_sequence(digit * 10, 50, 50, -10, rng=rng, **{group: offset})
            got = detect(signals.line(x, law=law))
            assert got.count(digit) == expected and len(got) == expected, (group, offset, got)


# --- test 4: twist per administration ---------------------------------------------------------------------
@pytest.mark.parametrize("profile", sorted(TWIST_PROFILES))
def test_twist_limits_per_profile(profile):
    normal, reverse = TWIST_PROFILES[profile]
    rng = np.random.default_rng(5)

    def count(twist_db):
        x = signals.dtmf_sequence("5" * 10, 50, 50, -10, twist_db=twist_db, rng=rng)
        return detect(signals.line(x, law="ulaw"), twist=profile).count("5")

    assert count(normal - 0.7) == 10  # high group louder, inside the profile
    assert count(-(reverse - 0.7)) == 10  # low group louder, inside
    assert count(normal + 1.0) == 0
    assert count(-(reverse + 1.0)) == 0


def test_unknown_twist_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown twist profile 'xx'"):
        DtmfParams.for_site("xx")
    with pytest.raises(ValueError, match="8000 Hz"):
        DtmfDetector(sample_rate=16000)


# --- test 5: dynamic range ----------------------------------------------------------------------------
@pytest.mark.parametrize("law", LAWS)
def test_dynamic_range_at_least_35_db(law):
    rng = np.random.default_rng(6)
    detected = []
    for level in range(-3, -51, -1):
        x = signals.dtmf_sequence("1" * 5, 50, 50, level, rng=rng)
        if detect(signals.line(x, law=law)) == "11111":
            detected.append(level)
    assert detected == list(range(-3, min(detected) - 1, -1))  # contiguous from −3 dBm0 down
    assert max(detected) - min(detected) >= 35
    assert min(detected) <= -42 and min(detected) >= -44  # Q.24 minimum ≈ −42 dBm0; below −44 is rejected


# --- guard times (ETSI ES 201 235-3): ≥ 40 ms detected, < 20 ms rejected, 40 ms pause splits ----------------
def test_tone_and_pause_durations():
    rng = np.random.default_rng(7)
    for lead in range(0, 102, 7):  # every alignment against the 102-sample blocks
        on40 = signals.dtmf_sequence("9", 40, 60, -15, lead_ms=lead / 8, rng=rng)
        assert detect(signals.line(on40, law="ulaw")) == "9", lead
        on19 = signals.dtmf_sequence("9", 19, 60, -15, lead_ms=lead / 8, rng=rng)
        assert detect(signals.line(on19, law="ulaw")) == "", lead
        repeat = signals.dtmf_sequence("44", 60, 40, -15, lead_ms=lead / 8, rng=rng)
        assert detect(signals.line(repeat, law="alaw")) == "44", lead


def test_short_dropout_does_not_split_a_digit():
    x = np.concatenate(
        [
            signals.dtmf_tone("6", 0.060, -10),
            signals.silence(0.004),
            signals.dtmf_tone("6", 0.060, -10),
            signals.silence(0.1),
        ]
    )
    assert detect(x) == "6"


# --- test 7: noise ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("law", LAWS)
def test_1000_digits_at_26_db_snr_then_find_first_miss(law):
    rng = np.random.default_rng(8)
    clean = signals.dtmf_sequence("1" * 1000, 50, 50, -4, rng=rng)
    signal_dbm0 = -4 + 3.01  # both tones: SNR is digit power over noise power in 0–4 kHz
    x = signals.add_noise_snr(clean, 26, rng, signal_dbm0=signal_dbm0)
    assert detect(signals.line(x, law=law)) == "1" * 1000
    first_miss = None
    for snr in range(20, 0, -2):
        x = signals.add_noise_snr(clean[: 200 * 800], snr, rng, signal_dbm0=signal_dbm0)
        if detect(signals.line(x, law=law)) != "1" * 200:
            first_miss = snr
            break
    print(f"\nDTMF {law}: 1000/1000 at 26 dB SNR; first miss (200 digits) at {first_miss} dB SNR")
    assert first_miss is not None and first_miss <= 12


# --- dial tone 10 dB above the digits (spandsp dial-tone case with its filter) -----------------------------
@pytest.mark.parametrize(
    ("tones", "freqs"), [("us", (350, 440)), ("jp", (400,)), ("cn", (450,)), ("etsi", (425,))]
)
def test_digits_under_a_dial_tone_10_db_louder(tones, freqs):
    rng = np.random.default_rng(9)
    x = signals.dtmf_sequence(ALL, 50, 50, -15, rng=rng)
    x = x + signals.tone(freqs, x.size / 8000, -5)
    assert detect(signals.line(x, law="ulaw"), tones=tones) == ALL


# --- guards against speech and music -----------------------------------------------------------------------
def test_second_harmonic_guard_rejects_a_harmonic_rich_pair():
    # A musical F5 + E6 chord sits within 1.3 % of 697 + 1336 Hz (digit "2"); with harmonics it is not DTMF.
    t = np.arange(800) / 8000
    chord = sum(a * np.sin(2 * np.pi * h * f * t) for f in (698.5, 1318.5) for h, a in ((1, 0.2), (2, 0.12)))
    x = np.concatenate([chord, np.zeros(400)] * 5)
    assert detect(x) == ""
    pure = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (698.5, 1318.5))
    assert detect(np.concatenate([pure, np.zeros(400)] * 5)) == "22222"


def _espeak_corpus(tmp_path) -> list[np.ndarray]:
    """Hospital-IVR style prompts in Japanese, Mandarin, Cantonese and English from espeak-ng."""
    texts = {
        "ja": "本日はご来院いただきありがとうございます。"
        "診察の予約は一番、検査結果のお問い合わせは二番を押してください。"
        "そのままお待ちいただくと担当者におつなぎします。",
        "cmn": "感谢您致电医院客户服务中心。预约挂号请按一，查询检查结果请按二，"
        "其他问题请稍候，我们将为您转接人工服务。",
        "yue": "多謝你致電醫院病人關係中心，預約請按一字，查詢報告請按二字。",
        "en-us": "Thank you for calling the patient relations centre. For appointments press one. "
        "Please hold while we connect you to the next available representative.",
    }
    out = []
    for voice, text in texts.items():
        for speed, pitch in ((140, 30), (175, 70)):
            wav = tmp_path / f"{voice}_{speed}_{pitch}.wav"
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                check=True,
                capture_output=True,
                timeout=60,
            )
            x = load_audio(wav)
            out.append(0.9 * x / np.max(np.abs(x)))
    return out


@pytest.mark.slow
def test_talk_off_speech_and_music(tmp_path):
    rng = np.random.default_rng(10)
    corpus: list[tuple[str, np.ndarray]] = []
    if shutil.which("espeak-ng"):
        corpus += [("espeak", x) for x in _espeak_corpus(tmp_path)]
    # Synthetic voices over the F0 range of men, women and children, and hold-music stand-ins.
    corpus += [("speech", signals.speech_like(20, rng, level=-12, f0=f0)) for f0 in (95, 130, 180, 240, 300)]
    corpus += [("music", signals.music_like(20, rng, level=-12)) for _ in range(6)]
    seconds = 0.0
    false = []
    for kind, x in corpus:
        for gain, law in ((0, "ulaw"), (-12, "alaw")):
            y = signals.line(x, gain_db=gain, law=law, rng=rng)
            seconds += y.size / 8000
            false += [(kind, e) for e in events(y, twist="att")]
    per_hour = len(false) * 3600 / seconds
    print(f"\nDTMF talk-off: {len(false)} false digits in {seconds / 60:.1f} min = {per_hour:.1f}/hour")
    assert false == []


# --- the bank is the detector, per channel -----------------------------------------------------------------
def test_bank_channels_are_independent():
    rng = np.random.default_rng(11)
    lines = ["0312345678#", "*9#", "", "ABCD"]
    n = 16000
    x = np.zeros((len(lines), n))
    for i, digits in enumerate(lines):
        sig = signals.dtmf_sequence(digits, 60, 60, -12, lead_ms=17 * i, rng=rng)
        x[i, : sig.size] = sig
    bank = DtmfBank(len(lines))
    got: dict[int, str] = {i: "" for i in range(len(lines))}
    for start in range(0, n, 160):
        for ch, ev in bank.feed(x[:, start : start + 160]):
            got[ch] += ev.digit
    assert [got[i] for i in range(len(lines))] == lines
    for i, digits in enumerate(lines):
        assert detect(x[i]) == digits
