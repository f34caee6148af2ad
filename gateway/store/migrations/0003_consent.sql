-- hcrm-gateway schema 3: the opt-out registry, reply rules, and correlated replies (issue 4, consent & replies).
-- Times are RFC 3339 UTC text with milliseconds ("...Z") like schema 1: they sort as text.

CREATE TABLE opt_outs (
    number       TEXT NOT NULL,           -- E.164
    category     TEXT NOT NULL,           -- a category name, or '*': every category that honours opt-outs
    source       TEXT NOT NULL CHECK (source IN ('api', 'keyword')),
    reason       TEXT,
    message_id   TEXT,                    -- keyword: the incoming message that carried it
    created_at   TEXT NOT NULL,
    confirmed_at TEXT,                    -- keyword: when a confirmation was last queued to the number
    PRIMARY KEY (number, category)
) WITHOUT ROWID;

-- Replies: the latest outgoing message sent to a number within the correlation window.
CREATE INDEX messages_out_to_sent ON messages (to_number, sent_at)
    WHERE direction = 'out' AND sent_at IS NOT NULL;

-- How to parse the answer to one outgoing message or to every message of one campaign.
CREATE TABLE reply_rules (
    scope      TEXT NOT NULL CHECK (scope IN ('message', 'campaign')),
    ref_id     TEXT NOT NULL,              -- message id or campaign id
    rule       TEXT NOT NULL,              -- JSON: {"kind": "range", "min", "max"} | {"kind": "choices", "values"}
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, ref_id)
) WITHOUT ROWID;

-- An incoming message correlated with an outgoing one (survey results are read from here).
CREATE TABLE replies (
    message_id  TEXT PRIMARY KEY,          -- the incoming message (no FOREIGN KEY: hooks may run before its insert)
    in_reply_to TEXT NOT NULL,             -- the outgoing message
    campaign_id TEXT,
    answer      TEXT,                  -- JSON value; NULL: none parsed
    received_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX replies_in_reply_to ON replies (in_reply_to);
CREATE INDEX replies_campaign ON replies (campaign_id, received_at) WHERE campaign_id IS NOT NULL;
