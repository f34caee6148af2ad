"""Routing: queues, health, cost (pure), then the dispatcher's routing on trio's MockClock with fake modems
and a fake HTTP provider: priority, quiet hours across a restart, daily caps, cool-off with reroute and reset,
provider fallback, named routes, submit policies, inbound hooks and deferred submits."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import trio

from drivers.gsm.modem import SendError
from gateway.events import EventBus
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.http_provider import ProviderResult
from gateway.sms.models import InvalidRequest, SmsSettings, SubmitRequest
from gateway.sms.provider_reports import ProviderReportReceiver, ProviderReportsConfig
from gateway.sms.providers import ProviderReportIntake
from gateway.sms.routing import CoolOffSettings, RouteHealth, RouteLimits, RoutePolicy, SendQueues
from gateway.sms.service import SmsService
from gateway.store.sqlite import SqliteStore, run_inline
from tests.unit.test_dispatcher import ALICE, BOB, FakeModem, deliver_pdu

T_DAY = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)  # 15:00 in Tokyo
T_NIGHT = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)  # 22:00 in Tokyo
SETTINGS = SmsSettings(retry_backoff_s=(5.0,), send_retries=5)
SECRET = "provider-secret-0123456789"


# --- pure parts -------------------------------------------------------------------------------------------
def test_queues_order_by_priority_then_arrival():
    q = SendQueues()
    q.push("m1", priority=40, route=None, provider_ok=True)
    q.push("m2", priority=40, route=None, provider_ok=False)
    q.push("m3", priority=100, route=None, provider_ok=True)
    q.push("m4", priority=10, route="a", provider_ok=True)
    assert not q.push("m1", priority=99, route=None, provider_ok=True)  # already queued
    assert (len(q), q.shared_depth, q.named_depth("a")) == (4, 3, 1)
    assert q.pop("a", shared=True, provider=False) == "m4"  # a route serves its named messages first
    assert q.pop("b", shared=True, provider=False) == "m3"
    assert q.pop("prov", shared=True, provider=True) == "m1"  # a provider skips modem-only categories
    assert q.pop("prov", shared=True, provider=True) is None
    assert q.pop("b", shared=False, provider=False) is None
    assert q.remove("m2") and not q.remove("m2")
    assert q.pop("b", shared=True, provider=False) is None and len(q) == 0


def test_health_cools_off_after_consecutive_failures():
    h, policy = RouteHealth(), CoolOffSettings(failures=3, seconds=60)
    assert not h.failed(0, policy) and not h.failed(1, policy)
    h.succeeded()  # consecutive: a success resets the count
    assert not h.failed(2, policy) and not h.failed(3, policy)
    assert h.failed(4, policy) and h.cooling(63) and not h.cooling(64)
    assert h.succeeded() and not h.cooling(10)


def test_cost_per_route_kind_and_override():
    policy = RoutePolicy(limits={"cheap": RouteLimits(cost=0.05), "capped": RouteLimits(daily_cap=5)})
    assert policy.cost("modem", "a", 3) == pytest.approx(0.3)
    assert policy.cost("modem", None, 1) == pytest.approx(0.1)
    assert policy.cost("provider", "p", 3) == pytest.approx(0.068)
    assert policy.cost("modem", "cheap", 2) == pytest.approx(0.1)
    assert policy.daily_cap("capped") == 5 and policy.daily_cap("a") is None


# --- the dispatcher on a MockClock -------------------------------------------------------------------------
class FakeProvider:
    """HttpSmsRoute's send() contract: never raises, returns ProviderResult."""

    def __init__(self, name, *, latency=0.5, concurrency=4):
        self.name = name
        self.latency = latency
        self.config = type("Cfg", (), {"concurrency": concurrency})()
        self.script = []  # ProviderResult to return next (else accepted)
        self.sent = []
        self.next_id = 0

    async def send(self, to, text, *, message_id, sender=None, callback_url=None):
        await trio.sleep(self.latency)
        if self.script:
            return self.script.pop(0)
        self.next_id += 1
        self.sent.append((trio.current_time(), to, text, message_id))
        return ProviderResult(True, f"p-{self.next_id}", 200, False, None)


class ResettableModem(FakeModem):
    def __init__(self, name, **kw):
        super().__init__(name, **kw)
        self.resets = 0

    async def reset(self):
        self.resets += 1


