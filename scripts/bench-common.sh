# Sourced by the benchmark scripts: builds release binaries, starts
# `cairn dev` (three nodes and the gateway, fsync on) in a fresh directory
# that is removed on exit, waits until it serves, and preloads KEYS keys.
# Defines: ROUNDS, SECS, KEYS, dir, nodes, gw, ctl.
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
KEYS=${KEYS:-100000}
cargo build --release -q -p cairn-node -p cairnctl --bins
dir=$(mktemp -d "${BENCH_DIR:-$PWD}/cairn-bench.XXXXXX")
./target/release/cairn dev --data-dir "$dir/data" >"$dir/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; rm -rf "$dir"' EXIT
nodes=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
gw=127.0.0.1:7000
ctl() { ./target/release/cairnctl "$@"; }
for _ in $(seq 1 50); do ctl --endpoints $nodes health >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:9100/readyz >/dev/null && break; sleep 0.2; done
ctl --endpoints $nodes bench put --clients 64 --ops "$KEYS" --key-space "$KEYS" --preload -o json >/dev/null
