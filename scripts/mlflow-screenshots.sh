#!/usr/bin/env bash
# Screenshots of the MLflow UI views a user opens after `make main`, taken by headless Chromium on a fresh
# profile (no stored UI settings), into $1 (default: screenshots/). Needs Debian's `chromium`
# (apt-get install -y chromium) and a finished `make main` (mlflow/mlflow.db). Starts `naslung mlflow-ui`
# on 127.0.0.1:$PORT, reads the view URLs it prints, shoots each, stops the server.
set -euo pipefail
OUT=${1:-screenshots}
PORT=${PORT:-5055}
mkdir -p "$OUT"
LOG=$(mktemp)
naslung mlflow-ui --port "$PORT" >"$LOG" 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 1; done
shoot() {  # name url
  local profile
  profile=$(mktemp -d)
  chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size=1600,1000 --virtual-time-budget=15000 --screenshot="$OUT/$1.png" "$2" >/dev/null 2>&1
  rm -rf "$profile"
  echo "$OUT/$1.png  <- $2"
}
shoot experiments "http://127.0.0.1:$PORT/#/experiments?workflowType=machine_learning"
grep -Eo 'http://127\.0\.0\.1:[0-9]+/#/[^ ]+' "$LOG" | sort -u | while read -r url; do
  name=$(echo "$url" | sed -E 's|.*/#/||; s|[?].*||; s|[^A-Za-z0-9]+|-|g')
  shoot "$name" "$url"
done
