-- Access audit trail: who touched which patient's data, when, through which interface.
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          REAL NOT NULL,
    actor       TEXT NOT NULL,      -- AE title, certificate subject, professional id
    action      TEXT NOT NULL,      -- e.g. dicom.store, dicomweb.retrieve, qido.search
    interface   TEXT NOT NULL,      -- dicom, http, hl7, dmp
    patient_id  TEXT NOT NULL DEFAULT '',
    study_uid   TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL DEFAULT 'ok',
    detail      TEXT NOT NULL DEFAULT '',
    correlation TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_ts ON audit_events(ts);
CREATE INDEX audit_study ON audit_events(study_uid);
