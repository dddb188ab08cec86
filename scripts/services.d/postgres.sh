# PostgreSQL (sourced by scripts/services.sh): a throw-away cluster for tests and benchmarks.
#
#   postgres  PostgreSQL 15+ on 127.0.0.1, port POSTGRES_PORT (default 15432), data in .cache/services/pgdata
#
# scripts/postgres_server.sh creates the cluster on first start (scram-sha-256
# password auth, test role and database below) and runs the server in the
# foreground; as root it drops to the `postgres` OS user, which PostgreSQL
# requires. The credentials are for this local test server only.
SERVICES+=(postgres)

# Below Linux's ephemeral range (32768-60999), like every port here: the old
# default 55432 was taken by some client socket's local port when a CI session
# started the server mid-run ("could not bind IPv4 address: Address already in use").
postgres_port() { echo "${POSTGRES_PORT:-15432}"; }
postgres_command() {
  CMD=("${REPO_ROOT}/scripts/postgres_server.sh" "${STATE_DIR}/pgdata" "$(postgres_port)")
}
postgres_env() {
  echo "export POSTGRES_URL=postgresql://music:music-test-password@127.0.0.1:$(postgres_port)/music"
}
