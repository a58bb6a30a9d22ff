#!/usr/bin/env bash
# Runs once, as the superuser, when the PostgreSQL volume is empty (docker-entrypoint-initdb.d):
# one server, two databases with their own owner roles, and the lookup API's read-only role.
#
#   AIRFLOW_DB_NAME / AIRFLOW_DB_USER / AIRFLOW_DB_PASSWORD           Airflow's metadata database
#   NIGHTSHIFT_DB_NAME / NIGHTSHIFT_DB_USER / NIGHTSHIFT_DB_PASSWORD  the prediction store (owner: migrations, scoring)
#   NIGHTSHIFT_API_DB_USER / NIGHTSHIFT_API_DB_PASSWORD               the lookup API: LOGIN, CONNECT to the store,
#                                                                     read-only sessions; its table grants are
#                                                                     applied by `init` after the migrations
#   NIGHTSHIFT_API_STATEMENT_TIMEOUT                                  per statement of the API role (default 5s)
#
# Re-running it against a cluster that has the roles fails on CREATE ROLE: it is meant for an
# empty volume. To add the roles to an existing server run the same SQL by hand (docs/operations.md).
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}"
: "${NIGHTSHIFT_DB_PASSWORD:?set NIGHTSHIFT_DB_PASSWORD}"
: "${NIGHTSHIFT_API_DB_PASSWORD:?set NIGHTSHIFT_API_DB_PASSWORD}"

psql_admin() {
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" "$@"
}

psql_admin --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_db="${AIRFLOW_DB_NAME:-airflow}" \
  -v airflow_user="${AIRFLOW_DB_USER:-airflow}" \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" \
  -v store_db="${NIGHTSHIFT_DB_NAME:-nightshift}" \
  -v store_user="${NIGHTSHIFT_DB_USER:-nightshift}" \
  -v store_password="$NIGHTSHIFT_DB_PASSWORD" \
  -v api_user="${NIGHTSHIFT_API_DB_USER:-nightshift_api}" \
  -v api_password="$NIGHTSHIFT_API_DB_PASSWORD" \
  -v api_timeout="${NIGHTSHIFT_API_STATEMENT_TIMEOUT:-5s}" <<'SQL'
CREATE ROLE :"airflow_user" LOGIN PASSWORD :'airflow_password';
CREATE DATABASE :"airflow_db" OWNER :"airflow_user";
REVOKE ALL ON DATABASE :"airflow_db" FROM PUBLIC;

CREATE ROLE :"store_user" LOGIN PASSWORD :'store_password';
CREATE DATABASE :"store_db" OWNER :"store_user";
REVOKE ALL ON DATABASE :"store_db" FROM PUBLIC;

CREATE ROLE :"api_user" LOGIN PASSWORD :'api_password';
ALTER ROLE :"api_user" SET default_transaction_read_only = on;
ALTER ROLE :"api_user" SET statement_timeout = :'api_timeout';
GRANT CONNECT ON DATABASE :"store_db" TO :"api_user";
SQL

# In each database, the owner role owns the public schema (PostgreSQL 15+ already lets only the
# database owner create there; this makes older servers behave the same).
psql_admin --dbname "${AIRFLOW_DB_NAME:-airflow}" -v owner="${AIRFLOW_DB_USER:-airflow}" <<'SQL'
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
psql_admin --dbname "${NIGHTSHIFT_DB_NAME:-nightshift}" -v owner="${NIGHTSHIFT_DB_USER:-nightshift}" <<'SQL'
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
