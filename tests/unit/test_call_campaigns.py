"""Call campaigns with a fake voice service and a fake IVR on the MockClock: windows, retry intervals per
outcome, max concurrency, pause / resume / cancel, progress throttling, restart recovery, results."""

from __future__ import annotations

import datetime as dt
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from pydantic import ValidationError

from api.call_campaigns import results_csv
from gateway.events import EventBus, format_time
from gateway.ivr.call_campaigns import (
    CallCampaignError,
    CallCampaignService,
    CallCampaignSpec,
    CallWindow,
    call_outcome,
)
from gateway.store import call_campaigns_sql, ivr_sql, voice_sql
from gateway.store.sqlite import SqliteStore, run_inline
from gateway.voice.service import VoiceError

# Monday 2026-11-30 09:00 in Tokyo (00:00 UTC): trio time 0 of every test.
T0 = dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC)
ALL_WEEK = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "23:59"}


def wall_clock() -> dt.datetime:
    return T0 + dt.timedelta(seconds=trio.current_time())


# ================================================================================== fakes
@dataclass
class FakeCall:
    id: str
    line: str
    numbers: list[str]
    vars: dict[str, Any] = field(default_factory=dict)
    ended: trio.Event = field(default_factory=trio.Event)
    answered_at: str | None = None
    answered_by: str | None = None
    number: str | None = None
    cause: str | None = None
    started: float = 0.0

    async def hangup(self, cause: str = "normal") -> None:
        self.end(cause)

    def end(self, cause: str) -> None:
        if not self.ended.is_set():
            self.cause = cause
            self.ended.set()


@dataclass
class Settings:
    region: str = "JP"


class FakeVoice:
    """``script[number]``: what each call to that number does, in order: "busy" (after 5 s), "no_answer"
    (after the ring timeout), "failed" (at once) or ("answer", talk_seconds) — then the fake IVR runs."""

    def __init__(self, store, script: dict[str, list], lines=("l1", "l2"), ring_timeout_s: float = 30.0):
        self.store = store
        self.script = {n: list(s) for n, s in script.items()}
        self.lines = {name: None for name in lines}
        self.settings = Settings()
        self.ring_timeout_s = ring_timeout_s
        self.busy_lines: set[str] = set()
        self.calls: list[FakeCall] = []
        self.active = 0
        self.peak = 0
        self.nursery: trio.Nursery | None = None
        self.dial_args: list[dict] = []

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def dial(self, to, *, line, ivr_entry, timeout_s):
        if line in self.busy_lines:
            raise VoiceError("line_busy", f"line {line} is busy")
        self.busy_lines.add(line)
        self.dial_args.append({"to": list(to), "line": line, "ivr_entry": ivr_entry, "timeout_s": timeout_s})
        call = FakeCall(f"call_{len(self.calls) + 1}", line, list(to), started=trio.current_time())
        call.vars["ivr_entry"] = ivr_entry
        self.calls.append(call)
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.nursery.start_soon(self._progress, call, timeout_s or self.ring_timeout_s)
        return call

    async def _progress(self, call: FakeCall, timeout_s: float) -> None:
        try:
            for number in call.numbers:
                step = self.script[number].pop(0)
                call.number = number
                if step == "busy":
                    if await self._hung_up(call, 5):
                        return
                    call.cause = "busy"
                elif step == "no_answer":
                    if await self._hung_up(call, timeout_s):
                        return
                    call.cause = "no_answer"
                elif step == "failed":
                    call.cause = "failed"
                else:
                    _, talk = step
                    if await self._hung_up(call, 3):
                        return
                    call.answered_at = format_time(wall_clock())
                    call.answered_by = "polarity"
                    await self._ivr(call, talk)
                    return
            call.end(call.cause or "failed")
        finally:
            self.active -= 1
            self.busy_lines.discard(call.line)

    @staticmethod
    async def _hung_up(call: FakeCall, seconds: float) -> bool:
        """Ring or wait ``seconds``; True when the call was hung up meanwhile."""
        with trio.move_on_after(seconds):
            await call.ended.wait()
        return call.ended.is_set()

    async def _ivr(self, call: FakeCall, talk: float) -> None:
        """The fake IVR: answers question q1 with the recipient's var ``answer`` after ``talk`` seconds."""
        with trio.move_on_after(talk):
            await call.ended.wait()
        if call.ended.is_set():
            return
        answer = SimpleAnswer(call.id, str(call.vars.get("answer", "1")), format_time(wall_clock()))
        await self.store.write(lambda tx: ivr_sql.insert_answer(tx, answer))
        call.end("normal")


