#!/bin/sh
# First start of the postgres container: MLflow's tracking/registry database, its users
# database and the coordinator's client registry beside Airflow's (POSTGRES_DB), owned by
# POSTGRES_USER. Idempotent.
set -eu
for db in "$MLFLOW_DB" "$MLFLOW_AUTH_DB" "$COORDINATOR_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
       -v db="$db" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
