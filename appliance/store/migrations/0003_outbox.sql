-- The outbox: every external effect is a job written in the same transaction as its cause.
-- A job runs at least once; its handler is idempotent (stable KOS uniqueId), so "at least once"
-- plus idempotence gives "exactly once" at the DMP.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,               -- report, iocm
    study_uid     TEXT NOT NULL,               -- jobs of one study run in id order
    state         TEXT NOT NULL,               -- received, resolved, built, published, quarantined,
                                               -- failed, superseded, withdrawn, discarded, done
    payload       TEXT NOT NULL,               -- JSON: what the handler needs
    reason        TEXT NOT NULL DEFAULT '',    -- why quarantined / failed / waiting
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       REAL NOT NULL,               -- not before (backoff)
    deadline_at   REAL,                        -- give up waiting for images after this
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    correlation   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_due ON jobs(state, next_at);
CREATE INDEX jobs_study ON jobs(study_uid, id);

-- HL7 messages already accepted (MSH-10), so a repeated message is ACKed without a second job.
CREATE TABLE hl7_messages (
    control_id    TEXT NOT NULL,
    sending_app   TEXT NOT NULL,
    job_id        INTEGER REFERENCES jobs(id),
    received_at   REAL NOT NULL,
    PRIMARY KEY (sending_app, control_id)
);

-- Every KOS version the box built for a study and what the DMP knows of it.
CREATE TABLE publications (
    kos_sop_uid   TEXT PRIMARY KEY,            -- also the XDS uniqueId
    study_uid     TEXT NOT NULL,
    job_id        INTEGER NOT NULL REFERENCES jobs(id),
    version       INTEGER NOT NULL,
    kos           BLOB NOT NULL,
    entry_uuid    TEXT NOT NULL,               -- XDS entryUUID chosen by the box
    state         TEXT NOT NULL,               -- pending, published, replaced, deleted
    replaces      TEXT,                        -- kos_sop_uid of the version it replaced (RPLC)
    created_at    REAL NOT NULL,
    published_at  REAL
);
CREATE INDEX publications_study ON publications(study_uid, version);

-- Instances withdrawn by an IOCM rejection note: never listed in a KOS again.
CREATE TABLE rejected_instances (
    sop_uid       TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    note_uid      TEXT NOT NULL,               -- SOP Instance UID of the rejection note
    reason_code   TEXT NOT NULL,               -- 113001, 113037, 113038, 113039
    received_at   REAL NOT NULL
);
CREATE INDEX rejected_study ON rejected_instances(study_uid);
