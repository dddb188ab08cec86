# MLflow tracking server for tests and local runs, sourced by scripts/services.sh.
#
#   mlflow  port MLFLOW_PORT (default 5065); `mlflow server` from the repo's virtualenv (the
#           `ml` extra) with a SQLite backend store and artifacts served by the server itself,
#           both under .cache/services/mlflow/ (kept across restarts; delete the folder to reset).
SERVICES+=(mlflow)

mlflow_port() { echo "${MLFLOW_PORT:-5065}"; }

mlflow_command() {
  [[ -x "${VENV_BIN}/mlflow" ]] || die "mlflow: ${VENV_BIN}/mlflow not found; install the ml extra: pip install -e '.[ml]'"
  local home="${STATE_DIR}/mlflow"
  mkdir -p "${home}/artifacts"
  # One worker: the tests' load is tiny and the machine is shared.
  CMD=("${VENV_BIN}/mlflow" server --host 127.0.0.1 --port "$(mlflow_port)" --workers 1
       --backend-store-uri "sqlite:///${home}/mlflow.db" --artifacts-destination "${home}/artifacts"
       --serve-artifacts)
}

mlflow_env() {
  echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$(mlflow_port)"
}
