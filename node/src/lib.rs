//! cairn-node: a cairn node. The key-value model ([`kv`]) over the
//! storage engine (`cairn-lsm`), the Raft glue that makes it a replicated
//! state machine ([`raft`]), the gRPC server with its configuration,
//! metrics and shutdown ([`server`]), and the gateway ([`gateway`]).
//!
//! Layers point one way: `kv` <- `raft` <- `server` <- the `cairn` binary;
//! the gateway sits on the client library and the shared RPC layer.
#![forbid(unsafe_code)]

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_entry;
pub mod gateway;
pub mod kv;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod raft;
pub mod server;
