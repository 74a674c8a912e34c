#!/usr/bin/env bash
# End-to-end test of the image on real containers: 3 nodes and a gateway on
# a private Docker network, driven by the image's own cairnctl from a client
# container on the same network. No traffic leaves that network.
#
#   deploy/e2e/run.sh            (IMAGE=cairn:dev by default; build it first)
#
# Checks, in order:
#   1. the cluster starts (time from `docker run` to every node ready);
#      put/get/scan/txn/watch work through the gateway;
#   2. `docker kill` of the leader while a writer writes through the
#      gateway: no write fails (5 s deadline), no acknowledged write lost;
#   3. `docker network disconnect` of a follower, writes, reconnect: it
#      catches up (serves the newest write from its own state);
#   4. rolling restart of all three nodes (SIGTERM: the leader transfers
#      leadership first) under a steady load: zero failed client requests;
#   5. scale to 5 nodes (two joiners) and back to 3 (member remove, stop);
#      the lowest founder loses its volume, is removed, starts empty and
#      rejoins the running cluster;
#   6. every acknowledged write is present exactly once (version 1);
#   7. backup (a copy of one member's volume) and restore of the whole
#      cluster from it (`cairn restore` on the copy, the others empty and
#      joining): the backup's data, nothing written after it.
# Every wait is bounded; the containers, volumes and network are removed on
# exit whatever happens (KEEP=1 keeps them for a look).
set -euo pipefail

IMAGE=${IMAGE:-cairn:dev}
P=${PREFIX:-cairn-e2e}
NET=$P-net
GW=$P-gw
CLIENT=$P-client
WRITER_MAX_S=900
T0=$(date +%s)

