//! Calls that take and return the protobuf messages as they are, with the
//! caller's deadline: what a proxy (the gateway) forwards. Routing,
//! retries and leader following are the client's; a write without a
//! request id gets one, so the client's retries apply it once.

use std::time::Duration;

use cairn_proto::cluster::{self as cpb};
use cairn_proto::kv::{self as pb};

use crate::client::{Client, Route};
use crate::error::Result;

pub(crate) fn read_route(consistency: i32) -> Route {
    if consistency == pb::ReadConsistency::Serializable as i32 {
        Route::Any
    } else {
        Route::Leader
    }
}

macro_rules! forward_read {
    ($(#[$doc:meta])* $name:ident, $req:ty, $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req, timeout: Duration) -> Result<$resp> {
            let route = read_route(req.consistency);
            self.call_within(route, timeout, |up, t| up.kv(req.clone(), t))
                .await
        }
    };
}

macro_rules! forward_write {
    ($(#[$doc:meta])* $name:ident, $req:ty, $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req, timeout: Duration) -> Result<$resp> {
            if req.request_id.is_some() {
                // The caller's own id: its session is the caller's.
                return self
                    .call_within(Route::Leader, timeout, |up, t| up.kv(req.clone(), t))
                    .await;
            }
            self.write_call(req, timeout, |r| &mut r.request_id).await
        }
    };
}

impl Client {
    forward_write!(
        /// Forwards a Put to the leader, under a request id of this
        /// client's when it has none.
        forward_put, pb::PutRequest, pb::PutResponse
    );
    forward_write!(
        /// Forwards a Delete to the leader, under a request id of this
        /// client's when it has none.
        forward_delete, pb::DeleteRequest, pb::DeleteResponse
    );
    forward_write!(
        /// Forwards a Txn to the leader, under a request id of this
        /// client's when it has none.
        forward_txn, pb::TxnRequest, pb::TxnResponse
    );
    forward_read!(
        /// Forwards a Get: to the leader, or to any replica when serializable.
        forward_get, pb::GetRequest, pb::GetResponse
    );
    forward_read!(
        /// Forwards a Scan: to the leader, or to any replica when serializable.
        forward_scan, pb::ScanRequest, pb::ScanResponse
    );

    /// Forwards an OpenSession to the leader (a session for the caller).
    pub async fn forward_open_session(&self, timeout: Duration) -> Result<pb::OpenSessionResponse> {
        self.open_session_within(timeout).await
    }

    /// Forwards a Status to the leader (any node when none is known).
    pub async fn forward_status(&self, timeout: Duration) -> Result<cpb::StatusResponse> {
        self.leader_status_within(timeout).await
    }
}
