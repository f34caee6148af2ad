"""SQL of the voice feature (schema 6): plain functions taking a store transaction (``tx.connection``)."""

from __future__ import annotations

import json
from typing import Any

_CALL_COLUMNS = (
    "id",
    "direction",
    "line",
    "state",
    "number_raw",
    "number_e164",
    "caller_name",
    "reason_absent",
    "cid_standard",
    "rings",
    "answered_by",
    "answer_confidence",
    "cause",
    "lookup",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_s",
)


def call_row(call: dict[str, Any]) -> dict[str, Any]:
    """A call's ``to_json()`` as a ``calls`` row."""
    caller = call.get("caller") or {}
    return {
        "id": call["id"],
        "direction": call["direction"],
        "line": call["line"],
        "state": call["state"],
        "number_raw": call.get("number"),
        "number_e164": call.get("number_e164"),
        "caller_name": caller.get("name"),
        "reason_absent": caller.get("reason_absent"),
        "cid_standard": caller.get("standard"),
        "rings": call.get("rings") or 0,
        "answered_by": call.get("answered_by"),
        "answer_confidence": call.get("answer_confidence"),
        "cause": call.get("cause"),
        "lookup": json.dumps(call["lookup"], ensure_ascii=False) if call.get("lookup") is not None else None,
        "started_at": call["started_at"],
        "answered_at": call.get("answered_at"),
        "ended_at": call.get("ended_at"),
        "duration_s": call.get("duration_s"),
    }


def save_call(tx, call: dict[str, Any]) -> None:
    row = call_row(call)
    names = ", ".join(_CALL_COLUMNS)
    marks = ", ".join(f":{c}" for c in _CALL_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in _CALL_COLUMNS if c != "id")
    tx.connection.execute(
        f"INSERT INTO calls ({names}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {updates}", row
    )
    for seq, attempt in enumerate(call.get("attempts") or (), start=1):
        tx.connection.execute(
            "INSERT INTO call_attempts (call_id, seq, number_raw, number_e164, result, started_at, ended_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_id, seq) DO UPDATE SET result = excluded.result, "
            "ended_at = excluded.ended_at",
            (
                call["id"],
                seq,
                attempt["number"],
                attempt["e164"],
                attempt["result"],
                attempt["started_at"],
                attempt["ended_at"],
            ),
        )


def _call_from_row(conn, row: tuple) -> dict[str, Any]:
    data = dict(zip(_CALL_COLUMNS, row, strict=True))
    attempts = conn.execute(
        "SELECT number_raw, number_e164, result, started_at, ended_at FROM call_attempts WHERE call_id = ? "
        "ORDER BY seq",
        (data["id"],),
    ).fetchall()
    recordings = conn.execute(
        "SELECT id FROM recordings WHERE call_id = ? ORDER BY id", (data["id"],)
    ).fetchall()
    caller = None
    if data["direction"] == "in":
        caller = {
            "raw": data["number_raw"],
            "e164": data["number_e164"],
            "name": data["caller_name"],
            "reason_absent": data["reason_absent"],
            "standard": data["cid_standard"],
        }
    return {
        "id": data["id"],
        "direction": data["direction"],
        "line": data["line"],
        "state": data["state"],
        "caller": caller,
        "number": data["number_raw"],
        "number_e164": data["number_e164"],
        "rings": data["rings"],
        "answered_by": data["answered_by"],
        "answer_confidence": data["answer_confidence"],
        "bridged_to": None,
        "cause": data["cause"],
        "lookup": json.loads(data["lookup"]) if data["lookup"] else None,
        "attempts": [
            {"number": a[0], "e164": a[1], "result": a[2], "started_at": a[3], "ended_at": a[4]}
            for a in attempts
        ],
        "recordings": [r[0] for r in recordings],
        "started_at": data["started_at"],
        "answered_at": data["answered_at"],
        "ended_at": data["ended_at"],
        "duration_s": data["duration_s"],
    }


