"""SMS campaigns: row validation with row numbers, and the campaign service on trio's MockClock with fake
modems (the real store, bus, SmsService and dispatcher): the feeder's window, progress events at most once a
second, pause/resume/cancel, start_at, refused recipients, a restart in the middle, counts that add up."""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import trio

from gateway.events import EventBus
from gateway.sms import campaign_rows as rows
from gateway.sms.campaigns import COUNT_KEYS, CampaignError, CampaignService, CampaignSettings
from gateway.sms.dispatcher import SmsDispatcher
from gateway.sms.models import Conflict, InvalidRequest, SmsSettings
from gateway.sms.service import SmsService
from gateway.sms.template_store import TemplateStore
from gateway.sms.templates import Template
from gateway.store import consent_sql
from gateway.store.sqlite import SqliteStore, run_inline
from tests.unit.test_dispatcher import FakeModem

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo: no quiet hours
TEMPLATE = Template(
    "edu", "education", "ja", "{patient_name}様 {topic}の教室があります。", "", ("patient_name", "topic")
)


def clock():
    return T0 + timedelta(seconds=trio.current_time())


def number(i: int) -> str:
    return f"090{10_000_000 + i:08d}"


def recipients(n: int) -> list[dict]:
    return [{"to": number(i), "vars": {"patient_name": f"患者{i}", "topic": "糖尿病"}} for i in range(n)]


async def inline(fn, *args):
    return fn(*args)


# --- rows -----------------------------------------------------------------------------------------------
def validate_csv(text: str, *, max_rows: int = 100, max_parts: int = 3) -> rows.Validation:
    columns, found = rows.read_csv(text, max_rows=max_rows)
    rows.check_columns(columns, TEMPLATE)
    return rows.validate_rows(found, TEMPLATE, region="JP", max_parts=max_parts)


def test_csv_rows_are_numbered_as_a_spreadsheet_shows_them():
    text = (
        "to,patient_name,topic,ward\r\n"
        "090-1000-0001,山田,糖尿病,3F\r\n"  # row 2 ok
        "12345,佐藤,糖尿病,3F\r\n"  # row 3 invalid number
        "\r\n"  # row 4 blank: skipped, still counted as a row of the sheet
        '"090-1000-0003","鈴木\n太郎",,3F\r\n'  # row 5: quoted newline, missing topic
        "+81 90 1000 0001,山田,糖尿病,3F\r\n"  # row 6 duplicate of row 2
        "090-1000-0004,田中\r\n"  # row 7 wrong field count
        "090-1000-0005,高橋," + "長" * 300 + ",3F\r\n"  # row 8 too long
    )
    result = validate_csv(text)
    assert [(a.row, a.e164) for a in result.accepted] == [(2, "+819010000001")]
    assert [(p.row, p.code) for p in result.rejected] == [
        (3, "invalid_number"),
        (5, "missing_variables"),
        (7, "malformed_row"),
        (8, "too_many_parts"),
    ]
    assert [(p.row, p.code, p.detail) for p in result.duplicates] == [
        (6, "duplicate", "+819010000001 is in row 2 already")
    ]
    assert result.rows == 6
    assert result.rejected[1].field == "topic" and "topic" in result.rejected[1].detail


def test_csv_whole_file_errors_name_the_row():
    with pytest.raises(rows.RecipientsError) as missing:
        validate_csv("to,patient_name\n09010000001,x\n")
    assert (missing.value.code, missing.value.names) == ("missing_columns", ("topic",))
    with pytest.raises(rows.RecipientsError) as no_to:
        rows.read_csv("phone,patient_name\n", max_rows=10)
    assert no_to.value.code == "missing_columns"
    with pytest.raises(rows.RecipientsError) as bad_quote:
        validate_csv('to,patient_name,topic\n09010000001,a,b\n09010000002,"a"b,c\n')
    assert (bad_quote.value.code, bad_quote.value.row) == ("invalid_csv", 3)
    with pytest.raises(rows.RecipientsError) as too_many:
        validate_csv("to,patient_name,topic\n" + "".join(f"{number(i)},a,b\n" for i in range(4)), max_rows=3)
    assert (too_many.value.code, too_many.value.row) == ("too_many_rows", 5)


