"""IvrSession: every node type on a scripted call with MockClock (prompts from ivr_prompts/)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import structlog
import trio

from gateway.ivr.loader import validate_text
from gateway.ivr.runtime import IvrSession, SessionServices
from tests.unit.ivr_fakes import AnswerRecorder, EventRecorder, FakeCall

PROMPTS = Path(__file__).resolve().parents[2] / "ivr_prompts"
TOKYO = ZoneInfo("Asia/Tokyo")
FRIDAY_10 = dt.datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO)  # a Friday, outpatient reception open

HEAD = """\
version: 1
entry: start
timezone: Asia/Tokyo
languages: [ja, en, zh]
default_language: ja
loop_limit: {loop_limit}
{fallback}
nodes:
"""


def tree_of(nodes: str, *, loop_limit: int = 10, fallback: str = "", extra: str = ""):
    text = HEAD.format(loop_limit=loop_limit, fallback=f"loop_fallback: {fallback}" if fallback else "")
    text = extra + text + textwrap.indent(textwrap.dedent(nodes), "  ")
    result = validate_text(text, prompts_dir=PROMPTS)
    assert result.ok, "\n".join(map(str, result.errors))
    assert result.tree is not None
    return result.tree


def session(tree, call, tmp_path, *, now=FRIDAY_10, http=None, revision=3, **kw):
    events = EventRecorder()
    answers = AnswerRecorder()
    services = SessionServices(
        prompts_dir=PROMPTS,
        publish=events.publish,
        recordings_dir=tmp_path / "rec",
        http=http,
        answers=answers,
    )

    def clock() -> dt.datetime:
        return now + dt.timedelta(seconds=trio.current_time())

    s = IvrSession(tree, revision, call, clock=clock, services=services, **kw)
    return s, events, answers


async def test_play_key_is_type_ahead_for_the_language_node(autojump_clock, tmp_path):
    tree = tree_of("""
        start: {type: play, prompts: ["{lang}/welcome"], interrupt_keys: ["1", "2", "3"], next: lang}
        lang: {type: language, prompt: common/language_select, options: {"1": ja, "2": en}, next: bye}
        bye: {type: hangup, prompt: "{lang}/goodbye"}
    """)
    call = FakeCall(presses=[(0.5, "2")])
    s, events, _ = session(tree, call, tmp_path)
    assert await s.run() == "hangup"
    # the key skipped the welcome and chose English without the language prompt being played
    assert call.played == ["ja/welcome", "en/goodbye"]
    assert call.vars["language"] == "en"
    assert events.types()[0] == "ivr.entered"
    assert events.of("ivr.entered")[0]["revision"] == 3
    assert [(e["node"], e["input"]) for e in events.of("ivr.node")] == [
        ("start", "2"),
        ("lang", "2"),
        ("bye", None),
    ]
    assert call.log[-1][1] == "hangup"


async def test_language_timeout_keeps_current_language(autojump_clock, tmp_path):
    tree = tree_of("""
        start: {type: language, prompt: common/language_select, options: {"3": zh}, timeout: 4, tries: 2,
                next: bye}
        bye: {type: hangup, prompt: "{lang}/goodbye"}
    """)
    call = FakeCall()
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.played == ["common/language_select"] * 2 + ["ja/goodbye"]
    assert [e["reason"] for e in events.of("ivr.input_invalid")] == ["timeout", "timeout"]
    assert trio.current_time() == pytest.approx(2 * (1 + 4) + 1)


MENU = """
    start:
      type: menu
      greeting: "{lang}/main_menu"
      short_greeting: "{lang}/main_menu_short"
      options: {"1": info, "2": bye}
      first_digit_timeout: 5
      tries: 3
      invalid_prompt: "{lang}/invalid"
      timeout_prompt: "{lang}/no_input"
      repeat_key: "*"
      on_failure: sorry
    info: {type: play, prompts: ["{lang}/hours"], next: start}
    bye: {type: hangup, prompt: "{lang}/goodbye"}
    sorry: {type: hangup, prompt: "{lang}/sorry_goodbye"}
