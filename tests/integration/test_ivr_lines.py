"""The IVR end to end on a simulated line (issue 6, "Tests and numbers"): IvrService + QueueManager + the real
VoiceService, UsbVoiceBox driver and simulated box, and a PstnLine whose far end listens and presses keys.

Prompts are written per test (numpy + soundfile): each prompt is a pure tone at its own frequency, a multiple
of 50 Hz and 100 Hz from any other, so that every 20 ms line frame the gateway sends is classified exactly
(tones at different multiples of 50 Hz are orthogonal over 160 samples at 8 kHz). ``heard(line)`` turns the
audio the line received from the gateway into the ordered list of prompts played, and the far end reacts to
what it hears (``ListeningLine.when_heard``), as a caller does. Reacting on line time keeps the tests
deterministic although the unpaced box runs the line much faster than real time, while the IVR's input
timeouts are real seconds.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import textwrap
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pytest
import soundfile as sf
import trio

from drivers.voice.usbbox import UsbVoiceBox
from gateway.events import EventBus
from gateway.ivr.queue import QueueManager
from gateway.ivr.service import IvrService, IvrSettings
from gateway.store.sqlite import SqliteStore
from gateway.voice.calls import Call
from gateway.voice.devices import UsbBoxLine
from gateway.voice.media import read_recording
from gateway.voice.service import VoiceService
from gateway.voice.settings import LineSettings, VoiceSettings
from simulators.pstn_line import FRAME, RATE, Caller, HangUp, Keys, LineFrame, Pause, PstnLine, Say
from simulators.signals import dtmf_sequence, speech_like
from simulators.usb_box import make_box

BACKOFF = (0.01, 0.02, 0.05)
TOKYO = ZoneInfo("Asia/Tokyo")
FRIDAY_10 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO)
CALLER = "0312345678"

# ----------------------------------------------------------------------------------------------- prompts
PROMPT_S = 0.4
PROMPT_LEVEL = 0.3
PROMPTS = [
    "en/welcome",
    "en/hours",
    "en/menu",
    "en/menu_short",
    "en/invalid",
    "en/no_input",
    "en/goodbye",
    "en/sorry",
    "en/enter_number",
    "en/number_is",
    "en/not_found",
    "en/crm_down",
    "en/closed",
    "en/open",
    "en/holiday",
    "en/hold",
    "en/survey_intro",
    "en/q1",
    "en/q2",
    "en/leave_message",
    "en/menu_v2",
    "common/language",
    "ja/goodbye",
]
DIGITS = [f"say/en/{d}" for d in range(10)]
BEEP = "beep"  # the record tone of gateway.voice.media.beep(): 1000 Hz
_SLOTS = [f for f in range(300, 3900, 100) if f != 1000]
FREQ: dict[str, float] = {name: float(f) for name, f in zip(PROMPTS + DIGITS, _SLOTS, strict=False)}
assert len(FREQ) == len(PROMPTS + DIGITS), "more prompts than distinct tones"
FREQ[BEEP] = 1000.0
_NAMES = list(FREQ)
_BASIS = np.exp(-2j * np.pi * np.outer([FREQ[n] for n in _NAMES], np.arange(FRAME)) / RATE)


def write_prompts(folder: Path) -> None:
    t = np.arange(int(PROMPT_S * RATE)) / RATE
    for name in PROMPTS + DIGITS:
        path = folder / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), (PROMPT_LEVEL * np.sin(2 * np.pi * FREQ[name] * t)).astype(np.float32), RATE)


def frame_labels(audio: np.ndarray) -> list[str | None]:
    """The prompt each 20 ms frame carries (None: silence, a mixture or anything else)."""
    n = audio.size // FRAME
    frames = np.asarray(audio[: n * FRAME], dtype=float).reshape(n, FRAME)
    power = 2 * np.abs(frames @ _BASIS.T) ** 2 / FRAME**2  # the mean square of each tone in the frame
    total = np.mean(frames**2, axis=1)
    best = np.argmax(power, axis=1)
    loud = (total > 1e-3) & (power[np.arange(n), best] > 0.6 * total)
    return [_NAMES[b] if ok else None for b, ok in zip(best, loud, strict=True)]


def heard_in(audio: np.ndarray) -> list[str]:
    """Prompts in the order played: runs of at least two frames; a prompt split by an underrun counts once."""
    runs: list[list] = []
    for label in frame_labels(audio):
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    out: list[str] = []
    for label, count in runs:
        if label is not None and count >= 2 and (not out or out[-1] != label):
            out.append(label)
    return out


def heard(line: PstnLine) -> list[str]:
    return heard_in(line.upstream_audio())


# --------------------------------------------------------------------------------------------- the line
class ListeningLine(PstnLine):
    """A PstnLine whose far end reacts to what it hears: ``when_heard(prompt, *actions)`` queues a step; the
    first pending step fires once ``prompt`` has been heard for two frames (40 ms), in line time, and its
    actions (Keys, Say, Pause, HangUp) start at once. ``act(*actions)``: the far end acts now.

    PstnLine has no public hook for a far end that acts during a call (only the script given when the call
    starts), so this reaches into its queue of exchange audio and its current program."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._steps: deque[tuple[str, tuple]] = deque()
        self._run = 0
        self._onset = False  # after a step fired, the next one waits for its prompt to start anew
        self.fired: list[tuple[float, str]] = []  # (line time, prompt) of every step that fired

    def when_heard(self, prompt: str, *actions) -> None:
        assert prompt in FREQ, prompt
        with self._lock:
            self._steps.append((prompt, actions))

    def act(self, *actions) -> None:
        with self._lock:
            self._act(actions)

    def step(self, upstream: np.ndarray | None = None) -> LineFrame:
        frame = super().step(upstream)
        with self._lock:
            if self._steps and self._off_hook:
                prompt, actions = self._steps[0]
                matches = frame_labels(frame.upstream) == [prompt]
                self._onset = self._onset and matches
                self._run = self._run + 1 if matches and not self._onset else 0
                if self._run >= 2:
                    self._steps.popleft()
                    self._run, self._onset = 0, True
                    self.fired.append((round(self.t, 2), prompt))
                    self._act(actions)
        return frame

    def _act(self, actions) -> None:
        for action in actions:
            if isinstance(action, Keys):
                self._queue.append(dtmf_sequence(action.digits, action.on_ms, action.off_ms))
            elif isinstance(action, Say):
                self._queue.append(speech_like(action.seconds, self._rng))
            elif isinstance(action, Pause):
                self._queue.append(np.zeros(int(action.seconds * RATE)))
            elif isinstance(action, HangUp):  # once what it queued before was heard
                if self._program is not None:
                    self._program.close()
                self._program, self._wait = self._hang_up_when_done(), None
            else:
                raise TypeError(f"unknown far-end action {action!r}")

    def _hang_up_when_done(self):
        yield from self._play(np.zeros(1))
        yield from self._far_end_cleared()


