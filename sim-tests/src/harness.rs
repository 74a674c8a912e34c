//! One simulated run: three founding nodes and two spare hosts on turmoil
//! hosts with simulated disks, a gateway, clients issuing register
//! operations through the real client library (straight to the nodes or
//! through the gateway), two watchers of every key, a nemesis isolating
//! nodes, splitting the hosts into a minority and a majority, cutting a
//! node's outgoing links only, holding its messages back (they arrive
//! late), crashing nodes or the gateway (a crash loses what was not
//! synced) and failing a node's disk (fsyncs fail, or it fills up: the node
//! must stop), an administrator transferring leadership, triggering
//! snapshots and growing and shrinking the cluster between 3 and 5 voters,
//! then a liveness phase with every fault healed in which the members must
//! converge to identical data and watch histories and the watchers reach
//! an end marker. The recorded history goes to the
//! [`checker`](crate::checker), the watch streams to
//! [`watches`](crate::watches); Raft's invariants are checked while the run
//! goes on ([`invariants`](crate::invariants)).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, Error, EventKind, Watch};
use cairn_io::{InlineExecutor, MemFs};
use cairn_node::gateway::{GatewayArgs, RunningGateway};
use cairn_node::server::config::NodeArgs;
use cairn_node::server::{NodeEnv, RunningNode};
use rand::{Rng, SeedableRng};

use crate::checker::{check, Input, Operation, Output, Value, Verdict};
use crate::invariants::Invariants;
use crate::nemesis::{disk_of, next_fault, Fault, NORMAL_LATENCY};
use crate::net::SimNet;
use crate::options::GATEWAY;
use crate::watches::{self, State, END_KEY};

pub use crate::options::Options;

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every client operation.
    pub history: Vec<Operation>,
    /// The faults injected, with their simulated times.
    pub faults: Vec<String>,
    /// Simulated time the run took.
    pub elapsed: Duration,
    /// A hash of the history and the faults: equal runs have equal hashes.
    pub trace_hash: u64,
    /// Raft invariants: metric changes checked, leader ids (term, node) seen,
    /// log indexes seen applied.
    pub invariants: (u64, usize, usize),
    /// Events each watcher received (checked against the history).
    pub watched: Vec<usize>,
}

impl Report {
    /// One line about the run, `NAME VALUE` pairs: SEED, TRACE (the trace
    /// hash), OPS, UNKNOWN (operations with an unknown outcome), FAULTS
    /// (faults and administrative actions), SIMSECS, ADDS, REMOVES,
    /// TRANSFERS, SNAPSHOTS (administrative actions that succeeded),
    /// DISKFAULTS (disk faults injected), STOPS (nodes that stopped on a
    /// storage error), CHECKS (Raft invariant checks), LEADERS (leader ids (term, node) with a
    /// leader seen), WATCHED (watch events checked, all watchers).
    pub fn summary(&self, seed: u64) -> String {
        let admin = |what: &str, ok: &str| {
            self.faults
                .iter()
                .filter(|f| f.contains(what) && f.contains(ok))
                .count()
        };
        format!(
            "SEED {seed} TRACE {} OPS {} UNKNOWN {} FAULTS {} SIMSECS {} ADDS {} REMOVES {} TRANSFERS {} SNAPSHOTS {} DISKFAULTS {} STOPS {} CHECKS {} LEADERS {} WATCHED {}",
            self.trace_hash,
            self.history.len(),
            self.history.iter().filter(|o| o.ret.is_none()).count(),
            self.faults.len(),
            self.elapsed.as_secs(),
            admin("admin add", ": voter"),
            admin("admin remove", ": done"),
            admin("admin transfer leader", ": now"),
            admin("admin snapshot", ": at"),
            self.faults.iter().filter(|f| f.contains(" disk ") && !f.contains("heal")).count(),
            self.faults.iter().filter(|f| f.contains(" stopped: ")).count(),
            self.invariants.0,
            self.invariants.1,
            self.watched.iter().sum::<usize>(),
        )
    }
}

