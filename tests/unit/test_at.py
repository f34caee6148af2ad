"""The sans-IO AT core against byte transcripts (tests/fixtures/at_transcripts/*.json).

Each transcript lists steps (send a command, send a PDU after the prompt, abandon after a timeout,
receive bytes) and the events expected, written by hand from the cited specification or issue. Received bytes
are stored as JSON strings whose code points are the byte values (latin-1), so NUL and 0xFF are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gsm.at import (
    AtConnection,
    Command,
    FinalResult,
    InformationLine,
    Prompt,
    StaleLine,
    UnsolicitedResult,
    parse_arguments,
    parse_final,
    pdu_message_type,
)
from drivers.gsm.errors import AtProtocolError, SendError, classify_cme, classify_cms

TRANSCRIPTS = Path(__file__).parent.parent / "fixtures" / "at_transcripts"
NAMES = sorted(path.stem for path in TRANSCRIPTS.glob("*.json"))
DELIVER = "07911809214365F7040B911809214365F700005211724100226305E8329BFD06"


def load(name: str) -> dict:
    return json.loads((TRANSCRIPTS / f"{name}.json").read_text())


def summarise(event) -> list:
    if isinstance(event, InformationLine):
        return ["info", event.command, event.text, event.pdu]
    if isinstance(event, FinalResult):
        return ["final", event.command, event.kind, event.code]
    if isinstance(event, Prompt):
        return ["prompt", event.command]
    if isinstance(event, UnsolicitedResult):
        return ["urc", event.name, event.text, event.pdu]
    if isinstance(event, StaleLine):
        return ["stale", event.text]
    raise AssertionError(f"unknown event {event!r}")


def drain(conn: AtConnection) -> list[list]:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(summarise(event))
    return events


def replay(transcript: dict, split=lambda data: [data]) -> list[list]:
    """Run a transcript; `split` cuts each received block into the reads the driver would see."""
    conn = AtConnection()
    events: list[list] = []
    for step in transcript["steps"]:
        if "send" in step:
            data = conn.send(step["send"])
            assert data == step["send"].encode("ascii") + b"\r"
        elif "send_pdu" in step:
            assert conn.send_pdu(step["send_pdu"]).endswith(b"\x1a")
        elif "abandon" in step:
            assert conn.abandon() is not None
        else:
            for piece in split(step["receive"].encode("latin-1")):
                conn.receive_data(piece)
                events += drain(conn)
    return events


def test_fixture_set_is_complete():
    assert len(NAMES) >= 13


@pytest.mark.parametrize("name", NAMES)
def test_transcript_whole(name):
    transcript = load(name)
    assert replay(transcript) == transcript["expected"]


@pytest.mark.parametrize("name", NAMES)
def test_transcript_split_at_every_byte_boundary(name):
    transcript = load(name)
    longest = max((len(s["receive"]) for s in transcript["steps"] if "receive" in s), default=0)
    for cut in range(1, longest):
        events = replay(transcript, lambda data, cut=cut: [data[:cut], data[cut:]])
        assert events == transcript["expected"], f"split at byte {cut}"


@pytest.mark.parametrize("name", NAMES)
def test_transcript_byte_by_byte(name):
    transcript = load(name)
    events = replay(transcript, lambda data: [data[i : i + 1] for i in range(len(data))])
    assert events == transcript["expected"]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12))
def test_transcript_random_splits(name, cuts):
    transcript = load(name)

    def split(data: bytes) -> list[bytes]:
        points = sorted({c % len(data) for c in cuts if c % len(data)})
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    assert replay(transcript, split) == transcript["expected"]


# ---- command rules ---------------------------------------------------------------------------------------
def test_command_prefix_and_prompt_rules():
    assert Command.of("AT+CMGR=3") == Command("AT+CMGR=3", "+CMGR:", True, False)
    assert Command.of("AT+CMGS=19") == Command("AT+CMGS=19", "+CMGS:", False, True)
    assert Command.of("AT^CURC=0").response_prefix == "^CURC:"
    assert Command.of("ATE0") == Command("ATE0")
    assert Command.of("AT+CPMS?").response_prefix == "+CPMS:"


def test_second_command_while_one_is_in_flight_is_refused():
    conn = AtConnection()
    conn.send("AT+CSQ")
    with pytest.raises(AtProtocolError, match="still awaits its answer"):
        conn.send("AT+CREG?")


def test_pdu_before_prompt_is_refused():
    conn = AtConnection()
    conn.send("AT+CMGS=19")
    with pytest.raises(AtProtocolError, match="prompt"):
        conn.send_pdu("0011")
    conn.receive_data(b"\r\n> ")
    assert isinstance(conn.next_event(), Prompt)
    with pytest.raises(AtProtocolError, match="hex"):
        conn.send_pdu("001")


def test_non_at_and_non_ascii_lines_are_refused():
    conn = AtConnection()
    with pytest.raises(AtProtocolError, match="not an AT command"):
        conn.send("hello")
    with pytest.raises(AtProtocolError, match="ASCII"):
        conn.send('AT+CSCA="+81９０"')


def test_prompt_only_for_prompting_commands():
    conn = AtConnection()
    conn.send("AT+CSQ")
    conn.receive_data(b"\r\n> \r\n+CSQ: 1,99\r\nOK\r\n")
    events = drain(conn)
    assert ["prompt", "AT+CSQ"] not in events
    assert events[-1] == ["final", "AT+CSQ", "ok", None]


def test_cancel_prompt_sends_escape_and_waits_for_final():
    conn = AtConnection()
    conn.send("AT+CMGS=19")
    conn.receive_data(b"\r\n> ")
    drain(conn)
    assert conn.cancel_prompt() == b"\x1b"
    conn.receive_data(b"\r\nOK\r\n")
    assert drain(conn) == [["final", "AT+CMGS=19", "ok", None]]
    assert conn.command_in_flight is None


def test_urc_header_without_pdu_line_is_still_reported():
    conn = AtConnection()
    conn.receive_data(b"\r\n+CMT: ,24\r\nRING\r\nOK\r\n")
    # RING between header and PDU is reported and the header keeps waiting; a non-PDU line ends the wait.
    assert drain(conn) == [
        ["urc", "RING", "RING", None],
        ["urc", "+CMT", "+CMT: ,24", None],
        ["stale", "OK"],
    ]


def test_cmgr_for_empty_index_has_no_pdu():
    conn = AtConnection()
    conn.send("AT+CMGR=0")
    conn.receive_data(b"\r\n+CMGR: 0,,0\r\n\r\nOK\r\n")
    assert drain(conn) == [["info", "AT+CMGR=0", "+CMGR: 0,,0", None], ["final", "AT+CMGR=0", "ok", None]]


def test_overlong_garbage_is_discarded():
    conn = AtConnection()
    conn.receive_data(b"\xaa" * 5000)
    assert [e[0] for e in drain(conn)] == ["stale"]
    conn.send("AT")
    conn.receive_data(b"\r\nOK\r\n")
    assert drain(conn) == [["final", "AT", "ok", None]]


def test_echo_state_follows_ate0_and_ate1():
    conn = AtConnection()
    conn.send("ATE1")
    conn.receive_data(b"\r\nOK\r\n")
    assert conn.echo_on
    conn.send("ATE0")
    conn.receive_data(b"ATE0\r\r\nOK\r\n")
    assert not conn.echo_on


def test_unexpected_final_without_command_is_stale():
    conn = AtConnection()
    conn.receive_data(b"\r\nOK\r\n\r\n+CME ERROR: 3\r\n")
    assert drain(conn) == [["stale", "OK"], ["stale", "+CME ERROR: 3"]]


# ---- helpers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("OK", ("ok", None)),
        ("ERROR", ("error", None)),
        ("COMMAND NOT SUPPORT", ("error", None)),
        ("+CME ERROR: 100", ("cme", 100)),
        ("+CMS ERROR: 304", ("cms", 304)),
        ("+CMS ERROR: unknown error", ("cms", 500)),
        ("+CME ERROR: SIM PIN required", ("cme", 11)),
        ("+CME ERROR: something new", ("cme", None)),
        ("NO CARRIER", ("no_carrier", None)),
        ("CONNECT 9600", ("connect", None)),
        ("+CMGS: 4", None),
        ("OKAY", None),
    ],
)
def test_parse_final(line, expected):
    assert parse_final(line) == expected


def test_parse_arguments_keeps_commas_inside_quotes():
    assert parse_arguments(' "SM",3,,"a,b"') == ["SM", "3", "", "a,b"]
    assert parse_arguments("") == []


def test_pdu_message_type():
    assert pdu_message_type(DELIVER) == "deliver"
    assert pdu_message_type("07911809214365F7062A0B911809214365F752117241002263521172411022630" + "0") == (
        "status_report"
    )
    assert pdu_message_type("0011000C91") == "submit"
    assert pdu_message_type("zz") == "unknown"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (38, "temporary"),  # network out of order
        (42, "temporary"),  # congestion
        (500, "temporary"),  # Huawei after CMGS
        (515, "temporary"),
        (1, "permanent"),  # unassigned number
        (304, "permanent"),  # invalid PDU parameter
        (195, "permanent"),
        (330, "config"),  # SMSC unknown
        (310, "config"),  # no SIM
        (322, "config"),  # memory full
        (None, "temporary"),
        (999, "temporary"),
    ],
)
def test_classify_cms(code, kind):
    assert classify_cms(code) == kind


def test_classify_cme_and_quirk_override():
    assert classify_cme(10) == "config"
    assert classify_cme(14) == "temporary"
    assert classify_cms(304, extra_temporary=frozenset({304})) == "temporary"
    error = SendError(304, "permanent", "refused")
    assert (error.code, error.kind, str(error)) == (304, "permanent", "refused")