def get_call(tx, call_id: str) -> dict[str, Any] | None:
    conn = tx.connection
    row = conn.execute(f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls WHERE id = ?", (call_id,)).fetchone()
    return _call_from_row(conn, tuple(row)) if row is not None else None


def list_calls(tx, *, state: str | None, limit: int = 100) -> list[dict[str, Any]]:
    conn = tx.connection
    sql = f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls"
    args: tuple = ()
    if state is not None:
        sql += " WHERE state = ?"
        args = (state,)
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [_call_from_row(conn, tuple(r)) for r in rows]


def end_interrupted_calls(tx, ended_at: str) -> int:
    """At start-up: calls left open by a crash end with cause ``gateway_restart``."""
    cur = tx.connection.execute(
        "UPDATE calls SET state = 'ended', cause = 'gateway_restart', ended_at = ? WHERE state != 'ended'",
        (ended_at,),
    )
    return cur.rowcount


# ------------------------------------------------------------------------------------------- recordings
_REC_COLUMNS = ("id", "call_id", "line", "path", "format", "state", "started_at", "ended_at", "duration_s")


def insert_recording(tx, rec: dict[str, Any]) -> None:
    tx.connection.execute(
        f"INSERT INTO recordings ({', '.join(_REC_COLUMNS)}) VALUES ({', '.join('?' * len(_REC_COLUMNS))})",
        tuple(rec.get(c) for c in _REC_COLUMNS),
    )


def finish_recording(tx, rec_id: str, ended_at: str, duration_s: float) -> None:
    tx.connection.execute(
        "UPDATE recordings SET state = 'ready', ended_at = ?, duration_s = ? WHERE id = ?",
        (ended_at, duration_s, rec_id),
    )


def get_recording(tx, rec_id: str) -> dict[str, Any] | None:
    row = tx.connection.execute(
        f"SELECT {', '.join(_REC_COLUMNS)} FROM recordings WHERE id = ?", (rec_id,)
    ).fetchone()
    return dict(zip(_REC_COLUMNS, tuple(row), strict=True)) if row is not None else None


def audit_recording_access(
    tx, rec_id: str, principal: str, action: str, request_id: str | None, at: str
) -> None:
    tx.connection.execute(
        "INSERT INTO recording_access (recording_id, principal, action, request_id, at) "
        "VALUES (?, ?, ?, ?, ?)",
        (rec_id, principal, action, request_id, at),
    )


# ------------------------------------------------------------------------------------------- history
def history(tx, e164: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """Calls and SMS to and from one normalised number, newest first."""
    conn = tx.connection
    ids = conn.execute(
        "SELECT id FROM calls WHERE number_e164 = ? UNION "
        "SELECT call_id FROM call_attempts WHERE number_e164 = ? ORDER BY 1 DESC LIMIT ?",
        (e164, e164, limit),
    ).fetchall()
    items: list[dict[str, Any]] = []
    for (call_id,) in ids:
        call = get_call(tx, call_id)
        if call is not None:
            items.append(
                {
                    "kind": "call",
                    "time": call["started_at"],
                    "direction": call["direction"],
                    "line": call["line"],
                    "id": call_id,
                    "duration_s": call["duration_s"],
                    "cause": call["cause"],
                    "answered_by": call["answered_by"],
                    "recordings": [f"/v1/recordings/{r}" for r in call["recordings"]],
                }
            )
    rows = conn.execute(
        "SELECT id, direction, status, text, modem, created_at FROM messages "
        "WHERE to_number = ? OR from_number = ? ORDER BY created_at DESC LIMIT ?",
        (e164, e164, limit),
    ).fetchall()
    for row in rows:
        items.append(
            {
                "kind": "sms",
                "time": row[5],
                "direction": row[1],
                "id": row[0],
                "status": row[2],
                "text": row[3],
                "modem": row[4],
            }
        )
    items.sort(key=lambda item: item["time"] or "", reverse=True)
    return items[:limit]
