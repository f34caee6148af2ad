"""Campaign recipients: read them (JSON list or CSV upload) and validate every row, with row numbers.

Pure functions (no I/O, no clock): ``CampaignService.create`` runs ``validate_rows`` in a worker thread, since
100,000 rows cost about two seconds of CPU (libphonenumber dominates) and must not stall the event loop.

Row numbers are what the operator can find again in the file they sent:

* CSV: the record number as a spreadsheet shows it -- the header is row 1, the first recipient row 2 (a
  quoted field spanning lines is still one row);
* JSON: the recipient's position in ``recipients`` counting from 1 (``field`` gives the JSON path,
  ``recipients.0.to`` for row 1).

Nothing is dropped silently: every row is accepted, rejected (``RowProblem``) or reported as a duplicate of an
earlier row with the same number (sent once, to the first row's variables).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.gsm.pdu import EncodeError, count_parts
from gateway.numbers import InvalidNumber, normalize
from gateway.sms.templates import MissingVariables, Template, TemplateError

TO_COLUMN = "to"


class RecipientsError(ValueError):
    """The recipients as a whole cannot be read (malformed CSV, missing columns, too many rows).

    ``code`` is the problem code, ``row`` the row at fault when there is one, ``names`` the columns concerned.
    """

    def __init__(self, code: str, detail: str, *, row: int | None = None, names: tuple[str, ...] = ()):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.row = row
        self.names = names


@dataclass(frozen=True)
class RecipientRow:
    """One recipient as given: ``field`` is the JSON path prefix ("recipients.3") or "" for CSV."""

    row: int
    to: Any
    vars: Mapping[str, Any]
    field: str = ""


@dataclass(frozen=True)
class RowProblem:
    """A rejected row (or a duplicate): ``code`` invalid_number | missing_variables | too_many_parts |
    invalid_text | malformed_row | duplicate."""

    row: int
    code: str
    field: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "code": self.code, "field": self.field, "detail": self.detail}


@dataclass(frozen=True)
class AcceptedRow:
    row: int
    e164: str
    raw: str
    text: str
    parts: int


@dataclass(frozen=True)
class Validation:
    accepted: list[AcceptedRow]
    rejected: list[RowProblem]
    duplicates: list[RowProblem]
    rows: int  # rows read (accepted + rejected + duplicates)


# --- CSV --------------------------------------------------------------------------------------------------
def decode_csv(data: bytes, charset: str | None) -> str:
    """Text of an upload: UTF-8 (a BOM, as Excel writes it, is skipped) unless ``charset`` names another
    encoding (Shift_JIS / cp932 from Japanese Excel, GB18030 from Chinese Excel)."""
    name = (charset or "utf-8").strip().strip('"').lower()
    try:
        codecs.lookup(name)
    except LookupError:
        raise RecipientsError("invalid_csv", f"unknown charset {charset!r}") from None
    if name in ("utf-8", "utf8"):
        name = "utf-8-sig"
    try:
        return data.decode(name)
    except UnicodeDecodeError as exc:
        row = data.count(b"\n", 0, exc.start) + 1
        raise RecipientsError(
            "invalid_csv",
            f"line {row} is not valid {charset or 'UTF-8'} text (byte {exc.start}); send UTF-8, or name the "
            "encoding: Content-Type: text/csv; charset=shift_jis",
            row=row,
        ) from None


def read_csv(text: str, *, max_rows: int) -> tuple[list[str], Iterator[RecipientRow | RowProblem]]:
    """Header columns and an iterator of rows (or ``RowProblem`` for a row with the wrong number of fields).

    Raises ``RecipientsError`` for what spoils the whole file: no header, no ``to`` column, a repeated column
    name, a CSV syntax error (with its row), more than ``max_rows`` recipient rows.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise RecipientsError("invalid_csv", f"row 1 (header): {exc}", row=1) from None
    if not header or not any(cell.strip() for cell in header):
        raise RecipientsError("invalid_csv", "the CSV is empty: the first row must name the columns", row=1)
    columns = [cell.strip() for cell in header]
    if TO_COLUMN not in columns:
        raise RecipientsError(
            "missing_columns",
            "the header row has no 'to' column (the recipient's number)",
            row=1,
            names=(TO_COLUMN,),
        )
    seen: set[str] = set()
    for name in columns:
        if name in seen or not name:
            raise RecipientsError(
                "invalid_csv", f"header row: column name {name!r} is empty or repeated", row=1, names=(name,)
            )
        seen.add(name)

    def rows() -> Iterator[RecipientRow | RowProblem]:
        number, count = 1, 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise RecipientsError("invalid_csv", f"row {number + 1}: {exc}", row=number + 1) from None
            number += 1
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line (Excel adds one at the end)
            count += 1
            if count > max_rows:
                raise RecipientsError(
                    "too_many_rows", f"more than {max_rows} recipient rows (row {number})", row=number
                )
            if len(cells) != len(columns):
                yield RowProblem(
                    number,
                    "malformed_row",
                    "",
                    f"row {number} has {len(cells)} fields; the header has {len(columns)}",
                )
                continue
            values = dict(zip(columns, cells, strict=True))
            to = values.pop(TO_COLUMN)
            yield RecipientRow(number, to, values)

    return columns, rows()