log() { printf '[e2e %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
fail() {
  log "FAIL: $*"
  dump
  exit 1
}
node() { echo "$P-n$1"; }

cleanup() {
  [[ ${KEEP:-} == 1 ]] && return
  docker rm -f $(docker ps -aq --filter "name=^$P-") >/dev/null 2>&1 || true
  docker volume rm $(docker volume ls -q --filter "name=^$P-") >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  [[ -n ${ENV_DIR:-} ]] && rm -rf "$ENV_DIR"
  return 0
}
# On a failure: every container's whole log under $LOGS, and its last 80
# lines here without the heartbeat warnings (a cut-off peer fills the
# tail with them and hides what the other peers did).
LOGS=${LOGS:-/tmp/cairn-e2e-logs}
dump() {
  mkdir -p "$LOGS"
  for c in $(docker ps -a --format '{{.Names}}' --filter "name=^$P-n") "$GW"; do
    docker logs "$c" >"$LOGS/$c.log" 2>&1 || true
    echo "--- $c (last 80 log lines but heartbeat warnings; all of it in $LOGS/$c.log)" >&2
    grep -v HeartbeatWorker "$LOGS/$c.log" | tail -n 80 | cut -c1-400 >&2 || true
  done
}
trap cleanup EXIT
cleanup

ctl() { docker exec "$CLIENT" cairnctl --endpoints "$GW:7000" "$@"; }
ctl_at() {
  local ep=$1
  shift
  docker exec "$CLIENT" cairnctl --endpoints "$ep" "$@"
}
# Waits up to $1 seconds for the command to succeed.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local end=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < end)) || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}
ready() { docker exec "$CLIENT" cairn probe --addr "$1:7000" --service readiness; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# The nodes and the gateway run exactly what deploy/k8s runs: the
# StatefulSet's start script and environment (with its ConfigMap), the
# gateway Deployment's environment. Kubernetes DNS names are network
# aliases: cairn-N.cairn-peer.NS.svc per node, cairn-peer.NS.svc and
# cairn-client.NS.svc on every node.
NS=e2e
HERE=$(cd "$(dirname "$0")" && pwd)
NODE_SCRIPT=$(python3 "$HERE/k8s_env.py" node-script)
ENV_DIR=$(mktemp -d)
python3 "$HERE/k8s_env.py" node-env "$NS" >"$ENV_DIR/node.env"
python3 "$HERE/k8s_env.py" gateway-env "$NS" >"$ENV_DIR/gateway.env"
SECURE=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --user 10001:10001)

# (cairn-client selects ready pods only; a joiner is not ready before it has
# joined, so only the founders carry that alias)
aliases() {
  local pod=cairn-$(($1 - 1)) flag=${2:---network-alias}
  echo "$flag $pod.cairn-peer.$NS.svc $flag cairn-peer.$NS.svc"
  (($1 <= 3)) && echo "$flag cairn-client.$NS.svc"
  return 0
}
# run_node ID: node ID is StatefulSet pod cairn-(ID-1), with its own volume.
run_node() {
  local id=$1 n pod
  n=$(node "$1")
  pod=cairn-$((id - 1))
  docker run -d --name "$n" --hostname "$pod" --network "$NET" "${SECURE[@]}" \
    $(aliases "$id") \
    -v "$n:/var/lib/cairn" --env-file "$ENV_DIR/node.env" \
    -e POD_NAME="$pod" -e POD_NAMESPACE="$NS" \
    --entrypoint /bin/sh "$IMAGE" -c "$NODE_SCRIPT" >/dev/null
}

leader() { ctl status -o json | json "next(m['leader'] for m in d if m.get('leader'))"; }
voters_of() { json "sorted(m['id'] for m in d['members'] if not m['is_learner'])"; }
members_voters() { ctl_at "$(node 1):7000" member list -o json | voters_of; }

# The writer: one cairnctl put per key through the gateway, each key written
# once; acknowledged ids go to /tmp/acked, failures to /tmp/failed.
start_writer() {
  docker exec "$CLIENT" sh -c "touch /tmp/writing; : > /tmp/failed; : >> /tmp/acked"
  docker exec -d "$CLIENT" sh -c '
    i=$(wc -l < /tmp/acked); i=$((i + 100000 * $(cat /tmp/round 2>/dev/null || echo 0)))
    end=$(($(date +%s) + '"$WRITER_MAX_S"'))
    while [ -e /tmp/writing ] && [ "$(date +%s)" -lt "$end" ]; do
      i=$((i + 1)); k=$(printf "e2e/w/%08d" $i)
      if out=$(cairnctl --endpoints '"$GW"':7000 --timeout 5s put "$k" "v$i" 2>&1); then
        echo "$k" >> /tmp/acked
      else
        echo "$k $out" >> /tmp/failed
      fi
    done
    echo done > /tmp/writer-done'
}
stop_writer() {
  docker exec "$CLIENT" sh -c 'rm -f /tmp/writing; for i in $(seq 100); do [ -e /tmp/writer-done ] && break; sleep 0.1; done
    rm -f /tmp/writer-done; echo $(( $(cat /tmp/round 2>/dev/null || echo 0) + 1 )) > /tmp/round'
}
acked() { docker exec "$CLIENT" sh -c 'wc -l < /tmp/acked'; }
assert_no_failed_writes() {
  local f
  f=$(docker exec "$CLIENT" cat /tmp/failed)
  [[ -z $f ]] || fail "$1: writes failed: $(head -c 600 <<<"$f")"
}

# ---------------------------------------------------------------- 1. start
log "image $IMAGE: $(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
docker network create "$NET" >/dev/null
docker run -d --name "$CLIENT" --network "$NET" --entrypoint sleep "$IMAGE" 3600 >/dev/null
start=$(date +%s.%N)
for i in 1 2 3; do run_node "$i"; done
for i in 1 2 3; do wait_for 60 "node $i ready" ready "$(node "$i")"; done
ready_s=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
log "3 nodes ready ${ready_s}s after the first docker run"
docker run -d --name "$GW" --network "$NET" "${SECURE[@]}" --env-file "$ENV_DIR/gateway.env" \
  "$IMAGE" gateway >/dev/null
wait_for 30 "gateway ready" ready "$GW"
health=$(docker inspect -f '{{.State.Health.Status}}' "$(node 1)")
log "gateway ready; docker health of node 1: $health"

ctl put greeting hello >/dev/null
[[ $(ctl get greeting -o simple | tail -n1) == hello ]] || fail "get through the gateway"
ctl put greeting2 world >/dev/null
[[ $(ctl scan --prefix greeting --keys-only -o simple | tr '\n' ' ') == "greeting greeting2 " ]] ||
  fail "scan through the gateway"
ctl cas greeting --expect hello --set bonjour >/dev/null || fail "cas through the gateway"
[[ $(ctl get greeting --serializable -o simple | tail -n1) =~ ^(bonjour|hello)$ ]] || fail "serializable get"
watch_out=$(docker exec "$CLIENT" sh -c "cairnctl --endpoints $GW:7000 watch greeting --rev 1 --count 2 -o simple")
grep -q bonjour <<<"$watch_out" || fail "watch from revision 1 through the gateway: $watch_out"
log "data commands work through the gateway"

# ---------------------------------------------------------------- 2. kill -9 the leader
start_writer
some_acked() { (($(acked) >= 20)); }
wait_for 30 "the writer's first writes" some_acked
l=$(leader)
log "docker kill the leader (node $l) under writes"
docker kill "$(node "$l")" >/dev/null
sleep 8
stop_writer
assert_no_failed_writes "leader kill"
log "no failed writes across the leader kill ($(acked) acknowledged so far); new leader: $(leader)"
docker start "$(node "$l")" >/dev/null
wait_for 60 "node $l back and ready" ready "$(node "$l")"

# ---------------------------------------------------------------- 3. disconnect a follower
l=$(leader)
f=$((l % 3 + 1))
log "disconnect node $f from the network"
docker network disconnect "$NET" "$(node "$f")"
for i in $(seq 20); do ctl put "e2e/part/$i" "p$i" >/dev/null || fail "put $i while node $f is cut off"; done
# (the aliases stand for DNS names, which outlive a network failure)
docker network connect $(aliases "$f" --alias) "$NET" "$(node "$f")"
caught_up() { [[ $(ctl_at "$(node "$f"):7000" get e2e/part/20 --serializable -o simple | tail -n1) == p20 ]]; }
wait_for 60 "node $f to serve the newest write from its own state" caught_up
log "node $f caught up after reconnecting"

# ---------------------------------------------------------------- 4. rolling restart
docker exec -d "$CLIENT" sh -c "cairnctl --endpoints $GW:7000 bench put --clients 4 --duration 30s --rate 200 \
  --key-space 1000 -o json > /tmp/bench.json 2> /tmp/bench.err; echo \$? > /tmp/bench.rc"
start_writer
for i in 1 2 3; do
  was=$(leader)
  log "rolling restart: node $i (leader: $was)"
  # The StatefulSet's preStop hook, then SIGTERM as Kubernetes sends it.
  docker exec "$(node "$i")" cairn step-down --addr 127.0.0.1:7000 --timeout-ms 20000 ||
    fail "step-down on node $i"
  [[ $(leader) != "$i" ]] || fail "node $i still leads after step-down"
  docker stop -t 30 "$(node "$i")" >/dev/null
  code=$(docker inspect -f '{{.State.ExitCode}}' "$(node "$i")")
  [[ $code == 0 ]] || fail "node $i exited $code on SIGTERM"
  docker start "$(node "$i")" >/dev/null
  wait_for 60 "node $i ready after restart" ready "$(node "$i")"
  sleep 2
done
wait_for 90 "the background bench to finish" docker exec "$CLIENT" test -e /tmp/bench.rc
stop_writer
assert_no_failed_writes "rolling restart"
bench=$(docker exec "$CLIENT" cat /tmp/bench.json)
errors=$(json "d['errors']" <<<"$bench")
ops=$(json "d['ops']" <<<"$bench")
[[ $(docker exec "$CLIENT" cat /tmp/bench.rc) == 0 && $errors == 0 ]] ||
  fail "bench under the rolling restart: errors=$errors $(docker exec "$CLIENT" cat /tmp/bench.err | head -c 600)"
log "rolling restart: 0 failed requests ($ops bench puts, $(acked) acknowledged writer puts)"

# ---------------------------------------------------------------- 5. scale 3 -> 5 -> 3
log "scale to 5: pods cairn-3 and cairn-4 join (the StatefulSet script, beyond CAIRN_INITIAL_SIZE)"
for i in 4 5; do run_node "$i"; done
five_voters() { [[ $(members_voters) == "[1, 2, 3, 4, 5]" ]]; }
wait_for 120 "5 voters" five_voters
for i in 4 5; do wait_for 60 "node $i ready" ready "$(node "$i")"; done
ctl put e2e/scaled five >/dev/null
[[ $(ctl_at "$(node 5):7000" get e2e/scaled -o simple | tail -n1) == five ]] || fail "read through node 5"
log "5 voters: $(members_voters)"
log "scale back to 3: member remove 5 4, stop them, drop their volumes"
ctl_at "$(node 1):7000" member remove 5 >/dev/null
ctl_at "$(node 1):7000" member remove 4 >/dev/null
docker rm -f "$(node 4)" "$(node 5)" >/dev/null
docker volume rm "$(node 4)" "$(node 5)" >/dev/null
[[ $(members_voters) == "[1, 2, 3]" ]] || fail "voters after scaling down: $(members_voters)"
ctl put e2e/scaled three >/dev/null || fail "write after scaling down"
log "3 voters again: $(members_voters)"

# ---------------------------------------------------------------- 5b. lose a volume
log "node 1 (the founder that initializes) loses its volume: remove it, start it empty"
docker exec "$(node 1)" cairn step-down --addr 127.0.0.1:7000 >/dev/null 2>&1 || fail "step-down on node 1"
ctl_at "$(node 2):7000" member remove 1 >/dev/null
docker rm -f "$(node 1)" >/dev/null
docker volume rm "$(node 1)" >/dev/null
run_node 1
node1_voter() { [[ $(ctl_at "$(node 2):7000" member list -o json | voters_of) == "[1, 2, 3]" ]]; }
wait_for 120 "node 1 to rejoin as a voter" node1_voter
wait_for 60 "node 1 ready" ready "$(node 1)"
[[ $(ctl_at "$(node 1):7000" get e2e/scaled --serializable -o simple | tail -n1) == three ]] ||
  fail "node 1 does not serve the data after rejoining"
# (the log is read whole first: `grep -q` closing the pipe early would fail
# the pipeline under pipefail)
node1_log=$(docker logs "$(node 1)" 2>&1)
grep -q "already runs without this node" <<<"$node1_log" || fail "node 1 did not join the running cluster"
log "node 1 rejoined with empty data as a learner, then voter: $(members_voters)"

for i in 1 2 3; do
  healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$(node "$i")") == healthy ]]; }
  wait_for 30 "docker's health check to report node $i healthy" healthy
done
log "docker health check: nodes 1-3 healthy"

# ---------------------------------------------------------------- 6. every acknowledged write, once
# Scans through the gateway and compares with the writer's acknowledgements.
check_history() {
  local what=$1 acked_file
  acked_file=$(mktemp)
  docker exec "$CLIENT" cat /tmp/acked >"$acked_file"
  ctl scan --prefix e2e/w/ -o json | python3 -c "
import json, sys
acked = [l.strip() for l in open('$acked_file') if l.strip()]
rows = [json.loads(l) for l in sys.stdin if l.strip()]
got = {r['key']: r for r in rows}
missing = [k for k in acked if k not in got]
twice = [k for k in acked if k in got and got[k]['version'] != 1]
wrong = [k for k in acked if k in got and got[k]['value'] != 'v' + str(int(k.rsplit('/', 1)[1]))]
assert not missing, f'acknowledged writes lost: {missing[:10]} ({len(missing)})'
assert not twice, f'writes applied twice (version != 1): {twice[:10]}'
assert not wrong, f'wrong values: {wrong[:10]}'
print(f'$what: {len(acked)} acknowledged writes all present, each applied once')
" || fail "history check ($what)"
  rm -f "$acked_file"
}
check_history "after the faults"

# ---------------------------------------------------------------- 7. backup and restore
# A point-in-time copy of node 1's volume (its process stopped, as
# deploy/README.md says when CSI snapshots are not available), then the
# whole cluster is rebuilt from it: node 1 from the copy, 2 and 3 empty.
copy_volume() {
  docker run --rm --user 0 -v "$1:/from:ro" -v "$2:/to" --entrypoint sh "$IMAGE" -c 'cp -a /from/. /to/'
}
ctl snapshot >/dev/null || fail "cairnctl snapshot"
docker stop -t 30 "$(node 1)" >/dev/null
copy_volume "$(node 1)" "$P-backup"
docker start "$(node 1)" >/dev/null
wait_for 60 "node 1 ready after the backup" ready "$(node 1)"
ctl put e2e/after-backup lost >/dev/null
log "backup of node 1's volume taken; restoring the cluster from it"
docker rm -f "$(node 1)" "$(node 2)" "$(node 3)" >/dev/null
docker volume rm "$(node 1)" "$(node 2)" "$(node 3)" >/dev/null
copy_volume "$P-backup" "$(node 1)"
docker run --rm "${SECURE[@]}" -v "$(node 1):/var/lib/cairn" --entrypoint cairn "$IMAGE" \
  restore --data-dir /var/lib/cairn --id 1 || fail "cairn restore on the copy"
for i in 1 2 3; do run_node "$i"; done
for i in 1 2 3; do wait_for 90 "node $i ready after the restore" ready "$(node "$i")"; done
three_voters() { [[ $(members_voters) == "[1, 2, 3]" ]]; }
wait_for 120 "nodes 2 and 3 to join the restored node as voters" three_voters
wait_for 30 "gateway ready after the restore" ready "$GW"
[[ -z $(ctl get e2e/after-backup -o simple) ]] || fail "a write after the backup survived the restore"
check_history "after the restore"
ctl put e2e/restored yes >/dev/null || fail "write after the restore"
[[ $(ctl_at "$(node 3):7000" get e2e/restored -o simple | tail -n1) == yes ]] || fail "read after the restore"
log "restored: the backup's data, nothing after it, the cluster serves writes; voters $(members_voters)"

log "PASS (image $(docker image inspect -f '{{.Size}}' "$IMAGE" | numfmt --to=iec), ready in ${ready_s}s, $(acked) writer puts)"
