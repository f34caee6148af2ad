"""SQL of follow-up call campaigns (schema 0008_call_campaigns.sql).

Plain functions over a unit of work's transaction (``tx.connection``), run in the store's worker thread.
Survey answers are not copied: :func:`results` joins ``survey_answers`` (schema 7) on the answered call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.store.base import StoreTx

RECIPIENT_STATES = ("pending", "calling", "done", "canceled")
OUTCOMES = ("answered", "busy", "no_answer", "failed", "canceled")
_COUNTERS = {"busy": "busy_count", "no_answer": "no_answer_count", "failed": "failed_count"}


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str | None
    state: str
    spec: dict[str, Any]
    created_by: str
    created_at: str
    updated_at: str
    finished_at: str | None


@dataclass(frozen=True)
class RecipientRow:
    campaign_id: str
    seq: int
    numbers: list[str]
    vars: dict[str, Any]
    state: str
    outcome: str | None
    attempts: int
    counts: dict[str, int]  # calls that ended busy / no_answer / failed
    next_attempt_at: str | None
    last_cause: str | None
    call_id: str | None
    call_ids: list[str]
    answered_number: str | None
    answered_by: str | None
    answered_at: str | None
    updated_at: str


_CAMPAIGN_COLUMNS = "id, name, state, spec, created_by, created_at, updated_at, finished_at"
_RECIPIENT_COLUMNS = (
    "campaign_id, seq, numbers, vars, state, outcome, attempts, busy_count, no_answer_count, failed_count,"
    " next_attempt_at, last_cause, call_id, call_ids, answered_number, answered_by, answered_at, updated_at"
)


def _campaign(r: tuple) -> CampaignRow:
    return CampaignRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7])


def _recipient(r: tuple) -> RecipientRow:
    return RecipientRow(
        campaign_id=r[0],
        seq=r[1],
        numbers=json.loads(r[2]),
        vars=json.loads(r[3]),
        state=r[4],
        outcome=r[5],
        attempts=r[6],
        counts={"busy": r[7], "no_answer": r[8], "failed": r[9]},
        next_attempt_at=r[10],
        last_cause=r[11],
        call_id=r[12],
        call_ids=json.loads(r[13]),
        answered_number=r[14],
        answered_by=r[15],
        answered_at=r[16],
        updated_at=r[17],
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------ campaigns
def insert_campaign(
    tx: StoreTx,
    campaign_id: str,
    name: str | None,
    spec: dict[str, Any],
    recipients: list[tuple[list[str], dict[str, Any]]],
    created_by: str,
    now: str,
) -> None:
    conn = tx.connection
    conn.execute(
        f"INSERT INTO call_campaigns ({_CAMPAIGN_COLUMNS}) VALUES (?, ?, 'running', ?, ?, ?, ?, NULL)",
        (campaign_id, name, _json(spec), created_by, now, now),
    )
    conn.executemany(
        "INSERT INTO call_campaign_recipients (campaign_id, seq, numbers, vars, state, updated_at)"
        " VALUES (?, ?, ?, ?, 'pending', ?)",
        [
            (campaign_id, seq, _json(numbers), _json(variables), now)
            for seq, (numbers, variables) in enumerate(recipients, start=1)
        ],
    )


def get_campaign(tx: StoreTx, campaign_id: str) -> CampaignRow | None:
    r = tx.connection.execute(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM call_campaigns WHERE id = ?", (campaign_id,)
    ).fetchone()
    return _campaign(r) if r else None


def list_campaigns(tx: StoreTx, *, state: str | None = None, limit: int = 100) -> list[CampaignRow]:
    if state is None:
        rows = tx.connection.execute(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM call_campaigns ORDER BY id DESC LIMIT ?", (limit,)
        )
    else:
        rows = tx.connection.execute(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM call_campaigns WHERE state = ? ORDER BY id DESC LIMIT ?",
            (state, limit),
        )
    return [_campaign(r) for r in rows.fetchall()]


def unfinished_campaigns(tx: StoreTx) -> list[CampaignRow]:
    """Running and paused campaigns, oldest first (the scheduler's working set after a restart)."""
    rows = tx.connection.execute(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM call_campaigns WHERE state IN ('running', 'paused') ORDER BY id"
    ).fetchall()
    return [_campaign(r) for r in rows]


def set_campaign_state(tx: StoreTx, campaign_id: str, state: str, now: str) -> None:
    finished = now if state in ("canceled", "completed") else None
    tx.connection.execute(
        "UPDATE call_campaigns SET state = ?, updated_at = ?, finished_at = ? WHERE id = ?",
        (state, now, finished, campaign_id),
    )


def counts(tx: StoreTx, campaign_id: str) -> dict[str, int]:
    """Recipients per state and per final outcome, and calls placed."""
    out = {"total": 0, "attempts": 0, **dict.fromkeys(RECIPIENT_STATES, 0), **dict.fromkeys(OUTCOMES, 0)}
    rows = tx.connection.execute(
        "SELECT state, outcome, COUNT(*), SUM(attempts) FROM call_campaign_recipients"
        " WHERE campaign_id = ? GROUP BY state, outcome",
        (campaign_id,),
    ).fetchall()
    for state, outcome, n, attempts in rows:
        out["total"] += n
        out["attempts"] += attempts or 0
        out[state] += n
        if outcome is not None and state == "done":  # a canceled recipient is counted once, above
            out[outcome] += n
    return out


# ----------------------------------------------------------------------------------------------- recipients
def due_recipients(tx: StoreTx, campaign_id: str, now: str, limit: int) -> list[RecipientRow]:
    """Pending recipients whose next attempt is due, the longest-waiting first, then in list order."""
    rows = tx.connection.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM call_campaign_recipients"
        " WHERE campaign_id = ? AND state = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        " ORDER BY next_attempt_at IS NOT NULL, next_attempt_at, seq LIMIT ?",
        (campaign_id, now, limit),
    ).fetchall()
    return [_recipient(r) for r in rows]


