-- hcrm-gateway schema 6: voice calls, their outbound attempts, recordings and the recording access audit.
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1. Numbers: *_raw as the line or the
-- client gave them, *_e164 normalised (NULL when not derivable): history matches on the normalised number.

CREATE TABLE calls (
    id                TEXT PRIMARY KEY,       -- "call_" + ULID
    direction         TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    line              TEXT NOT NULL,
    state             TEXT NOT NULL,          -- ringing | dialling | connected | ended
    number_raw        TEXT,                   -- in: the caller; out: the number that answered (or last tried)
    number_e164       TEXT,
    caller_name       TEXT,
    reason_absent     TEXT,                   -- P private, O unavailable, C public phone, S congestion
    cid_standard      TEXT,
    rings             INTEGER NOT NULL DEFAULT 0,
    answered_by       TEXT,
    answer_confidence REAL,
    cause             TEXT,
    lookup            TEXT,                   -- JSON answer of the CRM contact lookup, if any
    started_at        TEXT NOT NULL,
    answered_at       TEXT,
    ended_at          TEXT,
    duration_s        REAL
) WITHOUT ROWID;
CREATE INDEX calls_number ON calls (number_e164, started_at);
CREATE INDEX calls_state ON calls (state, id);

CREATE TABLE call_attempts (
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    number_raw  TEXT NOT NULL,
    number_e164 TEXT,
    result      TEXT,                         -- answered | busy | congestion | no_answer | no_dialtone | failed
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
CREATE INDEX call_attempts_number ON call_attempts (number_e164);

CREATE TABLE recordings (
    id          TEXT PRIMARY KEY,             -- "rec_" + ULID
    call_id     TEXT NOT NULL,
    line        TEXT NOT NULL,
    path        TEXT NOT NULL,
    format      TEXT NOT NULL,                -- FLAC | WAV
    state       TEXT NOT NULL,                -- recording | ready (a crash leaves "recording": partial file)
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_s  REAL
) WITHOUT ROWID;
CREATE INDEX recordings_call ON recordings (call_id);

CREATE TABLE recording_access (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id TEXT NOT NULL,
    principal    TEXT NOT NULL,
    action       TEXT NOT NULL,               -- metadata | media
    request_id   TEXT,
    at           TEXT NOT NULL
);
CREATE INDEX recording_access_recording ON recording_access (recording_id, at);

-- Contact history also lists SMS to and from a number (schema 1 stores E.164 in to_number / from_number).
CREATE INDEX IF NOT EXISTS messages_to_number ON messages (to_number);
CREATE INDEX IF NOT EXISTS messages_from_number ON messages (from_number);
