-- hcrm-gateway schema 4: verification codes (issue 4) and SMS templates stored in the gateway.
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1: they sort as text.

-- One verification = one code sent to one number for one purpose (e.g. online appointment booking).
-- The code itself is never stored: code_hash = HMAC-SHA256(key, id || 0x00 || code), the key lives in the
-- config (verify.secret_key) or, when not configured, in meta 'verify_hmac_key' (generated on first use).
CREATE TABLE verifications (
    id            TEXT PRIMARY KEY,       -- "ver_" + ULID
    to_number     TEXT NOT NULL,          -- E.164
    purpose       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN
                      ('pending', 'approved', 'expired', 'too_many_attempts', 'canceled', 'failed')),
    code_hash     TEXT NOT NULL,          -- hex HMAC of the CURRENT code (a resend replaces it)
    attempts      INTEGER NOT NULL DEFAULT 0,   -- checks so far, across resends
    max_attempts  INTEGER NOT NULL,
    sends         INTEGER NOT NULL DEFAULT 1,   -- first send + resends
    template_id   TEXT NOT NULL,
    message_id    TEXT,                   -- the SMS carrying the current code
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    resend_after  TEXT NOT NULL,
    checked_at    TEXT,                   -- last check
    finished_at   TEXT,                   -- when the status left 'pending'
    redacted      INTEGER NOT NULL DEFAULT 0    -- 1: the SMS text carrying the code was blanked
) WITHOUT ROWID;
CREATE INDEX verifications_pending ON verifications (to_number, purpose) WHERE status = 'pending';
CREATE INDEX verifications_expiry ON verifications (expires_at) WHERE status = 'pending';
CREATE INDEX verifications_unredacted ON verifications (finished_at) WHERE redacted = 0;

-- Every code sent (start and resend): the per-number, per-prefix and global rate limits count these rows.
CREATE TABLE verification_sends (
    id              INTEGER PRIMARY KEY,
    verification_id TEXT NOT NULL,
    to_number       TEXT NOT NULL,
    to_prefix       TEXT NOT NULL,        -- the number without its last four digits (SMS pumping ranges)
    sent_at         TEXT NOT NULL
);
CREATE INDEX verification_sends_number ON verification_sends (to_number, sent_at);
CREATE INDEX verification_sends_prefix ON verification_sends (to_prefix, sent_at);
CREATE INDEX verification_sends_time ON verification_sends (sent_at);

-- SMS templates editable over /v1/templates; seeded once from gateway/sms/seed_templates.yaml
-- (meta 'sms_templates_seeded'), so a seed template an operator deleted does not come back on restart.
CREATE TABLE sms_templates (
    id          TEXT PRIMARY KEY,
    category    TEXT NOT NULL,
    language    TEXT NOT NULL,
    name        TEXT NOT NULL DEFAULT '',
    body        TEXT NOT NULL,
    revision    INTEGER NOT NULL DEFAULT 1,   -- +1 on every update
    source      TEXT NOT NULL CHECK (source IN ('seed', 'api')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX sms_templates_category ON sms_templates (category, language);