def next_due_at(tx: StoreTx, campaign_id: str) -> str | None:
    """The earliest retry time among pending recipients (None when nobody waits for a retry)."""
    r = tx.connection.execute(
        "SELECT MIN(next_attempt_at) FROM call_campaign_recipients"
        " WHERE campaign_id = ? AND state = 'pending'",
        (campaign_id,),
    ).fetchone()
    return r[0] if r else None


def get_recipient(tx: StoreTx, campaign_id: str, seq: int) -> RecipientRow | None:
    r = tx.connection.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM call_campaign_recipients WHERE campaign_id = ? AND seq = ?",
        (campaign_id, seq),
    ).fetchone()
    return _recipient(r) if r else None


def mark_calling(tx: StoreTx, campaign_id: str, seq: int, call_id: str, now: str) -> None:
    row = get_recipient(tx, campaign_id, seq)
    if row is None:
        raise LookupError(f"campaign {campaign_id} has no recipient {seq}")
    tx.connection.execute(
        "UPDATE call_campaign_recipients SET state = 'calling', call_id = ?, call_ids = ?,"
        " attempts = attempts + 1, updated_at = ? WHERE campaign_id = ? AND seq = ?",
        (call_id, _json([*row.call_ids, call_id]), now, campaign_id, seq),
    )


def record_call_result(
    tx: StoreTx,
    campaign_id: str,
    seq: int,
    *,
    outcome: str,
    cause: str | None,
    state: str,
    next_attempt_at: str | None,
    now: str,
    answered: tuple[str | None, str | None, str | None] | None = None,
) -> None:
    """The end of one call: ``outcome`` (answered | busy | no_answer | failed | canceled) bumps its counter;
    ``state`` is ``pending`` (a retry at ``next_attempt_at``), ``done`` or ``canceled``; ``answered`` is
    (number, answered_by, answered_at) of an answered call."""
    counter = _COUNTERS.get(outcome)
    bump = f", {counter} = {counter} + 1" if counter else ""
    final = outcome if state in ("done", "canceled") else None
    number, by, at = answered or (None, None, None)
    tx.connection.execute(
        f"UPDATE call_campaign_recipients SET state = ?, outcome = ?, last_cause = ?, next_attempt_at = ?,"
        f" answered_number = COALESCE(?, answered_number), answered_by = COALESCE(?, answered_by),"
        f" answered_at = COALESCE(?, answered_at), updated_at = ?{bump} WHERE campaign_id = ? AND seq = ?",
        (state, final, cause, next_attempt_at, number, by, at, now, campaign_id, seq),
    )


def cancel_pending(tx: StoreTx, campaign_id: str, now: str) -> int:
    cur = tx.connection.execute(
        "UPDATE call_campaign_recipients SET state = 'canceled', outcome = 'canceled',"
        " next_attempt_at = NULL, updated_at = ? WHERE campaign_id = ? AND state = 'pending'",
        (now, campaign_id),
    )
    return cur.rowcount


def interrupted_calls(tx: StoreTx) -> list[tuple[RecipientRow, dict[str, Any] | None]]:
    """Recipients left ``calling`` by a stop or crash, each with its call's stored row (None if the call
    was never saved): ``{"answered_at", "answered_by", "number_raw", "cause"}``."""
    rows = tx.connection.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM call_campaign_recipients WHERE state = 'calling'"
    ).fetchall()
    out = []
    for r in rows:
        recipient = _recipient(r)
        call = tx.connection.execute(
            "SELECT answered_at, answered_by, number_raw, cause FROM calls WHERE id = ?", (recipient.call_id,)
        ).fetchone()
        info = (
            None
            if call is None
            else {"answered_at": call[0], "answered_by": call[1], "number_raw": call[2], "cause": call[3]}
        )
        out.append((recipient, info))
    return out


def results(tx: StoreTx, campaign_id: str) -> list[dict[str, Any]]:
    """One result per recipient in list order, with the survey answers of its answered call."""
    rows = tx.connection.execute(
        f"SELECT {_RECIPIENT_COLUMNS} FROM call_campaign_recipients WHERE campaign_id = ? ORDER BY seq",
        (campaign_id,),
    ).fetchall()
    out = []
    for r in rows:
        recipient = _recipient(r)
        answered_call = recipient.call_id if recipient.answered_at is not None else None
        answers = []
        if answered_call is not None:
            answers = [
                {
                    "survey": a[0],
                    "survey_revision": a[1],
                    "question": a[2],
                    "text": a[3],
                    "language": a[4],
                    "answer": a[5],
                    "answered_at": a[6],
                }
                for a in tx.connection.execute(
                    "SELECT survey, survey_revision, question_id, question_text, language, answer,"
                    " answered_at FROM survey_answers WHERE call_id = ? ORDER BY id",
                    (answered_call,),
                ).fetchall()
            ]
        out.append(
            {
                "seq": recipient.seq,
                "numbers": recipient.numbers,
                "vars": recipient.vars,
                "state": recipient.state,
                "outcome": recipient.outcome,
                "attempts": recipient.attempts,
                "attempts_by_outcome": recipient.counts,
                "last_cause": recipient.last_cause,
                "next_attempt_at": recipient.next_attempt_at,
                "answered_number": recipient.answered_number,
                "answered_by": recipient.answered_by,
                "answered_at": recipient.answered_at,
                "call_id": answered_call,
                "call_ids": recipient.call_ids,
                "answers": answers,
            }
        )
    return out
