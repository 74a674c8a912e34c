//! The Raft glue: the key-value model ([`crate::kv`]) over cairn's LSM
//! engine as the state machine of an openraft group. openraft glue only:
//!
//! - [`log_store`]: our segmented Raft log with a CRC on every record and
//!   one fsync per appended batch.
//! - [`state_machine`]: openraft's state machine trait over the
//!   [`crate::kv::Applier`]; the applied position in the engine's flush
//!   metadata; snapshots are LSM checkpoints.
//! - [`snapshot`]: snapshot directories, and their transfer (the
//!   leader's sender and the follower's receiver).
//! - [`network`]: the peer transport over tonic.
//!
//! The on-disk formats are written down in `FORMAT.md` beside this file.

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kv::{Command, CommandResponse};

/// A node's id in the cluster: any non-zero number, unique and never
/// reused.
pub type NodeId = u64;

/// A member's addresses, stored in the membership config of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where clients reach the node (the KV and Cluster services).
    pub client_addr: String,
    /// Where peers reach the node (the internal Raft service).
    pub peer_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client={} peer={}", self.client_addr, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// cairn's openraft type configuration. The runtime is tokio wrapped in
    /// openraft-rt's `DeterministicRng`, so a simulation can seed every
    /// election timeout.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Member,
        AsyncRuntime = openraft_rt::deterministic_rng::DeterministicRng<openraft::impls::TokioRuntime>,
);

use openraft::type_config::alias as a;

/// The Raft handle of a node.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;
/// A log id: (leader term and node, index).
pub type LogId = a::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = a::EntryOf<TypeConfig>;
/// A vote.
pub type Vote = a::VoteOf<TypeConfig>;
/// The membership as stored with the log id that carried it.
pub type StoredMembership = a::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = a::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data handle.
pub type Snapshot = a::SnapshotOf<TypeConfig, snapshot::SnapshotDir>;
