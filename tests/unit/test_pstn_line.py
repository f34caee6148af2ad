"""The simulated exchange side of an analogue line (simulators/pstn_line.py), checked with the project's
detectors and with plain spectrum/envelope measurements."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from drivers.dsp.callerid import CallerIdDetector
from drivers.dsp.dtmf import DtmfDetector
from simulators.pstn_line import FRAME_S, Caller, HangUp, Keys, Pause, PstnLine, Say
from simulators.signals import dtmf_sequence


def run(line: PstnLine, seconds: float, *, upstream=None, on_frame=None):
    """Step ``seconds`` of line time; returns (audio, states). ``on_frame(i, frame)`` may act."""
    audio, states = [], []
    up = None if upstream is None else np.asarray(upstream, float)
    for i in range(round(seconds / FRAME_S)):
        chunk = None if up is None else up[i * 160 : (i + 1) * 160]
        f = line.step(chunk)
        audio.append(f.audio)
        states.append(f.state)
        if on_frame:
            on_frame(i, f)
    return np.concatenate(audio), states


def bursts(flags: list[bool]) -> list[tuple[float, float]]:
    """(on seconds, following off seconds) of a boolean frame series."""
    out, i, n = [], 0, len(flags)
    while i < n:
        if flags[i]:
            j = i
            while j < n and flags[j]:
                j += 1
            k = j
            while k < n and not flags[k]:
                k += 1
            out.append((round((j - i) * FRAME_S, 2), round((k - j) * FRAME_S, 2)))
            i = k
        else:
            i += 1
    return out


def envelope_on(audio: np.ndarray, threshold: float = 1e-4) -> list[bool]:
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    return list(np.mean(frames**2, axis=1) > threshold)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * 8000 / x.size)


@pytest.mark.parametrize(
    ("country", "cadence"), [("jp", (1.0, 2.0)), ("cn", (1.0, 4.0)), ("us", (2.0, 4.0)), ("etsi", (1.0, 4.0))]
)
def test_ring_cadence_per_country(country, cadence):
    line = PstnLine(country)
    line.incoming_call(Caller("123", cid="none"), max_rings=3)
    _, states = run(line, 3 * sum(cadence) + 1)
    assert bursts([s.ringing for s in states])[:2] == [cadence, cadence]
    assert states[0].ring_voltage == pytest.approx(75.0)
    assert line.kinds("missed")[0].t == pytest.approx(3 * sum(cadence))
    assert not line.busy


def test_japan_car_without_primary_response_falls_back_to_plain_ringing():
    line = PstnLine("jp")
    line.incoming_call(Caller("0312345678"), max_rings=1)
    _, states = run(line, 8.0)
    ring = bursts([s.ringing for s in states])
    assert ring[:6] == [(0.5, 0.5)] * 6  # CAR for 6 s (the exchange's primary-response wait)
    assert ring[6][0] == 1.0  # then normal ringing (IR), no caller ID sent
    assert "no primary response" in line.kinds("cid")[0].detail


def test_japan_number_display_handshake_delivers_v23_frame_then_ir():
    line = PstnLine("jp")
    line.incoming_call(Caller("0312345678"), max_rings=2)
    det = CallerIdDetector("ntt")
    got = []

    def terminal(i, f):
        if i == 30:  # in the CAR's off period: primary response
            line.set_hook(True)
        got.extend(det.feed(f.audio))
        if got and line.state.off_hook:
            line.set_hook(False)  # reception complete

    _, states = run(line, 7.0, on_frame=terminal)
    assert [c.number for c in got] == ["0312345678"]
    assert [r.kind for r in line.records][:5] == ["incoming", "car", "hook", "hook", "cid"]
    assert bursts([s.ringing for s in states])[1] == (1.0, 2.0)  # IR after the handshake
    assert not any(s.ringing for s in states if s.off_hook)


def test_bell202_caller_id_sits_between_first_and_second_ring():
    line = PstnLine("us")
    line.incoming_call(Caller("2125551234", name="DOE JOHN"), max_rings=2)
    audio, states = run(line, 7.0)
    ring = [s.ringing for s in states]
    on = np.flatnonzero(envelope_on(audio))
    assert on[0] * FRAME_S >= 2.0 + 0.5  # ≥ 500 ms after the first ring (GR-30-CORE timing)
    assert on[-1] * FRAME_S <= 6.0 - 0.2  # ≥ 200 ms before the second ring
    assert ring.index(True, 100) == 300  # second ring at 6 s
    (cid,) = CallerIdDetector("bell202").feed(audio)
    assert (cid.number, cid.name, cid.datetime) == ("2125551234", "DOE JOHN", "11-27T14:05")


@pytest.mark.parametrize(("standard", "mode"), [("v23_etsi", "v23"), ("dtmf", "dtmf")])
def test_etsi_and_dtmf_caller_id_follow_a_polarity_reversal_before_the_first_ring(standard, mode):
    line = PstnLine("etsi")
    line.incoming_call(Caller("0123456789", cid=standard), max_rings=1)
    audio, states = run(line, 3.0)
    first_ring = [s.ringing for s in states].index(True)
    assert states[0].polarity == -1
    assert max(np.flatnonzero(envelope_on(audio))) < first_ring
    events = CallerIdDetector(mode).feed(audio)
    assert [e.number for e in events] == ["0123456789"]


@pytest.mark.parametrize("delay_ms", [0.0, 7.3, 13.0])
@pytest.mark.parametrize(
    ("country", "standard", "mode"), [("us", "bell202", "bell202"), ("etsi", "v23_etsi", "v23")]
)
def test_cid_data_end_is_where_a_receiver_finds_the_message_end(country, standard, mode, delay_ms):
    """``cid_data_ends`` (used by the screen-pop benchmark as the last caller-ID bit) agrees with an
    independent receiver's message end, and ``cid_delay_ms`` moves the burst off the 20 ms frame grid."""
    line = PstnLine(country)
    line.incoming_call(Caller("0123456789", cid=standard, cid_delay_ms=delay_ms), max_rings=2)
    audio, _ = run(line, 7.0)
    (cid,) = CallerIdDetector(mode).feed(audio)
    (end,) = line.cid_data_ends
    assert abs(end.t - cid.t) <= 0.001, (end.t, cid.t)
    undelayed = PstnLine(country)
    undelayed.incoming_call(Caller("0123456789", cid=standard), max_rings=2)
    run(undelayed, 7.0)
    shift = end.t - undelayed.cid_data_ends[0].t
    assert shift == pytest.approx(delay_ms / 1000, abs=0.5 / 8000)  # whole samples of silence


