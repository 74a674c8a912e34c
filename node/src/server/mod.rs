//! The node process: gRPC services over the Raft group, health, metrics,
//! configuration and shutdown.
//!
//! - [`config`]: flags, environment and TOML.
//! - [`kv`]: the `cairn.kv.v1.KV` service.
//! - [`cluster`]: the `cairn.cluster.v1.Cluster` service.
//! - [`peer`]: `cairn.raft.v1.Raft`, the internal transport's server side.
//! - [`http`]: /metrics, /healthz, /readyz.
//! - [`errors`]: failures to gRPC statuses.
//! - [`reads`]: linearizable reads sharing ReadIndex rounds.
//! - [`batch`]: `KV.Batch`, many calls over one stream.

pub mod batch;
mod bootstrap;
pub mod cluster;
pub mod config;
mod corruption;
pub mod errors;
pub mod http;
pub mod identity;
pub mod kv;
pub mod peer;
mod quota;
pub mod reads;
pub mod restore;
mod sessions;
pub mod watch_slots;

use openraft_rt::WatchReceiver;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_rpc::net::Net;
use openraft::{Config, ServerState, SnapshotPolicy};
use openraft_rt::deterministic_rng::DeterministicRng;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{SmEnv, SmShared, StateMachine};
use crate::raft::{NodeId, Raft};
use cairn_io::reserve::{Reserve, ReservedFs};
use cairn_io::{Executor, FileSystem, StdFs, ThreadExecutor};
pub use config::{Limits, NodeArgs, NodeConfig};

/// The cairn version, reported by Status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

type Rt = DeterministicRng<openraft::impls::TokioRuntime>;

/// Runs futures that call into openraft inside its deterministic-RNG
/// scope. Production seeds from the node id and a counter; the simulation
/// chooses the seed.
#[derive(Debug)]
pub struct RaftScope {
    seed: u64,
    counter: AtomicU64,
}

impl RaftScope {
    /// A scope whose sub-seeds derive from `seed`.
    pub fn new(seed: u64) -> Self {
        RaftScope {
            seed,
            counter: AtomicU64::new(0),
        }
    }
    /// Runs `f` with a fresh seed.
    pub fn run<F: std::future::Future>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let seed = xxhash_rust::xxh3::xxh3_64(&[self.seed.to_le_bytes(), n.to_le_bytes()].concat());
        Rt::scope(seed, f)
    }
}

/// Everything the services share.
pub struct NodeCore {
    /// This node's configuration.
    pub config: NodeConfig,
    /// The Raft handle.
    pub raft: Raft,
    /// The state machine's readable side.
    pub sm: Arc<SmShared>,
    /// The Raft log (for sizes).
    pub log: LogStore,
    /// The openraft RNG scope.
    pub scope: RaftScope,
    /// The filesystem seam.
    pub fs: Arc<dyn FileSystem>,
    /// Room kept for a full disk.
    pub reserve: Arc<Reserve>,
    /// The network peers and joins are reached through.
    pub net: Arc<dyn Net>,
    /// Set while shutting down: new requests are refused.
    pub draining: AtomicBool,
    /// Linearizable reads waiting for a ReadIndex round.
    pub reads: reads::ReadRounds,
    /// Open watches, bounded.
    pub watches: Arc<watch_slots::WatchSlots>,
    /// Whether this node may vote (see [`identity`]).
    pub voting: Arc<identity::Voting>,
    /// Set when a read found its storage corrupt: the node stops.
    corruption: watch::Sender<Option<String>>,
    /// Milliseconds after `epoch` (plus one; 0: never) at which a leader's
    /// append was last accepted here.
    leader_contact: std::sync::atomic::AtomicU64,
    epoch: tokio::time::Instant,
}

