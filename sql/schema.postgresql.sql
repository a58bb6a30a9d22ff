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

-- Running upgrade 0001 -> 0002

CREATE TABLE api_keys (
    key_id VARCHAR(32) NOT NULL, 
    name VARCHAR(128) NOT NULL, 
    key_hash VARCHAR(64) NOT NULL, 
    models TEXT NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    created_by VARCHAR(128) NOT NULL, 
    revoked_at TIMESTAMP WITH TIME ZONE, 
    PRIMARY KEY (key_id)
);

CREATE INDEX ix_api_keys_name ON api_keys (name);

UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';

-- Running upgrade 0002 -> 0003

CREATE TABLE monitor_runs (
    monitor_id BIGSERIAL NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    ds DATE NOT NULL, 
    kind VARCHAR(16) NOT NULL, 
    status VARCHAR(24) NOT NULL, 
    run_id BIGINT, 
    rows BIGINT NOT NULL, 
    sampled_rows BIGINT NOT NULL, 
    failed_checks INTEGER NOT NULL, 
    summary JSON NOT NULL, 
    report_uri TEXT, 
    seconds FLOAT NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (monitor_id), 
    CONSTRAINT ck_monitor_runs_kind CHECK (kind IN ('data', 'quality')), 
    CONSTRAINT ck_monitor_runs_status CHECK (status IN ('pass', 'fail', 'insufficient_data')), 
    CONSTRAINT uq_monitor_runs_partition UNIQUE (model, version, ds, kind)
);

CREATE INDEX ix_monitor_runs_history ON monitor_runs (model, ds);

CREATE TABLE monitor_checks (
    check_id BIGSERIAL NOT NULL, 
    monitor_id BIGINT NOT NULL, 
    kind VARCHAR(32) NOT NULL, 
    column_name VARCHAR(128), 
    statistic VARCHAR(64) NOT NULL, 
    value FLOAT, 
    threshold FLOAT, 
    passed BOOLEAN, 
    status VARCHAR(24) NOT NULL, 
    severity VARCHAR(8) NOT NULL, 
    rows BIGINT NOT NULL, 
    sampled BOOLEAN NOT NULL, 
    detail JSON, 
    PRIMARY KEY (check_id), 
    CONSTRAINT ck_monitor_checks_status CHECK (status IN ('pass', 'fail', 'insufficient_data')), 
    CONSTRAINT ck_monitor_checks_severity CHECK (severity IN ('fail', 'warn')), 
    FOREIGN KEY(monitor_id) REFERENCES monitor_runs (monitor_id) ON DELETE CASCADE
);

CREATE INDEX ix_monitor_checks_run ON monitor_checks (monitor_id);

CREATE INDEX ix_monitor_checks_column ON monitor_checks (kind, column_name);

CREATE TABLE retrain_requests (
    request_id VARCHAR(250) NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    ds DATE NOT NULL, 
    version INTEGER, 
    source VARCHAR(32) NOT NULL, 
    reason TEXT NOT NULL, 
    breaches JSON NOT NULL, 
    status VARCHAR(16) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    created_by VARCHAR(128) NOT NULL, 
    PRIMARY KEY (request_id)
);

CREATE INDEX ix_retrain_requests_model ON retrain_requests (model, ds);

UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';

-- Running upgrade 0003 -> 0004

CREATE TABLE candidates (
    candidate_id BIGSERIAL NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    version INTEGER, 
    ds DATE NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    created_by VARCHAR(128) NOT NULL, 
    trigger JSON NOT NULL, 
    training_data JSON, 
    gates JSON, 
    status VARCHAR(24) NOT NULL, 
    reason TEXT, 
    strategy VARCHAR(16) NOT NULL, 
    approved_by VARCHAR(128), 
    approved_at TIMESTAMP WITH TIME ZONE, 
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (candidate_id), 
    CONSTRAINT ck_candidates_status CHECK (status IN ('training', 'rejected', 'pending_approval', 'shadow', 'canary', 'promoted', 'rolled_back', 'aborted', 'superseded'))
);

