#!/usr/bin/env bash
# Interleaved rounds: runs every configuration once per round, the order rotated by one each
# round, and prints one line per run and then the median of each configuration.
#
#   bench/rounds.sh ROUNDS 'LABEL|ENV|RUN_ARGS' ...
#
# ENV is a space-separated list of VAR=value set for that run only (the service inherits
# it: SOCKET_NICE=0, FLUSH_INTERVAL_MS=0, ...); RUN_ARGS are bench/run.sh's arguments
# (`--no-build` is added). Example:
#
#   bench/rounds.sh 3 'floor 500||fanout-1k --target floor --rate 500' \
#                     'service 500||fanout-1k --rate 500'
#
# Every report is kept in $ROUNDS_DIR (default a new temp dir) as LABEL.ROUND.json.
# Needs jq and python3.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=${1:?rounds}
shift
configs=("$@")
n=${#configs[@]}
out=${ROUNDS_DIR:-$(mktemp -d /tmp/rounds.XXXXXX)}
mkdir -p "$out"
echo "reports in $out" >&2
row() {
  jq -r --arg l "$1" --arg r "$2" '[$l, $r,
      (.deliveries_per_sec // 0 | floor), (.latency_ms.p50 // "-"), (.latency_ms.p99 // "-"),
      (.server.cpu_us_per_delivery // "-"), (.generator.cpu_us_per_delivery // "-"),
      (.generator.frames_per_read // "-"), (.lost // "-"), (.duplicates // "-"),
      (.out_of_order // "-"), (.ok // false)] | @tsv' "$3"
}
printf 'label\tround\tdeliv/s\tp50\tp99\tsrv_us/d\tgen_us/d\tframes/read\tlost\tdup\tooo\tok\n'
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < n; i++)); do
    c=${configs[$(((i + r) % n))]}
    IFS='|' read -r label envs args <<<"$c"
    f="$out/${label// /_}.$r.json"
    # shellcheck disable=SC2086
    # `--no-build` goes before a `--` (what follows it is loadgen's).
    case " $args " in
      *" -- "*) args="${args/ -- / --no-build -- }" ;;
      *) args="$args --no-build" ;;
    esac
    env $envs "$BENCH_DIR/run.sh" $args >"$f" 2>"$f.log" || true
    if [ -s "$f" ]; then row "$label" "$r" "$f"; else printf '%s\t%s\tFAILED (see %s.log)\n' "$label" "$r" "$f"; fi
  done
done | tee "$out/runs.tsv"
python3 - "$out/runs.tsv" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
by = collections.OrderedDict()
for r in rows:
    if len(r) < 12: continue
    by.setdefault(r[0], []).append(r)
def med(vals):
    v = [float(x) for x in vals if x not in ('-', '')]
    return round(statistics.median(v), 3) if v else '-'
print('\nmedians\nlabel\truns\tdeliv/s\tp50\tp99\tsrv_us/d\tgen_us/d\tframes/read\tall ok')
for k, rs in by.items():
    cols = list(zip(*rs))
    print('\t'.join(str(x) for x in [k, len(rs), med(cols[2]), med(cols[3]), med(cols[4]), med(cols[5]),
          med(cols[6]), med(cols[7]), all(x == 'true' for x in cols[11])]))
EOF