def test_private_caller_sends_reason_not_number():
    line = PstnLine("cn")
    line.incoming_call(Caller("13800138000", presentation="private"), max_rings=2)
    audio, _ = run(line, 5.0)
    (cid,) = CallerIdDetector("bell202").feed(audio)
    assert cid.number is None and cid.reason_absent == "P"


def test_no_caller_id_means_silence_between_rings():
    line = PstnLine("cn")
    line.incoming_call(Caller("13800138000", cid="none"), max_rings=2)
    audio, _ = run(line, 5.0)
    assert not any(envelope_on(audio))


def test_answered_call_far_end_speaks_presses_keys_and_hangs_up_with_busy():
    line = PstnLine("jp")
    script = [Say(0.5), Pause(0.2), Keys("12#"), HangUp()]
    line.incoming_call(Caller("0312345678", cid="none"), script=script)
    line.set_hook(True)  # answered at once
    audio, states = run(line, 5.0)
    assert states[0].loop_current_ma == pytest.approx(25.0)
    assert np.mean(audio[:4000] ** 2) > 1e-5  # speech
    digits = "".join(d.digit for d in DtmfDetector(twist="ntt").feed(audio))
    assert digits == "12#"
    hang = line.kinds("far_end_hangup")[0].t
    tail = audio[int((hang + 0.1) * 8000) :]
    assert peak_hz(tail[:4000]) == pytest.approx(400, abs=5)
    assert bursts(envelope_on(tail, 1e-4))[1] == (0.5, 0.5)


def test_subscriber_hang_up_clears_and_short_on_hook_is_a_flash():
    line = PstnLine("jp")
    line.incoming_call(Caller("1", cid="none"))
    line.set_hook(True)
    run(line, 0.2)
    line.set_hook(False)
    run(line, 0.2)
    line.set_hook(True)
    run(line, 0.2)
    assert line.kinds("flash")[0].detail == "200 ms" and line.busy
    line.set_hook(False)
    run(line, 0.6)
    assert line.kinds("cpe_hangup") and not line.busy


