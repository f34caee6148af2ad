import dataclasses
import sqlite3
from collections import deque
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
import trio

from drivers.gsm import pdu
from drivers.gsm.modem import IncomingSms, ModemStatus, ModemUnavailable, SendError, StatusReport
from gateway.events import EventBus
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.models import PartStatus, SmsSettings, SubmitRequest
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore, run_inline

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
JST = timezone(timedelta(hours=9))
ALICE = "+819012345678"
BOB = "+819087654321"


def wall_clock():
    return T0 + timedelta(seconds=trio.current_time())


# --- PDU builders written here, independently of drivers/gsm/pdu.py (TS 23.040 §9.2.2.1 and §9.2.2.3) -----
def _address(number):
    digits = number.lstrip("+")
    padded = digits + ("F" if len(digits) % 2 else "")
    swapped = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    return f"{len(digits):02X}{'91' if number.startswith('+') else '81'}{swapped}"


def _scts(when):
    """TS 23.040 §9.2.3.11: swapped BCD YYMMDDhhmmss + quarter hours (JST +9 h = 36 -> "63")."""
    local = when.astimezone(JST)
    digits = local.strftime("%y%m%d%H%M%S") + "36"
    return "".join(digits[i + 1] + digits[i] for i in range(0, 14, 2))


def deliver_pdu(sender, text, concat=None, when=T0):
    """SMS-DELIVER in UCS2; concat = (ref, total, seq) adds IEI 0x00 (8-bit reference)."""
    udh = bytes([5, 0x00, 3, *concat]) if concat else b""
    body = udh + text.encode("utf-16-be")
    fo = 0x04 | (0x40 if concat else 0)  # MTI 00, TP-MMS (no more messages), TP-UDHI
    return f"00{fo:02X}{_address(sender)}0008{_scts(when)}{len(body):02X}{body.hex().upper()}"


def report_pdu(reference, recipient, status, when=T0):
    """SMS-STATUS-REPORT: FO 0x06 (MTI 10), TP-MR, TP-RA, TP-SCTS, TP-DT, TP-ST."""
    return f"0006{reference:02X}{_address(recipient)}{_scts(when)}{_scts(when)}{status:02X}"


def test_pdu_builders_agree_with_the_codec():
    d = pdu.decode(deliver_pdu(ALICE, "診察", concat=(7, 2, 1)))
    assert (d.type, d.number, d.text, d.concat.ref, d.concat.total, d.concat.seq) == (
        "deliver",
        ALICE,
        "診察",
        7,
        2,
        1,
    )
    assert d.timestamp == T0
    r = pdu.decode(report_pdu(255, ALICE, 0x46))
    assert (r.type, r.reference, r.number, r.status) == ("status_report", 255, ALICE, 0x46)


class FakeModem:
    """send_pdu / acknowledge / events / status, as drivers.gsm.modem.GsmModem offers them."""

    def __init__(self, name, *, state="ready", latency=2.0):
        self.name = name
        self.status = ModemStatus(name=name, state=state)
        self._events, self.events = trio.open_memory_channel(100)
        self.latency = latency
        self.script = deque()  # exceptions to raise on the next sends
        self.next_mr = 0
        self.sent = []  # (trio time, pdu_hex, mr)
        self.acked = []
        self.on_ack = None

    async def send_pdu(self, pdu_hex, tpdu_length):
        assert len(pdu_hex) // 2 == tpdu_length + 1  # SCA "00" + TPDU
        await trio.sleep(self.latency)
        if self.script:
            raise self.script.popleft()
        mr, self.next_mr = self.next_mr, (self.next_mr + 1) % 256
        self.sent.append((trio.current_time(), pdu_hex, mr))
        return mr

    async def acknowledge(self, item):
        if self.on_ack:
            self.on_ack(item)
        self.acked.append(item)

    def set_state(self, state):
        self.status = dataclasses.replace(self.status, state=state)
        self._events.send_nowait(self.status)

    def receive(self, pdu_hex, index=0):
        self._events.send_nowait(IncomingSms(self.name, pdu_hex, "SM", index))

    def report(self, pdu_hex):
        self._events.send_nowait(StatusReport(self.name, pdu_hex, None, None))


class Env:
    def __init__(self, path, store, bus, modems, settings):
        self.path, self.store, self.bus, self.modems = path, store, bus, modems
        self.service = SmsService(store, bus, modems, settings=settings, clock=wall_clock)
        self.dispatcher = SmsDispatcher(
            store, bus, modems, settings=settings, clock=wall_clock, service=self.service
        )
        self.events = []
        bus.add_listener(lambda e: self.events.append(e))

    def types(self, message_id):
        return [e.type for e in self.events if e.data.get("id") == message_id]

    async def submit(self, text="hello", to=ALICE, **kw):
        return (await self.service.submit(SubmitRequest(to=to, text=text, **kw))).message

    async def get(self, message_id):
        return await self.service.get(message_id)


