#!/usr/bin/env bash
# docs/benchmarks.md's gateway benchmark: starts `cairn dev` (three nodes and the
# gateway on 127.0.0.1:7000, release, fsync on) in a fresh directory and
# runs `cairnctl bench` with 64 clients directly against the leader and
# through the gateway, alternated, ROUNDS times for SECS seconds each
# (put, and serializable get), in two shapes: 64 clients each on a
# connection of its own (`--conns 64`: 64 client processes, the load a
# gateway is put in front of) and 64 clients sharing one connection
# (`--conns 1`: one process whose client library already gathers its
# calls into one stream). Prints one JSON line per run and the medians
# with the gateway/direct ratios. Bounded: 8 x ROUNDS x SECS s.
#
#   scripts/gateway-bench.sh            # 3 rounds of 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
out="$dir/runs.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for conns in 64 1; do
    for w in "put" "get --serializable"; do
      # shellcheck disable=SC2086
      for path in direct gateway; do
        if [ $path = direct ]; then
          line=$(ctl --endpoints $nodes bench $w --target-leader --clients 64 --conns $conns --duration "${SECS}s" --key-space "$KEYS" -o json)
        else
          line=$(ctl --endpoints $gw bench $w --clients 64 --conns $conns --duration "${SECS}s" --key-space "$KEYS" -o json)
        fi
        echo "{\"path\":\"$path\",${line#\{}" | tee -a "$out"
      done
    done
  done
done
echo "medians of $ROUNDS round(s):"
echo "workload conns path ops_per_sec p50_us p99_us"
sed -E 's/[{}"]//g' "$out" | awk -F, '
{ for (i = 1; i <= NF; i++) { split($i, kv, ":"); v[kv[1]] = kv[2] }
  k = v["workload"] " " v["conns"] " " v["path"]; if (!(k in seen)) { order[++n] = k; seen[k] = 1 }
  c = ++cnt[k]; ops[k, c] = v["ops_per_sec"]; p50[k, c] = v["p50_us"]; p99[k, c] = v["p99_us"] }
function med(a, k, c,   i, j, t, x) {
  for (i = 1; i <= c; i++) x[i] = a[k, i] + 0
  for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
  return x[int((c + 1) / 2)] }
END { for (i = 1; i <= n; i++) { k = order[i]; c = cnt[k]; o[k] = med(ops, k, c); q[k] = med(p50, k, c)
        print k, o[k], q[k], med(p99, k, c) }
      for (i = 1; i <= n; i++) { k = order[i]; split(k, p, " ")
        if (p[3] == "gateway") { d = p[1] " " p[2] " direct"
          printf "%s, %s conns: gateway/direct throughput %.3f, added p50 %d us\n", p[1], p[2], o[k] / o[d], q[k] - q[d] } } }'
