-- The lookup API's database role reads exactly what lookups need and writes nothing.
--
-- Applied by the `init` service after `nightshift db upgrade` (as the store's owner role), and
-- safe to re-run (GRANT is idempotent). By hand:
--   psql "$NIGHTSHIFT_STORE_URL" -v api_role=nightshift_api -f docker/postgres/api-readonly.sql
-- The role itself is created by docker/postgres/initdb/10-nightshift.sh with LOGIN, CONNECT on
-- the store database only, default_transaction_read_only = on and a statement timeout.
--
-- What the API reads (jobs/nightshift/api/queries.py):
--   alembic_version   the schema revision, checked at startup
--   api_keys          key_hash, models, revoked_at of the caller's key
--   model_aliases     alias -> version (champion, challenger, ...)
--   model_versions    whether a model / version exists (404 vs empty); its task, signature and
--                     feature names (what the codes of stored reasons index)
--   model_rollouts    the canary share of a model while a canary runs (who the challenger answers)
--   partitions        the catalog: the committed run of a (model, version, ds)
--   served            the version that held a role on a night (`?ds=` by alias)
--   served_history    `?ds=&as_of=` by alias: the served rows a re-run of the night replaced, and when
--   runs, alias_events  `?as_of=`: when each run served (commit to replacement) and where each
--                     alias pointed when; only those columns (no hosts, errors, manifests, reasons)
--   predictions       the rows (and, for `?explain=true`, their reasons: one column `reasons` of the
--                     same rows, so no grant of its own), through the partitioned parent: a SELECT on the parent
--                     covers every per-run partition attached later (PostgreSQL checks the
--                     privileges of the table named in the query, not of its partitions)
-- Nothing else: no other column of runs or alias_events, no run_chunks or audit tables, no
-- sequences, no INSERT, UPDATE, DELETE, TRUNCATE or DDL, no CREATE on the schema.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"api_role";
REVOKE CREATE ON SCHEMA public FROM :"api_role";
GRANT USAGE ON SCHEMA public TO :"api_role";
GRANT SELECT ON TABLE alembic_version, api_keys, model_aliases, model_rollouts, model_versions, partitions, predictions,
  served, served_history TO :"api_role";
GRANT SELECT (run_id, model, version, ds, status, rows, finished_at, replaced_at) ON TABLE runs TO :"api_role";
GRANT SELECT (event_id, model, alias, new_version, at) ON TABLE alias_events TO :"api_role";
