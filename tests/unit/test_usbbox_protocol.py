"""USB voice box frame codec (docs/usb-box-protocol.md) and the driver's sans-IO line logic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dsp.events import CallerId
from drivers.voice.events import DtmfDigit, Handset, LoopBreak, Overrun, PolarityReversal, Ring, ToneEvent
from drivers.voice.usbbox import AudioIn, AudioLost, LineMonitor, StatusReport
from drivers.voice.usbbox_protocol import (
    FLAG,
    Dial,
    Flash,
    FrameError,
    FramePhase,
    Hook,
    InboundDecoder,
    InFrame,
    LineStatus,
    OutboundEncoder,
    Resync,
    RingHandset,
    Route,
    SequenceGap,
    decode_in_frame,
    decode_out_packet,
    encode_in_frame,
    seq_distance,
)
from simulators import callerid_gen
from simulators.signals import cadence, dtmf_sequence, silence


def frame(seq: int, pcm=None, **flags) -> bytes:
    return encode_in_frame(seq, LineStatus(**flags), np.zeros(160, np.int16) if pcm is None else pcm)


# ------------------------------------------------------------------------------------ IN frames
def test_in_frame_bytes_match_the_documented_example():
    data = encode_in_frame(0, LineStatus(off_hook=True, loop_current=True), np.zeros(160), ack=3)
    assert data[:12] == bytes.fromhex("48 56 01 01 00 00 09 00 A0 00 03 00")
    assert len(data) == 12 + 320


def test_in_frame_round_trip_keeps_status_and_pcm():
    pcm = np.arange(-80, 80, dtype=np.int16) * 300
    status = LineStatus(ring=True, polarity_reversed=True, handset_off_hook=True, handset_ringing=True)
    got = decode_in_frame(encode_in_frame(65535, status, pcm, ack=65535))
    assert (got.seq, got.status, got.ack) == (65535, status, 65535)
    np.testing.assert_array_equal(got.pcm, pcm)
    assert got.samples.dtype == np.float32 and got.samples[0] == pytest.approx(-24000 / 32768)


@given(st.integers(0, 0x1FF))
def test_flags_round_trip(flags):
    assert LineStatus.from_flags(flags).to_flags() == flags


def test_unknown_flag_bits_are_kept_not_fatal():
    data = bytearray(frame(1))
    data[7] |= 0x80  # bit 15
    got = decode_in_frame(bytes(data))
    assert got.unknown_flags == 0x8000 and got.status == LineStatus()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:10], "shorter than its 12-byte header"),
        (lambda b: b"XX" + b[2:], "expected magic 4856"),
        (lambda b: b[:2] + b"\x02" + b[3:], "version 2"),
        (lambda b: b[:3] + b"\x05" + b[4:], "type 0x05 is unknown"),
        (lambda b: b[:-2], "announces 160 samples (332 bytes), got 330 bytes"),
        (lambda b: b[:8] + (5000).to_bytes(2, "little") + b[10:], "claims 5000 samples"),
    ],
)
def test_bad_in_frames_are_named(mutate, message):
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_in_frame(mutate(frame(0)))


def test_decoder_splits_joined_frames_and_joins_split_ones():
    dec = InboundDecoder()
    blob = frame(0) + frame(1) + frame(2)
    got = dec.feed(blob[:100]) + dec.feed(blob[100:500]) + dec.feed(blob[500:])
    assert [e.seq for e in got] == [0, 1, 2]
    assert all(isinstance(e, InFrame) for e in got)


def test_decoder_reports_sequence_gaps_once_including_wraparound():
    dec = InboundDecoder()
    got = []
    for seq in (65533, 65534, 65535, 0, 3, 4):
        got += dec.feed(frame(seq))
    gaps = [e for e in got if isinstance(e, SequenceGap)]
    assert gaps == [SequenceGap(expected=1, received=3, missing=2)]
    assert dec.lost == 2 and dec.frames == 6
    assert seq_distance(65535, 1) == 2


def test_decoder_resynchronises_after_garbage_and_bad_headers():
    dec = InboundDecoder()
    bad = bytearray(frame(1))
    bad[2] = 9  # wrong version
    got = dec.feed(b"\x00\x01junk" + frame(0) + bytes(bad) + frame(2))
    frames = [e.seq for e in got if isinstance(e, InFrame)]
    resyncs = [e for e in got if isinstance(e, Resync)]
    assert frames == [0, 2]
    assert resyncs[0].skipped == 6 and "no frame magic" in resyncs[0].reason
    assert any("version 9" in r.reason for r in resyncs)
    assert [e for e in got if isinstance(e, SequenceGap)] == [SequenceGap(1, 2, 1)]


def test_decoder_reset_forgets_sequence():
    dec = InboundDecoder()
    dec.feed(frame(10))
    dec.reset()
    assert not any(isinstance(e, SequenceGap) for e in dec.feed(frame(0)))


# ------------------------------------------------------------------------------------ OUT packets
def test_command_bytes_match_the_table():
    enc = OutboundEncoder()
    enc.seq = 7
    assert enc.command(Hook(True)) == bytes.fromhex("48 43 01 03 07 00 02 00 01 01")
    assert enc.command(Flash(600)) == bytes.fromhex("48 43 01 03 08 00 03 00 02 58 02")
    assert enc.command(Dial("1#,A", 80, 60)) == bytes.fromhex("48 43 01 03 09 00 07 00 03 50 3C") + b"1#,A"
    assert enc.command(RingHandset(False)) == bytes.fromhex("48 43 01 03 0A 00 02 00 04 00")
    assert enc.command(Route("headset")) == bytes.fromhex("48 43 01 03 0B 00 02 00 05 01")
    enc.seq = 8
    assert enc.command(FramePhase(-40)) == bytes.fromhex("48 43 01 03 08 00 03 00 06 D8 FF")  # the doc's


def test_out_sequence_wraps_and_audio_clips_instead_of_wrapping():
    enc = OutboundEncoder()
    enc.seq = 65535
    pkt = enc.audio(np.array([0.5, 2.0, -2.0], dtype=np.float32))
    assert enc.seq == 0
    got = decode_out_packet(pkt)
    assert got.seq == 65535 and got.command is None
    np.testing.assert_array_equal(got.pcm, [16384, 32767, -32768])


@pytest.mark.parametrize(
    "cmd", [Hook(False), Flash(100), Dial("0312345678"), RingHandset(True), Route("line"), FramePhase(159),
            FramePhase(-159)]
)
def test_commands_round_trip(cmd):
    assert decode_out_packet(OutboundEncoder().command(cmd)).command == cmd


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Dial("12x"), "bad: X"),
        (lambda: Dial(""), "use 0-9"),
        (lambda: Dial("1", tone_ms=20), "40..255 ms"),
        (lambda: OutboundEncoder().command(Flash(5)), "10..2000 ms"),
        (lambda: FramePhase(160), "-159..159"),
        (lambda: FramePhase(0), "not 0"),
    ],
)
def test_invalid_commands_are_refused_with_a_reason(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HC\x01\x03", "shorter than its 8-byte header"),
        (b"HX\x01\x03\x00\x00\x01\x00\x01", "is not 'HC'"),
        (b"HC\x01\x03\x00\x00\x05\x00\x01", "announces 5 payload bytes, carries 1"),
        (b"HC\x01\x02\x00\x00\x03\x00abc", "not whole 16-bit samples"),
        (b"HC\x01\x03\x00\x00\x02\x00\x09\x00", "opcode 0x09"),
        (b"HC\x01\x03\x00\x00\x03\x00\x03\x50\x50", "opcode 0x03 with 2 argument bytes"),
    ],
)
def test_bad_out_packets_are_named(data, message):
    with pytest.raises(FrameError, match=message):
        decode_out_packet(data)


# ------------------------------------------------------------------------------ LineMonitor (sans-IO)
def run_monitor(mon: LineMonitor, script: list[tuple[LineStatus, np.ndarray]]) -> list:
    """Feed (status, audio) pairs in 20 ms frames; hook commands from the monitor are applied to the
    following statuses, as a box would."""
    out: list = []
    own_hook = False
    for status, audio in script:
        if own_hook and not status.off_hook:
            status = LineStatus(**{**_fields(status), "off_hook": True, "loop_current": True})
        for start in range(0, max(audio.size, 1), 160):
            chunk = audio[start : start + 160]
            for ev in mon.feed(StatusReport(status)) + mon.feed(AudioIn(chunk)):
                if isinstance(ev, Hook):
                    own_hook = ev.off_hook
                out.append(ev)
    return out


def _fields(s: LineStatus) -> dict:
    return {name: getattr(s, name) for name in FLAG}


def test_monitor_reports_each_ring_burst_once_without_ntt():
    mon = LineMonitor(tones="us", ntt_handshake=False)
    ring, idle = LineStatus(ring=True), LineStatus()
    events = run_monitor(mon, [(ring, silence(2.0)), (idle, silence(4.0)), (ring, silence(2.0))])
    assert [e for e in events if isinstance(e, Ring)] == [Ring(), Ring()]


def test_monitor_ntt_car_gets_silent_off_hook_then_release_after_caller_id():
    mon = LineMonitor(tones="jp")
    ring, idle = LineStatus(ring=True), LineStatus()
    burst = callerid_gen.callerid_burst(callerid_gen.ntt_callerid("0312345678"), standard="ntt")
    events = run_monitor(
        mon,
        [(ring, silence(0.5)), (idle, silence(0.2)), (idle, burst), (idle, silence(0.5)),
         (ring, silence(1.0))],
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Hook" and events[0] == Hook(True)  # primary response, no Ring for CAR
    cid = next(e for e in events if isinstance(e, CallerId))
    assert cid.number == "0312345678" and cid.standard == "v23_ntt"
    assert kinds.index("CallerId") < kinds.index("Hook", 1)  # released after the frame
    assert events[kinds.index("Hook", 1)] == Hook(False)
    assert kinds.count("Ring") == 1 and kinds.index("Ring") > kinds.index("Hook", 1)  # the IR


def test_monitor_ignores_the_line_until_the_box_has_acted_on_the_release():
    """The driver writes the handshake's hook commands beside its reads, so frames read after the release
    may still show the box off hook (with loop current): no key press, tone or loop break comes from them
    as if a call were up; once the box reports on hook, a later call of the user's is heard as usual."""
    mon = LineMonitor(tones="jp")
    burst = callerid_gen.callerid_burst(callerid_gen.ntt_callerid("0312345678"), standard="ntt")
    off = LineStatus(off_hook=True, loop_current=True)

    def feed(status: LineStatus, audio: np.ndarray) -> list:
        out: list = []
        for start in range(0, audio.size, 160):
            out += mon.feed(StatusReport(status)) + mon.feed(AudioIn(audio[start : start + 160]))
        return out

    events = feed(LineStatus(ring=True), silence(0.5)) + feed(LineStatus(), silence(0.1))
    assert events == [Hook(True)]
    events = feed(off, np.concatenate([burst, silence(0.1)]))
    assert any(isinstance(e, CallerId) for e in events) and events[-1] == Hook(False)
    stale = feed(off, dtmf_sequence("12", 80, 80)) + feed(off, cadence([400], 0.5, 0.5, 2.0))
    stale += feed(LineStatus(off_hook=True), silence(0.1))  # loop current drops first
    assert stale == []
    assert feed(LineStatus(), silence(0.1)) == []  # the box is on hook now
    events = feed(off, dtmf_sequence("59", 80, 80))  # the user picked up the handset later
    assert [e for e in events if isinstance(e, DtmfDigit)] == [DtmfDigit("5"), DtmfDigit("9")]


