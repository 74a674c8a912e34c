//! cairn-rpc: the RPC plumbing below both the node and the client.
//!
//! - [`net`]: the network seam ([`net::Net`]): TCP in production, the
//!   simulated network in the simulation; every channel is opened by
//!   [`net::channel`].
//! - [`status`]: a failed call's status inside a `KV.Batch` reply, status
//!   codes as metric labels, the batch message sizes.
//! - `serve` (feature `server`): the HTTP/2 gRPC server every cairn port
//!   runs, with `grpc-timeout` deadlines and a graceful shutdown.
//!
//! The client library uses this crate without the `server` feature, so
//! it carries no server code.
#![forbid(unsafe_code)]

pub mod net;
#[cfg(feature = "server")]
pub mod serve;
pub mod status;
