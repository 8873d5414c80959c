#!/usr/bin/env bash
# Benchmarks scripts that reach out (alaska.call, alaska.http) beside the
# plain Lua echo and the HTTP runner, in one run.
#
#   tools/bench-reach.sh [-n REQUESTS] [-r ROUNDS]
#
# Starts alaska-broker on a free loopback port, a minimal HTTP echo
# application (alaska-bench --http-echo), the no-Lua echo worker on
# service "target" (what alaska.call calls) and one alaska worker (pool
# 16, allowed to reach 127.0.0.1) whose subjects are: "echo" (Lua: return
# alaskaContext), "call" (Lua: alaska.call('target', 'echo', alaskaContext)
# and return its reply), "http" (Lua: alaska.http POST of alaskaContext to
# the echo application, returning the body) and "runner" (an HTTP runner
# posting to the same application, concurrency 16). The same load from
# alaska-bench (64-byte requests) runs against each in turn, ROUNDS times,
# interleaved, keeping each one's best round (req/s at window 100), and the
# alaska worker's CPU per request in each run (median round), read from
# the process's own accounting (/proc/<pid>/stat utime + stime, which
# keeps the time of threads that ended). Prints the rows, the ratios and
# the targets:
#   alaska.call to an echo service (w=100) >= 0.4x the req/s of the plain Lua echo
#   alaska.http to the HTTP echo: CPU per request within 1.5x of the HTTP runner's
# (tools/bench.sh runs this script when it is executable, with -n N.)
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --compare) shift 2 ;; # bench.sh passes it on; unused here
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "bench-reach.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

./build.sh >/dev/null
BIN=bin
. tools/bench-common.sh
EP="tcp://127.0.0.1:$(free_port)"
"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
PIDS+=($!)

"$BIN/alaska-bench" --http-echo 127.0.0.1:0 >"$TMP/app.url" 2>"$TMP/app.log" &
PIDS+=($!)
for _ in $(seq 50); do [ -s "$TMP/app.url" ] && break; sleep 0.1; done
URL=$(cat "$TMP/app.url")

"$BIN/alaska-bench" --echo-worker -e "$EP" -a target >"$TMP/echo.log" 2>&1 &
PIDS+=($!)

mkdir -p "$TMP/services"
echo 'return alaskaContext' >"$TMP/services/echo.lua"
echo "return (alaska.call('target', 'echo', alaskaContext))" >"$TMP/services/call.lua"
cat >"$TMP/services/http.lua" <<LUA
local r, err = alaska.http{method = 'POST', url = '$URL', body = alaskaContext}
if not r then error(err) end
return r.body
LUA
cat >"$TMP/alaska.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "${POOL:-16}"
    broker
        endpoint = "$EP"
        embedded = "0"
    service
        address = "alaska"
        filter = ".*"
    lua
        http
            allow = "127.0.0.1"
    runners
        runner
            match = "^runner$"
            type = "http"
            url = "$URL"
            concurrency = "16"
CFG
"$BIN/alaska" -f -c "$TMP/alaska.cfg" >"$TMP/alaska.log" 2>&1 &
ALASKA=$!; PIDS+=($ALASKA)
for _ in $(seq 50); do grep -q ready "$TMP/alaska.log" && break; sleep 0.1; done

load() { # subject window requests
  "$BIN/alaska-bench" -e "$EP" -a alaska -s "$1" -w "$2" -n "$3" -b 64 --json
}
# CPU time (ms) the worker has used, threads that ended included.
cpu_ms() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' /proc/"$1"/stat
}
declare -A RPS CPU
run() { # subject: one w=100 run, keeping the best req/s and every CPU/req
  local c0 c1 out
  c0=$(cpu_ms "$ALASKA")
  out=$(load "$1" 100 "$N")
  c1=$(cpu_ms "$ALASKA")
  if [ "$(field lost "$out")" != 0 ]; then echo "bench-reach.sh: $1 lost requests: $out" >&2; exit 1; fi
  awk -v a="$(field rps "$out")" -v b="${RPS[$1]:-0}" 'BEGIN { exit !(a > b) }' && RPS[$1]=$(field rps "$out")
  CPU[$1]="${CPU[$1]:-} $(awk -v c=$((c1 - c0)) -v n="$N" 'BEGIN { printf "%.1f", c * 1000 / n }')"
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# Warm-up: VMs, connections, the runner's pool.
for s in echo call http runner; do load "$s" 16 500 >/dev/null; done
for _ in $(seq "$ROUNDS"); do
  for s in echo call http runner; do run "$s"; done
done

printf '%-52s %10s %14s\n' "run (alaska pool 16, 64 B, w=100)" "req/s" "CPU us/req"
for s in echo call http runner; do
  case $s in
    echo) name="Lua echo (return alaskaContext)" ;;
    call) name="Lua alaska.call -> no-Lua echo worker" ;;
    http) name="Lua alaska.http POST -> HTTP echo app" ;;
    runner) name="HTTP runner -> HTTP echo app" ;;
  esac
  printf '%-52s %10s %14s\n' "$name" "${RPS[$s]}" "$(median "${CPU[$s]}")"
done
# Three decimals, judged unrounded: a ratio at the target must not pass by
# rounding.
ratio3() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
R_CALL=$(ratio3 "${RPS[call]}" "${RPS[echo]}")
R_HTTP=$(ratio3 "$(median "${CPU[http]}")" "$(median "${CPU[runner]}")")
echo
echo "best of $ROUNDS interleaved rounds (CPU: median round, the worker process only):"
echo "req/s alaska.call / plain Lua echo (w=100):      ${R_CALL}x  target >= 0.4x: $(verdict "$R_CALL" 0.4 '>=')"
echo "CPU/req alaska.http / HTTP runner:               ${R_HTTP}x  target <= 1.5x: $(verdict "$R_HTTP" 1.5 '<=')"
