"""IVR revisions, the published pointer, the audit trail and survey answers (schema 0007_ivr.sql).

Plain functions over a unit of work's transaction (``tx.connection``), run in the store's worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.store.base import StoreTx


@dataclass(frozen=True)
class RevisionRow:
    revision: int
    yaml: str
    author: str
    source: str
    created_at: str
    updated_at: str
    published: bool
    published_at: str | None
    published_by: str | None

    def summary(self, current: int | None) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "author": self.author,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "published": self.published,
            "published_at": self.published_at,
            "published_by": self.published_by,
            "current": self.revision == current,
        }


_COLUMNS = "revision, yaml, author, source, created_at, updated_at, published, published_at, published_by"


def _row(r: tuple) -> RevisionRow:
    return RevisionRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8])


def get_revision(tx: StoreTx, revision: int) -> RevisionRow | None:
    r = tx.connection.execute(
        f"SELECT {_COLUMNS} FROM ivr_revisions WHERE revision = ?", (revision,)
    ).fetchone()
    return _row(r) if r else None


def get_draft(tx: StoreTx) -> RevisionRow | None:
    r = tx.connection.execute(f"SELECT {_COLUMNS} FROM ivr_revisions WHERE published = 0").fetchone()
    return _row(r) if r else None


def current_revision(tx: StoreTx) -> int | None:
    r = tx.connection.execute("SELECT revision FROM ivr_current WHERE slot = 1").fetchone()
    return r[0] if r else None


def list_revisions(tx: StoreTx, limit: int = 100) -> list[RevisionRow]:
    rows = tx.connection.execute(
        f"SELECT {_COLUMNS} FROM ivr_revisions ORDER BY revision DESC LIMIT ?", (limit,)
    ).fetchall()
    return [_row(r) for r in rows]


def save_draft(tx: StoreTx, yaml: str, author: str, now: str) -> int:
    """Replace the draft's text (or start a draft); returns its revision number."""
    draft = get_draft(tx)
    if draft is not None:
        tx.connection.execute(
            "UPDATE ivr_revisions SET yaml = ?, author = ?, updated_at = ? WHERE revision = ?",
            (yaml, author, now, draft.revision),
        )
        return draft.revision
    cur = tx.connection.execute(
        "INSERT INTO ivr_revisions (yaml, author, source, created_at, updated_at) VALUES (?, ?, 'api', ?, ?)",
        (yaml, author, now, now),
    )
    return int(cur.lastrowid or 0)


def insert_published(tx: StoreTx, yaml: str, author: str, source: str, now: str) -> int:
    """A revision published at once (file reload): it never was a draft."""
    cur = tx.connection.execute(
        "INSERT INTO ivr_revisions (yaml, author, source, created_at, updated_at, published, published_at,"
        " published_by) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
        (yaml, author, source, now, now, now, author),
    )
    return int(cur.lastrowid or 0)


def mark_published(tx: StoreTx, revision: int, by: str, now: str) -> None:
    tx.connection.execute(
        "UPDATE ivr_revisions SET published = 1, published_at = ?, published_by = ? WHERE revision = ?",
        (now, by, revision),
    )


def set_current(tx: StoreTx, revision: int) -> None:
    tx.connection.execute(
        "INSERT INTO ivr_current (slot, revision) VALUES (1, ?)"
        " ON CONFLICT (slot) DO UPDATE SET revision = excluded.revision",
        (revision,),
    )


def audit(tx: StoreTx, now: str, actor: str, action: str, revision: int | None, detail: dict | None) -> None:
    tx.connection.execute(
        "INSERT INTO ivr_audit (at, actor, action, revision, detail) VALUES (?, ?, ?, ?, ?)",
        (now, actor, action, revision, json.dumps(detail, ensure_ascii=False) if detail else None),
    )


def audit_rows(tx: StoreTx, limit: int = 100) -> list[dict[str, Any]]:
    rows = tx.connection.execute(
        "SELECT at, actor, action, revision, detail FROM ivr_audit ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [
        {
            "at": r[0],
            "actor": r[1],
            "action": r[2],
            "revision": r[3],
            "detail": json.loads(r[4]) if r[4] else None,
        }
        for r in rows
    ]


def insert_answer(tx: StoreTx, a: Any) -> None:
    """``a`` is a ``gateway.ivr.runtime.SurveyAnswer``."""
    tx.connection.execute(
        "INSERT INTO survey_answers (call_id, survey, survey_revision, tree_revision, question_id,"
        " question_text, language, answer, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            a.call_id,
            a.survey,
            a.survey_revision,
            a.tree_revision,
            a.question_id,
            a.question_text,
            a.language,
            a.answer,
            a.answered_at,
        ),
    )


def answers_for_call(tx: StoreTx, call_id: str) -> list[dict[str, Any]]:
    rows = tx.connection.execute(
        "SELECT survey, survey_revision, tree_revision, question_id, question_text, language, answer,"
        " answered_at FROM survey_answers WHERE call_id = ? ORDER BY id",
        (call_id,),
    ).fetchall()
    keys = (
        "survey",
        "survey_revision",
        "tree_revision",
        "question",
        "text",
        "language",
        "answer",
        "answered_at",
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]
