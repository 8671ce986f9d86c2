-- Who read which patient's data: each read decision of the DICOMweb guard (served or refused)
-- names the peer's certificate and structure, the professional, the series, the bytes and why.
ALTER TABLE audit_events ADD COLUMN peer_dn      TEXT NOT NULL DEFAULT '';  -- client certificate subject
ALTER TABLE audit_events ADD COLUMN structure    TEXT NOT NULL DEFAULT '';  -- whitelist domain / OU
ALTER TABLE audit_events ADD COLUMN professional TEXT NOT NULL DEFAULT '';  -- RPPS-based id (PSC)
ALTER TABLE audit_events ADD COLUMN series_uid   TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN bytes        INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_events ADD COLUMN status       INTEGER NOT NULL DEFAULT 0; -- HTTP status answered
ALTER TABLE audit_events ADD COLUMN reason       TEXT NOT NULL DEFAULT '';  -- why refused

-- Append-only from the application: no path updates or deletes a row.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;

-- Viewer sessions of professionals logged in on this box (Pro Santé Connect). Only a hash of
-- the session id is kept; ``studies`` are the exams the session was granted (JSON array).
CREATE TABLE sessions (
    id_hash      TEXT PRIMARY KEY,
    professional TEXT NOT NULL,            -- RPPS-based id
    structure    TEXT NOT NULL DEFAULT '',
    display      TEXT NOT NULL DEFAULT '{}', -- JSON: names, profession (shown to the user only)
    studies      TEXT NOT NULL DEFAULT '[]',
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);
