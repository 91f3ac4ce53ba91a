#!/usr/bin/env bash
# Schemathesis against the release binary (issue 14): every operation of
# /messaging/openapi.json, all checks, once with an ordinary member's token and once with a
# moderator's, each with a fixed seed and then a random one. Seed data (tests/schemathesis_seed.py)
# makes the operations that need existing objects reachable. Exits non-zero on any failure.
#
# Usage: tests/schemathesis.sh [BINARY]   (default target/release/messaging)
# Env:   SCHEMATHESIS (the CLI, default `schemathesis`), ST_MAX_EXAMPLES (default 10),
#        ST_SEED (default 14), ST_PORT (default 18184; the socket port is ST_PORT+3),
#        ST_POSTGRES: a PostgreSQL server URL without a database (postgres://user@host:port),
#        or ST_MYSQL: a MariaDB/MySQL one (mysql://root@host:port, the `mariadb` client's
#        user and host): the server then runs on a fresh database created there and dropped
#        afterwards, instead of a SQLite file (some inputs fail only on one database:
#        U+0000 did on PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-target/release/messaging}"
st="${SCHEMATHESIS:-schemathesis}"
port="${ST_PORT:-18184}"
socket_port=$((port + 3))
grpc_port=$((port + 1))
examples="${ST_MAX_EXAMPLES:-10}"
seed="${ST_SEED:-14}"
work="$(mktemp -d)"
export JWT_SECRET=schemathesis-secret
pids=()
pg_db="" my_db=""
# The mariadb client, pointed at ST_MYSQL's host, port and user.
mysql_cli() {
  local rest=${ST_MYSQL#mysql://} hostport user
  hostport=${rest#*@} user=${rest%@*}
  mariadb -u "$user" -h "${hostport%:*}" -P "${hostport##*:}" "$@"
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$pg_db" ] || psql "$ST_POSTGRES/postgres" -qAt -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null || true
  [ -z "$my_db" ] || mysql_cli -e "DROP DATABASE IF EXISTS $my_db" || true
  rm -rf "$work"
}
trap cleanup EXIT

database="sqlite://$work/st.db?mode=rwc"
if [ -n "${ST_POSTGRES:-}" ]; then
  pg_db="st_$$_$RANDOM"
  psql "$ST_POSTGRES/postgres" -qAt -c "CREATE DATABASE $pg_db" >/dev/null
  database="$ST_POSTGRES/$pg_db"
elif [ -n "${ST_MYSQL:-}" ]; then
  my_db="st_$$_$RANDOM"
  mysql_cli -e "CREATE DATABASE $my_db"
  database="$ST_MYSQL/$my_db"
fi
echo "== schemathesis: database ${database%%://*}"

DATABASE_URL="$database" PORT=$port SOCKET_PORT=$socket_port \
  GRPC_PORT=$grpc_port HOST=127.0.0.1 "$bin" serve >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/ready" >/dev/null

member="$("$bin" token --church-id C1 --person-id P1 --first-name Mem --group-id G1)"
moderator="$("$bin" token --church-id C1 --person-id P2 --first-name Mod \
  --permission Content__Edit --permission Chat__Host --permission People__Edit \
  --permission "People__View Confidential Notes" --permission Messaging__Admin \
  --group-id G1 --leader-group-id G1)"

python3 tests/schemathesis_seed.py "http://127.0.0.1:$port" "127.0.0.1:$socket_port" \
  "$member" "$moderator" "$work/schemathesis.toml" >"$work/seed.out" &
pids+=($!)
for _ in $(seq 1 100); do
  [ -s "$work/seed.out" ] && break
  kill -0 "${pids[1]}" 2>/dev/null || { echo "seeding failed"; exit 1; }
  sleep 0.1
done
[ -s "$work/seed.out" ] || { echo "seeding timed out"; exit 1; }

status=0
run() {
  local who="$1" token="$2"
  shift 2
  echo "== schemathesis: $who $*"
  "$st" --config-file "$work/schemathesis.toml" run "http://127.0.0.1:$port/messaging/openapi.json" \
    --checks all --max-examples "$examples" --workers 1 --no-color \
    --generation-database none \
    -H "Authorization: Bearer $token" "$@" || status=1
}
run member "$member" --seed "$seed"
run moderator "$moderator" --seed "$seed"
run member "$member"
run moderator "$moderator"
kill -0 "${pids[0]}" || { echo "the server died"; cat "$work/server.log"; exit 1; }
exit $status
