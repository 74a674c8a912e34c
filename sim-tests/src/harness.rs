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

use cairn_io::{InlineExecutor, MemFs};
use cairn_node::gateway::{GatewayArgs, RunningGateway};
use cairn_node::server::config::NodeArgs;
use cairn_node::server::{NodeEnv, RunningNode};
use rand::{Rng, SeedableRng};

use crate::checker::{check, Operation, Verdict};
use crate::converge::{converge, end_watches};
use crate::invariants::Invariants;
use crate::nemesis::{disk_of, next_fault, Fault, NORMAL_LATENCY};
use crate::net::SimNet;
use crate::options::{FOUNDERS, GATEWAY, GATEWAY_ADDR, NODES};
use crate::watches::{self, State};
use crate::workload::{admin_loop, bulk_loop, checked_key, client_loop, watch_loop, WatchLog};

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

fn initial_cluster() -> String {
    (1..=FOUNDERS)
        .map(|i| format!("{i}=n{i}:7001/n{i}:7101"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Nodes that stopped by themselves (their Raft hit a storage error), or
/// refused to start: (node id, simulated time, why).
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
    refusals: Stops,
) {
    let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    sim.host(format!("n{id}"), move || {
        let fs = fs.clone();
        let invariants = invariants.clone();
        let stops = stops.clone();
        let refusals = refusals.clone();
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
                // Room for a disk that fills up (the simulated disks fill
                // within 256 KiB and hold values of up to 1 MiB).
                reserve_bytes: Some(4 << 20),
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
            let node = match RunningNode::start_in(config, env).await {
                Ok(node) => node,
                Err(e) => {
                    // A node that refuses to start (its storage cannot be
                    // trusted) stays down until it is replaced.
                    invariants.lock().map_err(|e| e.to_string())?.down(id);
                    refusals.lock().map_err(|e| e.to_string())?.push((
                        id,
                        turmoil::elapsed(),
                        e.to_string(),
                    ));
                    std::future::pending::<()>().await;
                    return Ok(());
                }
            };
            // Until this boot's Raft stops, or the node stops serving on
            // corruption a read found (the `cairn` process exits then).
            let why = tokio::select! {
                () = crate::invariants::watch(&node, invariants.clone()) => node.failed().await,
                why = node.failed() => {
                    invariants.lock().map_err(|e| e.to_string())?.down(id);
                    why
                }
            };
            node.abort().await;
            stops
                .lock()
                .map_err(|e| e.to_string())?
                .push((id, turmoil::elapsed(), why));
            Ok(())
        }
    });
}

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

/// A simulation being run: the hosts and what they record.
struct World<'a> {
    sim: turmoil::Sim<'a>,
    disks: Vec<Arc<MemFs>>,
    invariants: Arc<Mutex<Invariants>>,
    stops: Stops,
    /// Boots that refused to start.
    refusals: Stops,
    /// Refusals and stops the operator has handled: (node, when).
    replaced: std::collections::BTreeSet<(u64, Duration)>,
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
    let converged = match liveness(&mut world, opts) {
        Ok(c) => c,
        Err(e) => {
            let mut faults = world.faults.clone();
            faults.extend(
                world
                    .admin_log
                    .lock()
                    .map_err(|e| e.to_string())?
                    .iter()
                    .cloned(),
            );
            for (kind, list) in [
                ("stopped", &world.stops),
                ("refused to start", &world.refusals),
            ] {
                for (id, at, why) in list.lock().map_err(|e| e.to_string())?.iter() {
                    faults.push(format!("{at:?} n{id} {kind}: {why}"));
                }
            }
            let inv = world.invariants.lock().map_err(|e| e.to_string())?;
            return Err(format!(
                "{e}\nfaults: {faults:#?}\nvoting (voters, ready): {:?}\nlast seen: {:#?}",
                inv.voting, inv.last_seen
            ));
        }
    };
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
    let refusals: Stops = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=NODES {
        let disk = disks[(id - 1) as usize].clone();
        add_node(
            &mut sim,
            id,
            opts.seed,
            disk,
            invariants.clone(),
            stops.clone(),
            refusals.clone(),
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
        refusals,
        replaced: std::collections::BTreeSet::new(),
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
        if let Some((Fault::Disk(h, None), _)) = &active {
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
                if let (Fault::Disk(h, None), Some(at)) = (&fault, log_failed_at.take()) {
                    // A node must stop at its first failed log fsync: it
                    // cannot know what reached the disk.
                    if t - at >= Duration::from_millis(500) && !stopped(&w.stops, h, stops_before)?
                    {
                        w.violations.push(format!(
                            "{h} went on for {:?} after its Raft log failed to write",
                            t - at
                        ));
                    }
                }
                let inv = w.invariants.clone();
                let may_lose_disk = |h: &str| may_lose_disk(&inv, h);
                let next = fault.heal(&mut w.sim, &all, &w.disks, rng.random(), &may_lose_disk);
                w.faults.push(format!("{t:?} heal {}", fault.describe()));
                if let Some(next) = next {
                    let what = next.describe();
                    active = Some(started(w, next, what, t)?);
                }
            }
            None => {
                // The leader as the invariant checker last saw it, and its
                // voters: the run is deterministic, so this is the same in
                // a replay.
                let (leader, voters) = {
                    let inv = w.invariants.lock().map_err(|e| e.to_string())?;
                    let leader = inv.latest_leader();
                    let voters = leader.map_or_else(Vec::new, |l| inv.voters_seen_by(l));
                    (
                        leader.map(|id| format!("n{id}")),
                        voters.iter().map(|id| format!("n{id}")).collect::<Vec<_>>(),
                    )
                };
                let inv = w.invariants.clone();
                let may_lose_disk = |h: &str| may_lose_disk(&inv, h);
                let fault = match replacement(w)? {
                    Some(h) => Some(Fault::Replace(h)),
                    None => next_fault(
                        &mut rng,
                        opts,
                        &all,
                        leader.as_ref(),
                        &voters,
                        &may_lose_disk,
                    ),
                };
                if let Some(fault) = fault {
                    let what = fault.apply(&mut w.sim, &all, &w.disks, rng.random());
                    active = Some(started(w, fault, what, t)?);
                }
            }
        }
    }
    let mut last = active.take().map(|(f, _)| f);
    while let Some(fault) = last {
        // The last fault ends here, and its second step at once.
        last = fault.heal(&mut w.sim, &all, &w.disks, rng.random(), &|_| false);
        w.faults.push(format!("{:?} heal all", w.sim.elapsed()));
    }
    replace_the_rest(w, &all)
}