"""


async def test_menu_option_then_short_greeting_on_return(autojump_clock, tmp_path):
    tree = tree_of(MENU)
    call = FakeCall(presses=[(0.3, "1"), (2.0, "2")])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.played == ["ja/main_menu", "ja/hours", "ja/main_menu_short", "ja/goodbye"]
    assert [e["next"] for e in events.of("ivr.node")] == ["info", "start", "bye", None]


async def test_menu_counts_invalid_and_timeouts_together(autojump_clock, tmp_path):
    tree = tree_of(MENU)
    # 7 is invalid (t=0.5); then nothing: timeout; "*" repeats (no try used); 9 invalid -> third try -> sorry
    call = FakeCall(presses=[(0.5, "7"), (14.0, "*"), (16.0, "9")])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.played == [
        "ja/main_menu",  # interrupted by 7
        "ja/invalid",
        "ja/main_menu_short",  # then 5 s of silence
        "ja/no_input",
        "ja/main_menu_short",  # * pressed during it: the long greeting again
        "ja/main_menu",  # 9 pressed during it
        "ja/sorry_goodbye",
    ]
    invalid = events.of("ivr.input_invalid")
    assert [(e["reason"], e["input"], e["attempt"]) for e in invalid] == [
        ("invalid", "7", 1),
        ("timeout", None, 2),
        ("invalid", "9", 3),
    ]
    assert events.of("ivr.exhausted") == [
        {"call_id": "call-1", "node": "start", "reason": "tries", "next": "sorry"}
    ]
    # the timeout was the menu's first_digit_timeout, after the short greeting (1 s)
    collects = [t for t, op, _ in call.log if op == "collect"]
    plays = [(t, name) for t, op, name in call.log if op == "play"]
    assert plays[3] == (pytest.approx(collects[0] + 5), "ja/no_input")


COLLECT = """
    start:
      type: menu
      greeting: "{lang}/enter_patient_number"
      collect: {min_digits: 3, max_digits: 6, terminator: "#", store_as: patient_number, next: confirm}
      first_digit_timeout: 8
      inter_digit_timeout: 4
      tries: 2
      invalid_prompt: "{lang}/invalid"
      timeout_prompt: "{lang}/no_input"
      sensitive: {sensitive}
      on_failure: sorry
    confirm:
      type: say
      items:
        - prompt: "{lang}/your_patient_number_is"
        - {var: patient_number, as: digits}
      next: bye
    bye: {type: hangup}
    sorry: {type: hangup, prompt: "{lang}/sorry_goodbye"}
"""


async def test_collect_digits_with_terminator_and_inter_digit_timeout(autojump_clock, tmp_path):
    tree = tree_of(COLLECT.replace("{sensitive}", "false"))
    # "12" then silence: the inter-digit timeout ends it, too short (min 3): invalid; then 4071 + #
    call = FakeCall(presses=[(2.0, "12"), (9.0, "4071#")])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.vars["patient_number"] == "4071"
    assert events.of("ivr.input_invalid")[0]["input"] == "12"
    assert call.played[-5:] == ["ja/your_patient_number_is", "ja/4", "ja/0", "ja/7", "ja/1"]
    assert events.of("ivr.node")[0]["input"] == "4071"


async def test_collect_stops_at_max_digits(autojump_clock, tmp_path):
    tree = tree_of(COLLECT.replace("{sensitive}", "false"))
    call = FakeCall(presses=[(2.0, "1234567")])
    s, _, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.vars["patient_number"] == "123456"


async def test_sensitive_digits_are_redacted_and_never_logged(autojump_clock, tmp_path):
    tree = tree_of(COLLECT.replace("{sensitive}", "true"))
    call = FakeCall(presses=[(2.0, "98#"), (12.0, "987654")])
    s, events, _ = session(tree, call, tmp_path)
    with structlog.testing.capture_logs() as logs:
        await s.run()
    assert call.vars["patient_number"] == "987654"
    published = json.dumps(events.events)
    assert "987654" not in published and '"98"' not in published
    assert events.of("ivr.input_invalid")[0]["input"] == "***"
    assert events.of("ivr.node")[0]["input"] == "***"
    assert "987654" not in repr(logs) and "98" not in repr([e for e in logs if "98" in repr(e.values())])
    assert call.sensitive_seen and all(call.sensitive_seen)  # call.dtmf events suppressed while typing
    assert call.suppress_dtmf_events is False  # and restored after the node


BACK_TOP = """
    start:
      type: menu
      greeting: "{lang}/main_menu"
      short_greeting: "{lang}/main_menu_short"
      options: {"3": info}
      on_failure: bye
    info:
      type: menu
      greeting: "{lang}/info_menu"
      options: {"1": sub}
      back_key: "*"
      top_key: "#"
      repeat_key: "9"
      on_failure: bye
    sub:
      type: menu
      greeting: "{lang}/hours"
      options: {"1": bye}
      back_key: "*"
      top_key: "#"
      on_failure: bye
    bye: {type: hangup}
