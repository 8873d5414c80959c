#!/usr/bin/env bash
# Benchmarks alaska against the fastest possible worker on the same broker.
#
#   tools/bench.sh [-n REQUESTS] [--soak N] [--compare ENDPOINT]
#
# Starts alaska-broker on a free loopback port, then measures, each under the
# same load from alaska-bench:
#   - the no-Lua echo worker (alaska-bench --echo-worker): the ceiling;
#   - alaska with a one-line echo script, pool 1 and pool 4;
#   - a CPU-heavy script (pi series, 10^6 iterations), pool 1 and pool 2;
#   - alaska's resident memory, idle with pool 4 and after a soak.
# It prints a table and the ratios alaska/ceiling. With --compare ENDPOINT
# (a running broker, e.g. the real Malamute) the echo-worker load is also run
# through that broker, for broker vs broker.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
SOAK=0
COMPARE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    --soak) SOAK="$2"; shift 2 ;;
    --compare) COMPARE="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

./build.sh >/dev/null
BIN=bin
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"

"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
PIDS+=($!)
sleep 0.5

mkdir -p "$TMP/services"
# The echo script: the smallest useful service.
echo 'return alaskaContext' >"$TMP/services/echo.lua"
# CPU-heavy: a pi series with 10^6 terms, then echo so replies match.
cat >"$TMP/services/pi.lua" <<'LUA'
local sum, sign = 0.0, 1.0
for k = 0, 999999 do
  sum = sum + sign / (2 * k + 1)
  sign = -sign
end
assert(math.abs(4 * sum - math.pi) < 1e-5)
return alaskaContext
LUA

# field NAME JSON -> value
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }

load() { # subject window requests
  "$BIN/alaska-bench" -e "$EP" -a bench -s "$1" -w "$2" -n "$3" -b 64 --json
}

start_alaska() { # pool
  cat >"$TMP/alaska.cfg" <<CFG
worker
    background = "0"
    verbose = "0"
    scripts
        dir = "$TMP/services"
    pool
        size = "$1"
    broker
        endpoint = "$EP"
    service
        address = "bench"
        filter = ".*"
    errors
        notify = "1"
        mailbox = "awerr"
CFG
  "$BIN/alaska" -f --no-embedded-broker -c "$TMP/alaska.cfg" >"$TMP/alaska.log" 2>&1 &
  ALASKA=$!
  PIDS+=($ALASKA)
  for _ in $(seq 50); do grep -q ready "$TMP/alaska.log" && break; sleep 0.1; done
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

printf '%-34s %10s %8s %8s %8s %6s\n' "run" "req/s" "p50 us" "p99 us" "max us" "lost"
row() { # label json
  printf '%-34s %10s %8s %8s %8s %6s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" \
    "$(field p99_us "$2")" "$(field max_us "$2")" "$(field lost "$2")"
}

"$BIN/alaska-bench" --echo-worker -e "$EP" -a bench >"$TMP/echo.log" 2>&1 &
ECHO=$!; PIDS+=($ECHO); sleep 0.3
CEIL_W100=$(load echo 100 "$N"); row "echo worker (no Lua), w=100" "$CEIL_W100"
CEIL_W1=$(load echo 1 $((N / 10))); row "echo worker (no Lua), w=1" "$CEIL_W1"
stop "$ECHO"

start_alaska 1
A1_W100=$(load echo 100 "$N"); row "alaska pool 1 echo.lua, w=100" "$A1_W100"
A1_W1=$(load echo 1 $((N / 10))); row "alaska pool 1 echo.lua, w=1" "$A1_W1"
PI1=$(load pi 8 64); row "alaska pool 1 pi.lua 10^6, w=8" "$PI1"
stop "$ALASKA"

start_alaska 2
PI2=$(load pi 8 64); row "alaska pool 2 pi.lua 10^6, w=8" "$PI2"
stop "$ALASKA"

start_alaska 4
sleep 1
IDLE_RSS=$(rss_kb "$ALASKA")
A4_W100=$(load echo 100 "$N"); row "alaska pool 4 echo.lua, w=100" "$A4_W100"
A4_W1=$(load echo 1 $((N / 10))); row "alaska pool 4 echo.lua, w=1" "$A4_W1"
LOAD_RSS=$(rss_kb "$ALASKA")
if [ "$SOAK" -gt 0 ]; then
  SOAK_START=$(rss_kb "$ALASKA")
  SOAKED=$(load echo 100 "$SOAK"); row "alaska pool 4 soak" "$SOAKED"
  SOAK_END=$(rss_kb "$ALASKA")
fi
stop "$ALASKA"

if [ -n "$COMPARE" ]; then
  "$BIN/alaska-bench" --echo-worker -e "$COMPARE" -a bench >"$TMP/echo2.log" 2>&1 &
  ECHO2=$!; PIDS+=($ECHO2); sleep 0.3
  OTHER=$("$BIN/alaska-bench" -e "$COMPARE" -a bench -s echo -w 100 -n "$N" -b 64 --json)
  row "echo worker via $COMPARE, w=100" "$OTHER"
  stop "$ECHO2"
fi

echo
"$BIN/alaska-bench" --vm-only -n 200000
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+d", a - b }'; }
echo
echo "throughput alaska pool 1 / ceiling (w=100): $(ratio "$(field rps "$A1_W100")" "$(field rps "$CEIL_W100")")x"
echo "throughput alaska pool 4 / ceiling (w=100): $(ratio "$(field rps "$A4_W100")" "$(field rps "$CEIL_W100")")x"
echo "p50 latency alaska pool 1 - ceiling (w=1):  $(diff_us "$(field p50_us "$A1_W1")" "$(field p50_us "$CEIL_W1")") us"
echo "p50 latency alaska pool 4 - ceiling (w=1):  $(diff_us "$(field p50_us "$A4_W1")" "$(field p50_us "$CEIL_W1")") us"
echo "pi.lua pool 2 / pool 1:                     $(ratio "$(field rps "$PI2")" "$(field rps "$PI1")")x"
echo "RSS pool 4: idle $((IDLE_RSS / 1024)) MB, after load $((LOAD_RSS / 1024)) MB"
if [ "$SOAK" -gt 0 ]; then
  echo "RSS pool 4 over $SOAK requests: $((SOAK_START / 1024)) MB -> $((SOAK_END / 1024)) MB"
fi
if [ -n "$COMPARE" ]; then
  echo "broker: alaska-broker / $COMPARE (echo worker, w=100): $(ratio "$(field rps "$CEIL_W100")" "$(field rps "$OTHER")")x"
fi
