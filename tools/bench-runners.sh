#!/usr/bin/env bash
# Benchmarks the runners beside Lua and the no-Lua echo worker, in one run.
#
#   tools/bench-runners.sh [-n REQUESTS] [-r ROUNDS]
#
# Starts alaska-broker on a free loopback port, a minimal HTTP echo
# application (alaska-bench --http-echo), the no-Lua echo worker
# (alaska-bench --echo-worker, the ceiling) and one alaska worker (pool 1)
# whose subjects are: "echo" (Lua: return alaskaContext), "http" (an HTTP
# runner posting to the echo application, concurrency 4) and "exec" (an
# exec runner with the shipped Python module and runners/python/echo.py,
# 2 processes). The same load from alaska-bench (64-byte requests) runs
# against each in turn, ROUNDS times, interleaved, keeping each one's best
# round: req/s at window 100 and p50 latency at window 1. Then the
# application's own p50 at window 1, called directly with the HTTP
# runner's client (alaska-bench --http-direct). Prints the rows, the
# ratios and the targets:
#   exec runner (Python echo, 2 processes) >= 0.1x the echo worker's req/s (w=100)
#   HTTP runner p50 (w=1) within +100 us of the application's own p50
# (tools/bench.sh runs this script when it is executable, with -n N.)
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --compare) shift 2 ;; # bench.sh passes it on; the runners have no use for it
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench-runners.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

./build.sh >/dev/null
BIN=bin
. tools/bench-common.sh
EP="tcp://127.0.0.1:$(free_port)"
"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
PIDS+=($!)

"$BIN/alaska-bench" --http-echo 127.0.0.1:0 >"$TMP/app.url" 2>"$TMP/app.log" &
APP=$!; PIDS+=($APP)
for _ in $(seq 50); do [ -s "$TMP/app.url" ] && break; sleep 0.1; done
URL=$(cat "$TMP/app.url")
sleep 0.3

"$BIN/alaska-bench" --echo-worker -e "$EP" -a ceiling >"$TMP/echo.log" 2>&1 &
ECHO=$!; PIDS+=($ECHO)

mkdir -p "$TMP/services"
echo 'return alaskaContext' >"$TMP/services/echo.lua"
cat >"$TMP/alaska.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "1"
    broker
        endpoint = "$EP"
        embedded = "0"
    service
        address = "alaska"
        filter = ".*"
    runners
        http
            match = "^http$"
            type = "http"
            url = "$URL"
            concurrency = "4"
        exec
            match = "^exec$"
            type = "exec"
            command = "python3 echo.py"
            dir = "$PWD/runners/python"
            processes = "2"
CFG
"$BIN/alaska" -f -c "$TMP/alaska.cfg" >"$TMP/alaska.log" 2>&1 &
ALASKA=$!; PIDS+=($ALASKA)
for _ in $(seq 50); do grep -q ready "$TMP/alaska.log" && break; sleep 0.1; done
sleep 0.5

load() { # service subject window requests
  "$BIN/alaska-bench" -e "$EP" -a "$1" -s "$2" -w "$3" -n "$4" -b 64 --json
}
best() { # OLD NEW KIND: the better summary (rps: higher; p50: lower)
  if [ -z "$1" ]; then echo "$2"; return; fi
  if [ "$3" = rps ]; then
    awk -v a="$(field rps "$1")" -v b="$(field rps "$2")" 'BEGIN { exit !(b > a) }' && echo "$2" || echo "$1"
  else
    awk -v a="$(field p50_us "$1")" -v b="$(field p50_us "$2")" 'BEGIN { exit !(b < a) }' && echo "$2" || echo "$1"
  fi
}
declare -A BEST
measure() { # KEY SERVICE SUBJECT WINDOW REQUESTS KIND
  BEST[$1]=$(best "${BEST[$1]:-}" "$(load "$2" "$3" "$4" "$5")" "$6")
}
# Warm-up: start the children, open the connections.
load alaska http 4 200 >/dev/null
load alaska exec 2 200 >/dev/null
for _ in $(seq "$ROUNDS"); do
  measure c100 ceiling echo 100 "$N" rps
  measure l100 alaska echo 100 "$N" rps
  measure h100 alaska http 100 "$N" rps
  measure e100 alaska exec 100 "$N" rps
  measure c1 ceiling echo 1 $((N / 10)) p50
  measure l1 alaska echo 1 $((N / 10)) p50
  measure h1 alaska http 1 $((N / 10)) p50
  measure e1 alaska exec 1 $((N / 10)) p50
  BEST[d1]=$(best "${BEST[d1]:-}" "$("$BIN/alaska-bench" --http-direct "$URL" -n $((N / 10)) -b 64 --json)" p50)
done

printf '%-44s %10s %8s %8s %8s %6s\n' "run" "req/s" "p50 us" "p99 us" "max us" "lost"
row() {
  printf '%-44s %10s %8s %8s %8s %6s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" \
    "$(field p99_us "$2")" "$(field max_us "$2")" "$(field lost "$2")"
}
row "echo worker (no Lua), w=100" "${BEST[c100]}"
row "alaska pool 1 echo.lua, w=100" "${BEST[l100]}"
row "HTTP runner -> echo app (4 conns), w=100" "${BEST[h100]}"
row "exec runner, Python echo (2 procs), w=100" "${BEST[e100]}"
row "echo worker (no Lua), w=1" "${BEST[c1]}"
row "alaska pool 1 echo.lua, w=1" "${BEST[l1]}"
row "HTTP runner -> echo app, w=1" "${BEST[h1]}"
row "exec runner, Python echo, w=1" "${BEST[e1]}"
row "echo app called directly (same client), w=1" "${BEST[d1]}"

R_EXEC=$(ratio "$(field rps "${BEST[e100]}")" "$(field rps "${BEST[c100]}")")
R_HTTP=$(ratio "$(field rps "${BEST[h100]}")" "$(field rps "${BEST[c100]}")")
R_LUA=$(ratio "$(field rps "${BEST[l100]}")" "$(field rps "${BEST[c100]}")")
H_APP=$(diff_us "$(field p50_us "${BEST[h1]}")" "$(field p50_us "${BEST[d1]}")")
BROKER=$(field p50_us "${BEST[c1]}")
H_OWN=$(awk -v h="$(field p50_us "${BEST[h1]}")" -v c="$BROKER" -v d="$(field p50_us "${BEST[d1]}")" 'BEGIN { printf "%+d", h - c - d }')
L_OWN=$(diff_us "$(field p50_us "${BEST[l1]}")" "$BROKER")
E_OWN=$(diff_us "$(field p50_us "${BEST[e1]}")" "$BROKER")
echo
echo "best of $ROUNDS interleaved rounds:"
echo "throughput exec runner / echo worker (w=100):   ${R_EXEC}x  target >= 0.1x: $(verdict "$R_EXEC" 0.1 '>=')"
echo "throughput HTTP runner / echo worker (w=100):   ${R_HTTP}x"
echo "throughput alaska echo.lua / echo worker:       ${R_LUA}x"
echo "p50 HTTP runner - app called directly (w=1):    ${H_APP} us  target <= +100 us: $(verdict "${H_APP#+}" 100 '<=')"
echo "  of which the broker round trip (echo worker): ${BROKER} us"
echo "  HTTP runner's own share (runner - echo worker - app): ${H_OWN} us  (<= +100 us: $(verdict "${H_OWN#+}" 100 '<='))"
echo "p50 over the echo worker (w=1): Lua ${L_OWN} us, exec runner ${E_OWN} us"
