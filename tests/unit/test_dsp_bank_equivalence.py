"""``LineAnalyzerBank`` pinned event for event: a deterministic five-line workload (FSK caller ID in Bell 202,
ETSI V.23 and NTT framing, DTMF caller ID, keyed digits, Japanese busy/ringback/dial tone, speech, music,
noise, silence) fed in 20 ms frames and in odd frame sizes, with channel re-use in the middle.

The golden file ``data/dsp_bank_golden.json`` was written by the analyser before its per-call overhead
was optimised (``python -m tests.unit.test_dsp_bank_equivalence --write``): any change of a digit, a
``t``, a tone name or confidence, or a caller-ID field shows here. The bank must also give each line
the events of a ``LineAnalyzer`` of its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from drivers.dsp.pipeline import LineAnalyzer, LineAnalyzerBank
from simulators import callerid_gen as gen
from simulators import signals

FS = 8000
CHANNELS = 5
SECONDS = 20.0
FRAME_SIZES = (160, 97, 333)
GOLDEN = Path(__file__).parent / "data" / "dsp_bank_golden.json"


# ----------------------------------------------------------------------------------------------- audio
def _fit(parts: list[np.ndarray], n: int) -> np.ndarray:
    x = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])[:n]
    return np.pad(x, (0, n - x.size))


def _s(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * FS)))


def workload() -> np.ndarray:
    """(5, 20 s) float32: different content and offsets on every line."""
    n = int(SECONDS * FS)
    rng = np.random.default_rng(20240611)
    busy = signals.cadence([400], 0.5, 0.5, 3.0, -20.0)
    ringback = signals.cadence([400], 1.0, 2.0, 4.2, -18.0, am_hz=16)
    dial = signals.cadence([400], None, 0.0, 2.5, -15.0)
    ntt = gen.callerid_burst(
        gen.ntt_callerid("0312345678", number_type=(1, 8), name=gen.jis_x0201_name("ﾔﾏﾀﾞ")), standard="ntt"
    )
    bell_mdmf = gen.callerid_burst(
        gen.mdmf_callerid(datetime_mmddhhmm="06111230", number="2125551234", name="SMITH JOHN"),
        standard="bell202",
    )
    bell_sdmf = gen.callerid_burst(gen.sdmf_callerid("12312359", "8005551212"), standard="bell202")
    bell_mwi = gen.callerid_burst(gen.sdmf_message_waiting(True), standard="bell202", level_dbm0=-20.0)
    etsi = gen.callerid_burst(
        gen.mdmf_callerid(datetime_mmddhhmm="01020304", number="+33123456789", name="DUPONT"),
        standard="etsi",
    )
    cid_ac = gen.dtmf_waveform(gen.dtmf_callerid_digits("0612345678", variant="A-C"), level_dbm0=-12.0)
    cid_dc = gen.dtmf_waveform(gen.dtmf_callerid_digits("87654321", variant="D-C"), on_ms=60, off_ms=60)
    keys = gen.dtmf_waveform("0123456789*#ABCD", on_ms=50, off_ms=50, level_dbm0=-18.0, twist_db=2.0)
    lines = [
        _fit(
            [
                _s(0.3),
                ntt,
                _s(0.4),
                ringback,
                _s(0.5),
                gen.dtmf_waveform("159#"),
                _s(0.7),
                busy,
                _s(6.0),
            ],
            n,
        ),
        _fit(
            [
                _s(1.13),
                bell_mdmf,
                _s(0.2),
                busy,
                signals.speech_like(2.0, rng, level=-18.0),
                _s(0.3),
                keys,
                _s(1.0),
                dial,
                _s(0.2),
                ringback,
            ],
            n,
        )
        + gen.white_noise(n, -62.0, rng),
        _fit([_s(0.577), etsi, _s(0.3), cid_ac, _s(0.6), dial, _s(6.5), cid_dc, _s(0.4), busy], n),
        _fit(
            [
                gen.white_noise(int(1.5 * FS), -35.0, rng),
                signals.speech_like(1.5, rng, level=-12.0),
                _s(0.25),
                keys,
                _s(0.5),
                ntt,
                _s(1.0),
                signals.music_like(2.5, rng, level=-16.0),
                _s(0.3),
                gen.dtmf_waveform("*0#", level_dbm0=-25.0, twist_db=-3.0),
                ringback,
            ],
            n,
        )
        + gen.white_noise(n, -55.0, rng),
        _fit(
            [
                _s(2.03),
                bell_sdmf,
                _s(0.5),
                busy,
                _s(0.9),
                bell_mwi,
                _s(0.8),
                signals.music_like(2.0, rng, level=-20.0),
                _s(0.4),
                gen.dtmf_waveform("A5551234#"),
                _s(5.5),
                bell_mdmf,
            ],
            n,
        ),
    ]
    return np.stack(lines).astype(np.float32)


def _frames(n: int, frame: int):
    pos = 0
    while pos < n:
        yield pos, min(frame, n - pos)
        pos += frame


def _key(event) -> str:
    return repr(event)


def bank_events(x: np.ndarray, frame: int, *, reuse: bool = False) -> list:
    """Events of one bank fed ``x`` in frames of ``frame`` samples, flushed at the end. With ``reuse``,
    every ~4 s the quiet channels are recorded and channels 1 and 3 are reset when they are quiet."""
    bank = LineAnalyzerBank(CHANNELS, tones="jp", cid="auto")
    out: list = []
    next_check = 4 * FS
    for pos, size in _frames(x.shape[1], frame):
        out += [[ch, _key(ev)] for ch, ev in bank.feed(x[:, pos : pos + size])]
        if reuse and pos + size >= next_check:
            next_check += 4 * FS
            quiet = bank.quiet_channels()
            out.append(["quiet", pos + size, [bool(q) for q in quiet]])
            rows = [ch for ch in (1, 3) if quiet[ch]]
            if rows:
                bank.reset_channels(rows)
                out.append(["reset", pos + size, rows])
    out += [[ch, _key(ev)] for ch, ev in bank.flush()]
    return out


def single_events(x: np.ndarray, frame: int) -> list:
    """Per line, the events of a ``LineAnalyzer`` of its own, in the order it returns them."""
    out = []
    for ch in range(x.shape[0]):
        line = LineAnalyzer(tones="jp", cid="auto")
        events = []
        for pos, size in _frames(x.shape[1], frame):
            events += [_key(ev) for ev in line.feed(x[ch, pos : pos + size])]
        events += [_key(ev) for ev in line.flush()]
        out.append(events)
    return out


def compute() -> dict:
    x = workload()
    golden: dict = {}
    for frame in FRAME_SIZES:
        golden[f"bank_{frame}"] = bank_events(x, frame)
    golden["reuse_160"] = bank_events(x, 160, reuse=True)
    golden["reuse_333"] = bank_events(x, 333, reuse=True)
    golden["single_160"] = single_events(x, 160)
    golden["single_97"] = single_events(x, 97)
    return golden


# ----------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return workload()


def test_workload_is_rich(golden):
    """The golden run has every kind of event, so the comparison below means something."""
    text = json.dumps(golden["bank_160"])
    for needle in (
        "DtmfDigit(",
        "standard='v23_ntt'",
        "standard='bell202'",
        "standard='v23_etsi'",
        "standard='dtmf'",
        "name='busy'",
        "name='ringback'",
        "name='dialtone'",
        "name='silence'",
        "name='voice'",
        "message_waiting=True",
    ):
        assert needle in text, needle
    assert any(item[0] == "reset" for item in golden["reuse_160"])


@pytest.mark.parametrize("frame", FRAME_SIZES)
def test_bank_matches_golden(audio, golden, frame):
    assert bank_events(audio, frame) == golden[f"bank_{frame}"]


@pytest.mark.parametrize("frame", (160, 333))
def test_channel_reuse_matches_golden(audio, golden, frame):
    assert bank_events(audio, frame, reuse=True) == golden[f"reuse_{frame}"]


@pytest.mark.parametrize("frame", (160, 97))
def test_single_lines_match_golden(audio, golden, frame):
    assert single_events(audio, frame) == golden[f"single_{frame}"]


@pytest.mark.parametrize("frame", (160, 97))
def test_bank_equals_separate_analyzers(golden, frame):
    """Per line the bank reports what a ``LineAnalyzer`` of its own reports (same events, same order by
    ``t``; the analyser sorts by ``t`` and the bank keeps its own order among equal times)."""
    bank = golden[f"bank_{frame}"]
    for ch, events in enumerate(golden[f"single_{frame}"]):
        mine = [ev for c, ev in bank if c == ch]
        assert sorted(mine) == sorted(events)


def test_bank_of_one_equals_line_analyzer(audio):
    x = audio[2:3]
    bank = LineAnalyzerBank(1, tones="jp", cid="auto")
    line = LineAnalyzer(tones="jp", cid="auto")
    for pos, size in _frames(x.shape[1], 160):
        got = sorted((ev for _, ev in bank.feed(x[:, pos : pos + size])), key=lambda e: e.t)
        assert got == line.feed(x[0, pos : pos + size])


if __name__ == "__main__":  # pragma: no cover - writes the golden file from the current code
    if "--write" not in sys.argv:
        raise SystemExit("usage: python -m tests.unit.test_dsp_bank_equivalence --write")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {GOLDEN}")
