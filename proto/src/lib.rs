//! cairn's gRPC API contract: the Rust generated from `cairn/*.proto`.
//!
//! - [`kv`]: `cairn.kv.v1.KV`, the key-value API.
//! - [`cluster`]: `cairn.cluster.v1.Cluster`, status and membership.
//! - [`raft`]: `cairn.raft.v1.Raft`, the internal peer transport.
//!
//! [`FILE_DESCRIPTOR_SET`] serves gRPC reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `cairn.kv.v1`.
pub mod kv {
    tonic::include_proto!("cairn.kv.v1");
}

/// `cairn.cluster.v1`.
pub mod cluster {
    tonic::include_proto!("cairn.cluster.v1");
}

/// `cairn.raft.v1`.
pub mod raft {
    tonic::include_proto!("cairn.raft.v1");
}

/// The encoded descriptors of every cairn service, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));

/// Trailer naming the leader's node id, set on UNAVAILABLE when a node
/// cannot serve a leader-only call.
pub const LEADER_ID: &str = "cairn-leader-id";
/// Trailer naming the leader's client address, beside [`LEADER_ID`].
pub const LEADER_ADDR: &str = "cairn-leader-addr";
/// Trailer on RESOURCE_EXHAUSTED for a write a raised alarm refused:
/// the alarm's name (`NOSPACE`, `CORRUPT`). Nothing was written; not
/// worth retrying until an operator disarms the alarm.
pub const ALARM: &str = "cairn-alarm";
/// Trailer on FAILED_PRECONDITION for a write whose request id the
/// cluster refused: [`SESSION_UNKNOWN`] or [`SESSION_SETTLED`].
pub const SESSION: &str = "cairn-session";
/// [`SESSION`]: the client has no session; nothing was applied.
pub const SESSION_UNKNOWN: &str = "unknown";
/// [`SESSION`]: the write's seq is below its client's floor.
pub const SESSION_SETTLED: &str = "settled";
/// Trailer naming the oldest revision the watch history still holds, set
/// on OUT_OF_RANGE when a watch starts before it.
pub const COMPACT_REVISION: &str = "cairn-compact-revision";
