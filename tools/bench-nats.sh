#!/usr/bin/env bash
# Request/reply against NATS, side by side in one run (issue 22's table):
#   NATS + C echo responder     nats-server (Debian's 2.9) and tools/nats/
#                               nats-bench.c (libnats) replying at once
#                               (SendAsap); CPU also with libnats' default
#                               batching flusher ("batch")
#   alaska-broker + echo worker alaska-bench --echo-worker (no Lua)
#   ... + acknowledged echo    the same with --ack-window 100: the broker
#                               messages the alaska worker exchanges
#                               (CREDIT, CONFIRM), without Lua
#   alaska-broker + alaska Lua  alaska pool 1 running `return alaskaContext`
#   NATS + alaska Lua           the same worker on the same nats-server
#                               (issue 25's backend, core request/reply)
# 64-byte requests; p50 at window 1 and req/s at window 100, best of the
# rounds (interleaved); CPU per request of server + responder (median round),
# each process's own accounting (/proc/<pid>/task/*/schedstat). Then the
# targets with verdicts.
#
#   tools/bench-nats.sh [-n REQUESTS] [-r ROUNDS]
#
# Installs nats-server and libnats-dev from Debian when absent (root), and
# compiles nats-bench with cc.
set -euo pipefail
cd "$(dirname "$0")/.."
N=20000
ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-nats.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
if ! command -v nats-server >/dev/null 2>&1 || [ ! -e /usr/include/nats/nats.h ]; then
  apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nats-server libnats-dev >/dev/null
fi
[ -x bin/alaska ] || ./build.sh >/dev/null
BIN=bin
. tools/bench-common.sh
cc -O2 -o "$TMP/nats-bench" tools/nats/nats-bench.c -lnats

cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%d", s}'; }
wait_log() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "bench-nats.sh: no '$2' in $1" >&2; cat "$1" >&2; exit 1; }

NPORT=$(free_port)
NURL="nats://127.0.0.1:$NPORT"
nats-server -a 127.0.0.1 -p "$NPORT" >"$TMP/nats.log" 2>&1 &
NATS=$!; PIDS+=($NATS)
wait_log "$TMP/nats.log" "Server is ready"
"$TMP/nats-bench" respond "$NURL" echo.asap asap 2>"$TMP/resp-asap.log" &
RASAP=$!; PIDS+=($RASAP)
"$TMP/nats-bench" respond "$NURL" echo.batch batch 2>"$TMP/resp-batch.log" &
RBATCH=$!; PIDS+=($RBATCH)
wait_log "$TMP/resp-asap.log" responding
wait_log "$TMP/resp-batch.log" responding

EP="tcp://127.0.0.1:$(free_port)"
"$BIN/alaska-broker" --endpoint "$EP" >"$TMP/broker.log" 2>&1 &
BROKER=$!; PIDS+=($BROKER)
mkdir -p "$TMP/services"
echo 'return alaskaContext' >"$TMP/services/echo.lua"
"$BIN/alaska-bench" --echo-worker -e "$EP" -a ceiling >"$TMP/echo.log" 2>&1 &
ECHO=$!; PIDS+=($ECHO)
"$BIN/alaska-bench" --echo-worker -e "$EP" -a ackecho --ack-window 100 >"$TMP/ackecho.log" 2>&1 &
ACKECHO=$!; PIDS+=($ACKECHO)
cat >"$TMP/a1.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "1"
    broker
        endpoint = "$EP"
        embedded = "0"
    service
        address = "a1"
CFG
"$BIN/alaska" -f -c "$TMP/a1.cfg" >"$TMP/a1.log" 2>&1 &
A1=$!; PIDS+=($A1)
wait_log "$TMP/a1.log" ready
cat >"$TMP/an.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "1"
    broker
        endpoint = "$NURL"
    service
        address = "anats"
CFG
"$BIN/alaska" -f -c "$TMP/an.cfg" >"$TMP/an.log" 2>&1 &
AN=$!; PIDS+=($AN)
wait_log "$TMP/an.log" "NATS: serving"

