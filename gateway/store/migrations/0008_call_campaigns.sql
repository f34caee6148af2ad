-- hcrm-gateway schema 8: follow-up call campaigns (issue 6). A campaign dials its recipients over its lines
-- inside a calling window and keeps one row per recipient (patient) with the outcome of its calls.
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1. Survey answers stay in
-- survey_answers (schema 7) and are joined through the answered call's id.

CREATE TABLE call_campaigns (
    id          TEXT PRIMARY KEY,             -- "ccp_" + ULID
    name        TEXT,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused', 'canceled', 'completed')),
    spec        TEXT NOT NULL,                -- JSON: entry, lines, window, max_concurrent, retry, ring_timeout_s
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    finished_at TEXT                          -- completed or canceled
) WITHOUT ROWID;
CREATE INDEX call_campaigns_state ON call_campaigns (state);

CREATE TABLE call_campaign_recipients (
    campaign_id      TEXT NOT NULL REFERENCES call_campaigns (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,        -- 1, 2, ... in the order of the request's list
    numbers          TEXT NOT NULL,           -- JSON list, tried in order within one call
    vars             TEXT NOT NULL,           -- JSON object: the IVR call's variables
    state            TEXT NOT NULL CHECK (state IN ('pending', 'calling', 'done', 'canceled')),
    outcome          TEXT,                    -- when done: answered | busy | no_answer | failed; canceled
    attempts         INTEGER NOT NULL DEFAULT 0,   -- calls placed
    busy_count       INTEGER NOT NULL DEFAULT 0,   -- calls that ended busy (retry rule "busy")
    no_answer_count  INTEGER NOT NULL DEFAULT 0,
    failed_count     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,                    -- pending: not before this time (NULL: at once)
    last_cause       TEXT,                    -- the voice service's cause of the latest call
    call_id          TEXT,                    -- the latest call
    call_ids         TEXT NOT NULL DEFAULT '[]',   -- JSON list of every call placed, oldest first
    answered_number  TEXT,
    answered_by      TEXT,                    -- how the answer was detected: polarity | voice
    answered_at      TEXT,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (campaign_id, seq)
) WITHOUT ROWID;
CREATE INDEX call_campaign_recipients_due ON call_campaign_recipients (campaign_id, state, next_attempt_at);
