#!/usr/bin/env bash
# Runs one named load scenario (or all of them) against a fresh target and prints loadgen's
# JSON report on stdout. Progress and build output go to stderr.
#
#   bench/run.sh SCENARIO [--target service|floor] [--rate R] [--no-build] [-- LOADGEN_ARGS...]
#   bench/run.sh all      [--target service|floor] ...
#   bench/run.sh cluster  [--broker redis|nats] [--rate R] [--no-build] [-- LOADGEN_ARGS...]
#   bench/run.sh cluster-1 [--rate R] ...
#   bench/run.sh gateway  [--rate R] [--no-build] [-- LOADGEN_ARGS...]
#
# Scenarios: smoke fanout-1k rooms-100x50 idle-10k join-storm join-storm-anon grpc-fanout-1k
# (service only). join-storm-anon joins as anonymous live-stream viewers do ("Anonymous ",
# which the service numbers Anonymous_N).
# cluster: fanout-1k on 3 nodes of the service (LG_CLUSTER_NODES) sharing one fresh PostgreSQL
# database and one broker (--broker redis|nats, default redis, or LG_BROKER); sockets are
# spread evenly over the nodes, publisher p sends to node p mod 3. cluster-1: the same on
# one node, same kind of database, no broker (the baseline). LG_CLUSTER_NODES=1 with cluster
# is one node with the broker: what the broker alone costs. Neither is part of `all`.
# gateway: the service in gateway mode (PROTOCOL.md §5.5) behind API Gateway's stand-in,
# target/release/gateway-emulator (the tests' emulator, tests/gateway/emulator/). It runs
# LG_GATEWAY_INSTANCES (2) copies of the release binary as Lambda instances on one fresh
# database (as cluster-1), with the REST front (payload 1.0, stage /dev) on LG_HTTP_PORT
# and the WebSocket front on LG_WS_PORT; every frame reaches a socket as one SigV4-signed
# `POST @connections/{id}`, GATEWAY_CONCURRENCY (LG_GATEWAY_CONCURRENCY; the service's
# default is 32) at once per invocation. The shape is fanout-1k's (1000 sockets, one room,
# 4 publishers taking turns, 10 s), paced at 5 msg/s unless --rate says otherwise (--rate
# 0: as fast as possible): each publish is one invocation that posts to the 1000
# connections and replies once every post is answered, so one room's rate is bounded by
# that fan-out (15-21 msg/s here, unpaced). Joins are one request per socket as in
# fanout-1k, and each posts attendance and blockedIp to every member (about 1M posts for
# the 1000 joins, about a minute here), so loadgen's request timeout is 60 s.
# LG_GATEWAY_POST_DELAY_MS delays every post from the first message on (a model of the
# management API's round trip in AWS). The report gains `gateway` (the emulator's summary of
# the @connections calls: posts per frame, and the fan-out time of a frame from its first
# post received to its last answered, per action) and `aux` (the emulator's CPU, apart from
# the instances' in `server`). Needs psql (or mysql with LG_DB=mysql) and jq. Not in `all`.
# The service runs from a copy of target/release/messaging with a fresh SQLite file in a temp
# dir, a random JWT_SECRET and a minted token; the floor is ../shared/floor. Every listener is
# bound to 127.0.0.1. Exit status: loadgen's (0 ok, 1 a check failed, 2 setup error); for
# `all`, the worst one.
#
# LG_DB=postgres|mysql: a service scenario on one node and that database (default SQLite).
# LG_METRICS_OUT=FILE: the service's /metrics (node 0) after the run, kept in FILE.
# Environment: LG_HTTP_PORT LG_WS_PORT LG_GRPC_PORT (service: 19184 19187 19151),
# LG_FLOOR_HTTP_PORT LG_FLOOR_WS_PORT (floor: 29184 29187), FLOOR_DIR (default
# ../shared/floor next to the repo), FLOOR_TARGET (default /tmp/floor-target), LG_TIMEOUT
# (seconds one loadgen run may take, default 300), LG_KEEP=1 keeps the temp dir and server log.
# cluster only: LG_DB (postgres, the default, or mysql for MariaDB/MySQL), LG_PG_URL and
# LG_MYSQL_URL (server URL without a database, default postgres://postgres@127.0.0.1:5432 and
# mysql://root@127.0.0.1:3306), LG_REDIS_URL (redis://127.0.0.1:6379), LG_NATS_URL
# (nats://127.0.0.1:4222), LG_CLUSTER_NODES (3), LG_HTTP_NODES (REST calls go to the first
# this many nodes; default all), LG_NODE_WORKERS (request-runtime threads per node, passed
# as TOKIO_WORKER_THREADS to the nodes only; default: the service's own, one per core).
# Node k listens on LG_*_PORT + 10k.
# gateway only: LG_DB, LG_PG_URL, LG_MYSQL_URL as above, LG_GATEWAY_INSTANCES (2),
# LG_GATEWAY_CONCURRENCY (GATEWAY_CONCURRENCY of the instances; default the service's),
# LG_GATEWAY_POST_DELAY_MS (0), LG_NODE_WORKERS (TOKIO_WORKER_THREADS of the instances).
# RUST_LOG reaches the instances; their output is in the emulator's log (gateway.log, kept
# with LG_KEEP=1).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FLOOR_DIR=${FLOOR_DIR:-$ROOT/../shared/floor}
FLOOR_TARGET=${FLOOR_TARGET:-/tmp/floor-target}
ALL_SCENARIOS="smoke fanout-1k rooms-100x50 idle-10k join-storm join-storm-anon grpc-fanout-1k"
CHURCH=loadgen-church

