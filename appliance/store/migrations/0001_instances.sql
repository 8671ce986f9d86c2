-- Studies / series / instances index. Patient attributes are kept here for QIDO matching only;
-- they never reach the logs.
CREATE TABLE studies (
    study_uid          TEXT PRIMARY KEY,
    patient_id         TEXT NOT NULL DEFAULT '',
    patient_name       TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_sex        TEXT NOT NULL DEFAULT '',
    study_date         TEXT NOT NULL DEFAULT '',
    study_time         TEXT NOT NULL DEFAULT '',
    accession_number   TEXT NOT NULL DEFAULT '',
    study_id           TEXT NOT NULL DEFAULT '',
    study_description  TEXT NOT NULL DEFAULT '',
    referring_physician TEXT NOT NULL DEFAULT '',
    received_at        REAL NOT NULL
);
CREATE INDEX studies_accession ON studies(accession_number);
CREATE INDEX studies_patient ON studies(patient_id);

CREATE TABLE series (
    series_uid         TEXT PRIMARY KEY,
    study_uid          TEXT NOT NULL REFERENCES studies(study_uid) ON DELETE CASCADE,
    modality           TEXT NOT NULL DEFAULT '',
    series_number      INTEGER,
    series_description TEXT NOT NULL DEFAULT '',
    body_part          TEXT NOT NULL DEFAULT '',
    version            INTEGER NOT NULL DEFAULT 0   -- bumped on every change: metadata cache key
);
CREATE INDEX series_study ON series(study_uid);

CREATE TABLE instances (
    sop_uid            TEXT PRIMARY KEY,
    series_uid         TEXT NOT NULL REFERENCES series(series_uid) ON DELETE CASCADE,
    study_uid          TEXT NOT NULL,
    sop_class_uid      TEXT NOT NULL,
    instance_number    INTEGER,
    transfer_syntax    TEXT NOT NULL,
    rows               INTEGER,
    columns            INTEGER,
    frames             INTEGER,
    size               INTEGER NOT NULL,
    rel_path           TEXT NOT NULL,
    metadata_json      TEXT NOT NULL,            -- DICOM JSON, bulk data as BulkDataURI
    received_at        REAL NOT NULL,
    last_access        REAL NOT NULL
);
CREATE INDEX instances_series ON instances(series_uid, instance_number);
CREATE INDEX instances_study ON instances(study_uid);
