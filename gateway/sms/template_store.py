"""Templates stored in the gateway: CRUD over the database, seeded once, rendered and previewed.

Parsing, rendering and the preview (encoding, parts, cost) are ``gateway.sms.templates``; this module keeps
the templates in the store (``gateway.store.verify_sql``) so operators edit them over ``/v1/templates``.

Seeding: on the first start (``seed()``, meta ``sms_templates_seeded`` absent) the built-in Japanese and
Chinese templates (``seed_templates.yaml``) are inserted. Later starts do not touch the table, so an
operator's edit or deletion of a seed template stays as the operator left it.

Categories: ``gateway.sms.templates`` only knows the four categories its seed file uses; the store accepts the
gateway's configured categories (default: the seven of issue 4) and validates everything else (id, language,
body syntax) through ``Template.create``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from gateway.events import format_time, utc_now
from gateway.sms import templates as tmpl
from gateway.store import verify_sql as sql
from gateway.store.base import Store, StoreTx

log = structlog.get_logger("sms.templates")

DEFAULT_CATEGORIES = ("otp", "lab_result", "appointment", "billing", "care", "education", "report")


class TemplateNotFound(LookupError):
    def __init__(self, template_id: str):
        super().__init__(f"no template with id {template_id!r}")
        self.template_id = template_id


class TemplateExists(Exception):
    def __init__(self, template_id: str):
        super().__init__(
            f"a template with id {template_id!r} exists already; PUT /v1/templates/{template_id}"
        )
        self.template_id = template_id


@dataclass(frozen=True)
class StoredTemplate:
    template: tmpl.Template
    revision: int
    source: str  # "seed" | "api"
    created_at: datetime
    updated_at: datetime

    @property
    def id(self) -> str:
        return self.template.id

    def to_json(self) -> dict[str, Any]:
        t = self.template
        return {
            "id": t.id,
            "category": t.category,
            "language": t.language,
            "name": t.name,
            "body": t.body,
            "placeholders": list(t.placeholders),
            "revision": self.revision,
            "source": self.source,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }


class TemplateStore:
    """``await TemplateStore(store).seed()`` once at start-up; then the CRUD and render methods."""

    def __init__(
        self,
        store: Store,
        *,
        categories: Iterable[str] = DEFAULT_CATEGORIES,
        default_price_per_part: Decimal | str | None = None,
        clock: Callable[[], datetime] = utc_now,
        seed_path: Any = tmpl.SEED_TEMPLATES_PATH,
    ):
        self._store = store
        self.categories = tuple(categories)
        self.default_price_per_part = (
            None if default_price_per_part is None else Decimal(default_price_per_part)
        )
        self._clock = clock
        self._seed_path = seed_path

    # --- validation --------------------------------------------------------------------------------------
    def build(self, id: str, category: str, language: str, body: str, name: str = "") -> tmpl.Template:
        """A validated Template (raises ``TemplateError`` naming the field at fault)."""
        if not isinstance(category, str) or category not in self.categories:
            raise tmpl.TemplateError(
                f"template {id!r}: category: {category!r} is not one of {', '.join(self.categories)}"
            )
        # Template.create validates id, language and body; its category check only knows the seed's four.
        checked = tmpl.Template.create(
            id=id, category=tmpl.CATEGORIES[0], language=language, body=body, name=name
        )
        return dataclasses.replace(checked, category=category)

    # --- seeding -----------------------------------------------------------------------------------------
    async def seed(self, seed_templates: Mapping[str, tmpl.Template] | None = None) -> int:
        """Insert the seed templates on the first start; returns how many were inserted (0 afterwards)."""
        catalog = dict(seed_templates) if seed_templates is not None else tmpl.load_templates(self._seed_path)
        now = self._clock()

        def unit(tx: StoreTx) -> int:
            if sql.templates_seeded(tx):
                return 0
            inserted = sum(sql.insert_template(tx, _row(t, 1, "seed", now, now)) for t in catalog.values())
            sql.mark_templates_seeded(tx, now)
            return inserted

        inserted = await self._store.write(unit)
        if inserted:
            log.info("seed templates stored", count=inserted)
        return inserted

    # --- CRUD --------------------------------------------------------------------------------------------
    async def list(self, *, category: str | None = None, language: str | None = None) -> list[StoredTemplate]:
        rows = await self._store.read(lambda tx: sql.list_templates(tx, category=category, language=language))
        return [_stored(r) for r in rows]

    async def get(self, template_id: str) -> StoredTemplate | None:
        row = await self._store.read(lambda tx: sql.get_template(tx, template_id))
        return None if row is None else _stored(row)

    async def require(self, template_id: str) -> StoredTemplate:
        found = await self.get(template_id)
        if found is None:
            raise TemplateNotFound(template_id)
        return found

    async def create(
        self, id: str, category: str, language: str, body: str, name: str = ""
    ) -> StoredTemplate:
        template = self.build(id, category, language, body, name)
        now = self._clock()
        row = _row(template, 1, "api", now, now)

        def unit(tx: StoreTx) -> None:
            if not sql.insert_template(tx, row):
                raise TemplateExists(id)

        await self._store.write(unit)
        log.info("template created", template_id=id, category=category, language=language)
        return _stored(row)

    async def replace(
        self, id: str, *, category: str, language: str, body: str, name: str = ""
    ) -> StoredTemplate:
        """Replace a template's category, language, name and body (revision + 1)."""
        template = self.build(id, category, language, body, name)
        now = self._clock()

        def unit(tx: StoreTx) -> sql.TemplateRow:
            changed = sql.replace_template(
                tx, id, category=template.category, language=language, name=name, body=body, updated_at=now
            )
            if not changed:
                raise TemplateNotFound(id)
            return sql.get_template(tx, id)  # type: ignore[return-value]

        row = await self._store.write(unit)
        log.info("template updated", template_id=id, revision=row.revision)
        return _stored(row)

    async def delete(self, id: str) -> None:
        def unit(tx: StoreTx) -> None:
            if not sql.delete_template(tx, id):
                raise TemplateNotFound(id)

        await self._store.write(unit)
        log.info("template deleted", template_id=id)

    # --- rendering ---------------------------------------------------------------------------------------
    async def render(
        self, template_id: str, values: Mapping[str, Any], *, strict: bool = False
    ) -> tmpl.Rendered:
        """Render a stored template; ``MissingVariables`` names every missing value."""
        return (await self.require(template_id)).template.render(values, strict=strict)

    async def preview(
        self,
        template_id: str,
        values: Mapping[str, Any],
        *,
        price_per_part: Decimal | str | int | None = None,
    ) -> tmpl.Preview:
        """Text, encoding, parts and cost (``price_per_part`` or the configured default)."""
        stored = await self.require(template_id)
        price = self.default_price_per_part if price_per_part is None else price_per_part
        return tmpl.preview(stored.template, values, price_per_part=price)


def _row(
    template: tmpl.Template, revision: int, source: str, created: datetime, updated: datetime
) -> sql.TemplateRow:
    return sql.TemplateRow(
        id=template.id,
        category=template.category,
        language=template.language,
        name=template.name,
        body=template.body,
        revision=revision,
        source=source,
        created_at=created,
        updated_at=updated,
    )


def _stored(row: sql.TemplateRow) -> StoredTemplate:
    template = tmpl.Template(
        id=row.id,
        category=row.category,
        language=row.language,
        body=row.body,
        name=row.name,
        placeholders=tmpl.parse_placeholders(row.body),
    )
    return StoredTemplate(template, row.revision, row.source, row.created_at, row.updated_at)
