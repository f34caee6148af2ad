"""The benchmark clients' decoding of what they read (bench/ws_clients.py): each event gets the stamps of
the read that completed its frame, whatever the reads' boundaries, so the screen-pop and SMS latency figures
do not depend on how the kernel cut the stream."""

from __future__ import annotations

import json

from bench.ws_clients import _count_wanted, _decode


def _frame(payload: bytes) -> bytes:  # RFC 6455 §5.2 unmasked text frame, written here independently
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def _event(kind: str, call_id: str, pad: int = 0) -> bytes:
    body = {"seq": 1, "type": kind, "data": {"call_id": call_id, "note": "x" * pad}}
    return _frame(json.dumps(body, separators=(",", ":")).encode())


def test_frames_get_the_stamps_of_the_read_that_completed_them() -> None:
    a, b = _event("call.incoming", "A"), _event("line.state_changed", "B")
    c = _event("call.incoming", "C", 300)
    stream = a + b + c  # C has a 16-bit length: its header itself is split below
    reads = [stream[:5], stream[5 : len(a) + len(b) + 2], stream[len(a) + len(b) + 2 :]]
    chunks = [(reads[0], 1.0, 1.5), (reads[1], 2.0, 2.5), (reads[2], 3.0, 3.5)]
    assert _decode([chunks], "call.incoming", "call_id") == [("A", 2.0, 2.5), ("C", 3.0, 3.5)]


def test_several_frames_in_one_read_share_its_stamps_and_clients_are_decoded_apart() -> None:
    one = [(_event("call.incoming", "A") + _event("call.incoming", "B"), 7.0, 7.1)]
    other = [(_event("call.incoming", "A")[:3], 8.0, 8.1), (_event("call.incoming", "A")[3:], 9.0, 9.1)]
    assert _decode([one, other], "call.incoming", "call_id") == [
        ("A", 7.0, 7.1), ("B", 7.0, 7.1), ("A", 9.0, 9.1)]


def test_an_incomplete_last_frame_and_control_frames_are_not_events() -> None:
    ping = bytes((0x89, 4)) + b"ping"
    whole = _event("call.incoming", "A")
    chunks = [(ping + whole + _event("call.incoming", "Z")[:-1], 1.0, 1.0)]
    assert _decode([chunks], "call.incoming", "call_id") == [("A", 1.0, 1.0)]


def test_wanted_events_are_counted_across_read_boundaries_once() -> None:
    needle = b'"type":"call.incoming"'
    stream = _event("call.incoming", "A") + _event("line.state_changed", "B") + _event("call.incoming", "C")
    for cut in range(1, len(stream)):
        n1, tail = _count_wanted(b"", stream[:cut], needle)
        n2, _ = _count_wanted(tail, stream[cut:], needle)
        assert n1 + n2 == 2, cut
