-- hcrm-gateway schema 10: API tokens issued with `hcrm-gateway token create` (issue 7), and a general audit
-- trail (who issued or revoked what, when). Tokens from the config file stay in the config.
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1.

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE CHECK (hash GLOB 'sha256:*'),  -- never the token itself
    scopes       TEXT NOT NULL,                 -- JSON array of scope names, sorted
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,                 -- "cli:<unix user>"
    expires_at   TEXT,                          -- NULL: does not expire
    last_used_at TEXT,                          -- written by the daemon, at most once a minute per token
    revoked_at   TEXT,
    revoked_by   TEXT
);
-- A revoked token keeps its row (audit); its name may be issued again.
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,                      -- token.created | token.revoked | ...
    subject TEXT,                               -- what the action was on (a token name, ...)
    detail  TEXT                                -- JSON
);
CREATE INDEX audit_at ON audit (at);

-- Bumped by every change to api_tokens that matters for authentication (create, revoke): a running daemon
-- compares it at most once a second and reloads its token list only when it moved.
INSERT INTO meta (key, value) VALUES ('api_tokens_version', '0');