# ------------------------------------------------------------------------------------------ the gateway
class Watch:
    """Every event of the bus with the line time it arrived at; ``until`` waits for the next match."""

    def __init__(self, bus: EventBus, line: PstnLine) -> None:
        self.sub = bus.subscribe()
        self.line = line
        self.events: list[tuple[float, object]] = []
        self._cursor = 0
        self._changed = trio.Event()

    async def collect(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for event in self.sub:
            self.events.append((self.line.t, event))
            self._changed.set()
            self._changed = trio.Event()

    async def until(self, type_: str, within: float = 15.0, *, after: int | None = None, **match) -> dict:
        """The next matching event after the last one returned (or after index ``after``)."""
        if after is not None:
            self._cursor = after
        with trio.fail_after(within):
            while True:
                for i in range(self._cursor, len(self.events)):
                    event = self.events[i][1]
                    if event.type == type_ and all(event.data.get(k) == v for k, v in match.items()):
                        self._cursor = i + 1
                        return event.data
                self._cursor = len(self.events)
                await self._changed.wait()

    def of(self, type_: str, **match) -> list[dict]:
        return [
            e.data
            for _, e in self.events
            if e.type == type_ and all(e.data.get(k) == v for k, v in match.items())
        ]

    def time_of(self, type_: str, **match) -> float:
        return next(
            t for t, e in self.events if e.type == type_ and all(e.data.get(k) == v for k, v in match.items())
        )


class Gw:
    def __init__(self, **parts) -> None:
        self.__dict__.update(parts)

    async def walk_done(self, call_id: str, after: int = 0) -> None:
        """Wait for the session's last ``ivr.node`` (next: null)."""
        await self.watch.until("ivr.node", after=after, call_id=call_id, next=None)

    async def call_in(
        self, within: float = 20.0, cid: str | None = None, tree_hangs_up: bool = True
    ) -> tuple[str, dict]:
        """Ring the line (caller ID: the country's, else ``cid``); returns the call id and its ``call.ended``
        data once the line is idle again."""
        self.line.incoming_call(Caller(CALLER, cid=cid))
        answered = await self.watch.until("call.answered", within=within)
        mark = self.watch._cursor
        ended = await self.watch.until("call.ended", within=within, call_id=answered["call_id"])
        await self.watch.until("line.state_changed", within=within, after=mark, new="idle")  # may come first
        if tree_hangs_up:  # session events and call events are fanned out in separate batches
            await self.walk_done(answered["call_id"], after=mark)
        return answered["call_id"], ended


@asynccontextmanager
async def ivr_gateway(
    tmp_path: Path,
    tree: str,
    *,
    line: ListeningLine | None = None,
    clock=None,
    positions: tuple[str, ...] = (),
    headset: str | None = None,
    http=None,
    paced: bool = False,
):
    """``paced``: the box delivers a frame every 20 ms of real time, as a real one does (else as fast as the
    driver reads, many times faster)."""
    prompts = tmp_path / "prompts"
    await trio.to_thread.run_sync(write_prompts, prompts)
    line = line or ListeningLine("jp", polarity_reversal_on_answer=True)
    backend = make_box(line, paced=paced)
    box = UsbVoiceBox("line1", backend=backend, tones="jp", reconnect_backoff=BACKOFF, audio_queue=500)
    voice_settings = VoiceSettings(
        lines=[LineSettings(name="line1", driver="usb_box", auto_answer_rings=1, headset_position=headset)],
        prompts_dir=prompts,
        recordings_dir=tmp_path / "rec",
        dialtone_timeout_s=5.0,
        no_answer_timeout_s=6.0,
        clear_s=0.6,
    )
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    try:
        bus = await EventBus.open(store)
        queues = QueueManager(positions, publish=bus.publish)
        settings = IvrSettings(prompts_dir=prompts, recordings_dir=tmp_path / "vm", positions=list(positions))
        ivr = IvrService(
            store,
            publish=bus.publish,
            settings=settings,
            http=http,
            queues=queues,
            clock=clock or (lambda: FRIDAY_10),
        )
        await ivr.start()
        await publish(ivr, tree)
        voice = VoiceService(
            store, bus, {"line1": UsbBoxLine(box)}, voice_settings, on_answer=ivr.start_session
        )
        watch = Watch(bus, line)
        gw = Gw(line=line, box=backend.box, voice=voice, ivr=ivr, queues=queues, store=store, watch=watch)
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.collect)
            await nursery.start(voice.run)
            await watch.until("line.state_changed", new="idle")
            yield gw
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def publish(ivr: IvrService, tree: str) -> int:
    _, problems = await ivr.put_draft(tree, "test")
    assert [str(p) for p in problems if p.severity == "error"] == []
    return (await ivr.publish("test")).revision