impl NodeCore {
    /// The answer to a failed state-machine read. Corruption stops the
    /// node (its data cannot be trusted; the operator replaces it) and the
    /// caller is told to go elsewhere; any other failure is INTERNAL.
    pub fn store_failed(&self, e: crate::kv::StoreError) -> tonic::Status {
        let corrupt = matches!(
            e,
            crate::kv::StoreError::Corrupt { .. }
                | crate::kv::StoreError::Lsm(cairn_lsm::Error::Corruption { .. })
        );
        if !corrupt {
            return errors::store_error(e);
        }
        let why = format!("corruption found in the state machine: {e}");
        tracing::error!(reason = %why, "stopping: this node's data cannot be trusted");
        self.corruption.send_if_modified(|c| {
            let first = c.is_none();
            if first {
                *c = Some(why.clone());
            }
            first
        });
        tonic::Status::unavailable(format!("node {} stopped serving: {why}", self.config.id))
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The response header for a request served at `revision`.
    pub fn header(&self, revision: u64) -> cairn_proto::kv::ResponseHeader {
        cairn_proto::kv::ResponseHeader {
            cluster_id: self.sm.cluster_id(),
            member_id: self.config.id,
            revision,
            raft_term: self.term(),
        }
    }

    /// The known leader and its client address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.client_addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    /// How long without a leader's word a node still counts as in touch:
    /// two election timeouts, and at least three seconds (a leader backs
    /// off from a follower that stopped answering for a while).
    pub fn contact_window(&self) -> Duration {
        Duration::from_millis(self.config.election_timeout_ms.saturating_mul(2).max(3000))
    }

    /// Notes that a leader's append (a heartbeat included) was accepted.
    pub fn heard_from_leader(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.leader_contact.store(ms + 1, Ordering::Relaxed);
    }

    /// Whether this node is in touch with its cluster's leader: it leads
    /// and a quorum acknowledged it recently, or a leader's append reached
    /// it recently (within [`NodeCore::contact_window`]). A node that is
    /// partitioned away, was removed, or has not joined yet is not, and
    /// must not hold a watch that would silently stall.
    pub fn in_contact(&self) -> bool {
        use openraft::Instant as _;
        let window = self.contact_window();
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.state == ServerState::Leader {
            let alone = m.membership_config.membership().voter_ids().count() <= 1;
            // A new leader has no acknowledgement measured yet.
            return alone
                || m.last_quorum_acked
                    .as_ref()
                    .is_none_or(|t| t.elapsed() < window);
        }
        let at = self.leader_contact.load(Ordering::Relaxed);
        at > 0
            && m.current_leader.is_some()
            && self.epoch.elapsed() < Duration::from_millis(at - 1) + window
    }

    /// Ready: a leader is known and this node has applied what it knows
    /// to be committed.
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        m.current_leader.is_some() && applied >= committed && !self.draining.load(Ordering::Relaxed)
    }

    /// Waits until openraft's metrics satisfy `done`, at most `timeout`.
    /// Returns whether they did.
    pub async fn wait_metrics(
        &self,
        timeout: Duration,
        done: impl Fn(&openraft::RaftMetrics<crate::raft::TypeConfig>) -> bool,
    ) -> bool {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if done(&rx.borrow_watched()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// Refuses new requests while draining. Once another node leads
    /// (a draining leader hands leadership away first), the refusal names
    /// it, so callers go there in one hop instead of backing off and
    /// asking around while this node finishes.
    pub fn check_accepting(&self) -> Result<(), tonic::Status> {
        if !self.draining.load(Ordering::Relaxed) {
            return Ok(());
        }
        let s = match self.leader() {
            Some((id, addr)) if id != self.config.id && !addr.is_empty() => errors::leader_hint(
                tonic::Status::unavailable(format!(
                    "node is shutting down; the leader is node {id} at {addr}"
                )),
                id,
                &addr,
            ),
            _ => tonic::Status::unavailable("node is shutting down"),
        };
        Err(s)
    }
}

/// A running node.
pub struct RunningNode {
    /// The shared core.
    pub core: Arc<NodeCore>,
    /// Bound client address.
    pub client_addr: std::net::SocketAddr,
    /// Bound peer address.
    pub peer_addr: std::net::SocketAddr,
    /// Bound metrics address, if any.
    pub metrics_addr: Option<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened.
    #[error("opening storage in {dir}: {source}")]
    Storage {
        /// The directory.
        dir: String,
        /// Why.
        source: io::Error,
    },
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// openraft refused to start.
    #[error("starting Raft: {0}")]
    Raft(String),
    /// The data directory belongs to another node or cluster.
    #[error("{0}")]
    Identity(String),
}

fn raft_config(c: &NodeConfig) -> Result<Arc<Config>, StartError> {
    let config = Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_ms,
        election_timeout_max: c.election_timeout_ms * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_entries),
        max_in_snapshot_log_to_keep: 1000,
        max_payload_entries: max_payload_entries(c.limits.max_request_bytes),
        install_snapshot_timeout: 60_000,
        enable_pre_vote: Some(true),
        // A restarted leader must win a new election: resuming its old term
        // could reuse (term, index) pairs for different entries when its
        // unsynced tail was lost after followers had stored it (simulation
        // seed 26 runs into it).
        enable_leader_restore: Some(false),
        // A member that lost its data (its log is empty again) is caught
        // up from the start instead of stopping replication to it. It does
        // not vote until it is (`identity::Voting`), so no committed entry
        // can be lost through its vote.
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| StartError::Raft(e.to_string()))
}

