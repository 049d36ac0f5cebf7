#!/usr/bin/env bash
# `make serve`: a local Prefect server (SQLite under .prefect/) and a process worker on the `cpu`
# pool, telemetry off. Creates the work pools (cpu: process; gpu: Kubernetes and gpu-docker: Docker,
# from the base job templates here) and applies prefect.yaml's deployments. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PORT=${PREFECT_PORT:-4200}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_UI_URL=http://127.0.0.1:$PORT
export PREFECT_API_DATABASE_CONNECTION_URL=${PREFECT_API_DATABASE_CONNECTION_URL:-sqlite+aiosqlite:///$PREFECT_HOME/server.db}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_CLIENT_ENABLE_METRICS=false
mkdir -p "$PREFECT_HOME"

"$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" > "$PREFECT_HOME/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT INT TERM
echo "starting the Prefect server on $PREFECT_UI_URL (log: $PREFECT_HOME/server.log) ..."
for _ in $(seq 240); do
  if "$BIN/python" -c "import httpx,sys; sys.exit(httpx.get('$PREFECT_API_URL/health').status_code != 200)" 2>/dev/null; then break; fi
  kill -0 $SERVER 2>/dev/null || { tail -20 "$PREFECT_HOME/server.log"; exit 1; }
  sleep 1
done

pool() {  # create a work pool unless it exists
  "$BIN/prefect" work-pool inspect "$1" > /dev/null 2>&1 || "$BIN/prefect" --no-prompt work-pool create "$@" > /dev/null
}
pool cpu --type process
pool gpu --type kubernetes --base-job-template deploy/gpu-kubernetes.json
pool gpu-docker --type docker --base-job-template deploy/gpu-docker.json
if [ "${M3_DEPLOY:-1}" = 1 ]; then
  echo "applying prefect.yaml ..."
  "$BIN/prefect" --no-prompt deploy --all > "$PREFECT_HOME/deploy.log" 2>&1 || { tail -30 "$PREFECT_HOME/deploy.log"; exit 1; }
fi
echo "UI: $PREFECT_UI_URL   lineage: $BIN/m3 ui   (export PREFECT_API_URL=$PREFECT_API_URL to use this server)"
"$BIN/prefect" worker start --pool cpu --type process