/// Records `fault`, applied at `t` (`what` it did): the active fault,
/// with the count of stops before it.
fn started(
    w: &mut World<'_>,
    fault: Fault,
    what: String,
    t: Duration,
) -> Result<(Fault, usize), String> {
    note_lost_disk(w, &fault)?;
    w.faults.push(format!("{t:?} {what}"));
    let n = w.stops.lock().map_err(|e| e.to_string())?.len();
    Ok((fault, n))
}

/// Whether host `h` may lose its disk: every other voter can vote.
fn may_lose_disk(inv: &Mutex<Invariants>, h: &str) -> bool {
    let id = h.strip_prefix('n').and_then(|i| i.parse().ok());
    id.is_some_and(|id| inv.lock().is_ok_and(|i| i.others_ready(id)))
}

/// Refusals to start and stops on corruption the operator has not
/// handled yet: (node, when).
fn waiting(w: &World<'_>) -> Result<Vec<(u64, Duration)>, String> {
    let refused = w.refusals.lock().map_err(|e| e.to_string())?.clone();
    let stopped = w.stops.lock().map_err(|e| e.to_string())?.clone();
    let corrupt = stopped
        .into_iter()
        .filter(|(_, _, why)| why.contains("orrupt") || why.contains("checksum"));
    Ok(refused
        .into_iter()
        .chain(corrupt)
        .map(|(id, at, _)| (id, at))
        .filter(|key| !w.replaced.contains(key))
        .collect())
}

/// A node the operator should replace now, once every other voter can
/// vote (replacing two at once could lose what only they held).
fn replacement(w: &mut World<'_>) -> Result<Option<String>, String> {
    for key in waiting(w)? {
        let h = format!("n{}", key.0);
        if may_lose_disk(&w.invariants, &h) {
            w.replaced.insert(key);
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// After the last fault: replaces every node still waiting for it, one at
/// a time, letting the simulation run until the others can vote.
fn replace_the_rest(w: &mut World<'_>, all: &[String]) -> Result<(), String> {
    let deadline = w.sim.elapsed() + Duration::from_secs(120);
    loop {
        if replace_one(w, all)? {
            continue;
        }
        if waiting(w)?.is_empty() || w.sim.elapsed() > deadline {
            return Ok(());
        }
        if w.sim.step().map_err(|e| format!("simulation: {e}"))? {
            return Ok(());
        }
    }
}

/// Replaces one node waiting for it, if the others can do without it.
fn replace_one(w: &mut World<'_>, all: &[String]) -> Result<bool, String> {
    let Some(h) = replacement(w)? else {
        return Ok(false);
    };
    let fault = Fault::Replace(h);
    let what = fault.apply(&mut w.sim, all, &w.disks, 0);
    note_lost_disk(w, &fault)?;
    w.faults.push(format!("{:?} {what}", w.sim.elapsed()));
    Ok(true)
}

/// Tells the invariants that a fault took a node down, or its disk away.
fn note_lost_disk(w: &World<'_>, fault: &Fault) -> Result<(), String> {
    let mut inv = w.invariants.lock().map_err(|e| e.to_string())?;
    let id = |h: &str| h.strip_prefix('n').and_then(|i| i.parse().ok());
    match fault {
        Fault::Wipe(h, _) | Fault::Replace(h) => {
            if let Some(id) = id(h) {
                inv.lost_disk(id);
            }
        }
        Fault::Flip(h, ..) => {
            if let Some(id) = id(h) {
                inv.down(id);
            }
        }
        _ => {}
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
        // A read may find a node's flipped bit only now: that node stops,
        // the operator replaces it, and the check runs again.
        let mut attempt = 0;
        let state = loop {
            attempt += 1;
            match converge(seed).await {
                Ok(state) => break state,
                Err(e) if attempt < 4 && e.to_string().contains("stopped serving") => {
                    tracing::info!(error = %e, "a node stopped on corruption; checking again");
                    tokio::time::sleep(Duration::from_secs(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        *out.lock().map_err(|e| e.to_string())? = Some(state);
        end_watches(seed, &ends).await?;
        Ok(())
    });
    let all: Vec<String> = (1..=NODES).map(|i| format!("n{i}")).collect();
    let mut look_at = w.sim.elapsed();
    while !w
        .sim
        .step()
        .map_err(|e| format!("seed {}: liveness: {e}", opts.seed))?
    {
        if w.sim.elapsed() >= look_at {
            look_at = w.sim.elapsed() + Duration::from_secs(1);
            replace_one(w, &all)?;
        }
    }
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