/// Entries in one replication message: openraft counts entries, the peer
/// port bounds bytes (`peer::MAX_PEER_MESSAGE`), so the count is capped
/// by what the largest entries (requests of `max_request_bytes`) would
/// take, with half the message to spare; at most 512. A follower far
/// behind on large values then catches up in messages the peer accepts.
fn max_payload_entries(max_request_bytes: usize) -> u64 {
    let per_entry = max_request_bytes + (4 << 10);
    ((peer::MAX_PEER_MESSAGE / 2) / per_entry).clamp(1, 512) as u64
}

async fn bind(
    net: &Arc<dyn Net>,
    addr: &str,
) -> Result<Box<dyn cairn_rpc::net::Listener>, StartError> {
    net.bind(addr).await.map_err(|source| StartError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// What a node runs on: its disk, where its blocking work runs, its
/// network, and the seed of its Raft randomness. Production: the real
/// disk, threads, TCP and a random seed; the simulation injects its own.
#[derive(Clone)]
pub struct NodeEnv {
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    /// Background and blocking work.
    pub executor: Arc<dyn Executor>,
    /// Connections.
    pub net: Arc<dyn Net>,
    /// Seeds openraft's randomness (election timeouts); random when None.
    pub seed: Option<u64>,
}

impl RunningNode {
    /// Opens storage, starts Raft and serves. Returns once listening.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let executor: Arc<dyn Executor> =
            Arc::new(ThreadExecutor::with_background_nice(config.background_nice));
        Self::start_with(config, fs, executor).await
    }

    /// [`RunningNode::start`] on a given disk and executor, over TCP.
    pub async fn start_with(
        config: NodeConfig,
        fs: Arc<dyn FileSystem>,
        executor: Arc<dyn Executor>,
    ) -> Result<RunningNode, StartError> {
        Self::start_in(
            config,
            NodeEnv {
                fs,
                executor,
                net: cairn_rpc::net::tcp(),
                seed: None,
            },
        )
        .await
    }

    /// [`RunningNode::start`] with injected filesystem and executor.
    pub async fn start_in(config: NodeConfig, env: NodeEnv) -> Result<RunningNode, StartError> {
        let NodeEnv {
            fs,
            executor,
            net,
            seed,
        } = env;
        let storage = storage_error(&config);
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::SkipDirSync) {
            fs.create_dir_all(&config.data_dir).map_err(&storage)?;
        }
        cairn_io::fs::create_dir_durable(&*fs, &config.data_dir).map_err(&storage)?;
        let reserve = Reserve::new(fs.clone(), &config.data_dir, config.reserve_bytes);
        if !reserve.fill().map_err(&storage)? {
            tracing::warn!(
                "the disk is full: no room for the reserve; the node starts and raises NOSPACE"
            );
        }
        let fs: Arc<dyn FileSystem> = Arc::new(ReservedFs::new(fs, reserve.clone()));
        let (log, sm) = open_storage(&config, &fs, &executor).map_err(&storage)?;
        let shared = sm.shared();
        if config.check_tables_at_start {
            check_tables(&shared, &executor).await.map_err(&storage)?;
        }
        let client_listener = bind(&net, &config.listen_client).await?;
        let peer_listener = bind(&net, &config.listen_peer).await?;
        let client_addr = client_listener.local_addr().map_err(&storage)?;
        let peer_addr = peer_listener.local_addr().map_err(&storage)?;
        let scope = RaftScope::new(config.id ^ seed.unwrap_or_else(rand::random::<u64>));
        let raft = scope
            .run(Raft::new(
                config.id,
                raft_config(&config)?,
                Network::new(fs.clone(), net.clone(), shared.clone()),
                log.clone(),
                sm,
            ))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // Decided before the peer port serves: a leader's message (a
        // heartbeat to a member being removed, say) can make a node with
        // no data "initialized" moments after it starts.
        let fresh = !scope.run(raft.is_initialized()).await.unwrap_or(true);
        let voting = identity::Voting::open(
            fs.clone(),
            &config.data_dir,
            config.id,
            !fresh,
            shared.cluster_id(),
        )
        .map_err(|e| match e {
            identity::IdentityError::Io(e) => storage(e),
            identity::IdentityError::Mismatch(m) => StartError::Identity(m),
        })?;
        if !voting.ready() {
            raft.runtime_config().elect(false);
        }
        let watches = watch_slots::WatchSlots::new(
            config.limits.max_watches,
            config.limits.max_watches_per_connection,
        );
        let core = Arc::new(NodeCore {
            config,
            raft,
            sm: shared,
            log,
            scope,
            fs: fs.clone(),
            reserve,
            net,
            draining: AtomicBool::new(false),
            reads: reads::ReadRounds::default(),
            watches,
            voting,
            corruption: watch::channel(None).0,
            leader_contact: std::sync::atomic::AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        });
        let (stop, stop_rx) = watch::channel(false);
        // tasks[0] is the peer server (shutdown relies on the order).
        let mut tasks = vec![
            tokio::spawn(peer::serve(
                core.clone(),
                incoming(peer_listener),
                stop_rx.clone(),
            )),
            tokio::spawn(serve_client(
                core.clone(),
                incoming(client_listener),
                stop_rx.clone(),
            )),
        ];
        let metrics_addr = serve_metrics(&core, &stop_rx, &mut tasks).await?;
        tasks.push(tokio::spawn(http::export_raft_metrics(
            core.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(bootstrap::bootstrap(core.clone(), fresh)));
        tasks.push(tokio::spawn(identity::catch_up(
            core.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(sessions::keep(core.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(quota::watch(core.clone(), stop_rx.clone())));
        tasks.push(tokio::spawn(corruption::watch(
            core.clone(),
            stop_rx.clone(),
        )));
        tracing::info!(
            id = core.config.id,
            client = %client_addr,
            peer = %peer_addr,
            data = %core.config.data_dir.display(),
            "node started"
        );
        Ok(RunningNode {
            core,
            client_addr,
            peer_addr,
            metrics_addr,
            stop,
            tasks,
        })
    }

    /// Resolves when this node's Raft stops by itself: a storage error (a
    /// failed fsync, a full disk) is fatal, since after a failed fsync
    /// nothing says what reached the disk. The node must not go on; the
    /// caller exits, and the node restarts from what is durable. Returns
    /// why.
    pub async fn failed(&self) -> String {
        // Not a wait on the full metrics: openraft sends those after every
        // batch of work, and this task would wake on each. The server
        // metrics change only with role, term or leader, and their sender
        // goes away when Raft stops, after the full metrics say why.
        let mut server = self.core.raft.server_metrics();
        let mut corruption = self.core.corruption.subscribe();
        loop {
            if let Err(fatal) = &self.core.raft.metrics().borrow_watched().running_state {
                return fatal.to_string();
            }
            if let Some(why) = corruption.borrow_and_update().clone() {
                return why;
            }
            let changed = tokio::select! {
                c = server.changed() => c.is_ok(),
                _ = corruption.changed() => true,
            };
            if !changed {
                return match &self.core.raft.metrics().borrow_watched().running_state {
                    Err(fatal) => fatal.to_string(),
                    Ok(()) => "Raft stopped".into(),
                };
            }
        }
    }

    /// Stops serving at once, as a process exit would: no leadership
    /// hand-over, no final flush (after [`RunningNode::failed`], storage
    /// cannot be trusted with one).
    pub async fn abort(self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.core.scope.run(self.core.raft.shutdown()).await;
    }

    /// Graceful shutdown: refuse new requests, hand leadership to another
    /// voter if this node leads, let in-flight requests finish, stop Raft
    /// and flush the state machine.
    pub async fn shutdown(self) {
        let core = self.core.clone();
        core.draining.store(true, Ordering::SeqCst);
        if core.raft.metrics().borrow_watched().state == ServerState::Leader {
            transfer_leadership_away(&core, Duration::from_secs(5)).await;
        }
        // In-flight requests get a moment to finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Raft first: that ends the peers' replication streams, which the
        // peer server would otherwise wait for.
        if let Err(e) = core.scope.run(core.raft.shutdown()).await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
        let _ = self.stop.send(true);
        // Peers keep their connections open (and Raft is already down),
        // so the peer server gets a short grace; the client server a
        // longer one for in-flight requests and watches. Then both stop.
        for (i, mut t) in self.tasks.into_iter().enumerate() {
            let grace = if i == 0 {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            };
            if tokio::time::timeout(grace, &mut t).await.is_err() {
                tracing::debug!(task = i, "stopping a server task after its grace period");
                t.abort();
            }
        }
        let db = core.sm.db();
        if let Err(e) = db.flush() {
            tracing::warn!(error = %e, "final flush failed; the log replays on restart");
        }
        tracing::info!(id = core.config.id, "node stopped");
    }
}

/// Hands leadership to the most caught-up other voter and waits (bounded)
/// until this node is no longer leader. Returns whether it moved.
pub async fn transfer_leadership_away(core: &NodeCore, wait: Duration) -> bool {
    let m = core.raft.metrics().borrow_watched().clone();
    let me = core.config.id;
    let target = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|&v| v != me)
        .max_by_key(|v| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(v).cloned().flatten())
                .map_or(0, |l| l.index)
        });
    let Some(to) = target else {
        return false;
    };
    tracing::info!(to, "transferring leadership");
    if let Err(e) = core
        .scope
        .run(core.raft.trigger().transfer_leader(to))
        .await
    {
        tracing::warn!(error = %e, "leader transfer failed");
        return false;
    }
    core.wait_metrics(wait, |m| m.current_leader.is_some_and(|l| l != me))
        .await
}

/// Turns an I/O error under the node's data directory into a start error
/// naming it.
fn storage_error(config: &NodeConfig) -> impl Fn(std::io::Error) -> StartError {
    let dir = config.data_dir.display().to_string();
    move |source| StartError::Storage {
        dir: dir.clone(),
        source,
    }
}

/// Reads every table of the state machine (every block's checksum is
/// verified on the way): `--check-tables-at-start`.
async fn check_tables(sm: &SmShared, executor: &Arc<dyn Executor>) -> io::Result<()> {
    let started = std::time::Instant::now();
    let snapshot = sm.db().snapshot();
    let h = crate::raft::state_machine::run_blocking(executor, move || {
        crate::kv::hash::state_hash(&snapshot)
    })
    .await?
    .map_err(|e| io::Error::other(format!("checking every table at start: {e}")))?;
    tracing::info!(
        keys = h.keys,
        bytes = h.bytes,
        took_ms = started.elapsed().as_millis() as u64,
        "every table read at start: checksums hold"
    );
    Ok(())
}

/// Opens the Raft log and the state machine under the data directory.
fn open_storage(
    config: &NodeConfig,
    fs: &Arc<dyn FileSystem>,
    executor: &Arc<dyn Executor>,
) -> std::io::Result<(LogStore, StateMachine)> {
    // Segments small enough that purging whole ones keeps the log near
    // `--snapshot-log-bytes`.
    let segment_bytes = match config.snapshot_log_bytes {
        0 => crate::raft::log_store::SEGMENT_BYTES,
        b => (b / 4).clamp(1 << 20, crate::raft::log_store::SEGMENT_BYTES),
    };
    let log = LogStore::open_with(
        fs.clone(),
        executor.clone(),
        config.data_dir.join("raft"),
        segment_bytes,
    )?;
    let lsm = cairn_lsm::Options {
        memtable_bytes: config.memtable_bytes,
        block_cache_bytes: config.block_cache_bytes,
        ..cairn_lsm::Options::default()
    };
    let sm = StateMachine::open(SmEnv {
        fs: fs.clone(),
        executor: executor.clone(),
        data_dir: config.data_dir.clone(),
        lsm,
    })?;
    Ok((log, sm))
}

/// Serves `/metrics`, `/healthz` and `/readyz` when a metrics address is
/// configured; its bound address.
async fn serve_metrics(
    core: &Arc<NodeCore>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    let addr = &core.config.listen_metrics;
    if addr.is_empty() {
        return Ok(None);
    }
    let bind_error = |source| StartError::Bind {
        addr: addr.clone(),
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(bind_error)?;
    let a = l.local_addr().map_err(bind_error)?;
    tasks.push(tokio::spawn(http::serve(
        http::node_readiness(core),
        l,
        stop.clone(),
    )));
    Ok(Some(a))
}

pub use cairn_rpc::serve::{incoming, Incoming};

/// The gRPC reflection service for cairn's and the health services (None,
/// logged, if it cannot be built).
pub fn reflection() -> Option<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    match tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "reflection disabled");
            None
        }
    }
}

