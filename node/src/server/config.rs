//! Node configuration: flags, `CAIRN_*` environment variables, or a TOML
//! file, in that order of precedence, over safe defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use crate::raft::{Member, NodeId};

/// Limits on requests; over a limit a request gets INVALID_ARGUMENT naming
/// it, and nothing changes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest key.
    pub max_key_bytes: usize,
    /// Largest value.
    pub max_value_bytes: usize,
    /// Most operations in one transaction (compares plus both branches).
    pub max_txn_ops: usize,
    /// Largest encoded request.
    pub max_request_bytes: usize,
    /// Most bytes of pairs one answer carries: a scan's page ends there
    /// (the rest follows with its continuation), and a prefix delete
    /// whose `prev_kv` answer would be larger is refused.
    pub max_response_bytes: usize,
    /// Unary calls in flight on the client port; past it,
    /// RESOURCE_EXHAUSTED at once.
    pub max_inflight: usize,
    /// HTTP/2 streams (calls, watches, batch streams) one client
    /// connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Watches open on the node.
    pub max_watches: usize,
    /// Watches open on one client connection.
    pub max_watches_per_connection: usize,
    /// The deadline of a unary call that names none, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_txn_ops: 128,
            max_request_bytes: (1 << 20) + (64 << 10),
            max_response_bytes: 2 << 20,
            max_inflight: 8192,
            max_streams_per_connection: 1024,
            max_watches: 65536,
            max_watches_per_connection: 4096,
            request_timeout_ms: 30_000,
        }
    }
}

/// Upper bounds of the limits: what one entry of the Raft log may carry
/// and what one apply may cost (`kv::limits`) stay far below what the
/// engine stores in one value and the peers send in one message.
pub const MAX_REQUEST_BYTES_BOUND: usize = 16 << 20;
/// See [`MAX_REQUEST_BYTES_BOUND`].
pub const MAX_TXN_OPS_BOUND: usize = 10_000;

impl Limits {
    /// Checks every limit against its bounds and the others; the error
    /// names the option.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |option: &'static str, reason: String| Err(ConfigError::Bad { option, reason });
        let key_max = crate::kv::limits::MAX_KEY_BYTES;
        if self.max_key_bytes == 0 || self.max_key_bytes > key_max {
            return bad(
                "max-key-bytes",
                format!(
                    "must be between 1 and {key_max} (the engine's 64 KiB less the state \
                     machine's one-byte prefix), not {}",
                    self.max_key_bytes
                ),
            );
        }
        let request_max = MAX_REQUEST_BYTES_BOUND;
        if self.max_request_bytes < 1024 || self.max_request_bytes > request_max {
            return bad(
                "max-request-bytes",
                format!(
                    "must be between 1024 and {request_max}, not {}",
                    self.max_request_bytes
                ),
            );
        }
        if self.max_value_bytes > self.max_request_bytes {
            return bad(
                "max-value-bytes",
                format!(
                    "must not exceed max-request-bytes ({}), not {}",
                    self.max_request_bytes, self.max_value_bytes
                ),
            );
        }
        if self.max_txn_ops == 0 || self.max_txn_ops > MAX_TXN_OPS_BOUND {
            return bad(
                "max-txn-ops",
                format!(
                    "must be between 1 and {MAX_TXN_OPS_BOUND}, not {}",
                    self.max_txn_ops
                ),
            );
        }
        for (option, value) in [
            ("max-inflight", self.max_inflight),
            (
                "max-streams-per-connection",
                self.max_streams_per_connection as usize,
            ),
            ("max-watches", self.max_watches),
            (
                "max-watches-per-connection",
                self.max_watches_per_connection,
            ),
            ("request-timeout-ms", self.request_timeout_ms as usize),
        ] {
            if value == 0 {
                return bad(option, "must be at least 1".into());
            }
        }
        let answer_max = crate::kv::limits::MAX_ANSWER_BYTES as usize;
        if self.max_response_bytes < 64 << 10 || self.max_response_bytes > answer_max {
            return bad(
                "max-response-bytes",
                format!(
                    "must be between 65536 and {answer_max} (what one entry may answer), not {}",
                    self.max_response_bytes
                ),
            );
        }
        Ok(())
    }
}