"""


async def test_back_repeat_and_top_keys(autojump_clock, tmp_path):
    tree = tree_of(BACK_TOP)
    call = FakeCall(
        presses=[(0.5, "3"), (1.5, "9"), (3.0, "1"), (4.5, "*"), (6.0, "1"), (7.5, "#"), (9, "3")]
    )
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    nodes = [(e["node"], e["input"], e["next"]) for e in events.of("ivr.node")]
    assert nodes[:6] == [
        ("start", "3", "info"),
        ("info", "1", "sub"),  # after "9" replayed the info greeting
        ("sub", "*", "info"),  # back
        ("info", "1", "sub"),
        ("sub", "#", "start"),  # top
        ("start", "3", "info"),
    ]
    assert call.played[:3] == ["ja/main_menu", "ja/info_menu", "ja/info_menu"]
    assert "ja/main_menu_short" in call.played  # returning to the top menu


async def test_back_key_without_previous_menu_is_invalid(autojump_clock, tmp_path):
    tree = tree_of(BACK_TOP.replace('options: {"3": info}', 'options: {"3": info}\n      back_key: "*"'))
    call = FakeCall(presses=[(0.5, "*")])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert events.of("ivr.input_invalid")[0]["input"] == "*"


SCHEDULE = """
    start: {type: schedule, schedule: outpatient, open: o, closed: c, holiday: h}
    o: {type: hangup, prompt: "{lang}/main_menu_short"}
    c: {type: hangup, prompt: "{lang}/closed"}
    h: {type: hangup, prompt: "{lang}/holiday"}
"""
SCHEDULES = """\
schedules:
  outpatient:
    weekly: {fri: ["08:30-12:00", "13:00-17:00"], sat: ["08:30-12:00"]}
    holidays: [{date: 2026-11-23}]
    exceptions: [{date: 2026-11-14, hours: ["08:30-12:00", "13:00-16:00"]}]
