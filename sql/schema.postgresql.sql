-- nightshift store schema for postgresql: generated from the migrations by `make sql`; do not edit.
BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> 0001

CREATE TABLE model_versions (
    model VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    created_by VARCHAR(128) NOT NULL, 
    algorithm VARCHAR(256) NOT NULL, 
    hyperparameters JSON NOT NULL, 
    libraries JSON NOT NULL, 
    features JSON NOT NULL, 
    input_schema JSON NOT NULL, 
    output_schema JSON NOT NULL, 
    training_data JSON NOT NULL, 
    metrics JSON NOT NULL, 
    parity JSON NOT NULL, 
    feature_importance JSON NOT NULL, 
    decision_threshold FLOAT NOT NULL, 
    artifact_uri TEXT NOT NULL, 
    sha256 VARCHAR(64) NOT NULL, 
    size_bytes BIGINT NOT NULL, 
    description TEXT DEFAULT '' NOT NULL, 
    PRIMARY KEY (model, version)
);

CREATE TABLE model_aliases (
    model VARCHAR(64) NOT NULL, 
    alias VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    updated_by VARCHAR(128) NOT NULL, 
    PRIMARY KEY (model, alias), 
    FOREIGN KEY(model, version) REFERENCES model_versions (model, version)
);

CREATE TABLE alias_events (
    event_id BIGSERIAL NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    alias VARCHAR(64) NOT NULL, 
    old_version INTEGER, 
    new_version INTEGER, 
    at TIMESTAMP WITH TIME ZONE NOT NULL, 
    by VARCHAR(128) NOT NULL, 
    reason TEXT NOT NULL, 
    PRIMARY KEY (event_id)
);

CREATE INDEX ix_alias_events_model ON alias_events (model, alias, at);

CREATE TABLE runs (
    run_id BIGSERIAL NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    ds DATE NOT NULL, 
    run_key VARCHAR(256), 
    status VARCHAR(16) NOT NULL, 
    input_rows BIGINT, 
    rows BIGINT, 
    files INTEGER, 
    started_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    finished_at TIMESTAMP WITH TIME ZONE, 
    timings JSON, 
    error TEXT, 
    host VARCHAR(256), 
    pid INTEGER, 
    PRIMARY KEY (run_id), 
    CONSTRAINT ck_runs_status CHECK (status IN ('running', 'committed', 'superseded', 'failed', 'abandoned', 'expired'))
);

CREATE INDEX ix_runs_partition ON runs (model, version, ds);

CREATE TABLE run_chunks (
    run_id BIGINT NOT NULL, 
    chunk VARCHAR(1024) NOT NULL, 
    rows BIGINT NOT NULL, 
    PRIMARY KEY (run_id, chunk)
);

CREATE TABLE partitions (
    model VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    ds DATE NOT NULL, 
    run_id BIGINT NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    row_count BIGINT NOT NULL, 
    committed_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    timings JSON, 
    PRIMARY KEY (model, version, ds)
);

CREATE INDEX ix_partitions_latest ON partitions (model, version, status, ds);

CREATE TABLE predictions (
                run_id BIGINT NOT NULL,
                entity_id TEXT COLLATE "C" NOT NULL,
                score REAL NOT NULL,
                label SMALLINT NOT NULL,
                PRIMARY KEY (run_id, entity_id)
            ) PARTITION BY LIST (run_id);

CREATE VIEW committed_predictions AS
        SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, r.started_at AS scored_at, c.run_id
        FROM partitions c
        JOIN runs r ON r.run_id = c.run_id
        JOIN predictions p ON p.run_id = c.run_id
        WHERE c.status = 'committed';

INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;

COMMIT;

