#!/usr/bin/env bash
# Benchmarks alaska against the fastest possible worker on the same broker.
#
#   tools/bench.sh [-n REQUESTS] [-r ROUNDS] [--soak N] [--compare ENDPOINT]
#
# Starts alaska-broker on a free loopback port and, on it, four workers at
# once on their own service names: the no-Lua echo worker (alaska-bench
# --echo-worker, the ceiling), the same acknowledging as alaska does
# (--ack-window 65), alaska pool 1 and alaska pool 4, both with a one-line
# echo script. The same load from alaska-bench (64-byte requests) is run
# against each in turn, ROUNDS times, interleaved: throughput at window 100
# (best round), p50 latency at window 1 (best round), and each worker's
# CPU per request (median round), read from the process's own accounting
# (the sum of /proc/<pid>/task/*/schedstat, in ns) before and after each
# run. Also: a worker's CPU while idle; a CPU-heavy script (pi series,
# 10^6 terms) at pool 1 and pool 2; alaska's resident memory idle, after
# load and over a --soak of N requests; the Lua VM alone (alaska-bench
# --vm-only); then the broker rows (tools/bench-broker.sh; with --compare
# ENDPOINT, a running real Malamute, broker against broker), the gateway
# (tools/bench-gateway.sh), the runners (tools/bench-runners.sh), scripts
# that reach out (tools/bench-reach.sh), CURVE
# (tools/bench-curve.sh) and NATS beside the broker and alaska (tools/bench-nats.sh),
# each with the same -n and -r.
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
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

./build.sh >/dev/null
BIN=bin
. tools/bench-common.sh
EP="tcp://127.0.0.1:$(free_port)"

"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
BROKER=$!
PIDS+=($BROKER)
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

load() { # service subject window requests
  "$BIN/alaska-bench" -e "$EP" -a "$1" -s "$2" -w "$3" -n "$4" -b 64 --json
}

# CPU time (ns) a process has used, all its threads, by its own accounting.
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'
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
        embedded = "0"
    service
        address = "$1"
        filter = ".*"
CFG
  "$BIN/alaska" -f -c "$TMP/$1.cfg" >"$TMP/$1.log" 2>&1 &
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
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

printf '%-40s %10s %8s %8s %8s %6s %10s\n' "run" "req/s" "p50 us" "p99 us" "max us" "lost" "cpu us/req"
row() { # label json [cpu]
  printf '%-40s %10s %8s %8s %8s %6s %10s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" \
    "$(field p99_us "$2")" "$(field max_us "$2")" "$(field lost "$2")" "${3:-}"
}

"$BIN/alaska-bench" --echo-worker -e "$EP" -a ceiling >"$TMP/echo.log" 2>&1 &
ECHO=$!; PIDS+=($ECHO)
"$BIN/alaska-bench" --echo-worker --ack-window 65 -e "$EP" -a ceiling-ack >"$TMP/echo-ack.log" 2>&1 &
ECHOACK=$!; PIDS+=($ECHOACK)
start_alaska a1 1
A1=$ALASKA
start_alaska a4 4
A4=$ALASKA
sleep 1
IDLE_RSS=$(rss_kb "$A4")
# Idle: nothing to do for 5 s.
I0=$(cpu_ns "$A4"); sleep 5; I1=$(cpu_ns "$A4")
IDLE_US_PER_S=$(( (I1 - I0) / 5 / 1000 ))

# measure VAR SERVICE PID WINDOW REQUESTS KIND: one run; keeps the best
# summary in VAR and appends the CPU per request to VAR_CPU.
declare -A BEST CPUS
measure() {
  local key=$1 svc=$2 pid=$3 w=$4 n=$5 kind=$6
  local c0 c1 out
  c0=$(cpu_ns "$pid")
  out=$(load "$svc" echo "$w" "$n")
  c1=$(cpu_ns "$pid")
  BEST[$key]=$(best "${BEST[$key]:-}" "$out" "$kind")
  CPUS[$key]="${CPUS[$key]:-} $(awk -v d=$((c1 - c0)) -v n="$(field received "$out")" 'BEGIN { if (n > 0) printf "%.2f", d / n / 1000 }')"
}
for _ in $(seq "$ROUNDS"); do
  measure c100 ceiling "$ECHO" 100 "$N" rps
  measure k100 ceiling-ack "$ECHOACK" 100 "$N" rps
  measure p100 a1 "$A1" 100 "$N" rps
  measure q100 a4 "$A4" 100 "$N" rps
  measure c1 ceiling "$ECHO" 1 $((N / 10)) p50
  measure k1 ceiling-ack "$ECHOACK" 1 $((N / 10)) p50
  measure p1 a1 "$A1" 1 $((N / 10)) p50
  measure q1 a4 "$A4" 1 $((N / 10)) p50