@dataclass
class SimpleAnswer:
    call_id: str
    answer: str
    answered_at: str
    survey: str = "discharge"
    survey_revision: int = 1
    tree_revision: int = 1
    question_id: str = "q1"
    question_text: str = "Are you feeling better?"
    language: str = "ja"


@dataclass
class Env:
    store: SqliteStore
    voice: FakeVoice
    service: CallCampaignService
    events: list[tuple[float, str, dict]]

    def progress(self) -> list[tuple[float, dict]]:
        return [(t, d) for t, ty, d in self.events if ty == "campaign.progress"]

    async def wait_state(self, campaign_id: str, state: str, within: float = 30 * 86400) -> dict:
        with trio.fail_after(within):
            while True:
                view = await self.service.get(campaign_id)
                if view["state"] == state:
                    return view
                await trio.sleep(60)  # only the test's polling: the service under test never polls

    async def results(self, campaign_id: str) -> list[dict]:
        return await self.service.results(campaign_id)


@asynccontextmanager
async def campaigns(tmp_path, script, *, lines=("l1", "l2"), store=None, start=True):
    own_store = store is None
    store = store or await SqliteStore.open(tmp_path / "gw.sqlite3", clock=wall_clock, runner=run_inline)
    bus = EventBus(store)
    events: list[tuple[float, str, dict]] = []
    bus.add_listener(lambda e: events.append((trio.current_time(), e.type, e.data)))
    voice = FakeVoice(store, script, lines)
    service = CallCampaignService(store, voice, bus=bus, clock=wall_clock)
    env = Env(store, voice, service, events)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(voice.run)
            if start:
                await nursery.start(service.run)
            yield env
            nursery.cancel_scope.cancel()
    finally:
        if own_store:
            await store.close()


def spec(recipients, **kw) -> CallCampaignSpec:
    body = {
        "entry": "followup",
        "recipients": recipients,
        "lines": ["l1", "l2"],
        "window": ALL_WEEK,
        "retry": {
            "busy": {"attempts": 3, "interval_s": 600},
            "no_answer": {"attempts": 2, "interval_s": 1800},
            "failed": {"attempts": 1, "interval_s": 60},
        },
        **kw,
    }
    return CallCampaignSpec.model_validate(body)


def who(number: str, **variables) -> dict:
    return {"numbers": [number], "vars": variables}


# ================================================================================== window
def test_window_open_now_next_day_and_after_the_weekend():
    window = CallWindow(days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="18:00")
    monday_10 = dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.UTC)  # 10:00 JST
    assert window.next_open(monday_10) == monday_10
    monday_8 = dt.datetime(2026, 11, 29, 23, 0, tzinfo=dt.UTC)  # 08:00 JST Monday
    assert window.next_open(monday_8) == dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.UTC)
    friday_18 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)  # 18:00 JST Friday: closed (end excluded)
    assert window.next_open(friday_18) == dt.datetime(2026, 12, 7, 0, 0, tzinfo=dt.UTC)  # Monday 09:00


