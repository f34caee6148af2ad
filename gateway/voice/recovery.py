"""Start-up recovery of recordings a crash left open (row state ``recording``).

The writer flushes at least every half second (media.py), so the file on disk holds the call up to about
the last second before the crash; its FLAC STREAMINFO has no length, so the duration is read from the
samples themselves with :func:`media.read_recording`. Each such row becomes ``interrupted`` with that
duration, and a ``recording.ready`` with ``interrupted: true`` tells the CRM it exists. A file that is
missing, unreadable or empty is marked ``interrupted`` with duration 0 and announced to nobody (as a
recording that captured nothing, service.py); only an empty one is deleted.

The SQL lives here rather than in ``gateway/store/voice_sql.py`` because only this start-up step needs it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import soundfile as sf
import structlog
import trio

from gateway.events import format_time, parse_time
from gateway.voice.media import read_recording

log = structlog.get_logger("voice.recovery")


def _open_rows(tx) -> list[dict[str, Any]]:
    rows = tx.connection.execute(
        "SELECT r.id, r.call_id, r.line, r.path, r.started_at, c.direction "
        "FROM recordings r LEFT JOIN calls c ON c.id = r.call_id WHERE r.state = 'recording' ORDER BY r.id"
    ).fetchall()
    keys = ("id", "call_id", "line", "path", "started_at", "direction")
    return [dict(zip(keys, tuple(row), strict=True)) for row in rows]


def _seconds_in(path: Path) -> float | None:
    """Seconds of audio a (possibly cut short) recording holds; None when missing or unreadable."""
    if path.is_file() and path.stat().st_size == 0:
        return 0.0  # created, never written to
    try:
        samples, rate = read_recording(path)
    except (FileNotFoundError, sf.LibsndfileError, RuntimeError) as exc:
        log.warning("interrupted_recording_unreadable", path=str(path), error=str(exc))
        return None
    return samples.size / rate if rate else 0.0


async def recover_recordings(store) -> int:
    """Mark every recording left ``recording`` as ``interrupted``; returns how many were found."""
    rows = await store.read(_open_rows)
    for row in rows:
        path = Path(row["path"])
        readable = await trio.to_thread.run_sync(_seconds_in, path)
        seconds = round(readable or 0.0, 3)
        ended_at = format_time(parse_time(row["started_at"]) + timedelta(seconds=seconds))
        payload = {
            "call_id": row["call_id"],
            "line": row["line"],
            "recording_id": row["id"],
            "duration_s": seconds,
            "url": f"/v1/recordings/{row['id']}",
            "interrupted": True,
        }
        if row["direction"] in ("in", "out"):
            payload["direction"] = row["direction"]

        def unit(tx, row=row, seconds=seconds, ended_at=ended_at, payload=payload) -> None:
            tx.connection.execute(
                "UPDATE recordings SET state = 'interrupted', ended_at = ?, duration_s = ? "
                "WHERE id = ? AND state = 'recording'",
                (ended_at, seconds, row["id"]),
            )
            if seconds > 0:
                tx.append_event("recording.ready", payload)

        await store.write(unit)
        if readable == 0.0:  # a valid file without a sample: nothing to keep (an unreadable one is kept)
            await trio.to_thread.run_sync(lambda p=path: p.unlink(missing_ok=True))
        log.info("recording_interrupted", recording_id=row["id"], duration_s=seconds)
    return len(rows)
