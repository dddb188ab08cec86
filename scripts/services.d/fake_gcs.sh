# A second GCS emulator, for clients of GCS's XML API (object_store, so delta-rs / deltalake),
# sourced by scripts/services.sh. gcp-storage-emulator (service `gcs`) serves the JSON API only.
#
#   fake_gcs  port FAKE_GCS_PORT (default 4443), http, objects in memory.
#             fsouza/fake-gcs-server (JSON API; XML listing and downloads) plus the XML object
#             uploads and copies with x-goog-if-generation-match it lacks: scripts/fake_gcs/main.go.
#
# Built with Go on first use (a few minutes on 2 cores) into .cache/fake-gcs/<digest>/, from the
# module versions pinned in scripts/fake_gcs/go.mod and go.sum (Go checks each module's checksum).
# Clients: google-cloud-storage / Beam's gcsio with STORAGE_EMULATOR_HOST=http://127.0.0.1:4443;
# object_store with a service-account key {"gcs_base_url": that URL, "disable_oauth": true, ...}
# (io_connectors/sinks/tables.py builds it from STORAGE_EMULATOR_HOST).
SERVICES+=(fake_gcs)

fake_gcs_port() { echo "${FAKE_GCS_PORT:-4443}"; }

fake_gcs_binary() {
  local source="${REPO_ROOT}/scripts/fake_gcs" digest
  digest="$(cat "${source}/go.mod" "${source}/go.sum" "${source}/main.go" | sha256sum | cut -c1-12)"
  echo "${REPO_ROOT}/.cache/fake-gcs/${digest}/fake-gcs"
}

fake_gcs_install() {
  local binary
  binary="$(fake_gcs_binary)"
  [[ -x "${binary}" ]] && return 0
  command -v go >/dev/null 2>&1 || die "fake_gcs: Go is needed to build the fake GCS server (https://go.dev/dl/)"
  log "fake_gcs: building fake-gcs-server from the Go module proxy (first use only; takes minutes)"
  mkdir -p "$(dirname "${binary}")"
  # Own GOPATH under .cache (writable module cache: -modcacherw, so rm -rf works);
  # GOTOOLCHAIN=local: no toolchain download; -mod=readonly: go.mod/go.sum as committed.
  (cd "${REPO_ROOT}/scripts/fake_gcs" \
    && GOPATH="${REPO_ROOT}/.cache/fake-gcs/gopath" GOFLAGS='-modcacherw -mod=readonly' GOTOOLCHAIN=local \
       CGO_ENABLED=0 go build -trimpath -o "${binary}.tmp" .) >&2 || die "fake_gcs: building the fake GCS server failed"
  mv "${binary}.tmp" "${binary}"
}

fake_gcs_command() {
  fake_gcs_install
  CMD=("$(fake_gcs_binary)" -host 127.0.0.1 -port "$(fake_gcs_port)")
}

fake_gcs_env() {
  # Not STORAGE_EMULATOR_HOST: that one points at the `gcs` service. Set it to this URL for
  # a process that should use this emulator instead.
  echo "export FAKE_GCS_EMULATOR_HOST=http://127.0.0.1:$(fake_gcs_port)"
}
