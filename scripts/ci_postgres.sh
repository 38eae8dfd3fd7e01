#!/usr/bin/env bash
# Make PostgreSQL available to the test suite (Debian/Ubuntu). Idempotent; source or run it
# from .ci/run before pytest. The store tests then start their own throw-away server
# (initdb + pg_ctl in a temp dir, 127.0.0.1, a free port; as root via `runuser -u postgres`)
# and skip with a clear message if none can start. To use an existing server instead,
# export QLP_TEST_PG_URL=postgresql+psycopg://user@127.0.0.1:5432/postgres
set -euo pipefail

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        # The tests run their own server: stop Debian from creating a 'main' cluster.
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
        echo "ci_postgres: PostgreSQL missing and cannot apt-get install it (need root + apt);" \
             "the PostgreSQL store tests will skip" >&2
        exit 0
    fi
fi
BIN="$(pg_bin)"
echo "ci_postgres: using $("$BIN/postgres" --version) from $BIN"
# tests/_postgres.py finds initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "ci_postgres: running as root without a 'postgres' user; tests will skip" >&2
fi