def test_window_in_china_time_and_bad_windows():
    window = CallWindow(days=["sat"], start="10:00", end="12:00", timezone="Asia/Shanghai")
    monday = dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.UTC)
    assert window.next_open(monday) == dt.datetime(2026, 12, 5, 2, 0, tzinfo=dt.UTC)  # Sat 10:00 CST
    with pytest.raises(ValidationError, match="must be after start"):
        CallWindow(start="18:00", end="09:00")
    with pytest.raises(ValidationError, match="unknown time zone"):
        CallWindow(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        CallWindow(days=[])


def test_request_validation():
    with pytest.raises(ValidationError, match="set by the gateway"):
        spec([who("0311111111", campaign_id="x")])
    with pytest.raises(ValidationError, match="listed twice"):
        spec([who("0311111111")], lines=["l1", "l1"])
    with pytest.raises(ValidationError, match="variable name"):
        spec([who("0311111111", **{"Bad-Name": 1})])
    with pytest.raises(ValidationError):
        spec([])


def test_outcome_of_a_call():
    call = FakeCall("c", "l1", ["1"])
    for cause, outcome in [
        ("busy", "busy"),
        ("congestion", "busy"),
        ("no_answer", "no_answer"),
        ("no_dialtone", "failed"),
        ("device_lost", "failed"),
        ("campaign_canceled", "canceled"),
    ]:
        call.cause = cause
        assert call_outcome(call) == outcome
    call.answered_at = "2026-11-30T00:00:03.000Z"
    assert call_outcome(call) == "answered"


# ================================================================================== scheduling
async def test_busy_retries_at_the_interval_then_answer_with_vars_and_survey(tmp_path, autojump_clock):
    script = {"0311111111": ["busy", "busy", ("answer", 20)]}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(spec([who("0311111111", patient_id="P-1", answer="2")]), "crm")
        done = await env.wait_state(created["id"], "completed")
        results = await env.results(created["id"])
    starts = [c.started for c in env.voice.calls]
    assert starts[0] == 0
    assert starts[1] == pytest.approx(5 + 600, abs=1.01)  # busy after 5 s, retry 600 s later
    assert starts[2] == pytest.approx(2 * (5 + 600), abs=2.02)
    answered = env.voice.calls[2]
    assert answered.vars["patient_id"] == "P-1" and answered.vars["campaign_id"] == created["id"]
    assert env.voice.dial_args[0]["ivr_entry"] == "followup"
    [result] = results
    assert result["outcome"] == "answered" and result["state"] == "done"
    assert result["attempts"] == 3 and result["attempts_by_outcome"] == {
        "busy": 2,
        "no_answer": 0,
        "failed": 0,
    }
    assert result["answered_number"] == "0311111111" and result["answered_by"] == "polarity"
    assert result["call_id"] == answered.id and len(result["call_ids"]) == 3
    assert [(a["question"], a["answer"], a["text"]) for a in result["answers"]] == [
        ("q1", "2", "Are you feeling better?")
    ]
    assert result["vars"] == {"patient_id": "P-1", "answer": "2"}
    assert done["progress"]["answered"] == 1 and done["progress"]["attempts"] == 3


async def test_retries_run_out_per_outcome(tmp_path, autojump_clock):
    script = {
        "0311111111": ["no_answer", "no_answer", ("answer", 5)],  # 2 no_answer attempts allowed
        "0322222222": ["failed", ("answer", 5)],  # failed: 1 attempt, no retry
        "0333333333": ["busy", "busy", "busy", ("answer", 5)],  # busy: 3 attempts
    }
    async with campaigns(tmp_path, script, lines=("l1", "l2", "l3")) as env:
        created = await env.service.create(
            spec([who(n) for n in script], lines=["l1", "l2", "l3"], max_concurrent=3), "crm"
        )
        await env.wait_state(created["id"], "completed")
        results = await env.results(created["id"])
    assert [(r["outcome"], r["attempts"], r["last_cause"]) for r in results] == [
        ("no_answer", 2, "no_answer"),
        ("failed", 1, "failed"),
        ("busy", 3, "busy"),
    ]
    no_answer_starts = [c.started for c in env.voice.calls if c.numbers == ["0311111111"]]
    assert no_answer_starts[1] - no_answer_starts[0] == pytest.approx(30 + 1800, abs=1.01)
    assert all(r["answers"] == [] and r["call_id"] is None for r in results)


async def test_numbers_of_one_patient_are_tried_in_one_call(tmp_path, autojump_clock):
    script = {"0311111111": ["busy"], "09011112222": [("answer", 5)]}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(
            spec([{"numbers": ["0311111111", "09011112222"], "vars": {}}]), "crm"
        )
        await env.wait_state(created["id"], "completed")
        [result] = await env.results(created["id"])
    assert len(env.voice.calls) == 1
    assert result["outcome"] == "answered" and result["answered_number"] == "09011112222"


async def test_max_concurrent_calls_and_lines_shared(tmp_path, autojump_clock):
    numbers = [f"03111111{i:02d}" for i in range(6)]
    script = {n: [("answer", 60)] for n in numbers}
    async with campaigns(tmp_path, script, lines=("l1", "l2", "l3")) as env:
        created = await env.service.create(
            spec([who(n) for n in numbers], lines=["l1", "l2", "l3"], max_concurrent=2), "crm"
        )
        await env.wait_state(created["id"], "completed")
        results = await env.results(created["id"])
    assert env.voice.peak == 2
    assert {r["outcome"] for r in results} == {"answered"}
    assert [c.numbers[0] for c in env.voice.calls] == numbers  # list order


async def test_all_lines_busy_waits_for_a_line(tmp_path, autojump_clock):
    numbers = ["0311111101", "0311111102", "0311111103"]
    script = {n: [("answer", 30)] for n in numbers}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(spec([who(n) for n in numbers], max_concurrent=5), "crm")
        await env.wait_state(created["id"], "completed")
    assert env.voice.peak == 2  # two lines, though five calls were allowed
    assert env.voice.calls[2].started == pytest.approx(33, abs=1.01)  # when the first line came free


async def test_window_closed_until_monday_and_retry_waits_for_the_next_opening(tmp_path, autojump_clock):
    # Window 09:00-09:30 JST on weekdays; trio time 0 is Monday 09:00 JST.
    window = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "09:30"}
    script = {"0311111111": ["no_answer", ("answer", 5)]}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(
            spec([who("0311111111")], window=window, retry={"no_answer": {"attempts": 2, "interval_s": 600}}),
            "crm",
        )
        await env.wait_state(created["id"], "completed")
    first, second = (c.started for c in env.voice.calls)
    assert first == 0
    # no answer after 30 s; the retry at 09:10:30 is inside the window
    assert second == pytest.approx(630, abs=1.01)

    # Created on Saturday: the first call waits for Monday 09:00.
    script = {"0322222222": [("answer", 5)]}
    saturday = 5 * 86400  # Saturday 09:00 JST
    (tmp_path / "b").mkdir()
    async with campaigns(tmp_path / "b", script, start=False) as env:
        await trio.sleep(saturday - trio.current_time())
        await trio.sleep(3600)  # Saturday 10:00
        async with trio.open_nursery() as nursery:
            await nursery.start(env.service.run)
            created = await env.service.create(spec([who("0322222222")], window=window), "crm")
            await env.wait_state(created["id"], "completed")
            nursery.cancel_scope.cancel()
    assert env.voice.calls[0].started == pytest.approx(7 * 86400, abs=1.01)  # next Monday 09:00


