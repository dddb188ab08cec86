#!/usr/bin/env bash
# Runs a local PostgreSQL server in the foreground for tests (see scripts/services.d/postgres.sh).
#
# Usage: scripts/postgres_server.sh DATA_DIR PORT
#
# First run: initdb DATA_DIR with scram-sha-256 password auth on TCP only,
# a superuser `postgres` and a login role `music` owning database `music`
# (passwords below: local test credentials, nothing else uses them).
# The PostgreSQL binaries come from PG_BIN, else pg_config, else the newest
# /usr/lib/postgresql/*/bin. As root, the server runs as the `postgres` OS user.
# SIGTERM/SIGINT stop it with a fast shutdown (open sessions are ended).
set -euo pipefail

DATA_DIR="${1:?data directory}"
PORT="${2:?port}"
SUPERUSER_PASSWORD="postgres-test-password"
TEST_ROLE="music"
TEST_PASSWORD="music-test-password"
TEST_DATABASE="music"

pg_bin() {
  if [[ -n "${PG_BIN:-}" ]]; then echo "${PG_BIN}"; return; fi
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -n "${dir}" ]]; then echo "${dir}"; return; fi
  if command -v pg_config >/dev/null; then pg_config --bindir; return; fi
  echo "postgres_server.sh: no PostgreSQL binaries (apt-get install postgresql, or set PG_BIN)" >&2
  exit 2
}
BIN="$(pg_bin)"

# PostgreSQL refuses to run as root: run its programs as the postgres OS user then.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

# As root the server runs as `postgres`, which must reach DATA_DIR: a checkout
# under a 0700 directory (/root, mktemp -d) would make initdb fail. The cluster
# then lives under /var/tmp, in a directory named after DATA_DIR so that every
# start finds the same one, and DATA_DIR becomes a symlink to it.
if [[ "$(id -u)" == 0 ]] && ! as_owner test -x "$(dirname "${DATA_DIR}")" 2>/dev/null; then
  reachable="/var/tmp/music-test-pgdata-$(printf '%s' "${DATA_DIR}" | sha256sum | cut -c1-16)"
  if [[ ! -L "${DATA_DIR}" ]]; then
    rm -rf "${DATA_DIR}"  # nothing postgres can use: the test cluster is made again where it can
    mkdir -p "$(dirname "${DATA_DIR}")"
    ln -s "${reachable}" "${DATA_DIR}"
  fi
  echo "postgres_server.sh: the postgres user cannot reach $(dirname "${DATA_DIR}"); data in ${reachable}" >&2
  DATA_DIR="${reachable}"
fi

if [[ ! -f "${DATA_DIR}/PG_VERSION" ]]; then
  rm -rf "${DATA_DIR}.init"
  mkdir -p "${DATA_DIR}.init"
  [[ "$(id -u)" == 0 ]] && chown postgres: "${DATA_DIR}.init"
  chmod 700 "${DATA_DIR}.init"
  pwfile="${DATA_DIR}.init/.pw"
  echo "${SUPERUSER_PASSWORD}" >"${pwfile}"
  [[ "$(id -u)" == 0 ]] && chown postgres: "${pwfile}"
  as_owner "${BIN}/initdb" -D "${DATA_DIR}.init/data" -U postgres --pwfile="${pwfile}" \
    --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "${pwfile}"
  echo "CREATE ROLE ${TEST_ROLE} LOGIN PASSWORD '${TEST_PASSWORD}';
CREATE DATABASE ${TEST_DATABASE} OWNER ${TEST_ROLE};" |
    as_owner "${BIN}/postgres" --single -D "${DATA_DIR}.init/data" -c password_encryption=scram-sha-256 postgres >/dev/null
  # Complete clusters only under DATA_DIR: an interrupted initdb is redone.
  mv "${DATA_DIR}.init/data" "${DATA_DIR}"
  rm -rf "${DATA_DIR}.init"
fi

# Test settings: TCP on 127.0.0.1 only (no Unix socket directory to own),
# durability traded for speed (a lost test cluster is recreated).
as_owner "${BIN}/postgres" -D "${DATA_DIR}" -p "${PORT}" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories= -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=200 &
server=$!
# Fast shutdown: a smart one would wait for clients the tests left open.
trap 'kill -INT "${server}" 2>/dev/null || true' TERM INT
while ! wait "${server}"; do
  kill -0 "${server}" 2>/dev/null || break
done