# run KEY KIND WINDOW REQUESTS PIDS... -- COMMAND: one run; keeps the best
# summary (rps or p50) and the CPU per request of the listed processes.
declare -A BEST CPUS
run() {
  local key=$1 kind=$2; shift 2
  local pids=()
  while [ "$1" != -- ]; do pids+=("$1"); shift; done; shift
  local c0=0 c1=0 p out
  for p in "${pids[@]}"; do c0=$((c0 + $(cpu_ns "$p"))); done
  out=$("$@")
  for p in "${pids[@]}"; do c1=$((c1 + $(cpu_ns "$p"))); done
  local prev=${BEST[$key]:-}
  if [ -z "$prev" ]; then BEST[$key]=$out
  elif [ "$kind" = rps ]; then awk -v a="$(field rps "$prev")" -v b="$(field rps "$out")" 'BEGIN { exit !(b > a) }' && BEST[$key]=$out
  else awk -v a="$(field p50_us "$prev")" -v b="$(field p50_us "$out")" 'BEGIN { exit !(b < a) }' && BEST[$key]=$out
  fi
  CPUS[$key]="${CPUS[$key]:-} $(awk -v d=$((c1 - c0)) -v n="$(field received "$out")" 'BEGIN { if (n > 0) printf "%.2f", d / n / 1000 }')"
}
N1=$((N / 10))
for _ in $(seq "$ROUNDS"); do
  run n100 rps "$NATS" "$RASAP" -- "$TMP/nats-bench" request "$NURL" echo.asap "$N" 100 64
  run b100 rps "$NATS" "$RBATCH" -- "$TMP/nats-bench" request "$NURL" echo.batch "$N" 100 64
  run e100 rps "$BROKER" "$ECHO" -- "$BIN/alaska-bench" -e "$EP" -a ceiling -s echo -w 100 -n "$N" -b 64 --json
  run k100 rps "$BROKER" "$ACKECHO" -- "$BIN/alaska-bench" -e "$EP" -a ackecho -s echo -w 100 -n "$N" -b 64 --json
  run l100 rps "$BROKER" "$A1" -- "$BIN/alaska-bench" -e "$EP" -a a1 -s echo -w 100 -n "$N" -b 64 --json
  run an100 rps "$NATS" "$AN" -- "$TMP/nats-bench" request "$NURL" anats.echo "$N" 100 64
  run n1 p50 "$NATS" "$RASAP" -- "$TMP/nats-bench" request "$NURL" echo.asap "$N1" 1 64
  run b1 p50 "$NATS" "$RBATCH" -- "$TMP/nats-bench" request "$NURL" echo.batch "$N1" 1 64
  run e1 p50 "$BROKER" "$ECHO" -- "$BIN/alaska-bench" -e "$EP" -a ceiling -s echo -w 1 -n "$N1" -b 64 --json
  run k1 p50 "$BROKER" "$ACKECHO" -- "$BIN/alaska-bench" -e "$EP" -a ackecho -s echo -w 1 -n "$N1" -b 64 --json
  run l1 p50 "$BROKER" "$A1" -- "$BIN/alaska-bench" -e "$EP" -a a1 -s echo -w 1 -n "$N1" -b 64 --json
  run an1 p50 "$NATS" "$AN" -- "$TMP/nats-bench" request "$NURL" anats.echo "$N1" 1 64
done
cpu() { echo "${CPUS[$1]}" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf '%-34s %12s %14s %18s %18s\n' "system" "p50 w=1 us" "req/s w=100" "cpu us/req w=100" "cpu us/req w=1"
line() { printf '%-34s %12s %14s %18s %18s\n' "$1" "$(field p50_us "${BEST[$2]}")" "$(field rps "${BEST[$3]}")" "$(cpu "$3")" "$(cpu "$2")"; }
line "NATS + C echo (asap)" n1 n100
line "NATS + C echo (batching flusher)" b1 b100
line "alaska-broker + echo worker" e1 e100
line "alaska-broker + acknowledged echo" k1 k100
line "alaska-broker + alaska Lua pool 1" l1 l100
line "NATS + alaska Lua pool 1" an1 an100
LP50=$(field p50_us "${BEST[l1]}"); NP50=$(field p50_us "${BEST[n1]}")
LRPS=$(field rps "${BEST[l100]}"); NRPS=$(field rps "${BEST[n100]}")
LCPU=$(cpu l100); BCPU=$(cpu b100)
echo
echo "targets (issue 22):"
echo "  alaska Lua p50 w=1 / NATS p50          $(ratio "$LP50" "$NP50")x  target <= 1.2x (stretch 1.0x): $(verdict "$(ratio "$LP50" "$NP50")" 1.2 '<=')"
echo "  alaska Lua req/s w=100 / NATS req/s    $(ratio "$LRPS" "$NRPS")x  target >= 2.0x: $(verdict "$(ratio "$LRPS" "$NRPS")" 2.0 '>=')"
echo "  broker + Lua CPU/req / NATS batching   $(ratio "$LCPU" "$BCPU")x  target <= 1.0x: $(verdict "$(ratio "$LCPU" "$BCPU")" 1.0 '<=')"
KP50=$(field p50_us "${BEST[k1]}"); EP50=$(field p50_us "${BEST[e1]}")
echo
echo "where the w=1 time goes (p50, this run):"
echo "  broker + push echo worker (transport, two hops each way)   ${EP50} us  (NATS: ${NP50} us)"
echo "  + acknowledgements (CREDIT window, a CONFIRM per request)  $(awk -v a="$KP50" -v b="$EP50" 'BEGIN { printf "%+d", a - b }') us"
echo "  + the alaska worker (its poll turn, the Lua VM, the reply) $(awk -v a="$LP50" -v b="$KP50" 'BEGIN { printf "%+d", a - b }') us"