log() { printf 'run.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

scenario="" target=service rate="" no_build="" extra=() broker=${LG_BROKER:-redis}
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a value}; shift 2 ;;
    --target=*) target=${1#*=}; shift ;;
    --rate) rate=${2:?--rate needs a value}; shift 2 ;;
    --rate=*) rate=${1#*=}; shift ;;
    --broker) broker=${2:?--broker needs a value}; shift 2 ;;
    --broker=*) broker=${1#*=}; shift ;;
    --no-build) no_build=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (try --help)" ;;
    *) [ -z "$scenario" ] || die "one scenario at a time (or 'all')"; scenario=$1; shift ;;
  esac
done
[ -n "$scenario" ] || { usage; exit 2; }
case "$target" in service | floor) ;; *) die "--target must be service or floor" ;; esac
case "$broker" in redis | nats) ;; *) die "--broker must be redis or nats" ;; esac

# The loadgen flags of each scenario.
scenario_args() {
  case "$1" in
    smoke) echo "--sockets 20 --rooms 2 --publishers 2 --duration 2 --rate 200" ;;
    fanout-1k) echo "--sockets 1000 --rooms 1 --publishers 4 --duration 10" ;;
    rooms-100x50) echo "--sockets 5000 --rooms 100 --publishers 4 --duration 10" ;;
    idle-10k) echo "--sockets 10000 --rooms 100 --duration 0" ;;
    join-storm) echo "--sockets 5000 --rooms 1 --duration 0 --join-concurrency 64" ;;
    join-storm-anon) scenario_args join-storm ;; # plus --join-name "Anonymous " in run_one
    grpc-fanout-1k) echo "--sockets 1000 --rooms 1 --publishers 4 --duration 10 --via grpc" ;;
    cluster | cluster-1) scenario_args fanout-1k ;; # over the nodes' addresses, see run_one
    # fanout-1k behind the gateway emulator; the joins' fan-outs need the longer timeout.
    gateway) echo "$(scenario_args fanout-1k) --request-timeout 60" ;;

    *) return 1 ;;
  esac
}

if [ "$scenario" = all ]; then
  scenarios=$ALL_SCENARIOS
else
  scenario_args "$scenario" >/dev/null || die "unknown scenario '$scenario' (one of: $ALL_SCENARIOS, all)"
  scenarios=$scenario
fi
case "$scenario" in
  cluster | cluster-1 | gateway)
    [ "$target" = service ] || die "$scenario runs only against the service"
    if [ "$scenario" = gateway ]; then
      command -v jq >/dev/null || die "gateway needs jq"
      [ -n "$rate" ] || rate=5
    fi
    case "${LG_DB:-postgres}" in
      postgres) command -v psql >/dev/null || die "$scenario needs psql (PostgreSQL client)" ;;
      mysql) command -v mysql >/dev/null || die "$scenario with LG_DB=mysql needs the mysql client" ;;
      *) die "LG_DB must be postgres or mysql" ;;
    esac
    ;;
esac