def test_csv_encodings():
    assert rows.decode_csv("\ufeffto\n".encode(), None) == "to\n"
    assert rows.decode_csv("to,名前\n".encode("cp932"), "shift_jis") == "to,名前\n"
    with pytest.raises(rows.RecipientsError) as bad:
        rows.decode_csv(b"to\n09010000001\n\xff\xfe\n", None)
    assert bad.value.row == 3 and "charset" in bad.value.detail


def test_json_rows_carry_their_path():
    result = rows.validate_rows(
        rows.json_rows([{"to": "09010000001", "vars": {"patient_name": "a"}}, {"to": 5, "vars": {}}]),
        TEMPLATE,
        region="JP",
        max_parts=3,
    )
    assert [(p.row, p.field) for p in result.rejected] == [
        (1, "recipients.0.vars.topic"),
        (2, "recipients.1.to"),
    ]


# --- service --------------------------------------------------------------------------------------------
SMS = SmsSettings(retry_backoff_s=(5.0,), send_retries=2, report=False)
SMALL = CampaignSettings(batch_size=4, window_per_route=3, max_window=50, store_chunk_rows=100)


class Rig:
    def __init__(self, store, bus, modems, settings, policies=()):
        self.store, self.bus = store, bus
        self.sms = SmsService(store, bus, modems, settings=SMS, clock=clock, submit_policies=policies)
        self.dispatcher = SmsDispatcher(store, bus, modems, settings=SMS, clock=clock, service=self.sms)
        self.templates = TemplateStore(store, clock=clock)
        self.campaigns = CampaignService(
            store,
            bus,
            self.sms,
            self.templates,
            dispatcher=self.dispatcher,
            settings=settings,
            clock=clock,
            validate_runner=inline,
        )
        self.events = []  # (event, trio time of its commit)
        self._changed = trio.Event()

        def listen(event):
            self.events.append((event, trio.current_time()))
            self._changed.set()

        bus.add_listener(listen)

    def progress(self, campaign_id):
        return [
            (e, t) for e, t in self.events if e.type == "campaign.progress" and e.data["id"] == campaign_id
        ]

    async def wait_status(self, campaign_id, status, within=3600):
        with trio.fail_after(within):
            while True:
                changed = self._changed = trio.Event()
                if (await self.campaigns.get(campaign_id)).status == status:
                    return
                await changed.wait()

    async def messages_per_number(self, campaign_id):
        def query(tx):
            return tx.connection.execute(
                "SELECT to_number, count(*) FROM messages WHERE campaign_id = ? GROUP BY to_number",
                (campaign_id,),
            ).fetchall()

        return dict(await self.store.read(query))


@asynccontextmanager
async def rig(path, modems, settings=SMALL, policies=()):
    store = await SqliteStore.open(path, clock=clock, runner=run_inline)
    bus = EventBus(store)
    r = Rig(store, bus, {m.name: m for m in modems}, settings, policies)
    if await r.templates.get(TEMPLATE.id) is None:
        await r.templates.create(TEMPLATE.id, TEMPLATE.category, TEMPLATE.language, TEMPLATE.body)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(r.dispatcher.run)
            await nursery.start(r.campaigns.run)
            yield r
            nursery.cancel_scope.cancel()
    finally:
        await store.close()


def assert_counts_add_up(counts):
    assert sum(counts[k] for k in COUNT_KEYS) == counts["total"], counts


