#!/usr/bin/env bash
# Instructions per delivery of one service build, counted by callgrind: a count that the
# machine's other load cannot move, for comparing two builds where wall-clock benchmarks
# differ by less than their noise (issue 25, item 7).
#
#   bench/callgrind.sh BINARY [LOADGEN]      (LOADGEN default target/release/loadgen)
#
# The binary runs under `valgrind --tool=callgrind` on a fresh SQLite file; the load
# generator joins 100 sockets to one room and publishes 50 messages/s for 10 s over REST
# (500 messages, 50 000 deliveries: slow enough that nothing queues under valgrind). Prints
# one JSON line: the program's total instructions, the deliveries received, instructions per
# delivery, and loss. Ports: CG_HTTP_PORT (19284), +3 WebSocket, +1 gRPC. CG_KEEP=1 keeps the
# temp dir (callgrind.out for callgrind_annotate).
set -euo pipefail

bin=$(realpath "${1:?usage: bench/callgrind.sh BINARY [LOADGEN]}")
loadgen=$(realpath "${2:-target/release/loadgen}")
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }
http_port=${CG_HTTP_PORT:-19284}
work=$(mktemp -d /tmp/callgrind.XXXXXX)
secret="callgrind-$$-$RANDOM"
pid=""
cleanup() {
  [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
  [ "${CG_KEEP:-}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

JWT_SECRET=$secret DATABASE_URL="sqlite://$work/svc.db?mode=rwc" HOST=127.0.0.1 \
  GRPC_HOST=127.0.0.1 PORT=$http_port SOCKET_PORT=$((http_port + 3)) \
  GRPC_PORT=$((http_port + 1)) RUST_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" serve \
  >"$work/server.log" 2>&1 &
pid=$!
# Under valgrind the start (migrations included) takes seconds, not milliseconds.
for _ in $(seq 1 240); do
  curl -fs "http://127.0.0.1:$http_port/ready" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work/server.log" >&2; exit 2; }
  sleep 0.5
done
curl -fs "http://127.0.0.1:$http_port/ready" >/dev/null
token=$(JWT_SECRET=$secret "$bin" token --church-id callgrind --person-id loadgen)
"$loadgen" --http "127.0.0.1:$http_port" --ws "127.0.0.1:$((http_port + 3))" \
  --church callgrind --token "$token" --sockets 100 --rooms 1 --publishers 1 --rate 50 \
  --duration 10 --drain-timeout 30 --request-timeout 60 --presence-timeout 120 \
  --scenario callgrind --target-kind service >"$work/report.json"
# A graceful stop, so that callgrind writes its counts.
kill -TERM "$pid"
wait "$pid" || true
pid=""
total=$(awk '/^(summary|totals):/ { print $2; exit }' "$work/callgrind.out")
python3 - "$work/report.json" "$total" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
total = int(sys.argv[2])
received = report["received"]
print(json.dumps({
    "instructions": total,
    "messages_sent": report["messages_sent"],
    "deliveries": received,
    "instructions_per_delivery": round(total / received) if received else None,
    "lost": report["lost"],
}))
EOF
