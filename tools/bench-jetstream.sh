#!/usr/bin/env bash
# alaska on JetStream: how fast one worker (Lua pool 4, `return
# alaskaContext`) drains a work queue, on one nats-server (stream R1) and
# on a 3-node cluster (stream R3). N work items of 64 bytes are stored
# first with `alas --jetstream --lines` (publish rate reported too), then
# the worker starts and the time until the consumer's acknowledgement
# floor reaches N (read from the servers' /jsz monitoring endpoint every
# 20 ms) gives the rate. One run per setup.
#
#   tools/bench-jetstream.sh [-n ITEMS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=5000
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "bench-jetstream.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done
command -v nats-server >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y --no-install-recommends nats-server >/dev/null; }
[ -x bin/alaska ] || ./build.sh >/dev/null
BIN=bin
. tools/bench-common.sh
wait_log() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "bench-jetstream.sh: no '$2' in $1" >&2; cat "$1" >&2; exit 1; }
now_ms() { date +%s%3N; }

# create_stream PORT REPLICAS: the JetStream API request over the plain
# text protocol (no NATS CLI needed); the answer is checked with /jsz.
create_stream() {
  local body="{\"name\":\"WORK\",\"subjects\":[\"bench.>\"],\"num_replicas\":$2}"
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\nPUB $JS.API.STREAM.CREATE.WORK _INBOX.bench %d\r\n%s\r\nPING\r\n' "${#body}" "$body" >&3
  timeout 10 grep -m1 -a 'MSG _INBOX.bench' <&3 >/dev/null || true
  exec 3<&- 3>&-
}

# acked MONITOR_PORTS...: the consumer's acknowledgement floor, the
# highest any server reports (the leader's).
acked() {
  local best=0 p v
  for p in "$@"; do
    v=$(curl -s "http://127.0.0.1:$p/jsz?consumers=true" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    print(0); sys.exit()
best = 0
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        for c in s.get("consumer_detail", []) or []:
            best = max(best, c.get("ack_floor", {}).get("stream_seq", 0))
print(best)' 2>/dev/null || echo 0)
    [ "$v" -gt "$best" ] && best=$v
  done
  echo "$best"
}

mkdir -p "$TMP/services"
echo 'return alaskaContext' >"$TMP/services/echo.lua"
python3 -c "
import sys
for i in range($N):
    sys.stdout.write('{\"i\":%08d,\"pad\":\"%s\"}\n' % (i, 'x' * 38))" >"$TMP/items"

# run NAME REPLICAS URLS MONITORS...
run() {
  local name=$1 replicas=$2 urls=$3; shift 3
  local mons=("$@")
  create_stream "${urls##*:}" "$replicas"
  local t0 t1 t2 done_at
  t0=$(now_ms)
  "$BIN/alas" -e "$urls" -a bench -s echo --jetstream --lines --raw -q <"$TMP/items"
  t1=$(now_ms)
  cat >"$TMP/w-$name.cfg" <<CFG
worker
    scripts
        dir = "$TMP/services"
    pool
        size = "4"
    broker
        endpoint = "$urls"
    service
        address = "bench"
    nats
        jetstream
            stream = "WORK"
CFG
  "$BIN/alaska" -f -c "$TMP/w-$name.cfg" >"$TMP/w-$name.log" 2>&1 &
  local w=$!; PIDS+=($w)
  t2=$(now_ms)
  while [ "$(acked "${mons[@]}")" -lt "$N" ]; do
    [ $(( $(now_ms) - t2 )) -lt 120000 ] || { echo "$name: not drained in 120 s" >&2; tail -20 "$TMP/w-$name.log" >&2; exit 1; }
    sleep 0.02
  done
  done_at=$(now_ms)
  kill "$w" 2>/dev/null || true; wait "$w" 2>/dev/null || true
  printf '%-28s %10s %16s\n' "$name" \
    "$(awk -v n="$N" -v ms=$((t1 - t0)) 'BEGIN { printf "%.0f", n * 1000 / ms }')" \
    "$(awk -v n="$N" -v ms=$((done_at - t2)) 'BEGIN { printf "%.0f", n * 1000 / ms }')"
}

printf '%-28s %10s %16s\n' "setup ($N items)" "stored/s" "worker acked/s"
P=$(free_port); M=$(free_port)
nats-server -a 127.0.0.1 -p "$P" -m "$M" -js -sd "$TMP/r1" >"$TMP/r1.log" 2>&1 &
PIDS+=($!)
wait_log "$TMP/r1.log" "Server is ready"
run "R1 (one server)" 1 "nats://127.0.0.1:$P" "$M"

PS=() MS=() CS=() ROUTES=""
for i in 1 2 3; do PS+=("$(free_port)"); MS+=("$(free_port)"); CS+=("$(free_port)"); done
for i in 0 1 2; do ROUTES="$ROUTES${ROUTES:+,}nats://127.0.0.1:${CS[$i]}"; done
for i in 0 1 2; do
  nats-server -a 127.0.0.1 -p "${PS[$i]}" -m "${MS[$i]}" -js -sd "$TMP/r3-$i" -n "n$i" \
    --cluster_name bench --cluster "nats://127.0.0.1:${CS[$i]}" --routes "$ROUTES" >"$TMP/r3-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 0 1 2; do wait_log "$TMP/r3-$i.log" "Server is ready"; done
# The cluster elects its JetStream meta leader after the servers are ready.
wait_log "$TMP/r3-0.log" "JetStream cluster new metadata leader\|Self is new JetStream cluster metadata leader"
run "R3 (3-node cluster)" 3 "nats://127.0.0.1:${PS[0]},nats://127.0.0.1:${PS[1]},nats://127.0.0.1:${PS[2]}" "${MS[@]}"