async def test_retry_after_the_window_closed_waits_for_the_next_day(tmp_path, autojump_clock):
    window = {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "09:30"}
    script = {"0311111111": ["busy", ("answer", 5)]}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(
            spec([who("0311111111")], window=window, retry={"busy": {"attempts": 2, "interval_s": 3600}}),
            "crm",
        )
        await env.wait_state(created["id"], "completed")
    assert env.voice.calls[1].started == pytest.approx(86400, abs=1.01)  # Tuesday 09:00, not Monday 10:00


# ================================================================================== control
async def test_pause_resume_and_conflicts(tmp_path, autojump_clock):
    numbers = ["0311111101", "0311111102", "0311111103"]
    script = {n: [("answer", 100)] for n in numbers}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(spec([who(n) for n in numbers], max_concurrent=1), "crm")
        cid = created["id"]
        await trio.sleep(10)
        paused = await env.service.pause(cid, "crm")
        assert paused["state"] == "paused"
        with pytest.raises(CallCampaignError) as err:
            await env.service.pause(cid, "crm")
        assert err.value.code == "conflict"
        await trio.sleep(3600)
        assert len(env.voice.calls) == 1  # the call in progress finished; no new one while paused
        view = await env.service.get(cid)
        assert view["progress"]["answered"] == 1 and view["progress"]["pending"] == 2
        await env.service.resume(cid, "crm")
        await env.wait_state(cid, "completed")
        with pytest.raises(CallCampaignError) as err:
            await env.service.resume(cid, "crm")
        assert err.value.code == "conflict"
        with pytest.raises(CallCampaignError) as err:
            await env.service.cancel("ccp_nope", "crm")
        assert err.value.code == "not_found"
    assert len(env.voice.calls) == 3
    assert env.voice.calls[1].started >= 3600


