#!/usr/bin/env bash
# Benchmarks alaska against the fastest possible worker on the same broker.
#
#   tools/bench.sh [-n REQUESTS] [-r ROUNDS] [--soak N] [--compare ENDPOINT]
#
# Starts alaska-broker on a free loopback port and, on it, three workers at
# once on their own service names: the no-Lua echo worker (alaska-bench
# --echo-worker, the ceiling), alaska pool 1 and alaska pool 4, each with a
# one-line echo script. The same load from alaska-bench is then run against
# each in turn, ROUNDS times, interleaved, and the best round of each is
# kept: on a noisy machine this compares the three under the same
# conditions rather than whatever the machine did at the time of each.
# Then: a CPU-heavy script (pi series, 10^6 terms) at pool 1 and pool 2;
# alaska's resident memory idle and after load (and over a --soak of N
# requests); the Lua VM alone (alaska-bench --vm-only). With --compare
# ENDPOINT (a running broker, e.g. the real Malamute) the echo-worker load
# is also run through that broker, for broker vs broker.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
ROUNDS=3
SOAK=0
COMPARE=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --soak) SOAK="$2"; shift 2 ;;
    --compare) COMPARE="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
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
EP="tcp://127.0.0.1:$(free_port)"

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

load() { # service subject window requests
  "$BIN/alaska-bench" -e "$EP" -a "$1" -s "$2" -w "$3" -n "$4" -b 64 --json
}

start_alaska() { # service pool -> pid in ALASKA
  cat >"$TMP/$1.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "$2"
    broker
        endpoint = "$EP"
    service
        address = "$1"
        filter = ".*"
CFG
  "$BIN/alaska" -f --no-embedded-broker -c "$TMP/$1.cfg" >"$TMP/$1.log" 2>&1 &
  ALASKA=$!
  PIDS+=($ALASKA)
  for _ in $(seq 50); do grep -q ready "$TMP/$1.log" && break; sleep 0.1; done
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# best OLD NEW KIND: keeps the better JSON summary (throughput: higher rps;
# latency: lower p50).
best() {
  if [ -z "$1" ]; then echo "$2"; return; fi
  if [ "$3" = rps ]; then
    awk -v a="$(field rps "$1")" -v b="$(field rps "$2")" 'BEGIN { exit !(b > a) }' && echo "$2" || echo "$1"
  else
    awk -v a="$(field p50_us "$1")" -v b="$(field p50_us "$2")" 'BEGIN { exit !(b < a) }' && echo "$2" || echo "$1"
  fi
}

printf '%-36s %10s %8s %8s %8s %6s\n' "run" "req/s" "p50 us" "p99 us" "max us" "lost"
row() { # label json
  printf '%-36s %10s %8s %8s %8s %6s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" \
    "$(field p99_us "$2")" "$(field max_us "$2")" "$(field lost "$2")"
}

"$BIN/alaska-bench" --echo-worker -e "$EP" -a ceiling >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
start_alaska a1 1
A1=$ALASKA
start_alaska a4 4
A4=$ALASKA
sleep 1
IDLE_RSS=$(rss_kb "$A4")
C100="" C1="" P100="" P1="" Q100="" Q1=""
for _ in $(seq "$ROUNDS"); do
  C100=$(best "$C100" "$(load ceiling echo 100 "$N")" rps)
  P100=$(best "$P100" "$(load a1 echo 100 "$N")" rps)
  Q100=$(best "$Q100" "$(load a4 echo 100 "$N")" rps)
  C1=$(best "$C1" "$(load ceiling echo 1 $((N / 10)))" p50)
  P1=$(best "$P1" "$(load a1 echo 1 $((N / 10)))" p50)
  Q1=$(best "$Q1" "$(load a4 echo 1 $((N / 10)))" p50)
done
row "echo worker (no Lua), w=100" "$C100"
row "alaska pool 1 echo.lua, w=100" "$P100"
row "alaska pool 4 echo.lua, w=100" "$Q100"
row "echo worker (no Lua), w=1" "$C1"
row "alaska pool 1 echo.lua, w=1" "$P1"
row "alaska pool 4 echo.lua, w=1" "$Q1"
LOAD_RSS=$(rss_kb "$A4")
if [ "$SOAK" -gt 0 ]; then
  SOAK_START=$(rss_kb "$A4")
  SOAKED=$(load a4 echo 100 "$SOAK"); row "alaska pool 4 soak" "$SOAKED"
  SOAK_END=$(rss_kb "$A4")
fi
PI1=$(load a1 pi 8 64); row "alaska pool 1 pi.lua 10^6, w=8" "$PI1"
stop "$A1"
start_alaska a2 2
PI2=$(load a2 pi 8 64); row "alaska pool 2 pi.lua 10^6, w=8" "$PI2"

if [ -n "$COMPARE" ]; then
  "$BIN/alaska-bench" --echo-worker -e "$COMPARE" -a ceiling >"$TMP/echo2.log" 2>&1 &
  ECHO2=$!; PIDS+=($ECHO2); sleep 0.3
  OTHER=""
  OURS=""
  for _ in $(seq "$ROUNDS"); do
    OTHER=$(best "$OTHER" "$("$BIN/alaska-bench" -e "$COMPARE" -a ceiling -s echo -w 100 -n "$N" -b 64 --json)" rps)
    OURS=$(best "$OURS" "$(load ceiling echo 100 "$N")" rps)
  done
  row "echo worker via $COMPARE, w=100" "$OTHER"
  row "echo worker via alaska-broker, w=100" "$OURS"
  stop "$ECHO2"
fi

echo
"$BIN/alaska-bench" --vm-only -n 200000
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+d", a - b }'; }
echo "best of $ROUNDS interleaved rounds:"
echo "throughput alaska pool 1 / ceiling (w=100): $(ratio "$(field rps "$P100")" "$(field rps "$C100")")x"
echo "throughput alaska pool 4 / ceiling (w=100): $(ratio "$(field rps "$Q100")" "$(field rps "$C100")")x"
echo "p50 latency alaska pool 1 - ceiling (w=1):  $(diff_us "$(field p50_us "$P1")" "$(field p50_us "$C1")") us"
echo "p50 latency alaska pool 4 - ceiling (w=1):  $(diff_us "$(field p50_us "$Q1")" "$(field p50_us "$C1")") us"
echo "pi.lua pool 2 / pool 1:                     $(ratio "$(field rps "$PI2")" "$(field rps "$PI1")")x"
echo "RSS pool 4: idle $((IDLE_RSS / 1024)) MB, after load $((LOAD_RSS / 1024)) MB"
if [ "$SOAK" -gt 0 ]; then
  echo "RSS pool 4 over $SOAK requests: $((SOAK_START / 1024)) MB -> $((SOAK_END / 1024)) MB"
fi
if [ -n "$COMPARE" ]; then
  echo "broker: alaska-broker / $COMPARE (echo worker, w=100): $(ratio "$(field rps "$OURS")" "$(field rps "$OTHER")")x"
fi
