#!/bin/sh
# docker-entrypoint-initdb.d hook (first start of an empty data directory only):
# creates Grafana's read-only role from grafana-reader.psql.
set -eu
: "${GRAFANA_READER_PASSWORD:?set GRAFANA_READER_PASSWORD (docker/.env)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader_password="$GRAFANA_READER_PASSWORD" \
  -f /docker-entrypoint-initdb.d/grafana-reader.psql