async def test_cancel_hangs_up_a_dialling_call_and_cancels_the_rest(tmp_path, autojump_clock):
    numbers = ["0311111101", "0311111102", "0311111103"]
    script = {n: ["no_answer"] for n in numbers}
    async with campaigns(tmp_path, script) as env:
        created = await env.service.create(spec([who(n) for n in numbers], max_concurrent=1), "crm")
        await trio.sleep(10)
        canceled = await env.service.cancel(created["id"], "crm")
        assert canceled["state"] == "canceled" and canceled["finished_at"] is not None
        await trio.sleep(120)
        results = await env.results(created["id"])
        progress = env.progress()
    assert env.voice.calls[0].cause == "campaign_canceled"
    assert len(env.voice.calls) == 1
    assert [(r["state"], r["outcome"]) for r in results] == [("canceled", "canceled")] * 3
    assert results[0]["attempts"] == 1 and results[1]["attempts"] == 0
    assert progress[-1][1]["state"] == "canceled" and progress[-1][1]["canceled"] == 3


async def test_progress_events_at_most_once_a_second(tmp_path, autojump_clock):
    numbers = [f"03111111{i:02d}" for i in range(8)]
    script = {n: ["failed"] for n in numbers}  # eight calls end within the same instant
    async with campaigns(tmp_path, script, lines=("l1", "l2", "l3", "l4")) as env:
        created = await env.service.create(
            spec([who(n) for n in numbers], lines=["l1", "l2", "l3", "l4"], max_concurrent=4), "crm"
        )
        await env.wait_state(created["id"], "completed")
        await trio.sleep(5)
        progress = env.progress()
    times = [t for t, _ in progress]
    assert all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
    last = progress[-1][1]
    assert last["state"] == "completed" and last["kind"] == "call" and last["campaign_id"] == created["id"]
    assert last["failed"] == 8 and last["total"] == 8 and last["pending"] == 0
    assert len(progress) < 8