async def test_campaign_is_fed_through_a_window_and_completes(tmp_path, autojump_clock):
    modems = [FakeModem("gsm0", latency=2.0), FakeModem("gsm1", latency=2.0)]
    async with rig(tmp_path / "gw.db", modems) as r:
        queued: set[str] = set()
        most = 0

        def watch(event):
            nonlocal most
            if event.type == "sms.queued":
                queued.add(event.data["id"])
            elif event.type in ("sms.sent", "sms.failed"):
                queued.discard(event.data["id"])
            most = max(most, len(queued))

        r.bus.add_listener(watch)
        given = recipients(30) + [{"to": "12", "vars": {}}, recipients(1)[0]]
        created = await r.campaigns.create(template_id="edu", recipients=given)
        campaign = created.campaign
        assert campaign.status == "running" and campaign.row.category == "education"
        assert [(p.row, p.code) for p in created.rejected] == [(31, "invalid_number"), (32, "duplicate")]
        assert (campaign.row.accepted, campaign.row.rejected, campaign.row.duplicates) == (30, 1, 1)
        await r.wait_status(campaign.id, "completed")
        await trio.sleep(2)  # the last campaign.progress follows within the rate limit
        assert most <= 6  # 2 healthy modems x window_per_route 3: never 30 rows in the queue
        done = await r.campaigns.get(campaign.id)
        assert done.counts["sent"] == 30 and done.counts["pending"] == 0 and done.eta_s == 0.0
        assert_counts_add_up(done.counts)
        assert set((await r.messages_per_number(campaign.id)).values()) == {1}
        assert sum(len(m.sent) for m in modems) == 30 and all(m.sent for m in modems)
        times = [t for _, t in r.progress(campaign.id)]
        assert len(times) >= 3 and all(b - a >= 1.0 for a, b in zip(times, times[1:], strict=False))
        last = r.progress(campaign.id)[-1][0].data
        assert last["status"] == "completed" and last["counts"]["sent"] == 30
        assert any(e.data["throughput_per_s"] for e, _ in r.progress(campaign.id))
        rejected, cursor = await r.campaigns.rejected(campaign.id, limit=1)
        assert [p.row for p in rejected] == [31] and cursor is not None
        rest, end = await r.campaigns.rejected(campaign.id, cursor=cursor)
        assert [p.code for p in rest] == ["duplicate"] and end is None


async def test_pause_resume_cancel(tmp_path, autojump_clock):
    async with rig(tmp_path / "gw.db", [FakeModem("gsm0", latency=5.0)]) as r:
        campaign = (await r.campaigns.create(template_id="edu", recipients=recipients(40))).campaign
        await trio.sleep(12)
        paused = await r.campaigns.pause(campaign.id)
        assert paused.status == "paused"
        submitted = paused.row.submitted
        await trio.sleep(120)  # the window drains, nothing new is fed
        still = await r.campaigns.get(campaign.id)
        assert still.row.submitted == submitted and still.counts["queued"] == 0
        assert still.counts["pending"] == 40 - submitted
        with pytest.raises(Conflict):
            await r.campaigns.pause(campaign.id)
        await r.campaigns.resume(campaign.id)
        await trio.sleep(30)
        canceled = await r.campaigns.cancel(campaign.id)
        assert canceled.status == "canceled" and canceled.counts["pending"] == 0
        assert canceled.counts["canceled"] > 0
        assert_counts_add_up(canceled.counts)
        await trio.sleep(60)
        final = await r.campaigns.get(campaign.id)
        assert final.counts["queued"] == final.counts["sending"] == 0
        assert_counts_add_up(final.counts)
        with pytest.raises(Conflict):
            await r.campaigns.resume(campaign.id)


