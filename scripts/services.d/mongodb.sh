# MongoDB wire protocol for tests: FerretDB 1.x (SQLite backend), since no MongoDB server installs here.
#
#   mongodb  port MONGODB_PORT (default 27018), user MONGODB_USER / MONGODB_PASSWORD (defaults below,
#            test-only), database "test"; data in .cache/services/ferretdb/ (SQLite files).
#
# Sourced by scripts/services.sh. FerretDB is built from the Go module proxy on first use
# (pinned version and module checksum; a few minutes on 2 cores) into .cache/ferretdb/.
# Authentication is FerretDB's SCRAM users (--test-enable-new-auth with a setup user).
SERVICES+=(mongodb)

FERRETDB_VERSION='v1.24.0'
# go.sum line of the module zip (also verified by Go against sum.golang.org).
FERRETDB_MODULE_SUM='h1:7WJmezL48Bj9bYWnhT/bEJgX5gjT5s7LFdHTqkN25rA='
MONGODB_DEFAULT_USER='ingest'
MONGODB_DEFAULT_PASSWORD='local-test-mongo-pw'

mongodb_port() { echo "${MONGODB_PORT:-27018}"; }
mongodb_binary() { echo "${REPO_ROOT}/.cache/ferretdb/${FERRETDB_VERSION}/ferretdb"; }

mongodb_install() {
  local binary json dir sum
  binary="$(mongodb_binary)"
  [[ -x "${binary}" ]] && return 0
  command -v go >/dev/null 2>&1 || die "mongodb: Go is needed to build FerretDB ${FERRETDB_VERSION} (https://go.dev/dl/)"
  log "mongodb: building FerretDB ${FERRETDB_VERSION} from the Go module proxy (first use only; takes minutes)"
  mkdir -p "${REPO_ROOT}/.cache/ferretdb"
  # Own GOPATH under .cache (writable module cache: -modcacherw, so rm -rf works);
  # the build cache stays Go's default. GOTOOLCHAIN=local: no toolchain download.
  export GOPATH="${REPO_ROOT}/.cache/ferretdb/gopath" GOFLAGS=-modcacherw GOTOOLCHAIN=local
  # `go install pkg@version` would also read the proxy's version list, which the
  # proxy here refuses; downloading the pinned version and building it does not.
  json="$(go mod download -json "github.com/FerretDB/FerretDB@${FERRETDB_VERSION}")" \
    || die "mongodb: go mod download of FerretDB ${FERRETDB_VERSION} failed"
  sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"${json}")"
  [[ "${sum}" == "${FERRETDB_MODULE_SUM}" ]] || die "mongodb: FerretDB module checksum ${sum} != pinned ${FERRETDB_MODULE_SUM}"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"${json}")"
  # FerretDB embeds build/version/version.txt, which its release tooling
  # generates (`git describe`): build a copy of the module with that file.
  local src="${REPO_ROOT}/.cache/ferretdb/src-${FERRETDB_VERSION}"
  rm -rf "${src}" && cp -r "${dir}" "${src}" && chmod -R u+w "${src}"
  echo "${FERRETDB_VERSION}" >"${src}/build/version/version.txt"
  (cd "${src}" && go build -trimpath -o "${binary}.tmp" ./cmd/ferretdb) >&2 || die "mongodb: building FerretDB failed"
  rm -rf "${src}"
  mv "${binary}.tmp" "${binary}"
}

mongodb_command() {
  mongodb_install
  local data="${STATE_DIR}/ferretdb"
  mkdir -p "${data}/db"
  CMD=("$(mongodb_binary)" --handler=sqlite "--sqlite-url=file:${data}/db/" "--state-dir=${data}"
       "--listen-addr=127.0.0.1:$(mongodb_port)" --debug-addr=- --telemetry=disable --log-level=warn
       --test-enable-new-auth --setup-database=test
       "--setup-username=${MONGODB_USER:-${MONGODB_DEFAULT_USER}}"
       "--setup-password=${MONGODB_PASSWORD:-${MONGODB_DEFAULT_PASSWORD}}")
}

mongodb_env() {
  echo "export MONGODB_URL=mongodb://${MONGODB_USER:-${MONGODB_DEFAULT_USER}}:${MONGODB_PASSWORD:-${MONGODB_DEFAULT_PASSWORD}}@127.0.0.1:$(mongodb_port)/test?authSource=test"
}
