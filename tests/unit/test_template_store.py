"""TemplateStore: seeding once, CRUD with revisions, validation, rendering and preview over SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import trio

from gateway.sms.template_store import DEFAULT_CATEGORIES, TemplateExists, TemplateNotFound, TemplateStore
from gateway.sms.templates import MissingVariables, TemplateError, load_templates
from gateway.store.sqlite import SqliteStore, run_inline

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
SEED = load_templates()


def clock() -> datetime:
    return T0 + timedelta(seconds=trio.current_time())


@pytest.fixture
async def store(tmp_path):
    s = await SqliteStore.open(tmp_path / "gw.sqlite3", clock=clock, runner=run_inline)
    yield s
    await s.close()


@pytest.fixture
async def templates(store):
    t = TemplateStore(store, clock=clock, default_price_per_part="0.1")
    await t.seed()
    return t


async def test_first_start_seeds_every_builtin_template(templates):
    stored = await templates.list()
    assert [t.id for t in stored] == sorted(SEED)
    assert all(t.source == "seed" and t.revision == 1 for t in stored)
    code = await templates.get("verification_code.ja")
    assert code is not None and code.template.category == "otp"
    assert code.template.placeholders == ("hospital", "code", "minutes")


async def test_seeding_happens_once_so_an_operator_deletion_survives_a_restart(tmp_path):
    path = tmp_path / "gw.sqlite3"
    store = await SqliteStore.open(path, clock=clock, runner=run_inline)
    first = TemplateStore(store, clock=clock)
    assert await first.seed() == len(SEED)
    await first.delete("deposit_reminder.zh")
    await store.close()

    store = await SqliteStore.open(path, clock=clock, runner=run_inline)
    again = TemplateStore(store, clock=clock)
    assert await again.seed() == 0
    assert await again.get("deposit_reminder.zh") is None
    assert len(await again.list()) == len(SEED) - 1
    await store.close()


async def test_create_read_and_filter(templates):
    created = await templates.create(
        "flu_campaign.ja",
        "education",
        "ja",
        "{patient_name}様 インフルエンザ予防接種のご案内です。",
        "予防接種",
    )
    assert created.source == "api" and created.revision == 1
    assert created.template.placeholders == ("patient_name",)
    got = await templates.get("flu_campaign.ja")
    assert got is not None and got.to_json() == created.to_json()
    education = await templates.list(category="education")
    assert [t.id for t in education] == ["flu_campaign.ja"]
    chinese = await templates.list(language="zh")
    assert chinese and all(t.template.language == "zh" for t in chinese)
    assert await templates.list(category="billing", language="zh") == [
        t for t in chinese if t.template.category == "billing"
    ]


async def test_every_configured_category_is_accepted_and_others_are_not(templates):
    for n, category in enumerate(DEFAULT_CATEGORIES):
        await templates.create(f"c{n}", category, "ja", "本文")
    with pytest.raises(TemplateError, match="category: 'marketing' is not one of"):
        await templates.create("x", "marketing", "ja", "本文")


async def test_custom_category_set(store):
    only = TemplateStore(store, categories=("otp",), clock=clock)
    await only.create("a", "otp", "ja", "{code}")
    with pytest.raises(TemplateError, match="category"):
        await only.create("b", "care", "ja", "x")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"id": "Bad Id"}, "id"),
        ({"language": "japanese"}, "language"),
        ({"body": ""}, "body"),
        ({"body": "{patient.name}"}, "invalid placeholder"),
        ({"body": "a } b"}, "single '}'"),
    ],
)
async def test_invalid_templates_are_refused_with_the_reason(templates, kwargs, fragment):
    fields = {"id": "ok.ja", "category": "care", "language": "ja", "body": "{x}", **kwargs}
    with pytest.raises(TemplateError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        await templates.create(**fields)
    assert await templates.get("ok.ja") is None


async def test_duplicate_id_is_a_conflict_and_changes_nothing(templates):
    with pytest.raises(TemplateExists, match="verification_code.ja"):
        await templates.create("verification_code.ja", "otp", "ja", "{code} だけ")
    got = await templates.get("verification_code.ja")
    assert got is not None and got.source == "seed" and "認証コード" in got.template.body


async def test_replace_bumps_the_revision(templates, autojump_clock):
    before = await templates.require("appointment_confirmed.ja")
    await trio.sleep(60)
    after = await templates.replace(
        "appointment_confirmed.ja",
        category="appointment",
        language="ja",
        body="{patient_name}様 予約確定",
        name="n",
    )
    assert after.revision == before.revision + 1
    assert after.updated_at - before.updated_at == timedelta(seconds=60)
    assert after.created_at == before.created_at and after.source == "seed"
    assert (await templates.require("appointment_confirmed.ja")).template.body == "{patient_name}様 予約確定"
    with pytest.raises(TemplateNotFound):
        await templates.replace("nope", category="care", language="ja", body="x")
    with pytest.raises(TemplateError, match="unclosed '{' at position 0"):
        await templates.replace("appointment_confirmed.ja", category="appointment", language="ja", body="{")


async def test_delete(templates):
    await templates.delete("clinic_cancelled.ja")
    assert await templates.get("clinic_cancelled.ja") is None
    with pytest.raises(TemplateNotFound):
        await templates.delete("clinic_cancelled.ja")


async def test_render_names_every_missing_variable(templates):
    with pytest.raises(MissingVariables) as info:
        await templates.render("inpatient_daily_cost.ja", {"patient_name": "山田", "amount": ""})
    assert info.value.missing == ("date", "amount", "total", "hospital")
    with pytest.raises(TemplateNotFound):
        await templates.render("missing", {})


async def test_preview_counts_parts_and_prices_them(templates):
    values = {"hospital": "東京中央病院", "code": "123456", "minutes": 5, "extra": "x"}
    result = await templates.preview("verification_code.ja", values)
    assert (
        result.text
        == "【東京中央病院】認証コード：123456（5分間有効）。このコードを他人に教えないでください。"
    )
    assert (result.encoding, result.parts) == ("ucs2", 1)
    assert result.cost == Decimal("0.1")  # the configured default price
    assert result.unused == ("extra",)
    long = await templates.create("long.ja", "care", "ja", "あ" * 71)
    priced = await templates.preview(long.id, {}, price_per_part="0.068")
    assert (priced.parts, priced.cost) == (2, Decimal("0.136"))  # 71 UCS2 characters: 67 + 4


async def test_preview_without_any_price_has_no_cost(store):
    t = TemplateStore(store, clock=clock)
    await t.create("g", "care", "en", "hello {name}")
    result = await t.preview("g", {"name": "Taro"})
    assert (result.text, result.encoding, result.parts, result.cost) == ("hello Taro", "gsm7", 1, None)
