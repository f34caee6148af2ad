"""LineMachine: line events and our commands in, notices out (no I/O, explicit time)."""

from __future__ import annotations

from drivers.dsp.events import CallerId
from drivers.voice.events import (
    CallerIdText,
    DeviceLost,
    DeviceReady,
    DtmfDigit,
    Handset,
    LoopBreak,
    PolarityReversal,
    Ring,
    ToneEvent,
)
from gateway.voice.dialer import ProgressJudge, Verdict, dial_string
from gateway.voice.line import (
    Announce,
    CallerUpdated,
    DeviceBack,
    DeviceGone,
    Digit,
    FarEndGone,
    LineMachine,
    RingCounted,
    RingingStopped,
    StateChanged,
    ToneHeard,
    Waiting,
)

CID = CallerId(t=0.0, standard="v23_etsi", number="0312345678", name="TARO")


def machine() -> LineMachine:
    return LineMachine("l1", present=True)


def test_caller_id_before_the_first_ring_is_announced_at_once_with_e164():
    m = machine()
    out = m.feed(CID, 0.0)
    assert out[0] == StateChanged("idle", "ringing")
    announce = out[1]
    assert isinstance(announce, Announce) and announce.rings == 0
    assert announce.caller.e164 == "+81312345678" and announce.caller.name == "TARO"
    assert m.feed(Ring(), 1.0) == [RingCounted(1)]


def test_bell202_caller_id_after_the_first_ring():
    m = machine()
    assert m.feed(Ring(), 0.0) == [StateChanged("idle", "ringing"), RingCounted(1)]
    out = m.feed(CallerId(t=1.0, standard="bell202", number="2125551234"), 1.0)
    assert isinstance(out[0], Announce) and out[0].caller.raw == "2125551234" and out[0].rings == 1


def test_no_caller_id_announced_at_the_second_ring_and_late_cid_updates():
    m = machine()
    m.feed(Ring(), 0.0)
    out = m.feed(Ring(), 3.0)
    assert out[0] == RingCounted(2) and out[1] == Announce(None, 2)
    late = m.feed(CallerIdText(number="0612345678"), 3.5)
    assert isinstance(late[0], CallerUpdated) and late[0].caller.standard == "modem"


def test_ringing_that_stops_is_missed_at_the_deadline_only():
    m = machine()
    m.feed(Ring(), 0.0)
    assert m.deadline() == 6.5
    assert m.tick(6.0) == []
    m.feed(Ring(), 3.0)
    assert m.tick(6.5) == []
    assert m.tick(9.5) == [RingingStopped(2), StateChanged("ringing", "idle")]
    assert m.deadline() is None and m.rings == 0 and m.caller is None


def test_handset_answer_while_ringing_is_not_a_missed_call():
    m = machine()
    m.feed(Ring(), 0.0)
    assert m.feed(Handset("up"), 1.0)[0] == RingingStopped(1, answered_elsewhere=True)


def test_in_call_supervision():
    m = machine()
    m.feed(Ring(), 0.0)
    m.seized()
    assert m.connected(10.0) == [StateChanged("offhook", "connected")]
    assert m.feed(DtmfDigit("5"), 11.0) == [Digit("5")]
    assert m.feed(PolarityReversal(), 10.5) == []  # answer supervision, within the guard
    assert m.feed(Ring(), 12.0) == []
    assert m.feed(CID, 12.0) == [Waiting(m.feed(CID, 12.0)[0].caller)]
    assert m.feed(ToneEvent("busy"), 13.0) == [FarEndGone("far_end_busy")]
    assert m.feed(ToneEvent("dialtone"), 13.0) == [FarEndGone("far_end_dialtone")]
    assert m.feed(LoopBreak(), 13.0) == [FarEndGone("loop_break")]
    assert m.feed(PolarityReversal(), 13.0) == [FarEndGone("polarity")]
    assert m.released() == [StateChanged("connected", "idle")]


def test_progress_signals_only_while_seized_or_dialling():
    m = machine()
    assert m.feed(ToneEvent("dialtone"), 0.0) == []
    m.seized()
    assert m.feed(ToneEvent("dialtone"), 0.1) == [ToneHeard("dialtone")]
    m.dialling()
    assert m.feed(PolarityReversal(), 1.0) == [ToneHeard("polarity_reversal")]
    assert m.feed(DtmfDigit("1"), 1.0) == []  # our own dialling is not a key press


def test_device_lost_and_back():
    m = machine()
    m.feed(Ring(), 0.0)
    assert m.feed(DeviceLost("unplugged"), 1.0) == [DeviceGone("unplugged"), StateChanged("ringing", "down")]
    assert m.feed(Ring(), 2.0) == []
    assert m.released() == []
    assert m.feed(DeviceReady("S1", "hcrm-open-box"), 3.0) == [
        DeviceBack("hcrm-open-box"),
        StateChanged("down", "idle"),
    ]


def test_progress_judge_and_dial_string():
    judge = ProgressJudge()
    assert judge.feed("dialtone") is None and judge.feed("ringback") is None
    assert judge.feed("voice") == Verdict("answered", "voice", 0.85)
    assert ProgressJudge().feed("voice") == Verdict("answered", "voice", 0.6)
    assert ProgressJudge().feed("busy") == Verdict("busy")
    assert ProgressJudge().feed("reorder") == Verdict("congestion")
    assert dial_string("+81312345678") == "0312345678"
    assert dial_string("090-1234-5678") == "09012345678"
    assert dial_string("+8613800138000", "JP") == "0108613800138000"


def test_a_held_line_takes_no_ring_as_a_call_and_stays_reserved_between_attempts():
    m = machine()
    m.hold()
    assert [type(n) for n in m.seized()] == [StateChanged]  # idle -> offhook for the first attempt
    m.dialling()
    assert m.released() == []  # on hook between attempts: still the dialler's, not idle
    assert m.state == "dialling"
    assert m.feed(Ring(), 10.0) == [] and m.feed(CID, 10.5) == []
    assert m.state == "dialling" and m.held_ring_quiet_at == 10.5 + m.ring_gap_s
    notices = m.unhold()  # the sequence ended on hook: now the line is free
    assert notices == [StateChanged("dialling", "idle")] and not m.held
    assert any(isinstance(n, Announce) for n in m.feed(CID, 20.0))  # and rings are calls again


def test_unhold_after_an_answer_leaves_the_call_its_line():
    m = machine()
    m.hold()
    m.seized()
    m.dialling()
    assert m.unhold() == []
    m.connected(1.0)
    assert m.state == "connected" and m.released() == [StateChanged("connected", "idle")]