SETTINGS = SmsSettings(retry_backoff_s=(5.0, 30.0), send_retries=2, modem_error_pause_s=30.0)


@asynccontextmanager
async def gateway(tmp_path, modems, settings=SETTINGS):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path, clock=wall_clock, runner=run_inline)
    bus = EventBus(store)
    env = Env(path, store, bus, {m.name: m for m in modems}, settings)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(env.dispatcher.run)
            yield env
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def test_single_message_is_sent(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit()
        await trio.sleep(10)
        stored = await env.get(message.id)
        assert stored.status == "sent" and stored.sent_modem == "a"
        assert [(p.reference, p.modem, p.status) for p in stored.part_list] == [(0, "a", "sent")]
        assert [s[1] for s in a.sent] == [message.part_list[0].segment_hex]
        assert env.types(message.id) == ["sms.queued", "sms.sending", "sms.sent"]
        assert [e.data["references"] for e in env.events if e.type == "sms.sent"] == [[0]]


async def test_multipart_parts_go_back_to_back_on_one_modem(tmp_path, autojump_clock):
    a, b = FakeModem("a"), FakeModem("b")
    async with gateway(tmp_path, [a, b]) as env:
        long = await env.submit("x" * 400)  # 3 GSM-7 parts
        short = await env.submit("short")
        await trio.sleep(30)
        long_stored, short_stored = await env.get(long.id), await env.get(short.id)
        assert long_stored.status == short_stored.status == "sent"
        assert long_stored.sent_modem != short_stored.sent_modem
        carrier = a if long_stored.sent_modem == "a" else b
        assert [s[1] for s in carrier.sent] == [p.segment_hex for p in long.part_list]
        times = [s[0] for s in carrier.sent]
        assert times == [times[0], times[0] + 2, times[0] + 4]  # back to back
        assert env.dispatcher.queue_depth("a") == 0 == env.dispatcher.shared_depth


async def test_temporary_error_is_retried_after_backoff(tmp_path, autojump_clock):
    a = FakeModem("a")
    a.script.append(SendError(42, "temporary", "congestion"))
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit()
        await trio.sleep(3)
        waiting = await env.get(message.id)
        assert (waiting.status, waiting.attempts, waiting.error_code) == ("queued", 1, 42)
        assert waiting.next_attempt_at == T0 + timedelta(seconds=2 + 5)
        assert waiting.part_list[0].cms_error == 42
        await trio.sleep(10)
        stored = await env.get(message.id)
        assert stored.status == "sent" and stored.error_code is None
        assert a.sent[0][0] == 2 + 5 + 2  # retried at the due time, sent after the modem's latency
        assert env.types(message.id) == ["sms.queued", "sms.sending", "sms.queued", "sms.sending", "sms.sent"]


async def test_retries_exhausted_then_failed(tmp_path, autojump_clock):
    a = FakeModem("a")
    a.script.extend(SendError(500, "temporary", "unknown error") for _ in range(3))
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit()
        await trio.sleep(120)
        stored = await env.get(message.id)
        assert (stored.status, stored.attempts, stored.error_code, stored.error_kind) == (
            "failed",
            3,
            500,
            "temporary",
        )
        [failed] = [e for e in env.events if e.type == "sms.failed"]
        assert failed.data["error"] == {"code": 500, "kind": "temporary", "message": "unknown error"}


async def test_permanent_error_fails_at_once_and_the_queue_moves_on(tmp_path, autojump_clock):
    a = FakeModem("a")
    a.script.append(SendError(1, "permanent", "unassigned number"))
    async with gateway(tmp_path, [a]) as env:
        bad = await env.submit(to=BOB)
        good = await env.submit()
        await trio.sleep(10)
        stored = await env.get(bad.id)
        assert (stored.status, stored.error_code, stored.attempts) == ("failed", 1, 1)
        assert stored.part_list[0].status == PartStatus.FAILED and stored.part_list[0].cms_error == 1
        assert (await env.get(good.id)).status == "sent"


async def test_config_error_rests_the_modem(tmp_path, autojump_clock):
    a, b = FakeModem("a"), FakeModem("b", state="down")
    a.script.append(SendError(330, "config", "SMSC address unknown"))
    async with gateway(tmp_path, [a, b]) as env:
        message = await env.submit()
        await trio.sleep(20)  # retry due at 7 s, but a rests for 30 s
        assert (await env.get(message.id)).status == "queued"
        await trio.sleep(20)
        assert (await env.get(message.id)).status == "sent" and a.sent[0][0] == 34


async def test_modem_unavailable_hands_the_message_to_another_modem(tmp_path, autojump_clock):
    a, b = FakeModem("a"), FakeModem("b", state="down")
    a.script.append(ModemUnavailable("modem a is re-initialising"))
    async with gateway(tmp_path, [a, b]) as env:
        message = await env.submit()
        await trio.sleep(2.5)
        a.set_state("down")
        b.set_state("ready")
        await trio.sleep(10)
        stored = await env.get(message.id)
        assert stored.status == "sent" and stored.sent_modem == "b" and stored.attempts == 0
        assert a.sent == [] and len(b.sent) == 1
        changes = [(e.data["modem"], e.data["state"]) for e in env.events if e.type == "modem.state_changed"]
        assert ("a", "down") in changes and ("b", "ready") in changes


async def test_message_pinned_to_a_modem_waits_for_it(tmp_path, autojump_clock):
    a, b = FakeModem("a", state="down"), FakeModem("b")
    async with gateway(tmp_path, [a, b]) as env:
        message = await env.submit(modem="a")
        await trio.sleep(30)
        assert (await env.get(message.id)).status == "queued" and b.sent == []
        assert env.dispatcher.queue_depth("a") == 1
        assert [v.queue_depth for v in env.service.modems()] == [1, 0]
        a.set_state("ready")
        await trio.sleep(5)
        assert (await env.get(message.id)).status == "sent" and len(a.sent) == 1


async def test_status_reports_with_reference_wrap(tmp_path, autojump_clock):
    a = FakeModem("a")
    a.next_mr = 255
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit("x" * 200)  # 2 parts: TP-MR 255 then 0
        await trio.sleep(10)
        stored = await env.get(message.id)
        assert [p.reference for p in stored.part_list] == [255, 0]
        a.report(report_pdu(0, ALICE, 0x00, when=wall_clock()))
        await trio.sleep(1)
        stored = await env.get(message.id)
        assert stored.status == "sent"
        assert [(p.status, p.tp_status) for p in stored.part_list] == [("sent", None), ("delivered", 0)]
        a.report(report_pdu(255, ALICE, 0x00, when=wall_clock()))
        await trio.sleep(1)
        assert (await env.get(message.id)).status == "delivered"
        assert env.types(message.id)[-1] == "sms.delivered"
        assert len(a.acked) == 2


async def test_newest_part_with_the_same_reference_wins(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        a.next_mr = 7
        old = await env.submit("first")
        await trio.sleep(100)
        a.next_mr = 7  # the TP-MR counter wrapped round to 7 again
        new = await env.submit("second")
        await trio.sleep(100)
        a.next_mr = 7
        other = await env.submit("third", to=BOB)
        await trio.sleep(100)
        a.report(report_pdu(7, ALICE, 0x00, when=wall_clock()))
        a.report(report_pdu(7, "09087654321", 0x00, when=wall_clock()))  # national TP-RA form
        await trio.sleep(1)
        assert (await env.get(old.id)).status == "sent"
        assert (await env.get(new.id)).status == "delivered"
        assert (await env.get(other.id)).status == "delivered"


async def test_pending_then_expired_report(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit()
        await trio.sleep(5)
        a.report(report_pdu(0, ALICE, 0x21))  # SME busy, SC still trying: not final
        await trio.sleep(1)
        stored = await env.get(message.id)
        assert stored.status == "sent" and stored.part_list[0].status == "delivery_pending"
        a.report(report_pdu(0, ALICE, 0x46))  # validity period expired
        await trio.sleep(1)
        stored = await env.get(message.id)
        assert stored.status == "undelivered" and stored.part_list[0].tp_status == 0x46
        [event] = [e for e in env.events if e.type == "sms.undelivered"]
        assert event.data["reason"] == "expired" and event.data["tp_status"] == 0x46


async def test_unmatched_report_is_stored_and_acknowledged(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        a.report(report_pdu(99, ALICE, 0x00))
        await trio.sleep(1)
        assert len(a.acked) == 1
    conn = sqlite3.connect(env.path)
    assert conn.execute("SELECT reference, tp_status, message_id FROM status_reports").fetchall() == [
        (99, 0, None)
    ]
    conn.close()


async def test_inbound_multipart_out_of_order_with_duplicate(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        a.receive(deliver_pdu(ALICE, "明日の", concat=(42, 2, 2)), index=1)
        a.receive(deliver_pdu(ALICE, "予約を確認", concat=(42, 2, 1)), index=2)
        a.receive(deliver_pdu(ALICE, "明日の", concat=(42, 2, 2)), index=3)  # reported twice
        await trio.sleep(1)
        received = [e for e in env.events if e.type == "sms.received"]
        assert len(received) == 1
        data = received[0].data
        assert (
            data["text"],
            data["from"],
            data["from_raw"],
            data["parts"],
            data["modem"],
            data["incomplete"],
        ) == ("予約を確認明日の", ALICE, ALICE, 2, "a", False)
        assert [item.index for item in a.acked] == [1, 2, 3]
        stored = await env.get(data["id"])
        assert stored.direction == "in" and stored.status == "received"


async def test_single_pdu_reported_twice_is_one_message(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        a.receive(deliver_pdu(ALICE, "はい"), index=0)
        a.receive(deliver_pdu(ALICE, "はい"), index=0)
        await trio.sleep(1)
        assert [e.data["text"] for e in env.events if e.type == "sms.received"] == ["はい"]
        assert len(a.acked) == 2


async def test_reassembly_timeout_delivers_incomplete(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        a.receive(deliver_pdu(ALICE, "part one ", concat=(5, 3, 1)))
        await trio.sleep(599)
        assert not [e for e in env.events if e.type == "sms.received"]
        await trio.sleep(2)
        [event] = [e for e in env.events if e.type == "sms.received"]
        assert event.data["incomplete"] is True and event.data["text"] == "part one "
        assert event.data["parts"] == 1


async def test_acknowledge_only_after_commit(tmp_path, autojump_clock):
    a = FakeModem("a")
    seen_committed = []

    def check(item):
        conn = sqlite3.connect(tmp_path / "gw.sqlite3")  # a second connection sees only committed rows
        parts = conn.execute("SELECT count(*) FROM message_parts WHERE segment_hex = ?", (item.pdu_hex,))
        frags = conn.execute("SELECT count(*) FROM inbound_fragments WHERE pdu_hex = ?", (item.pdu_hex,))
        seen_committed.append(parts.fetchone()[0] + frags.fetchone()[0])
        conn.close()

    a.on_ack = check
    async with gateway(tmp_path, [a]) as env:
        a.receive(deliver_pdu(ALICE, "one"))
        a.receive(deliver_pdu(ALICE, "two-1", concat=(1, 2, 1)))
        await trio.sleep(1)
        assert len(env.events) >= 2
    assert seen_committed == [1, 1]


async def _prepare_interrupted(tmp_path, text, sent_refs):
    """A DB left by a process that died while sending ``text`` on modem a (parts with refs were sent)."""
    store = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=wall_clock, runner=run_inline)
    service = SmsService(store, EventBus(store), {"a": None, "b": None}, clock=wall_clock)
    message = (await service.submit(SubmitRequest(to=ALICE, text=text))).message

    def crash_state(tx):
        tx.update_message(message.id, status="sending", sent_modem="a")
        for seq, ref in sent_refs.items():
            tx.update_part(message.id, seq, status="sent", modem="a", reference=ref, sent_at=T0)

    await store.write(crash_state)
    await store.close()
    return message


async def test_restart_after_crash_in_sending_resends_only_unrecorded_parts(tmp_path, autojump_clock):
    message = await _prepare_interrupted(tmp_path, "y" * 400, {1: 17})  # part 1 has its TP-MR
    a, b = FakeModem("a"), FakeModem("b")
    async with gateway(tmp_path, [a, b]) as env:
        await trio.sleep(20)
        stored = await env.get(message.id)
        assert stored.status == "sent" and stored.sent_modem == "a"
        assert [s[1] for s in a.sent] == [p.segment_hex for p in message.part_list[1:]]  # parts 2 and 3
        assert b.sent == []
        assert [p.reference for p in stored.part_list] == [17, 0, 1]
        [requeued] = [e for e in env.events if e.type == "sms.queued"]
        assert requeued.data["recovered"] is True


async def test_restart_after_crash_with_every_part_recorded_marks_sent(tmp_path, autojump_clock):
    message = await _prepare_interrupted(tmp_path, "z" * 200, {1: 3, 2: 4})
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        await trio.sleep(5)
        assert (await env.get(message.id)).status == "sent" and a.sent == []


async def test_stop_finishes_the_part_in_flight(tmp_path, autojump_clock):
    a = FakeModem("a")
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit("w" * 400)
        await trio.sleep(3)  # part 1 sent at 2 s, part 2 in flight
        with trio.fail_after(10):
            await env.dispatcher.stop()
        stored = await env.get(message.id)
        assert stored.status == "queued" and stored.sent_modem == "a"
        assert [p.reference for p in stored.part_list] == [0, 1, None]


@pytest.mark.parametrize("state", ["down", "absent", "initializing"])
async def test_no_send_while_the_modem_is_not_ready(tmp_path, autojump_clock, state):
    a = FakeModem("a", state=state)
    async with gateway(tmp_path, [a]) as env:
        message = await env.submit()
        await trio.sleep(60)
        assert a.sent == [] and (await env.get(message.id)).status == "queued"
