"""QueueManager with two operator positions on MockClock: hold content, announcements, priority, overflow."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio

from gateway.ivr.loader import validate_text
from gateway.ivr.queue import QueueManager, UnknownPosition
from gateway.ivr.runtime import CallEnded, IvrSession, QueueRequest, SessionServices
from tests.unit.ivr_fakes import EventRecorder, FakeCall

PROMPTS = Path(__file__).resolve().parents[2] / "ivr_prompts"
LECTURES = (Path("/p/ja/lecture_salt.wav"), Path("/p/ja/lecture_handwashing.wav"))


def request(call, *, priority=0, max_wait=300.0, max_callers=None, announce_every=None, queue="reception"):
    def announcement(place: int, minutes: int) -> list[Path]:
        return [Path(f"/p/announce/place-{place}.wav"), Path(f"/p/announce/minutes-{minutes}.wav")]

    return QueueRequest(
        call=call,
        queue=queue,
        positions=("headset-1", "headset-2"),
        priority=priority,
        playlist=LECTURES,
        announce_every=announce_every,
        announcement=announcement if announce_every else None,
        max_wait=max_wait,
        max_callers=max_callers,
    )


def manager():
    events = EventRecorder()
    return QueueManager(["headset-1", "headset-2"], publish=events.publish), events


async def hang_up_at(call: FakeCall, t: float) -> None:
    await trio.sleep_until(t)
    call.ended.set()


async def test_no_reachable_position_and_unknown_position(autojump_clock):
    queues, events = QueueManager(["desk-9"], publish=(events := EventRecorder()).publish), events
    assert await queues.wait(request(FakeCall())) == "no_position"  # neither headset exists here
    assert events.of("queue.left")[0]["result"] == "no_position"
    with pytest.raises(UnknownPosition):
        queues.set_ready("headset-9")


async def test_two_positions_answer_in_order_and_return_to_ready(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    a, b, c = FakeCall(id="a"), FakeCall(id="b"), FakeCall(id="c")
    results: dict[str, str] = {}

    async def caller(call, at):
        await trio.sleep_until(at)
        results[call.id] = await queues.wait(request(call))

    async def operators():
        await trio.sleep_until(30)
        queues.set_ready("headset-2")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, a, 0)
        nursery.start_soon(caller, b, 1)
        nursery.start_soon(caller, c, 2)
        nursery.start_soon(operators)
        nursery.start_soon(hang_up_at, a, 100)  # headset-1 free again at 100 -> c
        nursery.start_soon(hang_up_at, b, 150)
        nursery.start_soon(hang_up_at, c, 200)
    assert results == {"a": "answered", "b": "answered", "c": "answered"}
    bridges = {call.id: [(t, p) for t, op, p in call.log if op == "bridge"] for call in (a, b, c)}
    assert bridges == {"a": [(0, "headset-1")], "b": [(30, "headset-2")], "c": [(100, "headset-1")]}
    # b heard the lectures in order, looped, while waiting 29 s (1 s per file in the fake)
    assert b.played[:3] == ["ja/lecture_salt", "ja/lecture_handwashing", "ja/lecture_salt"]
    assert not a.played
    left = {e["call_id"]: e for e in events.of("queue.left")}
    assert left["b"]["result"] == "answered" and left["b"]["position"] == "headset-2"
    assert left["b"]["waited_s"] == 29.0
    assert [p.state for p in queues.positions.values()] == ["ready", "ready"]


async def test_priority_then_arrival(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    busy, low, high = FakeCall(id="busy"), FakeCall(id="low"), FakeCall(id="high")
    order: list[str] = []

    async def caller(call, at, priority):
        await trio.sleep_until(at)
        await queues.wait(request(call, priority=priority))
        order.append(call.id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, busy, 0, 0)
        nursery.start_soon(caller, low, 1, 0)
        nursery.start_soon(caller, high, 2, 5)
        nursery.start_soon(hang_up_at, busy, 10)
        nursery.start_soon(hang_up_at, high, 20)
        nursery.start_soon(hang_up_at, low, 30)
    assert [p for _, op, p in high.log if op == "bridge"] == ["headset-1"]
    assert next(t for t, op, _ in high.log if op == "bridge") == 10
    assert next(t for t, op, _ in low.log if op == "bridge") == 20
    places = [(e["call_id"], e["place"]) for e in events.of("queue.joined")]
    assert places == [("busy", 1), ("low", 1), ("high", 1)]  # high jumps ahead of low
    assert ("low", 2) in [(e["call_id"], e["place"]) for e in events.of("queue.position")]


async def test_overflow_after_max_wait_and_full_queue(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    queues.set_away("headset-1")
    queues.set_ready("headset-2")
    first, second, third = FakeCall(id="1"), FakeCall(id="2"), FakeCall(id="3")
    results: dict[str, str] = {}

    async def caller(call, at):
        await trio.sleep_until(at)
        results[call.id] = await queues.wait(request(call, max_wait=45, max_callers=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, first, 0)  # takes headset-2
        nursery.start_soon(caller, second, 1)  # waits, overflows at 46
        nursery.start_soon(caller, third, 2)  # queue full (max_callers 1)
        nursery.start_soon(hang_up_at, first, 100)
    assert results == {"1": "answered", "2": "overflow", "3": "full"}
    assert trio.current_time() == 100
    overflow = [e for e in events.of("queue.left") if e["call_id"] == "2"][0]
    assert overflow == {"call_id": "2", "queue": "reception", "result": "overflow", "waited_s": 45.0}


async def test_announcements_every_n_seconds(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    queues.set_ready("headset-2")
    calls = [FakeCall(id=f"c{i}", prompt_seconds=10) for i in range(3)]

    async def caller(call, at, announce):
        await trio.sleep_until(at)
        await queues.wait(request(call, announce_every=announce))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, calls[0], 0, None)
        nursery.start_soon(caller, calls[1], 0, None)
        nursery.start_soon(caller, calls[2], 1, 60)
        nursery.start_soon(hang_up_at, calls[0], 130)
        nursery.start_soon(hang_up_at, calls[1], 200)
        nursery.start_soon(hang_up_at, calls[2], 300)
    waiter = calls[2]
    plays = [(t, name) for t, op, name in waiter.log if op == "play"]
    announced = [(t, name) for t, name in plays if name.startswith("announce/")]
    # at joining (t=1), then every 60 s; the first place estimate uses the 60 s default mean wait
    assert [t for t, _ in announced[::2]] == [1, 61, 121]
    assert announced[0][1] == "announce/place-1"
    # hold content resumes after each announcement: a lecture starts right after the announcement files
    after_first = plays[2]
    assert after_first == (21, "ja/lecture_salt")
    assert [t for t, op, _ in waiter.log if op == "bridge"] == [130]
    assert [e["place"] for e in events.of("queue.position") if e["call_id"] == "c2"][:1] == [1]


async def test_caller_hangs_up_while_waiting(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    busy = FakeCall(id="busy")
    leaver = FakeCall(id="leaver", hangup_at=12.5)
    raised: list[BaseException] = []

    async def wait_leaver():
        await trio.sleep(1)
        try:
            await queues.wait(request(leaver))
        except CallEnded as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queues.wait, request(busy))
        nursery.start_soon(wait_leaver)
        nursery.start_soon(hang_up_at, busy, 20)
    assert len(raised) == 1
    left = [e for e in events.of("queue.left") if e["call_id"] == "leaver"][0]
    assert left["result"] == "abandoned" and left["waited_s"] == 11.5
    assert queues.snapshot()["queues"] == []


async def test_away_during_a_call_takes_effect_after_it_and_snapshot(autojump_clock):
    queues, _ = manager()
    queues.set_ready("headset-1")
    a, b = FakeCall(id="a"), FakeCall(id="b", caller={"raw": "0311112222", "e164": "+81311112222"})
    seen: dict = {}

    async def observe():
        await trio.sleep(5)
        queues.set_away("headset-1")
        seen["during"] = queues.snapshot()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queues.wait, request(a))
        nursery.start_soon(observe)
        nursery.start_soon(hang_up_at, a, 10)
        await trio.sleep(1)
        nursery.start_soon(queues.wait, request(b, max_wait=60))
    assert seen["during"]["positions"][0] == {"id": "headset-1", "state": "busy", "call_id": "a"}
    assert seen["during"]["queues"] == [
        {
            "queue": "reception",
            "waiting": [
                {"call_id": "b", "priority": 0, "place": 1, "waited_s": 4.0, "caller": "+81311112222"}
            ],
        }
    ]
    assert queues.positions["headset-1"].state == "away"
    assert not [op for _, op, _ in b.log if op == "bridge"]  # b overflowed: the operator went away


class LineCall(FakeCall):
    """A call on an analog line: it can only be bridged to its line's own headset port."""

    headset_position: str | None = None


