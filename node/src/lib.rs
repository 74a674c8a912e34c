//! cairn-node: a cairn node. The storage engine ([`lsm`]), the Raft glue
//! that makes it a replicated state machine ([`raft`]), and the gRPC
//! server with its configuration, metrics and shutdown ([`server`]).
#![forbid(unsafe_code)]

pub mod gateway;
pub mod lsm;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod raft;
pub mod server;