class Env:
    def __init__(self, store, bus, modems, providers, clock, policy, hooks, policies):
        self.store = store
        self.service = SmsService(
            store,
            bus,
            modems,
            settings=SETTINGS,
            clock=clock,
            providers=providers,
            route_policy=policy,
            submit_policies=policies,
        )
        self.dispatcher = SmsDispatcher(
            store,
            bus,
            modems,
            settings=SETTINGS,
            clock=clock,
            service=self.service,
            providers=providers,
            inbound_hooks=hooks,
        )
        self.events = []
        bus.add_listener(self.events.append)

    def types(self, message_id=None):
        return [e.type for e in self.events if message_id is None or e.data.get("id") == message_id]

    async def submit(self, text="hello", to=ALICE, **kw):
        return (await self.service.submit(SubmitRequest(to=to, text=text, **kw))).message

    async def get(self, message_id):
        return await self.service.get(message_id)


@asynccontextmanager
async def gateway(path, modems, providers=(), *, start=T_DAY, policy=None, hooks=(), policies=()):
    def clock():
        return start + timedelta(seconds=trio.current_time())

    store = await SqliteStore.open(path, clock=clock, runner=run_inline)
    bus = EventBus(store)
    env = Env(
        store,
        bus,
        {m.name: m for m in modems},
        {p.name: p for p in providers},
        clock,
        policy,
        hooks,
        policies,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(env.dispatcher.run)
            yield env
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


async def test_higher_priority_jumps_the_queue(tmp_path, autojump_clock):
    a = FakeModem("a", latency=2.0)
    async with gateway(tmp_path / "gw.db", [a]) as env:
        first = await env.submit("first", category="education")
        await trio.sleep(0.5)  # the modem is busy with it
        later = [await env.submit(f"care {i}", category="care") for i in range(2)]
        otp = await env.submit("otp", category="otp")
        await trio.sleep(20)
        order = {mid: i for i, mid in enumerate(e.data["id"] for e in env.events if e.type == "sms.sending")}
        # The first was already on the modem; the OTP overtakes the two care messages queued before it.
        assert order[first.id] == 0 and order[otp.id] == 1
        assert order[later[0].id] == 2 and order[later[1].id] == 3
        sent = await env.get(otp.id)
        assert (sent.status, sent.category, sent.cost) == ("sent", "otp", pytest.approx(0.1))


async def test_quiet_hours_hold_until_the_window_ends_across_a_restart(tmp_path, autojump_clock):
    path = tmp_path / "gw.db"
    a = FakeModem("a", latency=1.0)
    async with gateway(path, [a], start=T_NIGHT) as env:
        edu = await env.submit("health tips", category="education")
        lab = await env.submit("lab results ready", category="lab_result")
        assert (edu.status, edu.send_at) == (
            "scheduled",
            datetime(2026, 11, 28, 0, 0, tzinfo=UTC),
        )  # 09:00 JST
        assert lab.status == "queued"
        await trio.sleep(5)
        assert (await env.get(lab.id)).status == "sent"
        assert (await env.get(edu.id)).status == "scheduled"
        held = [e for e in env.events if e.data.get("id") == edu.id]
        assert held[0].type == "sms.scheduled" and held[0].data["held"] == "quiet_hours"
    # A restart while held: the hold is in the database. trio's clock keeps running from where it was.
    elapsed = trio.current_time()
    b = FakeModem("b", latency=1.0)
    async with gateway(path, [b], start=T_NIGHT) as env:
        await trio.sleep(11 * 3600 - elapsed - 60)  # 08:59 JST
        assert (await env.get(edu.id)).status == "scheduled" and not b.sent
        await trio.sleep(120)
        stored = await env.get(edu.id)
        assert stored.status == "sent" and stored.sent_modem == "b"
        assert 11 * 3600 <= b.sent[0][0] <= 11 * 3600 + 2


async def test_a_queued_message_drifting_into_quiet_hours_is_held_again(tmp_path, autojump_clock):
    start = datetime(2026, 11, 27, 10, 59, 50, tzinfo=UTC)  # 19:59:50 JST, education quiet from 20:00
    a = FakeModem("a", latency=30.0)
    async with gateway(tmp_path / "gw.db", [a], start=start) as env:
        busy = await env.submit("long job", category="care")
        edu = await env.submit("tips", category="education")
        assert edu.status == "queued"
        await trio.sleep(40)  # the modem is free at 20:00:20 JST: too late for education
        stored = await env.get(edu.id)
        assert (stored.status, stored.send_at) == ("scheduled", datetime(2026, 11, 28, 0, 0, tzinfo=UTC))
        assert (await env.get(busy.id)).status == "sent"


async def test_daily_cap_counts_parts_per_local_day(tmp_path, autojump_clock):
    a = FakeModem("a", latency=1.0)
    policy = RoutePolicy(limits={"a": RouteLimits(daily_cap=3)})
    async with gateway(tmp_path / "gw.db", [a], policy=policy) as env:
        two_parts = await env.submit("x" * 200)
        one = await env.submit("one")
        over = await env.submit("over the cap")
        await trio.sleep(60)
        assert [(await env.get(m.id)).status for m in (two_parts, one, over)] == ["sent", "sent", "queued"]
        assert env.dispatcher.routes()[0]["capped"] is True
        usage = await env.store.read(lambda tx: tx.route_usage("2026-11-27"))
        assert usage == {"a": 3}
        await trio.sleep(9 * 3600)  # 15:01 JST + 9 h: past local midnight, a new day
        assert (await env.get(over.id)).status == "sent"
        assert await env.store.read(lambda tx: tx.route_usage("2026-11-28")) == {"a": 1}


async def test_cool_off_moves_messages_to_a_healthy_modem_and_resets(tmp_path, autojump_clock):
    bad, good = ResettableModem("bad", latency=1.0), FakeModem("good", latency=1.0, state="down")
    bad.script.extend(SendError(42, "temporary", "congestion") for _ in range(10))
    policy = RoutePolicy(cool_off=CoolOffSettings(failures=2, seconds=600))
    async with gateway(tmp_path / "gw.db", [bad, good], policy=policy) as env:
        m1, m2 = await env.submit("one"), await env.submit("two")
        await trio.sleep(3)  # both failed once on "bad": two failures in a row
        assert "route.cooling_off" in env.types()
        assert bad.resets == 1
        rerouted = [e.data["id"] for e in env.events if e.type == "sms.rerouted"]
        assert sorted(rerouted) == sorted([m1.id, m2.id])
        good.set_state("ready")
        await trio.sleep(5)  # no 5 s backoff wait: rerouted messages are due at once
        for m in (m1, m2):
            stored = await env.get(m.id)
            assert (stored.status, stored.sent_modem, stored.attempts) == ("sent", "good", 1)
        assert [s[0] for s in good.sent] == [pytest.approx(4.0, abs=0.01), pytest.approx(5.0, abs=0.01)]
        assert len(bad.script) == 8  # "bad" took no work while cooling off
        await trio.sleep(600)
        bad.script.clear()
        m3, m4 = await env.submit("three"), await env.submit("four")
        await trio.sleep(5)
        assert {(await env.get(m.id)).sent_modem for m in (m3, m4)} == {"bad", "good"}
        assert "route.recovered" in env.types()


async def test_provider_takes_auto_messages_only_when_no_modem_is_healthy(tmp_path, autojump_clock):
    a = FakeModem("a", latency=1.0)
    a.script.extend(SendError(None, "temporary", "no answer") for _ in range(3))
    prov = FakeProvider("prov", latency=0.5)
    policy = RoutePolicy(cool_off=CoolOffSettings(failures=3, seconds=300))
    async with gateway(tmp_path / "gw.db", [a], [prov], policy=policy) as env:
        m = await env.submit("needs a route", category="appointment")
        await trio.sleep(4)  # first failure at 1 s; the provider does not step in while "a" is healthy
        assert not prov.sent
        await trio.sleep(30)  # retries at +5 s fail twice more: "a" cools off, the provider takes it
        stored = await env.get(m.id)
        assert (stored.status, stored.sent_modem, stored.provider_id) == ("sent", "prov", "p-1")
        assert stored.cost == pytest.approx(0.068)
        assert [e.type for e in env.events if e.data.get("id") == m.id][-2:] == ["sms.sending", "sms.sent"]


async def test_named_provider_route_and_modem_alias(tmp_path, autojump_clock):
    a, prov = FakeModem("a", latency=1.0), FakeProvider("prov", latency=0.2)
    async with gateway(tmp_path / "gw.db", [a], [prov]) as env:
        via_provider = await env.submit("x" * 200, route="prov")
        via_alias = await env.submit("by modem", modem="a")
        assert (via_provider.modem, via_provider.cost) == ("prov", pytest.approx(0.068))
        assert via_provider.to_json()["route"] == "prov" and via_alias.to_json()["route"] == "a"
        await trio.sleep(5)
        assert [s[3] for s in prov.sent] == [via_provider.id]
        assert (await env.get(via_alias.id)).sent_modem == "a"
        with pytest.raises(InvalidRequest) as err:
            await env.submit("x", route="nowhere")
        assert (err.value.code, err.value.field) == ("unknown_route", "route")
        assert "known: auto, a, prov" in err.value.detail
        with pytest.raises(InvalidRequest) as err:
            await env.submit("x", route="a", modem="prov")
        assert err.value.field == "route"
        with pytest.raises(InvalidRequest) as err:
            await env.submit("x", category="promo")
        assert (err.value.code, err.value.field) == ("unknown_category", "category")


async def test_provider_temporary_failure_retries_then_permanent_fails(tmp_path, autojump_clock):
    prov = FakeProvider("prov", latency=0.1)
    prov.script = [
        ProviderResult(False, None, 503, False, "gave up after 4 attempts"),
        ProviderResult(False, None, 400, True, "invalid destination"),
    ]
    async with gateway(tmp_path / "gw.db", [], [prov]) as env:
        m = await env.submit("hi", route="prov")
        await trio.sleep(10)
        stored = await env.get(m.id)
        assert (stored.status, stored.attempts, stored.error_kind) == ("failed", 2, "permanent")
        assert stored.error_message == "HTTP 400: invalid destination"
        # Failed sends are uncounted from the route's daily usage.
        assert await env.store.read(lambda tx: tx.route_usage("2026-11-27")) == {"prov": 0}


class RecordingPolicy:
    def __init__(self):
        self.seen = []

    def check(self, tx, request, e164, category):
        self.seen.append((e164, category))
        if e164 == BOB and category != "otp":
            raise InvalidRequest("opted_out", f"{e164} opted out of {category}", "to")


async def test_submit_policies_run_inside_the_transaction(tmp_path, autojump_clock):
    policy = RecordingPolicy()
    async with gateway(tmp_path / "gw.db", [FakeModem("a")], policies=[policy]) as env:
        with pytest.raises(InvalidRequest) as err:
            await env.submit("promo", to=BOB, category="education")
        assert (err.value.code, err.value.field) == ("opted_out", "to")
        ok = await env.submit("code 1234", to=BOB, category="otp")
        assert ok.status == "queued"
        assert policy.seen == [(BOB, "education"), (BOB, "otp")]
        rows, _ = await env.service.list(direction="out")
        assert [m.id for m in rows] == [ok.id]  # nothing stored for the refused one


class ReplyHook:
    def __init__(self, send_later):
        self.send_later = send_later

    def on_received(self, tx, message, data):
        data["answer"] = message.text.strip()
        tx.append_event("sms.opted_out", {"number": message.sender})
        self.send_later(SubmitRequest(to=message.sender, text="You are unsubscribed", category="otp"))


async def test_inbound_hook_adds_data_and_queues_a_reply_after_commit(tmp_path, autojump_clock):
    a = FakeModem("a", latency=1.0)
    hooks = []
    async with gateway(tmp_path / "gw.db", [a], hooks=hooks) as env:
        env.dispatcher.add_inbound_hook(ReplyHook(env.service.submit_nowait))
        a.receive(deliver_pdu(BOB, "STOP"))
        await trio.sleep(5)
        received = [e for e in env.events if e.type == "sms.received"]
        assert received[0].data["answer"] == "STOP"
        types = env.types()
        assert types.index("sms.opted_out") < types.index("sms.received") < types.index("sms.queued")
        assert len(a.sent) == 1  # the confirmation went out


async def test_after_commit_callbacks_are_dropped_on_rollback(tmp_path):
    store = await SqliteStore.open(tmp_path / "gw.db")
    calls = []

    def good(tx):
        store.after_commit(lambda: calls.append("good"))
        assert not calls  # not before the commit

    def bad(tx):
        store.after_commit(lambda: calls.append("bad"))
        raise ValueError("refused")

    try:
        await store.write(good)
        with pytest.raises(ValueError):
            await store.write(bad)
        store.after_commit(lambda: calls.append("outside"))  # no unit running: at once
        assert calls == ["good", "outside"]
    finally:
        await store.close()


def _dlr_config():
    return ProviderReportsConfig(auth={"method": "shared_secret", "secrets": [SECRET]})


async def test_provider_reports_pair_by_id_including_one_that_beats_the_commit(tmp_path, autojump_clock):
    prov = FakeProvider("prov", latency=1.0, concurrency=1)  # p-1, p-2 in submit order
    async with gateway(tmp_path / "gw.db", [], [prov]) as env:
        intake = ProviderReportIntake(
            env.store, {"prov": ProviderReportReceiver("prov", _dlr_config())}, clock=env.service._clock
        )
        headers = {"X-Provider-Secret": SECRET}
        # A report for p-1 before the send is committed: stored unmatched.
        early = await intake.handle("prov", headers, b'{"id": "p-1", "status": "DELIVRD"}')
        assert [(r.message_id, r.applied) for r in early] == [(None, False)]
        m1 = await env.submit("one", route="prov")
        m2 = await env.submit("two", route="prov")
        await trio.sleep(3)
        assert (await env.get(m1.id)).status == "delivered"  # applied when the send committed
        late = await intake.handle("prov", headers, b'[{"id": "p-2", "status": "UNDELIV"}]')
        assert [(r.message_id, r.applied) for r in late] == [(m2.id, True)]
        stored = await env.get(m2.id)
        assert stored.status == "undelivered" and stored.error_message == "provider status UNDELIV"
        again = await intake.handle("prov", headers, b'{"id": "p-2", "status": "DELIVRD"}')
        assert again[0].applied is False and (await env.get(m2.id)).status == "undelivered"
        assert env.types().count("provider.report") == 3
