//! One simulated run: three founding nodes and two spare hosts on turmoil
//! hosts with simulated disks, clients issuing register operations through
//! the real client library, a nemesis isolating nodes, splitting the
//! hosts into a minority and a majority, cutting a node's outgoing links
//! only, holding its messages back (they arrive late), and crashing nodes
//! (a crash loses what was not synced), an administrator transferring
//! leadership, triggering snapshots and growing and shrinking the cluster
//! between 3 and 5 voters, then a liveness phase with every fault healed in
//! which the members must converge to identical data. The recorded history
//! goes to the [`checker`](crate::checker); Raft's invariants are checked
//! while the run goes on ([`invariants`](crate::invariants)).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, Error};
use cairn_node::lsm::executor::InlineExecutor;
use cairn_node::lsm::fs::MemFs;
use cairn_node::server::config::NodeArgs;
use cairn_node::server::{NodeEnv, RunningNode};
use rand::{Rng, SeedableRng};

use crate::checker::{check, Input, Operation, Output, Value, Verdict};
use crate::invariants::Invariants;
use crate::net::SimNet;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seeds everything: the simulator, the nodes, the clients, the nemesis.
    pub seed: u64,
    /// Client hosts.
    pub clients: u64,
    /// Operations per client.
    pub ops_per_client: u64,
    /// Keys the clients share (a small set makes conflicts likely).
    pub keys: u64,
    /// Whether the nemesis runs.
    pub faults: bool,
    /// Which faults: crashes (with the loss of unsynced data) and network
    /// faults (isolation, minority/majority split, one-way cut, held
    /// messages).
    pub crashes: bool,
    /// See `crashes`.
    pub partitions: bool,
    /// Whether the administrator runs (leader transfers, snapshots,
    /// membership changes with the two spare hosts).
    pub admin: bool,
    /// Whether the administrator transfers leadership. Runs with leader
    /// transfers are checked like any other but do not yet replay
    /// identically in another process: the leader's transfer message to
    /// its followers completes in a different order from one process to
    /// the next (seen in openraft's own logs; the cause is not found).
    pub transfers: bool,
}

impl Options {
    /// The default run for `seed`.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            clients: 3,
            ops_per_client: 40,
            keys: 3,
            faults: true,
            crashes: true,
            partitions: true,
            admin: true,
            transfers: true,
        }
    }
}

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
    /// Raft invariants: metric changes checked, terms with a leader seen,
    /// log indexes seen applied.
    pub invariants: (u64, usize, usize),
}