async def test_start_at_and_bad_requests(tmp_path, autojump_clock):
    async with rig(tmp_path / "gw.db", [FakeModem("gsm0", latency=1.0)]) as r:
        later = (T0 + timedelta(hours=1)).isoformat()
        campaign = (
            await r.campaigns.create(template_id="edu", recipients=recipients(3), start_at=later)
        ).campaign
        assert campaign.status == "scheduled" and campaign.counts["pending"] == 3
        await trio.sleep(3500)
        assert (await r.campaigns.get(campaign.id)).row.submitted == 0
        await r.wait_status(campaign.id, "completed", within=200)
        bad = [
            ({"template_id": "nope"}, "unknown_template"),
            ({"template_id": "edu", "category": "spam"}, "unknown_category"),
            ({"template_id": "edu", "route": "gsm9"}, "unknown_route"),
            ({"template_id": "edu", "start_at": "tomorrow"}, "invalid_start_at"),
            ({"template_id": "edu", "start_at": "2026-11-27T09:00:00"}, "invalid_start_at"),
            (
                {"template_id": "edu", "reply_rule": {"kind": "range", "min": 5, "max": 1}},
                "invalid_reply_rule",
            ),
        ]
        for arguments, code in bad:
            with pytest.raises(CampaignError) as err:
                await r.campaigns.create(recipients=recipients(1), **arguments)
            assert err.value.code == code, arguments
        with pytest.raises(CampaignError) as none:
            await r.campaigns.create(template_id="edu", recipients=[{"to": "1", "vars": {}}] * 2)
        assert none.value.code == "no_valid_recipients" and len(none.value.errors) == 2
        listed, _ = await r.campaigns.list()
        assert [c.id for c in listed] == [campaign.id]


class RefuseOne:
    def check(self, tx, request, e164, category):
        if e164 == "+819010000002":
            raise InvalidRequest("opted_out", f"{e164} opted out of {category}", "to")


async def test_refused_recipients_and_reply_rule(tmp_path, autojump_clock):
    async with rig(tmp_path / "gw.db", [FakeModem("gsm0", latency=1.0)], policies=[RefuseOne()]) as r:
        rule = {"kind": "range", "min": 1, "max": 5}
        campaign = (
            await r.campaigns.create(template_id="edu", recipients=recipients(5), reply_rule=rule)
        ).campaign
        assert campaign.reply_rule == rule
        await r.wait_status(campaign.id, "completed")
        done = await r.campaigns.get(campaign.id)
        assert (done.counts["refused"], done.counts["sent"]) == (1, 4)
        assert_counts_add_up(done.counts)

        def latest(tx):
            return consent_sql.latest_outbound(tx, "+819010000003", T0), consent_sql.get_reply_rule(
                tx, "campaign", campaign.id
            )

        outbound, stored_rule = await r.store.read(latest)
        assert outbound is not None and outbound.campaign_id == campaign.id and stored_rule is not None


async def test_restart_in_the_middle_loses_nothing(tmp_path, autojump_clock):
    path = tmp_path / "gw.db"
    async with rig(path, [FakeModem("gsm0", latency=3.0)]) as r:
        campaign = (await r.campaigns.create(template_id="edu", recipients=recipients(25))).campaign
        await trio.sleep(20)
        before = await r.campaigns.get(campaign.id)
        assert 0 < before.row.submitted < 25
    async with rig(path, [FakeModem("gsm0", latency=3.0)]) as r:
        assert r.campaigns.running_campaigns == [campaign.id]
        await r.wait_status(campaign.id, "completed")
        done = await r.campaigns.get(campaign.id)
        assert done.counts["sent"] == 25
        assert_counts_add_up(done.counts)
        per_number = await r.messages_per_number(campaign.id)
        assert len(per_number) == 25 and Counter(per_number.values()) == Counter({1: 25})


async def test_half_stored_campaign_is_removed_at_start(tmp_path, autojump_clock):
    path = tmp_path / "gw.db"
    async with rig(path, [FakeModem("gsm0")]) as r:

        async def broken(*_args, **_kw):
            raise RuntimeError("disk full")

        r.campaigns._reply_rules.put = broken  # fails after the recipients were stored
        with pytest.raises(RuntimeError):
            await r.campaigns.create(
                template_id="edu",
                recipients=recipients(2),
                reply_rule={"kind": "choices", "values": ["はい"]},
            )
        count = await r.store.read(
            lambda tx: tx.connection.execute("SELECT count(*) FROM campaign_recipients").fetchone()[0]
        )
        assert count == 0
        assert (await r.campaigns.list())[0] == []