"""


@pytest.mark.parametrize(
    ("local", "branch"),
    [
        ("2026-11-27T08:29:59", "c"),
        ("2026-11-27T08:30:00", "o"),
        ("2026-11-27T11:59:59", "o"),
        ("2026-11-27T12:00:00", "c"),
        ("2026-11-27T16:59:59", "o"),
        ("2026-11-27T17:00:00", "c"),
        ("2026-11-23T10:00:00", "h"),  # Monday, Labour Thanksgiving Day
        ("2026-11-14T15:59:59", "o"),  # Saturday exception: afternoon hours
        ("2026-11-14T16:00:00", "c"),
        ("2026-11-28T13:00:00", "c"),  # ordinary Saturday afternoon
    ],
)
async def test_schedule_at_boundary_times(autojump_clock, tmp_path, local, branch):
    tree = tree_of(SCHEDULE, extra=SCHEDULES)
    now = dt.datetime.fromisoformat(local).replace(tzinfo=TOKYO).astimezone(dt.UTC)  # the clock gives UTC
    call = FakeCall()
    s, events, _ = session(tree, call, tmp_path, now=now)
    await s.run()
    assert events.of("ivr.node")[0]["next"] == branch


async def test_schedule_follows_the_clock_during_the_call(autojump_clock, tmp_path):
    # reached 2 s after 08:29:59 (the welcome plays 1 s + prompt) -> open
    tree = tree_of(
        '    start: {type: play, prompts: ["{lang}/welcome"], next: sched}\n'
        + SCHEDULE.replace("start:", "sched:"),
        extra=SCHEDULES,
    )
    call = FakeCall()
    s, events, _ = session(tree, call, tmp_path, now=dt.datetime(2026, 11, 27, 8, 29, 59, 500000, TOKYO))
    await s.run()
    assert events.of("ivr.node")[1]["input"] == "open"


@pytest.mark.parametrize(
    ("lang", "kind", "value", "spoken"),
    [
        ("ja", "number", 3456, ["3000", "4", "100", "5", "10", "6"]),
        ("ja", "number", 300, ["300"]),
        ("zh", "number", 1005, ["1", "1000", "0", "5"]),
        ("zh", "number", 12, ["10", "2"]),
        ("en", "number", 215, ["2", "100", "15"]),
        ("en", "digits", "0719", ["0", "7", "1", "9"]),
    ],
)
async def test_say_numbers_and_digits_per_language(autojump_clock, tmp_path, lang, kind, value, spoken):
    tree = tree_of(f"""
        start: {{type: set, variables: {{language: {lang}}}, next: s}}
        s:
          type: say
          items:
            - {{prompt: "{{lang}}/wait_before"}}
            - {{var: v, as: {kind}}}
            - {{prompt: "{{lang}}/wait_after"}}
          next: bye
        bye: {{type: hangup}}
        never: {{type: set, variables: {{v: 1}}, next: bye}}
    """)
    call = FakeCall(vars={"v": value})
    s, _, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.played == [f"{lang}/wait_before", *[f"{lang}/{n}" for n in spoken], f"{lang}/wait_after"]


SURVEY = """
    start:
      type: survey
      survey: outpatient-satisfaction
      revision: 2
      intro: "{lang}/survey_intro"
      questions:
        - id: satisfied
          text: {ja: ご満足いただけましたか。, en: Were you satisfied?}
          prompt: "{lang}/survey_q1"
          keys: {"1": "yes", "2": "no"}
        - id: rating
          text: Rate us from 1 to 5.
          prompt: "{lang}/survey_q2"
          range: {min: 1, max: 5}
        - id: again
          text: Would you come again?
          prompt: "{lang}/survey_q1"
          keys: {"1": "yes"}
      timeout: 5
      tries: 2
      invalid_prompt: "{lang}/invalid"
      next: bye
    bye: {type: hangup, prompt: "{lang}/goodbye"}
