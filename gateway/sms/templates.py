"""SMS templates: bodies with ``{name}`` placeholders, rendered with validation, previewed with cost.

Syntax. ``{name}`` is a placeholder (``name`` = a letter or ``_``, then letters, digits, ``_``); ``{{`` and
``}}`` are a literal brace. Anything else with a brace is a syntax error naming its position. There is no
attribute access, indexing or format spec (``str.format`` would let a template read ``{x.__class__}``): a
template is data an operator edits, not code.

Rendering. Every placeholder needs a value; missing (or ``None``, or blank) values raise ``MissingVariables``
naming all of them at once. Values that the template does not use are reported in ``Rendered.unused`` (or
rejected with ``strict=True``): a CRM that sends ``{patient}`` instead of ``{patient_name}`` learns it. Values
are substituted once: a value that contains ``{x}`` stays literal text. Lists join with the language's list
separator ("、" for ja/zh); ``date`` objects format as ``2026年11月27日`` in ja/zh and ISO 8601 otherwise.

The same placeholder parser serves the HTTP provider route's URL/header/body templates
(``gateway.sms.http_provider``), so both share one syntax and one set of error messages.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from drivers.gsm.pdu import EncodeError, count_parts

SEED_TEMPLATES_PATH = Path(__file__).with_name("seed_templates.yaml")
CATEGORIES = ("billing", "lab_result", "appointment", "otp")
Category = Literal["billing", "lab_result", "appointment", "otp"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_LIST_SEPARATOR = {"ja": "、", "zh": "、"}


class TemplateError(ValueError):
    """A template body that cannot be parsed, or values that cannot be rendered into it."""


class TemplateSyntaxError(TemplateError):
    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.position = position


class MissingVariables(TemplateError):
    def __init__(self, missing: Iterable[str], template_id: str | None = None):
        self.missing = tuple(missing)
        where = f" for template {template_id!r}" if template_id else ""
        noun = "variable" if len(self.missing) == 1 else "variables"
        super().__init__(f"missing template {noun}{where}: {', '.join(self.missing)}")


class UnknownVariables(TemplateError):
    def __init__(self, unknown: Iterable[str], template_id: str | None = None):
        self.unknown = tuple(unknown)
        where = f" {template_id!r}" if template_id else ""
        noun = "variable" if len(self.unknown) == 1 else "variables"
        super().__init__(f"template{where} does not use the {noun}: {', '.join(self.unknown)}")


@dataclass(frozen=True)
class _Piece:
    literal: str | None = None
    name: str | None = None


def _pieces(body: str) -> tuple[_Piece, ...]:
    """Split a body into literal text and placeholder names; raise TemplateSyntaxError with a position."""
    if not isinstance(body, str):
        raise TemplateError(f"template body must be text, not {type(body).__name__}")
    return _parse_body(body)


@functools.lru_cache(maxsize=1024)  # the same few bodies are rendered for every message
def _parse_body(body: str) -> tuple[_Piece, ...]:
    out: list[_Piece] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(body):
        literal.append(body[pos : m.start()])
        token = m.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif token == "{":
            raise TemplateSyntaxError(
                f"unclosed '{{' at position {m.start()} (write '{{{{' for a literal brace)", m.start()
            )
        elif token == "}":
            raise TemplateSyntaxError(
                f"single '}}' at position {m.start()} (write '}}}}' for a literal brace)", m.start()
            )
        else:
            name = m.group(1)
            if not _NAME.fullmatch(name):
                raise TemplateSyntaxError(
                    f"invalid placeholder {{{name}}} at position {m.start()}: names are letters, digits "
                    "and '_', not starting with a digit",
                    m.start(),
                )
            if literal:
                out.append(_Piece(literal="".join(literal)))
                literal = []
            out.append(_Piece(name=name))
        pos = m.end()
    literal.append(body[pos:])
    if any(literal):
        out.append(_Piece(literal="".join(literal)))
    return tuple(out)


def parse_placeholders(body: str) -> tuple[str, ...]:
    """The placeholder names in ``body``, in order of first appearance, each once."""
    return tuple(dict.fromkeys(p.name for p in _pieces(body) if p.name is not None))


def format_value(value: Any, language: str | None = None) -> str:
    """Text for one value: lists joined with the language's separator, dates in the local style."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    if isinstance(value, date):
        if language in ("ja", "zh"):
            return f"{value.year}年{value.month}月{value.day}日"
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        separator = _LIST_SEPARATOR.get(language or "", ", ")
        return separator.join(format_value(v, language) for v in value)
    return str(value)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    return False


@dataclass(frozen=True)
class Rendered:
    text: str
    unused: tuple[str, ...] = ()  # values given that the template does not use


def substitute(
    body: str,
    values: Mapping[str, Any],
    *,
    language: str | None = None,
    strict: bool = False,
    template_id: str | None = None,
) -> Rendered:
    """Render ``body`` with ``values``; see the module docstring for the rules."""
    pieces = _pieces(body)
    names = dict.fromkeys(p.name for p in pieces if p.name is not None)
    missing = [n for n in names if n not in values or _is_missing(values[n])]
    if missing:
        raise MissingVariables(missing, template_id)
    unused = tuple(k for k in values if k not in names)
    if unused and strict:
        raise UnknownVariables(unused, template_id)
    text = "".join(
        p.literal if p.literal is not None else format_value(values[p.name], language) for p in pieces
    )
    return Rendered(text=text, unused=unused)