@pytest.mark.parametrize(
    ("country", "outcome", "freq", "cadence"),
    [
        ("jp", "busy", 400, (0.5, 0.5)),
        ("cn", "busy", 450, (0.35, 0.35)),
        ("cn", "congestion", 450, (0.7, 0.7)),
        ("us", "congestion", 480, (0.25, 0.25)),
        ("etsi", "busy", 425, (0.5, 0.5)),
    ],
)
def test_outgoing_call_dial_tone_digits_then_outcome(country, outcome, freq, cadence):
    line = PstnLine(country)
    line.expect_outgoing(outcome)
    line.set_hook(True)
    dialtone, _ = run(line, 0.5)
    dial_hz = {"us": 350, "jp": 400, "cn": 450, "etsi": 425}[country]
    assert peak_hz(dialtone[800:]) == pytest.approx(dial_hz, abs=8)
    up = np.concatenate((dtmf_sequence("0312345678", 80, 80), np.zeros(8000 * 7)))
    audio, _ = run(line, 7.0, upstream=up)
    outcome_t = line.kinds("outgoing")[0].t
    tail = audio[int((outcome_t - 0.5) * 8000) :]
    assert peak_hz(tail[: int(cadence[0] * 8000)]) == pytest.approx(freq, abs=8)
    assert bursts(envelope_on(tail))[1] == pytest.approx(cadence, abs=0.021)
    digits = "".join(d.digit for d in DtmfDetector().feed(line.upstream_audio()))
    assert digits == "0312345678"  # what the subscriber sent is kept for assertions


def test_outgoing_answer_after_rings_with_polarity_reversal():
    line = PstnLine("jp", polarity_reversal_on_answer=True)
    line.expect_outgoing("answer", answer_after_rings=2, script=[Say(0.3)])
    line.set_hook(True)
    up = np.concatenate((dtmf_sequence("117", 80, 80), np.zeros(8000 * 12)))
    audio, states = run(line, 12.0, upstream=up)
    answered = line.kinds("answered")[0].t
    ringback = audio[int((answered - 4.0) * 8000) : int(answered * 8000)]
    assert bursts(envelope_on(ringback, 1e-7))[0] == (1.0, 2.0)  # JP ringback 1 s on, 2 s off
    assert states[round(answered / FRAME_S) - 2].polarity == 1
    assert states[round(answered / FRAME_S) + 1].polarity == -1


def test_loop_break_hang_up_signal_drops_loop_current():
    line = PstnLine("us", hangup_signal=("loop_break",))
    line.incoming_call(Caller("1", cid="none"), script=[HangUp()])
    line.set_hook(True)
    _, states = run(line, 1.0)
    assert bursts([not s.loop_current for s in states])[0][0] == pytest.approx(0.6)


def test_calls_queue_behind_the_one_in_progress():
    line = PstnLine("cn")
    line.incoming_call(Caller("1", cid="none"), max_rings=1)
    line.incoming_call(Caller("2", cid="none"), max_rings=1)
    run(line, 11.0)
    assert [r.detail for r in line.kinds("incoming")] == ["1 via none", "2 via none"]


def test_read_serves_arbitrary_sample_counts_for_a_modem_simulator():
    line = PstnLine("us")
    line.incoming_call(Caller("2125551234"), max_rings=2)
    audio = np.concatenate([line.read(n) for n in [100, 333, 7] * 150 + [8000 * 6]])
    assert [c.number for c in CallerIdDetector("bell202").feed(audio)] == ["2125551234"]


def test_unknown_country_is_refused():
    with pytest.raises(ValueError, match="unknown country plan 'xx'"):
        PstnLine("xx")


async def test_run_clocks_frames_on_trio_time(autojump_clock):
    line = PstnLine("jp")
    send, recv = trio.open_memory_channel(0)
    async with trio.open_nursery() as nursery:
        await nursery.start(line.run, send)
        start = trio.current_time()
        frames = [await recv.receive() for _ in range(50)]
        nursery.cancel_scope.cancel()
    assert [f.t for f in frames[:3]] == [0.0, 0.02, 0.04]
    assert trio.current_time() - start == pytest.approx(1.0)