async fn serve_client(core: Arc<NodeCore>, incoming: Incoming, mut stop: watch::Receiver<bool>) {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = reflection();
    tokio::spawn(http::report_health(
        http::node_readiness(&core),
        health_reporter,
        stop.clone(),
    ));
    // The handlers refuse requests over the limit with a clear error; the
    // transport only cuts off what is far beyond it.
    let max = core.config.limits.max_request_bytes.saturating_mul(2);
    let kv =
        cairn_proto::kv::kv_server::KvServer::new(kv::KvService::new(core.clone(), stop.clone()))
            .max_decoding_message_size(max);
    let cluster = cairn_proto::cluster::cluster_server::ClusterServer::new(
        cluster::ClusterService::new(core.clone()),
    )
    .max_decoding_message_size(max);
    let mut routes = tonic::service::Routes::new(health)
        .add_service(kv)
        .add_service(cluster);
    if let Some(r) = reflection {
        routes = routes.add_service(r);
    }
    let limits = &core.config.limits;
    let options = cairn_rpc::serve::Options {
        keep_alive: CLIENT_KEEPALIVE,
        max_concurrent_streams: limits.max_streams_per_connection,
        default_timeout: Some(Duration::from_millis(limits.request_timeout_ms)),
        max_inflight: Some(limits.max_inflight),
        streaming: CLIENT_STREAMING,
    };
    cairn_rpc::serve::serve(routes, incoming, options, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}

/// The client port's streaming methods: long-lived, so without a default
/// deadline and not counted in flight (watches have bounds of their own;
/// a Batch stream bounds the calls it runs).
const CLIENT_STREAMING: &[&str] = &[
    "/cairn.kv.v1.KV/Watch",
    "/cairn.kv.v1.KV/Batch",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// HTTP/2 keep-alive on the client port (and the gateway's).
pub const CLIENT_KEEPALIVE: cairn_rpc::serve::KeepAlive = cairn_rpc::serve::KeepAlive {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(20),
};
