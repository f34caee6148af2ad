-- hcrm-gateway schema 9 (issue 4): SMS campaigns. A campaign keeps its validated recipients here and a feeder
-- turns them into messages a few at a time, so the send queue never holds 100,000 rows. Times are RFC 3339
-- UTC text with milliseconds ("...Z"), like schema 1: they sort as text.

-- Every outgoing message of a campaign names it (gateway/sms/replies.py correlates replies through it).
ALTER TABLE messages ADD COLUMN campaign_id TEXT;
CREATE INDEX messages_campaign ON messages (campaign_id, status) WHERE campaign_id IS NOT NULL;

CREATE TABLE campaigns (
    id                TEXT PRIMARY KEY,     -- "cmp_" + ULID: sorts by creation time
    status            TEXT NOT NULL CHECK (status IN
                          ('loading', 'scheduled', 'running', 'paused', 'completed', 'canceled')),
    template_id       TEXT NOT NULL,
    template_revision INTEGER NOT NULL,
    category          TEXT NOT NULL,
    route             TEXT,                 -- NULL: auto
    source            TEXT NOT NULL CHECK (source IN ('json', 'csv')),
    start_at          TEXT NOT NULL,
    rows_received     INTEGER NOT NULL,     -- rows read = accepted + rejected + duplicates
    accepted          INTEGER NOT NULL,     -- recipients stored (one per distinct number)
    rejected          INTEGER NOT NULL,
    duplicates        INTEGER NOT NULL,
    parts             INTEGER NOT NULL,     -- SMS parts of all accepted recipients
    submitted         INTEGER NOT NULL DEFAULT 0,  -- recipients turned into messages
    refused           INTEGER NOT NULL DEFAULT 0,  -- recipients a submit policy refused (e.g. opted_out)
    skipped           INTEGER NOT NULL DEFAULT 0,  -- recipients never submitted: the campaign was canceled
    feed_cursor       INTEGER NOT NULL DEFAULT 0,  -- every recipient row <= this one has left 'pending'
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
) WITHOUT ROWID;
CREATE INDEX campaigns_active ON campaigns (status) WHERE status IN ('loading', 'scheduled', 'running', 'paused');

CREATE TABLE campaign_recipients (
    campaign_id TEXT NOT NULL,
    row         INTEGER NOT NULL,           -- the row number reported to the client (CSV: header = 1)
    to_number   TEXT NOT NULL,              -- E.164
    to_raw      TEXT NOT NULL,
    text        TEXT NOT NULL,              -- rendered and validated when the campaign was accepted
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'submitted', 'refused', 'skipped')),
    message_id  TEXT,
    error       TEXT,                       -- refused: the submit policy's code and reason
    PRIMARY KEY (campaign_id, row)
) WITHOUT ROWID;

-- Rejected rows and duplicates, reported with their row numbers (GET /v1/campaigns/{id}/rejected).
CREATE TABLE campaign_rejected_rows (
    campaign_id TEXT NOT NULL,
    row         INTEGER NOT NULL,
    code        TEXT NOT NULL,              -- invalid_number | missing_variables | too_many_parts | ... | duplicate
    field       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    PRIMARY KEY (campaign_id, row)
) WITHOUT ROWID;