/// `cairn node` options as given (every field optional, so flags, the
/// environment and the file can be layered).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeArgs {
    /// TOML file with any of these options (kebab-case keys).
    #[arg(long, env = "CAIRN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id: a non-zero number, unique in the cluster.
    #[arg(long, env = "CAIRN_ID")]
    pub id: Option<u64>,
    /// Where the node keeps its data.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address for clients (KV, Cluster, health, reflection).
    #[arg(long, env = "CAIRN_LISTEN_CLIENT")]
    pub listen_client: Option<String>,
    /// Address for peers (the internal Raft service).
    #[arg(long, env = "CAIRN_LISTEN_PEER")]
    pub listen_peer: Option<String>,
    /// Client address other nodes and clients use (default: listen-client).
    #[arg(long, env = "CAIRN_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Peer address other nodes use (default: listen-peer).
    #[arg(long, env = "CAIRN_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Address of the HTTP endpoint with /metrics, /healthz, /readyz.
    #[arg(long, env = "CAIRN_LISTEN_METRICS")]
    pub listen_metrics: Option<String>,
    /// The founding members, "ID=CLIENT_ADDR/PEER_ADDR,..." With empty data
    /// the lowest id initializes the cluster; with data it is ignored.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// A running cluster's client address: join it as a learner and be
    /// promoted to voter once caught up.
    #[arg(long, env = "CAIRN_JOIN")]
    pub join: Option<String>,
    /// Largest key in bytes.
    #[arg(long, env = "CAIRN_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes.
    #[arg(long, env = "CAIRN_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Most operations in one transaction.
    #[arg(long, env = "CAIRN_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Largest request in bytes.
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most bytes of pairs in one answer (a scan's page, a prefix delete's
    /// prev_kv).
    #[arg(long, env = "CAIRN_MAX_RESPONSE_BYTES")]
    pub max_response_bytes: Option<usize>,
    /// Unary calls in flight on the client port (past it,
    /// RESOURCE_EXHAUSTED).
    #[arg(long, env = "CAIRN_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// HTTP/2 streams one client connection may have open at once.
    #[arg(long, env = "CAIRN_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Watches open on the node.
    #[arg(long, env = "CAIRN_MAX_WATCHES")]
    pub max_watches: Option<usize>,
    /// Watches open on one client connection.
    #[arg(long, env = "CAIRN_MAX_WATCHES_PER_CONNECTION")]
    pub max_watches_per_connection: Option<usize>,
    /// Deadline of a unary call that names none, in milliseconds.
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "CAIRN_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Lower bound of the election timeout in milliseconds (the upper
    /// bound is twice it).
    #[arg(long, env = "CAIRN_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,
    /// Build a snapshot (and purge the log behind it) every this many
    /// entries.
    #[arg(long, env = "CAIRN_SNAPSHOT_ENTRIES")]
    pub snapshot_entries: Option<u64>,
    /// Build a snapshot (and purge the log behind it) also once the Raft
    /// log's segments hold this many bytes (default 512 MiB; 0: by
    /// entries only).
    #[arg(long, env = "CAIRN_SNAPSHOT_LOG_BYTES")]
    pub snapshot_log_bytes: Option<u64>,
    /// Revisions of watch history kept. A cluster-wide setting: the
    /// first leader of a new cluster proposes its own value; later ones
    /// do not change it.
    #[arg(long, env = "CAIRN_HISTORY_REVISIONS")]
    pub history_revisions: Option<u64>,
    /// Seconds a client's session (request-id dedup) lives without a
    /// write. Cluster-wide, taken like --history-revisions.
    #[arg(long, env = "CAIRN_SESSION_TTL_SECS")]
    pub session_ttl_secs: Option<u64>,
    /// Memtable size of the state machine's engine in MiB.
    #[arg(long, env = "CAIRN_MEMTABLE_MIB")]
    pub memtable_mib: Option<usize>,
    /// Block cache size in MiB.
    #[arg(long, env = "CAIRN_BLOCK_CACHE_MIB")]
    pub block_cache_mib: Option<usize>,
    /// Storage quota in bytes (tables and Raft log); past it the node
    /// raises the NOSPACE alarm, which refuses writes that add data on
    /// the whole cluster. Default 8 GiB; 0 turns the quota off.
    #[arg(long, env = "CAIRN_QUOTA_BYTES")]
    pub quota_bytes: Option<u64>,
    /// Bytes of the reserve file kept in the data directory: when a write
    /// finds the disk full, the reserve is deleted, the write is made in
    /// the room it gives back and the node raises NOSPACE instead of
    /// stopping; it is written again once the alarm is disarmed. Default
    /// 64 MiB; 0: no reserve (a full disk stops the node).
    #[arg(long, env = "CAIRN_RESERVE_BYTES")]
    pub reserve_bytes: Option<u64>,
    /// Seconds between the leader's corruption checks (every member
    /// hashes its state at one entry, and they are compared); default
    /// 3600, 0: only on demand (`cairnctl check hash`).
    #[arg(long, env = "CAIRN_CORRUPTION_CHECK_SECS")]
    pub corruption_check_secs: Option<u64>,
    /// Read every table of the state machine at start (verifying every
    /// block's checksum) before serving; a damaged one stops the start,
    /// naming the file. `--check-tables-at-start` or `=true|false`.
    #[arg(long, env = "CAIRN_CHECK_TABLES_AT_START", num_args = 0..=1, default_missing_value = "true")]
    pub check_tables_at_start: Option<bool>,
    /// CPU priority (nice, 0-19; 19 the lowest) of the engine's flush and
    /// compaction threads, so they use idle CPU before the cores the log
    /// and apply paths need (default 19; 0: the node's own priority).
    #[arg(long, env = "CAIRN_BACKGROUND_NICE")]
    pub background_nice: Option<i32>,
}