def check_columns(columns: Iterable[str], template: Template) -> tuple[str, ...]:
    """Columns the template does not use (reported, not an error: CRM exports carry extra columns); raises
    ``RecipientsError`` naming the template variables that no column provides."""
    given = set(columns)
    missing = tuple(name for name in template.placeholders if name not in given)
    if missing:
        raise RecipientsError(
            "missing_columns",
            f"the header row lacks the column(s) template {template.id!r} needs: {', '.join(missing)}",
            row=1,
            names=missing,
        )
    return tuple(c for c in columns if c != TO_COLUMN and c not in template.placeholders)


def json_rows(recipients: Iterable[Mapping[str, Any]]) -> Iterator[RecipientRow]:
    for index, item in enumerate(recipients):
        yield RecipientRow(index + 1, item.get("to"), item.get("vars") or {}, f"recipients.{index}")


# --- validation -------------------------------------------------------------------------------------------
def validate_rows(
    rows: Iterable[RecipientRow | RowProblem],
    template: Template,
    *,
    region: str,
    max_parts: int,
) -> Validation:
    """Check every row: the number normalises (strict, like a single submit), the template renders (every
    variable present and not blank), the text fits ``max_parts`` SMS parts (TS 23.040 §9.2.3.24
    concatenation, counted as the PDU encoder will send it); a number seen in an earlier accepted row makes
    the row a duplicate."""
    accepted: list[AcceptedRow] = []
    rejected: list[RowProblem] = []
    duplicates: list[RowProblem] = []
    first_row: dict[str, int] = {}
    count = 0
    for item in rows:
        count += 1
        if isinstance(item, RowProblem):
            rejected.append(item)
            continue
        prefix = item.field + "." if item.field else ""
        to_field = prefix + TO_COLUMN
        if not isinstance(item.to, str):
            rejected.append(RowProblem(item.row, "invalid_number", to_field, "the number must be text"))
            continue
        try:
            number = normalize(item.to, region)
        except InvalidNumber as exc:
            rejected.append(RowProblem(item.row, "invalid_number", to_field, str(exc)))
            continue
        earlier = first_row.get(number.e164)
        if earlier is not None:
            duplicates.append(
                RowProblem(item.row, "duplicate", to_field, f"{number.e164} is in row {earlier} already")
            )
            continue
        try:
            text = template.render(item.vars).text
        except MissingVariables as exc:
            names = ", ".join(exc.missing)
            field = (prefix + "vars." + exc.missing[0]) if item.field else exc.missing[0]
            rejected.append(RowProblem(item.row, "missing_variables", field, f"no value for: {names}"))
            continue
        except TemplateError as exc:
            rejected.append(RowProblem(item.row, "invalid_text", prefix + "vars", str(exc)))
            continue
        try:
            encoding, parts = count_parts(text)
        except EncodeError as exc:
            rejected.append(RowProblem(item.row, "invalid_text", prefix + "vars", f"cannot encode: {exc}"))
            continue
        if parts > max_parts:
            rejected.append(
                RowProblem(
                    item.row,
                    "too_many_parts",
                    prefix + "vars",
                    f"the text needs {parts} {encoding} parts; the limit is {max_parts}",
                )
            )
            continue
        first_row[number.e164] = item.row
        accepted.append(AcceptedRow(item.row, number.e164, number.raw, text, parts))
    return Validation(accepted, rejected, duplicates, count)
