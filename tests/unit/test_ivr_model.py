"""IVR tree format: every node type parses, every class of problem is reported at its YAML line:column."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import soundfile

from gateway.ivr.checks import resolve_prompt
from gateway.ivr.loader import IvrError, load_tree, validate_file, validate_text
from gateway.ivr.model import (
    NODE_TYPES,
    IvrTree,
    MenuNode,
    PlayNode,
    Schedule,
    expand_prompt,
    say_fragments_needed,
    tree_graph,
)
from gateway.ivr.schema import SCHEMA_FILE, ivr_json_schema_text

REPO = Path(__file__).resolve().parents[2]
HOSPITAL = REPO / "ivr_prompts" / "hospital.yaml"

# A tree using every node type; positions in the tests are computed from this text, not hand-counted.
EVERY_TYPE = textwrap.dedent(
    """\
    entry: hello
    languages: [ja, en]
    default_language: ja
    loop_fallback: bye
    schedules:
      office:
        timezone: Asia/Tokyo
        weekly:
          mon: ["09:00-12:00", "13:00-17:00"]
          sat: ["09:00-12:00"]
        holidays: [{date: 2026-01-01, until: 2026-01-03, name: New year}]
        exceptions: [{date: 2026-01-10, hours: [], name: inspection}]
    nodes:
      hello:
        type: play
        prompts: ["{lang}/hi"]
        interrupt_keys: ["#"]
        next: pick_language
      pick_language:
        type: language
        prompt: beep
        options: {1: ja, "2": en}
        next: hours
      hours: {type: schedule, schedule: office, open: menu, closed: voicemail, holiday: bye}
      menu:
        type: menu
        greeting: {ja: ja/hi, en: en/hi}
        short_greeting: "{lang}/hi"
        options: {"1": number, "2": queue, "3": survey, "4": lookup, "*": menu_again}
        repeat_key: "9"
        top_key: "0"
        on_failure: bye
      menu_again: {type: goto, target: menu}
      number:
        type: menu
        sensitive: true
        greeting: "{lang}/hi"
        collect: {min_digits: 4, max_digits: 8, terminator: "#", store_as: patient_number, next: readback}
        back_key: "*"
        on_failure: bye
      readback:
        type: say
        items: [{prompt: "{lang}/hi"}, {var: patient_number, as: digits}]
        next: flag
      flag: {type: set, variables: {vip: true, language: en}, next: lookup}
      lookup:
        type: webhook
        url: https://crm.example/ivr
        send: [patient_number, caller_number]
        store: {ward: ward}
        branches: {found: queue}
        default: queue
        on_error: voicemail
      queue:
        type: queue
        positions: [headset-1]
        hold_playlist: [music]
        announce: {every: 30, position_prompt: "{lang}/hi"}
        on_overflow: voicemail
      survey:
        type: survey
        survey: visit
        revision: 2
        questions:
          - {id: q1, text: {ja: 満足ですか, en: Satisfied?}, prompt: "{lang}/hi", keys: {"1": yes, "2": no}}
          - {id: q2, text: Rate 1-5, prompt: "{lang}/hi", range: {min: 1, max: 5}}
        next: bye
      voicemail: {type: record, prompt: "{lang}/hi", mailbox: general, next: bye}
      bye: {type: hangup, prompt: "{lang}/hi"}
    """
)


def _tone(path: Path, *, seconds: float = 0.1, rate: int = 8000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(str(path), mono if channels == 1 else np.stack([mono] * channels, axis=1), rate)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    """A prompt directory with everything EVERY_TYPE needs (flac on purpose: any readable format works)."""
    for name in ("ja/hi.wav", "en/hi.flac", "beep.wav", "music.wav"):
        _tone(tmp_path / name)
    for lang in ("ja", "en"):
        for kind in ("digits", "number"):
            for frag in say_fragments_needed(kind, lang):
                if not (tmp_path / "say" / lang / f"{frag}.wav").exists():
                    _tone(tmp_path / "say" / lang / f"{frag}.wav", seconds=0.05)
    return tmp_path


def pos(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of needle."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    line = text.count("\n", 0, at) + 1
    return line, at - (text.rfind("\n", 0, at) + 1) + 1


def problems_at(result, severity: str = "error") -> dict[tuple[int, int], str]:
    return {(p.line, p.column): p.message for p in result.problems if p.severity == severity}


def test_every_node_type_parses_and_validates(prompts: Path) -> None:
    result = validate_text(EVERY_TYPE, prompts_dir=prompts)
    assert result.problems == []
    tree = result.tree
    assert {n.type for n in tree.nodes.values()} == set(NODE_TYPES)
    menu = tree.nodes["menu"]
    assert isinstance(menu, MenuNode) and menu.options["*"] == "menu_again"
    assert menu.first_digit_timeout == 5.0
    assert tree.nodes["pick_language"].options == {"1": "ja", "2": "en"}  # unquoted YAML key 1 accepted
    assert tree.nodes["readback"].items[1].as_ == "digits"
    assert tree.sensitive_variables() == {"patient_number"}
    assert tree.timezone == "Asia/Tokyo" and tree.loop_limit == 10
    assert isinstance(tree.nodes["hello"], PlayNode) and tree.nodes["hello"].waits_for_caller
    assert not tree.nodes["menu_again"].waits_for_caller and tree.nodes["queue"].waits_for_caller


def test_graph_lists_nodes_and_edges_with_labels(prompts: Path) -> None:
    graph = tree_graph(validate_text(EVERY_TYPE).tree)
    edges = {(e.source, e.target, e.label) for e in graph.edges}
    assert ("menu", "number", "key 1") in edges
    assert ("hours", "bye", "holiday") in edges
    assert ("lookup", "queue", "result=found") in edges
    assert ("lookup", "voicemail", "error") in edges
    assert ("number", "readback", "patient_number entered") in edges
    assert ("menu", "hello", "top key") in edges  # no main_menu: top goes to entry
    assert [n.id for n in graph.nodes][:3] == ["hello", "pick_language", "hours"]
    json.dumps(graph.to_json())  # serialisable for the console


def test_shipped_hospital_tree_is_valid_and_uses_every_type() -> None:
    result = validate_file(HOSPITAL)
    assert [str(p) for p in result.problems] == []
    assert {n.type for n in result.tree.nodes.values()} == set(NODE_TYPES)
    tree = load_tree(HOSPITAL)
    assert tree.languages == ["ja", "en", "zh"]
    assert tree.sensitive_variables() == {"patient_number", "birth_date"}


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == ivr_json_schema_text(), (
        "regenerate: hcrm-gateway ivr schema > ivr_prompts/ivr.schema.json"
    )
    schema = json.loads(ivr_json_schema_text())
    assert schema["required"] == ["entry", "nodes"] and schema["additionalProperties"] is False


def test_yaml_syntax_error_names_its_line() -> None:
    text = "entry: a\nnodes:\n  a: {type: hangup\n  b: [\n"
    result = validate_text(text, filename="t.yaml")
    assert result.tree is None and len(result.problems) == 1
    assert str(result.problems[0]).startswith("t.yaml:4:") and "YAML syntax" in result.problems[0].message


def test_duplicate_key_and_non_mapping_documents() -> None:
    dup = validate_text("entry: a\nentry: b\nnodes: {a: {type: hangup}}\n")
    assert dup.problems[0].line == 2 and "duplicate" in dup.problems[0].message
    assert "empty" in validate_text("").problems[0].message
    assert "list" in validate_text("- a\n").problems[0].message


def test_shape_errors_point_at_the_value_all_at_once() -> None:
    text = textwrap.dedent(
        """\
        entry: start
        nodes:
          start:
            type: menu
            greting: x
            greeting: hi
            options: {"1": b, "E": b}
            first_digit_timeout: -1
            on_failure: b
          b: {type: menus}
          c: {prompts: [a]}
          d: {type: play, prompts: ["../etc/passwd"], next: b}
          e: {type: hangup, prompt: 7}
          f: {type: record, next: b}
        """
    )
    result = validate_text(text)
    got = problems_at(result)
    assert "unknown key 'greting' (did you mean 'greeting'?)" in got[pos(text, "greting")]
    assert "'E' is not a DTMF key" in got[pos(text, '"E"')]
    assert "greater than 0" in got[pos(text, "-1")]
    assert "unknown node type 'menus'" in got[pos(text, "menus")]
    assert "did you mean 'menu'" in got[pos(text, "menus")]
    assert "needs `type:`" in got[pos(text, "c:")]
    assert "inside the prompt directory" in got[pos(text, '"../etc')]
    assert "a prompt is a file name" in got[pos(text, "7}")]
    assert "record node needs 'mailbox'" in got[pos(text, "f:")]
    assert len(result.errors) == 8 and result.tree is None


def test_top_level_errors() -> None:
    text = "entry: 1abc\ntimezone: Asia/Tokio\nloop_limit: 0\nnodes: {a: {type: hangup}}\nextra: 1\n"
    got = problems_at(validate_text(text))
    assert "node id '1abc' is not valid" in got[pos(text, "1abc")]
    assert "unknown time zone 'Asia/Tokio'" in got[pos(text, "Asia")]
    assert "greater than or equal to 1" in got[pos(text, "0\n")]
    assert "unknown key 'extra'" in got[pos(text, "extra")]
    no_entry = validate_text("entry: b\nnodes: {a: {type: hangup}}\n")
    assert [(p.line, p.column, p.message) for p in no_entry.problems] == [(1, 8, "entry 'b' is not a node")]
    missing = validate_text("nodes: {a: {type: hangup}}\n")
    assert "required key 'entry' is missing" in missing.problems[0].message


def test_schedule_shape_errors() -> None:
    text = textwrap.dedent(
        """\
        entry: a
        schedules:
          s:
            weekly:
              mon: ["08:30-12:00", "11:00-13:00"]
              tue: ["25:00-26:00"]
              wed: ["12:00-09:00"]
              funday: []
            holidays: [{date: 2026-01-05, until: 2026-01-01}, {date: 2026-02-30}]
            exceptions: [{date: 2026-03-01}, {date: 2026-03-01, hours: ["10:00-11:00"]}]
        nodes: {a: {type: hangup}}
        """
    )
    got = problems_at(validate_text(text))
    assert "11:00-13:00 overlaps 08:30-12:00" in got[pos(text, "mon")]
    assert "not an opening-hours range" in got[pos(text, '"25:00')]
    assert "end must be after the start" in got[pos(text, '"12:00-09')]
    assert "unknown key 'funday'" in got[pos(text, "funday")]
    assert "until 2026-01-01 is before date 2026-01-05" in got[pos(text, "{date: 2026-01-05")]
    assert any("2026-02-30" in m or "day value" in m for m in got.values())
    assert "two exceptions for 2026-03-01" in got[pos(text, "exceptions")]


def test_reference_and_graph_errors(prompts: Path) -> None:
    text = textwrap.dedent(
        """\
        entry: start
        main_menu: nowhere
        loop_fallback: strat
        languages: [ja, en]
        default_language: fr
        nodes:
          start:
            type: menu
            greeting: beep
            options: {"1": menu_b, "2": loop_a, "3": sched}
            repeat_key: "1"
            on_failure: start
          loop_a: {type: goto, target: loop_b}
          loop_b: {type: set, variables: {caller_number: "x"}, next: loop_c}
          loop_c: {type: play, prompts: [beep], next: loop_a}
          orphan: {type: hangup}
          sched: {type: schedule, schedule: opening, open: start, closed: start}
          talk: {type: say, items: [{var: patient, as: number}], next: start}
          hook: {type: webhook, url: "http://crm/x", send: [nobody], default: start, on_error: start}
        """
    )
    result = validate_text(text, prompts_dir=prompts)
    got, warnings = problems_at(result), problems_at(result, "warning")
    assert "loop_fallback 'strat' is not a node (did you mean 'start'?)" in got[pos(text, "strat")]
    assert "main_menu 'nowhere' is not a node" in got[pos(text, "nowhere")]
    assert "default_language 'fr' is not in languages" in got[pos(text, "fr\n")]
    assert "key 1: target 'menu_b' is not a node" in got[pos(text, "menu_b")]
    assert "repeat_key '1' is already an option" in got[pos(text, '"1"', 1)]
    cycle = got[pos(text, "loop_a:")]
    assert "cycle without caller input: loop_a -> loop_b -> loop_c -> loop_a" in cycle
    assert "'caller_number' is built in" in got[pos(text, "caller_number")]
    assert "schedule 'opening' is not defined" in got[pos(text, "opening")]
    assert "variable 'patient' is never set" in got[pos(text, "patient")]
    assert "variable 'nobody' is never set" in got[pos(text, "nobody")]
    assert "node 'orphan' is unreachable" in warnings[pos(text, "orphan")]
    assert "node 'talk' is unreachable" in warnings[pos(text, "talk")]
    assert result.tree is not None and not result.ok


def test_input_nodes_break_cycles_and_interruptible_play_counts_as_input() -> None:
    base = "entry: a\nnodes:\n  a: {type: play, prompts: [x], %s next: b}\n  b: {type: goto, target: a}\n"
    assert any("cycle without caller input" in p.message for p in validate_text(base % "").problems)
    assert validate_text(base % 'interrupt_keys: ["#"],').problems == []
    self_loop = "entry: a\nnodes:\n  a: {type: goto, target: a}\n"
    assert "a -> a" in validate_text(self_loop).problems[0].message


def test_errors_in_one_node_do_not_hide_graph_errors_elsewhere() -> None:
    text = (
        "entry: a\nnodes:\n  a: {type: goto, target: bad}\n  bad: {type: play}\n"
        "  c: {type: goto, target: zz}\n"
    )
    got = problems_at(validate_text(text))
    assert "play node needs 'prompts'" in got[pos(text, "bad:")]
    assert "target 'zz' is not a node" in got[pos(text, "zz")]
    assert not any("'bad' is not a node" in m for m in got.values())  # exists, only invalid


def test_key_rules_in_collect_mode() -> None:
    text = textwrap.dedent(
        """\
        entry: m
        nodes:
          m:
            type: menu
            greeting: x
            collect: {max_digits: 4, store_as: pin, next: m, min_digits: 5}
            back_key: "5"
            on_failure: m
          n:
            type: menu
            greeting: x
            collect: {max_digits: 4, store_as: pin2, next: n}
            back_key: "#"
            top_key: A
            on_failure: n
          o: {type: menu, greeting: x, on_failure: o}
        """
    )
    got = problems_at(validate_text(text))
    assert "min_digits 5 is more than max_digits 4" in got[pos(text, "collect")]
    assert "back_key '#' is already the terminator" in got[pos(text, '"#"')]
    assert "exactly one of `options`" in got[pos(text, "o:")]
    fixed = text.replace("min_digits: 5", "min_digits: 1")
    got = problems_at(validate_text(fixed))
    assert "back_key '5' is already a digit of the input" in got[pos(fixed, '"5"')]


def test_language_rules(prompts: Path) -> None:
    text = textwrap.dedent(
        """\
        entry: pick
        languages: [ja, en]
        nodes:
          pick: {type: language, prompt: {en: en/hi, fr: beep}, options: {"1": ja, "2": de}, next: s}
          s: {type: set, variables: {language: zh}, next: q}
          q:
            type: survey
            survey: v
            revision: 1
            questions: [{id: a, text: {ja: はい}, prompt: {ja: ja/hi}, keys: {"1": ok}}]
            next: bye
          bye: {type: hangup}
        """
    )
    result = validate_text(text, prompts_dir=prompts)
    got, warnings = problems_at(result), problems_at(result, "warning")
    assert "prompt has no 'ja' (default language) version" in got[pos(text, "prompt:")]
    assert "'fr' is not one of the tree's languages" in warnings[pos(text, "fr:")]
    assert "'de' is not one of the tree's languages" in got[pos(text, "de}")]
    assert "'zh' is not one of the tree's languages" in got[pos(text, "zh}")]
    assert "questions[0].text has no 'en' version" in warnings[pos(text, "text:")]


def test_prompt_file_problems(prompts: Path) -> None:
    _tone(prompts / "stereo.wav", channels=2)
    _tone(prompts / "low.wav", rate=4000)
    soundfile.write(str(prompts / "empty.wav"), np.zeros(0), 8000)
    (prompts / "junk.wav").write_text("not audio")
    text = textwrap.dedent(
        """\
        entry: a
        languages: [ja, en]
        nodes:
          a: {type: play, prompts: [stereo, low.wav, empty, junk, missing, "{lang}/hi", "zh/hi"], next: b}
          b: {type: say, items: [{var: language, as: date}], next: c}
          c: {type: hangup}
        """
    )
    result = validate_text(text, prompts_dir=prompts)
    got, warnings = problems_at(result), problems_at(result, "warning")
    assert "has 2 channels; prompts must be mono" in got[pos(text, "stereo")]
    assert "4000 Hz" in warnings[pos(text, "low.wav")]
    assert "is empty" in got[pos(text, "empty")]
    assert "cannot be read as audio" in got[pos(text, "junk")]
    assert "prompt 'missing': no such file" in got[pos(text, "missing")]
    assert "prompt 'zh/hi': no such file" in got[pos(text, '"zh/hi"')]
    assert pos(text, '"{lang}') not in got  # ja/hi.wav and en/hi.flac both found without extension
    assert "saying a date in 'ja' needs fragment files missing" in got[pos(text, "date")]
    assert len(result.errors) == 7
    # Without a prompt directory (draft API), files are not checked at all.
    assert validate_text(text).problems == []


def test_say_in_a_language_without_fragment_rules(prompts: Path) -> None:
    text = (
        "entry: a\nlanguages: [fr]\ndefault_language: fr\nnodes:\n"
        "  a: {type: say, items: [{var: call_id, as: number}], next: b}\n  b: {type: hangup}\n"
    )
    got = problems_at(validate_text(text, prompts_dir=prompts))
    assert "cannot say a number in 'fr'" in got[pos(text, "number")]


def test_validate_file_resolves_prompts_next_to_the_file(prompts: Path, tmp_path: Path) -> None:
    tree = prompts / "tree.yaml"
    tree.write_text(EVERY_TYPE, encoding="utf-8")
    assert validate_file(tree).problems == []
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "tree.yaml").write_text(EVERY_TYPE, encoding="utf-8")
    assert validate_file(other / "tree.yaml").errors  # no prompts there
    assert validate_file(other / "tree.yaml", prompts_dir=prompts).problems == []
    with pytest.raises(IvrError) as exc:
        load_tree(other / "tree.yaml")
    assert all(str(p).startswith(str(other / "tree.yaml") + ":") for p in exc.value.problems)
    assert "cannot read" in validate_file(tmp_path / "nope.yaml").problems[0].message


def test_prompt_resolution_and_expansion(prompts: Path) -> None:
    assert resolve_prompt(prompts, "en/hi") == prompts / "en" / "hi.flac"
    assert resolve_prompt(prompts, "beep.wav") == prompts / "beep.wav"
    assert resolve_prompt(prompts, "nope") is None
    assert expand_prompt("{lang}/hi", ["ja", "en"]) == {"ja": "ja/hi", "en": "en/hi"}
    assert expand_prompt("beep", ["ja"]) == {None: "beep"}
    assert expand_prompt({"ja": "a"}, ["ja", "en"]) == {"ja": "a"}


def test_schedule_state_at() -> None:
    tree = validate_text(EVERY_TYPE).tree
    office: Schedule = tree.schedules["office"]
    tokyo = ZoneInfo("Asia/Tokyo")
    at = lambda *a: dt.datetime(*a, tzinfo=tokyo)  # noqa: E731
    assert office.state_at(at(2026, 1, 5, 9, 0)) == "open"  # Monday 09:00, start included
    assert office.state_at(at(2026, 1, 5, 12, 0)) == "closed"  # lunch, end excluded
    assert office.state_at(at(2026, 1, 5, 16, 59)) == "open"
    assert office.state_at(at(2026, 1, 6, 10, 0)) == "closed"  # Tuesday: no hours
    assert office.state_at(at(2026, 1, 2, 10, 0)) == "holiday"  # inside the holiday range
    assert office.state_at(at(2026, 1, 10, 10, 0)) == "closed"  # Saturday exception: closed
    assert office.state_at(at(2026, 1, 17, 10, 0)) == "open"  # ordinary Saturday
    # 01:00 UTC Monday is 10:00 in Tokyo: open.
    assert office.state_at(dt.datetime(2026, 1, 5, 1, 0, tzinfo=dt.UTC)) == "open"
    with pytest.raises(ValueError, match="timezone-aware"):
        office.state_at(dt.datetime(2026, 1, 5, 10, 0))


def test_fragment_contract() -> None:
    assert say_fragments_needed("digits", "ja") == [str(d) for d in range(10)]
    assert "10000" in say_fragments_needed("number", "zh-CN")
    english = say_fragments_needed("number", "en")
    assert "million" not in english and "1000000" in english and "19" in english and "21" not in english
    assert "day-31" in say_fragments_needed("date", "en") and "year" in say_fragments_needed("date", "ja")
    assert say_fragments_needed("number", "fr") is None


def test_model_is_usable_from_python() -> None:
    tree = IvrTree.model_validate({"entry": "a", "nodes": {"a": {"type": "hangup"}}})
    assert tree.default_language == "ja" and tree.nodes["a"].edges() == []
    with pytest.raises(ValueError):
        IvrTree.model_validate({"entry": "a", "nodes": {}})
