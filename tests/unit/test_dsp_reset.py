"""Re-using one channel of a running detector bank for another line: ``reset_channels`` / ``quiet_channels``.

A channel reset at sample K is a fresh channel started at K: it gives a fresh detector's events shifted by
K / 8000 s, exactly when every block phase coincides (K a multiple of lcm(102, 160) = 8160: the 102-sample
DTMF block, the 20 ms frame and progress hop, the 80-sample FSK gate block and V.23 reference period),
else within a DTMF block and a progress hop. The other channels never notice.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drivers.dsp.callerid import CallerIdDetectorBank, DtmfCallerIdParser
from drivers.dsp.dtmf import DtmfBank
from drivers.dsp.events import CallerId, DtmfDigit
from drivers.dsp.fsk import FskGate
from drivers.dsp.goertzel import BlockStream
from drivers.dsp.pipeline import LineAnalyzer, LineAnalyzerBank
from drivers.dsp.progress import ProgressBank
from simulators import callerid_gen as gen
from simulators import signals

FS = 8000
FRAME = 160
ALIGNED = (8160, 16320)  # multiples of lcm(102, 160, 80) = 8160: all block phases coincide
UNALIGNED = (4000, 4160)  # whole frames, but the DTMF blocks fall 22 / 80 samples apart
TOLERANCE_S = (102 + 160) / FS  # one DTMF block plus one progress hop


# ----------------------------------------------------------------------------------------------- audio
def _pad(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.pad(x, (0, -x.size % FRAME))


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or zero-padded to ``n`` samples."""
    x = np.asarray(x, dtype=np.float32)[:n]
    return np.pad(x, (0, n - x.size))


def _busy(seconds: float) -> np.ndarray:
    return signals.cadence([400], 0.5, 0.5, seconds, -20.0)


def _ringback(seconds: float) -> np.ndarray:
    return signals.cadence([400], 1.0, 2.0, seconds, -20.0, am_hz=16)


def _new_line(rng: np.random.Generator) -> np.ndarray:
    """S, the line that joins: leading silence, an NTT caller ID, digits 159#, a DTMF caller ID, a busy
    cadence, a ringback, noise, then silence long enough for a silence event."""
    return _pad(
        np.concatenate(
            [
                np.zeros(2400),
                gen.callerid_burst(gen.ntt_callerid("0312345678"), standard="ntt"),
                np.zeros(1600),
                gen.dtmf_waveform("159#"),
                np.zeros(1600),
                gen.dtmf_waveform(gen.dtmf_callerid_digits("0312", variant="A-C")),
                np.zeros(1600),
                _busy(2.5),
                np.zeros(4000),
                _ringback(3.0),
                gen.white_noise(4000, -60.0, rng),
                np.zeros(5 * FS + 800),
            ]
        )
    )


def _old_line(k: int, rng: np.random.Generator, *, tail: np.ndarray | None = None) -> np.ndarray:
    """Channel 1 before the reset: noise, digits 37, an NTT caller ID if it fits, then silence (quiet at
    ``k``) -- or ``tail`` placed to end exactly at ``k``."""
    parts = [gen.white_noise(800, -50.0, rng), gen.dtmf_waveform("37"), np.zeros(400)]
    burst = gen.callerid_burst(gen.ntt_callerid("0687654321"), standard="ntt")
    if sum(p.size for p in parts) + burst.size + 1200 <= k:
        parts.append(burst)
    x = _fit(np.concatenate(parts), k)
    if tail is not None:
        x[k - tail.size :] = tail
    return x


