-- hcrm-gateway schema 1: messages with per-part tracking, idempotency keys, incoming fragments,
-- status reports, the event journal. Times are RFC 3339 UTC text with milliseconds ("...Z"): they sort as text.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE events (
    seq     INTEGER PRIMARY KEY,          -- increases by one per event within an epoch
    type    TEXT NOT NULL,
    time    TEXT NOT NULL,
    payload BLOB NOT NULL                 -- the JSON envelope exactly as fanned out
);
CREATE INDEX events_time ON events (time);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,     -- "msg_" + ULID: sorts by creation time
    direction       TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    status          TEXT NOT NULL,
    text            TEXT NOT NULL,
    encoding        TEXT,
    parts           INTEGER NOT NULL,
    to_number       TEXT,
    to_raw          TEXT,
    from_number     TEXT,
    from_raw        TEXT,
    modem           TEXT,                 -- out: modem asked for; in: receiving modem
    sent_modem      TEXT,                 -- out: modem that sent (or is sending) the parts
    report          INTEGER NOT NULL DEFAULT 0,
    send_at         TEXT,
    client_ref      TEXT,
    concat_ref      INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    error_code      INTEGER,              -- raw +CMS ERROR code
    error_kind      TEXT,
    error_message   TEXT,
    incomplete      INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    sent_at         TEXT,
    final_at        TEXT,
    received_at     TEXT
) WITHOUT ROWID;
CREATE INDEX messages_status ON messages (status, id);
CREATE INDEX messages_send_at ON messages (send_at) WHERE status = 'scheduled';
CREATE INDEX messages_retry ON messages (next_attempt_at) WHERE status = 'queued';

CREATE TABLE message_parts (
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,         -- 1-based
    status      TEXT NOT NULL,
    segment_hex TEXT,
    tpdu_length INTEGER,
    modem       TEXT,
    reference   INTEGER,                  -- TP-MR from +CMGS (0-255, wraps)
    sent_at     TEXT,
    tp_status   INTEGER,                  -- raw TP-ST of the last status report
    cms_error   INTEGER,
    error       TEXT,
    updated_at  TEXT,
    pdu_digest  TEXT,                     -- incoming parts: sha256 of the PDU (duplicate detection)
    PRIMARY KEY (message_id, seq)
) WITHOUT ROWID;
CREATE INDEX parts_report_pairing ON message_parts (modem, reference, sent_at) WHERE reference IS NOT NULL;
CREATE INDEX parts_pdu_digest ON message_parts (pdu_digest) WHERE pdu_digest IS NOT NULL;

CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    created_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_created ON idempotency_keys (created_at);

CREATE TABLE inbound_fragments (
    modem       TEXT NOT NULL,
    sender_raw  TEXT NOT NULL,
    ref         INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    ref_bits    INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    text        TEXT NOT NULL,
    encoding    TEXT,
    pdu_hex     TEXT NOT NULL,
    pdu_digest  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (modem, sender_raw, ref, total, ref_bits, seq)
) WITHOUT ROWID;
CREATE INDEX fragments_received ON inbound_fragments (received_at);
CREATE INDEX fragments_digest ON inbound_fragments (pdu_digest);

CREATE TABLE status_reports (
    id                  INTEGER PRIMARY KEY,
    modem               TEXT NOT NULL,
    reference           INTEGER NOT NULL,
    recipient_raw       TEXT,
    tp_status           INTEGER NOT NULL,
    service_centre_time TEXT,
    discharge_time      TEXT,
    received_at         TEXT NOT NULL,
    pdu_hex             TEXT NOT NULL,
    message_id          TEXT,             -- NULL: not paired (yet)
    part_seq            INTEGER
);
CREATE INDEX status_reports_unmatched ON status_reports (modem, reference, received_at) WHERE message_id IS NULL;

CREATE TABLE rejected_pdus (
    id          INTEGER PRIMARY KEY,
    modem       TEXT NOT NULL,
    pdu_hex     TEXT NOT NULL,
    error       TEXT NOT NULL,
    received_at TEXT NOT NULL
);