impl Report {
    /// One line about the run, `NAME VALUE` pairs: SEED, TRACE (the trace
    /// hash), OPS, UNKNOWN (operations with an unknown outcome), FAULTS
    /// (faults and administrative actions), SIMSECS, ADDS, REMOVES,
    /// TRANSFERS, SNAPSHOTS (administrative actions that succeeded),
    /// CHECKS (Raft invariant checks), TERMS (terms with a leader seen).
    pub fn summary(&self, seed: u64) -> String {
        let admin = |what: &str, ok: &str| {
            self.faults
                .iter()
                .filter(|f| f.contains(what) && f.contains(ok))
                .count()
        };
        format!(
            "SEED {seed} TRACE {} OPS {} UNKNOWN {} FAULTS {} SIMSECS {} ADDS {} REMOVES {} TRANSFERS {} SNAPSHOTS {} CHECKS {} TERMS {}",
            self.trace_hash,
            self.history.len(),
            self.history.iter().filter(|o| o.ret.is_none()).count(),
            self.faults.len(),
            self.elapsed.as_secs(),
            admin("admin add", ": voter"),
            admin("admin remove", ": done"),
            admin("admin transfer leader", ": now"),
            admin("admin snapshot", ": at"),
            self.invariants.0,
            self.invariants.1,
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

/// Adds node `id` (host `n{id}`, client port 7001, peer port 7101), on
/// disk `fs`, its Raft seeded from `seed`, the host and the boot; ids up to
/// 3 found the cluster, higher ids wait to be added. Every boot's Raft
/// metrics are checked against `invariants`.
pub fn add_node(
    sim: &mut turmoil::Sim<'_>,
    id: u64,
    seed: u64,
    fs: Arc<MemFs>,
    invariants: Arc<Mutex<Invariants>>,
) {
    let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    sim.host(format!("n{id}"), move || {
        let fs = fs.clone();
        let invariants = invariants.clone();
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
            crate::invariants::watch(&node, invariants).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

fn now_nanos() -> u64 {
    u64::try_from(turmoil::elapsed().as_nanos()).unwrap_or(u64::MAX)
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
    let endpoints: Vec<String> = (1..=NODES).map(|i| format!("n{i}:7001")).collect();
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

/// One replica's data: (key, value, create, mod revision, version).
type Dump = Vec<(Vec<u8>, Vec<u8>, u64, u64, u64)>;

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
/// serializably; they must be equal. Returns the common applied index.
async fn converge(seed: u64) -> Result<u64, Box<dyn std::error::Error>> {
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
        let mut applied = Vec::new();
        for n in &nodes {
            match c.status_of(n).await {
                Ok(s) if s.leader != 0 && s.applied == s.committed => applied.push(s.applied),
                Ok(s) => {
                    last = format!(
                        "{n}: leader {} applied {} committed {}",
                        s.leader, s.applied, s.committed
                    )
                }
                Err(e) => last = format!("{n}: {e}"),
            }
        }
        if !nodes.is_empty()
            && applied.len() == nodes.len()
            && applied.iter().all(|a| *a == applied[0])
        {
            let mut dumps: Vec<Dump> = Vec::new();
            for n in &nodes {
                let one = Client::new_lazy([n.as_str()], cfg.clone())?;
                let mut d = Dump::new();
                let mut scan = Box::pin(
                    one.scan(cairn_client::Scan::all().consistency(Consistency::Serializable)),
                );
                while let Some(kv) = futures::StreamExt::next(&mut scan).await {
                    let kv = kv?;
                    d.push((
                        kv.key.to_vec(),
                        kv.value.to_vec(),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    ));
                }
                dumps.push(d);
            }
            if dumps.iter().all(|d| *d == dumps[0]) {
                return Ok(applied[0]);
            }
            last = format!("members {nodes:?} differ at applied {}", applied[0]);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("replicas did not converge in 60 s: {last}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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

/// One fault at a time.
#[derive(Debug, Clone)]
enum Fault {
    /// Hosts crashed (their unsynced data lost).
    Crash(Vec<String>),
    /// Every link between the two sides cut both ways (one host alone, or
    /// a random minority/majority split).
    Split(Vec<String>, Vec<String>),
    /// A host's outgoing links cut: it hears the others, they do not hear
    /// it.
    Mute(String),
    /// A host's links held: messages wait and arrive late, at the heal.
    Hold(String),
}

impl Fault {
    fn describe(&self) -> String {
        match self {
            Fault::Crash(h) => format!("crash {}", h.join(",")),
            Fault::Split(a, b) => format!("split {} | {}", a.join(","), b.join(",")),
            Fault::Mute(h) => format!("mute {h} (one-way)"),
            Fault::Hold(h) => format!("hold {h}"),
        }
    }

    fn apply(&self, sim: &mut turmoil::Sim<'_>, all: &[String]) {
        match self {
            Fault::Crash(hosts) => {
                for h in hosts {
                    sim.crash(h.as_str());
                }
            }
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        sim.partition(x.as_str(), y.as_str());
                    }
                }
            }
            Fault::Mute(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.partition_oneway(h.as_str(), o.as_str());
                }
            }
            Fault::Hold(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.hold(h.as_str(), o.as_str());
                }
            }
        }
    }

    /// Ends the fault: restarts crashed hosts, reconnects cut links,
    /// releases held messages.
    fn heal(&self, sim: &mut turmoil::Sim<'_>, all: &[String]) {
        match self {
            Fault::Crash(hosts) => {
                for h in hosts {
                    sim.bounce(h.as_str());
                }
            }
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        sim.repair(x.as_str(), y.as_str());
                    }
                }
            }
            Fault::Mute(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.repair_oneway(h.as_str(), o.as_str());
                }
            }
            Fault::Hold(h) => {
                for o in all.iter().filter(|o| *o != h) {
                    sim.release(h.as_str(), o.as_str());
                }
            }
        }
    }
}

/// A partition-type fault chosen by `rng`.
fn network_fault(rng: &mut impl Rng, all: &[String]) -> Fault {
    let host = all[rng.random_range(0..all.len())].clone();
    match rng.random_range(0..4) {
        0 => {
            let rest = all.iter().filter(|o| **o != host).cloned().collect();
            Fault::Split(vec![host], rest)
        }
        1 => {
            // A random minority (one or two hosts) against the rest.
            let mut hosts = all.to_vec();
            let mut minority = Vec::new();
            for _ in 0..rng.random_range(1..=2) {
                minority.push(hosts.remove(rng.random_range(0..hosts.len())));
            }
            Fault::Split(minority, hosts)
        }
        2 => Fault::Mute(host),
        _ => Fault::Hold(host),
    }
}

/// Runs one simulation and checks its history.
pub fn run(opts: &Options) -> Result<Report, String> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .rng_seed(opts.seed)
        .build();
    let disks: Vec<Arc<MemFs>> = (0..NODES).map(|_| Arc::new(MemFs::new())).collect();
    let invariants = Arc::new(Mutex::new(Invariants::default()));
    for id in 1..=NODES {
        let disk = disks[(id - 1) as usize].clone();
        add_node(&mut sim, id, opts.seed, disk, invariants.clone());
    }
    let admin_log = Arc::new(Mutex::new(Vec::new()));
    if opts.faults && opts.admin {
        let (o, log) = (opts.clone(), admin_log.clone());
        sim.client("admin", async move {
            admin_loop(o, log).await.map_err(|e| e.into())
        });
    }
    let history = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=opts.clients {
        let (o, h) = (opts.clone(), history.clone());
        sim.client(format!("c{id}"), async move {
            client_loop(id, o, h).await.map_err(|e| e.into())
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0x7e5e);
    let mut faults = Vec::new();
    // One fault at a time, healed before the next: a node isolated, a
    // node crashed, or (rarely) every node crashed at once (a power loss).
    let mut next_fault = Duration::from_secs(1);
    let mut active: Option<Fault> = None;
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    loop {
        let done = sim.step().map_err(|e| format!("simulation: {e}"))?;
        if done {
            break;
        }
        if !opts.faults || sim.elapsed() < next_fault {
            continue;
        }
        let t = sim.elapsed();
        next_fault = t + Duration::from_millis(rng.random_range(500..2500));
        match active.take() {
            Some(fault) => {
                fault.heal(&mut sim, &all);
                faults.push(format!("{t:?} heal {}", fault.describe()));
            }
            None => {
                let crash = match (opts.crashes, opts.partitions) {
                    (true, true) => rng.random_bool(0.5),
                    (c, _) => c,
                };
                let (fault, crashed) = if crash {
                    let hosts: Vec<u64> = if rng.random_bool(0.15) {
                        (1..=NODES).collect()
                    } else {
                        vec![rng.random_range(1..=NODES)]
                    };
                    let names = hosts.iter().map(|h| format!("n{h}")).collect();
                    (Fault::Crash(names), hosts)
                } else {
                    (network_fault(&mut rng, &all), Vec::new())
                };
                fault.apply(&mut sim, &all);
                // The disks lose their unsynced data after the hosts are
                // gone: whatever the dying hosts' destructors wrote is lost
                // too, as in a power cut.
                for &h in &crashed {
                    disks[(h - 1) as usize].crash(true, rng.random());
                }
                faults.push(format!("{t:?} {}", fault.describe()));
                active = Some(fault);
            }
        }
    }
    // The liveness phase: every fault healed, the replicas must converge
    // to the same state and serve it.
    if let Some(fault) = active.take() {
        fault.heal(&mut sim, &all);
        faults.push(format!("{:?} heal all", sim.elapsed()));
    }
    let converged = Arc::new(Mutex::new(None));
    let out = converged.clone();
    let seed = opts.seed;
    sim.client("verify", async move {
        let state = converge(seed).await?;
        *out.lock().map_err(|e| e.to_string())? = Some(state);
        Ok(())
    });
    while !sim
        .step()
        .map_err(|e| format!("seed {}: liveness: {e}", opts.seed))?
    {}
    let history = history.lock().map_err(|e| e.to_string())?.clone();
    faults.extend(admin_log.lock().map_err(|e| e.to_string())?.iter().cloned());
    let inv = invariants.lock().map_err(|e| e.to_string())?;
    if !inv.violations.is_empty() {
        return Err(format!(
            "seed {}: Raft invariants violated: {:?}\nfaults: {faults:#?}",
            opts.seed, inv.violations
        ));
    }
    let (leaders, applied) = inv.counts();
    let invariants = (inv.observations, leaders, applied);
    drop(inv);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{history:?}{faults:?}"), &mut h);
    let report = Report {
        trace_hash: std::hash::Hasher::finish(&h),
        elapsed: sim.elapsed(),
        history,
        faults,
        invariants,
    };
    match check(&report.history, 1 << 22) {
        Verdict::Ok => Ok(report),
        v => Err(format!(
            "seed {}: {v:?}\nfaults: {:#?}",
            opts.seed, report.faults
        )),
    }
}