def node_walk(watch: Watch, call_id: str) -> list[tuple]:
    return [(e["node"], e["input"], e["next"]) for e in watch.of("ivr.node", call_id=call_id)]


HEAD = """\
version: 1
entry: {entry}
timezone: Asia/Tokyo
languages: [{languages}]
default_language: en
nodes:
"""


def tree(nodes: str, *, entry: str = "start", languages: str = "en", extra: str = "") -> str:
    return (
        extra + HEAD.format(entry=entry, languages=languages) + textwrap.indent(textwrap.dedent(nodes), "  ")
    )


# ------------------------------------------------------------------------------------------ a fake CRM
class FakeCrm:
    """An HTTP/1.1 server on loopback answering every POST with ``reply`` (status, JSON body)."""

    def __init__(self, status: int = 200, reply: dict | None = None) -> None:
        self.status, self.reply = status, reply or {}
        self.requests: list[dict] = []
        self.url = ""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/ivr/lookup"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        while len(body) < length:
            body += await stream.receive_some(65536)
        self.requests.append(json.loads(body))
        payload = json.dumps(self.reply).encode()
        await stream.send_all(
            f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await stream.aclose()


# ================================================================================================ tests
LOOKUP = """
    start: {type: play, prompts: [en/welcome, en/hours], interrupt_keys: ["1", "2"], next: main}
    main:
      type: menu
      greeting: en/menu
      options: {"1": patient, "2": bye}
      first_digit_timeout: 5
      tries: 2
      on_failure: sorry
    patient:
      type: menu
      greeting: en/enter_number
      collect: {min_digits: 3, max_digits: 6, terminator: "#", store_as: patient_number, next: lookup}
      first_digit_timeout: 5
      inter_digit_timeout: 3
      tries: 2
      on_failure: sorry
    lookup:
      type: webhook
      url: "{url}"
      send: [patient_number, caller_number]
      store: {patient_name: name}
      branch_on: result
      branches: {found: confirm, missing: not_found}
      default: not_found
      on_error: crm_down
      timeout: 3
    confirm:
      type: say
      items: [{prompt: en/number_is}, {var: patient_number, as: digits}]
      next: mark
    mark: {type: set, variables: {verified: true}, next: done}
    done: {type: goto, target: bye}
    bye: {type: hangup, prompt: en/goodbye}
    sorry: {type: hangup, prompt: en/sorry}
    not_found: {type: hangup, prompt: en/not_found}
    crm_down: {type: hangup, prompt: en/crm_down}
"""


@pytest.mark.parametrize(
    ("status", "reply", "branch", "ending"),
    [
        (
            200,
            {"result": "found", "name": "Yamada Taro"},
            "found",
            ["en/number_is", "say/en/4", "say/en/0", "say/en/7", "say/en/1", "en/goodbye"],
        ),
        (200, {"result": "missing"}, "missing", ["en/not_found"]),
        (500, {"error": "down"}, "error", ["en/crm_down"]),
    ],
)
async def test_play_interrupt_menu_digits_webhook_say_set_goto_hangup(
    tmp_path, status, reply, branch, ending
):
    crm = FakeCrm(status, reply)
    async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
        await nursery.start(crm.serve)
        text = tree(LOOKUP.replace("{url}", crm.url))
        async with ivr_gateway(tmp_path, text, http=http) as gw:
            gw.line.when_heard("en/welcome", Keys("1"))  # skips the rest of the welcome and the menu
            gw.line.when_heard("en/enter_number", Keys("4071#"))
            call_id, ended = await gw.call_in()
            call = gw.voice.get_active(call_id)
        nursery.cancel_scope.cancel()

    # what the caller heard: the welcome (cut by the key), not the hours nor the menu (type-ahead)
    assert heard(gw.line) == ["en/welcome", "en/enter_number", *ending]
    entered = gw.watch.of("ivr.entered", call_id=call_id)
    assert entered == [
        {
            "call_id": call_id,
            "entry": "start",
            "revision": 1,
            "language": "en",
            "direction": "in",
            "line": "line1",
        }
    ]
    next_after = {"found": "confirm", "missing": "not_found", "error": "crm_down"}[branch]
    walk = node_walk(gw.watch, call_id)
    assert walk[:4] == [
        ("start", "1", "main"),
        ("main", "1", "patient"),
        ("patient", "4071", "lookup"),
        ("lookup", branch, next_after),
    ]
    assert crm.requests == [
        {
            "call_id": call_id,
            "node": "lookup",
            "line": "line1",
            "vars": {"patient_number": "4071", "caller_number": "+81312345678"},
        }
    ]
    if branch == "found":
        assert walk[4:] == [
            ("confirm", None, "mark"),
            ("mark", None, "done"),
            ("done", None, "bye"),
            ("bye", None, None),
        ]
        assert call.vars["patient_name"] == "Yamada Taro" and call.vars["verified"] is True
    else:
        assert walk[4:] == [(next_after, None, None)]
    assert gw.watch.of("ivr.input_invalid") == []
    assert ended["cause"] == "normal"  # the tree hung up
    assert [d["digit"] for d in gw.watch.of("call.dtmf", call_id=call_id)] == list("14071#")


MENU = """
    start:
      type: menu
      greeting: en/menu
      short_greeting: en/menu_short
      options: {"1": info, "2": bye}
      first_digit_timeout: 1.0
      tries: 3
      invalid_prompt: en/invalid
      timeout_prompt: en/no_input
      on_failure: sorry
    info: {type: play, prompts: [en/hours], next: bye}
    bye: {type: hangup, prompt: en/goodbye}
    sorry: {type: hangup, prompt: en/sorry}
"""


async def test_menu_timeout_then_invalid_then_valid_tries_counted_over_both(tmp_path):
    async with ivr_gateway(tmp_path, tree(MENU)) as gw:
        gw.line.when_heard("en/no_input")  # the caller let the first-digit timeout pass...
        gw.line.when_heard("en/menu_short", Keys("9"))  # ...then presses a key the menu does not have
        gw.line.when_heard("en/invalid")
        gw.line.when_heard("en/menu_short", Keys("1"))  # third try: valid
        call_id, ended = await gw.call_in()

    assert heard(gw.line) == [
        "en/menu",
        "en/no_input",
        "en/menu_short",
        "en/invalid",
        "en/menu_short",
        "en/hours",
        "en/goodbye",
    ]
    invalid = gw.watch.of("ivr.input_invalid", call_id=call_id)
    assert [(e["node"], e["reason"], e["input"], e["attempt"]) for e in invalid] == [
        ("start", "timeout", None, 1),
        ("start", "invalid", "9", 2),
    ]
    assert gw.watch.of("ivr.exhausted") == []
    assert node_walk(gw.watch, call_id) == [
        ("start", "1", "info"),
        ("info", None, "bye"),
        ("bye", None, None),
    ]
    assert ended["cause"] == "normal"


async def test_menu_tries_exhausted_by_timeouts_and_an_invalid_key(tmp_path):
    async with ivr_gateway(tmp_path, tree(MENU)) as gw:
        gw.line.when_heard("en/no_input")
        gw.line.when_heard("en/menu_short", Keys("8"))  # then nothing again: the third try times out
        call_id, _ = await gw.call_in()

    assert heard(gw.line) == [
        "en/menu",
        "en/no_input",
        "en/menu_short",
        "en/invalid",
        "en/menu_short",
        "en/sorry",
    ]
    invalid = gw.watch.of("ivr.input_invalid", call_id=call_id)
    assert [(e["reason"], e["attempt"]) for e in invalid] == [("timeout", 1), ("invalid", 2), ("timeout", 3)]
    assert gw.watch.of("ivr.exhausted", call_id=call_id) == [
        {"call_id": call_id, "node": "start", "reason": "tries", "next": "sorry"}
    ]
    # the sorry prompt came after the exhaustion was announced, in line time
    assert node_walk(gw.watch, call_id) == [("start", None, "sorry"), ("sorry", None, None)]


async def test_language_node_switches_the_prompts_of_the_call(tmp_path):
    text = tree(
        """
        start: {type: language, prompt: common/language, options: {"1": en, "2": ja}, timeout: 5, next: bye}
        bye: {type: hangup, prompt: "{lang}/goodbye"}
        """,
        languages="en, ja",
    )
    async with ivr_gateway(tmp_path, text) as gw:
        gw.line.when_heard("common/language", Keys("2"))
        call_id, _ = await gw.call_in()
    assert heard(gw.line) == ["common/language", "ja/goodbye"]
    assert node_walk(gw.watch, call_id) == [("start", "2", "bye"), ("bye", None, None)]
    assert gw.watch.of("ivr.entered")[0]["language"] == "en"  # the default until the caller chose


SCHEDULE = """
schedules:
  outpatient:
    weekly: {mon: ["09:00-17:00"], tue: ["09:00-17:00"], wed: ["09:00-17:00"], thu: ["09:00-17:00"],
             fri: ["09:00-17:00"]}
    holidays: [{date: 2026-12-29, until: 2027-01-03, name: year end}]
"""


async def test_schedule_at_the_opening_and_closing_boundaries_in_tokyo(tmp_path):
    text = tree(
        """
        start: {type: schedule, schedule: outpatient, open: open, closed: closed, holiday: holiday}
        open: {type: hangup, prompt: en/open}
        closed: {type: hangup, prompt: en/closed}
        holiday: {type: hangup, prompt: en/holiday}
        """,
        extra=SCHEDULE,
    )
    instants = [
        dt.datetime(2026, 11, 27, 8, 59, 59, tzinfo=TOKYO),  # Friday, a second before opening
        dt.datetime(2026, 11, 27, 9, 0, 0, tzinfo=TOKYO),  # opening
        dt.datetime(2026, 11, 27, 7, 59, 59, tzinfo=dt.UTC),  # 16:59:59 in Tokyo: still open
        dt.datetime(2026, 11, 27, 8, 0, 0, tzinfo=dt.UTC),  # 17:00 in Tokyo: closed
        dt.datetime(2026, 12, 29, 10, 0, 0, tzinfo=TOKYO),  # a Tuesday in the year-end holidays
    ]
    now = [instants[0]]
    async with ivr_gateway(tmp_path, text, clock=lambda: now[0]) as gw:
        calls = []
        for instant in instants:
            now[0] = instant
            calls.append((await gw.call_in())[0])

    states = [node_walk(gw.watch, c)[0][1] for c in calls]
    assert states == ["closed", "open", "open", "closed", "holiday"]
    assert heard(gw.line) == ["en/closed", "en/open", "en/closed", "en/holiday"]  # 2 x open: 1 run
    assert [len(heard_in_call(gw, c)) for c in calls] == [1, 1, 1, 1, 1]


def heard_in_call(gw: Gw, call_id: str) -> list[str]:
    """What the line heard between this call's ivr.entered and its call.ended (line time of arrival)."""
    start = gw.watch.time_of("call.answered", call_id=call_id)
    end = gw.watch.time_of("call.ended", call_id=call_id)
    return heard_in(line_audio_between(gw.line, start, end))


def line_audio_between(line: PstnLine, start: float, end: float) -> np.ndarray:
    """Upstream audio between two line times (the line keeps it only while off hook: map through the hook
    records)."""
    audio = line.upstream_audio()
    periods: list[tuple[float, float]] = []
    off: float | None = None
    for record in line.records:
        if record.kind == "hook" and record.detail == "off":
            off = record.t
        elif record.kind == "hook" and record.detail == "on" and off is not None:
            periods.append((off, record.t))
            off = None
    if off is not None:
        periods.append((off, line.t))
    parts, index = [], 0
    for a, b in periods:
        n = int(round((b - a) * RATE))
        lo, hi = max(a, start), min(b, end)
        if hi > lo:
            parts.append(audio[index + int((lo - a) * RATE) : index + int((hi - a) * RATE)])
        index += n
    return np.concatenate(parts) if parts else np.zeros(0)


QUEUE = """
    start:
      type: queue
      positions: [pos1, pos2]
      hold_playlist: [en/hold]
      max_wait: 20
      on_overflow: sorry
    sorry: {type: hangup, prompt: en/sorry}
"""


async def test_queue_caller_holds_for_the_lines_headset_then_is_bridged(tmp_path):
    async with ivr_gateway(tmp_path, tree(QUEUE), positions=("pos1", "pos2"), headset="pos1") as gw:
        # pos2 is staffed but wired to another box: this line's caller cannot reach it; pos1 (this line's
        # headset) is away, so the caller waits on hold, hearing the hold content, until it is staffed.
        gw.queues.set_ready("pos2")
        gw.line.incoming_call(Caller(CALLER))
        joined = await gw.watch.until("queue.joined")
        call_id = joined["call_id"]
        await trio.sleep(1.0)
        assert not gw.watch.of("queue.left", call_id=call_id)
        gw.queues.set_ready("pos1")
        left = await gw.watch.until("queue.left", call_id=call_id)
        assert gw.queues.positions["pos1"].state == "busy"
        assert gw.queues.snapshot()["positions"][0] == {"id": "pos1", "state": "busy", "call_id": call_id}
        gw.queues.set_away("pos1")  # the operator will go away once this call ends
        gw.line.act(Say(0.5), HangUp())  # the patient talks to the operator, then hangs up
        ended = await gw.watch.until("call.ended", call_id=call_id)
        await gw.walk_done(call_id)

    assert joined == {"call_id": call_id, "queue": "start", "priority": 0, "place": 1}
    assert left["result"] == "answered" and left["position"] == "pos1" and left["waited_s"] >= 1.0
    assert "en/hold" in heard_in_call(gw, call_id)  # the hold content played while the caller waited
    assert ("route", "headset") in gw.box.commands
    assert gw.voice.get_active(call_id).bridged_to == "pos1"
    assert node_walk(gw.watch, call_id) == [("start", "answered", None)]
    assert ended["cause"] == "far_end_busy"
    assert gw.queues.positions["pos1"].state == "away"  # away after the call, as asked during it


SURVEY = """
    followup:
      type: survey
      survey: discharge-followup
      revision: 4
      intro: en/survey_intro
      questions:
        - id: better
          text: Are you feeling better? Yes, 1. No, 2.
          prompt: en/q1
          keys: {"1": "yes", "2": "no"}
        - id: rating
          text: Rate our care from 1 to 5, then press hash.
          prompt: en/q2
          range: {min: 1, max: 5}
      timeout: 5
      tries: 2
      invalid_prompt: en/invalid
      next: bye
    bye: {type: hangup, prompt: en/goodbye}
"""


async def test_survey_on_an_outbound_call(tmp_path):
    async with ivr_gateway(tmp_path, tree(SURVEY, entry="followup")) as gw:
        gw.line.expect_outgoing("answer", answer_after_rings=1)
        gw.line.when_heard("en/q1", Keys("1"))
        gw.line.when_heard("en/q2", Keys("7#"))  # out of range
        gw.line.when_heard("en/q2", Keys("4#"))
        call = await gw.voice.dial(["03-1111-1111"], ivr_entry="followup")
        answered = await gw.watch.until("call.answered", call_id=call.id)
        completed = await gw.watch.until("survey.completed", call_id=call.id)
        ended = await gw.watch.until("call.ended", call_id=call.id)
        await gw.walk_done(call.id)
        stored = await gw.ivr.answers_for_call(call.id)

    assert answered["answered_by"] == "polarity"
    entered = gw.watch.of("ivr.entered", call_id=call.id)[0]
    assert entered["entry"] == "followup" and entered["direction"] == "out"
    assert heard(gw.line) == ["en/survey_intro", "en/q1", "en/q2", "en/invalid", "en/q2", "en/goodbye"]
    invalid = gw.watch.of("ivr.input_invalid", call_id=call.id)
    assert [(e["question"], e["reason"], e["input"], e["attempt"]) for e in invalid] == [
        ("rating", "invalid", "7", 1)
    ]
    answers = gw.watch.of("survey.answered", call_id=call.id)
    assert [
        (a["question"], a["answer"], a["text"], a["survey_revision"], a["tree_revision"]) for a in answers
    ] == [
        ("better", "yes", "Are you feeling better? Yes, 1. No, 2.", 4, 1),
        ("rating", "4", "Rate our care from 1 to 5, then press hash.", 4, 1),
    ]
    assert completed["answers"] == {"better": "yes", "rating": "4"} and completed["answered"] == 2
    assert [(r["question"], r["text"], r["answer"], r["survey_revision"]) for r in stored] == [
        ("better", "Are you feeling better? Yes, 1. No, 2.", "yes", 4),
        ("rating", "Rate our care from 1 to 5, then press hash.", "4", 4),
    ]
    assert ended["cause"] == "normal"


RECORD = """
    start: {type: play, prompts: [en/leave_message], next: vm}
    vm:
      type: record
      mailbox: patient-relations
      max_length: 20
      silence_end: 1.0
      finish_keys: ["#"]
      next: bye
    bye: {type: hangup, prompt: en/goodbye}
"""


def _speech_seconds(path: Path) -> tuple[float, float]:
    samples, rate = read_recording(path)
    frames = samples[: samples.size // FRAME * FRAME].reshape(-1, FRAME)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 10 ** (-40 / 20)
    return samples.size / rate, loud.sum() * FRAME / rate


# Voicemail on the paced box: on the unpaced one the line outruns the recorder by far and the call's audio tap
# drops frames (it keeps 5 s of line audio, plenty at the real 20 ms frame clock), so the file would be short.
@pytest.mark.slow  # about 7 s: the NTT caller-ID handshake, prompt, beep and message in real time
async def test_voicemail_the_caller_speaks_then_hangs_up(tmp_path):
    async with ivr_gateway(tmp_path, tree(RECORD), paced=True) as gw:
        gw.line.when_heard(BEEP, Pause(0.5), Say(2.0), HangUp())
        call_id, ended = await gw.call_in(tree_hangs_up=False)
        ready = await gw.watch.until("voicemail.ready", after=0, call_id=call_id)  # may precede call.ended

    assert heard(gw.line) == ["en/leave_message", BEEP]  # no goodbye: the caller had gone
    assert ready["mailbox"] == "patient-relations" and ready["caller"] == "+81312345678"
    assert ready["tree_revision"] == 1 and ready["vars"]["caller_number"] == "+81312345678"
    path = Path(ready["path"])
    assert path.parent == tmp_path / "vm" / "patient-relations"
    total, speech = await trio.to_thread.run_sync(_speech_seconds, path)
    assert speech >= 0.8  # the message itself is in the file (speech_like has syllable gaps)
    assert ready["seconds"] == pytest.approx(total, abs=0.05)
    assert ended["cause"] == "far_end_busy"
    # the recording ended with the call: the session saw the caller gone in the record node or at the next one
    walk = node_walk(gw.watch, call_id)
    assert walk[0] == ("start", None, "vm") and walk[1:] in ([], [("vm", None, "bye")])


async def test_voicemail_ended_by_the_finish_key_or_silence_then_the_tree_goes_on(tmp_path):
    finish_keys = "finish_keys" in inspect.signature(Call.record).parameters
    async with ivr_gateway(tmp_path, tree(RECORD), paced=True) as gw:
        gw.line.when_heard(BEEP, Pause(0.5), Say(2.0), Keys("#"))
        call_id, ended = await gw.call_in(cid="none")

    ready = gw.watch.of("voicemail.ready", call_id=call_id)[0]
    assert heard(gw.line) == ["en/leave_message", BEEP, "en/goodbye"]
    assert node_walk(gw.watch, call_id) == [("start", None, "vm"), ("vm", None, "bye"), ("bye", None, None)]
    total, speech = await trio.to_thread.run_sync(_speech_seconds, Path(ready["path"]))
    assert speech >= 0.8
    if finish_keys:  # the key ended it, before the 1 s of silence would have
        assert total < 0.1 + 2.0 + 0.9
    else:  # the voice engineer's Call.record has no finish keys yet: one second of silence ended it
        assert total >= 0.1 + 2.0 + 1.0
    assert ended["cause"] == "normal"


PUBLISHED_1 = """
    start:
      type: menu
      greeting: en/menu
      options: {"1": bye}
      first_digit_timeout: 20
      on_failure: bye
    bye: {type: hangup, prompt: en/goodbye}
"""
PUBLISHED_2 = """
    start:
      type: menu
      greeting: en/menu_v2
      options: {"1": farewell}
      first_digit_timeout: 20
      on_failure: farewell
    farewell: {type: hangup, prompt: en/sorry}
"""


async def test_publish_during_a_live_call_keeps_its_revision(tmp_path):
    async with ivr_gateway(tmp_path, tree(PUBLISHED_1)) as gw:
        gw.line.incoming_call(Caller(CALLER))
        entered = await gw.watch.until("ivr.entered")
        first = entered["call_id"]
        mark = gw.watch._cursor
        assert entered["revision"] == 1
        assert await publish(gw.ivr, tree(PUBLISHED_2)) == 2  # while the caller listens to revision 1's menu
        published = await gw.watch.until("ivr.published", revision=2)
        gw.line.act(Keys("1"))
        await gw.watch.until("call.ended", call_id=first)
        await gw.walk_done(first, after=mark)
        await gw.watch.until("line.state_changed", after=mark, new="idle")

        gw.line.when_heard("en/menu_v2", Keys("1"))
        second, _ = await gw.call_in()

    assert published["previous"] == 1
    assert node_walk(gw.watch, first) == [("start", "1", "bye"), ("bye", None, None)]
    assert heard_in_call(gw, first) == ["en/menu", "en/goodbye"]
    assert gw.watch.of("ivr.entered", call_id=second)[0]["revision"] == 2
    assert node_walk(gw.watch, second) == [("start", "1", "farewell"), ("farewell", None, None)]
    assert heard_in_call(gw, second) == ["en/menu_v2", "en/sorry"]
