"""`hcrm-gateway dsp detect`: JSON lines from audio files, several files, unreadable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from drivers.dsp.pipeline import LineAnalyzer, caller_id_available
from gateway.cli import main
from simulators import signals

RATE = 8000


def contract_signal() -> np.ndarray:
    """The lead's contract check: "1", "5", "#" at 0.2 amplitude per tone, 80 ms on / 80 ms off."""
    t = np.arange(int(0.08 * RATE)) / RATE
    parts = []
    for low, high in ((697, 1209), (770, 1336), (941, 1477)):
        parts += [0.2 * np.cos(2 * np.pi * low * t) + 0.2 * np.cos(2 * np.pi * high * t), np.zeros(t.size)]
    return np.concatenate(parts)


def run(capsys, *argv) -> tuple[int, list[dict], str]:
    code = main(["dsp", "detect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_contract_check_prints_15hash_with_times(tmp_path, capsys):
    wav = tmp_path / "digits.wav"
    soundfile.write(wav, contract_signal(), RATE, subtype="PCM_16")
    code, events, err = run(capsys, wav)
    assert code == 0 and err == ""
    assert all("t" in e for e in events)
    digits = [e for e in events if e["type"] == "dtmf"]
    assert "".join(e["digit"] for e in digits) == "15#"
    assert [e["t"] for e in digits] == pytest.approx([0.0, 0.16, 0.32], abs=0.004)
    assert all(e["duration_ms"] == pytest.approx(80, abs=5) for e in digits)
    assert list(digits[0]) == ["t", "type", "digit", "duration_ms"]


def test_any_rate_and_channels_is_resampled(tmp_path, capsys):
    x = signals.dtmf_sequence("0123456789", 70, 70, -12, lead_ms=100)
    stereo_44k = np.repeat(np.stack([x, x], axis=1), 441, axis=0)[::80]  # 8 kHz → 44.1 kHz sample-and-hold
    flac = tmp_path / "keys.flac"
    soundfile.write(flac, stereo_44k, 44100)
    code, events, _ = run(capsys, flac)
    assert code == 0
    assert "".join(e["digit"] for e in events if e["type"] == "dtmf") == "0123456789"


def test_several_files_tag_every_event_and_tone_plans_apply(tmp_path, capsys):
    busy = tmp_path / "busy.wav"
    soundfile.write(busy, signals.cadence([480, 620], 0.5, 0.5, 4.0, -24), RATE)
    keys = tmp_path / "keys.wav"
    soundfile.write(keys, contract_signal(), RATE)
    code, events, _ = run(capsys, busy, keys, "--tones", "us", "--twist", "att")
    assert code == 0
    assert {e["file"] for e in events} == {str(busy), str(keys)}
    tone = [e for e in events if e["type"] == "tone" and e["file"] == str(busy)]
    assert [e["name"] for e in tone] == ["busy"] and 0 < tone[0]["confidence"] <= 1
    assert "".join(e["digit"] for e in events if e["type"] == "dtmf") == "15#"


def test_unreadable_files_exit_1_with_a_message_and_others_still_run(tmp_path, capsys):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not really audio")
    good = tmp_path / "good.wav"
    soundfile.write(good, contract_signal(), RATE)
    code, events, err = run(capsys, junk, tmp_path / "missing.wav", good)
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert "junk.wav: not a readable audio file" in lines[0]
    assert "missing.wav: no such file" in lines[1]
    assert "".join(e["digit"] for e in events if e["type"] == "dtmf") == "15#"


def test_caller_id_is_reported_when_the_receiver_exists(tmp_path, capsys):
    assert caller_id_available()  # drivers/dsp/callerid.py is in the tree
    from simulators import callerid_gen

    msg = callerid_gen.mdmf_callerid(datetime_mmddhhmm="01151230", number="0312345678", name="TANAKA")
    wav = tmp_path / "cid.wav"
    soundfile.write(wav, callerid_gen.callerid_burst(msg), RATE, subtype="PCM_16")
    code, events, _ = run(capsys, wav, "--cid", "bell202", "--tones", "cn")
    assert code == 0
    assert [e["type"] for e in events] == ["callerid"]  # the FSK burst is not reported as voice
    cid = events[0]
    assert (cid["standard"], cid["number"], cid["name"], cid["checksum_ok"]) == (
        "bell202",
        "0312345678",
        "TANAKA",
        True,
    )


def test_line_analyzer_keys_then_ringback_then_answer():
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            signals.dtmf_sequence("0312", 80, 80, -10),
            signals.cadence([400], 1.0, 2.0, 6.0, -20, am_hz=16),
            signals.speech_like(2.0, rng, level=-18),
        ]
    )
    x = signals.line(x, noise_dbm0=-65, law="ulaw", rng=rng)
    analyzer = LineAnalyzer(tones="jp", cid=None)
    events = []
    for start in range(0, x.size, 160):
        events += analyzer.feed(x[start : start + 160])
    events += analyzer.flush()
    kinds = [(e.type, getattr(e, "digit", None) or getattr(e, "name", None)) for e in events]
    assert kinds == [
        ("dtmf", "0"),
        ("dtmf", "3"),
        ("dtmf", "1"),
        ("dtmf", "2"),
        ("tone", "ringback"),
        ("tone", "voice"),
    ]
