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

use crate::kv::command::LegacyCommand;
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

openraft::declare_raft_types!(
    /// The type configuration of log entries written before commands
    /// carried a session hint; only used to read them.
    LegacyTypeConfig:
        D = LegacyCommand,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Member,
        AsyncRuntime = openraft_rt::deterministic_rng::DeterministicRng<openraft::impls::TokioRuntime>,
);

use openraft::type_config::alias as a;

/// Decodes a stored log entry: of the current encoding, or of the one
/// before session hints (whose commands may open a session).
pub fn decode_entry(bytes: &[u8]) -> std::io::Result<Entry> {
    let err = match cairn_io::codec::decode::<Entry>(bytes) {
        Ok(entry) => return Ok(entry),
        Err(e) => e,
    };
    // Blank and membership entries encode alike in both; only a command
    // can be of the older encoding.
    let old: a::EntryOf<LegacyTypeConfig> = cairn_io::codec::decode(bytes).map_err(|_| err)?;
    match old.payload {
        openraft::EntryPayload::Normal(cmd) => Ok(Entry {
            log_id: old.log_id,
            payload: openraft::EntryPayload::Normal(cmd.into()),
        }),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a log entry of neither encoding",
        )),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::{Op, PutOp, RequestId, SessionHint};

    #[test]
    fn entries_of_the_encoding_before_session_hints_are_read() {
        let op = Op::Put(PutOp {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        });
        let request_id = Some(RequestId {
            client_id: 3,
            seq: 9,
        });
        let old = a::EntryOf::<LegacyTypeConfig> {
            log_id: openraft::testing::log_id::<LegacyTypeConfig>(2, 1, 5),
            payload: openraft::EntryPayload::Normal(LegacyCommand {
                request_id,
                op: op.clone(),
            }),
        };
        let entry = decode_entry(&cairn_io::codec::encode(&old).unwrap()).unwrap();
        assert_eq!(entry.log_id.index, 5);
        let openraft::EntryPayload::Normal(cmd) = entry.payload else {
            panic!("not a command");
        };
        assert_eq!(
            cmd,
            Command {
                request_id,
                op,
                session: SessionHint {
                    floor: 0,
                    opens: true,
                },
            }
        );
        // A current entry decodes as itself; garbage is an error.
        let new = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(2, 1, 6),
            payload: openraft::EntryPayload::Normal(cmd.clone()),
        };
        let back = decode_entry(&cairn_io::codec::encode(&new).unwrap()).unwrap();
        assert_eq!(back.payload, openraft::EntryPayload::Normal(cmd));
        assert!(decode_entry(&[0xff; 3]).is_err());
    }
}