def _neighbours(k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Channels 0 and 2 over the whole run (``k + n`` samples); both busy when channel 1 is reset:
    channel 0 sends an NTT caller ID while channel 1's arrives, channel 2 is in a digit at ``k``."""
    total = k + n
    ch0 = np.concatenate(
        [
            gen.white_noise(k - 2000, -55.0, rng),
            gen.dtmf_waveform("24"),
            np.zeros(2600),
            gen.callerid_burst(gen.ntt_callerid("0120123456"), standard="ntt"),
            _busy(1.5),
            gen.white_noise(total, -45.0, rng),
        ]
    )
    ch2 = np.concatenate(
        [
            gen.white_noise(k - 300, -55.0, rng),
            gen.dtmf_waveform("7", on_ms=100.0),
            np.zeros(800),
            gen.dtmf_waveform("A555#"),
            _ringback(3.0),
            gen.white_noise(total, -52.0, rng),
        ]
    )
    return _fit(ch0, total), _fit(ch2, total)


# ------------------------------------------------------------------------------------------ running
def _run_bank(audio: np.ndarray, reset_at: int | None, channel: int = 1):
    """Feed a ``LineAnalyzerBank`` 160-sample frames; ``reset_channels([channel])`` before sample
    ``reset_at``. Returns per frame the (channel, event) list, the flush last, and quiet_channels() at the
    reset."""
    bank = LineAnalyzerBank(audio.shape[0], tones="jp")
    frames, quiet = [], None
    for k in range(0, audio.shape[1], FRAME):
        if k == reset_at:
            quiet = bank.quiet_channels()
            bank.reset_channels([channel])
        frames.append(bank.feed(audio[:, k : k + FRAME]))
    frames.append(bank.flush())
    return frames, quiet


def _channel(frames: list, ch: int) -> list[list]:
    """One channel's events per frame, sorted by t (as ``LineAnalyzer`` sorts them)."""
    return [sorted((e for c, e in f if c == ch), key=lambda e: e.t) for f in frames]


def _reference(x: np.ndarray, shift: int) -> list[list]:
    """A fresh LineAnalyzer on ``x`` in 160-sample frames (flush last), ``t`` shifted by ``shift`` samples."""
    analyzer = LineAnalyzer(tones="jp")
    frames = [analyzer.feed(x[k : k + FRAME]) for k in range(0, x.size, FRAME)] + [analyzer.flush()]
    return [[_shifted(e, shift) for e in f] for f in frames]


def _shifted(event, shift: int):
    return dataclasses.replace(event, t=round(float(event.t) + shift / FS, 4))


def _key(event) -> tuple:
    if isinstance(event, DtmfDigit):
        return ("dtmf", event.digit)
    if isinstance(event, CallerId):
        return ("callerid", event.standard, event.number)
    return ("tone", event.name)


def _flat(frames: list[list]) -> list:
    return [e for f in frames for e in f]


# ------------------------------------------------------------------------- the LineAnalyzerBank contract
@pytest.fixture(scope="module")
def new_line() -> np.ndarray:
    return _new_line(np.random.default_rng(11))


def test_the_new_line_exercises_every_detector(new_line):
    kinds = [_key(e) for e in _flat(_reference(new_line, 0))]
    assert ("callerid", "v23_ntt", "0312345678") in kinds
    assert ("callerid", "dtmf", "0312") in kinds
    assert [k[1] for k in kinds if k[0] == "dtmf"][:4] == list("159#")
    assert [k[1] for k in kinds if k[0] == "tone"] == ["busy", "ringback", "silence"]


def _contract_run(k: int, new_line: np.ndarray, *, tail: np.ndarray | None = None, reset: bool = True):
    rng = np.random.default_rng(k)
    ch0, ch2 = _neighbours(k, new_line.size, rng)
    ch1 = np.concatenate([_old_line(k, rng, tail=tail), new_line])
    audio = np.stack([ch0, ch1, ch2])
    got, quiet = _run_bank(audio, k if reset else None)
    alone, _ = _run_bank(audio, None)
    return got, quiet, alone


@pytest.mark.parametrize("k", ALIGNED)
def test_reset_channel_gives_a_fresh_analyzers_events_exactly_when_phases_align(k, new_line):
    got, quiet, alone = _contract_run(k, new_line)
    assert quiet.tolist() == [True, True, False]  # channel 2 is in a digit: it must carry on regardless
    after = _channel(got, 1)[k // FRAME :]
    assert after == _reference(new_line, k)
    assert _flat(_channel(got, 1)[: k // FRAME]) == _flat(_channel(alone, 1)[: k // FRAME])  # before: as is
    for ch in (0, 2):
        assert _channel(got, ch) == _channel(alone, ch), f"channel {ch}"
    assert any(isinstance(e, CallerId) for e in _flat(_channel(got, 0)[k // FRAME :]))  # overlapping burst


@pytest.mark.parametrize("k", UNALIGNED)
def test_reset_channel_off_the_block_phase_gives_the_same_events_within_a_block_and_a_hop(k, new_line):
    got, quiet, alone = _contract_run(k, new_line)
    assert quiet[1]
    after = _flat(_channel(got, 1)[k // FRAME :])
    ref = _flat(_reference(new_line, k))
    assert [_key(e) for e in after] == [_key(e) for e in ref]
    for e, r in zip(after, ref, strict=True):
        assert abs(float(e.t) - float(r.t)) <= TOLERANCE_S, (e, r)
    assert after != ref  # the DTMF block phase really differs here
    for ch in (0, 2):
        assert _channel(got, ch) == _channel(alone, ch), f"channel {ch}"


def test_reset_drops_the_old_lines_digit_and_without_it_the_new_line_would_inherit_it(new_line):
    k = ALIGNED[0]
    mid_digit = gen.dtmf_waveform("8", on_ms=200.0, off_ms=0.0)[:400]  # 50 ms into a digit at the reset
    got, quiet, _ = _contract_run(k, new_line, tail=mid_digit)
    assert not quiet[1]  # a digit is sounding: the caller would wait, but DTMF state can be dropped
    assert _channel(got, 1)[k // FRAME :] == _reference(new_line, k)
    kept, _, _ = _contract_run(k, new_line, tail=mid_digit, reset=False)
    inherited = _flat(_channel(kept, 1)[k // FRAME :])
    assert inherited != _flat(_reference(new_line, k))
    first = inherited[0]  # the old line's 8, begun 50 ms before the reset, reported on the new line
    assert first.digit == "8" and abs(first.t - (k - 400) / FS) < 0.002 and abs(first.duration_ms - 50) <= 2


def test_quiet_channels_during_a_digit_an_fsk_burst_and_a_tone():
    burst = gen.callerid_burst(gen.ntt_callerid("0312345678"), standard="ntt")
    starts = [gen.dtmf_waveform("5", on_ms=300.0), burst, signals.tone([400], 0.6, -20.0), np.zeros(0)]
    audio = np.stack([_fit(np.concatenate([np.zeros(800), x]), 2 * FS) for x in starts])
    bank = LineAnalyzerBank(4, tones="jp")
    quiet, fsk_open = [], []
    digits: list[DtmfDigit] = []
    for k in range(0, audio.shape[1], FRAME):
        quiet.append(bank.quiet_channels())
        fsk_open.append(bank.callerid._open.copy())
        if k == 2400:  # mid-digit, mid-burst (receivers open), mid-tone
            assert quiet[-1].tolist() == [False, False, False, True]
            with pytest.raises(ValueError, match=r"channel\(s\) 1 "):
                bank.reset_channels([1])
            with pytest.raises(ValueError, match="FSK receivers open"):
                bank.reset_channels([0, 1])  # refused as a whole: channel 0's digit is not dropped
        digits += [e for c, e in bank.feed(audio[:, k : k + FRAME]) if isinstance(e, DtmfDigit)]
    quiet, fsk_open = np.array(quiet), np.array(fsk_open)
    assert [(d.digit, d.t) for d in digits] == [("5", pytest.approx(0.1, abs=0.002))]
    assert abs(digits[0].duration_ms - 300) <= 2  # whole: the refused reset left channel 0 alone
    assert not quiet[7:20, 0].any()  # samples 1120..3200: the digit sounds from 800 to 3200
    assert not quiet[10:35, 2].any()  # the tone sounds from 800 to 5600
    assert quiet[:, 3].all()  # silence throughout
    assert not quiet[fsk_open[:, 1], 1].any()  # never quiet while its receivers run
    assert fsk_open[:, 1].sum() >= 10
    assert quiet[:5].all() and quiet[-1].all()  # silence before, everything over at the end
    bank.reset_channels(np.flatnonzero(quiet[-1]))


def test_out_of_range_channels_are_refused():
    bank = LineAnalyzerBank(3, tones="jp")
    for bad in ([3], [-1], [0, 7]):
        with pytest.raises(ValueError, match="out of range"):
            bank.reset_channels(bad)
    with pytest.raises(ValueError, match="mask"):
        bank.reset_channels(np.array([True, False]))
    bank.reset_channels(np.array([False, True, False]))  # a bool mask of the bank's size is fine
    bank.reset_channels([])
    for cls, args in ((DtmfBank, (2,)), (ProgressBank, (2,)), (CallerIdDetectorBank, (2,))):
        with pytest.raises(ValueError, match="out of range"):
            cls(*args).reset_channels([2])
    with pytest.raises(ValueError, match="out of range"):
        BlockStream(2, 102).reset_rows([2])


# --------------------------------------------------------------------------------- the parts alone
def test_block_stream_reset_rows_zeroes_only_their_pending_samples():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 250)).astype(np.float32)
    y = rng.standard_normal((3, 200)).astype(np.float32)
    a, b = BlockStream(3, 102), BlockStream(3, 102)
    a.push(x)
    b.push(x)
    assert b.position == 250
    b.reset_rows([1])
    blocks_a, start_a = a.push(y)
    blocks_b, start_b = b.push(y)
    assert start_a == start_b == 204
    assert np.array_equal(blocks_b[[0, 2]], blocks_a[[0, 2]])
    assert not blocks_b[1, 0, :46].any()  # the 46 samples held back from before the reset
    assert np.array_equal(blocks_b[1, 0, 46:], y[1, :56])
    assert np.array_equal(blocks_b[1, 1:], blocks_a[1, 1:])


def _of(frames: list[list], ch: int) -> list:
    """The events of channel ``ch`` in frames of (channel, event)."""
    return [e for f in frames for c, e in f if c == ch]


def _feed_frames(bank, audio: np.ndarray, reset_at: int | None = None, channel: int = 1) -> list[list]:
    out = []
    for k in range(0, audio.shape[1], FRAME):
        if k == reset_at:
            bank.reset_channels([channel])
        out.append(bank.feed(audio[:, k : k + FRAME]))
    return out


def test_dtmf_bank_reset_mid_digit_starts_the_channel_afresh():
    k = 8160
    rng = np.random.default_rng(5)
    s = _pad(np.concatenate([np.zeros(400), gen.dtmf_waveform("159#D"), gen.white_noise(1600, -50, rng)]))
    old = _fit(np.concatenate([gen.white_noise(k - 500, -50.0, rng), gen.dtmf_waveform("9")]), k)
    others = [_fit(gen.dtmf_waveform("12345678", on_ms=60.0, off_ms=53.0), k + s.size) for _ in range(2)]
    audio = np.stack([others[0], np.concatenate([old, s]), others[1][::-1]])

    bank = DtmfBank(3)
    _feed_frames(bank, audio[:, :k])
    assert bank.quiet_channels().tolist() == [True, False, True]  # channel 1: 60 ms into its 9
    bank.reset_channels([1])
    assert bank.quiet_channels()[1]
    got = _feed_frames(bank, audio[:, k:]) + [bank.flush()]
    fresh = DtmfBank(1)
    ref = _feed_frames(fresh, s[None, :]) + [fresh.flush()]
    assert [[_shifted(e, 0) for c, e in f if c == 1] for f in got] == [
        [_shifted(e, k) for _, e in f] for f in ref
    ]
    assert "".join(e.digit for _, e in _flat(ref)) == "159#D"

    alone = DtmfBank(3)
    kept = _feed_frames(alone, audio) + [alone.flush()]
    assert _of(kept[k // FRAME :], 1)[0].digit == "9"  # without the reset: the old line's digit
    for ch in (0, 2):
        assert _of(got, ch) == _of(kept[k // FRAME :], ch)


def test_progress_bank_reset_forgets_a_tone_and_a_reported_cadence():
    k = 4 * 8160
    # Channel 1: a busy cadence, reported, whose third on ends at the reset. The new line sends busy
    # 0.5 s after the reset: in step with the old cadence, which would carry on (no new report) if the
    # channel kept its tone state or its on/off history.
    old = _fit(np.concatenate([np.zeros(k - int(2.5 * FS)), _busy(2.5)]), k)
    s = _pad(np.concatenate([np.zeros(FS // 2), _busy(2.5), np.zeros(4000)]))
    other = _fit(_ringback(6.0), k + s.size)
    audio = np.stack([other, np.concatenate([old, s]), other[::-1].copy()])

    bank = ProgressBank(3, "jp")
    before = _feed_frames(bank, audio[:, :k])
    assert [e.name for f in before for c, e in f if c == 1] == ["busy"]
    assert not bank.quiet_channels()[1]  # its tone is sounding: reset anyway, the tone is dropped
    bank.reset_channels(np.array([False, True, False]))
    got = _feed_frames(bank, audio[:, k:])
    fresh = ProgressBank(1, "jp")
    ref = _feed_frames(fresh, s[None, :])
    assert [[e for c, e in f if c == 1] for f in got] == [
        [dataclasses.replace(e, t=round(e.t + k / FS, 3)) for _, e in f] for f in ref
    ]
    assert [e.name for f in ref for _, e in f] == ["busy"]

    alone = ProgressBank(3, "jp")
    kept = _feed_frames(alone, audio)
    assert _of(kept[k // FRAME :], 1) == []  # without the reset: the same cadence carried on, not reported
    for ch in (0, 2):
        assert _of(got, ch) == _of(kept[k // FRAME :], ch)


def test_progress_quiet_channels_follow_tone_and_pending_confirmation():
    audio = np.stack([_fit(_busy(3.0), 3 * FS), np.zeros(3 * FS, dtype=np.float32)])
    bank = ProgressBank(2, "jp")
    quiet = []
    for k in range(0, audio.shape[1], FRAME):
        bank.feed(audio[:, k : k + FRAME])
        on, due = bool(bank._state[0] >= 0), bool(np.isfinite(bank._due[0]))
        quiet.append((bank.quiet_channels().tolist(), on, due))
    assert all(q[1] for q, _, _ in quiet)
    assert not any(q[0] for q, on, _ in quiet if on)  # never quiet while the tone sounds
    assert not any(q[0] for q, _, due in quiet if due)  # nor while a busy confirmation is pending
    assert any(due and not on for _, on, due in quiet)
    assert any(q[0] for q, _, _ in quiet)  # quiet in the off time once nothing is pending


def test_callerid_bank_reset_and_quiet():
    k = 8000  # a multiple of 80 and 160: FSK gate blocks and V.23 reference periods in phase
    burst = gen.callerid_burst(gen.ntt_callerid("0312345678"), standard="ntt")
    s = _pad(np.concatenate([np.zeros(1600), burst]))
    old = _fit(np.concatenate([np.zeros(400), gen.callerid_burst(gen.mdmf_callerid(number="5551234"))]), k)
    other = _fit(np.concatenate([np.zeros(k + 1000), burst]), k + s.size)
    audio = np.stack([other, np.concatenate([np.zeros(k, np.float32), s]), np.concatenate([old, s])])

    bank = CallerIdDetectorBank(3)
    out = []
    for j in range(0, k, FRAME):
        out += bank.feed(audio[:, j : j + FRAME])
        if bank._open[2]:
            assert not bank.quiet_channels()[2]
            with pytest.raises(ValueError, match=r"channel\(s\) 2 "):
                bank.reset_channels([2])
    assert [(c, e.number) for c, e in out] == [(2, "5551234")]
    assert bank.quiet_channels().tolist() == [True, True, True]
    bank.detector(2).feed_digit(DtmfDigit(t=0.45, digit="A", duration_ms=70))
    assert not bank.quiet_channels()[2]  # a DTMF caller ID may be starting
    stats = bank.detector(2).stats
    bank.reset_channels([1, 2])
    assert bank.quiet_channels().all()
    assert bank.detector(2).stats["emitted"] == 0 and stats["emitted"] == 1
    assert bank.detector(2).samples_seen == k

    got = _feed_frames(bank, audio[:, k:], reset_at=None)
    fresh = CallerIdDetectorBank(1)
    ref = _feed_frames(fresh, s[None, :])
    expect = [[_shifted(e, k) for _, e in f] for f in ref]
    for ch in (1, 2):
        assert [[_shifted(e, 0) for c, e in f if c == ch] for f in got] == expect
    assert [e.number for f in ref for _, e in f] == ["0312345678"]
    assert [e.number for f in got for c, e in f if c == 0] == ["0312345678"]


def test_callerid_parser_idle_and_reset_forgets_a_partial_dtmf_caller_id():
    bank = CallerIdDetectorBank(2)
    for ch in (0, 1):
        for i, d in enumerate("A12"):
            assert bank.feed_digit(ch, DtmfDigit(t=0.1 + 0.14 * i, digit=d, duration_ms=70)) is None
    assert bank.quiet_channels().tolist() == [False, False]
    bank.reset_channels([1])
    assert bank.quiet_channels().tolist() == [False, True]
    results = {}
    for ch in (0, 1):
        for i, d in enumerate("34C"):
            results[ch] = bank.feed_digit(ch, DtmfDigit(t=0.52 + 0.14 * i, digit=d, duration_ms=70))
    assert results[0] is not None and results[0].number == "1234"
    assert results[1] is None  # "34C" alone is no caller ID

    bank.feed_digit(0, DtmfDigit(t=2.0, digit="A", duration_ms=70))
    bank.feed(np.zeros((2, int(2.5 * FS)), np.float32))
    assert not bank.quiet_channels()[0]  # 0.43 s after the A
    bank.feed(np.zeros((2, FS), np.float32))
    assert bank.quiet_channels()[0]  # the partial message is older than the inter-digit timeout

    parser = DtmfCallerIdParser()
    assert parser.idle and parser.idle_at(0.0)
    parser.feed_digit("D", 1.0)
    assert not parser.idle and not parser.idle_at(1.9)
    assert parser.idle_at(2.1) and not parser.idle


def test_fsk_gate_reset_rows():
    gate = FskGate(3)
    x = np.tile(gen.fsk_waveform([1] * 60, tones=gen.V23_TONES).astype(np.float32)[:400], (3, 1))
    start, _ = gate.update(x[:, :250])
    gate.remember(x[:, :250])
    assert gate.passing.all()
    before = gate.preroll(np.arange(3))
    gate.reset_rows([1])
    assert gate.passing.tolist() == [True, False, True]
    after = gate.preroll(np.arange(3))
    assert not after[1].any()
    assert np.array_equal(after[[0, 2]], before[[0, 2]])
    y = x[:, 250:].copy()
    y[1] = 0.0
    _, quiet = gate.update(y)
    assert quiet.tolist() == [False, True, False]  # row 1 has not passed since the reset