# ---- build ----
if [ -z "$no_build" ]; then
  log "building loadgen (release)"
  (cd "$ROOT" && cargo build --release -p loadgen) >&2
  if [ "$target" = service ]; then
    log "building the service (release)"
    (cd "$ROOT" && cargo build --release -p messaging) >&2
  else
    log "building the floor (release)"
    CARGO_TARGET_DIR=$FLOOR_TARGET cargo build --release --manifest-path "$FLOOR_DIR/Cargo.toml" >&2
  fi
fi
LOADGEN=$TARGET_DIR/release/loadgen
[ -x "$LOADGEN" ] || die "no $LOADGEN (build it: cargo build --release -p loadgen)"
EMULATOR=$TARGET_DIR/release/gateway-emulator
[ "$scenario" != gateway ] || [ -x "$EMULATOR" ] ||
  die "no $EMULATOR (build it: cargo build --release -p loadgen)"

# Sockets need file descriptors on both sides: raise the limit as far as allowed.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Nodes of the service: 1 for the single-process scenarios; node k listens on the ports + 10k.
nodes=1
case "$scenario" in cluster) nodes=${LG_CLUSTER_NODES:-3} ;; esac
if [ "$target" = service ]; then
  http_port=${LG_HTTP_PORT:-19184} ws_port=${LG_WS_PORT:-19187} grpc_port=${LG_GRPC_PORT:-19151}
  ports=""
  for k in $(seq 0 $((nodes - 1))); do
    ports="$ports $((http_port + 10 * k)) $((ws_port + 10 * k)) $((grpc_port + 10 * k))"
  done
else
  http_port=${LG_FLOOR_HTTP_PORT:-29184} ws_port=${LG_FLOOR_WS_PORT:-29187} grpc_port=""
  ports="$http_port $ws_port"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

server_pid="" server_pids=() work="" token="" pg_db="" emulator_pid=""

# gateway: SIGTERM to the emulator, which stops its instances and writes its summary
# ($work/gateway-stats.json); SIGKILL after 15 s.
stop_emulator() {
  [ -n "$emulator_pid" ] || return 0
  kill -TERM "$emulator_pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$emulator_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$emulator_pid" 2>/dev/null || true
  wait "$emulator_pid" 2>/dev/null || true
  emulator_pid=""
}