done
cpu() { echo "${CPUS[$1]}" | median; }
row "echo worker (no Lua), w=100" "${BEST[c100]}" "$(cpu c100)"
row "echo worker acknowledged, w=100" "${BEST[k100]}" "$(cpu k100)"
row "alaska pool 1 echo.lua, w=100" "${BEST[p100]}" "$(cpu p100)"
row "alaska pool 4 echo.lua, w=100" "${BEST[q100]}" "$(cpu q100)"
row "echo worker (no Lua), w=1" "${BEST[c1]}" "$(cpu c1)"
row "echo worker acknowledged, w=1" "${BEST[k1]}" "$(cpu k1)"
row "alaska pool 1 echo.lua, w=1" "${BEST[p1]}" "$(cpu p1)"
row "alaska pool 4 echo.lua, w=1" "${BEST[q1]}" "$(cpu q1)"
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
VM=$("$BIN/alaska-bench" --vm-only -n 200000)
echo "$VM"
VM_US=$(sed -E 's/.*per_request=([0-9.]+)us.*/\1/' <<<"$VM")
echo
R_CPU1=$(ratio "$(cpu p100)" "$(cpu k100)")
R_CPU4=$(ratio "$(cpu q100)" "$(cpu k100)")
R_T1=$(ratio "$(field rps "${BEST[p100]}")" "$(field rps "${BEST[c100]}")")
R_T4=$(ratio "$(field rps "${BEST[q100]}")" "$(field rps "${BEST[c100]}")")
R_41=$(ratio "$(field rps "${BEST[q100]}")" "$(field rps "${BEST[p100]}")")
L1=$(diff_us "$(field p50_us "${BEST[p1]}")" "$(field p50_us "${BEST[c1]}")")
L4=$(diff_us "$(field p50_us "${BEST[q1]}")" "$(field p50_us "${BEST[c1]}")")
R_PI=$(ratio "$(field rps "$PI2")" "$(field rps "$PI1")")
echo "best of $ROUNDS interleaved rounds (CPU: median round):"
echo "CPU per request, alaska pool 1 / acknowledged echo (w=100): ${R_CPU1}x  target <= 2.0x (stretch 1.5x): $(verdict "$R_CPU1" 2.0 '<=')"
echo "CPU per request, alaska pool 4 / acknowledged echo (w=100): ${R_CPU4}x"
echo "--vm-only trivial request:                  ${VM_US} us  target <= 2 us: $(verdict "$VM_US" 2 '<=')"
echo "throughput alaska pool 1 / echo (w=100):    ${R_T1}x  target >= 0.8x: $(verdict "$R_T1" 0.8 '>=')"
echo "throughput alaska pool 4 / echo (w=100):    ${R_T4}x"
echo "throughput pool 4 / pool 1 (w=100):         ${R_41}x  target >= 1.0x: $(verdict "$R_41" 1.0 '>=')"
echo "p50 latency alaska pool 1 - echo (w=1):     ${L1} us  target <= +30 us: $(verdict "${L1#+}" 30 '<=')"
echo "p50 latency alaska pool 4 - echo (w=1):     ${L4} us"
echo "pi.lua pool 2 / pool 1:                     ${R_PI}x  target >= 1.8x: $(verdict "$R_PI" 1.8 '>=')"
echo "idle worker (pool 4) CPU:                   ${IDLE_US_PER_S} us per second"
echo "RSS pool 4: idle $((IDLE_RSS / 1024)) MB, after load $((LOAD_RSS / 1024)) MB"
if [ "$SOAK" -gt 0 ]; then
  echo "RSS pool 4 over $SOAK requests: $((SOAK_START / 1024)) MB -> $((SOAK_END / 1024)) MB"
fi
if [ -n "$COMPARE" ]; then
  echo "broker: alaska-broker / $COMPARE (echo worker, w=100): $(ratio "$(field rps "$OURS")" "$(field rps "$OTHER")")x"
fi
stop "$A4"
stop "$ECHO"
stop "$ECHOACK"
stop "$BROKER"
# The other benchmarks, each with the same request count and rounds; only
# the broker's takes --compare. One failing does not hide the others.
for extra in tools/bench-broker.sh tools/bench-gateway.sh tools/bench-runners.sh tools/bench-reach.sh tools/bench-curve.sh tools/bench-nats.sh; do
  if [ -x "$extra" ]; then
    echo
    args=(-n "$N" -r "$ROUNDS")
    if [ "$extra" = tools/bench-broker.sh ] && [ -n "$COMPARE" ]; then
      args+=(--compare "$COMPARE")
    fi
    "$extra" "${args[@]}" || echo "$extra failed (exit $?)"
  fi
done
