//! What one simulation run includes: its seed, its workload, and which
//! faults and actors take part.

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
    /// Disk faults: a node's fsyncs fail, or its disk fills up; the node
    /// must stop (never go on acknowledging) and is restarted at the heal
    /// from what it had synced.
    pub disk_faults: bool,
    /// Whether the nemesis wipes a voter's disk (when every other voter
    /// can vote) and restarts it empty, sometimes right after another
    /// voter fell behind and with the leader cut off.
    pub wipes: bool,
    /// Whether the nemesis flips bits in synced data (Raft log, its last
    /// record, tables, manifests); a node that then refuses to start, or
    /// stops on corruption, is replaced by the operator (which wipes it).
    pub bit_flips: bool,
    /// Whether a gateway runs: even-numbered clients and a second watcher
    /// go through it (and the nemesis may crash it).
    pub gateway: bool,
    /// Whether the administrator runs (leader transfers, snapshots,
    /// membership changes with the two spare hosts).
    pub admin: bool,
    /// Whether the administrator transfers leadership.
    pub transfers: bool,
    /// Whether a client writes large values under `b/` and sends prefix
    /// deletes with prev_kv and transactions of many scans over them,
    /// which the leader or every replica may refuse (past a bound).
    pub bulk: bool,
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
            disk_faults: true,
            wipes: true,
            bit_flips: true,
            gateway: true,
            admin: true,
            transfers: true,
            bulk: true,
        }
    }
}

impl Options {
    /// The default run for `seed`, with parts switched off by environment
    /// variables (set to anything): SIM_NO_TRANSFERS, SIM_NO_ADMIN,
    /// SIM_NO_DISK_FAULTS, SIM_NO_GATEWAY, SIM_NO_CRASHES,
    /// SIM_NO_PARTITIONS, SIM_NO_BULK, SIM_NO_WIPES, SIM_NO_FLIPS.
    pub fn from_env(seed: u64) -> Options {
        let off = |name: &str| std::env::var_os(name).is_some();
        Options {
            transfers: !off("SIM_NO_TRANSFERS"),
            admin: !off("SIM_NO_ADMIN"),
            disk_faults: !off("SIM_NO_DISK_FAULTS"),
            wipes: !off("SIM_NO_WIPES"),
            bit_flips: !off("SIM_NO_FLIPS"),
            gateway: !off("SIM_NO_GATEWAY"),
            crashes: !off("SIM_NO_CRASHES"),
            partitions: !off("SIM_NO_PARTITIONS"),
            bulk: !off("SIM_NO_BULK"),
            ..Options::new(seed)
        }
    }
}

/// The gateway's host name.
pub(crate) const GATEWAY: &str = "gw";
/// The gateway's client address.
pub(crate) const GATEWAY_ADDR: &str = "gw:7001";
/// The founding members (`--initial-cluster`).
pub(crate) const FOUNDERS: u64 = 3;
/// Every host that runs a node: the founders and spares the administrator
/// adds and removes.
pub(crate) const NODES: u64 = 5;