stop_target() {
  local p
  stop_emulator
  # With the gateway, these are the emulator's instances: already stopped with it, unless
  # it had to be killed.
  for p in "${server_pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${server_pids[@]}"; do
    for _ in $(seq 1 150); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  server_pid="" server_pids=()
  if [ -n "$pg_db" ]; then
    db_admin "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 ||
      log "could not drop database $pg_db"
    pg_db=""
  fi
  if [ -n "$work" ]; then
    if [ -n "${LG_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
  fi
  work=""
}
trap stop_target EXIT
trap 'exit 130' INT TERM

# Waits until every node answers 200 on /ready (the floor: any HTTP answer).
wait_ready() {
  local k p code
  for _ in $(seq 1 300); do
    local ready=0
    for k in "${!server_pids[@]}"; do
      p=${server_pids[$k]}
      kill -0 "$p" 2>/dev/null || {
        cat "$work"/*.log >&2
        die "$target node $k exited during start-up"
      }
      code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' "http://127.0.0.1:$((http_port + 10 * k))$ready_path" || true)
      if [ "$target" = service ] && [ "$code" = 200 ]; then ready=$((ready + 1)); fi
      if [ "$target" = floor ] && [ "$code" != 000 ]; then ready=$((ready + 1)); fi
    done
    [ "$ready" -lt "${#server_pids[@]}" ] || return 0
    sleep 0.1
  done
  die "$target did not become ready on every node (first HTTP port $http_port)"
}

# The cluster scenarios' database server (LG_DB): its URL without a database.
db_server() {
  case "${LG_DB:-postgres}" in
    mysql) echo "${LG_MYSQL_URL:-mysql://root@127.0.0.1:3306}" ;;
    *) echo "${LG_PG_URL:-postgres://postgres@127.0.0.1:5432}" ;;
  esac
}
# One administrative statement on that server (CREATE/DROP DATABASE).
db_admin() {
  local url
  url=$(db_server)
  case "${LG_DB:-postgres}" in
    mysql)
      # mysql://user[:password]@host[:port]
      local rest=${url#*://} user pass="" hostport host port=3306
      user=${rest%%@*} hostport=${rest#*@}
      case "$user" in *:*) pass=${user#*:} user=${user%%:*} ;; esac
      host=${hostport%%[:/]*}
      case "$hostport" in *:*) port=${hostport#*:} port=${port%%/*} ;; esac
      MYSQL_PWD=$pass mysql -h "$host" -P "$port" -u "$user" -e "$1"
      ;;
    *)
      # WITH (FORCE): a node that did not stop in time must not keep the database.
      local sql=$1
      case "$sql" in DROP*) sql="$sql WITH (FORCE)" ;; esac
      psql "$url/postgres" -qAt -c "$sql"
      ;;
  esac
}

# A fresh database of this run's own on the LG_DB server ($pg_db, dropped by stop_target).
create_db() {
  pg_db="bench_$$_$RANDOM$RANDOM"
  db_admin "CREATE DATABASE $pg_db" >/dev/null || {
    pg_db=""
    die "could not create a database at $(db_server)"
  }
}

# cluster and cluster-1: $nodes copies of the service on one fresh database (PostgreSQL, or
# MariaDB with LG_DB=mysql); for cluster (any number of nodes), a broker (BROKER_URL) with a
# prefix of this run's own.
start_cluster() {
  local secret="loadgen-$$-$RANDOM$RANDOM" pg
  pg=$(db_server)
  create_db
  local broker_env=()
  [ -z "${LG_NODE_WORKERS:-}" ] || broker_env+=(TOKIO_WORKER_THREADS="$LG_NODE_WORKERS")
  if [ "$1" = cluster ]; then
    local url
    case "$broker" in
      redis) url=${LG_REDIS_URL:-redis://127.0.0.1:6379} ;;
      nats) url=${LG_NATS_URL:-nats://127.0.0.1:4222} ;;
    esac
    broker_env+=(BROKER_URL="$url" BROKER_PREFIX="lg$$r$RANDOM$RANDOM")
    log "$nodes node(s), database $pg_db, broker $url (${broker_env[-1]})"
  else
    log "1 node, database $pg_db, no broker"
  fi
  local k
  # Started together on purpose: the nodes serialize their migrations among themselves.
  for k in $(seq 0 $((nodes - 1))); do
    env "${broker_env[@]}" JWT_SECRET="$secret" DATABASE_URL="$pg/$pg_db" HOST=127.0.0.1 \
      GRPC_HOST=127.0.0.1 PORT=$((http_port + 10 * k)) SOCKET_PORT=$((ws_port + 10 * k)) \
      GRPC_PORT=$((grpc_port + 10 * k)) RUST_LOG=${RUST_LOG:-warn} \
      "$work/messaging" serve >"$work/node$k.log" 2>&1 &
    server_pids+=($!)
  done
  server_pid=${server_pids[0]}
  token=$(JWT_SECRET=$secret "$work/messaging" token --church-id "$CHURCH" --person-id loadgen)
  ready_path=/ready
}

# gateway: the emulator with LG_GATEWAY_INSTANCES Lambda instances of the service on one
# fresh database; waits for its `ready rest=… ws=… pids=…` line.
start_gateway() {
  local secret="loadgen-$$-$RANDOM$RANDOM" instances=${LG_GATEWAY_INSTANCES:-2} env=()
  create_db
  [ -z "${LG_GATEWAY_CONCURRENCY:-}" ] || env+=(--env "GATEWAY_CONCURRENCY=$LG_GATEWAY_CONCURRENCY")
  [ -z "${LG_NODE_WORKERS:-}" ] || env+=(--env "TOKIO_WORKER_THREADS=$LG_NODE_WORKERS")
  [ -z "${LG_GATEWAY_POST_DELAY_MS:-}" ] || env+=(--publish-post-delay-ms "$LG_GATEWAY_POST_DELAY_MS")
  log "gateway emulator: $instances instance(s), database $pg_db, GATEWAY_CONCURRENCY ${LG_GATEWAY_CONCURRENCY:-default}, post delay ${LG_GATEWAY_POST_DELAY_MS:-0} ms"
  cp "$EMULATOR" "$work/gateway-emulator"
  GATEWAY_ECHO_LOGS=1 RUST_LOG=${RUST_LOG:-warn} "$work/gateway-emulator" --binary "$work/messaging" \
    --database-url "$(db_server)/$pg_db" --jwt-secret "$secret" --instances "$instances" \
    --rest-port "$http_port" --ws-port "$ws_port" --stats "$work/gateway-stats.json" "${env[@]}" \
    >"$work/emulator.out" 2>"$work/gateway.log" &
  emulator_pid=$!
  token=$(JWT_SECRET=$secret "$work/messaging" token --church-id "$CHURCH" --person-id loadgen)
  local line=""
  for _ in $(seq 1 900); do
    line=$(grep -m1 '^ready ' "$work/emulator.out" || true)
    [ -z "$line" ] || break
    kill -0 "$emulator_pid" 2>/dev/null || {
      tail -n 40 "$work/gateway.log" >&2
      die "the gateway emulator exited during start-up"
    }
    sleep 0.1
  done
  [ -n "$line" ] || die "the gateway emulator was not ready within 90 s"
  local pids=${line##*pids=}
  IFS=, read -r -a server_pids <<<"$pids"
  server_pid=${server_pids[0]}
}

start_target() {
  for p in $ports; do
    if port_busy "$p"; then die "port $p on 127.0.0.1 is already in use (set LG_*_PORT)"; fi
  done
  work=$(mktemp -d /tmp/loadgen.XXXXXX)
  if [ "$target" = service ]; then
    # Run a copy: a concurrent rebuild must not swap the binary under a running benchmark.
    cp "$TARGET_DIR/release/messaging" "$work/messaging"
    case "$1" in
      cluster | cluster-1) start_cluster "$1"; wait_ready; return 0 ;;
      gateway) start_gateway; return 0 ;;
    esac
    # LG_DB=postgres|mysql: any other scenario on one node and that database instead of SQLite.
    if [ -n "${LG_DB:-}" ]; then start_cluster one; wait_ready; return 0; fi
    local secret="loadgen-$$-$RANDOM$RANDOM"
    JWT_SECRET=$secret DATABASE_URL="sqlite://$work/svc.db?mode=rwc" HOST=127.0.0.1 \
      GRPC_HOST=127.0.0.1 PORT=$http_port SOCKET_PORT=$ws_port GRPC_PORT=$grpc_port \
      RUST_LOG=${RUST_LOG:-warn} "$work/messaging" serve >"$work/server.log" 2>&1 &
    server_pid=$!
    token=$(JWT_SECRET=$secret "$work/messaging" token --church-id "$CHURCH" --person-id loadgen)
    ready_path=/ready
  else
    HOST=127.0.0.1 PORT=$http_port SOCKET_PORT=$ws_port "$FLOOR_TARGET/release/floor" >"$work/server.log" 2>&1 &
    server_pid=$!
    token=""
    ready_path=/messaging/ # any HTTP answer will do
  fi
  server_pids=("$server_pid")
  wait_ready
}

# "a,b,c": the addresses of the first $2 nodes (default all) for a port base.
node_addrs() {
  local base=$1 k out="" n=${2:-${#server_pids[@]}}
  for k in $(seq 0 $((n - 1))); do
    out="$out${out:+,}127.0.0.1:$((base + 10 * k))"
  done
  echo "$out"
}

run_one() {
  local name=$1 out=$2
  if [ "$name" = grpc-fanout-1k ] && [ "$target" = floor ]; then
    log "skipping $name: the floor has no gRPC"
    return 0
  fi
  start_target "$name"
  log "$name against the $target (pid ${server_pids[*]})"
  # shellcheck disable=SC2207
  local args=($(scenario_args "$name"))
  # The name ends in a space, so it cannot travel through scenario_args' word splitting.
  [ "$name" != join-storm-anon ] || args+=(--join-name "Anonymous ")
  # --rate 0: as fast as possible (what no --rate means elsewhere; gateway paces by default).
  [ -z "$rate" ] || [ "$rate" = 0 ] || args+=(--rate "$rate")
  local pids
  pids=$(
    IFS=,
    echo "${server_pids[*]}"
  )
  local kind=$target
  [ "$name" != cluster ] || kind="service-$nodes-nodes-$broker${LG_DB:+-$LG_DB}"
  [ "$name" != cluster-1 ] || kind="service-1-node-${LG_DB:-postgres}"
  [ "$target" != service ] || [ -z "${LG_DB:-}" ] || [ "$name" = cluster ] || [ "$name" = gateway ] ||
    kind="service-1-node-$LG_DB"
  if [ "$name" = gateway ]; then
    # One REST front and one WebSocket front (stage /dev) for all the instances; the
    # emulator's CPU apart from theirs.
    kind="service-gateway${LG_DB:+-$LG_DB}"
    args+=(--http "127.0.0.1:$http_port" --http-prefix /dev --ws "127.0.0.1:$ws_port" --ws-path /dev
      --aux-pid "$emulator_pid")
  else
    # LG_HTTP_NODES=1 sends every REST call (publishes, joins) to node 0 only.
    args+=(--http "$(node_addrs "$http_port" "${LG_HTTP_NODES:-${#server_pids[@]}}")" --ws "$(node_addrs "$ws_port")")
  fi
  args+=(--church "$CHURCH" --scenario "$name" --target-kind "$kind" --server-pid "$pids")
  if [ "$name" = gateway ]; then
    args+=(--token "$token") # no gRPC listener in gateway mode
  elif [ "$target" = service ]; then
    args+=(--grpc "$(node_addrs "$grpc_port")" --token "$token")
  else
    args+=(--presence-timeout 0) # the floor sends no attendance frames
  fi
  local rc=0
  timeout -k 10 "${LG_TIMEOUT:-300}" "$LOADGEN" "${args[@]}" "${extra[@]}" >"$out" || rc=$?
  local logs=("$work"/*.log) k died=""
  for k in "${!server_pids[@]}"; do
    kill -0 "${server_pids[$k]}" 2>/dev/null || died="$died $k"
  done
  [ -z "$emulator_pid" ] || kill -0 "$emulator_pid" 2>/dev/null || died="$died emulator"
  if [ "$rc" -ge 2 ]; then
    log "loadgen exited with $rc; last lines of the $target log(s):"
    tail -n 20 "${logs[@]}" >&2 || true
  elif [ -n "$died" ]; then
    log "the $target died during the run (node(s)$died); last lines of its log(s):"
    tail -n 20 "${logs[@]}" >&2 || true
    rc=2
  elif [ "${#server_pids[@]}" -gt 1 ] || [ -n "$pg_db" ]; then
    # Several nodes: say whether any node logged a warning or an error.
    local n
    n=$(cat "${logs[@]}" | grep -c -E 'WARN|ERROR' || true)
    [ "$n" = 0 ] || {
      log "the nodes logged $n warning/error lines; the first ones:"
      grep -h -E 'WARN|ERROR' "${logs[@]}" | head -n 10 >&2
    }
  fi
  if [ "$name" = gateway ]; then
    # The emulator's summary of the @connections calls joins the report as `gateway`.
    stop_emulator
    if [ -s "$out" ] && [ -s "$work/gateway-stats.json" ]; then
      jq --slurpfile g "$work/gateway-stats.json" \
        --argjson n "${LG_GATEWAY_INSTANCES:-2}" --arg c "${LG_GATEWAY_CONCURRENCY:-}" \
        --argjson d "${LG_GATEWAY_POST_DELAY_MS:-0}" \
        '. + {gateway: ({instances: $n, concurrency: (if $c == "" then null else ($c | tonumber) end), post_delay_ms: $d} + $g[0])}' \
        "$out" >"$out.tmp" && mv "$out.tmp" "$out"
    else
      log "no summary from the gateway emulator"
    fi
  fi
  # LG_METRICS_OUT=FILE keeps the service's /metrics (node 0) as the run left them.
  if [ -n "${LG_METRICS_OUT:-}" ] && [ "$target" = service ] && [ "$name" != gateway ]; then
    curl -fsS "http://127.0.0.1:$http_port/metrics" >"$LG_METRICS_OUT" 2>/dev/null ||
      log "could not read /metrics"
  fi
  stop_target
  return "$rc"
}

status=0
outs=()
tmp_out=$(mktemp -d /tmp/loadgen-out.XXXXXX)
for s in $scenarios; do
  out="$tmp_out/$s.json"
  rc=0
  run_one "$s" "$out" || rc=$?
  [ "$rc" -le "$status" ] || status=$rc
  [ -s "$out" ] && outs+=("$out")
done
if [ "$scenario" = all ]; then
  # One JSON array of the reports.
  echo "["
  first=1
  for o in "${outs[@]}"; do
    [ -n "$first" ] || echo ","
    first=""
    cat "$o"
  done
  echo "]"
else
  for o in "${outs[@]}"; do cat "$o"; echo; done
fi
rm -rf "$tmp_out"
exit "$status"
