# The webhook receiver (io_connectors.streams.webhooks) for local end-to-end runs, sourced by scripts/services.sh.
#
#   webhooks  port WEBHOOKS_PORT (default 8090); POST /webhooks/test, signed with
#             WEBHOOKS_TEST_SECRET (default below, a test-only secret); accepted
#             events go to the Redis stream webhooks:test of the `redis` service
#             (start it first: scripts/services.sh start redis webhooks).
#
# Secrets reach the server through its environment, never its command line.
SERVICES+=(webhooks)

WEBHOOKS_DEFAULT_TEST_SECRET='local-webhook-test-secret'

webhooks_port() { echo "${WEBHOOKS_PORT:-8090}"; }

webhooks_command() {
  export WEBHOOKS_TEST_SECRET="${WEBHOOKS_TEST_SECRET:-${WEBHOOKS_DEFAULT_TEST_SECRET}}"
  # The redis service's password (scripts/services.d/redis.sh), unless one is set.
  export REDIS_PASSWORD="${REDIS_PASSWORD:-${REDIS_DEFAULT_PASSWORD:-}}"
  CMD=("${VENV_BIN}/python" -m io_connectors.streams.webhooks --host 127.0.0.1 --port "$(webhooks_port)"
       --redis_url "redis://127.0.0.1:${REDIS_PORT:-6380}/0" --source test=WEBHOOKS_TEST_SECRET)
}

webhooks_env() {
  echo "export WEBHOOKS_URL=http://127.0.0.1:$(webhooks_port)/webhooks/test"
  echo "export WEBHOOKS_TEST_SECRET=${WEBHOOKS_TEST_SECRET:-${WEBHOOKS_DEFAULT_TEST_SECRET}}"
}
