//! cairn-node: a cairn node. Today it holds the storage engine ([`lsm`]);
//! the Raft glue, the gRPC server and the gateway build on it.
#![forbid(unsafe_code)]

pub mod lsm;