CREATE INDEX ix_candidates_model ON candidates (model, candidate_id);

CREATE TABLE model_rollouts (
    model VARCHAR(64) NOT NULL, 
    candidate_id BIGINT NOT NULL, 
    strategy VARCHAR(16) NOT NULL, 
    champion_version INTEGER, 
    challenger_version INTEGER NOT NULL, 
    canary_share FLOAT, 
    healthy_nights INTEGER DEFAULT '0' NOT NULL, 
    last_ds DATE, 
    started_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (model)
);

CREATE TABLE audit_events (
    event_id BIGSERIAL NOT NULL, 
    model VARCHAR(64) NOT NULL, 
    version INTEGER, 
    candidate_id BIGINT, 
    at TIMESTAMP WITH TIME ZONE NOT NULL, 
    by VARCHAR(128) NOT NULL, 
    event VARCHAR(64) NOT NULL, 
    detail JSON NOT NULL, 
    PRIMARY KEY (event_id)
);

CREATE INDEX ix_audit_events_model ON audit_events (model, event_id);

UPDATE alembic_version SET version_num='0004' WHERE alembic_version.version_num = '0003';

-- Running upgrade 0004 -> 0005

ALTER TABLE predictions DROP CONSTRAINT predictions_pkey;

ALTER TABLE predictions ADD CONSTRAINT predictions_pkey PRIMARY KEY (entity_id, run_id);

UPDATE alembic_version SET version_num='0005' WHERE alembic_version.version_num = '0004';

-- Running upgrade 0005 -> 0006

ALTER TABLE alias_events ADD COLUMN effective_ds DATE;

CREATE TABLE nights (
    model VARCHAR(64) NOT NULL, 
    ds DATE NOT NULL, 
    decided_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    decided_by VARCHAR(128) NOT NULL, 
    run_key VARCHAR(256), 
    versions JSON NOT NULL, 
    verdicts JSON NOT NULL, 
    rollout TEXT NOT NULL, 
    retrain JSON, 
    PRIMARY KEY (model, ds)
);

CREATE TABLE served (
    model VARCHAR(64) NOT NULL, 
    ds DATE NOT NULL, 
    version INTEGER NOT NULL, 
    role VARCHAR(16) NOT NULL, 
    share FLOAT NOT NULL, 
    run_id BIGINT, 
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (model, ds, version), 
    CONSTRAINT ck_served_share CHECK (share >= 0 AND share <= 1)
);

UPDATE alembic_version SET version_num='0006' WHERE alembic_version.version_num = '0005';

-- Running upgrade 0006 -> 0007

DROP VIEW IF EXISTS committed_predictions;

ALTER TABLE predictions ALTER COLUMN label DROP NOT NULL;

ALTER TABLE predictions ADD COLUMN value DOUBLE PRECISION;

ALTER TABLE predictions ADD COLUMN probs REAL[];

CREATE VIEW committed_predictions AS
SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, p.value, p.probs, r.started_at AS scored_at, c.run_id
FROM partitions c
JOIN runs r ON r.run_id = c.run_id
JOIN predictions p ON p.run_id = c.run_id
WHERE c.status = 'committed';

ALTER TABLE model_versions ADD COLUMN task VARCHAR(16) DEFAULT 'binary' NOT NULL;

ALTER TABLE model_versions ADD COLUMN signature JSON;

ALTER TABLE model_versions ADD COLUMN source JSON;

UPDATE alembic_version SET version_num='0007' WHERE alembic_version.version_num = '0006';

-- Running upgrade 0007 -> 0008

ALTER TABLE runs ADD COLUMN replaced_at TIMESTAMP WITH TIME ZONE;

CREATE INDEX ix_runs_served ON runs (model, version, ds, status);

