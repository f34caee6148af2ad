from datetime import UTC, datetime, timedelta

import pytest

from gateway.events import EventBus
from gateway.sms.reassembly import add_fragment, expire_groups, join_fragments, pdu_digest
from gateway.store.base import Fragment
from gateway.store.sqlite import SqliteStore

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
SENDER = "+819012345678"


def frag(seq, total=3, text=None, *, ref=7, bits=8, sender=SENDER, modem="gsm0", at=T0):
    pdu = f"PDU-{modem}-{sender}-{ref}-{bits}-{total}-{seq}"
    return Fragment(
        modem,
        sender,
        ref,
        total,
        bits,
        seq,
        text if text is not None else f"<{seq}>",
        "ucs2",
        pdu,
        pdu_digest(pdu),
        at,
    )


@pytest.fixture
async def store(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.sqlite3")
    yield store
    await store.close()


async def _add(store, fragment):
    return await store.write(lambda tx: add_fragment(tx, fragment, region="JP"))


async def test_parts_in_any_order_complete_once(store):
    bus = EventBus(store)
    sub = bus.subscribe()
    assert await _add(store, frag(3)) is None
    assert await _add(store, frag(1)) is None
    assert await _add(store, frag(3)) is None  # duplicate
    message = await _add(store, frag(2))
    assert message.text == "<1><2><3>" and not message.incomplete
    assert message.sender == SENDER and message.parts == 3
    assert [p.seq for p in message.part_list] == [1, 2, 3]
    stored = await store.read(lambda tx: tx.get_message(message.id))
    assert stored.direction == "in" and stored.status == "received"
    assert await store.read(lambda tx: tx.earliest_group_start()) is None  # fragments removed
    event = await sub.__anext__()
    assert event.type == "sms.received"
    assert event.data == {
        "id": message.id,
        "from": SENDER,
        "from_raw": SENDER,
        "text": "<1><2><3>",
        "parts": 3,
        "modem": "gsm0",
        "received_at": "2026-11-27T06:00:00.000Z",
        "incomplete": False,
    }


async def test_groups_are_kept_apart_by_sender_modem_and_reference_width(store):
    assert await _add(store, frag(1, total=2)) is None
    assert await _add(store, frag(2, total=2, bits=16)) is None  # same ref value, 16-bit IEI
    assert await _add(store, frag(2, total=2, sender="+819011112222")) is None
    assert await _add(store, frag(2, total=2, modem="gsm1")) is None
    message = await _add(store, frag(2, total=2))
    assert message.text == "<1><2>"


async def test_timeout_delivers_what_arrived_as_incomplete(store):
    await _add(store, frag(1, at=T0))
    await _add(store, frag(3, at=T0 + timedelta(seconds=30)))
    await _add(store, frag(1, total=2, ref=9, at=T0 + timedelta(seconds=500)))
    assert await store.read(lambda tx: tx.earliest_group_start()) == T0
    expired = await store.write(lambda tx: expire_groups(tx, T0 + timedelta(seconds=100), region="JP"))
    [message] = expired
    assert message.incomplete and message.text == "<1><3>"
    assert message.parts == 3 and [p.seq for p in message.part_list] == [1, 3]
    assert await store.read(lambda tx: tx.earliest_group_start()) == T0 + timedelta(seconds=500)


async def test_fragments_survive_a_restart(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path)
    await _add(store, frag(2, total=2))
    await store.close()
    store = await SqliteStore.open(path)
    message = await _add(store, frag(1, total=2))
    assert message.text == "<1><2>"
    await store.close()


def test_join_reports_missing_parts():
    text, seqs, missing = join_fragments([frag(3), frag(1)])
    assert (text, seqs, missing) == ("<1><3>", [1, 3], True)
    assert join_fragments([frag(2, total=2), frag(1, total=2)])[2] is False


def test_pdu_digest_ignores_case_and_spaces():
    assert pdu_digest("00 04ab") == pdu_digest("0004AB")