def test_monitor_ntt_releases_the_line_when_no_caller_id_comes():
    mon = LineMonitor(tones="jp", ntt_cid_wait_s=2.0)
    events = run_monitor(mon, [(LineStatus(ring=True), silence(0.5)), (LineStatus(), silence(3.0))])
    assert [e for e in events if isinstance(e, Hook)] == [Hook(True), Hook(False)]
    assert not mon.in_handshake


def test_monitor_gates_digits_and_tones_by_hook_and_dialling():
    mon = LineMonitor(tones="jp", ntt_handshake=False)
    keys = dtmf_sequence("59", 80, 80)
    events = run_monitor(
        mon,
        [
            (LineStatus(), keys),  # on hook: not a key press
            (LineStatus(off_hook=True, loop_current=True, dialing=True), keys),  # our own dialling
            (LineStatus(off_hook=True, loop_current=True), keys),
            (LineStatus(off_hook=True, loop_current=True), cadence([400], 0.5, 0.5, 3.0)),
        ],
    )
    assert [e for e in events if isinstance(e, DtmfDigit)] == [DtmfDigit("5"), DtmfDigit("9")]
    assert ToneEvent("busy") in events


def test_monitor_line_supervision_edges():
    mon = LineMonitor(tones="jp", ntt_handshake=False)
    up = LineStatus(off_hook=True, loop_current=True)
    events = run_monitor(
        mon,
        [
            (up, silence(0.04)),
            (LineStatus(off_hook=True, loop_current=True, polarity_reversed=True), silence(0.04)),
            (LineStatus(off_hook=True, polarity_reversed=True), silence(0.04)),
            (LineStatus(off_hook=True, polarity_reversed=True, handset_off_hook=True), silence(0.04)),
            (LineStatus(), silence(0.04)),
        ],
    )
    assert events.count(PolarityReversal()) == 2
    assert events.count(LoopBreak()) == 1
    assert [e for e in events if isinstance(e, Handset)] == [Handset("up"), Handset("down")]


