-- hcrm-gateway schema 2 (issue 4, routing): categories, cost, HTTP provider ids, daily route usage,
-- provider delivery reports.

ALTER TABLE messages ADD COLUMN category TEXT;          -- out: the message's category (sms.categories)
ALTER TABLE messages ADD COLUMN cost REAL;              -- out: estimate at submit, actual once sent
ALTER TABLE messages ADD COLUMN provider_id TEXT;       -- out via an HTTP provider: the provider's id
ALTER TABLE messages ADD COLUMN last_route TEXT;        -- out: route of the last failed attempt
CREATE INDEX messages_provider_id ON messages (sent_modem, provider_id) WHERE provider_id IS NOT NULL;
CREATE INDEX messages_last_route ON messages (last_route) WHERE status = 'queued';

-- SMS parts sent (or being sent) per route per local day (gateway timezone): daily caps.
CREATE TABLE route_usage (
    route TEXT NOT NULL,
    day   TEXT NOT NULL,                 -- YYYY-MM-DD in the gateway timezone
    parts INTEGER NOT NULL,
    PRIMARY KEY (route, day)
) WITHOUT ROWID;

-- Delivery reports posted by HTTP providers, paired with a message by (provider, provider_id).
CREATE TABLE provider_reports (
    id          INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    status      TEXT NOT NULL,           -- delivered | undelivered | failed | pending
    raw_status  TEXT NOT NULL,
    error_code  TEXT,
    received_at TEXT NOT NULL,
    message_id  TEXT                     -- NULL: no message with that id (yet)
);
CREATE INDEX provider_reports_pairing ON provider_reports (provider, provider_id);