async def test_a_line_only_reaches_its_own_headset(autojump_clock):
    queues, events = manager()
    queues.set_ready("headset-1")
    call = LineCall(id="l2")
    call.headset_position = "headset-2"
    results: list[str] = []

    async def caller():
        results.append(await queues.wait(request(call, max_wait=60)))

    async def staff():
        await trio.sleep(20)
        queues.set_ready("headset-2")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)  # headset-1 is ready but cannot take it; headset-2 is staffed later
        nursery.start_soon(staff)
        nursery.start_soon(hang_up_at, call, 40)
    # The caller waited on hold for its own headset (away at joining) and was bridged once it was staffed.
    assert results == ["answered"]
    assert [(t, arg) for t, op, arg in call.log if op == "bridge"] == [(20.0, "headset-2")]
    queues.set_ready("headset-2")
    queues.set_away("headset-2")
    queues.set_ready("headset-2")
    other = LineCall(id="l2b")
    other.headset_position = "headset-2"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queues.wait, request(other))
        nursery.start_soon(hang_up_at, other, 5)
    assert [p for _, op, p in other.log if op == "bridge"] == ["headset-2"]
    assert queues.positions["headset-1"].state == "ready"


async def test_queue_node_through_the_session(autojump_clock, tmp_path):
    prompts = PROMPTS
    text = """
version: 1
entry: q
languages: [ja]
nodes:
  q:
    type: queue
    positions: [headset-1, headset-2]
    priority: 3
    hold_playlist: ["{lang}/lecture_salt", "{lang}/lecture_handwashing"]
    announce: {every: 30, position_prompt: "{lang}/position_before", position_suffix: "{lang}/position_after"}
    max_wait: 100
    on_overflow: vm
  vm: {type: record, mailbox: patient-relations, next: bye}
  bye: {type: hangup}
"""
    result = validate_text(text, prompts_dir=prompts)
    assert result.ok and result.tree is not None
    queues, events = manager()
    queues.set_ready("headset-2")
    busy = FakeCall(id="busy")
    caller = FakeCall(id="caller", prompt_seconds=2)
    services = SessionServices(
        prompts_dir=prompts, publish=events.publish, recordings_dir=tmp_path, queues=queues
    )
    clock = lambda: dt.datetime(2026, 11, 27, 1, 0, tzinfo=dt.UTC)  # noqa: E731
    outcome: list[str] = []

    async def run_caller():
        await trio.sleep(1)
        outcome.append(await IvrSession(result.tree, 1, caller, clock=clock, services=services).run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(queues.wait, request(busy))
        nursery.start_soon(run_caller)
        nursery.start_soon(hang_up_at, busy, 50)  # headset-2 frees at 50 and takes the caller
        nursery.start_soon(hang_up_at, caller, 80)
    assert outcome == ["bridged"]
    assert [(t, p) for t, op, p in caller.log if op == "bridge"] == [(50, "headset-2")]
    # announcement "you are number 1 in the queue" from the say fragments, then the lectures
    assert caller.played[:3] == ["ja/position_before", "ja/1", "ja/position_after"]
    assert caller.played[3:5] == ["ja/lecture_salt", "ja/lecture_handwashing"]
    assert [e["node"] for e in events.of("ivr.node")] == ["q"]
    assert events.of("ivr.node")[0]["input"] == "answered"