"""


async def test_survey_stores_answers_with_text_and_revisions(autojump_clock, tmp_path):
    tree = tree_of(SURVEY)
    # q1: 7 invalid, then 2 (no); q2: "9#" out of range, then "4#"; q3: two timeouts -> no answer
    call = FakeCall(presses=[(1.5, "7"), (3.5, "2"), (4.5, "9#"), (7.0, "4#")])
    s, events, answers = session(tree, call, tmp_path, revision=7)
    await s.run()
    got = [(a.question_id, a.answer, a.question_text) for a in answers.answers]
    assert got == [
        ("satisfied", "no", "ご満足いただけましたか。"),
        ("rating", "4", "Rate us from 1 to 5."),
        ("again", None, "Would you come again?"),
    ]
    assert {(a.survey, a.survey_revision, a.tree_revision) for a in answers.answers} == {
        ("outpatient-satisfaction", 2, 7)
    }
    done = events.of("survey.completed")[0]
    assert done["answers"] == {"satisfied": "no", "rating": "4", "again": None}
    assert (done["answered"], done["questions"]) == (2, 3)
    assert [e.get("question") for e in events.of("ivr.input_invalid")] == [
        "satisfied",
        "rating",
        "again",
        "again",
    ]
    assert call.played[-1] == "ja/goodbye"


async def test_survey_from_an_outbound_call_starts_at_the_entry_node(autojump_clock, tmp_path):
    tree = tree_of("    start: {type: hangup}\n" + SURVEY.replace("start:", "followup:"))
    call = FakeCall(presses=[(1.5, "1"), (2.5, "5")], direction="out")
    s, events, answers = session(tree, call, tmp_path, entry="followup")
    await s.run()
    assert [a.answer for a in answers.answers] == ["yes", "5", None]
    assert events.of("ivr.entered")[0]["entry"] == "followup"


async def test_record_voicemail(autojump_clock, tmp_path):
    tree = tree_of("""
        start: {type: set, variables: {callback_requested: true}, next: vm}
        vm:
          type: record
          prompt: "{lang}/voicemail"
          max_length: 60
          silence_end: 4
          mailbox: patient-relations
          next: thanks
        thanks: {type: hangup, prompt: "{lang}/voicemail_thanks"}
    """)
    call = FakeCall()
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    (_, _, (path, max_s, silence, beep)) = next(entry for entry in call.log if entry[1] == "record")
    assert (max_s, silence, beep) == (60, 4, True)
    assert Path(path).parent == tmp_path / "rec" / "patient-relations" and await trio.Path(path).exists()
    ready = events.of("voicemail.ready")[0]
    assert ready["path"] == path and ready["seconds"] == 7.5 and ready["mailbox"] == "patient-relations"
    assert ready["vars"]["callback_requested"] is True and ready["caller"] == "+81312345678"
    assert call.played == ["ja/voicemail", "ja/voicemail_thanks"]


async def test_loop_guard_sends_the_call_to_the_fallback(autojump_clock, tmp_path):
    tree = tree_of(MENU.replace('"2": bye', '"2": bye, "3": start'), loop_limit=3, fallback="sorry")
    call = FakeCall(presses=[(t, "3") for t in (0.5, 2.5, 4.5, 6.5)])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert events.of("ivr.exhausted") == [
        {"call_id": "call-1", "node": "start", "reason": "loop_limit", "next": "sorry"}
    ]
    assert call.played[-1] == "ja/sorry_goodbye"
    assert [e["node"] for e in events.of("ivr.node")] == ["start", "start", "start", "sorry"]


async def test_loop_guard_without_fallback_hangs_up(autojump_clock, tmp_path):
    tree = tree_of(MENU.replace('"2": bye', '"2": bye, "3": start'), loop_limit=2)
    call = FakeCall(presses=[(t, "3") for t in (0.5, 2.5, 4.5)])
    s, events, _ = session(tree, call, tmp_path)
    assert await s.run() == "hangup"
    assert call.log[-1][1] == "hangup" and events.of("ivr.exhausted")[0]["next"] is None


async def test_goto_set_and_caller_hangup_mid_menu(autojump_clock, tmp_path):
    head = (
        "    start: {type: goto, target: setter}\n"
        "    setter: {type: set, variables: {queue_reason: billing}, next: menu}\n"
    )
    tree = tree_of(head + MENU.replace("start:", "menu:").replace("next: start", "next: menu"))
    call = FakeCall(hangup_at=3.0)
    s, events, _ = session(tree, call, tmp_path)
    assert await s.run() == "caller_hangup"
    assert call.vars["queue_reason"] == "billing"
    assert [e["node"] for e in events.of("ivr.node")] == ["start", "setter"]
    assert all(op != "hangup" for _, op, _ in call.log)


async def test_queue_node_without_a_queue_manager_overflows(autojump_clock, tmp_path):
    tree = tree_of("""
        start:
          type: queue
          positions: [headset-1]
          hold_playlist: ["{lang}/lecture_salt"]
          on_overflow: bye
        bye: {type: hangup, prompt: "{lang}/goodbye"}
    """)
    call = FakeCall()
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert events.of("ivr.node")[0]["input"] == "no_position" and call.played == ["ja/goodbye"]


# ------------------------------------------------------------------------------ webhook (real sockets)
class FakeCrm:
    """A minimal HTTP/1.1 server on loopback: answers with (status, body, delay) per request."""

    def __init__(self, status: int = 200, body: bytes = b'{"result": "found"}', delay: float = 0.0):
        self.status, self.body, self.delay = status, body, delay
        self.requests: list[tuple[str, bytes]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive_some(65536)
        self.requests.append((head.split(b"\r\n")[0].decode(), body))
        await trio.sleep(self.delay)
        reply = (
            f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        ).encode() + self.body
        await stream.send_all(reply)
        await stream.aclose()


WEBHOOK = """
    start:
      type: webhook
      url: {url}
      send: [patient_number, caller_number]
      timeout: 0.5
      store: {{department: department}}
      branches: {{found: ok, not_found: nf}}
      default: dflt
      on_error: err
    ok: {{type: hangup}}
    nf: {{type: hangup}}
    dflt: {{type: hangup}}
    err: {{type: hangup}}
    never: {{type: set, variables: {{patient_number: "1"}}, next: ok}}
