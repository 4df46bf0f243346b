#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL (Debian's packages) on a loopback port, then tear it down.
# Exports FAMILYVIEW_TEST_POSTGRES_URL for the command (and FAMILYVIEW_TEST_PGDATA, FAMILYVIEW_TEST_PG_BIN). Installs postgresql with apt-get when missing.
set -euo pipefail

find_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

PG_BIN=$(find_pg_bin || true)
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  echo "with-postgres: PostgreSQL not found; installing Debian's postgresql package" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PG_BIN=$(find_pg_bin)
fi

PGDATA_ROOT=$(mktemp -d /tmp/familyview-pg.XXXXXX)
chmod 755 "$PGDATA_ROOT"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$PGDATA_ROOT" postgres
    chown -R postgres "$PGDATA_ROOT"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_ROOT/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGDATA_ROOT"
}
trap cleanup EXIT INT TERM

as_pg "$PG_BIN/initdb" -D "$PGDATA_ROOT/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_ROOT/data" -l "$PGDATA_ROOT/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PGDATA_ROOT -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=512MB -c effective_cache_size=4GB" start >/dev/null
echo "with-postgres: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT" >&2

export FAMILYVIEW_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
# for the fault tests, which restart this PostgreSQL under load (tests/api/test_api_faults.py)
export FAMILYVIEW_TEST_PGDATA="$PGDATA_ROOT/data" FAMILYVIEW_TEST_PG_BIN="$PG_BIN"
set +e
"$@"
status=$?
set -e
exit $status