UPDATE alembic_version SET version_num='0008' WHERE alembic_version.version_num = '0007';

-- Running upgrade 0008 -> 0009

ALTER TABLE runs ADD COLUMN manifest JSON;

UPDATE alembic_version SET version_num='0009' WHERE alembic_version.version_num = '0008';

-- Running upgrade 0009 -> 0010

ALTER TABLE candidates DROP CONSTRAINT ck_candidates_status;

ALTER TABLE candidates ADD CONSTRAINT ck_candidates_status CHECK (status IN ('training', 'rejected', 'pending_approval', 'shadow', 'canary', 'promoted', 'rolled_back', 'aborted', 'superseded', 'bandit'));

CREATE TABLE bandit_allocations (
    model VARCHAR(64) NOT NULL, 
    ds DATE NOT NULL, 
    version INTEGER NOT NULL, 
    share FLOAT NOT NULL, 
    p_best FLOAT, 
    rewards BIGINT DEFAULT '0' NOT NULL, 
    mean_reward FLOAT, 
    decided_ds DATE, 
    decided_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (model, ds, version), 
    CONSTRAINT ck_bandit_allocations_share CHECK (share >= 0 AND share <= 1)
);

CREATE TABLE performance_estimates (
    model VARCHAR(64) NOT NULL, 
    version INTEGER NOT NULL, 
    ds DATE NOT NULL, 
    run_id BIGINT, 
    method VARCHAR(32) NOT NULL, 
    task VARCHAR(16) NOT NULL, 
    rows BIGINT NOT NULL, 
    estimated JSON NOT NULL, 
    realized JSON, 
    error JSON, 
    created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    labelled_at TIMESTAMP WITH TIME ZONE, 
    PRIMARY KEY (model, version, ds)
);

UPDATE alembic_version SET version_num='0010' WHERE alembic_version.version_num = '0009';

-- Running upgrade 0010 -> 0011

ALTER TABLE predictions ADD COLUMN reasons BYTEA;

ALTER TABLE model_versions ADD COLUMN explainer JSON;

UPDATE alembic_version SET version_num='0011' WHERE alembic_version.version_num = '0010';

-- Running upgrade 0011 -> 0012

CREATE TABLE served_history (
    model VARCHAR(64) NOT NULL, 
    ds DATE NOT NULL, 
    role VARCHAR(16) NOT NULL, 
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    version INTEGER NOT NULL, 
    share FLOAT NOT NULL, 
    run_id BIGINT, 
    replaced_at TIMESTAMP WITH TIME ZONE NOT NULL, 
    PRIMARY KEY (model, ds, role, recorded_at)
);

UPDATE alembic_version SET version_num='0012' WHERE alembic_version.version_num = '0011';

-- Running upgrade 0012 -> 0013

DROP VIEW IF EXISTS committed_predictions;

CREATE FUNCTION pg_temp.nightshift_pack_probs(a real[]) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT string_agg(
    substring(b from 4 for 1) || substring(b from 3 for 1) || substring(b from 2 for 1) || substring(b from 1 for 1),
    ''::bytea ORDER BY i)
  FROM (SELECT float4send(e) AS b, i FROM unnest(a) WITH ORDINALITY AS t(e, i)) AS elements
$$;

ALTER TABLE predictions ALTER COLUMN probs TYPE bytea USING pg_temp.nightshift_pack_probs(probs);

DROP FUNCTION pg_temp.nightshift_pack_probs(real[]);

CREATE VIEW committed_predictions AS
SELECT c.model, c.version, c.ds, p.entity_id, p.score, p.label, p.value, p.probs, r.started_at AS scored_at, c.run_id
FROM partitions c
JOIN runs r ON r.run_id = c.run_id
JOIN predictions p ON p.run_id = c.run_id
WHERE c.status = 'committed';

UPDATE alembic_version SET version_num='0013' WHERE alembic_version.version_num = '0012';

COMMIT;

