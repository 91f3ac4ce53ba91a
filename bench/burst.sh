#!/usr/bin/env bash
# Memory after bursts (issue 28, item 6): one service process (SQLite, defaults) takes
# ROUNDS rounds of loadgen (SOCKETS sockets over ROOMS rooms: connect, join, publish for
# SECS seconds, disconnect), and its RSS is read before the first round, after each round
# once its sockets have gone, and every 5 s for 30 s after the last.
#
#   bench/burst.sh [ROUNDS=16] [SOCKETS=5000] [ROOMS=50] [SECS=4]
#
# Prints one line per reading (`label rss_kib sockets_open rows`), then the verdict against
# 2 x the reading before the load. Needs target/release/{messaging,loadgen} and curl.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
rounds=${1:-16} sockets=${2:-5000} rooms=${3:-50} secs=${4:-4}
http=${LG_HTTP_PORT:-19184} ws=${LG_WS_PORT:-19187} grpc=${LG_GRPC_PORT:-19151}
work=$(mktemp -d /tmp/burst.XXXXXX)
cp "$TARGET_DIR/release/messaging" "$work/messaging"
secret="burst-$$-$RANDOM"
JWT_SECRET=$secret DATABASE_URL="sqlite://$work/svc.db?mode=rwc" HOST=127.0.0.1 GRPC_HOST=127.0.0.1 \
  PORT=$http SOCKET_PORT=$ws GRPC_PORT=$grpc RUST_LOG=${RUST_LOG:-warn} \
  "$work/messaging" serve >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
token=$(JWT_SECRET=$secret "$work/messaging" token --church-id loadgen-church --person-id loadgen)
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$http/ready" || true)" = 200 ] && break
  sleep 0.1
done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
gauge() { curl -s "http://127.0.0.1:$http/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
reading() { printf '%s\t%s\t%s\t%s\n' "$1" "$(rss)" "$(gauge messaging_sockets_open)" "$(gauge messaging_rows)"; }
printf 'label\trss_kib\tsockets_open\trows\n'
reading before
before=$(rss)
[ -z "${BURST_SMAPS:-}" ] || cp "/proc/$pid/smaps" "$BURST_SMAPS.before"
for r in $(seq 1 "$rounds"); do
  "$TARGET_DIR/release/loadgen" --http "127.0.0.1:$http" --ws "127.0.0.1:$ws" --grpc "127.0.0.1:$grpc" \
    --token "$token" --church loadgen-church --server-pid "$pid" --sockets "$sockets" --rooms "$rooms" \
    --publishers 4 --duration "$secs" --scenario burst --target-kind service >"$work/round$r.json" 2>>"$work/loadgen.log" ||
    echo "round $r: loadgen exited $? (see its report)" >&2
  # The sockets close when loadgen exits; wait (bounded) until the node has seen them go.
  for _ in $(seq 1 100); do [ "$(gauge messaging_sockets_open)" = 0 ] && break; sleep 0.1; done
  reading "round $r"
done
for t in 5 10 15 20 25 30; do
  sleep 5
  reading "after +${t}s"
done
after=$(rss)
# BURST_SMAPS=FILE: where the memory is at the end (FILE) and before (FILE.before):
# anonymous, the binary's own pages, shared files; for attribution.
[ -z "${BURST_SMAPS:-}" ] || cp "/proc/$pid/smaps" "$BURST_SMAPS"
echo "before ${before} KiB, 30 s after the last round ${after} KiB: $(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a / b }') x (target <= 2)"
