//! cairn-client: the Rust client library of cairn.
//!
//! ```no_run
//! # async fn demo() -> cairn_client::Result<()> {
//! use cairn_client::{Client, Compare, TxnOp};
//! let c = Client::connect(["127.0.0.1:7001", "127.0.0.1:7002"]).await?;
//! let rev = c.put("greeting", "hello").await?;
//! assert_eq!(c.get("greeting").await?.map(|kv| kv.value), Some("hello".into()));
//! // Compare-and-swap in one line.
//! c.cas("greeting", Some(b"hello"), "hi").await?;
//! // The general form.
//! let r = c
//!     .txn()
//!     .when([Compare::mod_revision("greeting").gt(rev)])
//!     .and_then([TxnOp::delete("greeting")])
//!     .commit()
//!     .await?;
//! assert!(r.succeeded);
//! # Ok(()) }
//! ```
//!
//! Every call has a deadline; leader-only calls follow the leader; calls
//! that fail for a reason a retry can fix are retried with backoff inside
//! the deadline; writes carry request ids so a retry applies once. Watches
//! reconnect by themselves and resume after the last delivered revision.
//!
//! The `proxy` feature adds what the gateway needs to forward calls it
//! did not decode (`relay`, and the `forward_*` calls).

mod admin;
mod balance;
mod batch;
mod client;
mod error;
#[cfg(feature = "proxy")]
mod forward;
mod kv;
#[cfg(feature = "proxy")]
pub mod relay;
mod session;
mod watch;

pub use admin::{Health, MemberStatus};
pub use cairn_proto::cluster::{Member, MembersResponse, StatusResponse};
pub use cairn_proto::kv::{KeyValue, ResponseHeader};
pub use cairn_proto::{COMPACT_REVISION, LEADER_ADDR, LEADER_ID};
pub use client::{Client, ClientConfig};
pub use error::{Error, Result};
pub use kv::{
    Compare, Consistency, DeleteResult, GetResult, NumberCompare, PutResult, Scan, Txn, TxnOp,
    TxnResult, ValueCompare,
};
pub use watch::{Event, EventKind, Watch, WatchBatch, WatchStream};

/// The protobuf types, for what the typed API does not cover.
pub use cairn_proto as proto;
/// The network seam a [`ClientConfig`] connects through.
pub use cairn_rpc::net;