"""


@pytest.mark.parametrize(
    ("crm", "branch"),
    [
        (FakeCrm(body=b'{"result": "found", "department": "cardiology"}'), "ok"),
        (FakeCrm(body=b'{"result": "not_found"}'), "nf"),
        (FakeCrm(body=b'{"result": "maybe"}'), "dflt"),
        (FakeCrm(status=500, body=b"{}"), "err"),
        (FakeCrm(body=b"<html>"), "err"),
        (FakeCrm(body=b"[1, 2]"), "err"),
        (FakeCrm(delay=2.0), "err"),  # no answer within 0.5 s
    ],
)
async def test_webhook_branches_on_the_crm_answer(tmp_path, crm, branch):
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, crm.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        tree = tree_of(WEBHOOK.format(url=f"http://127.0.0.1:{port}/ivr/lookup"))
        call = FakeCall(vars={"patient_number": "123456"})
        async with httpx.AsyncClient() as http:
            s, events, _ = session(tree, call, tmp_path, http=http)
            started = trio.current_time()
            await s.run()
        nursery.cancel_scope.cancel()
    assert events.of("ivr.node")[0]["next"] == branch
    assert trio.current_time() - started < 1.5
    line, body = crm.requests[0]
    assert line == "POST /ivr/lookup HTTP/1.1"
    sent = json.loads(body)
    assert sent["vars"] == {"patient_number": "123456", "caller_number": "+81312345678"}
    assert sent["call_id"] == "call-1"
    if branch == "ok":
        assert call.vars["department"] == "cardiology"


async def test_webhook_unreachable_crm_goes_to_on_error(tmp_path):
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tree = tree_of(WEBHOOK.format(url=f"http://127.0.0.1:{port}/x"))
    async with httpx.AsyncClient() as http:
        s, events, _ = session(tree, FakeCall(), tmp_path, http=http)
        await s.run()
    assert events.of("ivr.node")[0]["next"] == "err"


async def test_hospital_tree_walk(autojump_clock, tmp_path):
    from gateway.ivr.loader import load_tree

    tree = load_tree(PROMPTS / "hospital.yaml")
    # English (2 during welcome), open on Friday 10:00, main menu 3 (info), 2 (visiting hours), then the
    # info menu again: # (top) -> main menu short greeting -> 4 survey: 1 and 5#
    call = FakeCall(
        presses=[(0.5, "2"), (1.5, "3"), (2.5, "2"), (5.0, "#"), (6.5, "4"), (8.5, "1"), (9.5, "5#")]
    )
    s, events, answers = session(tree, call, tmp_path)
    assert await s.run() == "hangup"
    nodes = [e["node"] for e in events.of("ivr.node")]
    assert nodes == [
        "welcome",
        "choose_language",
        "opening_hours",
        "main_menu",
        "info_menu",
        "visiting_hours",
        "info_menu",
        "main_menu",
        "satisfaction_survey",
        "goodbye",
    ]
    assert [a.answer for a in answers.answers] == ["yes", "5"]
    assert answers.answers[0].question_text == "Were you satisfied? Yes, 1. No, 2."
    assert call.played[-1] == "en/goodbye"


async def test_digits_typed_during_a_prompt_feed_the_next_collect(autojump_clock, tmp_path):
    tree = tree_of(
        '    start: {type: play, prompts: ["{lang}/welcome"], interrupt_keys: ["1"], next: menu}\n'
        + COLLECT.replace("{sensitive}", "false").replace("start:", "menu:")
    )
    call = FakeCall(presses=[(0.3, "123456#")])
    s, events, _ = session(tree, call, tmp_path)
    await s.run()
    assert call.vars["patient_number"] == "123456"
    assert call.played[:2] == ["ja/welcome", "ja/your_patient_number_is"]  # the greeting was skipped


class SlowJournal:
    """A publish that takes ``commit_s`` (trio time) per event, like group commits queued behind 31 others."""

    def __init__(self, commit_s: float) -> None:
        self.commit_s = commit_s
        self.events: list[tuple[float, str, dict]] = []

    async def publish(self, type_: str, data: dict) -> None:
        await trio.sleep(self.commit_s)
        self.events.append((trio.current_time(), type_, data))


async def test_the_next_prompt_does_not_wait_for_the_journal_and_events_keep_their_order(
    autojump_clock, tmp_path
):
    tree = tree_of("""
        start: {type: menu, greeting: "{lang}/main_menu", options: {"1": info}, tries: 1, on_failure: bye}
        info: {type: play, prompts: ["{lang}/welcome"], next: bye}
        bye: {type: hangup, prompt: "{lang}/goodbye"}
    """)
    call = FakeCall(presses=[(0.5, "1")])
    journal = SlowJournal(commit_s=0.2)
    services = SessionServices(prompts_dir=PROMPTS, publish=journal.publish, recordings_dir=tmp_path / "rec")
    s = IvrSession(tree, 3, call, clock=lambda: FRIDAY_10, services=services)
    assert await s.run() == "hangup"
    plays = [(t, name) for t, kind, name in call.log if kind == "play"]
    key_at = 0.5
    info_started = next(t for t, name in plays if name == "ja/welcome")
    assert info_started - key_at < 0.2  # the prompt started before the menu's ivr.node was committed
    types = [t for _, t, _ in journal.events]
    nodes = [d["node"] for _, t, d in journal.events if t == "ivr.node"]
    assert types[0] == "ivr.entered" and nodes == ["start", "info", "bye"]
    hangup_at = next(t for t, kind, _ in call.log if kind == "hangup")
    assert journal.events[-1][0] <= hangup_at  # every event of the walk is journalled before the hang-up


async def test_events_emitted_before_a_cancelled_walk_still_reach_the_journal(autojump_clock, tmp_path):
    tree = tree_of("""
        start: {type: play, prompts: ["{lang}/welcome"], next: again}
        again: {type: menu, greeting: "{lang}/main_menu", options: {"1": start}, tries: 3, on_failure: bye}
        bye: {type: hangup, prompt: "{lang}/goodbye"}
    """, loop_limit=100)
    journal = SlowJournal(commit_s=0.8)  # slower than the walk: a backlog builds up
    services = SessionServices(prompts_dir=PROMPTS, publish=journal.publish, recordings_dir=tmp_path / "rec")
    call = FakeCall(presses=[(0.5 + i, "1") for i in range(30)])
    s = IvrSession(tree, 3, call, clock=lambda: FRIDAY_10, services=services)
    with trio.move_on_after(10.0):
        await s.run()
    assert s.outcome is None  # cancelled in the middle of the walk
    nodes = [d["node"] for _, t, d in journal.events if t == "ivr.node"]
    assert len(nodes) >= 10 and nodes == ["start", "again"] * (len(nodes) // 2) + ["start"] * (len(nodes) % 2)
    assert journal.events[-1][0] > 10.0  # the last ones were journalled after the cancellation
