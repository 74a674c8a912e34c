//! The Raft glue: cairn's LSM engine as the state machine of an openraft
//! group.
//!
//! - [`command`]: what a log entry carries (puts, deletes, transactions)
//!   and what applying it answers.
//! - [`store`]: the key-value model over the LSM: records with revisions,
//!   the watch history, the request-id table. Deterministic: the same
//!   entries give the same bytes on every replica.
//! - [`log_store`]: our segmented Raft log with a CRC on every record and
//!   one fsync per appended batch.
//! - [`state_machine`]: openraft's state machine and snapshot traits over
//!   [`store`]; snapshots are LSM checkpoints.
//! - [`network`]: the peer transport over tonic.
//! - [`codec`]: the postcard encoding of openraft's messages.
//! - [`small_file`]: atomically replaced state files.

pub mod codec;
pub mod command;
pub mod log_store;
pub mod network;
pub mod small_file;
pub mod state_machine;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use command::{Command, CommandResponse};

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
pub type Snapshot = a::SnapshotOf<TypeConfig, state_machine::SnapshotDir>;
