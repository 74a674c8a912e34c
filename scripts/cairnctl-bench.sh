#!/usr/bin/env bash
# docs/benchmarks.md's cairnctl benchmark: starts `cairn dev` (release, fsync on)
# in a fresh directory, runs every workload ROUNDS times for SECS seconds
# with `cairnctl bench -o json`, and prints one JSON line per run plus the
# median of each workload. Bounded: ROUNDS x 6 workloads x SECS seconds,
# plus one preload of the key space.
#
#   scripts/cairnctl-bench.sh            # 3 rounds of 10 s
#   ROUNDS=1 SECS=5 scripts/cairnctl-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
runs=(
  "put --clients 1"
  "put --clients 16"
  "put --clients 64"
  "put --clients 256"
  "get --clients 64"
  "get --clients 64 --serializable"
)
out="$dir/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for r in "${runs[@]}"; do
    # shellcheck disable=SC2086
    ctl bench $r --duration "${SECS}s" --key-space "$KEYS" --value-size 256 -o json | tee -a "$out"
  done
done
echo "medians of $ROUNDS round(s):"
echo "workload clients ops_per_sec p50_us p99_us p999_us client_cpu_us_per_op errors"
# One line per (workload, clients): the median of each figure.
sed -E 's/[{}"]//g' "$out" | awk -F, '
{ for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
  k = v["workload"] " " v["clients"]; if (!(k in seen)) { order[++n] = k; seen[k] = 1 }
  c = ++cnt[k]; ops[k, c] = v["ops_per_sec"]; p50[k, c] = v["p50_us"]; p99[k, c] = v["p99_us"]
  p999[k, c] = v["p999_us"]; cpu[k, c] = v["client_cpu_us_per_op"]; err[k] += v["errors"] }
function med(a, k, c,   i, j, t, x) {
  for (i = 1; i <= c; i++) x[i] = a[k, i] + 0
  for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
  return x[int((c + 1) / 2)] }
END { for (i = 1; i <= n; i++) { k = order[i]; c = cnt[k]
  print k, med(ops, k, c), med(p50, k, c), med(p99, k, c), med(p999, k, c), med(cpu, k, c), err[k] } }'
