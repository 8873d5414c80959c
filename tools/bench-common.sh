# bench-common.sh: what every benchmark script of tools/ shares, sourced
# from the repository's top (each script cd's there first): a scratch
# directory and the processes started, both cleaned up on exit, a free
# port, and the arithmetic the summaries print.

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
# field NAME JSON: a number from alaska-bench's one-line JSON summary.
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }
# ratio A B: A / B to two decimals, n/a when B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# diff_us A B: A - B, signed.
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+d", a - b }'; }
# verdict VALUE TARGET OP: "met" when VALUE OP TARGET holds (OP: <= or >=).
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "<=") ? (v <= t) : (v >= t); print ok ? "met" : "MISSED" }'; }
