"""SMS templates: placeholder syntax, validated rendering, preview (encoding, parts, cost), seed templates."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from gateway.sms.templates import (
    CATEGORIES,
    MissingVariables,
    Template,
    TemplateError,
    TemplateSyntaxError,
    UnknownVariables,
    load_templates,
    parse_placeholders,
    parse_templates,
    preview,
    substitute,
)

SAMPLE = {
    "patient_name": "山田太郎",
    "hospital": "東京中央病院",
    "date": date(2026, 11, 27),
    "amount": "12,340",
    "total": "98,760",
    "balance": "1,200",
    "threshold": "2,000",
    "items": ["ALT", "AST", "γ-GTP"],
    "department": "内科",
    "doctor": "佐藤",
    "time": "10:30",
    "code": "482913",
    "minutes": 5,
}


def make(body: str, language: str = "ja") -> Template:
    return Template.create(id="t.test", category="billing", language=language, body=body)


# --- syntax ---------------------------------------------------------------------------------------------
def test_placeholders_in_order_of_first_use_each_once():
    assert parse_placeholders("{b} {a} {b} {_c1}") == ("b", "a", "_c1")


def test_doubled_braces_are_literal_and_not_placeholders():
    assert parse_placeholders("{{name}} {{ {x} }}") == ("x",)
    assert substitute("{{name}} = {name}", {"name": "値"}).text == "{name} = 値"
    assert substitute("{{{name}}}", {"name": "v"}).text == "{v}"


@pytest.mark.parametrize(
    ("body", "position", "fragment"),
    [
        ("abc {name", 4, "unclosed '{'"),
        ("abc } def", 4, "single '}'"),
        ("{1x}", 0, "invalid placeholder {1x}"),
        ("ok {a.b}", 3, "invalid placeholder {a.b}"),
        ("{}", 0, "invalid placeholder {}"),
        ("{a b}", 0, "invalid placeholder {a b}"),
    ],
)
def test_syntax_errors_name_the_position(body, position, fragment):
    with pytest.raises(TemplateSyntaxError) as info:
        parse_placeholders(body)
    assert info.value.position == position
    assert fragment in str(info.value)
    assert f"position {position}" in str(info.value)


def test_attribute_access_is_not_possible():
    # str.format would evaluate {x.__class__}; our syntax rejects it outright.
    with pytest.raises(TemplateSyntaxError):
        substitute("{x.__class__}", {"x": "a"})


# --- rendering ------------------------------------------------------------------------------------------
def test_missing_variables_are_all_named_in_template_order():
    template = make("{patient_name}様 {date}の入院費用は{amount}円")
    with pytest.raises(MissingVariables) as info:
        template.render({"amount": "100"})
    assert info.value.missing == ("patient_name", "date")
    assert str(info.value) == "missing template variables for template 't.test': patient_name, date"


@pytest.mark.parametrize("empty", [None, "", "   ", []])
def test_none_blank_and_empty_list_count_as_missing(empty):
    with pytest.raises(MissingVariables) as info:
        make("{patient_name}様").render({"patient_name": empty})
    assert info.value.missing == ("patient_name",)
    assert str(info.value).startswith("missing template variable for")


def test_unused_values_are_reported_and_strict_rejects_them():
    template = make("{patient_name}様")
    rendered = template.render({"patient_name": "田中", "patient": "typo", "extra": 1})
    assert rendered.text == "田中様"
    assert rendered.unused == ("patient", "extra")
    with pytest.raises(UnknownVariables) as info:
        template.render({"patient_name": "田中", "patient": "typo"}, strict=True)
    assert info.value.unknown == ("patient",)
    assert "patient" in str(info.value)


def test_values_are_substituted_once_not_re_expanded():
    assert make("{a}").render({"a": "{b}", "b": "x"}).text == "{b}"


def test_lists_and_dates_follow_the_template_language():
    items = ["ALT", "AST"]
    day = date(2026, 1, 5)
    assert make("{items} {date}", "ja").render({"items": items, "date": day}).text == "ALT、AST 2026年1月5日"
    assert make("{items} {date}", "zh").render({"items": items, "date": day}).text == "ALT、AST 2026年1月5日"
    assert make("{items} {date}", "en").render({"items": items, "date": day}).text == "ALT, AST 2026-01-05"
    assert make("{n}", "en").render({"n": 42}).text == "42"


def test_template_create_validates_fields():
    with pytest.raises(TemplateError, match="category"):
        Template.create(id="x", category="marketing", language="ja", body="hi")
    with pytest.raises(TemplateError, match="unclosed"):
        Template.create(id="x", category="otp", language="ja", body="code {code")
    with pytest.raises(TemplateError, match="id"):
        Template.create(id="Bad Id", category="otp", language="ja", body="hi")


# --- preview: encoding and part counts from the PDU encoder (TS 23.038 / TS 23.040) --------------------
@pytest.mark.parametrize(
    ("text", "encoding", "parts"),
    [
        ("x" * 160, "gsm7", 1),  # 160 septets in one SMS
        ("x" * 161, "gsm7", 2),  # then 153 per part with an 8-bit concat UDH
        ("x" * 306, "gsm7", 2),
        ("x" * 307, "gsm7", 3),
        ("€" * 80, "gsm7", 1),  # extension table: 2 septets each
        ("€" * 81, "gsm7", 2),
        ("あ" * 70, "ucs2", 1),  # 70 UCS2 units in one SMS
        ("あ" * 71, "ucs2", 2),  # then 67 per part
        ("あ" * 134, "ucs2", 2),
        ("あ" * 135, "ucs2", 3),
    ],
)
def test_preview_counts_parts_at_the_boundaries(text, encoding, parts):
    # Boundaries: pmarti/python-messaging messaging/test/test_sms.py (160/161, 306/307, € x 80, 70/67).
    result = preview(make("{t}"), {"t": text}, price_per_part="0.05")
    assert (result.encoding, result.parts) == (encoding, parts)
    assert result.cost == Decimal("0.05") * parts
    assert result.characters == len(text)


def test_preview_without_price_has_no_cost_and_reports_unused():
    result = preview(make("{a}"), {"a": "hi", "b": "unused"})
    assert result.cost is None
    assert result.to_json() == {
        "text": "hi",
        "encoding": "gsm7",
        "parts": 1,
        "characters": 2,
        "cost": None,
        "unused_variables": ["b"],
    }


@pytest.mark.parametrize(
    ("price", "message"),
    [(0.05, "not a float"), ("abc", "not a decimal"), ("-1", ">= 0"), ("NaN", "finite")],
)
def test_preview_rejects_bad_prices(price, message):
    with pytest.raises(TemplateError, match=message):
        preview(make("{a}"), {"a": "x"}, price_per_part=price)


def test_preview_rejects_text_that_cannot_be_encoded():
    with pytest.raises(TemplateError, match="cannot be sent"):
        preview(make("{a}"), {"a": "bad \ud800 surrogate"})


# --- seed templates -------------------------------------------------------------------------------------
def test_seed_templates_cover_every_kind_in_japanese_and_chinese():
    catalog = load_templates()
    kinds = {
        "inpatient_daily_cost": "billing",
        "deposit_reminder": "billing",
        "lab_result_ready": "lab_result",
        "appointment_confirmed": "appointment",
        "clinic_cancelled": "appointment",
        "verification_code": "otp",
    }
    for kind, category in kinds.items():
        for language in ("ja", "zh"):
            template = catalog[f"{kind}.{language}"]
            assert template.category == category
            assert template.language == language
            assert template.category in CATEGORIES
    assert len(catalog) == 12


def test_seed_daily_cost_wording():
    catalog = load_templates()
    ja, zh = catalog["inpatient_daily_cost.ja"].body, catalog["inpatient_daily_cost.zh"].body
    assert ja.startswith("{patient_name}様") and "{date}の入院費用は" in ja
    assert zh.startswith("尊敬的{patient_name}") and "您{date}的住院费用为" in zh


def test_every_seed_template_renders_to_one_ucs2_part_with_typical_values():
    for template in load_templates().values():
        values = {name: SAMPLE[name] for name in template.placeholders}
        result = preview(template, values, price_per_part="0.073")
        assert result.encoding == "ucs2", template.id
        assert result.parts == 1, (template.id, result.characters)
        assert result.cost == Decimal("0.073")
        assert "{" not in result.text and "}" not in result.text


def test_lab_result_lists_the_abnormal_items():
    template = load_templates()["lab_result_ready.zh"]
    values = {name: SAMPLE[name] for name in template.placeholders}
    assert "异常项目：ALT、AST、γ-GTP。" in template.render(values).text


# --- catalogue parsing ----------------------------------------------------------------------------------
def test_parse_templates_reports_every_problem_with_the_template_id():
    document = {
        "templates": [
            {"id": "a.ja", "category": "billing", "language": "ja", "body": "ok {x}"},
            {"id": "a.ja", "category": "billing", "language": "ja", "body": "dup"},
            {"id": "b.ja", "category": "sales", "language": "ja", "body": "x"},
            {"id": "c.ja", "category": "otp", "language": "ja", "body": "{code"},
            {"id": "d.ja", "category": "otp", "language": "ja", "body": "x", "colour": "red"},
        ]
    }
    with pytest.raises(TemplateError) as info:
        parse_templates(document, source="mine.yaml")
    message = str(info.value)
    assert message.startswith("mine.yaml: ")
    assert "'a.ja': duplicate id" in message
    assert "'b.ja': category" in message
    assert "'c.ja': body" in message and "unclosed" in message
    assert "'d.ja': colour" in message


def test_parse_templates_rejects_the_wrong_shape():
    with pytest.raises(TemplateError, match="'templates' list"):
        parse_templates([{"id": "x"}])
    with pytest.raises(TemplateError, match="unknown top-level keys: version"):
        parse_templates({"templates": [], "version": 2})


def test_load_templates_reports_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(TemplateError, match="cannot read templates file"):
        load_templates(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: [\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="invalid YAML"):
        load_templates(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "templates:\n  - {id: otp.en, category: otp, language: en, body: 'Code {code}'}\n", encoding="utf-8"
    )
    assert load_templates(good)["otp.en"].render({"code": "1234"}).text == "Code 1234"