/// The value after `name` in a [`Report::summary`] line (0 if absent).
pub fn summary_field(line: &str, name: &str) -> u64 {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == name {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// The founding members (`--initial-cluster`).
const FOUNDERS: u64 = 3;
/// Every host that runs a node: the founders and spares the administrator
/// adds and removes.
const NODES: u64 = 5;

fn initial_cluster() -> String {
    (1..=FOUNDERS)
        .map(|i| format!("{i}=n{i}:7001/n{i}:7101"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Nodes that stopped by themselves (their Raft hit a storage error):
/// (node id, simulated time, why).
pub type Stops = Arc<Mutex<Vec<(u64, Duration, String)>>>;

/// Adds node `id` (host `n{id}`, client port 7001, peer port 7101), on
/// disk `fs`, its Raft seeded from `seed`, the host and the boot; ids up to
/// 3 found the cluster, higher ids wait to be added. Every boot's Raft
/// metrics are checked against `invariants`. A node whose Raft stops on a
/// storage error stops serving, as the `cairn` process exits, and is
/// noted in `stops`; the host stays down until it is restarted.
pub fn add_node(
    sim: &mut turmoil::Sim<'_>,
    id: u64,
    seed: u64,
    fs: Arc<MemFs>,
    invariants: Arc<Mutex<Invariants>>,
    stops: Stops,
) {
    let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    sim.host(format!("n{id}"), move || {
        let fs = fs.clone();
        let invariants = invariants.clone();
        let stops = stops.clone();
        let boot = boots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let config = NodeArgs {
                id: Some(id),
                data_dir: Some(format!("/data/n{id}").into()),
                listen_client: Some("0.0.0.0:7001".into()),
                listen_peer: Some("0.0.0.0:7101".into()),
                advertise_client: Some(format!("n{id}:7001")),
                advertise_peer: Some(format!("n{id}:7101")),
                listen_metrics: Some(String::new()),
                initial_cluster: (id <= FOUNDERS).then(initial_cluster),
                heartbeat_ms: Some(100),
                election_timeout_ms: Some(500),
                ..NodeArgs::default()
            }
            .resolve()?;
            let env = NodeEnv {
                fs,
                executor: Arc::new(InlineExecutor),
                net: Arc::new(SimNet),
                // Seeded per host and per boot.
                seed: Some(seed ^ (id << 32) ^ (boot << 48)),
            };
            let node = RunningNode::start_in(config, env).await?;
            // Returns when this boot's Raft has stopped.
            crate::invariants::watch(&node, invariants).await;
            let why = node.failed().await;
            node.abort().await;
            stops
                .lock()
                .map_err(|e| e.to_string())?
                .push((id, turmoil::elapsed(), why));
            Ok(())
        }
    });
}

/// The gateway's client address.
const GATEWAY_ADDR: &str = "gw:7001";

/// Adds the gateway (host `gw`) in front of every node host.
fn add_gateway(sim: &mut turmoil::Sim<'_>, seed: u64) {
    let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    sim.host(GATEWAY, move || {
        let boot = boots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let seeds: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
            let mut args = GatewayArgs::with_defaults("0.0.0.0:7001", "", &seeds);
            args.refresh_ms = 1000;
            let _gw = RunningGateway::start_in(
                args,
                Arc::new(SimNet),
                Some(seed ^ 0x9a7e ^ (boot << 48)),
            )
            .await?;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

/// What a watcher received.
#[derive(Debug, Default)]
struct WatchLog {
    events: Vec<watches::Event>,
    /// The end marker arrived, or the stream failed (`error`).
    done: bool,
    error: Option<String>,
}

/// Watches every key from revision 1 through `endpoints` until the end
/// marker, recording every event.
async fn watch_loop(
    endpoints: Vec<String>,
    seed: u64,
    log: Arc<Mutex<WatchLog>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let c = Client::new_lazy(&endpoints, cfg)?;
    let w = Watch::prefix("")
        .from_revision(1)
        .give_up_after(Duration::from_secs(300));
    let finish = |error: Option<String>| -> Result<(), Box<dyn std::error::Error>> {
        let mut l = log.lock().map_err(|e| e.to_string())?;
        l.done = true;
        l.error = error;
        Ok(())
    };
    // The cluster may not serve yet.
    let mut stream = loop {
        match c.watch(w.clone()).await {
            Ok(s) => break s,
            Err(e) if turmoil::elapsed() > Duration::from_secs(120) => {
                return finish(Some(format!("the watch never started: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    while let Some(batch) = futures::StreamExt::next(&mut stream).await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return finish(Some(format!("the stream failed: {e}"))),
        };
        let mut end = false;
        {
            let mut l = log.lock().map_err(|e| e.to_string())?;
            for e in batch.events.into_iter().filter(|e| checked_key(&e.kv.key)) {
                end |= e.kv.key[..] == *END_KEY;
                l.events.push(watches::Event {
                    revision: batch.revision,
                    put: e.kind == EventKind::Put,
                    key: e.kv.key.to_vec(),
                    value: e.kv.value.to_vec(),
                    create_revision: e.kv.create_revision,
                    mod_revision: e.kv.mod_revision,
                    version: e.kv.version,
                });
            }
        }
        if end {
            return finish(None);
        }
    }
    finish(Some("the stream ended".into()))
}

fn now_nanos() -> u64 {
    u64::try_from(turmoil::elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Keys the watch check covers: the registers and the end marker (the
/// bulk client's `b/` keys are checked only by the replicas' final
/// states being identical).
fn checked_key(key: &[u8]) -> bool {
    !key.starts_with(BULK_PREFIX)
}

/// The bulk client's key space.
const BULK_PREFIX: &[u8] = b"b/";

/// The bulk client: large values (up to the 1 MiB limit) under `b/`, and
/// now and then a prefix delete of them with prev_kv (refused by the
/// leader past 2 MiB of answer) or a transaction of twelve scans over
/// them (refused by every replica alike when its answer passes 24 MiB).
/// Each outcome must be a success, such a refusal, or unknown (a fault);
/// their effect is checked by the replicas converging to identical data.
async fn bulk_loop(opts: Options) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ 0xb01c),
        client_id: Some(1 << 20),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xb01c_0001);
    for n in 0..opts.ops_per_client / 2 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
        let what = rng.random_range(0..10);
        let result = match what {
            0..=6 => {
                let size = rng.random_range(1usize..=1 << 20);
                let key = format!("b/{:02}", rng.random_range(0..8));
                c.put(key, vec![b'0' + (n % 10) as u8; size])
                    .await
                    .map(|_| ())
            }
            7 | 8 => c.delete_full("b/", true, true).await.map(|_| ()),
            _ => {
                let scan = cairn_client::Scan::prefix("b/");
                let scans: Vec<_> = (0..12).map(|_| cairn_client::TxnOp::scan(&scan)).collect();
                c.txn().and_then(scans).commit().await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {}
            Err(Error::InvalidArgument(m)) if m.contains("limit") => {
                tracing::info!(what, "bulk op refused: {m}");
            }
            // A retry of a request applied with an answer too large to
            // keep for retries: it says so rather than applying again.
            Err(Error::Server {
                code: tonic::Code::FailedPrecondition,
                message,
            }) if message.contains("already applied") => {}
            Err(e) if unknown(&e) => {}
            Err(e) => return Err(format!("bulk op {what}: {e}")),
        }
    }
    Ok(())
}

fn encode(v: Value) -> String {
    v.to_string()
}

fn decode(b: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a read returned {b:?}, which no client wrote"))
}

/// Whether an error leaves the operation's outcome unknown (a client
/// gave up) rather than being a bug.
fn unknown(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. } | Error::DeadlineExceeded { .. }
    )
}

async fn client_loop(
    id: u64,
    opts: Options,
    history: Arc<Mutex<Vec<Operation>>>,
) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ (id << 40)),
        client_id: Some(id),
        timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = if opts.gateway && id.is_multiple_of(2) {
        vec![GATEWAY_ADDR.into()]
    } else {
        (1..=NODES).map(|i| format!("n{i}:7001")).collect()
    };
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ (id << 24) ^ 0xc11e);
    let mut seq = 0u64;
    for _ in 0..opts.ops_per_client {
        // Think time spreads the operations over the faults.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let key = rng.random_range(0..opts.keys);
        let k = format!("r/{key}");
        seq += 1;
        let value = (id << 32) | seq;
        let input = match rng.random_range(0..10) {
            0..=2 => Input::Write(Some(value)),
            3 => Input::Write(None),
            4..=6 => Input::Read,
            7 => Input::SerializableRead,
            _ => Input::Cas {
                expect: if rng.random_bool(0.3) {
                    None
                } else {
                    // A value some client may have written.
                    Some((rng.random_range(1..=opts.clients) << 32) | rng.random_range(1..=seq))
                },
                new: Some(value),
            },
        };
        let call = now_nanos();
        let result: Result<Output, Error> = match &input {
            Input::Write(Some(v)) => c.put(&k, encode(*v)).await.map(|_| Output::Done),
            Input::Write(None) => c.delete(&k).await.map(|_| Output::Done),
            Input::Read | Input::SerializableRead => {
                let consistency = if input == Input::Read {
                    Consistency::Linearizable
                } else {
                    Consistency::Serializable
                };
                match c.get_with(&k, consistency).await {
                    Ok(r) => match r.kv {
                        Some(kv) => Ok(Output::Read(Some(decode(&kv.value)?))),
                        None => Ok(Output::Read(None)),
                    },
                    Err(e) => Err(e),
                }
            }
            Input::Cas { expect, new } => {
                let exp = expect.map(encode);
                let new = new.map(encode).unwrap_or_default();
                match c.cas(&k, exp.as_deref().map(str::as_bytes), &new).await {
                    Ok(_) => Ok(Output::Cas(true)),
                    Err(Error::CompareFailed { .. }) => Ok(Output::Cas(false)),
                    Err(e) => Err(e),
                }
            }
        };
        let ret = match result {
            Ok(out) => Some((now_nanos(), out)),
            Err(e) if unknown(&e) => None,
            Err(e) => return Err(format!("client {id}: {input:?} on {k}: {e}")),
        };
        history.lock().map_err(|e| e.to_string())?.push(Operation {
            client: id,
            key,
            call,
            ret,
            input,
        });
    }
    Ok(())
}

/// The members' client addresses as the highest-term leader sees them.
async fn current_members(c: &Client, cfg: &ClientConfig) -> Result<Vec<String>, String> {
    let mut best: Option<(u64, String)> = None;
    for i in 1..=NODES {
        let n = format!("n{i}:7001");
        if let Ok(s) = c.status_of(&n).await {
            if s.role == "leader" && best.as_ref().is_none_or(|(t, _)| s.term > *t) {
                best = Some((s.term, n));
            }
        }
    }
    let (_, leader) = best.ok_or("no leader")?;
    let one = Client::new_lazy([leader.as_str()], cfg.clone()).map_err(|e| e.to_string())?;
    let m = one.members().await.map_err(|e| e.to_string())?;
    Ok(m.members.iter().map(|m| m.client_addr.clone()).collect())
}

/// Waits (60 simulated seconds at most) until every member has applied the
/// same index with a leader known, then reads every pair from each member
/// serializably; they must be equal, and the index unchanged after the
/// reads. Returns the common applied index and the state there.
async fn converge(seed: u64) -> Result<(u64, State), Box<dyn std::error::Error>> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed ^ 0x11fe),
        client_id: Some(u64::MAX),
        ..ClientConfig::default()
    };
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&all, cfg.clone())?;
    // A write through the leader makes every replica's applied index move
    // past whatever the faults left behind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while c.put("liveness", "ok").await.is_err() {
        if tokio::time::Instant::now() > deadline {
            return Err("no write succeeded in the liveness phase".into());
        }
    }
    loop {
        let nodes = current_members(&c, &cfg).await.unwrap_or_else(|e| {
            last = e;
            Vec::new()
        });
        let applied = caught_up(&c, &nodes, &mut last).await;
        if let Some(index) = applied {
            let mut dumps: Vec<State> = Vec::new();
            for n in &nodes {
                dumps.push(dump(n, &cfg).await?);
            }
            if dumps.iter().any(|d| *d != dumps[0]) {
                last = format!("members {nodes:?} differ at applied {index}");
            } else if caught_up(&c, &nodes, &mut last).await == Some(index) {
                // Their watch histories must agree too.
                let mut histories = Vec::new();
                for n in &nodes {
                    histories.push((n, history_of(n, &cfg, index).await?));
                }
                if let Some((n, h)) = histories.iter().find(|(_, h)| *h != histories[0].1) {
                    let (n0, h0) = &histories[0];
                    let at = h0.iter().zip(h.iter()).position(|(x, y)| x != y);
                    return Err(format!(
                        "the watch histories of {n0} and {n} differ: at event {at:?}: {:?} and {:?}",
                        at.and_then(|i| h0.get(i)),
                        at.and_then(|i| h.get(i))
                    )
                    .into());
                }
                return Ok((index, dumps.swap_remove(0)));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("replicas did not converge in 60 s: {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The index every one of `nodes` has applied, if they agree and each
/// knows a leader; otherwise why not, in `why`.
async fn caught_up(c: &Client, nodes: &[String], why: &mut String) -> Option<u64> {
    let mut applied = Vec::new();
    for n in nodes {
        match c.status_of(n).await {
            Ok(s) if s.leader != 0 && s.applied == s.committed => applied.push(s.applied),
            Ok(s) => {
                *why = format!(
                    "{n}: leader {} applied {} committed {}",
                    s.leader, s.applied, s.committed
                );
            }
            Err(e) => *why = format!("{n}: {e}"),
        }
    }
    (!nodes.is_empty() && applied.len() == nodes.len() && applied.iter().all(|a| *a == applied[0]))
        .then(|| applied[0])
}

/// Every pair `node` holds, read serializably.
async fn dump(node: &str, cfg: &ClientConfig) -> Result<State, Box<dyn std::error::Error>> {
    let one = Client::new_lazy([node], cfg.clone())?;
    let mut d = State::new();
    let mut scan =
        Box::pin(one.scan(cairn_client::Scan::all().consistency(Consistency::Serializable)));
    while let Some(kv) = futures::StreamExt::next(&mut scan).await {
        let kv = kv?;
        d.insert(
            kv.key.to_vec(),
            (
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            ),
        );
    }
    Ok(d)
}

/// `node`'s watch history of every key from revision 1 up to `applied`:
/// (revision, key, value, version) per event.
async fn history_of(
    node: &str,
    cfg: &ClientConfig,
    applied: u64,
) -> Result<Vec<(u64, Vec<u8>, Vec<u8>, u64)>, Box<dyn std::error::Error>> {
    let one = Client::new_lazy([node], cfg.clone())?;
    let mut stream = one.watch(Watch::prefix("").from_revision(1)).await?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(
            Duration::from_secs(2),
            futures::StreamExt::next(&mut stream),
        )
        .await;
        match next {
            Ok(Some(batch)) => {
                let batch = batch?;
                if batch.revision > applied {
                    break;
                }
                for e in batch.events {
                    out.push((
                        batch.revision,
                        e.kv.key.to_vec(),
                        e.kv.value.to_vec(),
                        e.kv.version,
                    ));
                }
            }
            // Caught up: nothing more below `applied`.
            Ok(None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// After the liveness phase: writes the end marker and waits (60
/// simulated seconds at most) for every watcher to reach it.
async fn end_watches(seed: u64, watchers: &[Arc<Mutex<WatchLog>>]) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(seed ^ 0xe9d),
        ..ClientConfig::default()
    };
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&all, cfg).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = c.put(END_KEY, "end").await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the end marker could not be written: {e}"));
        }
    }
    loop {
        let mut pending = Vec::new();
        for (i, w) in watchers.iter().enumerate() {
            let w = w.lock().map_err(|e| e.to_string())?;
            if !w.done {
                let last = w.events.last().map_or(0, |e| e.revision);
                pending.push(format!("w{} (last revision {last})", i + 1));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "watchers {} did not reach the end marker in 60 s",
                pending.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The administrator: at random times, hands leadership to another voter,
/// makes a node snapshot now (and purge its log), adds a spare host as a
/// learner and promotes it, or removes a voter while more than three
/// remain. Outcomes (errors included: faults are running) go to `log`.
async fn admin_loop(opts: Options, log: Arc<Mutex<Vec<String>>>) -> Result<(), String> {
    let cfg = ClientConfig {
        net: Arc::new(SimNet),
        seed: Some(opts.seed ^ 0xad),
        client_id: Some(u64::MAX - 1),
        timeout: Duration::from_secs(20),
        attempt_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let endpoints: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
    let c = Client::new_lazy(&endpoints, cfg).map_err(|e| e.to_string())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xad);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..3000))).await;
        let mut action = rng.random_range(0..4);
        if action == 0 && !opts.transfers {
            action = 1;
        }
        let what = match action {
            0 => match c.transfer_leader(0).await {
                Ok(to) => format!("transfer leader: now {to}"),
                Err(e) => format!("transfer leader: {e}"),
            },
            1 => {
                let n = rng.random_range(1..=NODES);
                match c.snapshot_on(&format!("n{n}:7001")).await {
                    Ok(i) => format!("snapshot n{n}: at {i}"),
                    Err(e) => format!("snapshot n{n}: {e}"),
                }
            }
            action => {
                let m = match c.members().await {
                    Ok(m) => m,
                    Err(e) => {
                        push(&log, format!("members: {e}"))?;
                        continue;
                    }
                };
                let voters: Vec<u64> = m
                    .members
                    .iter()
                    .filter(|m| !m.is_learner)
                    .map(|m| m.id)
                    .collect();
                let spare: Vec<u64> = (1..=NODES).filter(|i| !voters.contains(i)).collect();
                if action == 2 && !spare.is_empty() {
                    let id = spare[rng.random_range(0..spare.len())];
                    let (ca, pa) = (format!("n{id}:7001"), format!("n{id}:7101"));
                    match c.add_learner(id, &ca, &pa, true).await {
                        Ok(_) => match c.promote(&[id]).await {
                            Ok(_) => format!("add n{id}: voter"),
                            Err(e) => format!("add n{id}: learner; promote: {e}"),
                        },
                        Err(e) => format!("add n{id}: {e}"),
                    }
                } else if voters.len() > 3 {
                    let id = voters[rng.random_range(0..voters.len())];
                    match c.remove_member(id).await {
                        Ok(_) => format!("remove n{id}: done"),
                        Err(e) => format!("remove n{id}: {e}"),
                    }
                } else {
                    continue;
                }
            }
        };
        push(&log, what)?;
    }
    Ok(())
}

fn push(log: &Arc<Mutex<Vec<String>>>, what: String) -> Result<(), String> {
    let t = turmoil::elapsed();
    log.lock()
        .map_err(|e| e.to_string())?
        .push(format!("{t:?} admin {what}"));
    Ok(())
}

/// A simulation being run: the hosts and what they record.
struct World<'a> {
    sim: turmoil::Sim<'a>,
    disks: Vec<Arc<MemFs>>,
    invariants: Arc<Mutex<Invariants>>,
    stops: Stops,
    watchers: Vec<Arc<Mutex<WatchLog>>>,
    admin_log: Arc<Mutex<Vec<String>>>,
    history: Arc<Mutex<Vec<Operation>>>,
    /// Faults applied and healed, in order.
    faults: Vec<String>,
    /// Violations seen while the run went on.
    violations: Vec<String>,
}

/// Runs one simulation and checks its history.
pub fn run(opts: &Options) -> Result<Report, String> {
    let mut world = build(opts);
    run_nemesis(&mut world, opts)?;
    let converged = liveness(&mut world, opts)?;
    report(world, opts, converged)
}

/// The hosts of a run: the nodes (each with its disk), the gateway, the
/// watchers, the administrator and the clients.
fn build(opts: &Options) -> World<'static> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .max_message_latency(NORMAL_LATENCY)
        .rng_seed(opts.seed)
        .build();
    let disks: Vec<Arc<MemFs>> = (0..NODES).map(|_| Arc::new(MemFs::new())).collect();
    let invariants = Arc::new(Mutex::new(Invariants::default()));
    let stops: Stops = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=NODES {
        let disk = disks[(id - 1) as usize].clone();
        add_node(
            &mut sim,
            id,
            opts.seed,
            disk,
            invariants.clone(),
            stops.clone(),
        );
    }
    if opts.gateway {
        add_gateway(&mut sim, opts.seed);
    }
    // Watchers: one straight to the nodes, one through the gateway.
    let mut watchers = Vec::new();
    let mut routes: Vec<Vec<String>> = vec![(1..=NODES).map(|i| format!("n{i}:7001")).collect()];
    if opts.gateway {
        routes.push(vec![GATEWAY_ADDR.into()]);
    }
    for (i, endpoints) in routes.into_iter().enumerate() {
        let log = Arc::new(Mutex::new(WatchLog::default()));
        watchers.push(log.clone());
        let seed = opts.seed ^ 0x3a7c ^ ((i as u64) << 40);
        // A host, not a client: the run does not wait for it to finish.
        sim.host(format!("w{}", i + 1), move || {
            watch_loop(endpoints.clone(), seed, log.clone())
        });
    }
    let admin_log = Arc::new(Mutex::new(Vec::new()));
    if opts.faults && opts.admin {
        let (o, log) = (opts.clone(), admin_log.clone());
        sim.client("admin", async move {
            admin_loop(o, log).await.map_err(|e| e.into())
        });
    }
    if opts.bulk {
        let o = opts.clone();
        sim.client(
            "bulk",
            async move { bulk_loop(o).await.map_err(|e| e.into()) },
        );
    }
    let history = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=opts.clients {
        let (o, h) = (opts.clone(), history.clone());
        sim.client(format!("c{id}"), async move {
            client_loop(id, o, h).await.map_err(|e| e.into())
        });
    }
    World {
        sim,
        disks,
        invariants,
        stops,
        watchers,
        admin_log,
        history,
        faults: Vec::new(),
        violations: Vec::new(),
    }
}

/// Steps the simulation until the clients are done, applying a fault
/// every 0.5-2.5 simulated seconds and healing it before the next; a
/// node whose Raft log failed to write must stop within 500 ms.
fn run_nemesis(w: &mut World<'_>, opts: &Options) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x7e5e);
    let mut next_at = Duration::from_secs(1);
    let mut active: Option<(Fault, usize)> = None;
    // When the active disk fault first failed a write to a Raft log.
    let mut log_failed_at: Option<Duration> = None;
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    loop {
        let done = w.sim.step().map_err(|e| format!("simulation: {e}"))?;
        if done {
            break;
        }
        if let Some((Fault::Disk(h, _), _)) = &active {
            if log_failed_at.is_none() && raft_log_failed(&w.disks, h) {
                log_failed_at = Some(w.sim.elapsed());
            }
        }
        if !opts.faults || w.sim.elapsed() < next_at {
            continue;
        }
        let t = w.sim.elapsed();
        next_at = t + Duration::from_millis(rng.random_range(500..2500));
        match active.take() {
            Some((fault, stops_before)) => {
                if let (Fault::Disk(h, _), Some(at)) = (&fault, log_failed_at.take()) {
                    // A node must stop at its first failed log write: it
                    // cannot know what reached the disk.
                    if t - at >= Duration::from_millis(500) && !stopped(&w.stops, h, stops_before)?
                    {
                        w.violations.push(format!(
                            "{h} went on for {:?} after its Raft log failed to write",
                            t - at
                        ));
                    }
                }
                fault.heal(&mut w.sim, &all, &w.disks, rng.random());
                w.faults.push(format!("{t:?} heal {}", fault.describe()));
            }
            None => {
                // The leader as the invariant checker last saw it: the
                // run is deterministic, so this is the same in a replay.
                let leader = w
                    .invariants
                    .lock()
                    .map_err(|e| e.to_string())?
                    .latest_leader()
                    .map(|id| format!("n{id}"));
                if let Some(fault) = next_fault(&mut rng, opts, &all, leader.as_ref()) {
                    fault.apply(&mut w.sim, &all, &w.disks, rng.random());
                    w.faults.push(format!("{t:?} {}", fault.describe()));
                    let n = w.stops.lock().map_err(|e| e.to_string())?.len();
                    active = Some((fault, n));
                }
            }
        }
    }
    if let Some((fault, _)) = active.take() {
        fault.heal(&mut w.sim, &all, &w.disks, rng.random());
        w.faults.push(format!("{:?} heal all", w.sim.elapsed()));
    }
    Ok(())
}

/// Whether a write to host `h`'s Raft log has failed on its disk.
fn raft_log_failed(disks: &[Arc<MemFs>], h: &str) -> bool {
    disk_of(disks, h).is_some_and(|d| {
        d.failed()
            .iter()
            .any(|p| p.starts_with(format!("/data/{h}/raft")))
    })
}

/// Whether `host` stopped on a storage error after the first `since`
/// stops.
fn stopped(stops: &Stops, host: &str, since: usize) -> Result<bool, String> {
    Ok(stops
        .lock()
        .map_err(|e| e.to_string())?
        .iter()
        .skip(since)
        .any(|(id, ..)| format!("n{id}") == host))
}

/// The liveness phase: every fault healed, the replicas must converge to
/// the same state and serve it; then the watchers must reach the end.
/// The applied index and state they converged to.
fn liveness(w: &mut World<'_>, opts: &Options) -> Result<(u64, State), String> {
    let converged = Arc::new(Mutex::new(None));
    let out = converged.clone();
    let seed = opts.seed;
    let ends = w.watchers.clone();
    w.sim.client("verify", async move {
        let state = converge(seed).await?;
        *out.lock().map_err(|e| e.to_string())? = Some(state);
        end_watches(seed, &ends).await?;
        Ok(())
    });
    while !w
        .sim
        .step()
        .map_err(|e| format!("seed {}: liveness: {e}", opts.seed))?
    {}
    let state = converged
        .lock()
        .map_err(|e| e.to_string())?
        .take()
        .ok_or("the liveness phase did not converge")?;
    Ok(state)
}

/// Checks everything the run recorded: the invariants, each watch stream
/// (and that both are identical), and the history; the run's report.
fn report(w: World<'_>, opts: &Options, converged: (u64, State)) -> Result<Report, String> {
    let seed = opts.seed;
    let history = w.history.lock().map_err(|e| e.to_string())?.clone();
    let mut faults = w.faults;
    faults.extend(
        w.admin_log
            .lock()
            .map_err(|e| e.to_string())?
            .iter()
            .cloned(),
    );
    for (id, at, why) in w.stops.lock().map_err(|e| e.to_string())?.iter() {
        faults.push(format!("{at:?} n{id} stopped: {why}"));
    }
    let inv = w.invariants.lock().map_err(|e| e.to_string())?;
    let mut violations = w.violations;
    violations.extend(inv.violations.iter().cloned());
    if !violations.is_empty() {
        return Err(format!(
            "seed {seed}: violations: {violations:?}\nfaults: {faults:#?}"
        ));
    }
    let (leaders, applied) = inv.counts();
    let invariants = (inv.observations, leaders, applied);
    drop(inv);
    let (applied, state) = converged;
    let checked_state: State = state.into_iter().filter(|(k, _)| checked_key(k)).collect();
    let mut watched = Vec::new();
    let mut streams: Vec<Vec<watches::Event>> = Vec::new();
    for (i, log) in w.watchers.iter().enumerate() {
        let log = log.lock().map_err(|e| e.to_string())?;
        let verdict = match &log.error {
            Some(e) => Err(e.clone()),
            None => watches::check(&log.events, &history, &checked_state, applied),
        };
        if let Err(e) = verdict {
            return Err(format!(
                "seed {seed}: watcher w{}: {e}\nfaults: {faults:#?}",
                i + 1
            ));
        }
        watched.push(log.events.len());
        streams.push(log.events.clone());
    }
    compare_streams(&streams).map_err(|e| format!("seed {seed}: {e}\nfaults: {faults:#?}"))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{history:?}{faults:?}{streams:?}"), &mut h);
    let report = Report {
        trace_hash: std::hash::Hasher::finish(&h),
        elapsed: w.sim.elapsed(),
        history,
        faults,
        invariants,
        watched,
    };
    match check(&report.history, 1 << 22) {
        Verdict::Ok => Ok(report),
        v => Err(format!("seed {seed}: {v:?}\nfaults: {:#?}", report.faults)),
    }
}

/// Every watcher must have received the same stream as the first.
fn compare_streams(streams: &[Vec<watches::Event>]) -> Result<(), String> {
    let Some(other) = streams.iter().position(|s| *s != streams[0]) else {
        return Ok(());
    };
    let (a, b) = (&streams[0], &streams[other]);
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    if std::env::var_os("SIM_PRINT_STREAMS").is_some() {
        for (x, y) in a.iter().zip(b) {
            eprintln!(
                "{:>4} {:>5} {} {} | {:>4} {:>5} {} {}",
                x.revision,
                String::from_utf8_lossy(&x.key),
                x.version,
                String::from_utf8_lossy(&x.value),
                y.revision,
                String::from_utf8_lossy(&y.key),
                y.version,
                String::from_utf8_lossy(&y.value)
            );
        }
    }
    Err(format!(
        "watchers w1 and w{} received different streams: {} and {} events, first difference at event {at}: {:?} and {:?}",
        other + 1,
        a.len(),
        b.len(),
        a.get(at),
        b.get(at)
    ))
}
