"""Call-progress tones per country plan (telephony.md §6), silence and voice activity."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.dsp.progress import PLANS, ProgressBank, ProgressDetector, ProgressParams
from simulators import signals

# What each exchange sends, built from the plan tables independently of drivers/dsp/progress.py.
SENT = {
    "jp": {
        "dialtone": dict(freqs=[400], on_s=None, off_s=0),
        "busy": dict(freqs=[400], on_s=0.5, off_s=0.5),
        "ringback": dict(freqs=[400], on_s=1.0, off_s=2.0, am_hz=16),
    },
    "cn": {
        "dialtone": dict(freqs=[450], on_s=None, off_s=0),
        "busy": dict(freqs=[450], on_s=0.35, off_s=0.35),
        "congestion": dict(freqs=[450], on_s=0.7, off_s=0.7),
        "ringback": dict(freqs=[450], on_s=1.0, off_s=4.0),
    },
    "us": {
        "dialtone": dict(freqs=[350, 440], on_s=None, off_s=0),
        "ringback": dict(freqs=[440, 480], on_s=2.0, off_s=4.0),
        "busy": dict(freqs=[480, 620], on_s=0.5, off_s=0.5),
        "congestion": dict(freqs=[480, 620], on_s=0.25, off_s=0.25),
    },
    "etsi": {
        "dialtone": dict(freqs=[425], on_s=None, off_s=0),
        "busy": dict(freqs=[425], on_s=0.5, off_s=0.5),
        "congestion": dict(freqs=[425], on_s=0.25, off_s=0.25),
        "ringback": dict(freqs=[425], on_s=1.0, off_s=4.0),
    },
}
CASES = [(plan, name) for plan, tones in SENT.items() for name in tones]
PROGRESS_NAMES = {"busy", "ringback", "congestion", "dialtone"}


def sent(plan: str, name: str, seconds: float, *, level=-20.0, snr_db=20.0, law="ulaw", shift_hz=0.0, seed=0):
    spec = dict(SENT[plan][name])
    x = signals.cadence(spec.pop("freqs"), spec.pop("on_s"), spec.pop("off_s"), seconds, level, **spec)
    return signals.line(x, snr_db=snr_db, law=law, shift_hz=shift_hz, rng=np.random.default_rng(seed))


def tones(events) -> list:
    return [e for e in events if e.name in PROGRESS_NAMES]


@pytest.mark.parametrize(("plan", "name"), CASES)
def test_each_tone_of_each_plan_is_detected_in_noise(plan, name):
    ev = tones(ProgressDetector(plan).feed(sent(plan, name, 10.0)))
    assert [e.name for e in ev] == [name]
    assert 0.6 <= ev[0].confidence <= 1.0
    # Reported once a cadence is confirmed: busy/congestion after two cycles, ringback after one.
    spec = SENT[plan][name]
    period = (spec["on_s"] or 0) + spec["off_s"]
    assert ev[0].t <= (2 * period if name in ("busy", "congestion") else max(period, 1.5)) + 0.3


@pytest.mark.parametrize(("plan", "name"), CASES)
def test_tones_are_not_confused_across_plans(plan, name):
    x = sent(plan, name, 10.0, seed=1)
    for other in PLANS:
        if other != plan:
            assert tones(ProgressDetector(other).feed(x)) == [], other


@pytest.mark.parametrize(("plan", "name"), [("jp", "busy"), ("cn", "congestion"), ("us", "ringback")])
def test_tolerates_line_frequency_offset_and_alaw(plan, name):
    for shift in (-4.0, 4.0):  # 1 % of 400 Hz
        ev = tones(ProgressDetector(plan).feed(sent(plan, name, 10.0, shift_hz=shift, law="alaw", level=-30)))
        assert [e.name for e in ev] == [name], shift


def test_cadence_outside_tolerance_is_not_reported():
    # 400 Hz at 0.8/0.8 s: neither Japanese busy (0.5/0.5) nor ringback (1/2) nor dial tone.
    x = signals.cadence([400], 0.8, 0.8, 10.0, -20)
    assert tones(ProgressDetector("jp").feed(x)) == []


def test_busy_is_reported_once_per_episode_and_again_after_a_break():
    busy = sent("jp", "busy", 4.0)
    x = np.concatenate([busy, signals.silence(3.0), busy])
    assert [e.name for e in tones(ProgressDetector("jp").feed(x))] == ["busy", "busy"]


def test_silence_and_voice_activity():
    rng = np.random.default_rng(2)
    speech = signals.speech_like(3.0, rng, level=-20)
    x = signals.line(
        np.concatenate([signals.silence(1.0), speech, signals.silence(6.0)]),
        noise_dbm0=-65,
        law="alaw",
        rng=rng,
    )
    ev = ProgressDetector("jp").feed(x)
    names = [e.name for e in ev]
    assert names == ["voice", "silence"]
    voice, quiet = ev
    assert 1.0 < voice.t < 1.8 and 0.5 <= voice.confidence <= 1.0
    assert quiet.t == pytest.approx(4.0 + ProgressParams().silence_s, abs=0.3)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_voice_and_music_are_not_taken_for_tones(plan):
    rng = np.random.default_rng(3)
    for f0 in (100, 150, 220):
        x = signals.line(signals.speech_like(8.0, rng, level=-15, f0=f0), law="ulaw", rng=rng)
        ev = ProgressDetector(plan).feed(x)
        assert tones(ev) == []
        assert "voice" in [e.name for e in ev]
    x = signals.line(signals.music_like(10.0, rng, level=-15), law="ulaw", rng=rng)
    assert tones(ProgressDetector(plan).feed(x)) == []


def test_tone_is_not_voice_and_noise_is_not_voice():
    ev = ProgressDetector("jp").feed(sent("cn", "busy", 5.0))  # a foreign tone: neither a JP tone nor voice
    assert ev == []
    noise = signals.white_noise(8000 * 4, -35, np.random.default_rng(4))
    assert [e.name for e in ProgressDetector("jp").feed(noise)] == []


def test_bank_reports_each_channel_and_any_frame_size():
    lines = [
        sent("jp", "busy", 4.0),
        sent("jp", "dialtone", 4.0),
        np.zeros(32000),
        sent("jp", "ringback", 4.0),
    ]
    x = np.stack(lines)
    bank = ProgressBank(4, "jp")
    got: dict[int, list[str]] = {i: [] for i in range(4)}
    pos = 0
    rng = np.random.default_rng(5)
    while pos < x.shape[1]:
        step = int(rng.integers(1, 700))
        for ch, ev in bank.feed(x[:, pos : pos + step]):
            got[ch].append(ev.name)
        pos += step
    assert got == {0: ["busy"], 1: ["dialtone"], 2: [], 3: ["ringback"]}


def test_unknown_plan_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tone plan 'xx'"):
        ProgressDetector("xx")