class _TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    category: Category
    language: str = Field(pattern=r"^[a-z]{2}(-[A-Za-z0-9]{2,8})?$", description="BCP 47, e.g. ja, zh, zh-TW")
    name: str = ""
    body: str = Field(min_length=1)

    @field_validator("body")
    @classmethod
    def _parses(cls, v: str) -> str:
        _pieces(v)  # TemplateSyntaxError is a ValueError: pydantic reports it against this field
        return v


@dataclass(frozen=True)
class Template:
    id: str
    category: str
    language: str
    body: str
    name: str = ""
    placeholders: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def create(cls, id: str, category: str, language: str, body: str, name: str = "") -> Template:
        """Validate and build a template (raises TemplateError with the reason)."""
        try:
            spec = _TemplateSpec(id=id, category=category, language=language, body=body, name=name)
        except ValidationError as exc:
            raise TemplateError(_validation_message(exc, id)) from None
        return cls._from_spec(spec)

    @classmethod
    def _from_spec(cls, spec: _TemplateSpec) -> Template:
        return cls(
            id=spec.id,
            category=spec.category,
            language=spec.language,
            body=spec.body,
            name=spec.name,
            placeholders=parse_placeholders(spec.body),
        )

    def render(self, values: Mapping[str, Any], *, strict: bool = False) -> Rendered:
        return substitute(self.body, values, language=self.language, strict=strict, template_id=self.id)


@dataclass(frozen=True)
class Preview:
    text: str
    encoding: str  # "gsm7" | "ucs2"
    parts: int
    characters: int
    cost: Decimal | None  # parts x price per part, None when no price was given
    unused: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "encoding": self.encoding,
            "parts": self.parts,
            "characters": self.characters,
            "cost": None if self.cost is None else str(self.cost),
            "unused_variables": list(self.unused),
        }


def preview(
    template: Template,
    values: Mapping[str, Any],
    *,
    price_per_part: Decimal | str | int | None = None,
    strict: bool = False,
) -> Preview:
    """Render, then count SMS parts as the PDU encoder would (TS 23.038 alphabet choice, TS 23.040 §9.2.3.24
    concatenation: 160/153 GSM-7 septets, 70/67 UCS2 units) and price them.

    ``price_per_part`` is a Decimal or a decimal string (a float would carry binary rounding into money).
    """
    rendered = template.render(values, strict=strict)
    try:
        encoding, parts = count_parts(rendered.text)
    except EncodeError as exc:
        raise TemplateError(f"template {template.id!r} renders text that cannot be sent: {exc}") from None
    cost = None
    if price_per_part is not None:
        if isinstance(price_per_part, float):
            raise TemplateError("price_per_part must be a Decimal or a decimal string, not a float")
        try:
            price = Decimal(price_per_part)
        except InvalidOperation:
            raise TemplateError(f"price_per_part {price_per_part!r} is not a decimal number") from None
        if not price.is_finite() or price < 0:
            raise TemplateError(f"price_per_part must be a finite number >= 0, not {price_per_part!r}")
        cost = price * parts
    return Preview(
        text=rendered.text,
        encoding=encoding,
        parts=parts,
        characters=len(rendered.text),
        cost=cost,
        unused=rendered.unused,
    )


def _validation_message(exc: ValidationError, template_id: Any) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        problems.append(f"{where}: {err['msg']}")
    return f"template {template_id!r}: " + "; ".join(problems)


def parse_templates(document: Any, *, source: str = "templates") -> dict[str, Template]:
    """Templates from a parsed YAML/JSON document ``{"templates": [{id, category, language, body}, ...]}``."""
    if not isinstance(document, Mapping) or not isinstance(document.get("templates"), list):
        raise TemplateError(f"{source}: expected a mapping with a 'templates' list")
    extra = sorted(set(document) - {"templates"})
    if extra:
        raise TemplateError(f"{source}: unknown top-level keys: {', '.join(map(str, extra))}")
    catalog: dict[str, Template] = {}
    problems: list[str] = []
    for index, item in enumerate(document["templates"]):
        item_id = item.get("id", f"#{index}") if isinstance(item, Mapping) else f"#{index}"
        try:
            spec = _TemplateSpec.model_validate(dict(item) if isinstance(item, Mapping) else item)
        except ValidationError as exc:
            problems.append(_validation_message(exc, item_id))
            continue
        if spec.id in catalog:
            problems.append(f"template {spec.id!r}: duplicate id")
            continue
        catalog[spec.id] = Template._from_spec(spec)
    if problems:
        raise TemplateError(f"{source}: " + "; ".join(problems))
    return catalog


def load_templates(path: Path | str = SEED_TEMPLATES_PATH) -> dict[str, Template]:
    """Read a templates YAML file (default: the built-in Japanese and Chinese seed templates)."""
    path = Path(path)
    try:
        document = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TemplateError(f"cannot read templates file {path}: {exc.strerror}") from None
    except YAMLError as exc:
        raise TemplateError(f"{path}: invalid YAML: {exc}") from None
    return parse_templates(document, source=str(path))
