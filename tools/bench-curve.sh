#!/usr/bin/env bash
# Benchmarks what CURVE costs: the same load through alaska-broker with
# NULL security and with CURVE, in the same run.
#
#   tools/bench-curve.sh [-n REQUESTS] [-w WINDOW] [-b BYTES] [-r ROUNDS] [--no-build]
#
# (tools/bench.sh runs it with -n and maybe --compare ENDPOINT, which is
# accepted and ignored: the real Malamute has no CURVE.)
#
# Makes key pairs with `alaska-broker --keygen` (broker, echo worker,
# producer), starts two alaska-broker processes on free loopback ports, one
# NULL and one CURVE (the two clients' keys allowed), and on each the no-Lua
# echo worker (alaska-bench --echo-worker, with --curve-cert/--curve-server
# on the CURVE one). Then, ROUNDS times and interleaved (best round of each
# kept, as tools/bench.sh does): alaska-bench sending REQUESTS (default
# 20000) requests of BYTES (default 64) with WINDOW (default 100)
# outstanding, through each broker. Prints req/s, p50 and p99 of both and
# the ratio of throughputs. Every byte between the clients and the CURVE
# broker is encrypted and authenticated both ways (worker and producer).
set -euo pipefail
cd "$(dirname "$0")/.."

N=20000
W=100
BYTES=64
ROUNDS=3
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -w) W="$2"; shift 2 ;;
    -b) BYTES="$2"; shift 2 ;;
    -r) ROUNDS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --compare) shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "bench-curve.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

[ "$BUILD" = 1 ] && ./build.sh >/dev/null
BIN=target/release
. tools/bench-common.sh

mkdir -p "$TMP/keys" "$TMP/clients"
for k in broker worker producer; do
  "$BIN/alaska-broker" --keygen "$TMP/keys/$k" >/dev/null
done
cp "$TMP/keys/worker" "$TMP/clients/worker"
cp "$TMP/keys/producer" "$TMP/clients/producer"

CLEAR="tcp://127.0.0.1:$(free_port)"
CURVE="tcp://127.0.0.1:$(free_port)"
cat >"$TMP/curve.cfg" <<CFG
mlm_server
    bind
        endpoint = $CURVE
    security
        mechanism = curve
        curve
            certificate = $TMP/keys/broker_secret
            clients = $TMP/clients
CFG

"$BIN/alaska-broker" --endpoint "$CLEAR" >"$TMP/clear.log" 2>&1 &
PIDS+=($!)
"$BIN/alaska-broker" "$TMP/curve.cfg" >"$TMP/curve.log" 2>&1 &
PIDS+=($!)
sleep 0.5

WORKER_KEYS=(--curve-cert "$TMP/keys/worker_secret" --curve-server "$TMP/keys/broker")
PRODUCER_KEYS=(--curve-cert "$TMP/keys/producer_secret" --curve-server "$TMP/keys/broker")
"$BIN/alaska-bench" --echo-worker -e "$CLEAR" -a bench >"$TMP/w-clear.log" 2>&1 &
PIDS+=($!)
"$BIN/alaska-bench" --echo-worker -e "$CURVE" -a bench "${WORKER_KEYS[@]}" >"$TMP/w-curve.log" 2>&1 &
PIDS+=($!)
sleep 1

# field NAME JSON -> value

best_clear=""
best_curve=""
better() { # current candidate -> the one with more rps
  if [ -z "$1" ] || [ "$(field rps "$2")" -gt "$(field rps "$1")" ]; then echo "$2"; else echo "$1"; fi
}
for _ in $(seq "$ROUNDS"); do
  r=$("$BIN/alaska-bench" -e "$CLEAR" -a bench -s echo -w "$W" -n "$N" -b "$BYTES" --json)
  best_clear=$(better "$best_clear" "$r")
  r=$("$BIN/alaska-bench" -e "$CURVE" -a bench -s echo -w "$W" -n "$N" -b "$BYTES" --json "${PRODUCER_KEYS[@]}")
  best_curve=$(better "$best_curve" "$r")
done

grep -q "CURVE security" "$TMP/curve.log" || { echo "bench-curve.sh: the CURVE broker did not start" >&2; cat "$TMP/curve.log" >&2; exit 1; }
printf '%-66s %8s %8s %8s %6s\n' "run (best of $ROUNDS interleaved rounds)" "req/s" "p50 us" "p99 us" "lost"
for row in "NULL (clear), w=$W, ${BYTES} B|$best_clear" "CURVE (encrypted), w=$W, ${BYTES} B|$best_curve"; do
  name=${row%%|*}
  j=${row#*|}
  printf '%-66s %8s %8s %8s %6s\n' "echo worker via alaska-broker, $name" \
    "$(field rps "$j")" "$(field p50_us "$j")" "$(field p99_us "$j")" "$(field lost "$j")"
done
awk -v a="$(field rps "$best_curve")" -v b="$(field rps "$best_clear")" \
  'BEGIN { printf "throughput CURVE / NULL: %.2fx\n", a / b }'