def test_monitor_keeps_line_time_across_lost_audio():
    mon = LineMonitor(tones="jp", ntt_handshake=False)
    mon.feed(AudioIn(np.zeros(160, np.float32)))
    assert mon.feed(AudioLost(480)) == [Overrun()]
    assert mon.t == pytest.approx(0.08)


def test_simulated_box_moves_its_frames_by_a_frame_phase_shift_without_losing_a_sample():
    """FRAME_PHASE on the simulator (written from docs/usb-box-protocol.md): the next IN frame carries
    160 + shift samples, the ones after 160 again; the samples joined are the line's, none lost or doubled."""
    import dataclasses

    from simulators.pstn_line import PstnLine
    from simulators.usb_box import make_box

    line = PstnLine("jp")
    box = make_box(line).box
    enc, dec = OutboundEncoder(), InboundDecoder()
    steps: list[np.ndarray] = []
    step = line.step

    def ramp_step(upstream=None):  # every sample different, so a lost or doubled one shows
        frame = step(upstream)
        audio = (np.arange(160) + 160 * len(steps)) / 32767.0
        steps.append(audio)
        return dataclasses.replace(frame, audio=audio)

    line.step = ramp_step
    sizes, audio = [], []
    for shift in (0, -40, 0, 0, 75, 0, 0):
        if shift:
            box.receive(enc.command(FramePhase(shift)))
        frame = [e for e in dec.feed(box.next_frame()) if isinstance(e, InFrame)][0]
        sizes.append(frame.pcm.size)
        audio.append(frame.pcm)
    assert sizes == [160, 120, 160, 160, 235, 160, 160]
    assert box.delivered == sum(sizes) and ("frame_phase", -40) in box.commands
    heard = np.round(np.concatenate(steps) * 32767.0)[: sum(sizes)]
    np.testing.assert_array_equal(np.concatenate(audio), np.clip(heard, -32768, 32767))
