-- hcrm-gateway schema 5: outbound webhook subscriptions (Standard Webhooks) and their dead letters.
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1.

CREATE TABLE webhook_subscriptions (
    id                    TEXT PRIMARY KEY,      -- "whk_" + ULID
    url                   TEXT NOT NULL,
    event_types           TEXT NOT NULL,         -- JSON list of patterns: "sms.sent", "sms.*", "*"
    description           TEXT,
    secret                TEXT NOT NULL,         -- "whsec_" + base64 (the HMAC key must be kept to sign)
    previous_secret       TEXT,                  -- still signed with until previous_secret_until (rotation)
    previous_secret_until TEXT,
    secret_rotated_at     TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1,
    disabled_reason       TEXT,
    cursor_epoch          TEXT NOT NULL,         -- journal position handled (delivered, filtered or dead-lettered)
    cursor_seq            INTEGER NOT NULL,
    head_seq              INTEGER,               -- the event being retried, its attempts and first attempt
    head_attempts         INTEGER NOT NULL DEFAULT 0,
    head_first_attempt_at TEXT,
    next_attempt_at       TEXT,
    last_status           INTEGER,               -- HTTP status of the last attempt (NULL: no answer)
    last_error            TEXT,
    last_attempt_at       TEXT,
    last_success_at       TEXT,
    delivered             INTEGER NOT NULL DEFAULT 0,
    dead_lettered         INTEGER NOT NULL DEFAULT 0,
    consecutive_dead_letters INTEGER NOT NULL DEFAULT 0,
    gaps                  INTEGER NOT NULL DEFAULT 0,  -- events lost to journal pruning or reset
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE webhook_dead_letters (
    id               TEXT PRIMARY KEY,           -- "whdl_" + ULID: sorts by creation time
    subscription_id  TEXT NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL,              -- "<epoch>:<seq>", the webhook-id (dedupe key)
    event_type       TEXT NOT NULL,
    payload          BLOB NOT NULL,              -- the envelope as sent: redelivery works after journal pruning
    status           TEXT NOT NULL CHECK (status IN ('dead', 'pending', 'redelivered')),
    attempts         INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    first_attempt_at TEXT NOT NULL,
    last_attempt_at  TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    redelivered_at   TEXT
) WITHOUT ROWID;
CREATE INDEX webhook_dead_letters_subscription ON webhook_dead_letters (subscription_id, status, id);