/// The default storage quota: 8 GiB (etcd's largest recommended).
pub const DEFAULT_QUOTA_BYTES: u64 = 8 << 30;

/// The default reserve: 64 MiB of room for a node whose disk filled up
/// to raise its alarm and go on serving.
pub const DEFAULT_RESERVE_BYTES: u64 = 64 << 20;

/// A complete, checked node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Client listen address.
    pub listen_client: String,
    /// Peer listen address.
    pub listen_peer: String,
    /// Advertised addresses of this node.
    pub advertise: Member,
    /// Metrics listen address (empty: none).
    pub listen_metrics: String,
    /// The founding members (empty: none given).
    pub initial_cluster: BTreeMap<NodeId, Member>,
    /// A cluster to join.
    pub join: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// Raft heartbeat interval (ms).
    pub heartbeat_ms: u64,
    /// Election timeout lower bound (ms).
    pub election_timeout_ms: u64,
    /// Snapshot every this many entries.
    pub snapshot_entries: u64,
    /// Raft log bytes that also trigger a snapshot (0: none).
    pub snapshot_log_bytes: u64,
    /// Watch history kept, in revisions (the value a new cluster starts
    /// with).
    pub history_revisions: u64,
    /// Session TTL in seconds (the value a new cluster starts with).
    pub session_ttl_secs: u64,
    /// Memtable bytes.
    pub memtable_bytes: usize,
    /// Block cache bytes.
    pub block_cache_bytes: usize,
    /// Storage quota in bytes (0: none).
    pub quota_bytes: u64,
    /// Bytes of the reserve file (0: none).
    pub reserve_bytes: u64,
    /// Seconds between corruption checks (0: none).
    pub corruption_check_secs: u64,
    /// Whether every table is read and verified at start.
    pub check_tables_at_start: bool,
    /// Nice value of the engine's flush and compaction threads.
    pub background_nice: i32,
}

