#!/usr/bin/env bash
# Benchmarks alaska-gateway: HTTP requests through the gateway against the
# same service called directly over MLM, in the same run.
#
#   tools/bench-gateway.sh [-c CONNECTIONS] [-d SECONDS] [-n REQUESTS] [-r ROUNDS] [--no-build]
#
# Starts alaska-broker on a free loopback port, an alaska worker (pool 4)
# serving a one-line echo script (`return alaskaContext`) as service
# `bench`, and alaska-gateway in front of it. Then, ROUNDS times and
# interleaved (best round of each kept, as tools/bench.sh does): wrk with
# CONNECTIONS keep-alive connections (default 64) POSTing a 64-byte body
# to /v1/request/bench/echo for SECONDS (default 10), and alaska-bench with
# window CONNECTIONS sending REQUESTS (default 20000) 64-byte requests
# straight to the broker. Prints req/s, p50 and p99 of both, the ratio of
# throughputs (target >= 0.5x) and the gateway's non-200 answers.
# Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

CONN=64
SECS=10
N=20000
ROUNDS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    -c) CONN="$2"; shift 2 ;;
    -d) SECS="$2"; shift 2 ;;
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench-gateway.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
command -v wrk >/dev/null || { echo "bench-gateway.sh: wrk not found (apt-get install wrk)" >&2; exit 1; }

[ "$BUILD" = 1 ] && ./build.sh >/dev/null
# build.sh builds every binary; alaska-gateway is taken from target/release.
BIN=target/release
. tools/bench-common.sh
EP="tcp://127.0.0.1:$(free_port)"
HTTP="127.0.0.1:$(free_port)"

"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
PIDS+=($!)
sleep 0.5

mkdir -p "$TMP/services"
echo 'return alaskaContext' >"$TMP/services/echo.lua"
cat >"$TMP/worker.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "4"
    broker
        endpoint = "$EP"
    service
        address = "bench"
        filter = ".*"
CFG
"$BIN/alaska" -f --no-embedded-broker -c "$TMP/worker.cfg" >"$TMP/worker.log" 2>&1 &
PIDS+=($!)
"$BIN/alaska-gateway" -e "$EP" --listen "$HTTP" >"$TMP/gateway.log" 2>&1 &
PIDS+=($!)
URL="http://$HTTP/v1/request/bench/echo"
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -d warm "$URL?timeout=500" || true)" = 200 ] && break
  sleep 0.1
done

# wrk: POST a 64-byte body; print one JSON line (latencies in us).
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "application/octet-stream"
function done(summary, latency, requests)
  local s = summary.errors
  local non200 = s.status + s.connect + s.read + s.write + s.timeout
  io.write(string.format('{"rps":%.0f,"p50_us":%d,"p99_us":%d,"max_us":%d,"requests":%d,"errors":%d}\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    latency.max, summary.requests, non200))
end
LUA

best() { # OLD NEW: the one with the higher rps
  if [ -z "$1" ]; then echo "$2"; return; fi
  awk -v a="$(field rps "$1")" -v b="$(field rps "$2")" 'BEGIN { exit !(b > a) }' && echo "$2" || echo "$1"
}
row() {
  printf '%-44s %10s %8s %8s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" "$(field p99_us "$2")"
}

# Warm both paths once.
wrk -t 2 -c "$CONN" -d 2 -s "$TMP/post.lua" "$URL" >/dev/null
"$BIN/alaska-bench" -e "$EP" -a bench -s echo -w "$CONN" -n 2000 -b 64 --json >/dev/null

GW="" DIRECT="" ERRORS=0
for _ in $(seq "$ROUNDS"); do
  OUT=$(wrk -t 2 -c "$CONN" -d "$SECS" -s "$TMP/post.lua" "$URL" | grep '^{')
  ERRORS=$((ERRORS + $(field errors "$OUT")))
  GW=$(best "$GW" "$OUT")
  DIRECT=$(best "$DIRECT" "$("$BIN/alaska-bench" -e "$EP" -a bench -s echo -w "$CONN" -n "$N" -b 64 --json)")
done

printf '%-44s %10s %8s %8s\n' "run (best of $ROUNDS interleaved rounds)" "req/s" "p50 us" "p99 us"
row "gateway, wrk -c $CONN, POST 64 B echo.lua" "$GW"
row "direct, alaska-bench -w $CONN, 64 B echo.lua" "$DIRECT"
echo "gateway / direct throughput: $(awk -v a="$(field rps "$GW")" -v b="$(field rps "$DIRECT")" 'BEGIN { printf "%.2f", a / b }')x (target >= 0.5x)"
echo "gateway answers other than 200 over all rounds: $ERRORS"
