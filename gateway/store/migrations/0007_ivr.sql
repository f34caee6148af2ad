-- hcrm-gateway schema 7: IVR tree revisions (YAML text kept verbatim, comments included), the published
-- pointer, the audit trail of edits/publications, and survey answers (issue 6).
-- Times are RFC 3339 UTC text with milliseconds ("...Z"), like schema 1.

CREATE TABLE ivr_revisions (
    revision     INTEGER PRIMARY KEY,           -- 1, 2, ... in order of creation
    yaml         TEXT NOT NULL,                 -- exactly as sent (comments and layout kept)
    author       TEXT NOT NULL,                 -- API token name, or "file:<path>" for a SIGHUP reload
    source       TEXT NOT NULL CHECK (source IN ('api', 'file')),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,                 -- a draft is edited in place until published
    published    INTEGER NOT NULL DEFAULT 0 CHECK (published IN (0, 1)),
    published_at TEXT,
    published_by TEXT
);
-- At most one draft (unpublished revision) at a time.
CREATE UNIQUE INDEX ivr_revisions_one_draft ON ivr_revisions (published) WHERE published = 0;

-- The revision new calls take (one row); a rollback moves it to an older published revision.
CREATE TABLE ivr_current (
    slot     INTEGER PRIMARY KEY CHECK (slot = 1),
    revision INTEGER NOT NULL REFERENCES ivr_revisions (revision)
);

CREATE TABLE ivr_audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,                     -- draft_saved | published | rolled_back | file_loaded | file_rejected
    revision INTEGER,
    detail   TEXT                               -- JSON: previous revision, problems of a rejected file, ...
);

-- One row per question asked: enough to rebuild the form as the caller heard it.
CREATE TABLE survey_answers (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id         TEXT NOT NULL,
    survey          TEXT NOT NULL,
    survey_revision INTEGER NOT NULL,
    tree_revision   INTEGER NOT NULL,
    question_id     TEXT NOT NULL,
    question_text   TEXT NOT NULL,              -- the exact text in the caller's language
    language        TEXT NOT NULL,
    answer          TEXT,                       -- NULL: no valid answer before the tries ran out
    answered_at     TEXT NOT NULL
);
CREATE INDEX survey_answers_call ON survey_answers (call_id);
CREATE INDEX survey_answers_survey ON survey_answers (survey, survey_revision, answered_at);