# ================================================================================== validation
async def test_create_refuses_unknown_lines_numbers_and_entry(tmp_path, autojump_clock):
    class Tree:
        nodes = {"followup": object()}

    class Ivr:
        current = type("Published", (), {"revision": 4, "tree": Tree})()

    async with campaigns(tmp_path, {}) as env:
        with pytest.raises(CallCampaignError) as err:
            await env.service.create(spec([who("0311111111")], lines=["l9"]), "crm")
        assert (err.value.code, err.value.field) == ("invalid_request", "lines.0")
        with pytest.raises(CallCampaignError) as err:
            await env.service.create(spec([who("0311111111"), who("---")]), "crm")
        assert (err.value.code, err.value.field) == ("invalid_number", "recipients.1.numbers.0")
        env.service.ivr = Ivr()
        with pytest.raises(CallCampaignError) as err:
            await env.service.create(spec([who("0311111111")], entry="nowhere"), "crm")
        assert err.value.field == "entry" and "revision 4" in err.value.detail
        assert await env.service.list() == []


# ================================================================================== restart
async def test_restart_redials_an_interrupted_call_and_keeps_an_answered_one(tmp_path, autojump_clock):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=wall_clock, runner=run_inline)
    try:
        script = {"0311111101": ["no_answer"], "0311111102": [("answer", 500)]}
        async with campaigns(tmp_path, script, store=store) as env:
            created = await env.service.create(spec([who(n) for n in script], max_concurrent=2), "crm")
            await trio.sleep(10)  # both calls in progress; the second one answered
            first, second = env.voice.calls
            assert second.answered_at is not None
        cid = created["id"]
        # What the voice service stored for the answered call before the stop.
        await store.write(
            lambda tx: voice_sql.save_call(
                tx,
                {
                    "id": second.id,
                    "direction": "out",
                    "line": second.line,
                    "state": "connected",
                    "number": "0311111102",
                    "answered_by": "polarity",
                    "started_at": format_time(T0),
                    "answered_at": second.answered_at,
                },
            )
        )
        rows = await store.read(lambda tx: call_campaigns_sql.results(tx, cid))
        assert [r["state"] for r in rows] == ["calling", "calling"]

        script = {"0311111101": [("answer", 5)]}
        async with campaigns(tmp_path, script, store=store) as env:
            await env.wait_state(cid, "completed")
            results = await env.results(cid)
    finally:
        await store.close()
    assert [(r["outcome"], r["attempts"]) for r in results] == [("answered", 2), ("answered", 1)]
    assert results[0]["attempts_by_outcome"]["no_answer"] == 0  # the cut call does not count
    assert results[1]["answered_number"] == "0311111102" and results[1]["call_id"] == second.id


# ================================================================================== CSV
def test_results_csv_columns_and_formula_guard():
    items = [
        {
            "seq": 1,
            "numbers": ["+81312345678", "090-1111-2222"],
            "vars": {"patient_id": "=HYPERLINK(1)", "ward": "3"},
            "state": "done",
            "outcome": "answered",
            "attempts": 2,
            "attempts_by_outcome": {"busy": 1, "no_answer": 0, "failed": 0},
            "last_cause": "normal",
            "answered_number": "+81312345678",
            "answered_by": "polarity",
            "answered_at": "2026-11-30T00:10:00.000Z",
            "call_id": "call_2",
            "answers": [{"survey": "s", "question": "q1", "answer": "yes"}],
        },
        {
            "seq": 2,
            "numbers": ["0322222222"],
            "vars": {"note": "-1+2"},
            "state": "done",
            "outcome": "no_answer",
            "attempts": 3,
            "attempts_by_outcome": {"busy": 0, "no_answer": 3, "failed": 0},
            "last_cause": "no_answer",
            "answered_number": None,
            "answered_by": None,
            "answered_at": None,
            "call_id": None,
            "answers": [],
        },
    ]
    text = results_csv(items)
    assert text.endswith("\r\n")
    header, first, second = text.splitlines()
    assert header.endswith(",var:patient_id,var:ward,var:note,s.q1")
    assert "'=HYPERLINK(1)" in first and first.endswith(",yes")
    assert first.startswith("1,+81312345678 090-1111-2222,done,answered,2,1,0,0,")  # numbers left alone
    assert ",'-1+2," in second  # a formula-like text is guarded; phone numbers above are not