/// A configuration error, for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required option is missing.
    #[error("missing option --{0} (or CAIRN_{1}, or `{0}` in the config file)")]
    Missing(&'static str, String),
    /// An option's value is wrong.
    #[error("bad --{option}: {reason}")]
    Bad {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Parses "ID=CLIENT_ADDR/PEER_ADDR,...".
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, Member>, ConfigError> {
    let bad = |reason: String| ConfigError::Bad {
        option: "initial-cluster",
        reason,
    };
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not ID=CLIENT_ADDR/PEER_ADDR")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| bad(format!("{id:?} is not a non-zero node id")))?;
        let (client, peer) = addrs
            .split_once('/')
            .ok_or_else(|| bad(format!("{addrs:?} is not CLIENT_ADDR/PEER_ADDR")))?;
        if client.is_empty() || peer.is_empty() {
            return Err(bad(format!("{part:?} has an empty address")));
        }
        if out
            .insert(
                id,
                Member {
                    client_addr: client.to_string(),
                    peer_addr: peer.to_string(),
                },
            )
            .is_some()
        {
            return Err(bad(format!("node {id} appears twice")));
        }
    }
    Ok(out)
}

impl NodeArgs {
    /// Fills the options not given here from `other`.
    fn or(self, other: NodeArgs) -> NodeArgs {
        macro_rules! pick {
            ($($f:ident),*) => { NodeArgs { config: self.config, $($f: self.$f.or(other.$f)),* } };
        }
        pick!(
            id,
            data_dir,
            listen_client,
            listen_peer,
            advertise_client,
            advertise_peer,
            listen_metrics,
            initial_cluster,
            join,
            max_key_bytes,
            max_value_bytes,
            max_txn_ops,
            max_request_bytes,
            max_response_bytes,
            max_inflight,
            max_streams_per_connection,
            max_watches,
            max_watches_per_connection,
            request_timeout_ms,
            heartbeat_ms,
            election_timeout_ms,
            snapshot_entries,
            snapshot_log_bytes,
            history_revisions,
            session_ttl_secs,
            memtable_mib,
            block_cache_mib,
            quota_bytes,
            reserve_bytes,
            corruption_check_secs,
            check_tables_at_start,
            background_nice
        )
    }

    /// Layers the config file (if any) under these options and checks the
    /// result.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let args = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let file: NodeArgs = toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                self.or(file)
            }
            None => self,
        };
        let id = args
            .id
            .ok_or_else(|| ConfigError::Missing("id", "ID".into()))?;
        if id == 0 {
            return Err(ConfigError::Bad {
                option: "id",
                reason: "0 is reserved (it means \"no node\")".into(),
            });
        }
        let listen_client = args
            .listen_client
            .unwrap_or_else(|| "127.0.0.1:7000".into());
        let listen_peer = args.listen_peer.unwrap_or_else(|| "127.0.0.1:7100".into());
        let advertise = Member {
            client_addr: args
                .advertise_client
                .unwrap_or_else(|| listen_client.clone()),
            peer_addr: args.advertise_peer.unwrap_or_else(|| listen_peer.clone()),
        };
        let initial_cluster = match &args.initial_cluster {
            Some(s) => parse_initial_cluster(s)?,
            None => BTreeMap::new(),
        };
        if !initial_cluster.is_empty() && !initial_cluster.contains_key(&id) && args.join.is_none()
        {
            return Err(ConfigError::Bad {
                option: "initial-cluster",
                reason: format!("node {id} is not in it (use --join to add a node later)"),
            });
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_key_bytes: args.max_key_bytes.unwrap_or(defaults.max_key_bytes),
            max_value_bytes: args.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            max_txn_ops: args.max_txn_ops.unwrap_or(defaults.max_txn_ops),
            max_request_bytes: args.max_request_bytes.unwrap_or(defaults.max_request_bytes),
            max_response_bytes: args
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            max_inflight: args.max_inflight.unwrap_or(defaults.max_inflight),
            max_streams_per_connection: args
                .max_streams_per_connection
                .unwrap_or(defaults.max_streams_per_connection),
            max_watches: args.max_watches.unwrap_or(defaults.max_watches),
            max_watches_per_connection: args
                .max_watches_per_connection
                .unwrap_or(defaults.max_watches_per_connection),
            request_timeout_ms: args
                .request_timeout_ms
                .unwrap_or(defaults.request_timeout_ms),
        };
        limits.check()?;
        let heartbeat_ms = args.heartbeat_ms.unwrap_or(100);
        let election_timeout_ms = args.election_timeout_ms.unwrap_or(1000);
        if election_timeout_ms <= heartbeat_ms * 2 {
            return Err(ConfigError::Bad {
                option: "election-timeout-ms",
                reason: format!("must exceed twice the heartbeat ({heartbeat_ms} ms)"),
            });
        }
        let defaults = crate::kv::Settings::default();
        let settings = crate::kv::Settings {
            history_revisions: args.history_revisions.unwrap_or(defaults.history_revisions),
            session_ttl_secs: args.session_ttl_secs.unwrap_or(defaults.session_ttl_secs),
        };
        crate::kv::check_settings(&settings).map_err(|reason| ConfigError::Bad {
            option: "history-revisions/session-ttl-secs",
            reason,
        })?;
        let background_nice = args.background_nice.unwrap_or(19);
        if !(0..=19).contains(&background_nice) {
            return Err(ConfigError::Bad {
                option: "background-nice",
                reason: format!("must be between 0 and 19, not {background_nice}"),
            });
        }
        Ok(NodeConfig {
            id,
            data_dir: args
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("cairn-data/{id}"))),
            listen_client,
            listen_peer,
            advertise,
            listen_metrics: args.listen_metrics.unwrap_or_default(),
            initial_cluster,
            join: args.join,
            limits,
            heartbeat_ms,
            election_timeout_ms,
            snapshot_entries: args.snapshot_entries.unwrap_or(20_000),
            snapshot_log_bytes: args.snapshot_log_bytes.unwrap_or(512 << 20),
            history_revisions: settings.history_revisions,
            session_ttl_secs: settings.session_ttl_secs,
            memtable_bytes: args.memtable_mib.unwrap_or(64) << 20,
            block_cache_bytes: args.block_cache_mib.unwrap_or(256) << 20,
            quota_bytes: args.quota_bytes.unwrap_or(DEFAULT_QUOTA_BYTES),
            reserve_bytes: args.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES),
            corruption_check_secs: args.corruption_check_secs.unwrap_or(3600),
            check_tables_at_start: args.check_tables_at_start.unwrap_or(false),
            background_nice,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_nonsense() {
        let m = parse_initial_cluster("1=a:1/a:2, 2=b:1/b:2").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&2].peer_addr, "b:2");
        assert!(parse_initial_cluster("0=a:1/a:2").is_err());
        assert!(parse_initial_cluster("1=a:1").is_err());
        assert!(parse_initial_cluster("1=a:1/a:2,1=b:1/b:2").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(
            &path,
            "id = 3\nlisten-client = \"1.2.3.4:5\"\nmax-txn-ops = 7\n",
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(path),
            listen_client: Some("127.0.0.1:9".into()),
            ..NodeArgs::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.listen_client, "127.0.0.1:9");
        assert_eq!(c.limits.max_txn_ops, 7);
    }

    #[test]
    fn background_nice_defaults_to_19_and_rejects_other_ranges() {
        let with = |n: Option<i32>| {
            NodeArgs {
                id: Some(1),
                background_nice: n,
                ..NodeArgs::default()
            }
            .resolve()
        };
        assert_eq!(with(None).unwrap().background_nice, 19);
        assert_eq!(with(Some(0)).unwrap().background_nice, 0);
        for n in [-1, 20] {
            let e = with(Some(n)).unwrap_err().to_string();
            assert!(e.contains("--background-nice"), "{e}");
        }
    }
}
